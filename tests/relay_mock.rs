#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The relay against two librdkafka mock clusters (prod and Rush), in process.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::invariant::{self, Delivery, StampCheck, TID};
use common::{ConfigOpts, Input, Read};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tenancy_bridge::config::Config;
use tenancy_bridge::relay::{self, Observers, RelayError, Summary, WhitelistSource};
use tenancy_bridge::whitelist::client::MapperClient;
use tenancy_bridge::whitelist::lookup::{LookupCache, LookupSettings};
use tenancy_bridge::whitelist::{self, FileSource, SharedSnapshot, Snapshot, SnapshotPoller};

const PARTITIONS: i32 = 3;
const OUTBOX: &str = "tenancy-bridge.rush.orders";
const DEAD_LETTER: &str = "tenancy-bridge.dead-letter";

struct Clusters {
    prod: MockCluster<'static, DefaultProducerContext>,
    rush: MockCluster<'static, DefaultProducerContext>,
    dir: tempfile::TempDir,
    partitions: i32,
}

impl Clusters {
    fn new() -> Self {
        Self::with_partitions(PARTITIONS)
    }

    /// `orders` and (with [`Self::with_outputs`]) its outputs with `partitions` partitions.
    fn with_partitions(partitions: i32) -> Self {
        let prod = MockCluster::new(1).unwrap();
        let rush = MockCluster::new(1).unwrap();
        prod.create_topic("orders", partitions, 1).unwrap();
        Self { prod, rush, dir: tempfile::tempdir().unwrap(), partitions }
    }

    /// The mock cluster has no CreateTopics support, so output topics (and the Rush outbox, the decision log) are
    /// made here; creation by the bridge is covered by the tansu end-to-end test.
    fn with_outputs(self, services: &[&str]) -> Self {
        let n = self.partitions;
        self.prod.create_topic(OUTBOX, n, 1).unwrap();
        self.prod.create_topic("tenancy-bridge.decisions.orders", n, 1).unwrap();
        self.prod.create_topic("tenancy-bridge.snapshots", 1, 1).unwrap();
        self.prod.create_topic(DEAD_LETTER, 1, 1).unwrap();
        // Exactly-once anchors the Rush lane's progress on Rush with an outbox-named topic.
        self.rush.create_topic(OUTBOX, n, 1).unwrap();
        for s in services {
            for cluster in [&self.prod, &self.rush] {
                cluster.create_topic(&format!("orders.{s}"), n, 1).unwrap();
            }
        }
        self
    }

    fn config(&self, routes: &str, extra_bridge: &str) -> Config {
        let text = common::config_text(&ConfigOpts {
            prod: &self.prod.bootstrap_servers(),
            rush: &self.rush.bootstrap_servers(),
            whitelist: &self.wl_path(),
            group: "bridge-test",
            routes,
            // The mock cluster does not answer DescribeConfigs.
            extra_bridge: &format!("copy_topic_settings = false\n{extra_bridge}"),
            kafka: "\"session.timeout.ms\" = 6000\n\"max.poll.interval.ms\" = 10000",
        });
        Config::parse(&text, std::iter::empty()).unwrap()
    }

    fn outputs(&self, services: &[&str], inputs: usize) -> (common::ByService, common::ByService) {
        let (p, r) = (self.prod.bootstrap_servers(), self.rush.bootstrap_servers());
        common::read_services(&p, &r, "orders", services, inputs, Duration::from_secs(30))
    }

    /// The invariant over `inputs` events on both services, with U1 whitelisted for both.
    fn assert_u1_on_rush(&self, inputs: usize) {
        let read_in = common::read_all(&self.prod.bootstrap_servers(), "orders", inputs, Duration::from_secs(20));
        let services = ["payment", "shipping"];
        let (prod, rush) = self.outputs(&services, inputs);
        let expected = |r: &Read, _: &str| (r.header("x-user-id") == Some(b"U1")).then(|| "U1".to_string());
        invariant::check(&read_in, &services, &prod, &rush, expected, StampCheck::Header).assert_clean();
    }

    fn wl_path(&self) -> std::path::PathBuf {
        self.dir.path().join("whitelist.json")
    }

    fn set_whitelist(&self, version: u64, entries: &[(&str, &[&str])]) {
        common::write_atomic(&self.wl_path(), &common::whitelist_json(version, entries));
    }
}

const HEADER_ROUTE: &str = r#"
[[routes]]
topic = "orders"
services = ["payment", "shipping"]
user = { header = "x-user-id" }
"#;

/// A running relay in a thread.
struct Running {
    shutdown: Arc<AtomicBool>,
    observers: Arc<Observers>,
    thread: std::thread::JoinHandle<Result<Summary, RelayError>>,
    _source: Option<FileSource>,
    snapshot: Option<SharedSnapshot>,
}

fn start(c: &Clusters, config: Config) -> Running {
    let snapshot = whitelist::shared(Snapshot::empty());
    let source = FileSource::start(c.wl_path(), Duration::from_millis(50), snapshot.clone(), 100).unwrap();
    let mut run = start_with(config, snapshot.clone().into(), Some(source));
    run.snapshot = Some(snapshot);
    run
}

fn start_with(config: Config, whitelist: WhitelistSource, source: Option<FileSource>) -> Running {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let shutdown = Arc::new(AtomicBool::new(false));
    let observers = Arc::new(Observers::new(&config).unwrap());
    let (s, o) = (shutdown.clone(), observers.clone());
    let thread = std::thread::spawn(move || relay::run_observed(&config, whitelist, &s, &o));
    Running { shutdown, observers, thread, _source: source, snapshot: None }
}

impl Running {
    fn acked(&self) -> u64 {
        let m = &self.observers.metrics;
        m.sum(&m.records_out, &[])
    }

    /// Times a consumer (forward or Rush lane) paused at the in-flight bound.
    fn pauses(&self) -> u64 {
        let m = &self.observers.metrics;
        m.sum(&m.backpressure_pauses, &[])
    }

    fn assigned(&self) -> usize {
        self.observers.health.assigned(relay::Direction::Forward).load(Ordering::Relaxed)
    }

    fn wait_acked(&self, outputs: u64, timeout: Duration) {
        common::wait_for("outputs not all acknowledged", Instant::now() + timeout, || {
            let n = self.acked();
            if n >= outputs {
                return Ok(());
            }
            assert!(!self.thread.is_finished(), "relay stopped early");
            Err(format!("only {n} of {outputs}"))
        });
    }

    /// Waits until the relay decides from whitelist `version`.
    fn wait_whitelist(&self, version: u64, timeout: Duration) {
        let snapshot = self.snapshot.as_ref().expect("a file-backed whitelist");
        common::wait_until(&format!("whitelist version {version} never loaded"), Instant::now() + timeout, || {
            snapshot.load().version() == version
        });
    }

    fn records_in(&self) -> u64 {
        let m = &self.observers.metrics;
        m.sum(&m.records_in, &[])
    }

