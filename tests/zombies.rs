#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! What a replaced or dead instance costs, on Apache Kafka: the broker itself refuses a zombie's
//! offsets (KIP-447), and read_committed readers wait for a dead instance's open transaction
//! until its `instance_id` comes back or the broker aborts it after the transaction timeout.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::chaos::{kill9, read_outputs_of, user, user_event};
use common::invariant::{self, StampCheck, TID};
use common::paced::PacedProducer;
use common::{Bridge, BrokerKind, Fixture, Input, OffsetWatcher, Read, Reader};
use rdkafka::error::KafkaError;

const PARTITIONS: i32 = 3;
const USERS: usize = 40;

/// The broker's own fencing, not the bridge's staleness guard: offsets sent in a transaction
/// with the group metadata of a generation that a rebalance replaced are refused, the
/// transaction can only abort, and neither its outputs nor its offsets become visible. The
/// bridge treats that refusal as an abort (its records are read again), not as fatal.
#[test]
fn apache_kafka_refuses_offsets_sent_with_a_replaced_members_generation() {
    let prod = common::Broker::of(BrokerKind::Kafka);
    let refused = common::broker::commit_with_a_replaced_generation(&prod.bootstrap)
        .expect_err("Apache Kafka took offsets from a replaced generation");
    eprintln!("Apache Kafka refused the stale offsets: {refused}");
    match &refused {
        KafkaError::Transaction(e) => {
            assert!(e.txn_requires_abort(), "the refusal must leave the transaction abortable: {e}");
            assert!(!e.is_fatal(), "the refusal must not be fatal to the producer: {e}");
        }
        other => panic!("expected a transaction error, got {other}"),
    }
}

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

/// Who takes over from the instance killed with kill -9.
#[derive(Clone, Copy, Debug)]
enum Successor {
    /// An instance with another `instance_id`: the dead one's open transaction holds
    /// read_committed readers until the broker aborts it (`bridge.transaction_timeout`, then
    /// the broker's abort check, every 10 s by default).
    Other,
    /// The same `instance_id`, restarted at once, as a supervisor would: registering the id
    /// aborts the open transaction.
    SameId,
}

