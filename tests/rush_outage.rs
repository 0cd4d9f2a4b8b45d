#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The Rush cluster frozen (SIGSTOP) for longer than every producer and request timeout while
//! events flow: production outputs keep flowing, the bridge never exits, `/readyz` stays 200 and
//! says Rush is degraded, memory stays bounded, and once Rush thaws every Rush copy arrives.
//! Then a shorter freeze at a higher rate. Two tansu brokers, the `run` binary.
//!
//! `RUSH_FREEZE_SECS` (default 150) sets the long freeze.

mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::invariant::{self, Delivery, StampCheck, TID};
use common::paced::PacedProducer;
use common::{Bridge, Broker, Fixture, Input, ORDERS_ROUTE, OffsetWatcher, Read, http_get};

const PARTITIONS: i32 = 3;
const GROUP: &str = "bridge-outage";
const USERS: usize = 40;
static HIGH_RATE: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// How often the bridge is looked at while Rush is frozen.
const WATCH_EVERY: Duration = Duration::from_secs(1);

fn input(i: usize) -> Input {
    let user = format!("U{}", i % USERS);
    Input {
        partition: (i % PARTITIONS as usize) as i32,
        key: Some(user.clone().into_bytes()),
        payload: Some(format!(r#"{{"n":{i},"user_id":"{user}","pad":"{}"}}"#, "x".repeat(150)).into_bytes()),
        headers: vec![(TID.into(), Some(i.to_string().into_bytes())), ("x-user-id".into(), Some(user.into_bytes()))],
        timestamp: tenancy_bridge::clock::now_ms(),
    }
}

fn tid(r: &Read) -> usize {
    std::str::from_utf8(r.header(TID).unwrap()).unwrap().parse().unwrap()
}

struct Freeze {
    events: usize,
    reached_prod: usize,
    expected_prod: usize,
    peak_rss: u64,
    /// The largest Rush backlog and oldest-copy age `/metrics` reported during the freeze.
    peak_backlog: f64,
    peak_age_secs: f64,
}

fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Freezes `rush` for `secs` while events flow; returns what reached prod meanwhile.
fn freeze(
    rush: &Broker,
    prod: &Broker,
    bridge: &mut Bridge,
    admin: &str,
    producer: &PacedProducer,
    secs: u64,
) -> Freeze {
    let first = producer.produced();
    rush.signal("STOP");
    let started = Instant::now();
    let (mut peak_rss, mut said_degraded, mut peak_backlog, mut peak_age_secs) = (0, false, 0.0f64, 0.0f64);
    while started.elapsed() < Duration::from_secs(secs) {
        // The outage itself is the point here, not a bet on timing: this loop only watches the
        // bridge through it, once a second.
        std::thread::sleep(WATCH_EVERY);
        bridge.assert_running();
        peak_rss = peak_rss.max(bridge.rss_bytes());
        let (status, body) = http_get(admin, "/readyz");
        assert_eq!(status, 200, "readiness must not depend on Rush: {body}");
        said_degraded |= body.contains("rush degraded");
        let (_, metrics) = http_get(admin, "/metrics");
        peak_backlog = peak_backlog.max(gauge(&metrics, "tenancy_bridge_rush_backlog_records"));
        peak_age_secs = peak_age_secs.max(gauge(&metrics, "tenancy_bridge_rush_backlog_age_seconds"));
    }
    let last = producer.produced();
    // What reached prod before the freeze ends: read while Rush is still frozen.
    let services = ["payment", "shipping"];
    let mut reached = 0;
    let mut expected = 0;
    for s in services {
        let topic = format!("orders.{s}");
        let want: HashSet<usize> = (first..last).filter(|i| s == "shipping" || i % USERS != 1).collect();
        let records = common::read_until(&[(&prod.bootstrap, &topic)], last, Duration::from_secs(20));
        let got: HashSet<usize> = records[0].iter().map(tid).filter(|t| want.contains(t)).collect();
        reached += got.len();
        expected += want.len();
    }
    assert!(started.elapsed() > Duration::from_secs(secs));
    rush.signal("CONT");
    if secs > 60 {
        assert!(said_degraded, "/readyz never said Rush was degraded during a {secs} s freeze");
    }
    // The Rush copies of the freeze wait in the outbox, and the metrics say so.
    assert!(peak_backlog >= 1.0, "rush_backlog_records stayed 0 through a {secs} s freeze");
    assert!(
        peak_age_secs >= (secs / 2) as f64,
        "oldest Rush copy age peaked at {peak_age_secs} s in a {secs} s freeze"
    );
    Freeze {
        events: last - first,
        reached_prod: reached,
        expected_prod: expected,
        peak_rss,
        peak_backlog,
        peak_age_secs,
    }
}

#[test]
fn a_frozen_rush_cluster_never_stops_or_slows_production() {
    frozen_rush(Delivery::AtLeastOnce);
}

/// Under exactly-once the Rush lane commits its copies with its progress on Rush: a Rush
/// transaction that cannot finish is aborted and the lane starts again from that progress,
/// while prod transactions go on alone.
#[test]
fn a_frozen_rush_cluster_never_stops_or_slows_production_exactly_once() {
    frozen_rush(Delivery::ExactlyOnce);
}

fn frozen_rush(delivery: Delivery) {
    let long: u64 = std::env::var("RUSH_FREEZE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(150);
    let group = match delivery {
        Delivery::AtLeastOnce => GROUP.to_owned(),
        Delivery::ExactlyOnce => format!("{GROUP}-eos"),
    };
    let group = group.as_str();
    let f = Fixture::builder()
        .topic("orders", PARTITIONS)
        .whitelist(1, &[("U1", &["payment"])])
        .group(group)
        .routes(&format!("{ORDERS_ROUTE}return_path = true\n"))
        .bridge(match delivery {
            Delivery::AtLeastOnce => "",
            Delivery::ExactlyOnce => "delivery = \"exactly-once\"\ninstance_id = \"frozen\"",
        })
        .admin()
        .build();
    let (prod, rush, admin) = (&f.prod, &f.rush, f.admin());

    let mut bridge = Bridge::start(&f.config);
    let producer = PacedProducer::start(&prod.bootstrap, "orders", 400, input);
    let watcher = OffsetWatcher::new(&prod.bootstrap, group);
    common::wait_until("the bridge committed nothing", Instant::now() + Duration::from_secs(60), || {
        watcher.committed("orders", PARTITIONS) >= 1_000
    });

    let runs = [(400, long), (2_500, 20)];
    let mut report = Vec::new();
    for (rate, secs) in runs {
        // The two deliveries run side by side; their high-rate freezes take turns, so neither
        // measures the other's CPU load on a 2-core machine.
        let _turn = (rate > 1_000).then(|| HIGH_RATE.lock().unwrap_or_else(|e| e.into_inner()));
        // Before the freeze, the producer runs at the new rate and the bridge keeps up with it:
        // it has committed the first second's worth of events at that rate.
        producer.rate.store(rate, Ordering::Relaxed);
        let warmed_up = (producer.produced() + rate as usize) as i64;
        let what = format!("the bridge did not keep up with {rate} events/s before the freeze");
        common::wait_until(&what, Instant::now() + Duration::from_secs(60), || {
            bridge.assert_running();
            producer.produced() as i64 >= warmed_up && watcher.committed("orders", PARTITIONS) >= warmed_up
        });
        let f = freeze(rush, prod, &mut bridge, admin, &producer, secs);
        let share = f.reached_prod as f64 / f.expected_prod as f64;
        eprintln!(
            "{delivery:?}: rush frozen {secs} s at {rate} events/s: {} events, {}/{} prod outputs ({:.1} %) reached prod during \
             the freeze, peak RSS {} MiB, Rush backlog peaked at {} copies, {:.0} s old",
            f.events,
            f.reached_prod,
            f.expected_prod,
            share * 100.0,
            f.peak_rss >> 20,
            f.peak_backlog,
            f.peak_age_secs
        );
        assert!(f.events as u64 >= rate * secs * 9 / 10, "the producer fell behind: {} events", f.events);
        assert!(share >= 0.95, "only {:.1} % of the prod outputs of the freeze reached prod", share * 100.0);
        assert!(f.peak_rss < 512 << 20, "bridge RSS {} MiB during the freeze", f.peak_rss >> 20);
        report.push(share);
    }
    let total = producer.finish();

    // Rush is back: every Rush copy arrives; nothing lost, nothing on both clusters.
    let read_in = common::read_all(&prod.bootstrap, "orders", total, Duration::from_secs(60));
    assert_eq!(read_in.len(), total);
    let services = ["payment", "shipping"];
    let (prod_out, rush_out) =
        common::read_services(&prod.bootstrap, &rush.bootstrap, "orders", &services, total, Duration::from_secs(240));
    let expected =
        |r: &Read, svc: &str| (r.header("x-user-id") == Some(b"U1") && svc == "payment").then(|| "U1".into());
    let result = invariant::check_with(
        &read_in,
        &services,
        &prod_out,
        &rush_out,
        expected,
        StampCheck::Header,
        Delivery::AtLeastOnce,
    );
    eprintln!(
        "{delivery:?}: after the thaw: {total} events, {} prod + {} rush outputs, {} written again on Rush",
        result.prod, result.rush, result.replayed
    );
    result.assert_clean();
    bridge.assert_running();
    let summary = bridge.stop(Duration::from_secs(60));
    assert!(summary.contains("records in"), "{summary}");
}

/// Rush unreachable from the start, so the Rush lane never commits: copies retention takes
/// from the outbox meanwhile are lost, and counted. Before, only copies behind a committed lane
/// offset were: a partition the lane had never committed reported none. Records are removed
/// with DeleteRecords, as retention would remove them, on Apache Kafka.
#[test]
fn copies_deleted_before_the_lane_ever_committed_are_counted_lost() {
    let group = "bridge-lost-uncommitted";
    let f = Fixture::builder()
        .on(common::BrokerKind::Kafka)
        .topic("orders", 2)
        .whitelist(1, &[("U1", &["payment"])])
        .group(group)
        .admin()
        .build();
    let text = f.text.replace(&f.rush.bootstrap, &format!("127.0.0.1:{}", common::free_port()));
    let config = tenancy_bridge::config::Config::parse(&text, std::iter::empty()).unwrap();
    let outbox = config.routes[0].outbox_topic.clone();
    let path = f.write_config("no-rush.toml", &text);
    let inputs: Vec<Input> = (0..40).map(|i| Input { partition: (i % 2) as i32, ..input(i * USERS + 1) }).collect();
    common::produce(&f.prod.bootstrap, "orders", &inputs);
    let mut bridge = Bridge::start(&path);
    let watcher = OffsetWatcher::new(&f.prod.bootstrap, group);
    common::wait_until(
        "40 inputs committed with Rush away within 60s",
        Instant::now() + Duration::from_secs(60),
        || {
            bridge.assert_running();
            watcher.committed("orders", 2) >= 40
        },
    );
    common::delete_records(&f.prod.bootstrap, &outbox, &[(0, 5), (1, 5)]);
    let lost = "tenancy_bridge_rush_copies_lost_total";
    let counted =
        common::wait_for("10 lost copies counted within 30s", Instant::now() + Duration::from_secs(30), || {
            bridge.assert_running();
            match common::metric(f.admin(), lost) {
                Some(n) if n >= 10.0 => Ok(n),
                other => Err(format!("{lost} = {other:?}")),
            }
        });
    bridge.stop(Duration::from_secs(30));
    eprintln!("Rush never reached: 10 copies deleted from the outbox, {counted} counted lost");
    assert_eq!(counted, 10.0, "each lost copy counted once");
}
