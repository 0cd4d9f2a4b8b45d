#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! End-to-end throughput harness (not a test): on two tansu brokers and one pre-filled input,
//! runs a plain rdkafka consume→produce copy loop, the relay binary in snapshot mode and the
//! relay binary in lookup mode (a Config Mapper process answering per user), one after the
//! other, and prints each one's steady records/s and CPU µs per record of its process.
//!
//! Lookup mode reads the input twice over (the same users again): the first pass starts with
//! an empty cache (cold), the second finds every user cached. It runs twice: with the default
//! TTLs (10 s listed, 5 s not listed: during the second pass every answer is refreshed, about
//! 10,000 users / 5 s = 2,000 requests/s, which is the steady state of a busy topic) and with
//! TTLs longer than the run (the second pass is the warm cache alone). The harness also prints
//! how long after its start the cold run's rate (over 1 s) first reached 0.8× snapshot mode's.
//!
//!   TANSU_BIN=$(scripts/install-tansu.sh) cargo bench --bench throughput
//!
//! Then the added latency of the copy loop, at-least-once and exactly-once at a moderate rate
//! (`throughput/latency.rs`).
//!
//! Environment: RECORDS (default 200000), PAYLOAD_BYTES (1024), ROUNDS (1), RELAY_BIN (another
//! build of the binary, e.g. `--no-default-features` for the system allocator), THROUGHPUT=0
//! (latency only), LATENCY_RATE (1000; 0 skips latency), LATENCY_SECS (20).
//! "Steady" is the window between 10 % and 90 % of the input records committed by each one's
//! consumer group (both commit every 200 ms), which leaves out start-up, group join and the
//! tail. Committed offsets, not output high watermarks: tansu counts the latter per batch.
//! Every run gets freshly started brokers and input; rounds alternate which one runs first.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "throughput/latency.rs"]
mod latency;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PARTITIONS: i32 = 4;
const INPUT: &str = "bench.in";
const COPY_OUTPUT: &str = "copy.out";
const USERS: usize = 10_000;
/// One user in this many is whitelisted (for payment).
const WHITELISTED_EVERY: usize = 100;
const MAPPER_TOKEN: &str = "bench:0123456789abcdef-throughput";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    if std::env::var("COPY_LOOP_BOOTSTRAP").is_ok() {
        copy_loop();
        return;
    }
    let records = env_usize("RECORDS", 200_000);
    let size = env_usize("PAYLOAD_BYTES", 1024);
    let rounds = env_usize("ROUNDS", 1);
    let inputs: Vec<common::Input> = (0..records).map(|i| input(i, size)).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut results = Vec::new();
    for round in 0..if env_usize("THROUGHPUT", 1) > 0 { rounds } else { 0 } {
        // Fresh brokers for every run, so neither inherits the other's stored data; the order
        // alternates between rounds.
        let mut pair = Vec::new();
        let mut order = vec![
            Contestant::Copy,
            Contestant::Relay,
            Contestant::Lookup,
            Contestant::LookupLongTtl,
            Contestant::ExactlyOnce,
        ];
        order.rotate_left(round % 5);
        for who in order {
            let prod = common::Tansu::start();
            let rush = common::Tansu::start();
            common::create_topic(&prod.bootstrap, INPUT, PARTITIONS);
            let fill = Instant::now();
            common::produce(&prod.bootstrap, INPUT, &inputs);
            let lookup_ttl = match who {
                Contestant::Lookup => Some(""),
                Contestant::LookupLongTtl => Some("cache_ttl = \"1h\"\nnegative_ttl = \"1h\"\n"),
                _ => None,
            };
            let passes = if lookup_ttl.is_some() { 2 } else { 1 };
            if passes == 2 {
                common::produce(&prod.bootstrap, INPUT, &inputs);
            }
            eprintln!("round {round}: filled {passes} × {records} records of {size} B in {:.1?}", fill.elapsed());
            let group = format!("{who:?}-{round}");
            let mapper = lookup_ttl.map(|_| start_mapper());
            let lookup = mapper.as_ref().zip(lookup_ttl).map(|(m, ttl)| (m.url.as_str(), ttl));
            let child = start(who, &dir, &prod, &rush, &group, lookup);
            let offsets = common::OffsetWatcher::new(&prod.bootstrap, &group);
            let run = measure(child, records * passes, || offsets.committed(INPUT, PARTITIONS));
            pair.push((who, run));
        }
        pair.sort_by_key(|(who, _)| *who as u8);
        results.push(pair.into_iter().map(|(_, m)| m).collect::<Vec<_>>());
    }

    let latency = if env_usize("LATENCY_RATE", 1_000) > 0 { latency::rounds(&dir, rounds) } else { Vec::new() };

    println!();
    println!(
        "{records} records of {size} B, {PARTITIONS} partitions, {USERS} users (1 in {WHITELISTED_EVERY} to Rush), \
         1 output per record"
    );
    println!(
        "{:<6} {:<22} {:>12} {:>15} {:>10} {:>10}",
        "round", "run", "records/s", "CPU µs/record", "× copy", "× snapshot"
    );
    for (round, r) in results.iter().enumerate() {
        let [copy, snapshot, lookup, long, exactly_once] = &r[..] else { continue };
        let rows = [
            ("copy loop", copy.window(0.1, 0.9)),
            ("relay, snapshot", snapshot.window(0.1, 0.9)),
            ("snapshot, exactly-once", exactly_once.window(0.1, 0.9)),
            ("lookup, cold", lookup.window(0.05, 0.45)),
            ("lookup, refreshing", lookup.window(0.55, 0.95)),
            ("lookup, warm", long.window(0.55, 0.95)),
        ];
        let (copy_w, snap_w) = (rows[0].1, rows[1].1);
        for (name, w) in rows {
            println!(
                "{round:<6} {name:<22} {:>12.0} {:>15.2} {:>9.2}× {:>9.2}×",
                w.rate,
                w.cpu_us,
                w.rate / copy_w.rate,
                w.rate / snap_w.rate
            );
        }
        match lookup.first_reaching(0.8 * snap_w.rate) {
            Some((t, n)) => println!(
                "{round:<6} lookup cold: rate over 1 s first ≥ 0.8× snapshot {t:.1} s after the bridge started ({n} records in)"
            ),
            None => println!("{round:<6} lookup cold: never reached 0.8× snapshot"),
        }
    }
    latency::print(&latency);
}

