#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Operating the bridge: `/metrics` of a running bridge binary (and of the Config Mapper) has
//! every metric the Grafana dashboard and the Prometheus rules use, with the right counts and no
//! user ids; `/readyz` follows readiness and turns 503 as soon as shutdown begins.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::invariant::TID;
use common::{Bridge, Fixture, Input, Mapper, ORDERS_ROUTE, http_get};
use tenancy_bridge::admin::{Admin, AdminState};
use tenancy_bridge::metrics::Metrics;
use tenancy_bridge::relay::{Health, ProducerRole};

/// Every `tenancy_bridge_*` metric name an expression in `text` uses.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("tenancy_bridge_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

fn exposed(scrape: &str, name: &str) -> bool {
    scrape
        .lines()
        .any(|l| !l.starts_with('#') && (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))))
}

fn value(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no series {series}"))
}

fn input(i: usize, user: Option<&str>) -> Input {
    let mut headers = vec![(TID.to_string(), Some(format!("{i}").into_bytes()))];
    if let Some(u) = user {
        headers.push(("x-user-id".into(), Some(u.as_bytes().to_vec())));
    }
    Input { partition: (i % 2) as i32, key: None, payload: Some(b"{}".to_vec()), headers, timestamp: 1_760_000_000_000 }
}

#[test]
fn metrics_cover_the_dashboard_and_the_alert_rules() {
    let f = Fixture::builder()
        .topic("orders", 2)
        .whitelist(7, &[("U1", &["payment"])])
        .group("bridge-observability")
        .routes(&format!("{ORDERS_ROUTE}return_path = true\n"))
        .kafka("\"statistics.interval.ms\" = 500")
        .admin()
        .build();
    let mapper = Mapper::start("qa:observability-token-0123456789\n");
    let (prod, rush, admin) = (&f.prod, &f.rush, f.admin());
    let mut bridge = Bridge::start(&f.config);

    common::wait_for("never ready", Instant::now() + Duration::from_secs(30), || {
        bridge.assert_running();
        match std::net::TcpStream::connect(admin).is_ok().then(|| http_get(admin, "/readyz")) {
            Some((200, _)) => Ok(()),
            answer => Err(format!("{answer:?}")),
        }
    });
    assert_eq!(http_get(admin, "/livez").0, 200);

    // 40 events: 10 of U1 (Rush for payment), 25 of others, 5 without a user; 6 from Rush.
    let inputs: Vec<Input> = (0..40)
        .map(|i| {
            input(
                i,
                if i < 10 {
                    Some("U1")
                } else if i < 35 {
                    Some("U9")
                } else {
                    None
                },
            )
        })
        .collect();
    common::produce(&prod.bootstrap, "orders", &inputs);
    let back: Vec<Input> = (100..106).map(|i| input(i, Some("U9"))).collect();
    common::produce(&rush.bootstrap, "orders", &back);

    let series = |route_service_cluster: (&str, &str)| {
        format!(
            "tenancy_bridge_records_out_total{{cluster=\"{}\",env=\"{}\",route=\"orders\",service=\"{}\"}}",
            route_service_cluster.1,
            if route_service_cluster.1 == "rush" { "rush" } else { "" },
            route_service_cluster.0
        )
    };
    let scrape = common::wait_for("outputs not all acknowledged", Instant::now() + Duration::from_secs(30), || {
        let (status, body) = http_get(admin, "/metrics");
        assert_eq!(status, 200);
        let done = exposed(&body, "tenancy_bridge_consumer_lag")
            && exposed(&body, "tenancy_bridge_kafka_broker_rtt_seconds")
            && body.lines().any(|l| l.starts_with(&series(("shipping", "prod"))) && l.ends_with(" 46"));
        if done { Ok(body) } else { Err(format!("\n{body}")) }
    });

    let mut wanted = metric_names(&std::fs::read_to_string("config/grafana/dashboards/tenancy-bridge.json").unwrap());
    wanted.extend(metric_names(&std::fs::read_to_string("config/prometheus/rules.yml").unwrap()));
    assert!(wanted.len() >= 15, "{wanted:?}");
    let mapper_addr = mapper.url.trim_start_matches("http://");
    assert_eq!(http_get(mapper_addr, "/v1/whitelist").0, 200);
    let (status, mapper_scrape) = http_get(mapper_addr, "/metrics");
    assert_eq!(status, 200);
    for name in &wanted {
        let from = if name.starts_with("tenancy_bridge_mapper_") { &mapper_scrape } else { &scrape };
        assert!(exposed(from, name), "{name} is used by the dashboard or rules but not exported");
    }

    assert_eq!(value(&scrape, &series(("payment", "rush"))), 10.0);
    assert_eq!(value(&scrape, &series(("payment", "prod"))), 36.0);
    assert_eq!(value(&scrape, "tenancy_bridge_records_in_total{route=\"orders\"}"), 46.0);
    assert_eq!(value(&scrape, "tenancy_bridge_passthrough_total{reason=\"no_user\",route=\"orders\"}"), 5.0);
    assert_eq!(
        value(&scrape, "tenancy_bridge_rush_stamped_total{env=\"rush\",route=\"orders\",service=\"payment\"}"),
        10.0
    );
    assert_eq!(value(&scrape, "tenancy_bridge_return_records_total{outcome=\"forwarded\",route=\"orders\"}"), 6.0);
    assert_eq!(value(&scrape, "tenancy_bridge_whitelist_version"), 7.0);
    assert_eq!(value(&scrape, "tenancy_bridge_whitelist_entries"), 1.0);
    assert_eq!(value(&scrape, "tenancy_bridge_ready"), 1.0);
    assert_eq!(value(&scrape, "tenancy_bridge_record_age_seconds_count{cluster=\"rush\"}"), 10.0);
    assert!(value(&scrape, "tenancy_bridge_assigned_partitions{direction=\"forward\"}") >= 2.0);
    assert!(!scrape.contains("U1") && !scrape.contains("U9"), "a user id leaked into a label");
    assert!(mapper_scrape.contains("tenancy_bridge_mapper_requests_total{method=\"GET\",route=\"/v1/whitelist\""));

    let out = bridge.stop(Duration::from_secs(30));
    assert!(out.contains("records in 46"), "{out}");
}

