#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The production broker frozen (SIGSTOP) with events in flight, then thawed: the bridge never
//! exits. It starts its forward direction again by itself (drains, leaves its group, joins
//! again) as often as the outage needs, and carries on once prod answers: nothing lost, nothing
//! on both clusters. What a user saw before: a 60 s freeze with `max.poll.interval.ms = 10000`
//! ended the bridge with `PollExceeded`, a 6-minute one with client defaults with "cannot read
//! decision log: AllBrokersDown"; only a restart from outside brought production outputs back.
//!
//! `PROD_FREEZE_LONG_SECS` (default 360) sets the long freeze.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::invariant::{self, Delivery, StampCheck, TID};
use common::{Bridge, Fixture, Input, OffsetWatcher, Read};

const PARTITIONS: i32 = 3;
const USERS: usize = 40;
/// How often the bridge is looked at while prod is frozen.
const WATCH_EVERY: Duration = Duration::from_secs(1);

fn input(i: usize) -> Input {
    let user = format!("U{}", i % USERS);
    Input {
        partition: (i % PARTITIONS as usize) as i32,
        key: Some(user.clone().into_bytes()),
        payload: Some(format!(r#"{{"n":{i},"user_id":"{user}"}}"#).into_bytes()),
        headers: vec![(TID.into(), Some(i.to_string().into_bytes())), ("x-user-id".into(), Some(user.into_bytes()))],
        timestamp: tenancy_bridge::clock::now_ms(),
    }
}

/// 30,000 events, prod frozen for `freeze` once the bridge is relaying them, then 10,000 more.
/// `defaults`: librdkafka's consumer defaults, else the short session and poll interval.
fn outage(group: &str, defaults: bool, freeze: Duration) {
    let mut builder =
        Fixture::builder().topic("orders", PARTITIONS).whitelist(1, &[("U1", &["payment"])]).group(group).admin();
    if defaults {
        builder = builder.client_defaults("");
    }
    let f = builder.build();
    let (prod, rush) = (&f.prod, &f.rush);
    let first: Vec<Input> = (0..30_000).map(input).collect();
    common::produce(&prod.bootstrap, "orders", &first);
    let mut bridge = Bridge::start(&f.config);
    let watcher = OffsetWatcher::new(&prod.bootstrap, group);
    let within = |secs| Instant::now() + Duration::from_secs(secs);
    // Frozen as soon as the bridge owns the partitions: it is reading the 30,000 then.
    let assigned = "tenancy_bridge_assigned_partitions{direction=\"forward\"}";
    common::wait_until("the bridge gets its partitions within 90s", within(90), || {
        common::metric(f.admin(), assigned).unwrap_or(0.0) > 0.0
    });
    let at_freeze = watcher.committed("orders", PARTITIONS);
    prod.signal("STOP");
    let frozen = Instant::now();
    while frozen.elapsed() < freeze {
        // The outage itself is the point: this loop only watches the bridge through it.
        std::thread::sleep(WATCH_EVERY);
        bridge.assert_running();
    }
    prod.signal("CONT");
    let second: Vec<Input> = (30_000..40_000).map(input).collect();
    common::produce(&prod.bootstrap, "orders", &second);
    common::wait_for("every input committed within 300s of the thaw", within(300), || {
        bridge.assert_running();
        let n = watcher.committed("orders", PARTITIONS);
        if n >= 40_000 { Ok(()) } else { Err(n.to_string()) }
    });
    let restarts = common::metric(f.admin(), "tenancy_bridge_forward_restarts_total").unwrap_or(0.0);
    let inputs = common::read_all(&prod.bootstrap, "orders", 40_000, Duration::from_secs(60));
    let services = ["payment", "shipping"];
    let (p, r) =
        common::read_services(&prod.bootstrap, &rush.bootstrap, "orders", &services, 40_000, Duration::from_secs(120));
    let summary = bridge.stop(Duration::from_secs(60));
    let expected = |i: &Read, s: &str| {
        let user = std::str::from_utf8(i.header("x-user-id")?).ok()?;
        (user == "U1" && s == "payment").then(|| user.to_owned())
    };
    let report = invariant::check_with(&inputs, &services, &p, &r, expected, StampCheck::Header, Delivery::AtLeastOnce);
    let by_tid: HashMap<&[u8], usize> = inputs.iter().map(|i| (i.header(TID).unwrap(), 1)).collect();
    eprintln!(
        "prod frozen {freeze:?} at {at_freeze} of 30,000 committed: the forward direction started again {restarts} \
         times; {} inputs, {} prod + {} rush outputs, {} written again, {} violations; {summary}",
        by_tid.len(),
        report.prod,
        report.rush,
        report.replayed,
        report.violations.len()
    );
    report.assert_clean();
    assert!(at_freeze < 30_000, "the freeze came after the first 30,000 were done: nothing was in flight");
}

/// A 60 s freeze, with the short session and poll interval the other broker tests use
/// (`max.poll.interval.ms = 10000`): longer than both.
#[test]
fn a_production_broker_frozen_past_the_poll_interval_is_survived() {
    outage("outage-short", false, Duration::from_secs(60));
}

/// A 6-minute freeze with librdkafka's defaults: longer than the session (45 s), the poll
/// interval (300 s) and the message timeout (the bridge's 120 s).
#[test]
fn a_production_broker_frozen_for_six_minutes_is_survived() {
    let secs = std::env::var("PROD_FREEZE_LONG_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(360);
    outage("outage-long", true, Duration::from_secs(secs));
}

/// Partitions added to an input topic while the bridge runs (an operator scaling a topic):
/// the bridge follows — its outputs on both clusters, the outbox and the decision log grow to
/// match — and every event of the new partitions is relayed, in its partition. A user saw the
/// bridge stop there, and a restart fail on the partition mismatch.
#[test]
fn partitions_added_to_an_input_are_followed() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    use rdkafka::client::DefaultClientContext;
    let group = "grown";
    // U2's events of the last 4,000 land on partition 2 (a new one): its Rush copies need it on Rush.
    let refresh = "\"topic.metadata.refresh.interval.ms\" = 2000";
    let f = Fixture::builder()
        .topic("orders", 2)
        .whitelist(1, &[("U1", &["payment"]), ("U2", &["payment"])])
        .group(group)
        .kafka(refresh)
        .admin()
        .build();
    let (prod, rush) = (&f.prod, &f.rush);
    let at = |partitions: usize| move |i: usize| Input { partition: (i % partitions) as i32, ..input(i) };
    let first: Vec<Input> = (0..2_000).map(at(2)).collect();
    common::produce(&prod.bootstrap, "orders", &first);
    let mut bridge = Bridge::start(&f.config);
    let watcher = OffsetWatcher::new(&prod.bootstrap, group);
    let within = |secs| Instant::now() + Duration::from_secs(secs);
    common::wait_until("the first 2,000 committed within 90s", within(90), || watcher.committed("orders", 2) >= 2_000);
    let admin: AdminClient<DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &prod.bootstrap).create().unwrap();
    let grown =
        futures_executor::block_on(admin.create_partitions(&[NewPartitions::new("orders", 4)], &AdminOptions::new()))
            .unwrap();
    assert!(grown.iter().all(Result::is_ok), "{grown:?}");
    let second: Vec<Input> = (2_000..6_000).map(at(4)).collect();
    common::produce(&prod.bootstrap, "orders", &second);
    common::wait_for("every input committed within 180s", within(180), || {
        bridge.assert_running();
        let n = watcher.committed("orders", 4);
        if n >= 6_000 { Ok(()) } else { Err(n.to_string()) }
    });
    // Every output on both clusters follows the input: prod's when the forward direction
    // starts again, Rush's when the Rush lane carries its first copy of a new partition.
    let partitions = |cluster: &str, topic: &str| {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let client: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", cluster).create().unwrap();
        let md = client.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
        md.topics().first().map_or(0, |t| t.partitions().len())
    };
    common::wait_until("every output grown to 4 partitions within 120s", within(120), || {
        [&prod.bootstrap, &rush.bootstrap].iter().all(|c| partitions(c, "orders.payment") == 4)
            && partitions(&prod.bootstrap, "orders.shipping") == 4
    });
    let restarts = common::metric(f.admin(), "tenancy_bridge_forward_restarts_total").unwrap_or(0.0);
    let inputs = common::read_all(&prod.bootstrap, "orders", 6_000, Duration::from_secs(60));
    let services = ["payment", "shipping"];
    let (p, r) =
        common::read_services(&prod.bootstrap, &rush.bootstrap, "orders", &services, 6_000, Duration::from_secs(120));
    let summary = bridge.stop(Duration::from_secs(60));
    let expected = |i: &Read, s: &str| {
        let user = std::str::from_utf8(i.header("x-user-id")?).ok()?;
        ((user == "U1" || user == "U2") && s == "payment").then(|| user.to_owned())
    };
    let report = invariant::check_with(&inputs, &services, &p, &r, expected, StampCheck::Header, Delivery::AtLeastOnce);
    eprintln!(
        "orders grown from 2 to 4 partitions: the forward direction started again {restarts} times; {} prod + {} rush \
         outputs, {} written again; {summary}",
        report.prod, report.rush, report.replayed
    );
    report.assert_clean();
    let on_new = inputs.iter().filter(|i| i.partition >= 2).count();
    assert_eq!(on_new, 2_000, "half of the last 4,000 went to the new partitions");
}