/// Starts `who` on `prod` (and `rush`), consuming [`INPUT`] in `group`.
fn start(
    who: Contestant,
    dir: &tempfile::TempDir,
    prod: &common::Tansu,
    rush: &common::Tansu,
    group: &str,
    lookup: Option<(&str, &str)>,
) -> Child {
    match who {
        Contestant::Copy => {
            common::create_topic(&prod.bootstrap, COPY_OUTPUT, PARTITIONS);
            Command::new(std::env::current_exe().unwrap())
                .env("COPY_LOOP_BOOTSTRAP", &prod.bootstrap)
                .env("COPY_LOOP_OUTPUT", COPY_OUTPUT)
                .env("COPY_LOOP_GROUP", group)
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        }
        Contestant::Relay | Contestant::Lookup | Contestant::LookupLongTtl | Contestant::ExactlyOnce => {
            let extra = if matches!(who, Contestant::ExactlyOnce) {
                "delivery = \"exactly-once\"\ninstance_id = \"bench\""
            } else {
                ""
            };
            let config = bridge_config(dir, &prod.bootstrap, &rush.bootstrap, group, lookup, extra);
            let bin = std::env::var("RELAY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tenancy-bridge").to_string());
            Command::new(bin)
                .args(["run", "--config"])
                .arg(&config)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        }
    }
}

/// A Config Mapper process with 1 in [`WHITELISTED_EVERY`] users whitelisted for payment.
fn start_mapper() -> common::Mapper {
    let mapper = common::Mapper::start(MAPPER_TOKEN);
    let token = MAPPER_TOKEN.split_once(':').unwrap().1.to_owned();
    let client =
        tenancy_bridge::whitelist::client::MapperClient::new(&mapper.url, Some(token), Duration::from_secs(5)).unwrap();
    for i in (0..USERS).step_by(WHITELISTED_EVERY) {
        client.add(&format!("U{i}"), &["payment".into()], Duration::from_secs(4 * 3600), Some("bench")).unwrap();
    }
    mapper
}

