//! Added latency: inputs produced at each of `LATENCY_RATES` records/s (default 500 and 5,000)
//! for `LATENCY_SECS` (20), each stamped with the time it was produced; a reader of the output
//! topic (read_committed, as exactly-once requires) notes when each output arrives, and a
//! reader of the input topic does the same for the input itself. The input's own figures are
//! what any consumer of prod pays; the difference is what the contestant adds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::contestant::{INPUT, PARTITIONS, UserAt, Who, start};
use super::{common, env_usize};
use tenancy_bridge::clock::now_ms;

pub struct Latency {
    pub round: usize,
    pub rate: u64,
    pub who: Who,
    pub records: usize,
    /// Milliseconds from produce to read: (p50, p99), of the input and of the output.
    pub input: (i64, i64),
    pub output: (i64, i64),
}

/// Only records produced in [start, end) count; `done` ends the readers.
struct Window {
    start: AtomicI64,
    end: AtomicI64,
    done: AtomicBool,
}

/// The copy loop, and the bridge (user in JSON, one service) at-least-once and exactly-once.
const LINEUP: [Who; 3] = [
    Who::Copy { copies: 1 },
    Who::Bridge { user: UserAt::JsonStart, services: 1, exactly_once: false },
    Who::Bridge { user: UserAt::JsonStart, services: 1, exactly_once: true },
];

fn rates() -> Vec<u64> {
    let rates = std::env::var("LATENCY_RATES").unwrap_or_else(|_| "500,5000".into());
    rates.split(',').filter_map(|r| r.trim().parse().ok()).collect()
}

pub fn rounds(dir: &tempfile::TempDir, rounds: usize) -> Vec<Latency> {
    let secs = env_usize("LATENCY_SECS", 20) as u64;
    let mut all = Vec::new();
    for round in 0..rounds {
        for rate in rates() {
            let mut order = LINEUP;
            order.rotate_left(round % 3);
            for who in order.into_iter().filter(|w| super::selected(*w)) {
                all.push(one(dir, round, who, rate, secs));
            }
        }
    }
    all
}

fn timed_input(i: usize) -> common::Input {
    let mut input = super::contestant::input(i, 1024, UserAt::JsonStart);
    input.timestamp = now_ms();
    input
}

fn one(dir: &tempfile::TempDir, round: usize, who: Who, rate: u64, secs: u64) -> Latency {
    let (prod, rush) = (common::Broker::start(), common::Broker::start());
    common::create_topic(&prod.bootstrap, INPUT, PARTITIONS);
    let group = format!("latency-{round}-{rate}-{}", who.name().replace([' ', '×'], "-"));
    let fetch_wait_ms = std::env::var("LATENCY_FETCH_WAIT_MS").ok().and_then(|v| v.parse().ok());
    let mut child = start(who, dir, &prod, &rush, &group, None, fetch_wait_ms);
    // Drained, so a baseline never blocks on a full pipe.
    let _progress = super::contestant::reported_progress(&mut child);
    let output = who.latency_output();
    let window = Arc::new(Window {
        start: AtomicI64::new(i64::MAX),
        end: AtomicI64::new(i64::MAX),
        done: AtomicBool::new(false),
    });
    let outputs_seen = Arc::new(AtomicUsize::new(0));
    let reader = |topic: String, seen: Arc<AtomicUsize>| {
        let (bootstrap, window) = (prod.bootstrap.clone(), window.clone());
        std::thread::spawn(move || read_latencies(&bootstrap, &topic, &window, &seen))
    };
    let input_reader = reader(INPUT.to_owned(), Arc::new(AtomicUsize::new(0)));
    let output_reader = reader(output, outputs_seen.clone());
    let producer = common::paced::PacedProducer::start(&prod.bootstrap, INPUT, rate, timed_input);
    // Warm-up: the group has joined and outputs flow; then a few seconds for the backlog of the
    // join to drain before anything counts.
    let deadline = Instant::now() + Duration::from_secs(90);
    while outputs_seen.load(Relaxed) == 0 {
        assert!(Instant::now() < deadline, "{}: no output within 90 s", who.name());
        assert!(child.try_wait().unwrap().is_none(), "{} exited early", who.name());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(5));
    window.start.store(now_ms(), Relaxed);
    std::thread::sleep(Duration::from_secs(secs));
    window.end.store(now_ms(), Relaxed);
    producer.finish();
    // Everything of the window is read when the output reader goes quiet.
    let mut last = (outputs_seen.load(Relaxed), Instant::now());
    while last.1.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(100));
        let now = outputs_seen.load(Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    window.done.store(true, Relaxed);
    let (mut input, mut output) = (input_reader.join().unwrap(), output_reader.join().unwrap());
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    let records = output.len();
    let l = Latency { round, rate, who, records, input: percentiles(&mut input), output: percentiles(&mut output) };
    eprintln!(
        "latency round {round} at {rate}/s, {}: {records} outputs, input p50/p99 {:?} ms, output p50/p99 {:?} ms",
        who.name(),
        l.input,
        l.output
    );
    l
}

