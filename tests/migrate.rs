#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `migrate` and `explain` on two brokers (Apache Kafka in the test command, `TEST_BROKER`): a
//! service's consumer group moves from `orders` to `orders.payment` and back while the bridge
//! relays, and everything it processes across the
//! three stretches is checked event by event.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use common::invariant::TID;
use common::paced::PacedProducer;
use common::{Bridge, Fixture, Input};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Headers as _, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const EVENTS: usize = 10_000;
const PARTITIONS: i32 = 4;
const GROUP: &str = "payment-svc";
/// Users U0..U199; U1..U10 are under test for payment: 5 % of the events go to Rush.
const USERS: usize = 200;
/// Events/s produced while the group moves.
const LIVE_RATE: u64 = 500;

fn user_of(i: usize) -> String {
    format!("U{}", (i * 7919) % USERS)
}

fn rush_for_payment(user: &str) -> bool {
    user.strip_prefix('U').and_then(|n| n.parse::<usize>().ok()).is_some_and(|n| (1..=10).contains(&n))
}

fn input(i: usize) -> Input {
    let user = user_of(i);
    Input {
        partition: (i % PARTITIONS as usize) as i32,
        key: Some(user.clone().into_bytes()),
        payload: Some(format!(r#"{{"order_id":{i},"user_id":"{user}"}}"#).into_bytes()),
        headers: vec![(TID.into(), Some(format!("o{i}").into_bytes())), ("x-user-id".into(), Some(user.into_bytes()))],
        timestamp: 1_760_000_000_000 + i as i64,
    }
}

fn live_input(i: usize) -> Input {
    input(EVENTS + i)
}

fn tid<M: Message>(m: &M) -> String {
    let h = m.headers().unwrap();
    let v = h.iter().find(|h| h.key == TID).and_then(|h| h.value).unwrap();
    String::from_utf8(v.to_vec()).unwrap()
}

/// Runs the binary: whether it succeeded, and what it printed (stdout, then stderr).
fn cli(args: &[&str]) -> (bool, String) {
    let (ok, out, err) = cli_split(args);
    (ok, format!("{out}{err}"))
}

fn cli_split(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tenancy-bridge")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Records a service takes between two looks at its deadline.
const BATCH: usize = 500;

/// The service: a member of `GROUP` reading `topic`, processing `limit` events (or until it
/// reaches `until` per partition), committing exactly what it processed, then leaving.
struct Service(BaseConsumer);

impl Service {
    fn join(bootstrap: &str, topic: &str) -> Self {
        Self::join_as(bootstrap, topic, GROUP)
    }

    fn join_as(bootstrap: &str, topic: &str, group: &str) -> Self {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("max.poll.interval.ms", "10000")
            .set("session.timeout.ms", "6000")
            .create()
            .unwrap();
        c.subscribe(&[topic]).unwrap();
        Self(c)
    }

    /// Processes the first `quota` events of every partition, or every event before `until`
    /// (per partition); events fetched past that are not processed.
    fn process(&self, quota: Option<usize>, until: Option<&BTreeMap<i32, i64>>) -> Vec<(i32, i64, String)> {
        let mut done = Vec::new();
        let mut count: BTreeMap<i32, usize> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        let full = |p: i32, next: i64, n: usize| {
            quota.is_some_and(|q| n >= q) || until.is_some_and(|u| next >= u.get(&p).copied().unwrap_or(0))
        };
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        let what = "service processed too little";
        common::wait_for(what, deadline, || {
            // What has arrived, a batch at a time: the wait checks its deadline between batches.
            for _ in 0..BATCH {
                let at = |p: i32| (next.get(&p).copied().unwrap_or(-1), count.get(&p).copied().unwrap_or(0));
                if (0..PARTITIONS).all(|p| full(p, at(p).0, at(p).1)) {
                    return Ok(());
                }
                match self.0.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        let p = m.partition();
                        let (at, n) = (next.get(&p).copied().unwrap_or(-1), count.get(&p).copied().unwrap_or(0));
                        if !full(p, at, n) {
                            next.insert(p, m.offset() + 1);
                            *count.entry(p).or_default() += 1;
                            done.push((p, m.offset(), tid(&m)));
                        }
                    }
                    Some(Err(e)) => panic!("service read: {e}"),
                    None => break,
                }
            }
            Err(format!("only {count:?}"))
        });
        let mut tpl = TopicPartitionList::new();
        let topic = self.0.subscription().unwrap().elements()[0].topic().to_owned();
        let mut last: BTreeMap<i32, i64> = BTreeMap::new();
        for (p, o, _) in &done {
            last.insert(*p, o + 1);
        }
        for (p, o) in last {
            tpl.add_partition_offset(&topic, p, Offset::Offset(o)).unwrap();
        }
        if tpl.count() > 0 {
            self.0.commit(&tpl, CommitMode::Sync).unwrap();
        }
        done
    }
}

fn group_state(bootstrap: &str, group: &str) -> String {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    let list = c.fetch_group_list(Some(group), Duration::from_secs(10)).unwrap();
    list.groups().iter().find(|g| g.name() == group).map(|g| g.state().to_owned()).unwrap_or_default()
}

fn wait_stopped(bootstrap: &str) {
    wait_group_stopped(bootstrap, GROUP);
}

fn wait_group_stopped(bootstrap: &str, group: &str) {
    common::wait_until("the service group to be empty", Instant::now() + Duration::from_secs(90), || {
        matches!(group_state(bootstrap, group).as_str(), "" | "Empty" | "Dead")
    });
}

/// Two brokers, `orders`, the whitelist and the bridge's config (not started).
fn setup(delivery: &str) -> Fixture {
    let users: Vec<String> = (1..=10).map(|n| format!("U{n}")).collect();
    let entries: Vec<(&str, &[&str])> = users.iter().map(|u| (u.as_str(), &["payment"][..])).collect();
    Fixture::builder()
        .topic("orders", PARTITIONS)
        .whitelist(1, &entries)
        .bridge(&format!("delivery = \"{delivery}\"\ncopy_topic_settings = false"))
        .build()
}

fn scenario(delivery: &str) {
    let f = setup(delivery);
    let (prod, config) = (&f.prod, &f.config);
    let cfg = config.to_str().unwrap();
    let inputs: Vec<Input> = (0..EVENTS).map(input).collect();
    common::produce(&prod.bootstrap, "orders", &inputs);
    // The service processes the first 3,000 events on the raw topic, as it does today.
    let service = Service::join(&prod.bootstrap, "orders");
    let before = service.process(Some(750), None);
    // A group with a member is refused (asked while the member still polls within its
    // max.poll.interval.ms, so the coordinator counts it).
    let base = ["migrate", "--config", cfg, "--route", "orders", "--service", "payment", "--group", GROUP];
    let (ok, out) = cli(&base);
    assert!(!ok && out.contains("not stopped"), "{out}");
    drop(service);
    let mut bridge = Bridge::start(config);
    let watch = common::OffsetWatcher::new(&prod.bootstrap, "bridge");
    common::wait_until("the bridge to relay every event", Instant::now() + Duration::from_secs(180), || {
        bridge.assert_running();
        watch.committed("orders", PARTITIONS) >= EVENTS as i64
    });
    // Events keep arriving, and the bridge relaying them, while the group moves.
    let live = PacedProducer::start(&prod.bootstrap, "orders", LIVE_RATE, live_input);

    // An unknown route or service is refused; a dry run commits nothing.
    wait_stopped(&prod.bootstrap);
    let (ok, out) = cli(&["migrate", "--config", cfg, "--route", "nope", "--service", "payment", "--group", GROUP]);
    assert!(!ok && out.contains("route \"nope\" is not in the config"), "{out}");
    let (ok, out) = cli(&["migrate", "--config", cfg, "--route", "orders", "--service", "nope", "--group", GROUP]);
    assert!(!ok && out.contains("service \"nope\" is not on route \"orders\""), "{out}");
    let (ok, out) = cli(&[&base[..], &["--dry-run"]].concat());
    assert!(ok && out.contains("dry run"), "{out}");
    assert!(common::committed(&prod.bootstrap, GROUP, "orders.payment", PARTITIONS).is_empty(), "dry run committed");

    // To the filtered topic; a second run changes nothing.
    let (ok, out) = cli(&base);
    assert!(ok && out.contains("committed"), "{out}");
    println!("{out}");
    let (ok, again) = cli(&base);
    assert!(ok && again.contains("nothing to change"), "{again}");

    let service = Service::join(&prod.bootstrap, "orders.payment");
    let filtered = service.process(Some(500), None);
    drop(service);
    wait_stopped(&prod.bootstrap);

    // And back to the raw topic, to its end.
    let (ok, out) = cli(&[&base[..], &["--to", "raw"]].concat());
    assert!(ok && out.contains("committed"), "{out}");
    println!("{out}");
    let back_at = common::committed(&prod.bootstrap, GROUP, "orders", PARTITIONS);
    let total = EVENTS + live.finish();
    common::wait_until("the bridge to relay the live events", Instant::now() + Duration::from_secs(120), || {
        bridge.assert_running();
        watch.committed("orders", PARTITIONS) >= total as i64
    });
    // Where each event sits on the raw topic.
    let raw = common::read_all(&prod.bootstrap, "orders", total, Duration::from_secs(60));
    let at: HashMap<String, (i32, i64)> = raw
        .iter()
        .map(|r| (String::from_utf8(r.header(TID).unwrap().to_vec()).unwrap(), (r.partition, r.offset)))
        .collect();
    let rush_event: HashMap<(i32, i64), bool> = raw
        .iter()
        .map(|r| {
            ((r.partition, r.offset), rush_for_payment(std::str::from_utf8(r.header("x-user-id").unwrap()).unwrap()))
        })
        .collect();

    let ends: BTreeMap<i32, i64> =
        (0..PARTITIONS).map(|p| (p, raw.iter().filter(|r| r.partition == p).count() as i64)).collect();
    // Partitions already at their end have nothing to read.
    let mut rest = ends.clone();
    rest.retain(|p, end| back_at.get(p).copied().unwrap_or(0) < *end);
    for p in 0..PARTITIONS {
        rest.entry(p).or_insert(-1);
    }
    let service = Service::join(&prod.bootstrap, "orders");
    let after = service.process(None, Some(&rest));
    drop(service);

    // Event by event: raw before the move, prod-decided events only while filtered, raw after.
    let mut seen: HashMap<(i32, i64), usize> = HashMap::new();
    for (_, _, t) in before.iter().chain(&filtered).chain(&after) {
        *seen.entry(at[t]).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "processed twice: {:?}", &twice[..twice.len().min(5)]);
    let first_move: BTreeMap<i32, i64> = {
        let mut m = BTreeMap::new();
        for (p, o, _) in &before {
            let e = m.entry(*p).or_insert(0);
            *e = (*e).max(o + 1);
        }
        m
    };
    let (mut missing, mut wrongly) = (Vec::new(), Vec::new());
    for r in &raw {
        let k = (r.partition, r.offset);
        let start = first_move.get(&r.partition).copied().unwrap_or(0);
        let back = back_at[&r.partition];
        let while_filtered = r.offset >= start && r.offset < back;
        let expected = !(while_filtered && rush_event[&k]);
        match (expected, seen.contains_key(&k)) {
            (true, false) => missing.push(k),
            (false, true) => wrongly.push(k),
            _ => {}
        }
    }
    assert!(missing.is_empty(), "never processed: {} e.g. {:?}", missing.len(), &missing[..missing.len().min(5)]);
    assert!(wrongly.is_empty(), "Rush events processed by prod: {wrongly:?}");
    let rush_skipped = raw.iter().filter(|r| !seen.contains_key(&(r.partition, r.offset))).count();
    println!(
        "{delivery}: {total} events ({} live); processed {} raw, {} filtered, {} raw again; {rush_skipped} Rush events \
         skipped, none twice",
        total - EVENTS,
        before.len(),
        filtered.len(),
        after.len()
    );
    assert!(rush_skipped > 0, "the filtered stretch skipped no Rush event: the test proves nothing");

    explain(cfg, &raw, &prod.bootstrap);
    // A record the bridge has not relayed yet.
    bridge.stop(Duration::from_secs(30));
    common::produce(&prod.bootstrap, "orders", &[input(0)]);
    let (ok, out) =
        cli(&["explain", "--config", cfg, "--route", "orders", "--partition", "0", "--offset", &ends[&0].to_string()]);
    assert!(ok && out.contains("not relayed yet"), "{out}");
}

fn explain(cfg: &str, raw: &[common::Read], prod: &str) {
    let user = |u: &str| cli(&["explain", "--config", cfg, "--route", "orders", "--user", u]);
    let (ok, out) = user("U3");
    println!("{out}");
    assert!(ok && out.contains("payment          -> rush:orders.payment"), "{out}");
    assert!(out.contains("shipping         -> prod:orders.shipping"), "{out}");
    let (ok, out) = user("U42");
    assert!(ok && out.contains("not whitelisted") && !out.contains("-> rush"), "{out}");

    let filtered = common::read_all(prod, "orders.payment", 1, Duration::from_secs(30));
    let offset_of: HashMap<&[u8], i64> =
        filtered.iter().filter(|r| r.partition == 1).map(|r| (r.header(TID).unwrap(), r.offset)).collect();
    let in_p1 = |rush: bool| {
        raw.iter()
            .find(|r| {
                r.partition == 1
                    && rush_for_payment(std::str::from_utf8(r.header("x-user-id").unwrap()).unwrap()) == rush
            })
            .unwrap()
    };
    let record = |r: &common::Read| {
        let (ok, out, err) = cli_split(&[
            "explain",
            "--config",
            cfg,
            "--route",
            "orders",
            "--partition",
            "1",
            "--offset",
            &r.offset.to_string(),
            "--json",
        ]);
        (ok, if ok { out } else { err })
    };
    let on_prod = in_p1(false);
    let (ok, out) = record(on_prod);
    assert!(ok, "{out}");
    println!("{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], "relayed", "{out}");
    let payment = &v["services"][0];
    assert_eq!(payment["cluster"], "prod", "{out}");
    assert_eq!(payment["output_offset"], offset_of[on_prod.header(TID).unwrap()], "{out}");
    let (ok, out) = record(in_p1(true));
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["services"][0]["cluster"], "rush", "{out}");
    assert!(v["services"][0]["found"].as_str().unwrap().starts_with("on rush orders.payment[1]@"), "{out}");
    assert_eq!(v["services"][1]["cluster"], "prod", "{out}");
}

#[test]
fn a_group_moves_to_its_filtered_topic_and_back_exactly_once() {
    scenario("exactly-once");
}

#[test]
fn a_group_moves_to_its_filtered_topic_and_back_at_least_once() {
    scenario("at-least-once");
}

/// A group behind where the bridge started, and one ahead of the bridge: no map proves either.
#[test]
fn positions_the_bridge_has_not_mapped_are_refused() {
    let f = setup("at-least-once");
    let (prod, config) = (&f.prod, &f.config);
    let cfg = config.to_str().unwrap();
    common::produce(&prod.bootstrap, "orders", &(0..400).map(input).collect::<Vec<_>>());
    // The bridge starts at offset 50 of every partition, as if it had been deployed then.
    let starter: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &prod.bootstrap).set("group.id", "bridge").create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset("orders", p, Offset::Offset(50)).unwrap();
    }
    starter.commit(&tpl, CommitMode::Sync).unwrap();
    let early = Service::join_as(&prod.bootstrap, "orders", "early-svc");
    early.process(Some(20), None);
    drop(early);
    let mut bridge = Bridge::start(config);
    let watch = common::OffsetWatcher::new(&prod.bootstrap, "bridge");
    common::wait_until("the bridge to relay every event", Instant::now() + Duration::from_secs(120), || {
        bridge.assert_running();
        watch.committed("orders", PARTITIONS) >= 400
    });
    bridge.stop(Duration::from_secs(30));
    wait_group_stopped(&prod.bootstrap, "early-svc");
    let args = |group| ["migrate", "--config", cfg, "--route", "orders", "--service", "payment", "--group", group];
    let (ok, out) = cli(&args("early-svc"));
    assert!(!ok && out.contains("older than anything the bridge has mapped") && out.contains("offset 50"), "{out}");
    assert!(out.contains("nothing was committed"), "{out}");
    assert!(common::committed(&prod.bootstrap, "early-svc", "orders.payment", PARTITIONS).is_empty());

    // The bridge is stopped; 40 more events; a group that read them all is ahead of it.
    common::produce(&prod.bootstrap, "orders", &(400..440).map(input).collect::<Vec<_>>());
    let late = Service::join_as(&prod.bootstrap, "orders", "late-svc");
    late.process(Some(110), None);
    drop(late);
    wait_group_stopped(&prod.bootstrap, "late-svc");
    let (ok, out) = cli(&args("late-svc"));
    assert!(!ok && out.contains("ahead of the bridge (110 against the bridge's 100)"), "{out}");
    assert!(common::committed(&prod.bootstrap, "late-svc", "orders.payment", PARTITIONS).is_empty());
    let (ok, out) = cli(&args("bridge"));
    assert!(!ok && out.contains("the bridge's own consumer group"), "{out}");
}
