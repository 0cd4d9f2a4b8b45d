#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Exactly-once delivery on tansu: prod outputs and the Rush outbox commit in transactions with
//! their input offsets; read_committed readers see each output once.

mod common;

use std::time::{Duration, Instant};

use common::invariant::{self, StampCheck, TID};
use common::{Bridge, ConfigOpts, Input, OffsetWatcher, Tansu, http_get};

const PARTITIONS: i32 = 3;
const USERS: usize = 40;

fn input(i: usize) -> Input {
    let user = format!("U{}", i % USERS);
    Input {
        partition: (i % PARTITIONS as usize) as i32,
        key: Some(user.clone().into_bytes()),
        payload: Some(format!(r#"{{"n":{i},"user_id":"{user}"}}"#).into_bytes()),
        headers: vec![(TID.into(), Some(i.to_string().into_bytes())), ("x-user-id".into(), Some(user.into_bytes()))],
        timestamp: tenancy_bridge::whitelist::now_ms(),
    }
}

fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))?.trim().parse().ok()
}

#[test]
fn outputs_commit_once_with_their_input_offsets() {
    let (prod, rush) = (Tansu::start(), Tansu::start());
    common::create_topic(&prod.bootstrap, "orders", PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let wl = dir.path().join("whitelist.json");
    common::write_atomic(&wl, &common::whitelist_json(1, &[("U1", &["payment"])]));
    let admin = format!("127.0.0.1:{}", common::free_port());
    let text = common::config_text(&ConfigOpts {
        prod: &prod.bootstrap,
        rush: &rush.bootstrap,
        whitelist: &wl,
        group: "eos-basic",
        routes: "[[routes]]\ntopic = \"orders\"\nservices = [\"payment\", \"shipping\"]\nuser = { header = \"x-user-id\" }\n",
        extra_bridge: "delivery = \"exactly-once\"\ninstance_id = \"basic\"",
        kafka: "\"session.timeout.ms\" = 6000\n\"max.poll.interval.ms\" = 10000",
    })
    .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{admin}\""));
    let config = dir.path().join("bridge.toml");
    std::fs::write(&config, text).unwrap();
    let inputs: Vec<Input> = (0..4_000).map(input).collect();
    common::produce(&prod.bootstrap, "orders", &inputs[..2_000]);
    let bridge = Bridge::start(&config);
    common::produce(&prod.bootstrap, "orders", &inputs[2_000..]);
    let watcher = OffsetWatcher::new(&prod.bootstrap, "eos-basic");
    let deadline = Instant::now() + Duration::from_secs(90);
    while watcher.committed("orders", PARTITIONS) < inputs.len() as i64 {
        assert!(Instant::now() < deadline, "not every input committed: {}", watcher.committed("orders", PARTITIONS));
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, metrics) = http_get(&admin, "/metrics");
    let committed = gauge(&metrics, "tenancy_bridge_transactions_total{outcome=\"committed\"}").unwrap_or(0.0);
    eprintln!("{committed} transactions committed");
    assert!(committed >= 1.0);
    loop {
        let (_, metrics) = http_get(&admin, "/metrics");
        if gauge(&metrics, "tenancy_bridge_rush_backlog_records") == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the Rush lane did not catch up");
        std::thread::sleep(Duration::from_millis(500));
    }
    bridge.stop(Duration::from_secs(30));
    let read = common::read_all(&prod.bootstrap, "orders", inputs.len(), Duration::from_secs(30));
    let (p, r) = common::read_services(
        &prod.bootstrap,
        &rush.bootstrap,
        "orders",
        &["payment", "shipping"],
        4_000,
        Duration::from_secs(60),
    );
    let report = invariant::check(
        &read,
        &["payment", "shipping"],
        &p,
        &r,
        |i, s| {
            let u = std::str::from_utf8(i.header("x-user-id").unwrap()).unwrap();
            (u == "U1" && s == "payment").then(|| u.to_owned())
        },
        StampCheck::Header,
    );
    eprintln!("{} prod, {} rush outputs", report.prod, report.rush);
    report.assert_clean();
}
