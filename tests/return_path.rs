#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The return path on two librdkafka mock clusters: Rush-side offsets are committed only once
//! the prod write is acknowledged, so a prod cluster that refuses the writes stops the bridge
//! with nothing committed past them; when it accepts, everything is committed after it lands.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::invariant::TID;
use common::{ConfigOpts, Input};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tenancy_bridge::config::Config;
use tenancy_bridge::relay::{self, Observers};
use tenancy_bridge::whitelist::{self, Snapshot};

const GROUP: &str = "bridge-return";

fn clusters() -> (MockCluster<'static, DefaultProducerContext>, MockCluster<'static, DefaultProducerContext>) {
    let (prod, rush) = (MockCluster::new(1).unwrap(), MockCluster::new(1).unwrap());
    // The mock cluster has no CreateTopics; the bridge would create these.
    for t in ["orders", "orders.payment"] {
        prod.create_topic(t, 2, 1).unwrap();
        rush.create_topic(t, 2, 1).unwrap();
    }
    prod.create_topic("tenancy-bridge.rush.orders", 2, 1).unwrap();
    prod.create_topic("tenancy-bridge.decisions.orders", 2, 1).unwrap();
    prod.create_topic("tenancy-bridge.snapshots", 1, 1).unwrap();
    prod.create_topic("tenancy-bridge.dead-letter", 1, 1).unwrap();
    // Exactly-once anchors the Rush lane's progress on Rush with an outbox-named topic.
    rush.create_topic("tenancy-bridge.rush.orders", 2, 1).unwrap();
    (prod, rush)
}

fn config(prod: &str, rush: &str, dir: &std::path::Path) -> Config {
    let text = common::config_text(&ConfigOpts {
        prod,
        rush,
        whitelist: &dir.join("unused.json"),
        group: GROUP,
        routes: "[[routes]]\ntopic = \"orders\"\nservices = [\"payment\"]\nuser = { header = \"u\" }\nreturn_path = true\n",
        // The mock cluster does not answer DescribeConfigs.
        extra_bridge: "copy_topic_settings = false",
        kafka: "\"session.timeout.ms\" = 6000",
    });
    Config::parse(&text, std::iter::empty()).unwrap()
}

fn rush_records(n: usize) -> Vec<Input> {
    (0..n)
        .map(|i| Input {
            partition: (i % 2) as i32,
            key: None,
            payload: Some(b"{}".to_vec()),
            headers: vec![(TID.into(), Some(i.to_string().into_bytes()))],
            timestamp: 1_700_000_000_000 + i as i64,
        })
        .collect()
}

#[test]
fn rush_offsets_wait_for_the_prod_write() {
    let (prod, rush) = clusters();
    let dir = tempfile::tempdir().unwrap();
    let config = config(&prod.bootstrap_servers(), &rush.bootstrap_servers(), dir.path());
    common::produce(&rush.bootstrap_servers(), "orders", &rush_records(10));
    // Prod refuses every write for good: the return path cannot deliver anything.
    prod.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 64]);
    let shutdown = AtomicBool::new(false);
    let observers = Observers::new(&config).unwrap();
    let started = Instant::now();
    let err = relay::run_observed(&config, whitelist::shared(Snapshot::empty()), &shutdown, &observers).unwrap_err();
    let err = err.to_string();
    assert!(err.contains("orders") && err.contains("prod cluster"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60));
    let m = &observers.metrics;
    assert_eq!(m.sum(&m.return_records, &[("outcome", "forwarded")]), 0);
    let committed = common::committed(&rush.bootstrap_servers(), GROUP, "orders", 2);
    assert!(committed.values().all(|o| *o == 0), "committed past unacknowledged writes: {committed:?}");

    // Prod accepts again: a restart forwards all 10 and commits them once they landed.
    prod.clear_request_errors(RDKafkaApiKey::Produce);
    let shutdown = Arc::new(AtomicBool::new(false));
    let run = {
        let (config, shutdown) = (config.clone(), shutdown.clone());
        std::thread::spawn(move || relay::run(&config, whitelist::shared(Snapshot::empty()), &shutdown))
    };
    let forwarded = common::read_all(&prod.bootstrap_servers(), "orders", 10, Duration::from_secs(60));
    assert_eq!(forwarded.len(), 10);
    for r in &forwarded {
        assert_eq!(r.header("tenancy-origin"), Some(b"rush".as_slice()));
        assert_eq!(r.header("tenancy-origin-topic"), Some(b"orders".as_slice()));
    }
    common::wait_until("rush offsets never committed", Instant::now() + Duration::from_secs(30), || {
        common::committed(&rush.bootstrap_servers(), GROUP, "orders", 2).values().sum::<i64>() >= 10
    });
    shutdown.store(true, Ordering::Relaxed);
    let summary = run.join().unwrap().unwrap();
    assert_eq!(summary.return_forwarded, 10);
}