    fn stop(self) -> Result<Summary, RelayError> {
        self.shutdown.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn event(i: usize, user: Option<&str>, payload: Vec<u8>) -> Input {
    let mut headers = vec![(TID.to_string(), Some(i.to_string().into_bytes()))];
    if let Some(u) = user {
        headers.push(("x-user-id".to_string(), Some(u.as_bytes().to_vec())));
    }
    Input {
        partition: (i % PARTITIONS as usize) as i32,
        key: user.map(|u| u.as_bytes().to_vec()),
        payload: Some(payload),
        headers,
        timestamp: 1_700_000_000_000 + i as i64,
    }
}

fn counts_by(outputs: &common::ByService) -> usize {
    outputs.values().map(Vec::len).sum()
}

#[test]
fn routes_whitelisted_users_to_rush_and_everyone_else_to_prod() {
    let c = Clusters::new().with_outputs(&["payment", "shipping"]);
    c.set_whitelist(1, &[("U1", &["payment"]), ("U2", &["payment", "shipping"])]);
    let mut inputs = Vec::new();
    for i in 0..600 {
        let user = match i % 7 {
            6 => None,
            n => Some(format!("U{n}")),
        };
        let mut e = event(i, user.as_deref(), format!(r#"{{"n":{i}}}"#).into_bytes());
        if i % 50 == 0 {
            // A stamp the whitelist does not hold (a stale header, a forged one): production.
            e.headers.push(("event_tenancy".into(), Some(b"U9_shipping".to_vec())));
        } else if i % 50 == 25 {
            // Stamped upstream for a pair the whitelist holds: honoured for the service it names.
            e.headers.push(("event_tenancy".into(), Some(b"U2_shipping".to_vec())));
        }
        inputs.push(e);
    }
    common::produce(&c.prod.bootstrap_servers(), "orders", &inputs);
    let run = start(&c, c.config(HEADER_ROUTE, ""));
    run.wait_acked(1200, Duration::from_secs(60));
    let summary = run.stop().unwrap();
    assert_eq!(summary.records_in, 600);

    let services = ["payment", "shipping"];
    let read_in = common::read_all(&c.prod.bootstrap_servers(), "orders", 600, Duration::from_secs(20));
    let (prod, rush) = c.outputs(&services, 600);
    let expected = |r: &Read, svc: &str| -> Option<String> {
        if r.header("event_tenancy") == Some(b"U9_shipping") {
            return None;
        }
        if r.header("event_tenancy") == Some(b"U2_shipping") {
            return (svc == "shipping").then(|| "U2".to_string());
        }
        let user = std::str::from_utf8(r.header("x-user-id")?).ok()?;
        let listed = match user {
            "U1" => &["payment"][..],
            "U2" => &["payment", "shipping"][..],
            _ => &[][..],
        };
        listed.contains(&svc).then(|| user.to_string())
    };
    let report = invariant::check(&read_in, &services, &prod, &rush, expected, StampCheck::Header);
    report.assert_clean();
    assert_eq!(report.prod + report.rush, 1200);
    assert!(report.rush > 200, "rush got {}", report.rush);
    let no_user = summary.passthrough.iter().find(|(r, _)| *r == "no_user").unwrap().1;
    assert_eq!(no_user, (0..600).filter(|i| i % 7 == 6 && i % 25 != 0).count() as u64);
    assert_eq!((summary.upstream_honoured, summary.upstream_rejected), (12, 12));

    // Everything was acknowledged, so everything is committed.
    let committed = common::committed(&c.prod.bootstrap_servers(), "bridge-test", "orders", PARTITIONS);
    assert_eq!(committed.values().sum::<i64>(), 600, "{committed:?}");
}

const JSON_ROUTE: &str = r#"
[[routes]]
topic = "orders"
services = ["payment"]
user = { json = "/data/user_id" }
stamp = "both"
"#;

#[test]
fn payload_stamping_and_unclassifiable_records_pass_through() {
    let c = Clusters::new().with_outputs(&["payment"]);
    c.set_whitelist(1, &[("U1", &["payment"])]);
    let payloads: Vec<&[u8]> = vec![
        br#"{"database":"shop","table":"orders","type":"insert","data":{"id":1,"user_id":"U1"}}"#,
        br#"{"data":{"user_id":"U2"}}"#,
        br#"{"data":{"id":3}}"#,
        b"\x00\x00\x00\x00\x07avro-bytes",
        br#"  {"event_tenancy":"stale","data":{"user_id":"U1"},"z":[1, 2]}"#,
    ];
    let inputs: Vec<Input> = (0..100).map(|i| event(i, None, payloads[i % payloads.len()].to_vec())).collect();
    common::produce(&c.prod.bootstrap_servers(), "orders", &inputs);
    let run = start(&c, c.config(JSON_ROUTE, ""));
    run.wait_acked(100, Duration::from_secs(60));
    let summary = run.stop().unwrap();

    let read_in = common::read_all(&c.prod.bootstrap_servers(), "orders", 100, Duration::from_secs(20));
    let (prod, rush) = c.outputs(&["payment"], 100);
    let expected = |r: &Read, _svc: &str| -> Option<String> {
        let tid: usize = std::str::from_utf8(r.header(TID)?).ok()?.parse().ok()?;
        // Index 4 carries a stale upstream stamp in the payload, which names no service of
        // this route: production.
        (tid % payloads.len() == 0).then(|| "U1".to_string())
    };
    let report = invariant::check(&read_in, &["payment"], &prod, &rush, expected, StampCheck::Both);
    report.assert_clean();
    assert_eq!(report.rush, 20);
    let get = |reason: &str| summary.passthrough.iter().find(|(r, _)| *r == reason).unwrap().1;
    assert_eq!(get("no_user"), 20);
    assert_eq!(get("not_json"), 20);
    assert_eq!(summary.upstream_honoured, 20);
}

#[test]
fn whitelist_change_affects_only_later_events() {
    let c = Clusters::new().with_outputs(&["payment", "shipping"]);
    c.set_whitelist(1, &[]);
    let run = start(&c, c.config(HEADER_ROUTE, ""));
    let first: Vec<Input> = (0..90).map(|i| event(i, Some("U3"), b"{}".to_vec())).collect();
    common::produce(&c.prod.bootstrap_servers(), "orders", &first);
    run.wait_acked(180, Duration::from_secs(60));
    c.set_whitelist(2, &[("U3", &["shipping"])]);
    run.wait_whitelist(2, Duration::from_secs(20));
    let second: Vec<Input> = (90..180).map(|i| event(i, Some("U3"), b"{}".to_vec())).collect();
    common::produce(&c.prod.bootstrap_servers(), "orders", &second);
    run.wait_acked(360, Duration::from_secs(60));
    run.stop().unwrap();

    let read_in = common::read_all(&c.prod.bootstrap_servers(), "orders", 180, Duration::from_secs(20));
    let services = ["payment", "shipping"];
    let (prod, rush) = c.outputs(&services, 180);
    let expected = |r: &Read, svc: &str| -> Option<String> {
        let tid: usize = std::str::from_utf8(r.header(TID)?).ok()?.parse().ok()?;
        (tid >= 90 && svc == "shipping").then(|| "U3".to_string())
    };
    invariant::check(&read_in, &services, &prod, &rush, expected, StampCheck::Header).assert_clean();
    assert_eq!(counts_by(&rush), 90);
}

#[test]
fn slow_rush_cluster_is_bounded_by_max_in_flight() {
    let c = Clusters::new().with_outputs(&["payment", "shipping"]);
    c.set_whitelist(1, &[("U1", &["payment", "shipping"])]);
    c.rush.broker_round_trip_time(1, Duration::from_millis(40)).unwrap();
    let inputs: Vec<Input> =
        (0..400).map(|i| event(i, Some(if i % 2 == 0 { "U1" } else { "U2" }), b"{}".to_vec())).collect();
    common::produce(&c.prod.bootstrap_servers(), "orders", &inputs);
    let run = start(&c, c.config(HEADER_ROUTE, "max_in_flight = 25"));
    run.wait_acked(800, Duration::from_secs(90));
    let peak = run.observers.health.in_flight_peak.load(Ordering::Relaxed);
    let pauses = run.pauses();
    run.stop().unwrap();
    assert!(peak <= 25 + 1, "in-flight peak {peak} exceeds the bound");
    assert!(peak >= 10, "the bound was never approached ({peak}); the test does not test it");
    // Acknowledgements keep coming: the relay waits for them and never pauses, which would
    // drop what librdkafka prefetched and fetch it again.
    assert_eq!(pauses, 0, "paused on a cluster that was slow but moving");
    c.assert_u1_on_rush(400);
}

#[test]
fn a_stalled_cluster_pauses_the_consumer_within_the_bound() {
    let c = Clusters::new().with_outputs(&["payment", "shipping"]);
    c.set_whitelist(1, &[("U1", &["payment", "shipping"])]);
    // Every Rush write waits 2.5 s: the load stays at the bound longer than the relay waits
    // before it pauses (1 s).
    c.rush.broker_round_trip_time(1, Duration::from_millis(2500)).unwrap();
    let inputs: Vec<Input> = (0..60).map(|i| event(i, Some("U1"), b"{}".to_vec())).collect();
    common::produce(&c.prod.bootstrap_servers(), "orders", &inputs);
    let run = start(&c, c.config(HEADER_ROUTE, "max_in_flight = 25"));
    common::wait_until("never paused at the bound", Instant::now() + Duration::from_secs(60), || run.pauses() > 0);
    c.rush.broker_round_trip_time(1, Duration::ZERO).unwrap();
    run.wait_acked(120, Duration::from_secs(90));
    let peak = run.observers.health.in_flight_peak.load(Ordering::Relaxed);
    run.stop().unwrap();
    assert!(peak <= 25 + 1, "in-flight peak {peak} exceeds the bound");
    c.assert_u1_on_rush(60);
}

#[test]
fn large_records_are_bounded_by_max_in_flight_bytes() {
    let c = Clusters::new().with_outputs(&["payment", "shipping"]);
    c.set_whitelist(1, &[("U1", &["payment", "shipping"])]);
    c.rush.broker_round_trip_time(1, Duration::from_millis(40)).unwrap();
    const RECORD: usize = 64 * 1024;
    let pad = "x".repeat(RECORD);
    let inputs: Vec<Input> = (0..120)
        .map(|i| event(i, Some(if i % 2 == 0 { "U1" } else { "U2" }), format!(r#"{{"pad":"{pad}"}}"#).into_bytes()))
        .collect();
    common::produce(&c.prod.bootstrap_servers(), "orders", &inputs);
    // The record bound is far away: only the byte bound (1 MiB: 8 records of two outputs) can hold.
    let run = start(&c, c.config(HEADER_ROUTE, "max_in_flight_bytes = 1048576"));
    run.wait_acked(240, Duration::from_secs(120));
    let peak = run.observers.health.in_flight_bytes_peak.load(Ordering::Relaxed);
    let records = run.observers.health.in_flight_peak.load(Ordering::Relaxed);
    run.stop().unwrap();
    eprintln!("in-flight peak: {peak} bytes, {records} records");
    // The record that crosses the bound ends the batch; nothing is read past it.
    assert!(peak <= (1 << 20) + RECORD + 1024, "in-flight peak {peak} bytes exceeds the bound");
    assert!(peak >= 1 << 19, "the bound was never approached ({peak} bytes); the test does not test it");
    c.assert_u1_on_rush(120);
}

#[test]
fn a_write_refused_before_queueing_is_dead_lettered_and_counted() {
    let c = Clusters::new().with_outputs(&["payment", "shipping"]);
    c.set_whitelist(1, &[]);
    let mut config = c.config(HEADER_ROUTE, "");
    // The bridge's prod producers take records of 1,500 bytes at most: a larger one is refused
    // by librdkafka at send time, before any delivery report, for the dead-letter topic too.
    config.prod.producer.insert("message.max.bytes".into(), toml::Value::Integer(1500));
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(3000)).into_bytes();
    let events = [event(0, Some("U2"), big), event(3, Some("U2"), b"{}".to_vec())];
    common::produce(&c.prod.bootstrap_servers(), "orders", &events);
    let run = start(&c, config);
    wait_committed(&c, "bridge-test", "orders", 2);
    assert!(!run.thread.is_finished(), "the relay stopped on a record it cannot write");
    let dead = common::read_all(&c.prod.bootstrap_servers(), DEAD_LETTER, 2, Duration::from_secs(20));
    assert_eq!(dead.len(), 2, "one per service");
    for d in &dead {
        assert_eq!(d.payload, None, "the value does not fit the dead-letter topic either");
        assert_eq!(d.header("tenancy-bridge-dlq-value-omitted"), Some(&b"3010"[..]));
        assert_eq!(d.header("tenancy-bridge-dlq-offset"), Some(&b"0"[..]));
    }
    let m = &run.observers.metrics;
    assert_eq!(m.sum(&m.produce_errors, &[("cluster", "prod"), ("class", "poison")]), 2);
    assert_eq!(m.sum(&m.dead_letter, &[("route", "orders"), ("reason", "MessageSizeTooLarge")]), 2);
    let summary = run.stop().unwrap();
    assert_eq!(summary.produce_errors[2], ("poison", 2));
}

#[test]
fn output_topic_with_more_partitions_than_its_input_is_a_startup_error() {
    let c = Clusters::new().with_outputs(&["payment"]);
    c.set_whitelist(1, &[]);
    c.prod.create_topic("orders.shipping", PARTITIONS + 2, 1).unwrap();
    c.rush.create_topic("orders.shipping", PARTITIONS, 1).unwrap();
    let run = start(&c, c.config(HEADER_ROUTE, ""));
    let err = run.thread.join().unwrap().unwrap_err().to_string();
    assert!(err.contains("orders.shipping") && err.contains("5 partitions") && err.contains("has 3"), "{err}");
}

/// The same mistake on the Rush side is Rush's problem: production flows, readiness says why Rush
/// copies wait.
#[test]
fn rush_topic_with_other_partition_count_degrades_only_rush() {
    let c = Clusters::new().with_outputs(&["payment"]);
    c.set_whitelist(1, &[("U1", &["payment"])]);
    c.prod.create_topic("orders.shipping", PARTITIONS, 1).unwrap();
    c.rush.create_topic("orders.shipping", PARTITIONS + 2, 1).unwrap();
    let run = start(&c, c.config(HEADER_ROUTE, ""));
    let events: Vec<Input> = (0..30).map(|i| event(i, Some("U2"), b"{}".to_vec())).collect();
    common::produce(&c.prod.bootstrap_servers(), "orders", &events);
    run.wait_acked(60, Duration::from_secs(60));
    wait_committed(&c, "bridge-test", "orders", 30);
    common::wait_for("readiness never named the Rush topic", Instant::now() + Duration::from_secs(60), || {
        let why = run.observers.health.rush_degraded().join("; ");
        if why.contains("orders.shipping") && why.contains("5 partitions") {
            return Ok(());
        }
        assert!(!run.thread.is_finished(), "a Rush topic mistake stopped production");
        Err(format!("{why:?}"))
    });
    run.stop().unwrap();
}

#[test]
fn missing_input_topic_is_a_startup_error() {
    let c = Clusters::new().with_outputs(&["payment", "shipping"]);
    c.set_whitelist(1, &[]);
    let routes = HEADER_ROUTE.replace("topic = \"orders\"", "topic = \"nope\"");
    let err = relay::run(&c.config(&routes, ""), whitelist::shared(Snapshot::empty()), &AtomicBool::new(false))
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"nope\"") && err.contains("routes[0].topic"), "{err}");
}

#[test]
fn permanent_prod_failure_stops_without_committing_past_it() {
    let c = Clusters::new().with_outputs(&["payment", "shipping"]);
    c.set_whitelist(1, &[("U1", &["payment"])]);
    let first: Vec<Input> = (0..30).map(|i| event(i, Some("U2"), b"{}".to_vec())).collect();
    common::produce(&c.prod.bootstrap_servers(), "orders", &first);
    let run = start(&c, c.config(HEADER_ROUTE, ""));
    run.wait_acked(60, Duration::from_secs(60));
    wait_committed(&c, "bridge-test", "orders", 30);
    run.stop().unwrap();
    let second: Vec<Input> = (30..60).map(|i| event(i, Some("U2"), b"{}".to_vec())).collect();
    common::produce(&c.prod.bootstrap_servers(), "orders", &second);
    // Prod now refuses every write (this test's producer is done): the next output fails for good.
    c.prod.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 64]);
    let run = start(&c, c.config(HEADER_ROUTE, ""));
    common::wait_until("relay did not stop on a fatal produce error", Instant::now() + Duration::from_secs(60), || {
        run.thread.is_finished()
    });
    let err = run.thread.join().unwrap().unwrap_err().to_string();
    // The first write refused may be an output or the pins the new owner writes on taking a
    // partition over: either names the route's topic and the refusal.
    assert!(err.contains("orders") && err.contains("TopicAuthorizationFailed"), "{err}");
    let committed = common::committed(&c.prod.bootstrap_servers(), "bridge-test", "orders", PARTITIONS);
    // Each partition holds 10 first-batch records, then the refused ones.
    for p in 0..PARTITIONS {
        assert_eq!(committed.get(&p), Some(&10), "partition {p}: {committed:?}");
    }
}

#[test]
fn writes_the_broker_refuses_go_to_the_dead_letter_topic_and_production_flows_past_them() {
    dead_letters_refused_writes("");
}

/// Exactly-once: the refusal fails the transaction, which is aborted; the re-read dead-letters
/// the refused outputs, in the transaction that commits their inputs.
#[test]
fn writes_the_broker_refuses_go_to_the_dead_letter_topic_exactly_once() {
    dead_letters_refused_writes("delivery = \"exactly-once\"\ntransaction_interval = \"100ms\"");
}

fn dead_letters_refused_writes(extra_bridge: &str) {
    let strict = !extra_bridge.contains("exactly-once");
    let c = Clusters::new().with_outputs(&["payment", "shipping"]);
    let mapper = PerUserMapper::start(&[], Duration::from_secs(2));
    let run = start_with(c.config(HEADER_ROUTE, extra_bridge), mapper.source(Duration::from_secs(10)), None);
    // One event per partition first, so that the decision log has its pins (nobody is ever
    // listed: no other pin follows) and the bridge's next produce requests are outputs.
    let (p, r) = (c.prod.bootstrap_servers(), c.rush.bootstrap_servers());
    let warm: Vec<Input> = (1_000..1_000 + PARTITIONS as usize).map(|i| event(i, Some("U2"), b"{}".to_vec())).collect();
    common::produce(&p, "orders", &warm);
    let (warm_out, _) = common::read_services(&p, &r, "orders", &["payment"], warm.len(), Duration::from_secs(30));
    assert_eq!(warm_out["payment"].len(), warm.len(), "the first events were not relayed");
    // These wait 2 s for their user's answer: time to arm the broker after writing them. It
    // then refuses the next produce request as too large, every record in it (one: a refused
    // dead-letter write would be a failure by design, and stop the relay).
    let inputs: Vec<Input> = (0..90).map(|i| event(i, Some("SLOW1"), b"{}".to_vec())).collect();
    common::produce(&p, "orders", &inputs);
    c.prod.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 1]);

