#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! End-to-end throughput and latency harness (not a test). Every run gets two fresh brokers
//! (prod, Rush; tansu, or Apache Kafka with `TEST_BROKER=kafka`) and a pre-filled input of
//! `RECORDS` (1,000,000) JSON records of `PAYLOAD_BYTES` (1 KiB) for 10,000 users, 1 in 100
//! whitelisted for payment, on 4 partitions. Contestants, in an order that rotates each round:
//!
//! - the strongest plain alternatives: a rust-rdkafka copy loop writing 1, 3 or 10 copies of
//!   each record (`throughput/baselines.rs`) and a Python confluent-kafka relay (`relay.py`);
//! - the bridge at its defaults, the user in a header, in JSON near the start of the record
//!   and near its end, with 1, 3 and 10 services, at-least-once and exactly-once;
//! - the bridge with the Rush broker frozen (SIGSTOP) once it runs, for its peak memory;
//! - with `LOOKUP=1`, lookup mode against a Config Mapper (default TTLs, and warm);
//! - with `ENVS=1`, the bridge with the whitelisted users spread over 1, 10 and 100
//!   environments.
//!
//! It prints each run's steady records/s (10 % to 90 % of the input done: committed by the
//! bridge, which commits only what is acknowledged; acknowledged, as the baselines count it), CPU µs per record of its process and peak RSS, medians over the rounds,
//! each ratio as the median of the rounds' side-by-side ratios, and the targets. Then
//! the added latency at `LATENCY_RATES` (`throughput/latency.rs`).
//!
//!   TANSU_BIN=$(scripts/install-tansu.sh) cargo bench --bench throughput
//!
//! Environment: RECORDS, PAYLOAD_BYTES, ROUNDS (3), ONLY (comma-separated names of the runs
//! to run, as printed), RELAY_BIN (another build of the binary), THROUGHPUT=0
//! (latency only), LATENCY_RATES ("500,5000"; "" skips latency), LATENCY_SECS (20),
//! LATENCY_FETCH_WAIT_MS (the latency runs' consumers' `fetch.wait.max.ms`: tansu holds every
//! fetch to that limit where Apache Kafka answers once a record is there), BRIDGE_EXTRA and
//! CONSUMER_EXTRA (TOML lines for the bridge's `[bridge]` and consumer tables), BRIDGE_LOG (the
//! bridge's RUST_LOG).

#[path = "throughput/baselines.rs"]
mod baselines;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "throughput/contestant.rs"]
mod contestant;
#[path = "throughput/latency.rs"]
mod latency;
#[path = "throughput/measure.rs"]
mod measure;
#[path = "throughput/report.rs"]
mod report;

use std::collections::BTreeMap;
use std::time::Instant;

use contestant::{INPUT, PARTITIONS, USERS, UserAt, WHITELISTED_EVERY, Who};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Whether `who` runs, given `ONLY`.
fn selected(who: Who) -> bool {
    match std::env::var("ONLY") {
        Ok(only) if !only.is_empty() => only.split(',').any(|w| who.name() == w.trim()),
        _ => true,
    }
}

fn lineup() -> Vec<Who> {
    let bridge = |user, services, exactly_once| Who::Bridge { user, services, exactly_once };
    let mut v = vec![
        Who::Copy { copies: 1 },
        Who::Python,
        bridge(UserAt::Header, 1, false),
        bridge(UserAt::JsonStart, 1, false),
        bridge(UserAt::JsonEnd, 1, false),
        bridge(UserAt::JsonStart, 1, true),
        Who::Copy { copies: 3 },
        bridge(UserAt::Header, 3, false),
        Who::Copy { copies: 10 },
        bridge(UserAt::Header, 10, false),
        Who::RushFrozen,
    ];
    if env_usize("LOOKUP", 0) > 0 {
        v.extend([Who::Lookup { long_ttl: false }, Who::Lookup { long_ttl: true }]);
    }
    if env_usize("ENVS", 0) > 0 {
        v.extend([1, 10, 100].map(|envs| Who::Envs { envs }));
    }
    v.into_iter().filter(|w| selected(*w)).collect()
}

