#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! End-to-end throughput harness (not a test): on two tansu brokers and one pre-filled input,
//! runs a plain rdkafka consume→produce copy loop and then the relay binary, one after the
//! other, and prints each one's steady records/s and CPU µs per record of its process.
//!
//!   TANSU_BIN=$(scripts/install-tansu.sh) cargo bench --bench throughput
//!
//! Environment: RECORDS (default 200000), PAYLOAD_BYTES (1024), ROUNDS (1), RELAY_BIN (another
//! build of the binary, e.g. `--no-default-features` for the system allocator).
//! "Steady" is the window between 10 % and 90 % of the input records committed by each one's
//! consumer group (both commit every 200 ms), which leaves out start-up, group join and the
//! tail. Committed offsets, not output high watermarks: tansu counts the latter per batch.
//! Every run gets freshly started brokers and input; rounds alternate which one runs first.

#[path = "../tests/common/mod.rs"]
mod common;

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
const USERS: usize = 1000;

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
    for round in 0..rounds {
        // Fresh brokers for every run, so neither inherits the other's stored data; the order
        // alternates between rounds.
        let mut pair = Vec::new();
        let order =
            if round % 2 == 0 { [Contestant::Copy, Contestant::Relay] } else { [Contestant::Relay, Contestant::Copy] };
        for who in order {
            let prod = common::Tansu::start();
            let rush = common::Tansu::start();
            common::create_topic(&prod.bootstrap, INPUT, PARTITIONS);
            let fill = Instant::now();
            common::produce(&prod.bootstrap, INPUT, &inputs);
            eprintln!("round {round}: filled {records} records of {size} B in {:.1?}", fill.elapsed());
            let group = format!("{who:?}-{round}");
            let child = match who {
                Contestant::Copy => {
                    common::create_topic(&prod.bootstrap, "copy.out", PARTITIONS);
                    Command::new(std::env::current_exe().unwrap())
                        .env("COPY_LOOP_BOOTSTRAP", &prod.bootstrap)
                        .env("COPY_LOOP_OUTPUT", "copy.out")
                        .env("COPY_LOOP_GROUP", &group)
                        .stdout(Stdio::null())
                        .spawn()
                        .unwrap()
                }
                Contestant::Relay => {
                    let config = bridge_config(&dir, &prod.bootstrap, &rush.bootstrap, &group);
                    let bin =
                        std::env::var("RELAY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tenancy-bridge").to_string());
                    Command::new(bin)
                        .args(["run", "--config"])
                        .arg(&config)
                        .env("RUST_LOG", "warn")
                        .stdout(Stdio::null())
                        .spawn()
                        .unwrap()
                }
            };
            let offsets = common::OffsetWatcher::new(&prod.bootstrap, &group);
            pair.push((who, measure(who.name(), child, records, || offsets.committed(INPUT, PARTITIONS))));
        }
        pair.sort_by_key(|(who, _)| *who as u8);
        results.extend(pair.into_iter().map(|(_, m)| m));
    }

    println!();
    println!(
        "{records} records of {size} B, {PARTITIONS} partitions, 1 output per record (relay: 10 % of users to Rush)"
    );
    println!("{:<10} {:>14} {:>16} {:>12}", "run", "records/s", "CPU µs/record", "wall s");
    for m in &results {
        println!("{:<10} {:>14.0} {:>16.2} {:>12.1}", m.name, m.rate, m.cpu_us, m.wall);
    }
    for pair in results.chunks(2) {
        if let [copy, relay] = pair {
            println!(
                "relay / copy loop: throughput {:.2}×, CPU per record {:.2}×",
                relay.rate / copy.rate,
                relay.cpu_us / copy.cpu_us
            );
        }
    }
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

fn bridge_config(dir: &tempfile::TempDir, prod: &str, rush: &str, group: &str) -> std::path::PathBuf {
    let wl = dir.path().join("wl.json");
    let users: Vec<String> = (0..USERS / 10).map(|i| format!("U{i}")).collect();
    let entries: Vec<(&str, &[&str])> = users.iter().map(|u| (u.as_str(), &["payment"][..])).collect();
    common::write_atomic(&wl, &common::whitelist_json(1, &entries));
    let path = dir.path().join(format!("{group}.toml"));
    let text = common::config_text(&common::ConfigOpts {
        prod,
        rush,
        whitelist: &wl,
        group,
        routes: "[[routes]]\ntopic = \"bench.in\"\nservices = [\"payment\"]\nuser = { json = \"/user_id\" }\n",
        extra_bridge: "",
        kafka: "\"max.poll.interval.ms\" = 10000\n\"session.timeout.ms\" = 6000",
    });
    std::fs::write(&path, text).unwrap();
    path
}

struct Measure {
    name: &'static str,
    rate: f64,
    cpu_us: f64,
    wall: f64,
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

fn measure(name: &'static str, mut child: Child, records: usize, progress: impl Fn() -> i64) -> Measure {
    let started = Instant::now();
    let lo = (records / 10) as i64;
    let hi = (records * 9 / 10) as i64;
    let mut at_lo = None;
    let mut at_hi = None;
    let deadline = Instant::now() + Duration::from_secs(900);
    while at_hi.is_none() {
        assert!(Instant::now() < deadline, "{name}: too slow");
        assert!(child.try_wait().unwrap().is_none(), "{name} exited early");
        let n = progress();
        if at_lo.is_none() && n >= lo {
            at_lo = Some((Instant::now(), cpu_seconds(child.id()), n));
        }
        if at_lo.is_some() && n >= hi {
            at_hi = Some((Instant::now(), cpu_seconds(child.id()), n));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    while progress() < records as i64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let wall = started.elapsed().as_secs_f64();
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    let ((t0, c0, n0), (t1, c1, n1)) = (at_lo.unwrap(), at_hi.unwrap());
    let n = (n1 - n0) as f64;
    let m = Measure { name, rate: n / (t1 - t0).as_secs_f64(), cpu_us: (c1 - c0) * 1e6 / n, wall };
    eprintln!("{name}: {:.0} records/s, {:.2} CPU µs/record", m.rate, m.cpu_us);
    m
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contestant {
    Copy = 0,
    Relay = 1,
}

impl Contestant {
    fn name(self) -> &'static str {
        match self {
            Self::Copy => "copy loop",
            Self::Relay => "relay",
        }
    }
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