    // Every input once per service, on its output or dead-lettered for that service, never both.
    // Outputs may repeat: the mock shows an aborted transaction's records (exactly-once writes
    // the batch around a refusal again) and does not hide them from read_committed readers.
    let all: std::collections::BTreeSet<Vec<u8>> = (0..90).map(|i: usize| i.to_string().into_bytes()).collect();
    let what = "not every input accounted for: (outputs, dead letters, complete)";
    let dead = common::wait_for(what, Instant::now() + Duration::from_secs(60), || {
        assert!(!run.thread.is_finished(), "the relay stopped on a poison record");
        let dead = common::read_all(&c.prod.bootstrap_servers(), DEAD_LETTER, usize::MAX, Duration::from_secs(5));
        let accounted = ["payment", "shipping"].map(|svc| {
            let letters: Vec<Vec<u8>> = dead
                .iter()
                .filter(|d| d.header("tenancy-bridge-dlq-service") == Some(svc.as_bytes()))
                .map(|d| d.header(TID).unwrap().to_vec())
                .collect();
            let (p, r) = (c.prod.bootstrap_servers(), c.rush.bootstrap_servers());
            let (prod, _) =
                common::read_services(&p, &r, "orders", &[svc], 90 - letters.len().min(90), Duration::from_secs(5));
            let outputs: std::collections::BTreeSet<Vec<u8>> =
                prod[svc].iter().map(|r| r.header(TID).unwrap().to_vec()).collect();
            let dead_set: std::collections::BTreeSet<Vec<u8>> = letters.iter().cloned().collect();
            // Exactly-once on the mock: a transaction aborted after a second refusal stays visible
            // (the mock does not hide aborted records from read_committed readers) with the
            // outputs and dead letters it held, and its rewrite writes them again. Loss is
            // judged; repeats are a broker without transaction filtering.
            if strict {
                assert_eq!(dead_set.len(), letters.len(), "{svc}: an input dead-lettered twice");
                assert!(outputs.is_disjoint(&dead_set), "{svc}: an input both on its output and dead-lettered");
            }
            (outputs.len(), dead_set.len(), all.iter().all(|t| outputs.contains(t) || dead_set.contains(t)))
        });
        if accounted.iter().all(|a| a.2) { Ok(dead) } else { Err(format!("{accounted:?}")) }
    });
    assert!(!dead.is_empty(), "nothing was refused: the injection missed the outputs");
    for d in &dead {
        assert_eq!(d.header("tenancy-bridge-dlq-reason"), Some(&b"MessageSizeTooLarge"[..]));
        assert_eq!(d.payload.as_deref(), Some(&b"{}"[..]), "the original value");
    }
    let m = run.observers.metrics.clone();
    let summary = run.stop().unwrap().to_string();
    // Exactly-once counts a dead letter each time it is written, in an aborted transaction too.
    let counted = m.sum(&m.dead_letter, &[("route", "orders")]);
    if strict {
        assert_eq!(counted, dead.len() as u64);
    } else {
        assert!(counted >= dead.len() as u64, "{counted} counted, {} dead letters", dead.len());
    }
    eprintln!("{} dead-lettered; {summary}", dead.len());
}