fn input(i: usize, size: usize) -> common::Input {
    let user = format!("U{}", (i * 7919) % USERS);
    let mut payload = format!(r#"{{"user_id":"{user}","order_id":{i},"note":""#);
    while payload.len() < size.saturating_sub(2) {
        payload.push('x');
    }
    payload.push_str("\"}");
    common::Input {
        partition: (i % PARTITIONS as usize) as i32,
        key: Some(user.clone().into_bytes()),
        payload: Some(payload.into_bytes()),
        headers: vec![("x-user-id".into(), Some(user.into_bytes()))],
        timestamp: 1_760_000_000_000 + i as i64,
    }
}

/// Snapshot mode from a file, or lookup mode against the Config Mapper at `lookup`; the same
/// users whitelisted either way, every other whitelist key at its default.
fn bridge_config(
    dir: &tempfile::TempDir,
    prod: &str,
    rush: &str,
    group: &str,
    lookup: Option<(&str, &str)>,
    extra_bridge: &str,
) -> std::path::PathBuf {
    let wl = dir.path().join("wl.json");
    let users: Vec<String> = (0..USERS).step_by(WHITELISTED_EVERY).map(|i| format!("U{i}")).collect();
    let entries: Vec<(&str, &[&str])> = users.iter().map(|u| (u.as_str(), &["payment"][..])).collect();
    common::write_atomic(&wl, &common::whitelist_json(1, &entries));
    let path = dir.path().join(format!("{group}.toml"));
    let text = common::config_text(&common::ConfigOpts {
        prod,
        rush,
        whitelist: &wl,
        group,
        routes: "[[routes]]\ntopic = \"bench.in\"\nservices = [\"payment\"]\nuser = { json = \"/user_id\" }\n",
        extra_bridge,
        kafka: "\"max.poll.interval.ms\" = 10000\n\"session.timeout.ms\" = 6000",
    });
    let text = match lookup {
        Some((url, ttl)) => text.replace(
            &format!("file = \"{}\"\nrefresh = \"100ms\"", wl.display()),
            &format!("url = \"{url}\"\nmode = \"lookup\"\n{ttl}"),
        ),
        None => text,
    };
    std::fs::write(&path, text).unwrap();
    path
}

/// Progress of one run: (seconds since start, CPU seconds of its process, records committed).
struct Run {
    samples: Vec<(f64, f64, i64)>,
    total: usize,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    rate: f64,
    cpu_us: f64,
}

impl Run {
    /// Rate and CPU per record between `lo` and `hi` (fractions of the input committed).
    fn window(&self, lo: f64, hi: f64) -> Window {
        let at = |f: f64| {
            let n = (self.total as f64 * f) as i64;
            *self.samples.iter().find(|s| s.2 >= n).unwrap_or_else(|| self.samples.last().unwrap())
        };
        let ((t0, c0, n0), (t1, c1, n1)) = (at(lo), at(hi));
        let n = (n1 - n0).max(1) as f64;
        Window { rate: n / (t1 - t0).max(1e-3), cpu_us: (c1 - c0) * 1e6 / n }
    }

    /// When the rate over the preceding second first reached `rate`, and how many were in then.
    fn first_reaching(&self, rate: f64) -> Option<(f64, i64)> {
        let mut j = 0;
        for (i, s) in self.samples.iter().enumerate() {
            while s.0 - self.samples[j].0 > 1.0 {
                j += 1;
            }
            let (t0, _, n0) = self.samples[j];
            if i > j && s.0 - t0 >= 0.9 && (s.2 - n0) as f64 / (s.0 - t0) >= rate {
                return Some((s.0, s.2));
            }
        }
        None
    }
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / clock_ticks()
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Samples `progress` until `total` records are committed, then stops the child.
fn measure(mut child: Child, total: usize, progress: impl Fn() -> i64) -> Run {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(900);
    let mut samples = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "too slow: {samples:?}");
        assert!(child.try_wait().unwrap().is_none(), "exited early");
        let n = progress();
        samples.push((started.elapsed().as_secs_f64(), cpu_seconds(child.id()), n));
        if n >= total as i64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    let run = Run { samples, total };
    let w = run.window(0.1, 0.9);
    eprintln!("{:.0} records/s, {:.2} CPU µs/record", w.rate, w.cpu_us);
    run
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contestant {
    Copy = 0,
    Relay = 1,
    Lookup = 2,
    LookupLongTtl = 3,
    ExactlyOnce = 4,
}

/// The baseline: consume, produce the same record to the same partition of another topic,
/// auto-commit. No decision, no stamping, no ordered commit tracking.
fn copy_loop() {
    struct Ctx;
    impl ClientContext for Ctx {}
    impl ProducerContext for Ctx {
        type DeliveryOpaque = ();
        fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
            if let Err((e, _)) = r {
                eprintln!("copy loop delivery error: {e}");
            }
        }
    }
    let var = |k: &str| std::env::var(k).unwrap();
    let bootstrap = var("COPY_LOOP_BOOTSTRAP");
    let output = var("COPY_LOOP_OUTPUT");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", var("COPY_LOOP_GROUP"))
        .set("auto.offset.reset", "earliest")
        .set("queued.max.messages.kbytes", "32768")
        .set("max.poll.interval.ms", "10000")
        .set("session.timeout.ms", "6000")
        .set("auto.commit.interval.ms", "200")
        .create()
        .unwrap();
    let producer: ThreadedProducer<Ctx> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "21000")
        .create_with_context(Ctx)
        .unwrap();
    consumer.subscribe(&[INPUT]).unwrap();
    loop {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else { continue };
        let mut r: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&output).partition(m.partition());
        if let Some(k) = m.key() {
            r = r.key(k);
        }
        if let Some(p) = m.payload() {
            r = r.payload(p);
        }
        if let Some(h) = m.headers() {
            r = r.headers(h.detach());
        }
        if let Some(ts) = m.timestamp().to_millis() {
            r = r.timestamp(ts);
        }
        while let Err((_, back)) = producer.send(r) {
            r = back;
            producer.poll(Duration::from_millis(1));
        }
    }
}
