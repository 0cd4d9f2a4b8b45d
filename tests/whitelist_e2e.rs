#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The bridge reading its whitelist from a real Config Mapper process, on two tansu brokers:
//! how fast a new entry takes effect, and that an outage of the Config Mapper blocks nothing.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::invariant::{self, StampCheck, TID};
use common::{Bridge, Input, Mapper, Read, Tansu};
use tenancy_bridge::clock::now_ms;
use tenancy_bridge::whitelist::client::MapperClient;

const TOKEN: &str = "qa:0123456789abcdef-e2e-token";

fn event(seq: usize, user: &str) -> Input {
    let sent = now_ms();
    Input {
        // One partition per user, so each user's switch is one point in offset order.
        partition: if user == "U7" { 0 } else { 1 },
        key: Some(user.as_bytes().to_vec()),
        payload: Some(format!(r#"{{"seq":{seq},"sent_ms":{sent}}}"#).into_bytes()),
        headers: vec![
            (TID.into(), Some(format!("w{seq}").into_bytes())),
            ("x-user-id".into(), Some(user.as_bytes().to_vec())),
        ],
        timestamp: sent,
    }
}

/// A bridge config on these brokers, reading the whitelist from `mapper` with `whitelist` keys.
fn bridge_config(
    prod: &Tansu,
    rush: &Tansu,
    mapper: &Mapper,
    group: &str,
    routes: &str,
    whitelist: &str,
) -> std::path::PathBuf {
    let config = mapper.dir.path().join(format!("{group}.toml"));
    let text = common::config_text(&common::ConfigOpts {
        prod: &prod.bootstrap,
        rush: &rush.bootstrap,
        whitelist: std::path::Path::new("unused"),
        group,
        routes,
        extra_bridge: "",
        kafka: "\"max.poll.interval.ms\" = 10000\n\"session.timeout.ms\" = 6000",
    })
    .replace("file = \"unused\"\nrefresh = \"100ms\"", &format!("url = \"{}\"\n{whitelist}", mapper.url));
    std::fs::write(&config, text).unwrap();
    config
}

fn sent_ms(r: &Read) -> i64 {
    let v: serde_json::Value = serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap();
    v["sent_ms"].as_i64().unwrap()
}

#[test]
fn new_entry_takes_effect_within_a_refresh_and_an_outage_blocks_nothing() {
    let prod = Tansu::start();
    let rush = Tansu::start();
    common::create_topic(&prod.bootstrap, "orders", 2);
    let mut mapper = Mapper::start(TOKEN);
    let client =
        MapperClient::new(&mapper.url, Some("0123456789abcdef-e2e-token".into()), Duration::from_secs(5)).unwrap();
    client.add("U1", &["payment".into()], Duration::from_secs(3600), Some("e2e baseline")).unwrap();

    let routes = "[[routes]]\ntopic = \"orders\"\nservices = [\"payment\"]\nuser = { header = \"x-user-id\" }\n";
    let config = bridge_config(&prod, &rush, &mapper, "wl-e2e", routes, "refresh = \"1s\"");
    let mut bridge = Bridge::start(&config);

    // A steady stream for two users, 100 events/s each, from a standard producer.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (stop, bootstrap) = (stop.clone(), prod.bootstrap.clone());
        std::thread::spawn(move || {
            let p = common::producer(&bootstrap);
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                for u in ["U1", "U7"] {
                    seq += 1;
                    common::send(&p, "orders", &event(seq, u));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            rdkafka::producer::Producer::flush(&p, Duration::from_secs(30)).unwrap();
            seq
        })
    };

    // The pipeline is up once U1's events reach Rush.
    let deadline = Instant::now() + Duration::from_secs(60);
    while common::read_until(&[(rush.bootstrap.as_str(), "orders.payment")], 1, Duration::from_secs(2))[0].is_empty() {
        assert!(Instant::now() < deadline, "the bridge never routed U1 to Rush");
        bridge.assert_running();
    }
    std::thread::sleep(Duration::from_millis(500));
    let added_at = now_ms();
    client.add("U7", &["payment".into()], Duration::from_secs(3600), Some("e2e switch")).unwrap();
    std::thread::sleep(Duration::from_secs(4));

    // Outage: the Config Mapper goes away; traffic must keep flowing on the last snapshot.
    mapper.kill();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let produced = producer.join().unwrap();
    bridge.assert_running();

    let inputs = common::read_all(&prod.bootstrap, "orders", produced, Duration::from_secs(60));
    assert_eq!(inputs.len(), produced);
    let (p, r) = common::read_services(
        &prod.bootstrap,
        &rush.bootstrap,
        "orders",
        &["payment"],
        produced,
        Duration::from_secs(60),
    );
    bridge.stop(Duration::from_secs(30));

    // Where U7 switched: the first of its events that reached Rush.
    let first_rush = r["payment"]
        .iter()
        .filter(|o| o.header("x-user-id") == Some(b"U7"))
        .filter_map(|o| inputs.iter().find(|i| i.header(TID) == o.header(TID)))
        .min_by_key(|i| i.offset)
        .expect("U7 never reached Rush");
    let switch_offset = first_rush.offset;
    let latency = sent_ms(first_rush) - added_at;
    let after_kill = inputs.iter().filter(|i| sent_ms(i) > added_at + 4_000).count();
    eprintln!(
        "whitelist change reached the relay {latency} ms after the PUT (refresh 1 s); \
         {produced} events, {after_kill} of them during the Config Mapper outage"
    );
    let expected = |i: &Read, _: &str| match i.header("x-user-id") {
        Some(b"U1") => Some("U1".to_string()),
        Some(b"U7") if i.offset >= switch_offset => Some("U7".to_string()),
        _ => None,
    };
    invariant::check(&inputs, &["payment"], &p, &r, expected, StampCheck::Header).assert_clean();
    assert!(latency <= 2_500, "a whitelist change took {latency} ms to take effect");
    assert!(after_kill > 300, "too little traffic during the outage to mean anything: {after_kill}");
}

#[test]
fn lookup_mode_through_the_binary() {
    let prod = Tansu::start();
    let rush = Tansu::start();
    common::create_topic(&prod.bootstrap, "orders", 2);
    let mapper = Mapper::start(TOKEN);
    let client =
        MapperClient::new(&mapper.url, Some("0123456789abcdef-e2e-token".into()), Duration::from_secs(5)).unwrap();
    client.add("U1", &["payment".into()], Duration::from_secs(3600), None).unwrap();

    let routes = "[[routes]]\ntopic = \"orders\"\nservices = [\"payment\"]\nuser = { key = true }\n";
    let lookup = "mode = \"lookup\"\ncache_ttl = \"30s\"\nnegative_ttl = \"30s\"";
    let config = bridge_config(&prod, &rush, &mapper, "lookup-e2e", routes, lookup);
    let users = ["U1", "U2", "U3"];
    let inputs: Vec<Input> = (0..600)
        .map(|i| {
            let u = users[i % 3];
            Input {
                partition: (i % 2) as i32,
                key: Some(u.as_bytes().to_vec()),
                payload: Some(format!(r#"{{"n":{i}}}"#).into_bytes()),
                headers: vec![(TID.into(), Some(format!("l{i}").into_bytes()))],
                timestamp: 1_760_000_000_000 + i as i64,
            }
        })
        .collect();
    common::produce(&prod.bootstrap, "orders", &inputs);
    let bridge = Bridge::start(&config);
    let read_in = common::read_all(&prod.bootstrap, "orders", 600, Duration::from_secs(60));
    let (p, r) =
        common::read_services(&prod.bootstrap, &rush.bootstrap, "orders", &["payment"], 600, Duration::from_secs(120));
    bridge.stop(Duration::from_secs(30));
    let expected = |i: &Read, _: &str| (i.key.as_deref() == Some(b"U1")).then(|| "U1".to_string());
    let report = invariant::check(&read_in, &["payment"], &p, &r, expected, StampCheck::Header);
    report.assert_clean();
    assert_eq!((report.prod, report.rush), (400, 200));
}