/// Waits until `group` has committed `total` offsets over every partition of `topic` on prod.
/// Waits until the Rush lane has carried every record now in the outbox to Rush: stopping the
/// bridge earlier leaves Rush copies waiting in the outbox (for the next run), not on Rush.
fn wait_rush_lane_caught_up(c: &Clusters) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", c.prod.bootstrap_servers()).create().unwrap();
    let high: i64 =
        (0..PARTITIONS).map(|p| consumer.fetch_watermarks(OUTBOX, p, Duration::from_secs(10)).unwrap().1).sum();
    wait_committed(c, "bridge-test.rush", OUTBOX, high);
}

fn wait_committed(c: &Clusters, group: &str, topic: &str, total: i64) {
    common::wait_for(
        &format!("{group} did not commit {total} on {topic}"),
        Instant::now() + Duration::from_secs(30),
        || {
            let n: i64 = common::committed(&c.prod.bootstrap_servers(), group, topic, PARTITIONS).values().sum();
            if n >= total { Ok(()) } else { Err(format!("committed {n}")) }
        },
    );
}

#[test]
fn a_rush_cluster_that_refuses_or_disappears_never_stops_production() {
    let c = Clusters::new().with_outputs(&["payment", "shipping"]);
    c.set_whitelist(1, &[("U1", &["payment"])]);
    // Short Rush timeouts, so the test outlasts every one of them many times over.
    let mut config = c.config(HEADER_ROUTE, "");
    for (k, v) in [("message.timeout.ms", 2000), ("request.timeout.ms", 1000)] {
        config.rush.producer.insert(k.into(), toml::Value::Integer(v));
    }
    let run = start(&c, config);
    let first: Vec<Input> = (0..30).map(|i| event(i, Some("U1"), b"{}".to_vec())).collect();
    common::produce(&c.prod.bootstrap_servers(), "orders", &first);
    run.wait_acked(60, Duration::from_secs(60));

    // Rush refuses every write, then is gone altogether.
    c.rush
        .request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 1000]);
    let second: Vec<Input> = (30..330).map(|i| event(i, Some(["U1", "U2"][i % 2]), b"{}".to_vec())).collect();
    common::produce(&c.prod.bootstrap_servers(), "orders", &second);
    wait_committed(&c, "bridge-test", "orders", 330);
    c.rush.broker_down(1).unwrap();
    let third: Vec<Input> = (330..630).map(|i| event(i, Some(["U1", "U2"][i % 2]), b"{}".to_vec())).collect();
    common::produce(&c.prod.bootstrap_servers(), "orders", &third);
    // Every input is committed on prod while Rush is away, and the Rush lane keeps failing.
    wait_committed(&c, "bridge-test", "orders", 630);
    let m = &run.observers.metrics;
    common::wait_until("the Rush lane never noticed Rush was away", Instant::now() + Duration::from_secs(60), || {
        assert!(!run.thread.is_finished(), "the bridge stopped because Rush did");
        m.rush_lane_restarts.get() >= 2
    });
    assert!(!run.observers.health.rush_degraded().is_empty(), "readiness must say Rush is degraded");
    common::wait_until("the Rush backlog was never reported", Instant::now() + Duration::from_secs(60), || {
        m.rush_backlog.get() != 0 || m.rush_backlog_age.get() != 0.0
    });
    // shipping: every event; payment: U2's half of events 30..630.
    let prod_only = m.sum(&m.records_out, &[("cluster", "prod")]);
    assert_eq!(prod_only, 630 + 300, "every prod output is written while Rush is away");

    // Rush comes back: every copy arrives, in order, and the bridge never stopped.
    c.rush.clear_request_errors(RDKafkaApiKey::Produce);
    c.rush.broker_up(1).unwrap();
    let read_in = common::read_all(&c.prod.bootstrap_servers(), "orders", 630, Duration::from_secs(20));
    let services = ["payment", "shipping"];
    let (p, r) = (c.prod.bootstrap_servers(), c.rush.bootstrap_servers());
    let (prod, rush) = common::read_services(&p, &r, "orders", &services, 630, Duration::from_secs(120));
    let expected =
        |r: &Read, svc: &str| (r.header("x-user-id") == Some(b"U1") && svc == "payment").then(|| "U1".into());
    // The lane retried the writes Rush refused or never acknowledged: at least once on Rush.
    let report =
        invariant::check_with(&read_in, &services, &prod, &rush, expected, StampCheck::Header, Delivery::AtLeastOnce);
    eprintln!("rush away: {} prod + {} rush outputs, {} replayed", report.prod, report.rush, report.replayed);
    report.assert_clean();
    assert!(!run.thread.is_finished(), "the bridge stopped");
    run.stop().unwrap();
}