fn percentiles(v: &mut [i64]) -> (i64, i64) {
    v.sort_unstable();
    let at = |q: usize| v.get((v.len() * q / 100).min(v.len().saturating_sub(1))).copied().unwrap_or(-1);
    (at(50), at(99))
}

/// Milliseconds from produce to read of every record of `topic` produced in the window.
fn read_latencies(bootstrap: &str, topic: &str, window: &Window, seen: &AtomicUsize) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "latency-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .map_or(0, |m| m.topics().first().map_or(0, |t| t.partitions().len()))
        == 0
    {
        assert!(Instant::now() < deadline, "{topic} never appeared");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut latencies = Vec::new();
    while !window.done.load(Relaxed) {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) else { continue };
        let read = now_ms();
        seen.fetch_add(1, Relaxed);
        let Some(ts) = m.timestamp().to_millis() else { continue };
        if ts >= window.start.load(Relaxed) && ts < window.end.load(Relaxed) {
            latencies.push(read - ts);
        }
    }
    latencies
}

/// Per rate and contestant, medians over the rounds.
pub fn print(all: &[Latency]) {
    if all.is_empty() {
        return;
    }
    println!();
    println!(
        "added latency, {} s per run (ms from produce to a read_committed read; added = output − input)",
        env_usize("LATENCY_SECS", 20)
    );
    println!(
        "{:<6} {:>6} {:<24} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "round", "rate", "run", "outputs", "in p50", "in p99", "out p50", "out p99"
    );
    for l in all {
        println!(
            "{:<6} {:>6} {:<24} {:>8} {:>8} {:>8} {:>8} {:>8}",
            l.round,
            l.rate,
            l.who.name(),
            l.records,
            l.input.0,
            l.input.1,
            l.output.0,
            l.output.1
        );
    }
    let mut targets = Vec::new();
    for rate in rates() {
        for who in LINEUP {
            let median = |f: &dyn Fn(&Latency) -> i64| {
                let mut v: Vec<i64> = all.iter().filter(|l| l.who == who && l.rate == rate).map(f).collect();
                v.sort_unstable();
                v.get(v.len() / 2).copied()
            };
            let (Some(p50), Some(p99)) = (median(&|l| l.output.0 - l.input.0), median(&|l| l.output.1 - l.input.1))
            else {
                continue;
            };
            println!("median at {rate:>5}/s {:<24} added p50 {p50} ms, added p99 {p99} ms", who.name());
            if rate == 500 && matches!(who, Who::Bridge { .. }) {
                targets.push((who, p99));
            }
        }
    }
    // Issue 12: p99 ≤ 20 ms added at 500/s at the defaults; exactly-once adds its transaction
    // interval (the default, 1 s).
    for (who, p99) in targets {
        let limit = if matches!(who, Who::Bridge { exactly_once: true, .. }) { 1_020 } else { 20 };
        println!(
            "target: {:<24} added p99 at 500/s {p99} ms (≤ {limit}): {}",
            who.name(),
            if p99 <= limit { "met" } else { "MISSED" }
        );
    }
}
