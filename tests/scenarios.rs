#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The blog's Kafka test matrix, end to end on two tansu brokers with the bridge binary and
//! the return path on: old/new producer × old/new consumer. "New" is the Rush instance of a
//! service: a new producer writes `orders` on the Rush cluster, a new consumer reads
//! `orders.{service}` there; old ones do the same on prod. Real consumer groups stand in for
//! the services. U1 is whitelisted for `payment` only; U2 for nothing.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use common::invariant::TID;
use common::{Bridge, Fixture, Input, ORDERS_ROUTE};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers as _, Message};

const PARTITIONS: i32 = 3;
const PER_KIND: usize = 50;
const GROUP: &str = "bridge-scenarios";

/// One kind of event: who produced it (prod = old producer, rush = new) and for which user.
#[derive(Clone, Copy)]
struct Kind {
    producer: &'static str,
    user: &'static str,
}

const KINDS: [Kind; 4] = [
    Kind { producer: "prod", user: "U2" },
    Kind { producer: "prod", user: "U1" },
    Kind { producer: "rush", user: "U2" },
    Kind { producer: "rush", user: "U1" },
];

fn input(kind: usize, i: usize) -> Input {
    let k = KINDS[kind];
    Input {
        partition: (i % PARTITIONS as usize) as i32,
        key: Some(format!("{}-{i}", k.user).into_bytes()),
        payload: Some(format!(r#"{{"order":{i},"kind":{kind}}}"#).into_bytes()),
        headers: vec![
            (TID.into(), Some(format!("{kind}-{i}").into_bytes())),
            ("x-user-id".into(), Some(k.user.as_bytes().to_vec())),
        ],
        timestamp: 1_760_000_000_000 + (kind * 1000 + i) as i64,
    }
}

/// A service instance: a consumer group member on one cluster's `orders.{service}`.
struct Instance {
    name: String,
    consumer: BaseConsumer,
    got: Vec<(String, Option<String>, Option<String>)>,
}

impl Instance {
    fn start(cluster: &str, bootstrap: &str, service: &str) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", service)
            .set("auto.offset.reset", "earliest")
            .set("max.poll.interval.ms", "10000")
            .set("session.timeout.ms", "6000")
            .create()
            .unwrap();
        consumer.subscribe(&[&format!("orders.{service}")]).unwrap();
        Self { name: format!("{cluster}-{service}"), consumer, got: Vec::new() }
    }

    fn poll(&mut self) -> bool {
        match self.consumer.poll(Duration::from_millis(20)) {
            Some(Ok(m)) => {
                let h = |name: &str| {
                    m.headers().and_then(|h| {
                        h.iter()
                            .filter(|x| x.key == name)
                            .last()
                            .and_then(|x| x.value)
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                    })
                };
                self.got.push((h(TID).unwrap(), h("event_tenancy"), h("tenancy-origin")));
                true
            }
            Some(Err(e)) => panic!("{}: {e}", self.name),
            None => false,
        }
    }
}

#[test]
fn four_scenarios_old_and_new_producers_and_consumers() {
    let f = Fixture::builder()
        .topic("orders", PARTITIONS)
        .whitelist(1, &[("U1", &["payment"])])
        .group(GROUP)
        .routes(&format!("{ORDERS_ROUTE}return_path = true\n"))
        .build();
    let (prod, rush, config) = (&f.prod, &f.rush, &f.config);
    let mut bridge = Bridge::start(config);
    // The bridge creates the outputs on both clusters and the raw topic on Rush.
    common::wait_until("bridge did not create rush:orders", Instant::now() + Duration::from_secs(30), || {
        common::topic_exists(&rush.bootstrap, "orders")
    });

    let mut instances: Vec<Instance> = ["payment", "shipping"]
        .iter()
        .flat_map(|s| [Instance::start("prod", &prod.bootstrap, s), Instance::start("rush", &rush.bootstrap, s)])
        .collect();
    for (kind, k) in KINDS.iter().enumerate() {
        let inputs: Vec<Input> = (0..PER_KIND).map(|i| input(kind, i)).collect();
        common::produce(if k.producer == "prod" { &prod.bootstrap } else { &rush.bootstrap }, "orders", &inputs);
    }
    // A record that already came through the return path of `orders` and was copied back onto
    // Rush `orders`: forwarding it again would loop, so the bridge drops it.
    let mut looped = input(3, PER_KIND);
    looped.headers.push(("tenancy-origin".into(), Some(b"rush".to_vec())));
    looped.headers.push(("tenancy-origin-topic".into(), Some(b"orders".to_vec())));
    common::produce(&rush.bootstrap, "orders", &[looped]);

    // Who must get what: payment's Rush instance gets U1's events whoever produced them; every
    // other (event, service) goes to the prod instance.
    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (kind, k) in KINDS.iter().enumerate() {
        for i in 0..PER_KIND {
            for s in ["payment", "shipping"] {
                let cluster = if k.user == "U1" && s == "payment" { "rush" } else { "prod" };
                want.entry(format!("{cluster}-{s}")).or_default().push(format!("{kind}-{i}"));
            }
        }
    }
    let expected: usize = want.values().map(Vec::len).sum();
    // Every delivery, then two quiet seconds in which no duplicate shows up.
    let mut quiet_since = Instant::now();
    common::wait_for("not every delivery arrived", Instant::now() + Duration::from_secs(90), || {
        let total: usize = instances.iter().map(|i| i.got.len()).sum();
        if total >= expected && quiet_since.elapsed() > Duration::from_secs(2) {
            return Ok(());
        }
        bridge.assert_running();
        for inst in &mut instances {
            while inst.poll() {
                quiet_since = Instant::now();
            }
        }
        Err(format!("only {total} of {expected} deliveries"))
    });

    let mut report = String::new();
    for inst in &instances {
        let mut tids: Vec<String> = inst.got.iter().map(|g| g.0.clone()).collect();
        let n = tids.len();
        tids.sort();
        tids.dedup();
        assert_eq!(n, tids.len(), "{} received duplicates", inst.name);
        let mut want_here = want.get(&inst.name).cloned().unwrap_or_default();
        want_here.sort();
        assert_eq!(tids, want_here, "{} received the wrong events", inst.name);
        for (tid, stamp, origin) in &inst.got {
            let kind: usize = tid[..1].parse().unwrap();
            let from_rush = KINDS[kind].producer == "rush";
            // Prod copies are byte-identical (provenance included); Rush copies never carry it.
            let want_origin = from_rush && inst.name.starts_with("prod");
            assert_eq!(origin.is_some(), want_origin, "{}: {tid} provenance {origin:?}", inst.name);
            let want_stamp = inst.name.starts_with("rush").then(|| format!("{}_payment", KINDS[kind].user));
            assert_eq!(stamp, &want_stamp, "{}: {tid}", inst.name);
        }
        let by_kind = (0..4).map(|k| inst.got.iter().filter(|g| g.0.starts_with(&format!("{k}-"))).count());
        report.push_str(&format!("{}: {:?}\n", inst.name, by_kind.collect::<Vec<_>>()));
    }
    eprintln!("deliveries by scenario kind [prod U2, prod U1, rush U2, rush U1]:\n{report}");
    // (1) old producer + old consumer, (2) old producer + new consumer,
    // (3) new producer + old consumer, (4) new producer + new consumer.
    let counts: HashMap<&str, usize> = instances.iter().map(|i| (i.name.as_str(), i.got.len())).collect();
    assert_eq!(counts["prod-payment"], 2 * PER_KIND); // (1) and (3)
    assert_eq!(counts["rush-payment"], 2 * PER_KIND); // (2) and (4)
    assert_eq!(counts["prod-shipping"], 4 * PER_KIND); // shipping is under test for nobody
    assert_eq!(counts["rush-shipping"], 0);

    // Anyone can check the invariant on the real topics.
    let out =
        Command::new(env!("CARGO_BIN_EXE_tenancy-bridge")).args(["verify", "--config"]).arg(config).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("verify:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "verify failed");
    assert!(text.contains("invariant held"), "{text}");
    let total = 4 * PER_KIND;
    assert!(text.contains(&format!("route orders ({total} input records)")), "{text}");
    assert!(
        text.contains(&format!("return path orders: {} Rush records, {} on prod", 2 * PER_KIND, 2 * PER_KIND)),
        "{text}"
    );
    assert!(text.contains("1 dropped as loops"), "{text}");

    let summary = bridge.stop(Duration::from_secs(30));
    assert!(summary.contains("return path forwarded 100, loops dropped 1"), "{summary}");
    let committed = common::committed(&rush.bootstrap, GROUP, "orders", PARTITIONS);
    assert_eq!(committed.values().sum::<i64>(), 2 * PER_KIND as i64 + 1, "rush offsets {committed:?}");

    // Break the invariant by hand; verify must say exactly how.
    let mut on_both = input(0, 3);
    on_both.headers.push(("event_tenancy".into(), Some(b"U2_shipping".to_vec())));
    common::produce(&rush.bootstrap, "orders.shipping", &[on_both]);
    common::produce(&prod.bootstrap, "orders.payment", &[input(2, 4)]);
    let out =
        Command::new(env!("CARGO_BIN_EXE_tenancy-bridge")).args(["verify", "--config"]).arg(config).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("orders -> shipping: input [0]@1: on both clusters"), "{text}");
    assert!(text.contains("orders -> payment: input [1]@"), "{text}");
    assert!(text.contains("duplicated, 2 copies on prod"), "{text}");
    // Judged by the decision recorded for it, the hand-made Rush copy is also on the wrong cluster.
    assert!(
        text.contains("input [0]@1: on rush, but the whitelist pinned for it (version 1) does not list U2"),
        "{text}"
    );
    assert!(text.contains("invariant VIOLATED: 3 violations"), "{text}");
}

/// What a user found: a header alone took events away from production. Route `orders` →
/// payment, shipping; u1 whitelisted for payment only; 600 events of 6 users, 50 of u3 (never
/// whitelisted) stamped `u3_payment` and 50 of u1 stamped `u1_shipping`. With the default
/// `upstream_stamps = "verify"`, every stamped event reaches the production instances of both
/// services: the stamps name pairs the whitelist does not hold. u1's unstamped events still go
/// to payment's Rush instance.
#[test]
fn a_stamp_the_whitelist_does_not_hold_stays_in_production() {
    use common::invariant::{self, StampCheck};
    let f = Fixture::builder()
        .topic("orders", PARTITIONS)
        .whitelist(1, &[("u1", &["payment"])])
        .group("bridge-stamps")
        .build();
    let stamp_of = |i: usize| match i {
        _ if i % 12 == 2 => Some("u3_payment"),
        _ if i % 12 == 0 => Some("u1_shipping"),
        _ => None,
    };
    let inputs: Vec<Input> = (0..600)
        .map(|i| {
            let user = format!("u{}", i % 6 + 1);
            let mut headers = vec![
                (TID.into(), Some(i.to_string().into_bytes())),
                ("x-user-id".into(), Some(user.clone().into_bytes())),
            ];
            if let Some(s) = stamp_of(i) {
                headers.push(("event_tenancy".into(), Some(s.as_bytes().to_vec())));
            }
            Input {
                partition: (i % PARTITIONS as usize) as i32,
                key: Some(user.into_bytes()),
                payload: Some(format!(r#"{{"n":{i}}}"#).into_bytes()),
                headers,
                timestamp: 1_760_000_000_000 + i as i64,
            }
        })
        .collect();
    assert_eq!((0..600).filter(|i| stamp_of(*i) == Some("u3_payment")).count(), 50);
    assert_eq!((0..600).filter(|i| stamp_of(*i) == Some("u1_shipping")).count(), 50);
    common::produce(&f.prod.bootstrap, "orders", &inputs);
    let bridge = Bridge::start(&f.config);
    let services = ["payment", "shipping"];
    let read_in = common::read_all(&f.prod.bootstrap, "orders", 600, Duration::from_secs(30));
    let (p, r) =
        common::read_services(&f.prod.bootstrap, &f.rush.bootstrap, "orders", &services, 600, Duration::from_secs(90));
    let summary = bridge.stop(Duration::from_secs(30));
    // The test's own oracle: only u1's unstamped events are payment's Rush instance's.
    let expected = |r: &common::Read, svc: &str| {
        let user = std::str::from_utf8(r.header("x-user-id")?).ok()?;
        (user == "u1" && svc == "payment" && r.header("event_tenancy").is_none()).then(|| user.to_owned())
    };
    let report = invariant::check(&read_in, &services, &p, &r, expected, StampCheck::Header);
    eprintln!("{} prod, {} rush outputs; {summary}", report.prod, report.rush);
    report.assert_clean();
    assert_eq!((report.prod, report.rush), (1_200 - 50, 50));
    assert!(summary.contains("upstream stamps honoured 0, rejected 100"), "{summary}");
}