/// Read_committed readers of `orders.shipping` (every event goes there on prod) while the
/// instance is killed with 500 events/s flowing: how long after the kill the first output of an
/// event produced after the kill becomes visible. Everything is then checked exactly once.
fn wait_after_kill(successor: Successor) -> Duration {
    let group = format!("eos-dead-{successor:?}").to_lowercase();
    let f = Fixture::builder()
        .on(BrokerKind::Kafka)
        .topic("orders", PARTITIONS)
        .whitelist(1, &[("U1", &["payment"])])
        .group(&group)
        .bridge("delivery = \"exactly-once\"")
        .build();
    let (prod, rush) = (&f.prod, &f.rush);
    let (config_a, _) = f.instance("a");
    let (config_b, _) = f.instance("b");
    let producer = PacedProducer::start(&prod.bootstrap, "orders", 500, input);
    let watcher = OffsetWatcher::new(&prod.bootstrap, &group);
    let within = |secs| Instant::now() + Duration::from_secs(secs);
    let a = Bridge::start(&config_a);
    // Caught up and committing steadily (a fresh broker's transaction coordinator first loads
    // its state: A's first transactions wait for it), so that A dies with records in an open
    // transaction.
    common::wait_until("A catches up within 60s", within(60), || {
        let sent = producer.produced() as i64;
        sent > 1_000 && watcher.committed("orders", PARTITIONS) >= sent - 500
    });
    // A reader that notes when each output first became visible to it.
    let seen: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (seen, done, bootstrap) = (seen.clone(), done.clone(), prod.bootstrap.clone());
        std::thread::spawn(move || {
            let mut r = Reader::new(&bootstrap, "orders.shipping");
            while !done.load(Relaxed) {
                if r.poll(Duration::from_millis(20)) {
                    let tid = r.records.last().and_then(|o| o.header(TID)).unwrap();
                    let n: usize = std::str::from_utf8(tid).unwrap().parse().unwrap();
                    seen.lock().unwrap().entry(n).or_insert_with(Instant::now);
                }
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let killed = Instant::now();
    let sent_at_kill = producer.produced();
    kill9(a);
    let next = Bridge::start(match successor {
        Successor::Other => &config_b,
        Successor::SameId => &config_a,
    });
    let wait = common::wait_for("an event produced after the kill visible within 120s", within(120), || {
        let seen = seen.lock().unwrap();
        seen.iter().filter(|(n, _)| **n >= sent_at_kill).map(|(_, t)| *t).min().ok_or_else(String::new)
    }) - killed;
    let total = producer.finish();
    common::wait_until("every input committed within 120s", within(120), || {
        watcher.committed("orders", PARTITIONS) >= total as i64
    });
    done.store(true, Relaxed);
    reader.join().unwrap();
    let inputs = common::read_all(&prod.bootstrap, "orders", total, Duration::from_secs(60));
    let by_tid: HashMap<&[u8], &Read> = inputs.iter().map(|r| (r.header(TID).unwrap(), r)).collect();
    let services = ["payment", "shipping"];
    let (p, r) = read_outputs_of(&prod.bootstrap, &rush.bootstrap, &by_tid, &services, "read_committed");
    // What the dead instance's open transaction had written: read_uncommitted readers see it too.
    let (pu, _) = read_outputs_of(&prod.bootstrap, &rush.bootstrap, &by_tid, &services, "read_uncommitted");
    let held = pu["shipping"].len().saturating_sub(p["shipping"].len());
    next.stop(Duration::from_secs(60));
    let expected = |i: &Read, s: &str| (user(i) == "U1" && s == "payment").then(|| "U1".to_owned());
    let report = invariant::check_with(
        &inputs,
        &services,
        &p,
        &r,
        expected,
        StampCheck::Header,
        invariant::Delivery::ExactlyOnce,
    );
    eprintln!(
        "{successor:?}: {total} events; read_committed readers waited {:.1}s after the kill; the dead instance's \
         open transaction held {held} outputs of orders.shipping; {} prod + {} rush outputs, {} violations",
        wait.as_secs_f64(),
        report.prod,
        report.rush,
        report.violations.len()
    );
    report.assert_clean();
    assert!(held > 0, "the instance died with nothing in an open transaction: the test measured nothing");
    wait
}

/// With the defaults (`bridge.transaction_timeout` 10 s, session timeout 6 s here): a dead
/// instance whose id never comes back holds read_committed readers of its partitions for at
/// least the transaction timeout; one restarted with its id frees them sooner.
#[test]
fn read_committed_readers_wait_for_a_dead_instances_transaction() {
    let other = wait_after_kill(Successor::Other);
    let same = wait_after_kill(Successor::SameId);
    eprintln!(
        "read_committed wait after kill -9: {:.1}s with another id, {:.1}s with the same id restarted",
        other.as_secs_f64(),
        same.as_secs_f64()
    );
    assert!(other >= Duration::from_secs(9), "readers waited less than the transaction timeout: {other:?}");
    assert!(same < other, "restarting with the same id did not shorten the wait: {same:?} vs {other:?}");
}

/// Two processes on one host with no `instance_id` set (a systemd template, a VM running two
/// replicas): a user saw three of four exit, fenced by each other's transactional id, when the
/// default was the host name alone. Both must run and relay exactly once.
#[test]
fn two_instances_without_an_instance_id_on_one_host_both_run() {
    let group = "eos-same-host";
    let f = Fixture::builder()
        .on(BrokerKind::Kafka)
        .topic("orders", PARTITIONS)
        .whitelist(1, &[("U1", &["payment"])])
        .group(group)
        .bridge("delivery = \"exactly-once\"")
        .build();
    let (prod, rush) = (&f.prod, &f.rush);
    assert!(!f.text.contains("instance_id"), "the point is the default");
    let producer = PacedProducer::start(&prod.bootstrap, "orders", 500, input);
    let watcher = OffsetWatcher::new(&prod.bootstrap, group);
    let within = |secs| Instant::now() + Duration::from_secs(secs);
    let mut first = Bridge::start(&f.config);
    let mut second = Bridge::start(&f.config);
    common::wait_until("both relay for 2,000 events within 90s", within(90), || {
        first.assert_running();
        second.assert_running();
        watcher.committed("orders", PARTITIONS) >= 2_000
    });
    let total = producer.finish();
    common::wait_until("every input committed within 90s", within(90), || {
        first.assert_running();
        second.assert_running();
        watcher.committed("orders", PARTITIONS) >= total as i64
    });
    let inputs = common::read_all(&prod.bootstrap, "orders", total, Duration::from_secs(60));
    let by_tid: HashMap<&[u8], &Read> = inputs.iter().map(|r| (r.header(TID).unwrap(), r)).collect();
    let services = ["payment", "shipping"];
    let (p, r) = read_outputs_of(&prod.bootstrap, &rush.bootstrap, &by_tid, &services, "read_committed");
    first.stop(Duration::from_secs(60));
    second.stop(Duration::from_secs(60));
    let expected = |i: &Read, s: &str| (user(i) == "U1" && s == "payment").then(|| "U1".to_owned());
    let report = invariant::check_with(
        &inputs,
        &services,
        &p,
        &r,
        expected,
        StampCheck::Header,
        invariant::Delivery::ExactlyOnce,
    );
    eprintln!("two instances, default ids: {total} events, {} prod + {} rush outputs", report.prod, report.rush);
    report.assert_clean();
}

/// A Rush-side producer fenced (someone registers the Rush lane's transactional id on Rush):
/// only Rush is affected, so `/readyz` stays 200 (a user saw 503 until a restart), the lane
/// starts again with a new producer, and every copy still arrives once.
#[test]
fn a_fenced_rush_producer_never_makes_the_bridge_unready() {
    use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};
    let group = "eos-rush-fenced";
    let f = Fixture::builder()
        .on(BrokerKind::Kafka)
        .topic("orders", PARTITIONS)
        .whitelist(1, &[("U1", &["payment"])])
        .group(group)
        .bridge("delivery = \"exactly-once\"\ninstance_id = \"fenced\"")
        .admin()
        .build();
    let (prod, rush, admin) = (&f.prod, &f.rush, f.admin());
    let producer = PacedProducer::start(&prod.bootstrap, "orders", 500, input);
    let mut bridge = Bridge::start(&f.config);
    let within = |secs| Instant::now() + Duration::from_secs(secs);
    let lane = "tenancy_bridge_partition_transactions_total{direction=\"rush-lane\",outcome=\"committed\"}";
    common::wait_until("the Rush lane commits within 90s", within(90), || {
        common::metric(admin, lane).unwrap_or(0.0) >= 1.0
    });
    let intruder: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &rush.bootstrap)
        .set("transactional.id", format!("{group}.rush.tenancy-bridge.rush.orders.0"))
        .create()
        .unwrap();
    intruder.init_transactions(Duration::from_secs(30)).unwrap();
    let fenced = Instant::now();
    let mut said_degraded = false;
    while fenced.elapsed() < Duration::from_secs(15) {
        // Watching the bridge through the fault, once a second.
        std::thread::sleep(Duration::from_secs(1));
        bridge.assert_running();
        let (status, body) = common::http_get(admin, "/readyz");
        assert_eq!(status, 200, "a Rush-side fault made the bridge unready: {body}");
        said_degraded |= body.contains("rush degraded");
    }
    drop(intruder);
    let total = producer.finish();
    let watcher = OffsetWatcher::new(&prod.bootstrap, group);
    common::wait_until("every input committed within 90s", within(90), || {
        watcher.committed("orders", PARTITIONS) >= total as i64
    });
    let inputs = common::read_all(&prod.bootstrap, "orders", total, Duration::from_secs(60));
    let by_tid: HashMap<&[u8], &Read> = inputs.iter().map(|r| (r.header(TID).unwrap(), r)).collect();
    let services = ["payment", "shipping"];
    let (p, r) = read_outputs_of(&prod.bootstrap, &rush.bootstrap, &by_tid, &services, "read_committed");
    let restarts = common::metric(admin, "tenancy_bridge_rush_lane_restarts_total").unwrap_or(0.0);
    bridge.stop(Duration::from_secs(60));
    let expected = |i: &Read, s: &str| (user(i) == "U1" && s == "payment").then(|| "U1".to_owned());
    let report = invariant::check_with(
        &inputs,
        &services,
        &p,
        &r,
        expected,
        StampCheck::Header,
        invariant::Delivery::ExactlyOnce,
    );
    eprintln!(
        "Rush lane fenced: {restarts} lane restarts, /readyz said degraded: {said_degraded}; {total} events, {} prod + \
         {} rush outputs",
        report.prod, report.rush
    );
    report.assert_clean();
    assert!(restarts >= 1.0, "the lane never noticed it was fenced");
}

/// Exactly-once with lookup mode: an instance frozen (SIGSTOP) past its session timeout and
/// `lookup_wait` while records wait for lookups (the Config Mapper hung first), short of the
/// transaction timeout. On waking, its open transaction is aborted as stale and the held
/// records are dropped, to be read again once it has rejoined: before the fix it decided them
/// at once, outside any transaction, and stopped on librdkafka's `_STATE`.
#[test]
fn an_exactly_once_lookup_instance_frozen_with_held_records_carries_on() {
    frozen_with_held_records("eos-lookup-frozen", Duration::from_secs(8));
}

/// The same, frozen past the transaction timeout too: Apache Kafka aborts the transaction
/// itself and bumps the producer's epoch, so the woken producer is fenced. A restart cures
/// that (it was paused, no other process holds its id): the forward direction starts again by
/// itself instead of exiting.
#[test]
fn an_exactly_once_instance_frozen_past_its_transaction_timeout_starts_again() {
    frozen_with_held_records("eos-lookup-fenced", Duration::from_secs(25));
}

/// A lookup-mode fixture's whitelist: U1 for payment, added through the Config Mapper with
/// `token` (its secret part).
fn whitelist_u1(f: &Fixture, token: &str) {
    let client = tenancy_bridge::whitelist::client::MapperClient::new(
        &f.mapper().url,
        Some(token.into()),
        Duration::from_secs(5),
    )
    .unwrap();
    client.add("U1", &["payment".to_owned()], Duration::from_secs(3600), Some("zombie test"), None).unwrap();
}

/// Event `i` of the lookup tests on `partitions` partitions: every tenth of U1, the rest of
/// `other(i)`, users the cache has not seen for a while (they wait for lookups).
fn lookup_input(i: usize, partitions: i32, other: impl Fn(usize) -> String) -> Input {
    user_event(i, partitions, if i % 10 == 0 { "U1".to_owned() } else { other(i) })
}

/// The lookup tests' judgement of every input and output, U1 on Rush for payment only:
/// `delivery` as read with `isolation`.
fn judge_u1(f: &Fixture, inputs: &[Read], isolation: &str, delivery: invariant::Delivery) -> invariant::Report {
    let by_tid: HashMap<&[u8], &Read> = inputs.iter().map(|r| (r.header(TID).unwrap(), r)).collect();
    let services = ["payment", "shipping"];
    let (p, r) = read_outputs_of(&f.prod.bootstrap, &f.rush.bootstrap, &by_tid, &services, isolation);
    let expected = |i: &Read, s: &str| (user(i) == "U1" && s == "payment").then(|| "U1".to_owned());
    invariant::check_with(inputs, &services, &p, &r, expected, StampCheck::Header, delivery)
}

fn frozen_with_held_records(group: &str, freeze: Duration) {
    const TOKEN: &str = "qa:0123456789abcdef-zombie-lookup";
    let f = Fixture::builder()
        .on(BrokerKind::Kafka)
        .topic("orders", PARTITIONS)
        // U1's answer outlives the freeze: a U1 record held behind a new user's lookup is
        // decided with it, never as production because the Config Mapper (frozen too) did not
        // answer in time, which lookup mode does by design and the oracle here cannot know.
        .mapper(TOKEN, "mode = \"lookup\"\nlookup_wait = \"5s\"\ncache_ttl = \"1h\"")
        .group(group)
        .bridge("delivery = \"exactly-once\"\ninstance_id = \"frozen-lookup\"")
        .admin()
        .build();
    let (prod, mapper) = (&f.prod, f.mapper());
    whitelist_u1(&f, "0123456789abcdef-zombie-lookup");
    // Most users are new for a long while: records keep needing lookups.
    let input = |i: usize| lookup_input(i, PARTITIONS, |i| format!("L{}", i % 3_000));
    let producer = PacedProducer::start(&prod.bootstrap, "orders", 200, input);
    let watcher = OffsetWatcher::new(&prod.bootstrap, group);
    let within = |secs| Instant::now() + Duration::from_secs(secs);
    let admin = f.admin();
    let mut bridge = Bridge::start(&f.config);
    common::wait_until("the bridge commits 1,000 events within 60s", within(60), || {
        bridge.assert_running();
        watcher.committed("orders", PARTITIONS) >= 1_000
    });
    mapper.signal("STOP");
    let held = "tenancy_bridge_whitelist_lookup_held_records";
    common::wait_until("records held for lookups within 10s", within(10), || {
        common::metric(admin, held).unwrap_or(0.0) >= 20.0
    });
    let held_at_freeze = common::metric(admin, held).unwrap_or(0.0);
    let kill = |sig: &str| {
        let ok = std::process::Command::new("kill").args([sig, &bridge.pid().to_string()]).status().unwrap();
        assert!(ok.success());
    };
    kill("-STOP");
    // The length of the freeze is the point: nothing to wait for while the instance is stopped.
    std::thread::sleep(freeze);
    kill("-CONT");
    mapper.signal("CONT");
    let count = |series: &str| common::metric(admin, &format!("tenancy_bridge_{series}")).unwrap_or(0.0);
    let gave_up = || count("transactions_total{outcome=\"aborted\"}") + count("forward_restarts_total");
    common::wait_until("the woken instance gives up what it had open within 60s", within(60), || {
        bridge.assert_running();
        gave_up() >= 1.0
    });
    let (aborted, restarts) = (count("transactions_total{outcome=\"aborted\"}"), count("forward_restarts_total"));
    // Events keep flowing through the woken instance before the producer stops.
    let woken_at = watcher.committed("orders", PARTITIONS);
    common::wait_until("the woken instance commits 500 more within 60s", within(60), || {
        bridge.assert_running();
        watcher.committed("orders", PARTITIONS) >= woken_at + 500
    });
    let total = producer.finish();
    common::wait_until("every input committed within 120s", within(120), || {
        bridge.assert_running();
        watcher.committed("orders", PARTITIONS) >= total as i64
    });
    let inputs = common::read_all(&prod.bootstrap, "orders", total, Duration::from_secs(60));
    let committed = judge_u1(&f, &inputs, "read_committed", invariant::Delivery::ExactlyOnce);
    let uncommitted = judge_u1(&f, &inputs, "read_uncommitted", invariant::Delivery::AtLeastOnce);
    bridge.stop(Duration::from_secs(60));
    eprintln!(
        "lookup mode, exactly-once, frozen {freeze:?} with {held_at_freeze} records held: {aborted} aborted, {restarts} \
         forward restarts; {total} events, read_committed {} prod + {} rush outputs; read_uncommitted {} written again",
        committed.prod, committed.rush, uncommitted.replayed
    );
    committed.assert_clean();
    uncommitted.assert_clean();
}

/// Exactly-once with lookup mode under cooperative rebalancing: instances join and leave while
/// records wait for lookups. A cooperative revocation commits the open transaction in the
/// middle of a batch; the held records of the partitions the instance keeps are then decided
/// in a fresh transaction. Before the fix they were written with none open, and librdkafka's
/// `_STATE` stopped the instance.
#[test]
fn an_exactly_once_lookup_instance_keeps_going_through_cooperative_rebalances() {
    const TOKEN: &str = "qa:0123456789abcdef-zombie-coop";
    const P: i32 = 6;
    let group = "eos-lookup-coop";
    let f = Fixture::builder()
        .on(BrokerKind::Kafka)
        .topic("orders", P)
        .mapper(TOKEN, "mode = \"lookup\"")
        .group(group)
        .kafka("\"partition.assignment.strategy\" = \"cooperative-sticky\"")
        .bridge("delivery = \"exactly-once\"")
        .build();
    let prod = &f.prod;
    whitelist_u1(&f, "0123456789abcdef-zombie-coop");
    // Nearly every event is of a user not seen for a while: most records wait for a lookup.
    let input = |i: usize| lookup_input(i, P, |i| format!("L{i}"));
    let producer = PacedProducer::start(&prod.bootstrap, "orders", 500, input);
    let watcher = OffsetWatcher::new(&prod.bootstrap, group);
    let within = |secs| Instant::now() + Duration::from_secs(secs);
    let (config_a, admin_a) = f.instance("a");
    let mut a = Bridge::start(&config_a);
    common::wait_until("A commits 1,000 events within 60s", within(60), || {
        a.assert_running();
        watcher.committed("orders", P) >= 1_000
    });
    // Each join and each leave revokes some of A's partitions, cooperatively.
    for round in 0..3 {
        let (config, admin) = f.instance(&format!("joiner-{round}"));
        let joiner = Bridge::start(&config);
        let assigned = "tenancy_bridge_assigned_partitions{direction=\"forward\"}";
        common::wait_until("the joiner gets partitions within 60s", within(60), || {
            a.assert_running();
            common::metric(&admin, assigned).unwrap_or(0.0) > 0.0
        });
        // The two share the work for a while (records waiting for lookups on both sides).
        let shared_from = watcher.committed("orders", P);
        common::wait_until("the two commit 500 more within 60s", within(60), || {
            a.assert_running();
            watcher.committed("orders", P) >= shared_from + 500
        });
        joiner.stop(Duration::from_secs(60));
        let sent = producer.produced() as i64;
        common::wait_until("A catches up after the joiner left within 60s", within(60), || {
            a.assert_running();
            watcher.committed("orders", P) >= sent - 500
        });
    }
    let total = producer.finish();
    common::wait_until("every input committed within 120s", within(120), || {
        a.assert_running();
        watcher.committed("orders", P) >= total as i64
    });
    let inputs = common::read_all(&prod.bootstrap, "orders", total, Duration::from_secs(60));
    let report = judge_u1(&f, &inputs, "read_committed", invariant::Delivery::ExactlyOnce);
    // A revocation is routine: the forward direction must not need to start again for it (it
    // did, after a write outside any transaction, before the fix).
    let restarts = common::metric(&admin_a, "tenancy_bridge_forward_restarts_total");
    a.stop(Duration::from_secs(60));
    assert_eq!(restarts, Some(0.0), "A's forward direction started again during cooperative rebalances");
    eprintln!(
        "lookup mode, exactly-once, 3 joiners came and went (cooperative-sticky): {total} events, {} prod + {} rush \
         outputs, {} violations",
        report.prod,
        report.rush,
        report.violations.len()
    );
    report.assert_clean();
}
