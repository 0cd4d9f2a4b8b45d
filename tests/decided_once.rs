#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Decided once, under kill -9: the bridge is killed at random moments while events flow at
//! 1,000/s and the whitelist flips four times a second (U1 on and off for payment; U2 on and
//! off for payment while always on shipping). Every event reaches exactly one cluster per
//! service (none lost, none on both), Rush copies only ever carry users the whitelist named for
//! that service, and U2's shipping events are all on Rush. Two tansu brokers, the `run` binary.
//!
//! `DECIDED_ONCE_KILLS` (default 20) sets how many times the bridge is killed.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::chaos::{Flipper, Lcg, gauge, kill_repeatedly, kill9, read_outputs_of, user, user_event};
use common::invariant::TID;
use common::paced::PacedProducer;
use common::{Bridge, Fixture, Input, OffsetWatcher, Read, http_get};
use tenancy_bridge::pinning::{PIN_FORMAT, PinRecord, fingerprint_hex};

const PARTITIONS: i32 = 3;
const GROUP: &str = "bridge-decided-once";
const USERS: usize = 40;
const SERVICES: [&str; 2] = ["payment", "shipping"];

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

fn read_outputs(prod: &str, rush: &str, inputs: &HashMap<&[u8], &Read>) -> (common::ByService, common::ByService) {
    read_outputs_of(prod, rush, inputs, &SERVICES, "read_committed")
}

