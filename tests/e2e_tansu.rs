#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! End to end: two real tansu broker processes over TCP, the `tenancy-bridge run` binary, a
//! standard Kafka client producing the input, and consumers checking every output.

mod common;

use std::time::{Duration, Instant};

use common::invariant::{self, StampCheck, TID};
use common::{Bridge, Fixture, Input, Read};

const ORDERS: usize = 10_000;
const CDC: usize = 1_000;
const PARTITIONS: i32 = 4;

fn users_for(service: &str) -> std::ops::Range<usize> {
    match service {
        "payment" => 1..11,
        "shipping" => 5..16,
        "ledger" => 20..25,
        _ => 0..0,
    }
}

fn whitelisted(user: &str, service: &str) -> bool {
    user.strip_prefix('U').and_then(|n| n.parse::<usize>().ok()).is_some_and(|n| users_for(service).contains(&n))
}

fn user_of(i: usize) -> String {
    format!("U{}", (i * 7919) % 100)
}

fn orders_input(i: usize) -> Input {
    let user = user_of(i);
    let payload = format!(r#"{{"order_id":{i},"user_id":"{user}","amount":{},"items":["a","b"]}}"#, i % 997);
    Input {
        partition: (i % PARTITIONS as usize) as i32,
        key: Some(user.clone().into_bytes()),
        payload: Some(payload.into_bytes()),
        headers: vec![
            (TID.into(), Some(format!("o{i}").into_bytes())),
            ("x-user-id".into(), Some(user.into_bytes())),
            ("traceparent".into(), Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec())),
        ],
        timestamp: 1_760_000_000_000 + i as i64,
    }
}

fn cdc_input(i: usize) -> Input {
    let user = user_of(i);
    let payload = if i % 10 == 9 {
        b"not json at all".to_vec()
    } else {
        format!(r#"{{"database":"shop","table":"accounts","type":"update","ts":{i},"data":{{"id":{i},"user_id":"{user}"}}}}"#)
            .into_bytes()
    };
    Input {
        partition: (i % 2) as i32,
        key: None,
        payload: Some(payload),
        headers: vec![(TID.into(), Some(format!("c{i}").into_bytes()))],
        timestamp: 1_760_000_000_000 + i as i64,
    }
}

#[test]
fn ten_thousand_events_reach_exactly_one_cluster_per_service() {
    let mut entries: Vec<(String, Vec<&str>)> = Vec::new();
    for n in 0..100 {
        let u = format!("U{n}");
        let s: Vec<&str> = ["payment", "shipping", "ledger"].into_iter().filter(|s| whitelisted(&u, s)).collect();
        if !s.is_empty() {
            entries.push((u, s));
        }
    }
    let entry_refs: Vec<(&str, &[&str])> = entries.iter().map(|(u, s)| (u.as_str(), s.as_slice())).collect();
    let routes = r#"
[[routes]]
topic = "orders"
services = ["payment", "shipping", "ledger"]
user = { header = "x-user-id" }

[[routes]]
topic = "accounts-cdc"
services = ["payment", "ledger"]
user = { json = "/data/user_id" }
stamp = "payload"
"#;
    let f = Fixture::builder()
        .topic("orders", PARTITIONS)
        .topic("accounts-cdc", 2)
        .whitelist(1, &entry_refs)
        .group("e2e-bridge")
        .routes(routes)
        .build();
    let (prod, rush, config) = (&f.prod, &f.rush, &f.config);

    let orders: Vec<Input> = (0..ORDERS).map(orders_input).collect();
    let cdc: Vec<Input> = (0..CDC).map(cdc_input).collect();
    // Half before the bridge starts, half while it runs.
    common::produce(&prod.bootstrap, "orders", &orders[..ORDERS / 2]);
    common::produce(&prod.bootstrap, "accounts-cdc", &cdc);

    let started = Instant::now();
    let mut bridge = Bridge::start(config);
    common::produce(&prod.bootstrap, "orders", &orders[ORDERS / 2..]);

    let order_services = ["payment", "shipping", "ledger"];
    let read = |topic: &str, services: &[&str], n: usize| {
        common::read_services(&prod.bootstrap, &rush.bootstrap, topic, services, n, Duration::from_secs(180))
    };
    let (op, or) = read("orders", &order_services, ORDERS);
    let elapsed = started.elapsed();
    let (cp, cr) = read("accounts-cdc", &["payment", "ledger"], CDC);
    bridge.assert_running();

    // A graceful stop: drain, commit, exit 0.
    let summary = bridge.stop(Duration::from_secs(30));

    let in_orders = common::read_all(&prod.bootstrap, "orders", ORDERS, Duration::from_secs(60));
    let in_cdc = common::read_all(&prod.bootstrap, "accounts-cdc", CDC, Duration::from_secs(60));
    assert_eq!((in_orders.len(), in_cdc.len()), (ORDERS, CDC));

    let expect_orders = |r: &Read, svc: &str| {
        let u = std::str::from_utf8(r.header("x-user-id")?).ok()?;
        whitelisted(u, svc).then(|| u.to_string())
    };
    let report = invariant::check(&in_orders, &order_services, &op, &or, expect_orders, StampCheck::Header);
    eprintln!(
        "orders: {} inputs -> prod {} + rush {} outputs across {} services in {elapsed:.1?}",
        ORDERS,
        report.prod,
        report.rush,
        order_services.len()
    );
    report.assert_clean();
    assert_eq!(report.prod + report.rush, ORDERS * order_services.len());
    assert!(report.rush > 1000, "too few Rush copies to mean anything: {}", report.rush);

    let expect_cdc = |r: &Read, svc: &str| {
        let p: serde_json::Value = serde_json::from_slice(r.payload.as_deref()?).ok()?;
        let u = p.pointer("/data/user_id")?.as_str()?;
        whitelisted(u, svc).then(|| u.to_string())
    };
    let report = invariant::check(&in_cdc, &["payment", "ledger"], &cp, &cr, expect_cdc, StampCheck::Payload);
    eprintln!("accounts-cdc: {CDC} inputs -> prod {} + rush {}", report.prod, report.rush);
    report.assert_clean();
    assert!(report.rush > 0);
    assert!(summary.contains("not_json=100"), "summary: {summary}");

    let committed = common::committed(&prod.bootstrap, "e2e-bridge", "orders", PARTITIONS);
    assert_eq!(committed.values().sum::<i64>(), ORDERS as i64, "{committed:?}");
}