#[test]
fn readyz_follows_assignment_and_turns_503_when_shutdown_begins() {
    let health = Arc::new(Health::default());
    let shutdown = Arc::new(AtomicBool::new(false));
    let state = Arc::new(AdminState {
        metrics: Arc::new(Metrics::new().unwrap()),
        health: health.clone(),
        shutdown: shutdown.clone(),
        snapshot: None,
        source: None,
        lookup: None,
    });
    let admin = Admin::start("127.0.0.1:0", state).unwrap();
    let addr = admin.addr.to_string();
    let (status, body) = http_get(&addr, "/readyz");
    assert_eq!((status, body.trim()), (503, "not ready: not yet assigned input partitions by the consumer group"));
    health.joined.store(true, Ordering::Relaxed);
    assert_eq!(http_get(&addr, "/readyz").0, 200);
    assert!(http_get(&addr, "/metrics").1.contains("tenancy_bridge_ready 1"));
    // Rush away: still ready (production is fine), and the body says so.
    health.set_unreachable(ProducerRole::Rush, true);
    let (status, body) = http_get(&addr, "/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("ready; rush degraded") && body.contains("rush producer: no broker up"), "{body}");
    health.set_unreachable(ProducerRole::Rush, false);
    assert_eq!(http_get(&addr, "/readyz").1.trim(), "ready");
    shutdown.store(true, Ordering::Relaxed);
    let (status, body) = http_get(&addr, "/readyz");
    assert_eq!((status, body.trim()), (503, "not ready: shutting down"));
    health.producer_fatal.store(true, Ordering::Relaxed);
    assert!(http_get(&addr, "/readyz").1.contains("a producer is in a fatal state"));
    health.set_unreachable(ProducerRole::Rush, true);
    assert!(http_get(&addr, "/readyz").1.contains("rush producer: no broker up"));
    assert_eq!(http_get(&addr, "/livez").0, 200);
}
