#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! SIGTERM while records are flowing: the bridge stops reading, drains, commits exactly what it
//! wrote, exits 0 within its drain deadline; a restart finishes the rest with nothing lost and
//! nothing written twice (checked by `tenancy-bridge verify`).

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::invariant::{self, StampCheck, TID};
use common::{Bridge, Fixture, Input, OffsetWatcher};

const EVENTS: usize = 40_000;
const PARTITIONS: i32 = 4;
const GROUP: &str = "bridge-shutdown";
const OUTBOX: &str = "tenancy-bridge.rush.orders";
/// U3 on payment, U7 on payment and shipping: three Rush copies per 50 events.
const RUSH_COPIES: usize = EVENTS / 50 * 3;

fn input(i: usize) -> Input {
    let user = format!("U{}", i % 50);
    Input {
        partition: (i % PARTITIONS as usize) as i32,
        key: Some(user.clone().into_bytes()),
        payload: Some(format!(r#"{{"n":{i},"user_id":"{user}","pad":"{}"}}"#, "x".repeat(200)).into_bytes()),
        headers: vec![(TID.into(), Some(i.to_string().into_bytes())), ("x-user-id".into(), Some(user.into_bytes()))],
        timestamp: 1_760_000_000_000 + i as i64,
    }
}

fn records_in(summary: &str) -> i64 {
    summary.split("records in ").nth(1).and_then(|s| s.split(',').next()).and_then(|n| n.trim().parse().ok()).unwrap()
}

#[test]
fn sigterm_under_load_loses_nothing_and_exits_within_the_drain_deadline() {
    let f = Fixture::builder()
        .topic("orders", PARTITIONS)
        .whitelist(1, &[("U3", &["payment"]), ("U7", &["payment", "shipping"])])
        .group(GROUP)
        .build();
    let (prod, rush, config) = (&f.prod, &f.rush, &f.config);
    let drain = Duration::from_secs(20);
    assert!(f.text.contains("drain_timeout = \"20s\""));

    // A producer writing as fast as it can for the whole first run.
    let produced = Arc::new(AtomicUsize::new(0));
    let stop_producing = Arc::new(AtomicBool::new(false));
    let producer = {
        let (bootstrap, produced, stop) = (prod.bootstrap.clone(), produced.clone(), stop_producing.clone());
        std::thread::spawn(move || {
            let p = common::producer(&bootstrap);
            // Paced (~5,000/s) until the first run is stopped, so SIGTERM lands while records
            // are still arriving; then as fast as possible.
            for i in 0..EVENTS {
                common::send(&p, "orders", &input(i));
                produced.store(i + 1, Ordering::Relaxed);
                if !stop.load(Ordering::Relaxed) && i % 50 == 49 {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            rdkafka::producer::Producer::flush(&p, Duration::from_secs(60)).unwrap();
        })
    };

    let bridge = Bridge::start(config);
    let watcher = OffsetWatcher::new(&prod.bootstrap, GROUP);
    common::wait_until("the bridge committed nothing under load", Instant::now() + Duration::from_secs(60), || {
        watcher.committed("orders", PARTITIONS) >= 5_000
    });
    let signalled = Instant::now();
    let summary = bridge.stop(drain + Duration::from_secs(5));
    let took = signalled.elapsed();
    let first = records_in(&summary);
    let committed = watcher.committed("orders", PARTITIONS);
    let at_stop = produced.load(Ordering::Relaxed);
    eprintln!(
        "SIGTERM after {committed} committed: exit 0 in {took:?}; first run read {first}, produced {at_stop} by then"
    );
    assert_eq!(committed, first, "everything read before SIGTERM is written and committed, nothing more");
    assert!((first as usize) < EVENTS, "the test needs the stop to land mid-stream");
    assert!(at_stop < EVENTS, "the producer was still producing when SIGTERM arrived");

    // The Rush lane stops on its own schedule: Rush copies of what the first run read may still
    // wait in the outbox, which is in flight, not lost.
    let (ok, text) = verify(config);
    assert!(ok && text.contains("invariant held"), "after the first run: {text}");
    stop_producing.store(true, Ordering::Relaxed);
    producer.join().unwrap();
    let bridge = Bridge::start(config);
    let deadline = Instant::now() + Duration::from_secs(120);
    common::wait_until("the restart did not finish the rest", deadline, || {
        watcher.committed("orders", PARTITIONS) >= EVENTS as i64
    });
    let lane = OffsetWatcher::new(&prod.bootstrap, &format!("{GROUP}.rush"));
    common::wait_until("the Rush lane did not carry every copy", deadline, || {
        lane.committed(OUTBOX, PARTITIONS) >= RUSH_COPIES as i64
    });
    let second = records_in(&bridge.stop(drain + Duration::from_secs(5)));
    assert_eq!(first + second, EVENTS as i64, "a graceful stop replays nothing");

    let (ok, text) = verify(config);
    assert!(ok, "{text}");
    assert!(text.contains(&format!("route orders ({EVENTS} input records)")), "{text}");
    for line in text.lines().filter(|l| l.trim_start().starts_with("payment") || l.trim_start().starts_with("shipping"))
    {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (p, r, pending): (usize, usize, usize) =
            (cols[1].parse().unwrap(), cols[2].parse().unwrap(), cols[3].parse().unwrap());
        assert_eq!((p + r, pending), (EVENTS, 0), "{line}");
    }

    // `verify` decides with the bridge's own code; the verdict also comes from what this test
    // knows it produced and whitelisted.
    let inputs = common::read_all(&prod.bootstrap, "orders", EVENTS, Duration::from_secs(60));
    let services = ["payment", "shipping"];
    let (p, r) =
        common::read_services(&prod.bootstrap, &rush.bootstrap, "orders", &services, EVENTS, Duration::from_secs(60));
    let expected = |i: &common::Read, svc: &str| match (i.header("x-user-id"), svc) {
        (Some(b"U3"), "payment") => Some("U3".to_string()),
        (Some(b"U7"), _) => Some("U7".to_string()),
        _ => None,
    };
    let report = invariant::check(&inputs, &services, &p, &r, expected, StampCheck::Header);
    report.assert_clean();
    assert_eq!(report.rush, RUSH_COPIES, "U3 on payment, U7 on both");
}

/// `tenancy-bridge verify`: whether it found the invariant held, and its report.
fn verify(config: &std::path::Path) -> (bool, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_tenancy-bridge")).args(["verify", "--config"]).arg(config).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{text}");
    (out.status.success(), text)
}