fn main() {
    if std::env::var("COPY_LOOP_BOOTSTRAP").is_ok() {
        baselines::copy_loop();
        return;
    }
    // A million: with 200,000 the bridge's steady window was about 2 s and start-up transients
    // (first fetches, producer warm-up) halved its rate against the copy loop's.
    let records = env_usize("RECORDS", 1_000_000);
    let size = env_usize("PAYLOAD_BYTES", 1024);
    let rounds = env_usize("ROUNDS", 3);
    let dir = tempfile::tempdir().unwrap();
    let mut inputs: BTreeMap<UserAt, Vec<common::Input>> = BTreeMap::new();
    let mut outcomes = Vec::new();
    let lineup = if env_usize("THROUGHPUT", 1) > 0 { lineup() } else { Vec::new() };
    for round in 0..rounds {
        let mut order = lineup.clone();
        if !order.is_empty() {
            let n = order.len();
            order.rotate_left(round * 3 % n);
        }
        for who in order {
            let data = inputs
                .entry(who.user())
                .or_insert_with(|| (0..records).map(|i| contestant::input(i, size, who.user())).collect());
            outcomes.push(one(round, who, &data[..who.records(records)], size, &dir));
        }
    }
    let latency = latency::rounds(&dir, rounds);
    report::throughput(
        &outcomes,
        &format!(
            "{records} records of {size} B (1/N of them for N copies or services, at least 100,000; 200,000 with \
             Rush frozen), {PARTITIONS} partitions, {USERS} users (1 in {WHITELISTED_EVERY} \
             whitelisted for payment), two {:?} brokers, fresh for every run",
            common::BrokerKind::from_env()
        ),
    );
    latency::print(&latency);
}

/// One run of `who` on fresh brokers and a freshly filled input.
fn one(round: usize, who: Who, inputs: &[common::Input], size: usize, dir: &tempfile::TempDir) -> report::Outcome {
    let prod = common::Broker::start();
    let rush = common::Broker::start();
    common::create_topic(&prod.bootstrap, INPUT, PARTITIONS);
    let fill = Instant::now();
    for _ in 0..who.passes() {
        common::produce(&prod.bootstrap, INPUT, inputs);
    }
    eprintln!(
        "round {round} {}: filled {} × {} records of {size} B in {:.1?}",
        who.name(),
        who.passes(),
        inputs.len(),
        fill.elapsed()
    );
    let group = format!("{}-{round}", who.name().replace([' ', '×', ','], "-"));
    let mapper = matches!(who, Who::Lookup { .. }).then(contestant::start_mapper);
    let mut child = contestant::start(who, dir, &prod, &rush, &group, mapper.as_ref().map(|m| m.url.as_str()), None);
    let offsets = common::OffsetWatcher::new(&prod.bootstrap, &group);
    let reported = contestant::reported_progress(&mut child);
    let mut frozen = false;
    let run = measure::measure(
        child,
        [prod.pid(), rush.pid()],
        inputs.len() * who.passes(),
        // Committed offsets for the bridge (it commits only what is acknowledged); the
        // baselines' own count of acknowledged records.
        || {
            if who.reports_progress() {
                reported.load(std::sync::atomic::Ordering::Relaxed)
            } else {
                offsets.committed(INPUT, PARTITIONS)
            }
        },
        |n| {
            // Frozen once the bridge relays: every Rush copy from then on waits in the outbox.
            if who == Who::RushFrozen && n > 0 && !frozen {
                rush.signal("STOP");
                frozen = true;
            }
        },
    );
    let passes = who.passes();
    report::Outcome {
        round,
        who,
        steady: run.steady(passes),
        peak_rss: run.peak_rss,
        cold: (passes == 2).then(|| run.window(0.05, 0.45)),
    }
}