#[test]
fn instances_share_partitions_and_hand_over_on_rebalance() {
    let c = Clusters::new().with_outputs(&["payment", "shipping"]);
    c.set_whitelist(1, &[("U1", &["payment"]), ("U2", &["shipping"])]);
    let config = c.config(HEADER_ROUTE, "");
    let users = ["U1", "U2", "U3"];
    let batch =
        |r: std::ops::Range<usize>| -> Vec<Input> { r.map(|i| event(i, Some(users[i % 3]), b"{}".to_vec())).collect() };
    let acked = |runs: &[&Running]| -> u64 { runs.iter().map(|r| r.acked()).sum() };
    let wait = |runs: &[&Running], n: u64| {
        common::wait_for("outputs not all acknowledged", Instant::now() + Duration::from_secs(60), || {
            let got = acked(runs);
            if got >= n { Ok(()) } else { Err(format!("only {got} of {n}")) }
        })
    };

    let a = start(&c, config.clone());
    common::produce(&c.prod.bootstrap_servers(), "orders", &batch(0..300));
    wait(&[&a], 600);
    // A second instance joins: the partitions are split between the two.
    let b = start(&c, config.clone());
    // Split and settled: both hold partitions, all of them between the two, for a whole second
    // (mid-rebalance, under load, the counts pass through other states).
    let mut settled_since: Option<Instant> = None;
    let what = "the partitions were never split between the two";
    common::wait_for(what, Instant::now() + Duration::from_secs(60), || {
        let (na, nb) = (a.assigned(), b.assigned());
        let split = na > 0 && nb > 0 && na + nb == PARTITIONS as usize;
        settled_since = if split { settled_since.or(Some(Instant::now())) } else { None };
        if settled_since.is_some_and(|t| t.elapsed() >= Duration::from_secs(1)) {
            Ok(())
        } else {
            Err(format!("({na} + {nb})"))
        }
    });
    common::produce(&c.prod.bootstrap_servers(), "orders", &batch(300..600));
    wait(&[&a, &b], 1200);
    // Replays after the hand-over count towards `acked` too: wait for the second instance's
    // own share as well.
    let what = "the second instance got no records from its partitions";
    common::wait_until(what, Instant::now() + Duration::from_secs(60), || b.records_in() > 0);
    let b_share = b.records_in();
    // The first one leaves: the second takes every partition over from its commits.
    a.stop().unwrap();
    common::produce(&c.prod.bootstrap_servers(), "orders", &batch(600..900));
    wait(&[&b], b.acked() + 600);
    // Replays of the hand-over count towards `acked`: only every input committed says every
    // outbox write is in, before the lane's progress is measured against the outbox.
    wait_committed(&c, "bridge-test", "orders", 900);
    wait_rush_lane_caught_up(&c);
    b.stop().unwrap();
    assert!(b_share > 0, "the second instance got no partitions");

    let read_in = common::read_all(&c.prod.bootstrap_servers(), "orders", 900, Duration::from_secs(20));
    let services = ["payment", "shipping"];
    let (prod, rush) = c.outputs(&services, 900);
    let expected = |r: &Read, svc: &str| match (r.header("x-user-id"), svc) {
        (Some(b"U1"), "payment") => Some("U1".to_string()),
        (Some(b"U2"), "shipping") => Some("U2".to_string()),
        _ => None,
    };
    // The bridge commits on revoke. Apache Kafka accepts that commit while the group prepares
    // the rebalance; librdkafka's mock coordinator refuses it (REBALANCE_IN_PROGRESS), so here a
    // hand-over may replay from the previous periodic commit: at least once, never lost, never
    // on both clusters, first deliveries in order.
    let report =
        invariant::check_with(&read_in, &services, &prod, &rush, expected, StampCheck::Header, Delivery::AtLeastOnce);
    eprintln!("rebalance: {} prod + {} rush outputs, {} replayed", report.prod, report.rush, report.replayed);
    report.assert_clean();
    let committed = common::committed(&c.prod.bootstrap_servers(), "bridge-test", "orders", PARTITIONS);
    assert_eq!(committed.values().sum::<i64>(), 900, "{committed:?}");
}

