#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Lookup mode at production cardinality, on two tansu brokers and a Config Mapper process:
//! 1,000 users, 20,000 events on 4 partitions, every whitelist key at its default. Then the
//! Config Mapper hangs (SIGSTOP) while 10,000 events of 1,000 users it never answered for
//! arrive: production must keep flowing. Then it comes back, and a user whitelisted meanwhile
//! reaches Rush again. The verdict uses the test's own knowledge of who is whitelisted, not the
//! bridge's decision code.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::invariant::{self, StampCheck, TID};
use common::{Bridge, Broker, Fixture, Input, Mapper, Read};
use tenancy_bridge::whitelist::client::MapperClient;

const TOKEN: &str = "qa:0123456789abcdef-lookup-scale";
const PARTITIONS: i32 = 4;
const USERS: usize = 1_000;
const EVENTS: usize = 20_000;
const SERVICES: [&str; 2] = ["payment", "shipping"];

fn event(seq: usize, user: &str) -> Input {
    let mut payload = format!(r#"{{"seq":{seq},"user":"{user}","note":""#);
    while payload.len() < 290 {
        payload.push('x');
    }
    payload.push_str("\"}");
    Input {
        partition: (seq % PARTITIONS as usize) as i32,
        key: Some(format!("order-{seq}").into_bytes()),
        payload: Some(payload.into_bytes()),
        headers: vec![
            (TID.into(), Some(format!("s{seq}").into_bytes())),
            ("x-user-id".into(), Some(user.as_bytes().to_vec())),
        ],
        timestamp: 1_760_000_000_000 + seq as i64,
    }
}

/// User of event `seq` among `users` users starting at `first`: spread over all partitions.
fn user_of(seq: usize, first: usize, users: usize) -> String {
    format!("U{}", first + (seq * 7919) % users)
}

fn read_outputs(prod: &Broker, rush: &Broker, expected: usize) -> (common::ByService, common::ByService) {
    common::read_services(&prod.bootstrap, &rush.bootstrap, "orders", &SERVICES, expected, Duration::from_secs(180))
}

#[test]
fn lookup_mode_at_production_cardinality_and_through_a_hung_config_mapper() {
    let f =
        Fixture::builder().topic("orders", PARTITIONS).mapper(TOKEN, "mode = \"lookup\"").group("lookup-scale").build();
    let (prod, rush, mapper) = (&f.prod, &f.rush, f.mapper());
    let client =
        MapperClient::new(&mapper.url, Some("0123456789abcdef-lookup-scale".into()), Duration::from_secs(5)).unwrap();
    // 50 users under test for payment, the first 20 of them for shipping too.
    let mut whitelisted: HashSet<(String, &str)> = HashSet::new();
    for i in 0..50 {
        let services: Vec<String> = SERVICES.iter().take(if i < 20 { 2 } else { 1 }).map(|s| s.to_string()).collect();
        client.add(&format!("U{i}"), &services, Duration::from_secs(3600), Some("scale test"), None).unwrap();
        for s in SERVICES.iter().take(services.len()) {
            whitelisted.insert((format!("U{i}"), s));
        }
    }

    let inputs: Vec<Input> = (0..EVENTS).map(|seq| event(seq, &user_of(seq, 0, USERS))).collect();
    common::produce(&prod.bootstrap, "orders", &inputs);
    // Phase 1: a cold cache and 1,000 users.
    let started = Instant::now();
    let mut bridge = Bridge::start(&f.config);
    let (p, r) = read_outputs(prod, rush, EVENTS);
    let phase1 = started.elapsed();
    bridge.assert_running();
    let read_in = common::read_all(&prod.bootstrap, "orders", EVENTS, Duration::from_secs(60));
    assert_eq!(read_in.len(), EVENTS);
    let user = |i: &Read| String::from_utf8(i.header("x-user-id").unwrap().to_vec()).unwrap();
    let expected = |i: &Read, svc: &str| {
        let u = user(i);
        whitelisted.contains(&(u.clone(), svc)).then_some(u)
    };
    let report = invariant::check(&read_in, &SERVICES, &p, &r, expected, StampCheck::Header);
    report.assert_clean();
    let want_rush: usize =
        read_in.iter().map(|i| SERVICES.iter().filter(|s| whitelisted.contains(&(user(i), **s))).count()).sum();
    assert_eq!(report.rush, want_rush, "every whitelisted user's events on Rush");
    let requests = mapper_lookups(mapper);
    eprintln!(
        "phase 1: {EVENTS} events of {USERS} users (lookup mode, defaults) relayed in {phase1:.1?} \
         (from bridge start, group join included); {} prod + {} rush outputs; {requests} lookups",
        report.prod, report.rush
    );
    assert!(requests >= USERS as u64, "every user looked up at least once: {requests}");
    assert!(requests < (EVENTS / 4) as u64, "the cache does not work: {requests} lookups for {EVENTS} events");

    // Phase 2: the Config Mapper hangs; 10,000 events of 1,000 users it never answered for.
    mapper.signal("STOP");
    let more: Vec<Input> = (EVENTS..EVENTS + 10_000).map(|seq| event(seq, &user_of(seq, 5_000, USERS))).collect();
    let hung = Instant::now();
    common::produce(&prod.bootstrap, "orders", &more);
    let (p2, r2) = read_outputs(prod, rush, EVENTS + 10_000);
    let phase2 = hung.elapsed();
    bridge.assert_running();
    let during = common::read_all(&prod.bootstrap, "orders", EVENTS + 10_000, Duration::from_secs(60));
    let report = invariant::check(&during, &SERVICES, &p2, &r2, expected, StampCheck::Header);
    report.assert_clean();
    eprintln!(
        "phase 2: Config Mapper hung (SIGSTOP); 10,000 events of 1,000 uncached users reached prod in \
         {phase2:.1?} (produce included; request_timeout 2 s, lookup_wait 200 ms)"
    );

    // Phase 3: it answers again; a user whitelisted now reaches Rush from one point of each
    // partition on, never back.
    mapper.signal("CONT");
    client.add("U9999", &["payment".into()], Duration::from_secs(3600), Some("after the outage"), None).unwrap();
    let p = common::producer(&prod.bootstrap);
    let mut seq = EVENTS + 10_000;
    produce_until_seen(&p, &mut seq, "U9999", &rush.bootstrap);

    // Phase 4: an active, cached user is removed; the refresh of its answer (cache_ttl, 10 s by
    // default) moves its events to prod, from one point of each partition on, never back.
    client.remove("U1", None).unwrap();
    let removed = Instant::now();
    produce_until_seen(&p, &mut seq, "U1", &prod.bootstrap);
    eprintln!(
        "phase 4: removing an active user took effect {:.1?} after the DELETE (cache_ttl 10 s)",
        removed.elapsed()
    );

    let total = seq;
    let read_in = common::read_all(&prod.bootstrap, "orders", total, Duration::from_secs(60));
    let (p3, r3) = read_outputs(prod, rush, total);
    bridge.stop(Duration::from_secs(30));
    // Where a user's answer changed: per partition, the first input of theirs on `cluster`.
    let switch_of = |user: &[u8], outputs: &common::ByService| {
        let mut at: std::collections::HashMap<i32, i64> = std::collections::HashMap::new();
        for o in outputs["payment"].iter().filter(|o| o.header("x-user-id") == Some(user)) {
            let input = read_in.iter().find(|i| i.header(TID) == o.header(TID)).unwrap();
            let first = at.entry(input.partition).or_insert(input.offset);
            *first = (*first).min(input.offset);
        }
        at
    };
    let to_rush = switch_of(b"U9999", &r3);
    let to_prod = switch_of(b"U1", &p3);
    assert!(!to_rush.is_empty() && !to_prod.is_empty());
    let expected = |i: &Read, svc: &str| {
        let u = user(i);
        let after = |at: &std::collections::HashMap<i32, i64>| at.get(&i.partition).is_some_and(|s| i.offset >= *s);
        match u.as_str() {
            "U9999" => (svc == "payment" && after(&to_rush)).then_some(u),
            "U1" => (!after(&to_prod)).then_some(u),
            _ => whitelisted.contains(&(u.clone(), svc)).then_some(u),
        }
    };
    let report = invariant::check(&read_in, &SERVICES, &p3, &r3, expected, StampCheck::Header);
    report.assert_clean();
}

/// Produces events of `user` (numbered from `seq` on) until one shows up in `orders.payment` on
/// the cluster at `bootstrap`: until the bridge's answer for that user has changed.
fn produce_until_seen(
    p: &rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    seq: &mut usize,
    user: &str,
    bootstrap: &str,
) {
    let what = format!("{user}'s answer never changed on {bootstrap}");
    common::wait_until(&what, Instant::now() + Duration::from_secs(60), || {
        for _ in 0..20 {
            common::send(p, "orders", &event(*seq, user));
            *seq += 1;
        }
        rdkafka::producer::Producer::flush(p, Duration::from_secs(10)).unwrap();
        let outputs = common::read_all(bootstrap, "orders.payment", 1, Duration::from_millis(500));
        outputs.iter().any(|o| o.header("x-user-id") == Some(user.as_bytes()))
    });
}

/// Per-user lookups the Config Mapper has served, from its own metrics.
fn mapper_lookups(mapper: &Mapper) -> u64 {
    let addr = mapper.url.trim_start_matches("http://");
    let (_, body) = common::http_get(addr, "/metrics");
    body.lines()
        .filter(|l| {
            l.starts_with("tenancy_bridge_mapper_requests_total") && l.contains("route=\"/v1/whitelist/{user}\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