#[test]
fn kill_9_under_whitelist_flips_exactly_once() {
    let kills = std::env::var("DECIDED_ONCE_KILLS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    kill_9_under_whitelist_flips(Delivery::ExactlyOnce, kills);
}

#[test]
fn kill_9_under_whitelist_flips_at_least_once() {
    let kills = std::env::var("DECIDED_ONCE_KILLS").ok().and_then(|s| s.parse().ok()).unwrap_or(20) / 3;
    kill_9_under_whitelist_flips(Delivery::AtLeastOnce, kills);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    AtLeastOnce,
    ExactlyOnce,
}

/// Kills the bridge `kills` times; every event ends on exactly one cluster per service, decided
/// by a whitelist that named it. Duplicates on one cluster are counted: at-least-once may
/// write an event twice after a kill; exactly-once only as far as the broker shows aborted
/// transactions to read_committed readers (tansu does), and not at all on one that does not.
fn kill_9_under_whitelist_flips(delivery: Delivery, kills: usize) {
    let group = match delivery {
        Delivery::AtLeastOnce => GROUP.to_owned(),
        Delivery::ExactlyOnce => format!("{GROUP}-eos"),
    };
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("seed {seed}");
    let mut rng = Lcg(seed);
    let extra = match delivery {
        Delivery::AtLeastOnce => "",
        Delivery::ExactlyOnce => "delivery = \"exactly-once\"\ninstance_id = \"killed\"",
    };
    let f = Fixture::builder()
        .topic("orders", PARTITIONS)
        .whitelist(1, &[("U2", &["shipping"])])
        .group(&group)
        .bridge(extra)
        .admin()
        .build();
    let (prod, rush, admin, config, wl) = (&f.prod, &f.rush, f.admin(), &f.config, &f.whitelist);

    let flipper = Flipper::start(wl.clone(), Duration::from_millis(250));
    let producer = PacedProducer::start(&prod.bootstrap, "orders", 1_000, input);
    let watcher = OffsetWatcher::new(&prod.bootstrap, &group);
    let started = Instant::now();
    // Random points 0 to 1.5 s apart at 1,000 events/s.
    kill_repeatedly(config, &watcher, PARTITIONS, kills, &mut rng, (0, 1_500));
    let killed_for = started.elapsed();
    let flips = flipper.flips.load(Ordering::Relaxed);
    let total = producer.finish();
    drop(flipper);
    let rate = total as f64 / killed_for.as_secs_f64();
    let flip_rate = flips as f64 / killed_for.as_secs_f64();
    eprintln!(
        "{kills} kills in {killed_for:?}: {total} events ({rate:.0}/s), {flips} whitelist flips ({flip_rate:.1}/s)"
    );
    assert!(rate >= 900.0, "the producer fell behind: {rate:.0} events/s");
    assert!(flip_rate >= 3.0, "the whitelist flipped only {flip_rate:.1} times a second");

    // A last instance finishes the work; the Rush lane catches up before it stops.
    let bridge = Bridge::start(config);
    let deadline = Instant::now() + Duration::from_secs(180);
    common::wait_until("the last instance did not commit every input", deadline, || {
        watcher.committed("orders", PARTITIONS) >= total as i64
    });
    // Exactly-once: each outbox partition can end with a transaction marker, an offset the
    // lane never commits past (README, Delivery).
    let markers = if delivery == Delivery::ExactlyOnce { PARTITIONS as f64 } else { 0.0 };
    let replayed = common::wait_for("the Rush lane did not catch up", deadline, || {
        let (_, metrics) = http_get(admin, "/metrics");
        let backlog = gauge(&metrics, "tenancy_bridge_rush_backlog_records");
        let replayed = gauge(&metrics, "tenancy_bridge_decisions_replayed_total");
        match replayed {
            Some(r) if backlog.is_some_and(|b| b <= markers) => Ok(r),
            _ => Err(format!("backlog {backlog:?}")),
        }
    });
    eprintln!("last instance: {replayed} records decided with a previous owner's pins");
    // Read while the last instance runs: tansu reports high watermarks short by a batch, so
    // the backlog can read empty just before the lane carries its last batch.
    let inputs = common::read_all(&prod.bootstrap, "orders", total, Duration::from_secs(60));
    assert_eq!(inputs.len(), total);
    let by_tid: HashMap<&[u8], &Read> = inputs.iter().map(|r| (r.header(TID).unwrap(), r)).collect();
    let (prod_out, rush_out) = read_outputs(&prod.bootstrap, &rush.bootstrap, &by_tid);
    bridge.stop(Duration::from_secs(60));
    let mut violations = Vec::new();
    let (mut duplicates, mut on_rush) = (0, 0);
    for svc in SERVICES {
        let mut seen: HashMap<&[u8], (usize, usize)> = HashMap::new();
        for (cluster, outs) in [("prod", &prod_out[svc]), ("rush", &rush_out[svc])] {
            for o in outs {
                let tid = o.header(TID).unwrap();
                let Some(input) = by_tid.get(tid) else {
                    violations.push(format!("{cluster}:{svc}: unknown tid"));
                    continue;
                };
                let e = seen.entry(tid).or_default();
                if cluster == "prod" {
                    e.0 += 1;
                    if o.payload != input.payload {
                        violations.push(format!("prod:{svc}: tid {} not byte-identical", user(input)));
                    }
                } else {
                    e.1 += 1;
                    let u = user(input);
                    let allowed = match svc {
                        "payment" => u == "U1" || u == "U2",
                        _ => u == "U2",
                    };
                    if !allowed {
                        violations.push(format!("rush:{svc}: {u} was never whitelisted for {svc}"));
                    }
                    let stamp = format!("{u}_{svc}");
                    if o.header("event_tenancy") != Some(stamp.as_bytes()) {
                        violations.push(format!("rush:{svc}: wrong stamp for {u}"));
                    }
                }
            }
        }
        for (tid, input) in &by_tid {
            let (np, nr) = seen.get(tid).copied().unwrap_or_default();
            let t = String::from_utf8_lossy(tid);
            match (np, nr) {
                (0, 0) => violations.push(format!("{svc}: tid {t} lost ({}@{})", input.partition, input.offset)),
                (p, r) if p > 0 && r > 0 => violations.push(format!("{svc}: tid {t} on both ({p} prod, {r} rush)")),
                (p, r) => duplicates += p.max(r) - 1,
            }
            if svc == "shipping" && user(input) == "U2" && nr == 0 {
                violations.push(format!("shipping: tid {t} of U2 (always whitelisted) not on Rush"));
            }
            on_rush += usize::from(nr > 0);
        }
    }
    eprintln!(
        "{delivery:?}: {total} events × 2 services: {on_rush} on Rush, {duplicates} duplicated on one cluster, {} violations",
        violations.len()
    );
    // `verify` judges with the recorded decisions: every event by the whitelist pinned for it.
    // At-least-once (and exactly-once on a broker that shows aborted transactions): a replay
    // may write an event twice on its cluster; nothing else.
    let duplicates_allowed = delivery == Delivery::AtLeastOnce || !f.prod.kind.full_transactions();
    violations.extend(common::invariant::verify_by_recorded_decisions(&f.text, total, duplicates_allowed));
    // On a broker with full transactions (Apache Kafka), read_committed readers see every
    // exactly-once output once: nothing an aborted or fenced transaction wrote.
    if delivery == Delivery::ExactlyOnce && f.prod.kind.full_transactions() && duplicates > 0 {
        violations.push(format!("exactly-once on {:?}: {duplicates} outputs duplicated", f.prod.kind));
    }
    let mut kinds: HashMap<&str, usize> = HashMap::new();
    for v in &violations {
        let kind = [
            "verify",
            "lost",
            "on both",
            "never whitelisted",
            "not on Rush",
            "stamp",
            "byte-identical",
            "unknown",
            "duplicated",
        ]
        .into_iter()
        .find(|k| v.contains(k))
        .unwrap_or("other");
        *kinds.entry(kind).or_default() += 1;
    }
    assert!(
        violations.is_empty(),
        "{} violations {kinds:?}, first: {:#?}",
        violations.len(),
        &violations[..violations.len().min(10)]
    );
}

/// The deterministic case: an instance decides 3,000 events with U1 whitelisted and is killed
/// before committing any; the whitelist then drops U1; the next instance replays all of them.
/// They go to Rush again (the pinned decision), never to prod; events after the replay follow
/// the new whitelist.
#[test]
fn a_replay_after_a_whitelist_change_keeps_the_first_decision() {
    let f = Fixture::builder()
        .topic("orders", PARTITIONS)
        .whitelist(1, &[("U1", &["payment"])])
        .group(GROUP)
        .routes("[[routes]]\ntopic = \"orders\"\nservices = [\"payment\"]\nuser = { header = \"x-user-id\" }\n")
        .admin()
        .build();
    let (prod, rush, admin, config) = (&f.prod, &f.rush, f.admin(), &f.config);
    // The first instance commits nothing before the kill: the next one replays every event.
    let uncommitted =
        f.write_config("uncommitted.toml", &f.text.replace("commit_interval = \"200ms\"", "commit_interval = \"1h\""));
    let first: Vec<Input> = (0..3_000).map(input).collect();
    common::produce(&prod.bootstrap, "orders", &first);
    let u1 = first.iter().filter(|i| i.headers[1].1.as_deref() == Some(b"U1")).count();

    let bridge = Bridge::start(&uncommitted);
    let copies = common::read_until(&[(&rush.bootstrap, "orders.payment")], u1, Duration::from_secs(60));
    assert_eq!(copies[0].len(), u1, "the first instance's Rush copies");
    kill9(bridge);
    assert_eq!(OffsetWatcher::new(&prod.bootstrap, GROUP).committed("orders", PARTITIONS), 0);

    f.set_whitelist(2, &[]);
    let bridge = Bridge::start(config);
    let later: Vec<Input> = (3_000..3_600).map(input).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let watcher = OffsetWatcher::new(&prod.bootstrap, GROUP);
    common::wait_until("the replay did not finish", deadline, || watcher.committed("orders", PARTITIONS) >= 3_000);
    common::produce(&prod.bootstrap, "orders", &later);
    let (_, metrics) = http_get(admin, "/metrics");
    let replayed = gauge(&metrics, "tenancy_bridge_decisions_replayed_total").unwrap_or(0.0);
    let total = 3_600;
    common::wait_until("the later events were not committed", deadline, || {
        watcher.committed("orders", PARTITIONS) >= total
    });
    common::wait_until("the Rush lane did not catch up", deadline, || {
        gauge(&http_get(admin, "/metrics").1, "tenancy_bridge_rush_backlog_records") == Some(0.0)
    });
    bridge.stop(Duration::from_secs(60));

    let inputs = common::read_all(&prod.bootstrap, "orders", total as usize, Duration::from_secs(30));
    let by_tid: HashMap<&[u8], &Read> = inputs.iter().map(|r| (r.header(TID).unwrap(), r)).collect();
    let (p, r) = read_outputs_of(&prod.bootstrap, &rush.bootstrap, &by_tid, &["payment"], "read_committed");
    let n = |outs: &[Read], pred: &dyn Fn(usize) -> bool| {
        outs.iter()
            .filter(|o| user(o) == "U1")
            .filter(|o| pred(std::str::from_utf8(o.header(TID).unwrap()).unwrap().parse().unwrap()))
            .count()
    };
    let (early_rush, early_prod) = (n(&r["payment"], &|t| t < 3_000), n(&p["payment"], &|t| t < 3_000));
    let (late_rush, late_prod) = (n(&r["payment"], &|t| t >= 3_000), n(&p["payment"], &|t| t >= 3_000));
    eprintln!(
        "replayed {replayed} decisions; U1's first {u1} events: {early_rush} Rush copies (first run, replay), \
         {early_prod} on prod; its later events: {late_rush} on Rush, {late_prod} on prod"
    );
    assert!(replayed >= 3_000.0, "decisions_replayed_total = {replayed}");
    assert_eq!(early_prod, 0, "a replay moved U1's earlier events to prod");
    // The replay wrote them to Rush again (the Rush lane, which committed nothing either, may
    // have copied the first run's copies once more).
    assert!(early_rush >= 2 * u1, "each earlier U1 event on Rush again after the replay: {early_rush}");
    assert_eq!(late_rush, 0, "U1's later events must follow the new whitelist");
    assert_eq!(late_prod, later.iter().filter(|i| i.headers[1].1.as_deref() == Some(b"U1")).count());
}

/// How many events the replay tests' first instance decides without committing.
const REPLAYED: usize = 1_500;

/// The replay tests' start: `orders` with U1 whitelisted for payment only (the only service),
/// group `group`, `extra` `[bridge]` options; an instance that commits nothing has decided
/// [`REPLAYED`] events, U1's copies are on Rush. Returns the fixture, that instance (running)
/// and how many events are U1's.
fn decided_and_uncommitted(group: &str, extra: &str) -> (Fixture, Bridge, usize) {
    let f = Fixture::builder()
        .topic("orders", PARTITIONS)
        .whitelist(1, &[("U1", &["payment"])])
        .group(group)
        .routes("[[routes]]\ntopic = \"orders\"\nservices = [\"payment\"]\nuser = { header = \"x-user-id\" }\n")
        .bridge(extra)
        .admin()
        .build();
    let uncommitted =
        f.write_config("uncommitted.toml", &f.text.replace("commit_interval = \"200ms\"", "commit_interval = \"1h\""));
    let first: Vec<Input> = (0..REPLAYED).map(input).collect();
    common::produce(&f.prod.bootstrap, "orders", &first);
    let u1 = first.iter().filter(|i| i.headers[1].1.as_deref() == Some(b"U1")).count();
    let bridge = Bridge::start(&uncommitted);
    let copies = common::read_until(&[(&f.rush.bootstrap, "orders.payment")], u1, Duration::from_secs(60));
    assert_eq!(copies[0].len(), u1, "the first instance's Rush copies");
    (f, bridge, u1)
}

/// Waits until the instance taking over has committed the [`REPLAYED`] events, holds no
/// partition, and its Rush lane has carried every copy.
fn wait_replayed(watcher: &OffsetWatcher, admin: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    common::wait_until("the replay did not finish", deadline, || {
        watcher.committed("orders", PARTITIONS) >= REPLAYED as i64
    });
    let metric = |name: &str| common::metric(admin, name).unwrap_or(-1.0);
    common::wait_until("the Rush lane did not catch up", deadline, || {
        metric("tenancy_bridge_rush_backlog_records") == 0.0 && metric("tenancy_bridge_decision_history_held") == 0.0
    });
}

/// U1's payment outputs of the [`REPLAYED`] events: on Rush, on prod (read_committed).
fn u1_outputs(f: &Fixture) -> (usize, usize) {
    let inputs = common::read_all(&f.prod.bootstrap, "orders", REPLAYED, Duration::from_secs(30));
    let by_tid: HashMap<&[u8], &Read> = inputs.iter().map(|r| (r.header(TID).unwrap(), r)).collect();
    let (p, r) = read_outputs_of(&f.prod.bootstrap, &f.rush.bootstrap, &by_tid, &["payment"], "read_committed");
    let on = |outs: &[Read]| outs.iter().filter(|o| user(o) == "U1").count();
    (on(&r["payment"]), on(&p["payment"]))
}

/// Decided once when the whitelist stays the same longer than the decision log keeps records:
/// an instance decides 1,500 events with U1 whitelisted and commits none; retention then
/// deletes the pins and the snapshot it wrote first (DeleteRecords, as retention would); it is
/// killed; the whitelist drops U1; the next instance replays every event. The pins in use were
/// written again meanwhile (`decisions_refresh`, here 2 s), so the replay still decides with
/// the first whitelist: U1's events go to Rush again, never to prod. Without the refresh the
/// replay finds no pin and decides with the new whitelist: U1's events on both clusters.
#[test]
fn a_replay_after_retention_deleted_the_first_pins_keeps_the_first_decision() {
    const GROUP_EXPIRED: &str = "bridge-pins-expired";
    let (f, bridge, u1) = decided_and_uncommitted(GROUP_EXPIRED, "decisions_refresh = \"2s\"");
    let (prod, admin, config) = (&f.prod, f.admin(), &f.config);

    // The decision log as it stands now; once the pins in use were written again at least
    // twice over, retention takes everything that was there.
    let (decisions, snapshots) = ("tenancy-bridge.decisions.orders", "tenancy-bridge.snapshots");
    let pins_then = common::high_watermarks(&prod.bootstrap, decisions, PARTITIONS);
    let snapshots_then = common::high_watermarks(&prod.bootstrap, snapshots, 1);
    let refreshed =
        || gauge(&http_get(admin, "/metrics").1, "tenancy_bridge_decision_pins_refreshed_total").unwrap_or(0.0);
    let before = refreshed();
    common::wait_until("the pins in use written again within 30s", Instant::now() + Duration::from_secs(30), || {
        refreshed() >= before + f64::from(2 * PARTITIONS)
    });
    common::delete_records(&prod.bootstrap, decisions, &pins_then);
    common::delete_records(&prod.bootstrap, snapshots, &snapshots_then);
    kill9(bridge);
    assert_eq!(OffsetWatcher::new(&prod.bootstrap, GROUP_EXPIRED).committed("orders", PARTITIONS), 0);

    f.set_whitelist(2, &[]);
    let bridge = Bridge::start(config);
    let watcher = OffsetWatcher::new(&prod.bootstrap, GROUP_EXPIRED);
    wait_replayed(&watcher, admin);
    let metrics = http_get(admin, "/metrics").1;
    let replayed = gauge(&metrics, "tenancy_bridge_decisions_replayed_total").unwrap_or(0.0);
    let unreadable = gauge(&metrics, "tenancy_bridge_decision_history_unreadable_total").unwrap_or(0.0);
    bridge.stop(Duration::from_secs(60));

    let (on_rush, on_prod) = u1_outputs(&f);
    eprintln!(
        "pins deleted by retention, whitelist changed, replay: {replayed} decisions replayed, {unreadable} \
         partitions unreadable; U1's {u1} events: {on_rush} Rush copies, {on_prod} on prod"
    );
    assert_eq!(on_prod, 0, "the replay moved U1's events to prod: its first decision was lost with the pins");
    assert!(on_rush >= 2 * u1, "each U1 event on Rush again after the replay: {on_rush}");
    assert_eq!(unreadable, 0.0, "the decision history was readable");
}

/// A previous owner that wakes after its partitions were taken over and writes a pin (a zombie;
/// the staleness check keeps the bridge's own from doing so, so it is written here at the log's
/// level) cannot override its successor's decisions. A decides 1,500 events with U1 whitelisted
/// and commits none; it is killed; B takes over, claims the partitions and replays them; then
/// "A" pins an empty whitelist from offset 0 under its own claim; B is killed and C replays
/// again. The zombie's pins are ignored: U1's events stay on Rush, none on prod. Without claims
/// they override every pin before them and C puts U1's events on prod: on both clusters.
#[test]
fn a_zombies_pins_written_after_a_takeover_are_ignored() {
    const GROUP_ZOMBIE: &str = "bridge-zombie-pins";
    let (f, first, u1) = decided_and_uncommitted(GROUP_ZOMBIE, "");
    let (prod, admin) = (&f.prod, f.admin());
    let (decisions, snapshots) = ("tenancy-bridge.decisions.orders", "tenancy-bridge.snapshots");
    let pins = |n: usize| -> Vec<PinRecord> {
        let read = common::read_all(&prod.bootstrap, decisions, n, Duration::from_secs(30));
        read.iter().map(|r| serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap()).collect()
    };
    let count = |topic: &str, partitions: i32| -> usize {
        common::high_watermarks(&prod.bootstrap, topic, partitions).iter().map(|(_, h)| *h as usize).sum()
    };
    let a_claim = pins(count(decisions, PARTITIONS)).iter().map(|p| p.claim).max().unwrap();
    assert!(a_claim > 0, "A's pins carry its claim");
    kill9(first);

    // B commits nothing either: C replays what B replayed.
    let uncommitted =
        f.write_config("uncommitted.toml", &f.text.replace("commit_interval = \"200ms\"", "commit_interval = \"1h\""));
    let b = Bridge::start(&uncommitted);
    common::wait_until("B did not replay", Instant::now() + Duration::from_secs(60), || {
        common::metric(admin, "tenancy_bridge_decisions_replayed_total").is_some_and(|n| n >= REPLAYED as f64)
    });
    let b_claims: Vec<u64> =
        pins(count(decisions, PARTITIONS)).iter().map(|p| p.claim).filter(|c| *c > a_claim).collect();
    assert!(b_claims.len() >= PARTITIONS as usize, "B claimed every partition: {b_claims:?}");

    // The zombie: an empty whitelist, pinned from 0 on every partition under A's claim.
    let empty = tenancy_bridge::whitelist::Snapshot::new(99, []);
    let json = empty.to_json().into_bytes();
    let raw = |partition: i32, payload: Vec<u8>| Input {
        partition,
        key: None,
        payload: Some(payload),
        headers: vec![],
        timestamp: tenancy_bridge::clock::now_ms(),
    };
    common::produce(&prod.bootstrap, snapshots, &[raw(0, json.clone())]);
    let written = common::read_all(&prod.bootstrap, snapshots, count(snapshots, 1), Duration::from_secs(30));
    let snapshot_offset = written.iter().rev().find(|r| r.payload.as_deref() == Some(&json[..])).unwrap().offset;
    let zombie: Vec<Input> = (0..PARTITIONS)
        .map(|partition| {
            let pin = PinRecord {
                v: PIN_FORMAT,
                topic: "orders".into(),
                partition,
                from_offset: 0,
                snapshot: fingerprint_hex(empty.fingerprint()),
                snapshot_offset,
                version: 99,
                clock_ms: tenancy_bridge::clock::now_ms(),
                claim: a_claim,
            };
            raw(partition, serde_json::to_vec(&pin).unwrap())
        })
        .collect();
    common::produce(&prod.bootstrap, decisions, &zombie);
    kill9(b);

    let c = Bridge::start(&f.config);
    wait_replayed(&OffsetWatcher::new(&prod.bootstrap, GROUP_ZOMBIE), admin);
    c.stop(Duration::from_secs(60));
    let (on_rush, on_prod) = u1_outputs(&f);
    eprintln!(
        "zombie pins under claim {a_claim}, B's claims {b_claims:?}; U1's {u1} events: {on_rush} Rush copies, {on_prod} on prod"
    );
    assert_eq!(on_prod, 0, "the zombie's pins decided U1's events: on both clusters");
    assert!(on_rush >= 2 * u1, "each U1 event on Rush again after the replays: {on_rush}");
}

/// Decided once when a partition's decision history cannot be read: the pins name a snapshot
/// that is gone from the snapshot log. The instance taking over holds the partitions (decides
/// nothing, commits nothing, says so in `/readyz` and `decision_history_held`) instead of
/// deciding the replay with the new whitelist; once the snapshot is written again (as any
/// instance deciding with it would) the replay decides with the first whitelist: U1's events
/// stay on Rush, none on prod. Without the hold they went to prod at once, on both clusters.
#[test]
fn a_partition_whose_decision_history_cannot_be_read_is_held_not_guessed() {
    const GROUP_HELD: &str = "bridge-history-held";
    let (f, bridge, u1) = decided_and_uncommitted(GROUP_HELD, "");
    let (prod, admin, config) = (&f.prod, f.admin(), &f.config);
    kill9(bridge);

    // The snapshot the pins name is lost; the whitelist drops U1.
    let snapshots = "tenancy-bridge.snapshots";
    let written = common::read_all(&prod.bootstrap, snapshots, 1, Duration::from_secs(30));
    common::delete_records(&prod.bootstrap, snapshots, &common::high_watermarks(&prod.bootstrap, snapshots, 1));
    f.set_whitelist(2, &[]);
    let bridge = Bridge::start(config);
    let metric = |name: &str| common::metric(admin, name).unwrap_or(0.0);
    common::wait_until("every partition held within 60s", Instant::now() + Duration::from_secs(60), || {
        metric("tenancy_bridge_decision_history_held") == f64::from(PARTITIONS)
    });
    let (status, ready) = http_get(admin, "/readyz");
    let watcher = OffsetWatcher::new(&prod.bootstrap, GROUP_HELD);
    let held_committed = watcher.committed("orders", PARTITIONS);
    eprintln!("held: /readyz {status} {ready:?}, committed {held_committed}");
    assert!(ready.contains(&format!("holding {PARTITIONS} input partition")), "{ready}");
    assert_eq!(held_committed, 0, "a held partition decides and commits nothing");

    // The history can be read again: the same snapshot written anew.
    let snapshot = &written[0];
    let back = Input {
        partition: 0,
        key: snapshot.key.clone(),
        payload: snapshot.payload.clone(),
        headers: Vec::new(),
        timestamp: tenancy_bridge::clock::now_ms(),
    };
    common::produce(&prod.bootstrap, snapshots, &[back]);
    wait_replayed(&watcher, admin);
    let unreadable = metric("tenancy_bridge_decision_history_unreadable_total");
    bridge.stop(Duration::from_secs(60));

    let (on_rush, on_prod) = u1_outputs(&f);
    eprintln!("history back: U1's {u1} events: {on_rush} Rush copies, {on_prod} on prod; {unreadable} guessed");
    assert_eq!(on_prod, 0, "a held partition's replay moved U1's events to prod");
    assert!(on_rush >= 2 * u1, "each U1 event on Rush again after the replay: {on_rush}");
    assert_eq!(unreadable, 0.0, "no partition was decided without its history");
}

/// Lookup mode, kill -9 while the Config Mapper's answer for U1 flips every 300 ms: a replay
/// asks a fresh cache, whose answer may differ from the one the event was first decided with.
/// The answers are pinned in the decision log (a snapshot of those being served), so the replay
/// decides as the first time: no event on both clusters for any reader, read_uncommitted
/// included, and `verify` judges every event by its recorded decision. Before answers were
/// pinned, read_uncommitted readers saw 15 and 33 events on both clusters (exactly-once), and
/// at-least-once had no transaction to hide them. U2 is on Rush for shipping throughout.
#[test]
fn lookup_mode_kill_9_under_whitelist_flips_exactly_once() {
    lookup_mode_kill_9_under_whitelist_flips(Delivery::ExactlyOnce);
}

#[test]
fn lookup_mode_kill_9_under_whitelist_flips_at_least_once() {
    lookup_mode_kill_9_under_whitelist_flips(Delivery::AtLeastOnce);
}

fn lookup_mode_kill_9_under_whitelist_flips(delivery: Delivery) {
    const TOKEN: &str = "qa:0123456789abcdef-decided-lookup";
    const KILLS: usize = 5;
    let (group, extra) = match delivery {
        Delivery::ExactlyOnce => {
            ("bridge-decided-lookup-eos", "delivery = \"exactly-once\"\ninstance_id = \"lookup-killed\"")
        }
        Delivery::AtLeastOnce => ("bridge-decided-lookup", ""),
    };
    let f = Fixture::builder()
        .topic("orders", PARTITIONS)
        .mapper(TOKEN, "mode = \"lookup\"\ncache_ttl = \"100ms\"\nnegative_ttl = \"100ms\"")
        .group(group)
        .bridge(extra)
        .admin()
        .build();
    let (prod, rush, admin) = (&f.prod, &f.rush, f.admin());
    let client = tenancy_bridge::whitelist::client::MapperClient::new(
        &f.mapper().url,
        Some("0123456789abcdef-decided-lookup".into()),
        Duration::from_secs(5),
    )
    .unwrap();
    // U2 stays on Rush for shipping throughout: the closing events below give every outbox
    // partition a committed copy after whatever a killed instance left aborted at its end
    // (the Rush lane, reading read_committed, commits past an aborted tail only then).
    client.add("U2", &["shipping".to_owned()], Duration::from_secs(3600), None, None).unwrap();
    let flipper = Flipper::every(Duration::from_millis(300), move |n| {
        if n % 2 == 0 {
            client.add("U1", &["payment".to_owned()], Duration::from_secs(3600), None, None).unwrap();
        } else {
            client.remove("U1", None).unwrap();
        }
    });
    let input =
        |i: usize| user_event(i, PARTITIONS, if i % 5 == 0 { "U1".to_owned() } else { format!("U{}", 2 + i % 38) });
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mut rng = Lcg(seed);
    let producer = PacedProducer::start(&prod.bootstrap, "orders", 500, input);
    let watcher = OffsetWatcher::new(&prod.bootstrap, group);
    // At 500 events/s: 0.5 s to 2 s after the previous instance's last commit.
    kill_repeatedly(&f.config, &watcher, PARTITIONS, KILLS, &mut rng, (250, 750));
    let produced = producer.finish();
    let flips = flipper.flips.load(Ordering::Relaxed);
    drop(flipper);
    let closing: Vec<Input> =
        (produced..produced + 3 * PARTITIONS as usize).map(|i| user_event(i, PARTITIONS, "U2".into())).collect();
    common::produce(&prod.bootstrap, "orders", &closing);
    let total = produced + closing.len();
    let bridge = Bridge::start(&f.config);
    let deadline = Instant::now() + Duration::from_secs(180);
    common::wait_until("the last instance did not commit every input", deadline, || {
        watcher.committed("orders", PARTITIONS) >= total as i64
    });
    let markers = if delivery == Delivery::ExactlyOnce { f64::from(PARTITIONS) } else { 0.0 };
    common::wait_for("the Rush lane did not catch up", deadline, || {
        match common::metric(admin, "tenancy_bridge_rush_backlog_records") {
            Some(b) if b <= markers => Ok(()),
            other => Err(format!("backlog {other:?}")),
        }
    });
    let inputs = common::read_all(&prod.bootstrap, "orders", total, Duration::from_secs(60));
    let by_tid: HashMap<&[u8], &Read> = inputs.iter().map(|r| (r.header(TID).unwrap(), r)).collect();
    let judged = |isolation: &str| {
        let (p, r) = read_outputs_of(&prod.bootstrap, &rush.bootstrap, &by_tid, &SERVICES, isolation);
        let mut tally: HashMap<&str, usize> = HashMap::new();
        for svc in SERVICES {
            let mut seen: HashMap<&[u8], (usize, usize)> = HashMap::new();
            for o in &p[svc] {
                seen.entry(o.header(TID).unwrap()).or_default().0 += 1;
            }
            for o in &r[svc] {
                seen.entry(o.header(TID).unwrap()).or_default().1 += 1;
                if !matches!((svc, user(o)), ("payment", "U1") | ("shipping", "U2")) {
                    *tally.entry("on Rush, never whitelisted").or_default() += 1;
                }
            }
            for tid in by_tid.keys() {
                let kind = match seen.get(tid).copied().unwrap_or_default() {
                    (0, 0) => "lost",
                    (p, r) if p > 0 && r > 0 => "on both",
                    (p, r) if p + r > 1 => "duplicated",
                    (_, 1) => "on Rush",
                    _ => "on prod",
                };
                *tally.entry(kind).or_default() += 1;
            }
        }
        tally
    };
    let committed_view = judged("read_committed");
    let uncommitted_view = judged("read_uncommitted");
    let replayed = common::metric(admin, "tenancy_bridge_decisions_replayed_total");
    bridge.stop(Duration::from_secs(60));
    eprintln!(
        "lookup mode, {delivery:?}, {KILLS} kills, {flips} flips: {total} events × 2 services; read_committed \
         {committed_view:?}; read_uncommitted {uncommitted_view:?}; last instance replayed {replayed:?}"
    );
    assert!(committed_view.get("on Rush").copied().unwrap_or(0) > 0, "no U1 event ever reached Rush");
    for (view, name) in [(&committed_view, "read_committed"), (&uncommitted_view, "read_uncommitted")] {
        for bad in ["lost", "on both", "on Rush, never whitelisted"] {
            assert_eq!(view.get(bad), None, "{name}: {bad}");
        }
    }
    if delivery == Delivery::ExactlyOnce && f.prod.kind.full_transactions() {
        assert_eq!(committed_view.get("duplicated"), None, "read_committed on Apache Kafka: duplicated");
    }
    // Every event judged by the answers it was decided with, as recorded.
    let duplicates_allowed = delivery == Delivery::AtLeastOnce || !f.prod.kind.full_transactions();
    let violations = common::invariant::verify_by_recorded_decisions(&f.text, total, duplicates_allowed);
    assert!(
        violations.is_empty(),
        "{} violations, first: {:#?}",
        violations.len(),
        &violations[..violations.len().min(10)]
    );
}
