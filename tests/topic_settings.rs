#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Outputs carry the settings of their input topic that decide what fits in them, and a record
//! as large as its input accepts reaches its outputs (the bridge's clients follow the limit).

mod common;

use std::time::{Duration, Instant};

use common::invariant::{self, StampCheck, TID};
use common::{Bridge, Fixture, Input, OffsetWatcher};
use rdkafka::ClientConfig;
use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};

const GROUP: &str = "bridge-settings";
const LIMIT: &str = "4194304";

fn json(i: usize, user: &str, pad: usize) -> Input {
    Input {
        partition: (i % 3) as i32,
        key: Some(format!("k{i}").into_bytes()),
        payload: Some(format!(r#"{{"user_id":"{user}","n":{i},"pad":"{}"}}"#, "x".repeat(pad)).into_bytes()),
        headers: vec![(TID.into(), Some(format!("{i}").into_bytes()))],
        timestamp: 1_760_000_000_000 + i as i64,
    }
}

#[test]
fn two_megabyte_records_reach_their_outputs_and_outputs_keep_their_inputs_settings() {
    let routes = "[[routes]]\ntopic = \"big\"\nservices = [\"payment\", \"shipping\"]\nuser = { json = \"/user_id\" }\n\
                  [[routes]]\ntopic = \"cdc\"\nservices = [\"payment\"]\nuser = { json = \"/user_id\" }\n";
    let f = Fixture::builder()
        .topic_with("big", 3, &[("max.message.bytes", LIMIT)])
        .topic_with("cdc", 3, &[("cleanup.policy", "compact"), ("retention.ms", "86400000")])
        .whitelist(1, &[("U1", &["payment"])])
        .group(GROUP)
        .routes(routes)
        .build();
    let (prod, rush, config) = (&f.prod, &f.rush, &f.config);

    // Four records of ~2 MB, two of them the whitelisted user's: each larger than librdkafka's
    // default message.max.bytes (1,000,000), within the topic's 4 MiB.
    let big: Vec<Input> = (0..4).map(|i| json(i, if i % 2 == 0 { "U1" } else { "U2" }, 2_000_000)).collect();
    let cdc: Vec<Input> = (100..130).map(|i| json(i, if i % 3 == 0 { "U1" } else { "U2" }, 100)).collect();
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &prod.bootstrap)
        .set("message.max.bytes", "4000000")
        .create()
        .unwrap();
    for i in &big {
        common::send(&producer, "big", i);
    }
    for i in &cdc {
        common::send(&producer, "cdc", i);
    }
    producer.flush(Duration::from_secs(60)).unwrap();

    let mut bridge = Bridge::start(config);
    let watcher = OffsetWatcher::new(&prod.bootstrap, GROUP);
    common::wait_until("the bridge did not relay the large records", Instant::now() + Duration::from_secs(90), || {
        bridge.assert_running();
        watcher.committed("big", 3) >= 4 && watcher.committed("cdc", 3) >= cdc.len() as i64
    });
    bridge.assert_running();

    let expected = |i: &common::Read, svc: &str| {
        let user = String::from_utf8_lossy(i.payload.as_deref().unwrap_or_default()).contains(r#""user_id":"U1""#);
        (user && svc == "payment").then(|| "U1".to_string())
    };
    for (topic, inputs, services) in [("big", &big, &["payment", "shipping"][..]), ("cdc", &cdc, &["payment"][..])] {
        let read = common::read_all(&prod.bootstrap, topic, inputs.len(), Duration::from_secs(60));
        let (p, r) = common::read_services(
            &prod.bootstrap,
            &rush.bootstrap,
            topic,
            services,
            inputs.len(),
            Duration::from_secs(60),
        );
        let report = invariant::check(&read, services, &p, &r, expected, StampCheck::Header);
        report.assert_clean();
        eprintln!("{topic}: {} prod, {} rush outputs", report.prod, report.rush);
    }

    // Rush outputs hold stamped copies: the input's limit plus 64 KiB.
    let rush_limit = (LIMIT.parse::<usize>().unwrap() + 64 * 1024).to_string();
    for (cluster, limit) in [(&prod.bootstrap, LIMIT), (&rush.bootstrap, rush_limit.as_str())] {
        for output in ["big.payment", "big.shipping"] {
            let s = common::topic_settings(cluster, output);
            assert_eq!(s.get("max.message.bytes").map(String::as_str), Some(limit), "{cluster} {output}: {s:?}");
        }
        let s = common::topic_settings(cluster, "cdc.payment");
        assert_eq!(s.get("cleanup.policy").map(String::as_str), Some("compact"), "{cluster} cdc.payment: {s:?}");
        assert_eq!(s.get("retention.ms").map(String::as_str), Some("86400000"), "{cluster} cdc.payment: {s:?}");
    }
    let summary = bridge.stop(Duration::from_secs(30));
    assert!(summary.contains("poison=0"), "{summary}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenancy-bridge"))
        .args(["validate", "--topics", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for (cluster, limit) in [("prod", LIMIT), ("rush", rush_limit.as_str())] {
        let line =
            |topic: &str| text.lines().find(|l| l.trim_start().starts_with(&format!("{cluster}:{topic} "))).unwrap();
        let want = format!("max.message.bytes={limit}");
        assert!(line("big.payment").contains("exists") && line("big.payment").contains(&want), "{text}");
        assert!(line("cdc.payment").contains("cleanup.policy=compact"), "{text}");
    }
    assert!(!text.contains("WARNING"), "{text}");
}

#[test]
fn a_record_no_output_takes_goes_to_the_dead_letter_topic_and_production_flows_past_it() {
    let group = "bridge-dead-letter";
    // An operator capped the bridge's producer below what the input accepts: the 2 MB records
    // are poison for every output, and for the dead-letter topic too (their value is left out).
    let f = Fixture::builder()
        .topic_with("big", 3, &[("max.message.bytes", LIMIT)])
        .whitelist(1, &[("U1", &["payment"])])
        .group(group)
        .routes("[[routes]]\ntopic = \"big\"\nservices = [\"payment\", \"shipping\"]\nuser = { json = \"/user_id\" }\n")
        .toml("[prod.producer]\n\"message.max.bytes\" = 1000000\n")
        .admin()
        .build();
    let (prod, rush, config, admin) = (&f.prod, &f.rush, &f.config, f.admin());

    let inputs: Vec<Input> = (0..40)
        .map(|i| json(i, if i % 2 == 0 { "U1" } else { "U2" }, if i % 10 == 3 { 2_000_000 } else { 1000 }))
        .collect();
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &prod.bootstrap)
        .set("message.max.bytes", "4000000")
        .create()
        .unwrap();
    for i in &inputs {
        common::send(&producer, "big", i);
    }
    producer.flush(Duration::from_secs(60)).unwrap();

    let mut bridge = Bridge::start(config);
    let watcher = OffsetWatcher::new(&prod.bootstrap, group);
    let deadline = Instant::now() + Duration::from_secs(90);
    common::wait_until("the bridge did not get past the poison records", deadline, || {
        bridge.assert_running();
        watcher.committed("big", 3) >= inputs.len() as i64
    });
    bridge.assert_running();

    // Inputs 3, 13, 23, 33 (U2, shipping and payment on prod) refused by both outputs.
    let poison: Vec<usize> = (0..inputs.len()).filter(|i| i % 10 == 3).collect();
    let dead =
        common::read_all(&prod.bootstrap, "tenancy-bridge.dead-letter", poison.len() * 2, Duration::from_secs(30));
    assert_eq!(dead.len(), poison.len() * 2, "one dead-letter record per refused output");
    for d in &dead {
        let header = |k: &str| String::from_utf8_lossy(d.header(k).unwrap_or_default()).into_owned();
        let offset: usize = header("tenancy-bridge-dlq-offset").parse().unwrap();
        let tid: usize = header(TID).parse().unwrap();
        assert!(poison.contains(&tid), "input {tid} was dead-lettered");
        assert_eq!(header("tenancy-bridge-dlq-topic"), "big");
        assert_eq!(header("tenancy-bridge-dlq-reason"), "MessageSizeTooLarge", "{offset}");
        assert_eq!(header("tenancy-bridge-dlq-cluster"), "prod");
        assert!(["payment", "shipping"].contains(&header("tenancy-bridge-dlq-service").as_str()));
        assert!(header("tenancy-bridge-dlq-error").contains("too large"), "{}", header("tenancy-bridge-dlq-error"));
        assert_eq!(
            header("tenancy-bridge-dlq-value-omitted").parse::<usize>().unwrap(),
            inputs[tid].payload.as_ref().unwrap().len()
        );
        assert_eq!(d.key.as_deref(), inputs[tid].key.as_deref(), "the original key");
    }
    // Every other record reached its outputs.
    let services = ["payment", "shipping"];
    let (p, r) = common::read_services(&prod.bootstrap, &rush.bootstrap, "big", &services, 36, Duration::from_secs(60));
    let delivered = |svc: &str| p[svc].len() + r[svc].len();
    assert_eq!((delivered("payment"), delivered("shipping")), (36, 36));
    assert_eq!(r["payment"].len(), 20, "U1's records on Rush");

    let (_, metrics) = common::http_get(admin, "/metrics");
    let counted = |svc: &str| {
        metrics.lines().any(|l| {
            l.contains("dead_letter_total{")
                && l.contains("reason=\"MessageSizeTooLarge\"")
                && l.contains(&format!("service=\"{svc}\""))
                && l.ends_with(" 4")
        })
    };
    assert!(counted("payment") && counted("shipping"), "{metrics}");
    let summary = bridge.stop(Duration::from_secs(30));
    assert!(summary.contains("poison=8"), "{summary}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenancy-bridge"))
        .args(["verify", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("{report}");
    assert!(out.status.success() && report.contains("invariant held"), "{report}");
    for svc in services {
        let line = report.lines().find(|l| l.trim_start().starts_with(svc)).unwrap();
        assert_eq!(line.split_whitespace().last(), Some("4"), "dead-lettered for {svc}: {line}");
    }
}

/// A back-filled event, 30 days old: its Rush copy keeps the input's timestamp, and the outbox
/// that carries it counts retention from when it was decided (log-append time), so it cannot
/// expire there before the Rush lane takes it. Before, the outbox kept the input's CreateTime
/// and the 7-day outbox would drop such copies at its next retention check. On Apache Kafka:
/// the broker's own log-append stamping is what is shown.
#[test]
fn a_back_filled_event_reaches_rush_with_its_timestamp_and_the_outbox_uses_log_append_time() {
    let group = "bridge-backfill";
    let f = Fixture::builder()
        .on(common::BrokerKind::Kafka)
        .topic("orders", 2)
        .whitelist(1, &[("U1", &["payment"])])
        .group(group)
        .build();
    let config = tenancy_bridge::config::Config::parse(&f.text, std::iter::empty()).unwrap();
    let outbox = &config.routes[0].outbox_topic;
    let month_ago = tenancy_bridge::clock::now_ms() - 30 * 86_400_000;
    let inputs: Vec<Input> = (0..20)
        .map(|i| Input {
            partition: i % 2,
            key: Some(format!("k{i}").into_bytes()),
            payload: Some(format!("event {i}").into_bytes()),
            headers: vec![
                (TID.into(), Some(i.to_string().into_bytes())),
                ("x-user-id".into(), Some(if i % 2 == 0 { b"U1".to_vec() } else { b"U2".to_vec() })),
            ],
            timestamp: month_ago + i as i64,
        })
        .collect();
    common::produce(&f.prod.bootstrap, "orders", &inputs);
    let started = tenancy_bridge::clock::now_ms();
    let mut bridge = Bridge::start(&f.config);
    let copies = common::read_all(&f.rush.bootstrap, "orders.payment", 10, Duration::from_secs(90));
    bridge.assert_running();
    let in_outbox = common::read_all(&f.prod.bootstrap, outbox, 10, Duration::from_secs(30));
    bridge.stop(Duration::from_secs(30));
    assert_eq!(copies.len(), 10, "every back-filled event of U1 reaches Rush");
    for c in &copies {
        let n: i64 = std::str::from_utf8(c.header(TID).unwrap()).unwrap().parse().unwrap();
        assert_eq!(c.timestamp, Some(month_ago + n), "a Rush copy keeps its input's timestamp");
    }
    assert_eq!(in_outbox.len(), 10);
    for o in &in_outbox {
        let t = o.timestamp.unwrap();
        assert!(t >= started - 1_000, "outbox record stamped {t}, before the bridge started ({started}): CreateTime");
    }
    let settings = common::topic_settings(&f.prod.bootstrap, outbox);
    assert_eq!(settings.get("message.timestamp.type").map(String::as_str), Some("LogAppendTime"), "{settings:?}");
    eprintln!("20 events 30 days old: 10 copies on Rush with their own timestamps; the outbox stamped at append");
}

/// A decision log someone created compacted: compaction refuses the bridge's keyless pins, so
/// it used to fail at the first pin and start again forever. Now it does not start, and says
/// which topic and what to change.
#[test]
fn a_compacted_decision_log_is_refused_at_start_naming_the_topic() {
    let f = Fixture::builder().topic("orders", 2).group("bridge-compacted").build();
    let config = tenancy_bridge::config::Config::parse(&f.text, std::iter::empty()).unwrap();
    let decisions = config.routes[0].decisions_topic.clone();
    common::create_topic_with(&f.prod.bootstrap, &decisions, 2, &[("cleanup.policy", "compact")]);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tenancy-bridge"))
        .args(["run", "--config"])
        .arg(&f.config)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = common::wait_for("the bridge exits within 60s", Instant::now() + Duration::from_secs(60), || {
        child.try_wait().unwrap().ok_or_else(String::new)
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "started with a compacted decision log: {stderr}");
    assert!(
        stderr.contains(&decisions) && stderr.contains("cleanup.policy=compact"),
        "the error names the topic and the setting: {stderr}"
    );
}

/// One route's Rush topic created by hand with the wrong partition count (a Java client's
/// auto-creation on a rebuilt Rush): only that route's copies wait. Before, the whole Rush lane
/// stopped, every route's copies with it. Readiness stays 200 and names the topic.
#[test]
fn a_broken_rush_topic_holds_back_only_its_own_routes_copies() {
    let routes = "[[routes]]\ntopic = \"orders\"\nservices = [\"payment\", \"shipping\"]\nuser = { header = \"x-user-id\" }\n\
                  [[routes]]\ntopic = \"clicks\"\nservices = [\"payment\"]\nuser = { header = \"x-user-id\" }\n";
    let group = "bridge-broken-route";
    let f = Fixture::builder()
        .topic("orders", 3)
        .topic("clicks", 3)
        .whitelist(1, &[("U1", &["payment", "shipping"])])
        .group(group)
        .routes(routes)
        .admin()
        .build();
    common::create_topic(&f.rush.bootstrap, "orders.shipping", 5);
    let event = |i: usize| Input {
        partition: (i % 3) as i32,
        key: Some(format!("k{i}").into_bytes()),
        payload: Some(format!("event {i}").into_bytes()),
        headers: vec![(TID.into(), Some(i.to_string().into_bytes())), ("x-user-id".into(), Some(b"U1".to_vec()))],
        timestamp: tenancy_bridge::clock::now_ms(),
    };
    let events: Vec<Input> = (0..30).map(event).collect();
    common::produce(&f.prod.bootstrap, "orders", &events);
    common::produce(&f.prod.bootstrap, "clicks", &events);
    let mut bridge = Bridge::start(&f.config);
    let copies = common::read_all(&f.rush.bootstrap, "clicks.payment", 30, Duration::from_secs(90));
    bridge.assert_running();
    let watcher = OffsetWatcher::new(&f.prod.bootstrap, group);
    common::wait_until("both routes' inputs committed within 60s", Instant::now() + Duration::from_secs(60), || {
        watcher.committed("orders", 3) >= 30 && watcher.committed("clicks", 3) >= 30
    });
    let (status, why) = common::http_get(f.admin(), "/readyz");
    let broken = common::metric(f.admin(), "tenancy_bridge_rush_routes_broken");
    // The route's other Rush topics are not even created while one of them is wrong.
    let held_back = if common::topic_exists(&f.rush.bootstrap, "orders.payment") {
        common::read_all(&f.rush.bootstrap, "orders.payment", 1, Duration::from_secs(3))
    } else {
        Vec::new()
    };
    bridge.stop(Duration::from_secs(30));
    eprintln!("clicks copies on Rush: {}; orders copies: {}; /readyz {status}: {why}", copies.len(), held_back.len());
    assert_eq!(copies.len(), 30, "the healthy route's copies all reach Rush");
    assert!(held_back.is_empty(), "the broken route's copies wait in its outbox, in order");
    assert_eq!(status, 200, "a broken Rush topic never makes the bridge unready: {why}");
    assert!(why.contains("orders.shipping"), "readiness names the broken topic: {why}");
    assert_eq!(broken, Some(1.0));
}