/// A stand-in for a company's own Config Mapper that answers only per user: counts requests
/// per user and answers users named `SLOW*` after a delay.
struct PerUserMapper {
    url: String,
    requests: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    slow_answers: Arc<std::sync::atomic::AtomicUsize>,
}

impl PerUserMapper {
    fn start(listed: &'static [(&'static str, &'static [&'static str])], slow: Duration) -> Self {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests: Arc<std::sync::Mutex<HashMap<String, usize>>> = Arc::default();
        let counts = requests.clone();
        let slow_answers: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let answered = slow_answers.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let (counts, answered) = (counts.clone(), answered.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    let mut header = String::new();
                    while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                        header.clear();
                    }
                    let user =
                        line.split_whitespace().nth(1).unwrap_or("").trim_start_matches("/v1/whitelist/").to_string();
                    *counts.lock().unwrap().entry(user.clone()).or_default() += 1;
                    if user.starts_with("SLOW") {
                        std::thread::sleep(slow);
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                    let (status, body) = match listed.iter().find(|(u, _)| *u == user) {
                        Some((u, s)) => (
                            "200 OK",
                            serde_json::json!({"user": u, "services": s, "expires_at": "2099-01-01T00:00:00Z"})
                                .to_string(),
                        ),
                        None => ("404 Not Found", r#"{"error":"not whitelisted"}"#.to_string()),
                    };
                    let _ = write!(
                        conn,
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        Self { url, requests, slow_answers }
    }

    fn count(&self, user: &str) -> usize {
        self.requests.lock().unwrap().get(user).copied().unwrap_or(0)
    }

    /// Lookup mode against this mapper; records wait up to `wait` for an answer.
    fn source(&self, wait: Duration) -> WhitelistSource {
        let settings = LookupSettings {
            cache_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(60),
            failure_backoff: Duration::from_secs(1),
            capacity: 10_000,
            wait,
            request_timeout: Duration::from_secs(10),
            max_envs: 100,
        };
        let client = MapperClient::new(&self.url, None, Duration::from_secs(10)).unwrap();
        WhitelistSource::Lookup { cache: Arc::new(LookupCache::http(settings, client)), workers: 4 }
    }
}

#[test]
fn lookup_mode_concurrent_misses_for_one_user_make_one_request() {
    let c = Clusters::new().with_outputs(&["payment", "shipping"]);
    c.set_whitelist(1, &[]);
    let mapper = PerUserMapper::start(&[("U1", &["payment"])], Duration::ZERO);
    // Every partition starts with U1: three concurrent misses for one user.
    let inputs: Vec<Input> =
        (0..300).map(|i| event(i, Some(if i < 150 { "U1" } else { "U2" }), b"{}".to_vec())).collect();
    common::produce(&c.prod.bootstrap_servers(), "orders", &inputs);
    let run = start_with(c.config(HEADER_ROUTE, ""), mapper.source(Duration::from_secs(10)), None);
    run.wait_acked(600, Duration::from_secs(60));
    run.stop().unwrap();
    assert_eq!(mapper.count("U1"), 1, "one request for U1");
    assert_eq!(mapper.count("U2"), 1, "one request for U2");

    let read_in = common::read_all(&c.prod.bootstrap_servers(), "orders", 300, Duration::from_secs(20));
    let services = ["payment", "shipping"];
    let (prod, rush) = c.outputs(&services, 300);
    let expected =
        |r: &Read, svc: &str| (r.header("x-user-id") == Some(b"U1") && svc == "payment").then(|| "U1".to_string());
    invariant::check(&read_in, &services, &prod, &rush, expected, StampCheck::Header).assert_clean();
}

#[test]
fn lookup_mode_slow_lookup_holds_only_its_partition_and_keeps_its_order() {
    let c = Clusters::new().with_outputs(&["payment"]);
    c.set_whitelist(1, &[]);
    let mapper = PerUserMapper::start(&[("SLOW1", &["payment"]), ("U1", &["payment"])], Duration::from_secs(3));
    // Partition 0 starts with the slow user; the others never see it.
    // Some records have no user: they need no lookup, but still wait behind the slow one.
    let inputs: Vec<Input> = (0..300)
        .map(|i| {
            let user = match i {
                0 => Some("SLOW1"),
                i if i % 3 == 0 && i % 2 == 0 => Some("SLOW1"),
                i if i % 5 == 0 => Some("U1"),
                i if i % 7 == 3 => None,
                _ => Some("U2"),
            };
            event(i, user, b"{}".to_vec())
        })
        .collect();
    common::produce(&c.prod.bootstrap_servers(), "orders", &inputs);
    let routes = HEADER_ROUTE.replace(r#"["payment", "shipping"]"#, r#"["payment"]"#);
    let run = start_with(c.config(&routes, ""), mapper.source(Duration::from_secs(10)), None);
    // Partitions 1 and 2 (200 records) are done before the slow answer (3 s) comes…
    run.wait_acked(200, Duration::from_secs(60));
    let slow_answered_then = mapper.slow_answers.load(Ordering::SeqCst);
    let records_then = run.records_in();
    run.wait_acked(300, Duration::from_secs(60));
    run.stop().unwrap();
    assert_eq!(slow_answered_then, 0, "the other partitions waited for the slow lookup");
    // …and partition 0 waited for its first record's answer before deciding anything after it.
    assert_eq!(records_then, 200, "partition 0 must not go past a record whose lookup is pending");
    assert_eq!(mapper.count("SLOW1"), 1);

    let read_in = common::read_all(&c.prod.bootstrap_servers(), "orders", 300, Duration::from_secs(20));
    let (prod, rush) = c.outputs(&["payment"], 300);
    let expected = |r: &Read, _: &str| match r.header("x-user-id") {
        Some(b"SLOW1") => Some("SLOW1".to_string()),
        Some(b"U1") => Some("U1".to_string()),
        _ => None,
    };
    invariant::check(&read_in, &["payment"], &prod, &rush, expected, StampCheck::Header).assert_clean();
}

#[test]
fn lookup_mode_slow_config_mapper_holds_nothing_past_lookup_wait() {
    let c = Clusters::new().with_outputs(&["payment"]);
    c.set_whitelist(1, &[]);
    let mapper = PerUserMapper::start(&[("SLOW1", &["payment"])], Duration::from_secs(3));
    let inputs: Vec<Input> =
        (0..300).map(|i| event(i, Some(if i % 4 == 0 { "SLOW1" } else { "U2" }), b"{}".to_vec())).collect();
    common::produce(&c.prod.bootstrap_servers(), "orders", &inputs);
    let routes = HEADER_ROUTE.replace(r#"["payment", "shipping"]"#, r#"["payment"]"#);
    let run = start_with(c.config(&routes, ""), mapper.source(Duration::from_millis(100)), None);
    run.wait_acked(300, Duration::from_secs(60));
    // Everything was decided before the first (3 s) answer came back: nobody waited for it.
    let slow_answered = mapper.slow_answers.load(Ordering::SeqCst);
    let unanswered = run.observers.metrics.lookup_unanswered.get();
    let summary = run.stop().unwrap();
    assert_eq!(slow_answered, 0, "records waited for a lookup slower than lookup_wait");
    assert!(unanswered >= 1, "unanswered records are counted");
    assert!(summary.to_string().contains("production for want of a whitelist answer"), "{summary}");

    let read_in = common::read_all(&c.prod.bootstrap_servers(), "orders", 300, Duration::from_secs(20));
    let (prod, rush) = c.outputs(&["payment"], 300);
    // SLOW1 is whitelisted, but no answer was to be had in time: production (failing safe).
    invariant::check(&read_in, &["payment"], &prod, &rush, |_, _| None, StampCheck::Header).assert_clean();
}

#[test]
fn config_mapper_down_at_start_means_everyone_is_production() {
    let c = Clusters::new().with_outputs(&["payment", "shipping"]);
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let snapshot = whitelist::shared(Snapshot::empty());
    let client = MapperClient::new(&dead, None, Duration::from_secs(1)).unwrap();
    let poller = SnapshotPoller::start(client, Duration::from_millis(100), snapshot.clone(), 100).unwrap();
    assert!(!poller.status.loaded());
    let inputs: Vec<Input> = (0..60).map(|i| event(i, Some("U1"), b"{}".to_vec())).collect();
    common::produce(&c.prod.bootstrap_servers(), "orders", &inputs);
    let run = start_with(c.config(HEADER_ROUTE, ""), snapshot.into(), None);
    run.wait_acked(120, Duration::from_secs(60));
    run.stop().unwrap();
    assert!(poller.status.refresh_errors.load(Ordering::Relaxed) > 0);
    assert!(poller.status.staleness_seconds().is_none(), "never loaded");

    let read_in = common::read_all(&c.prod.bootstrap_servers(), "orders", 60, Duration::from_secs(20));
    let services = ["payment", "shipping"];
    let (prod, rush) = c.outputs(&services, 60);
    invariant::check(&read_in, &services, &prod, &rush, |_, _| None, StampCheck::Header).assert_clean();
    assert_eq!(counts_by(&prod), 120);
}

/// Exactly-once on the mock cluster: a transaction whose offsets the group coordinator refuses
/// (as after a rebalance) aborts; the relay seeks back to the committed offsets and writes the
/// same records again in a new transaction. Nothing is lost, nothing lands on the other
/// cluster; the mock, like tansu, shows aborted records to every reader, so the repeats are
/// counted, not refused.
#[test]
fn an_aborted_transaction_is_read_again_from_the_committed_offsets() {
    let c = Clusters::new().with_outputs(&["payment", "shipping"]);
    c.set_whitelist(1, &[("U1", &["payment", "shipping"])]);
    let inputs: Vec<Input> =
        (0..300).map(|i| event(i, Some(if i % 3 == 0 { "U1" } else { "U2" }), b"{}".to_vec())).collect();
    let config = c.config(HEADER_ROUTE, "delivery = \"exactly-once\"\ninstance_id = \"mock\"");
    let run = start(&c, config);
    common::wait_until("no partitions assigned", Instant::now() + Duration::from_secs(60), || run.assigned() > 0);
    // The mock does not report transactional offset commits back: progress is read from the
    // relay's own counters, completeness from the outputs.
    let m = run.observers.metrics.clone();
    let (aborted, committed) =
        (m.transactions.with_label_values(&["aborted"]), m.transactions.with_label_values(&["committed"]));
    common::produce(&c.prod.bootstrap_servers(), "orders", &inputs[..150]);
    run.wait_acked(300, Duration::from_secs(60));
    c.prod.request_errors(RDKafkaApiKey::TxnOffsetCommit, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION; 2]);
    common::produce(&c.prod.bootstrap_servers(), "orders", &inputs[150..]);
    let deadline = Instant::now() + Duration::from_secs(60);
    common::wait_until("the refused offsets did not abort a transaction", deadline, || aborted.get() > 0);
    let after_abort = committed.get();
    common::wait_until("no transaction committed after the abort", deadline, || committed.get() >= after_abort + 5);
    let (aborted, committed) = (aborted.get(), committed.get());
    let read_in = common::read_all(&c.prod.bootstrap_servers(), "orders", 300, Duration::from_secs(20));
    let services = ["payment", "shipping"];
    let (prod, rush) = c.outputs(&services, 300);
    run.stop().unwrap();
    eprintln!("transactions: {committed} committed, {aborted} aborted");
    let expected = |r: &Read, _: &str| (r.header("x-user-id") == Some(b"U1")).then(|| "U1".to_string());
    let report = invariant::check_with(
        &read_in,
        &services,
        &prod,
        &rush,
        expected,
        StampCheck::Header,
        invariant::Delivery::AtLeastOnce,
    );
    eprintln!("{} prod, {} rush outputs, {} written again after the abort", report.prod, report.rush, report.replayed);
    report.assert_clean();
    assert!(report.replayed > 0, "an aborted transaction's records are written again");
}

/// Exactly-once, the Rush lane takes 128 outbox partitions over on a Rush cluster 50 ms away:
/// one transactional producer registered per partition, a few round trips each. Registered one
/// after another they outlast the claim's time and the lane starts again, forever (each start
/// claims all 128 again); registered in parallel, every copy arrives and the lane never
/// restarts.
#[test]
fn an_exactly_once_rush_lane_takes_128_partitions_over_on_a_distant_rush() {
    const MANY: i32 = 128;
    let c = Clusters::with_partitions(MANY).with_outputs(&["payment"]);
    c.rush.broker_round_trip_time(1, Duration::from_millis(50)).unwrap();
    c.set_whitelist(1, &[("U1", &["payment"])]);
    let route = HEADER_ROUTE.replace(", \"shipping\"", "");
    let run = start(&c, c.config(&route, "delivery = \"exactly-once\"\ninstance_id = \"many\""));
    // Two events of U1 and one of U2 on every partition.
    let inputs: Vec<Input> = (0..3 * MANY as usize)
        .map(|i| Input {
            partition: (i % MANY as usize) as i32,
            ..event(i, Some(["U1", "U2", "U1"][i / MANY as usize]), b"{}".to_vec())
        })
        .collect();
    common::produce(&c.prod.bootstrap_servers(), "orders", &inputs);
    let copies =
        common::read_all(&c.rush.bootstrap_servers(), "orders.payment", 2 * MANY as usize, Duration::from_secs(120));
    let m = &run.observers.metrics;
    let committed = || m.sum(&m.lane_transactions, &[("outcome", "committed")]);
    // Every partition had copies: each one's transaction commits.
    common::wait_until(
        "a lane transaction per partition committed within 60s",
        Instant::now() + Duration::from_secs(60),
        || committed() >= MANY as u64,
    );
    let (restarts, committed) = (m.rush_lane_restarts.get(), committed());
    run.stop().unwrap();
    let tids: std::collections::BTreeSet<&[u8]> = copies.iter().filter_map(|r| r.header(TID)).collect();
    eprintln!(
        "128 partitions, Rush 50 ms away: {} copies ({} distinct), {restarts} lane restarts, {committed} lane transactions",
        copies.len(),
        tids.len()
    );
    assert_eq!(tids.len(), 2 * MANY as usize, "every copy of U1 reaches Rush");
    assert_eq!(restarts, 0, "the Rush lane took its partitions over without starting again");
}

/// At-least-once, a revoke whose drain times out (prod's output partitions slow to answer)
/// drops what is still queued: nothing the old owner read is written after the next owner
/// starts writing the same records again from the last commit. Left queued, the old owner's
/// late writes and the new owner's rewrites alternate in the output partition (many steps back
/// in input order); dropped, each output partition steps back once per change of owner.
#[test]
fn a_revoke_whose_drain_times_out_leaves_no_late_writes_behind() {
    use rdkafka::mocking::MockCoordinator;
    const TWO: i32 = 2;
    let prod = MockCluster::new(2).unwrap();
    let rush = MockCluster::new(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (topic, n) in [("orders", TWO), (OUTBOX, TWO), ("tenancy-bridge.decisions.orders", TWO)] {
        prod.create_topic(topic, n, 1).unwrap();
        (0..n).for_each(|p| prod.partition_leader(topic, p, Some(1)).unwrap());
    }
    for topic in ["tenancy-bridge.snapshots", DEAD_LETTER] {
        prod.create_topic(topic, 1, 1).unwrap();
        prod.partition_leader(topic, 0, Some(1)).unwrap();
    }
    // The outputs on a broker that answers slowly; the group's coordinator on the other.
    prod.create_topic("orders.payment", TWO, 1).unwrap();
    (0..TWO).for_each(|p| prod.partition_leader("orders.payment", p, Some(2)).unwrap());
    prod.coordinator(MockCoordinator::Group("bridge-test".into()), 1).unwrap();
    prod.broker_round_trip_time(2, Duration::from_millis(300)).unwrap();
    for topic in [OUTBOX, "orders.payment"] {
        rush.create_topic(topic, TWO, 1).unwrap();
    }
    let c = Clusters { prod, rush, dir, partitions: TWO };
    c.set_whitelist(1, &[]);
    let route = HEADER_ROUTE.replace(", \"shipping\"", "");
    let mut config = c.config(&route, "");
    config.bridge.drain_timeout = Duration::from_millis(500);
    // Small requests, one at a time: most outputs wait queued in the producer.
    for (k, v) in [("batch.num.messages", 10), ("max.in.flight.requests.per.connection", 1)] {
        config.prod.producer.insert(k.into(), toml::Value::Integer(v));
    }
    let total = 1_000;
    let inputs: Vec<Input> = (0..total)
        .map(|i| Input { partition: (i % TWO as usize) as i32, ..event(i, Some("U2"), b"{}".to_vec()) })
        .collect();
    common::produce(&c.prod.bootstrap_servers(), "orders", &inputs);
    let a = start(&c, config.clone());
    a.wait_acked(50, Duration::from_secs(60));
    let b = start(&c, config);
    common::wait_until(
        "the second instance wrote nothing within 60s",
        Instant::now() + Duration::from_secs(60),
        || b.acked() > 0,
    );
    wait_committed_on(&c, "orders", TWO, total as i64, Duration::from_secs(120));
    let m = &a.observers.metrics;
    let purges = m.sum(&m.revoke_purges, &[]);
    a.stop().unwrap();
    b.stop().unwrap();

    let outputs = common::read_all(&c.prod.bootstrap_servers(), "orders.payment", total, Duration::from_secs(30));
    let tid = |r: &Read| -> usize { std::str::from_utf8(r.header(TID).unwrap()).unwrap().parse().unwrap() };
    let mut steps_back = HashMap::new();
    let mut last: HashMap<i32, usize> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for r in &outputs {
        let t = tid(r);
        seen.insert(t);
        if last.insert(r.partition, t).is_some_and(|before| t < before) {
            *steps_back.entry(r.partition).or_insert(0) += 1;
        }
    }
    eprintln!(
        "drain timed out on revoke: {purges} purges; {} outputs; steps back by partition {steps_back:?}",
        outputs.len()
    );
    assert_eq!(seen.len(), total, "every event reaches prod (at least once)");
    assert!(purges >= 1, "the revoke's drain did not time out: the test shows nothing");
    assert!(
        steps_back.values().all(|n| *n <= 2),
        "the old owner's late writes alternated with the new owner's: {steps_back:?}"
    );
}

fn wait_committed_on(c: &Clusters, topic: &str, partitions: i32, total: i64, within: Duration) {
    common::wait_for(&format!("{total} not committed on {topic}"), Instant::now() + within, || {
        let n: i64 = common::committed(&c.prod.bootstrap_servers(), "bridge-test", topic, partitions).values().sum();
        if n >= total { Ok(()) } else { Err(format!("committed {n}")) }
    });
}
