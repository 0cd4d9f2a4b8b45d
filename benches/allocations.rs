#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Rust heap allocations per relayed record, counted by a global allocator while the real
//! relay runs in process against two tansu brokers.
//!
//! Counted: every allocation made through Rust's allocator by any thread of the process (the
//! poll loop, the delivery callbacks, metrics), over a steady window in the middle of the run,
//! divided by the records the window relayed. Not counted: librdkafka's own `malloc`s (it is C),
//! which the throughput harness's profile shows. Background threads (whitelist, admin) run
//! too, so the figure is an upper bound.
//!
//! `cargo bench --bench allocations` (RECORDS, default 200000).

use std::alloc::System;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tenancy_bridge::config::Config;
use tenancy_bridge::relay::{self, Observers};
use tenancy_bridge::whitelist::{self, Entry, Snapshot};

#[path = "../tests/common/mod.rs"]
mod common;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations and reallocations so far, every thread.
fn allocs() -> u64 {
    let s = GLOBAL.stats();
    (s.allocations + s.reallocations) as u64
}

const PARTITIONS: i32 = 4;

/// One case: which users the records carry, and how many services the route has.
struct Case {
    name: &'static str,
    /// Every `rush_every`-th record belongs to the whitelisted user (0: none).
    rush_every: usize,
    services: &'static [&'static str],
    stamp: &'static str,
}

/// `records` inputs on a fresh prod broker, every `rush_every`-th of the whitelisted user.
fn fill(prod: &common::Tansu, records: usize, rush_every: usize) {
    common::create_topic(&prod.bootstrap, "orders", PARTITIONS);
    let producer = common::producer(&prod.bootstrap);
    let payload = vec![b'x'; 1024];
    for i in 0..records {
        let user = if rush_every > 0 && i % rush_every == 0 { "U1".to_owned() } else { format!("P{i}") };
        let input = common::Input {
            partition: (i % PARTITIONS as usize) as i32,
            key: None,
            payload: Some(payload.clone()),
            headers: vec![("x-user-id".into(), Some(user.into_bytes()))],
            timestamp: 1_760_000_000_000 + i as i64,
        };
        common::send(&producer, "orders", &input);
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

fn run(case: &Case, records: usize) -> f64 {
    let prod = common::Tansu::start();
    let rush = common::Tansu::start();
    fill(&prod, records, case.rush_every);
    let services = case.services.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    let text = format!(
        r#"
[prod]
bootstrap_servers = "{}"
[rush]
bootstrap_servers = "{}"
[whitelist]
file = "/nonexistent/unused.json"
[admin]
listen = "127.0.0.1:0"
[prod.consumer]
"max.poll.interval.ms" = 10000
"session.timeout.ms" = 6000
[bridge]
group_id = "alloc-bench"
[[routes]]
topic = "orders"
services = [{services}]
user = {{ header = "x-user-id" }}
stamp = "{}"
"#,
        prod.bootstrap, rush.bootstrap, case.stamp
    );
    let config = Config::parse(&text, std::iter::empty()).unwrap();
    let entry = Entry::new(case.services.iter().map(|s| (*s).into()).collect(), i64::MAX);
    let snapshot = whitelist::shared(Snapshot::new(1, [("U1".to_owned(), entry)]));
    let shutdown = Arc::new(AtomicBool::new(false));
    let observers = Arc::new(Observers::new(&config).unwrap());
    let (s, o) = (shutdown.clone(), observers.clone());
    let relay = std::thread::spawn(move || relay::run_observed(&config, snapshot, &s, &o));
    // One handle, read per poll without allocating: summing the vector (prometheus `collect`)
    // every millisecond allocated about 0.1 per relayed record on this thread, which the first
    // figures charged to the bridge.
    let records_in = observers.metrics.records_in.with_label_values(&["orders"]);
    let records_in = || records_in.get();
    let per = window(records, records_in, || relay.is_finished());
    shutdown.store(true, Ordering::Relaxed);
    let outcome = relay.join().unwrap();
    match (per, outcome) {
        (Some(per), Ok(_)) => per,
        (_, outcome) => panic!("relay stopped early: {:?}", outcome.err()),
    }
}

/// Allocations per record between a quarter and three quarters of `records` read; `None` if
/// the reader stopped first.
fn window(records: usize, records_in: impl Fn() -> u64, stopped: impl Fn() -> bool) -> Option<f64> {
    let wait_for = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while records_in() < n {
            assert!(Instant::now() < deadline, "stuck at {} records", records_in());
            if stopped() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    };
    if !wait_for(records as u64 / 4) {
        return None;
    }
    let (a0, r0) = (allocs(), records_in());
    if !wait_for(records as u64 * 3 / 4) {
        return None;
    }
    let (a1, r1) = (allocs(), records_in());
    Some((a1 - a0) as f64 / (r1 - r0) as f64)
}

/// The plain rust-rdkafka copy loop (BaseConsumer -> ThreadedProducer), same brokers and data.
fn copy_loop(records: usize) -> f64 {
    let prod = common::Tansu::start();
    fill(&prod, records, 0);
    common::create_topic(&prod.bootstrap, "orders.copy", PARTITIONS);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &prod.bootstrap)
        .set("group.id", "alloc-copy")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset("orders", p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let producer = common::producer(&prod.bootstrap);
    let read = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (r, s) = (read.clone(), stop.clone());
    let copier = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else { continue };
            let mut out: BaseRecord<'_, [u8], [u8]> = BaseRecord::to("orders.copy").partition(m.partition());
            if let Some(p) = m.payload() {
                out = out.payload(p);
            }
            if let Some(h) = m.headers() {
                out = out.headers(h.detach());
            }
            while let Err((_, back)) = producer.send(out) {
                out = back;
                producer.poll(Duration::from_millis(1));
            }
            r.fetch_add(1, Ordering::Relaxed);
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    });
    let per = window(records, || read.load(Ordering::Relaxed), || copier.is_finished());
    stop.store(true, Ordering::Relaxed);
    copier.join().unwrap();
    per.expect("copy loop stopped early")
}

fn main() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).try_init();
    let records: usize = std::env::var("RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let cases = [
        Case {
            name: "passthrough (header user, not whitelisted), 1 service",
            rush_every: 0,
            services: &["payment"],
            stamp: "header",
        },
        Case {
            name: "passthrough, 3 services",
            rush_every: 0,
            services: &["payment", "shipping", "ledger"],
            stamp: "header",
        },
        Case {
            name: "1 in 100 to Rush (header stamp), 1 service",
            rush_every: 100,
            services: &["payment"],
            stamp: "header",
        },
    ];
    println!("Rust allocations per input record, real relay in process, two tansu brokers, {records} records of 1 KiB");
    println!("{:<58} {:>8.3}", "plain rust-rdkafka copy loop, 1 copy", copy_loop(records));
    for case in &cases {
        let per = run(case, records);
        println!("{:<58} {per:>8.3}", case.name);
    }
}