/// A record a Rush service wrote that prod will not take (over the bridge's producer limit) goes
/// to the dead-letter topic; the rest of the return path flows and everything is committed.
#[test]
fn a_rush_record_prod_will_not_take_is_dead_lettered() {
    let (prod, rush) = clusters();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&prod.bootstrap_servers(), &rush.bootstrap_servers(), dir.path());
    config.prod.producer.insert("message.max.bytes".into(), toml::Value::Integer(1500));
    let mut records = rush_records(10);
    records[4].payload = Some(format!(r#"{{"pad":"{}"}}"#, "x".repeat(3000)).into_bytes());
    common::produce(&rush.bootstrap_servers(), "orders", &records);
    let shutdown = Arc::new(AtomicBool::new(false));
    let observers = Arc::new(Observers::new(&config).unwrap());
    let run = {
        let (config, shutdown, observers) = (config.clone(), shutdown.clone(), observers.clone());
        std::thread::spawn(move || {
            relay::run_observed(&config, whitelist::shared(Snapshot::empty()), &shutdown, &observers)
        })
    };
    common::wait_until("rush offsets never committed", Instant::now() + Duration::from_secs(60), || {
        assert!(!run.is_finished(), "the bridge stopped on a record from Rush");
        common::committed(&rush.bootstrap_servers(), GROUP, "orders", 2).values().sum::<i64>() >= 10
    });
    let dead = common::read_all(&prod.bootstrap_servers(), "tenancy-bridge.dead-letter", 1, Duration::from_secs(20));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].header(TID), Some(b"4".as_slice()));
    assert_eq!(dead[0].header("tenancy-bridge-dlq-topic"), Some(b"rush:orders".as_slice()));
    assert_eq!(dead[0].header("tenancy-bridge-dlq-service"), Some(b"return-path".as_slice()));
    let forwarded = common::read_all(&prod.bootstrap_servers(), "orders", 9, Duration::from_secs(30));
    assert_eq!(forwarded.len(), 9);
    shutdown.store(true, Ordering::Relaxed);
    let summary = run.join().unwrap().unwrap();
    assert_eq!(summary.return_forwarded, 9);
}

/// The prod broker refusing the return path's first produce request (every record in it) as too
/// large: those records go to the dead-letter topic, the rest are forwarded, the bridge runs on.
/// Exactly-once aborts the transaction the refusal failed and dead-letters them on the rewrite.
#[test]
fn writes_prod_refuses_on_the_return_path_are_dead_lettered() {
    refused_return_writes("");
}

#[test]
fn writes_prod_refuses_on_the_return_path_are_dead_lettered_exactly_once() {
    refused_return_writes("delivery = \"exactly-once\"\ninstance_id = \"mock\"");
}

fn refused_return_writes(extra: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (prod, rush) = clusters();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&prod.bootstrap_servers(), &rush.bootstrap_servers(), dir.path());
    let text = format!("[bridge]\n{extra}\n");
    let parsed: toml::Table = toml::from_str(&text).unwrap();
    if let Some(bridge) = parsed.get("bridge").and_then(|b| b.as_table()) {
        if bridge.get("delivery").is_some() {
            config.bridge.delivery = tenancy_bridge::config::Delivery::ExactlyOnce;
            config.bridge.instance_id = Some("mock".into());
        }
    }
    common::produce(&rush.bootstrap_servers(), "orders", &rush_records(40));
    // Nothing else writes to prod before the return path does: the forward direction has no input yet.
    prod.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 1]);
    let shutdown = Arc::new(AtomicBool::new(false));
    let run = {
        let (config, shutdown) = (config.clone(), shutdown.clone());
        std::thread::spawn(move || relay::run(&config, whitelist::shared(Snapshot::empty()), &shutdown))
    };
    let all: std::collections::BTreeSet<Vec<u8>> = (0..40).map(|i: usize| i.to_string().into_bytes()).collect();
    let what = "not every Rush record forwarded or dead-lettered";
    let (forwarded, dead) = common::wait_for(what, Instant::now() + Duration::from_secs(60), || {
        assert!(!run.is_finished(), "the bridge stopped on a refused return-path write");
        let dead = common::read_all(
            &prod.bootstrap_servers(),
            "tenancy-bridge.dead-letter",
            usize::MAX,
            Duration::from_secs(3),
        );
        let fwd =
            common::read_all(&prod.bootstrap_servers(), "orders", 40 - dead.len().min(40), Duration::from_secs(3));
        let tids = |v: &[common::Read]| -> std::collections::BTreeSet<Vec<u8>> {
            v.iter().map(|r| r.header(TID).unwrap().to_vec()).collect()
        };
        let (f, d) = (tids(&fwd), tids(&dead));
        if f.union(&d).cloned().collect::<std::collections::BTreeSet<_>>() == all {
            Ok((f, d))
        } else {
            Err(format!("{} + {}", f.len(), d.len()))
        }
    });
    assert!(!dead.is_empty(), "the injection missed the return path");
    // Exactly-once on the mock, an aborted transaction's records stay visible (see relay_mock).
    if extra.is_empty() {
        assert!(forwarded.is_disjoint(&dead), "a record both forwarded and dead-lettered");
    }
    shutdown.store(true, Ordering::Relaxed);
    run.join().unwrap().unwrap();
    eprintln!("{} forwarded, {} dead-lettered", forwarded.len(), dead.len());
}
