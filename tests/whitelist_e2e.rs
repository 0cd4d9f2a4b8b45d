#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The bridge reading its whitelist from a real Config Mapper process, on two tansu brokers:
//! how fast a new entry takes effect, and that an outage of the Config Mapper blocks nothing.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::invariant::{self, StampCheck, TID};
use common::{Bridge, Fixture, Input, OffsetWatcher, Read};
use tenancy_bridge::clock::now_ms;
use tenancy_bridge::whitelist::client::MapperClient;

const TOKEN: &str = "qa:0123456789abcdef-e2e-token";
/// More events than the test asks of the Config Mapper outage (300), relayed during it.
const OUTAGE_EVENTS: i64 = 400;

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

fn sent_ms(r: &Read) -> i64 {
    let v: serde_json::Value = serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap();
    v["sent_ms"].as_i64().unwrap()
}

#[test]
fn new_entry_takes_effect_within_a_refresh_and_an_outage_blocks_nothing() {
    let mut f = Fixture::builder()
        .topic("orders", 2)
        .mapper(TOKEN, "refresh = \"1s\"")
        .group("wl-e2e")
        .routes("[[routes]]\ntopic = \"orders\"\nservices = [\"payment\"]\nuser = { header = \"x-user-id\" }\n")
        .admin()
        .build();
    let client =
        MapperClient::new(&f.mapper().url, Some("0123456789abcdef-e2e-token".into()), Duration::from_secs(5)).unwrap();
    client.add("U1", &["payment".into()], Duration::from_secs(3600), Some("e2e baseline"), None).unwrap();
    let (prod, rush) = (&f.prod, &f.rush);
    let mut bridge = Bridge::start(&f.config);

    // A steady stream for two users, 100 events/s each, from a standard producer.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let producer = {
        let (stop, sent, bootstrap) = (stop.clone(), sent.clone(), prod.bootstrap.clone());
        std::thread::spawn(move || {
            let p = common::producer(&bootstrap);
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                for u in ["U1", "U7"] {
                    seq += 1;
                    common::send(&p, "orders", &event(seq, u));
                }
                sent.store(seq, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
            rdkafka::producer::Producer::flush(&p, Duration::from_secs(30)).unwrap();
            seq
        })
    };
    // Whether a record of `user` has reached `orders.payment` on the cluster at `bootstrap`.
    let reached = |bootstrap: &str, user: &[u8]| {
        let read = common::read_until(&[(bootstrap, "orders.payment")], usize::MAX, Duration::from_secs(2));
        read[0].iter().any(|o| o.header("x-user-id") == Some(user))
    };

    // The pipeline is up once U1's events reach Rush, and U7's reach prod: U7's switch will be
    // a point in its stream.
    common::wait_until("the bridge never routed U1 to Rush", Instant::now() + Duration::from_secs(60), || {
        bridge.assert_running();
        !common::read_until(&[(rush.bootstrap.as_str(), "orders.payment")], 1, Duration::from_secs(2))[0].is_empty()
    });
    common::wait_until("the bridge never routed U7 to prod", Instant::now() + Duration::from_secs(60), || {
        bridge.assert_running();
        reached(&prod.bootstrap, b"U7")
    });
    let added_at = now_ms();
    client.add("U7", &["payment".into()], Duration::from_secs(3600), Some("e2e switch"), None).unwrap();
    // The refresh applied: U7's events reach Rush.
    common::wait_until("U7 never reached Rush", Instant::now() + Duration::from_secs(60), || {
        bridge.assert_running();
        reached(&rush.bootstrap, b"U7")
    });

    // Outage: the Config Mapper goes away; traffic must keep flowing on the last snapshot, past
    // failed refreshes: the bridge has met the outage twice and relayed more than enough
    // events sent since.
    f.mapper.as_mut().unwrap().kill();
    let killed_at = now_ms();
    let sent_at_kill = sent.load(Ordering::Relaxed) as i64;
    let watcher = OffsetWatcher::new(&prod.bootstrap, "wl-e2e");
    let errors = "tenancy_bridge_whitelist_refresh_errors_total";
    let what = "the bridge did not relay through two failed whitelist refreshes";
    common::wait_until(what, Instant::now() + Duration::from_secs(60), || {
        bridge.assert_running();
        common::metric(f.admin(), errors).unwrap_or(0.0) >= 2.0
            && watcher.committed("orders", 2) > sent_at_kill + OUTAGE_EVENTS
    });
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
    let after_kill = inputs.iter().filter(|i| sent_ms(i) > killed_at).count();
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
    let f = Fixture::builder()
        .topic("orders", 2)
        .mapper(TOKEN, "mode = \"lookup\"\ncache_ttl = \"30s\"\nnegative_ttl = \"30s\"")
        .group("lookup-e2e")
        .routes("[[routes]]\ntopic = \"orders\"\nservices = [\"payment\"]\nuser = { key = true }\n")
        .build();
    let (prod, rush, config) = (&f.prod, &f.rush, &f.config);
    let client =
        MapperClient::new(&f.mapper().url, Some("0123456789abcdef-e2e-token".into()), Duration::from_secs(5)).unwrap();
    client.add("U1", &["payment".into()], Duration::from_secs(3600), None, None).unwrap();

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
    let bridge = Bridge::start(config);
    let read_in = common::read_all(&prod.bootstrap, "orders", 600, Duration::from_secs(60));
    let (p, r) =
        common::read_services(&prod.bootstrap, &rush.bootstrap, "orders", &["payment"], 600, Duration::from_secs(120));
    bridge.stop(Duration::from_secs(30));
    let expected = |i: &Read, _: &str| (i.key.as_deref() == Some(b"U1")).then(|| "U1".to_string());
    let report = invariant::check(&read_in, &["payment"], &p, &r, expected, StampCheck::Header);
    report.assert_clean();
    assert_eq!((report.prod, report.rush), (400, 200));
}

/// Restarted while the Config Mapper is down: the bridge starts from the last snapshot in its
/// snapshot log instead of deciding everyone as production until the Config Mapper answers.
#[test]
fn a_restart_while_the_config_mapper_is_down_starts_from_the_snapshot_log() {
    let group = "wl-restart-outage";
    let mut f = Fixture::builder()
        .topic("orders", 2)
        .mapper(TOKEN, "refresh = \"1s\"")
        .group(group)
        .routes("[[routes]]\ntopic = \"orders\"\nservices = [\"payment\"]\nuser = { header = \"x-user-id\" }\n")
        .build();
    let client =
        MapperClient::new(&f.mapper().url, Some("0123456789abcdef-e2e-token".into()), Duration::from_secs(5)).unwrap();
    client.add("U1", &["payment".into()], Duration::from_secs(3600), Some("restart during an outage"), None).unwrap();
    let batch = |from: usize| -> Vec<Input> {
        (from..from + 20).map(|i| event(i, if i % 2 == 0 { "U1" } else { "U2" })).collect()
    };
    let watcher = OffsetWatcher::new(&f.prod.bootstrap, group);
    let within = |secs| Instant::now() + Duration::from_secs(secs);
    common::produce(&f.prod.bootstrap, "orders", &batch(0));
    let mut bridge = Bridge::start(&f.config);
    common::wait_until("the first 20 committed within 60s", within(60), || {
        bridge.assert_running();
        watcher.committed("orders", 2) >= 20
    });
    // Stopped once its Rush lane has carried U1's copies (so it leaves its group joined: tansu
    // can take long to settle a group whose member left mid-join).
    let first = common::read_all(&f.rush.bootstrap, "orders.payment", 10, Duration::from_secs(60));
    assert_eq!(first.len(), 10, "U1's first events reach Rush");
    bridge.stop(Duration::from_secs(30));
    f.mapper.as_mut().unwrap().kill();
    common::produce(&f.prod.bootstrap, "orders", &batch(20));
    let mut bridge = Bridge::start(&f.config);
    common::wait_until("the next 20 committed within 60s", within(60), || {
        bridge.assert_running();
        watcher.committed("orders", 2) >= 40
    });
    let rush = common::read_all(&f.rush.bootstrap, "orders.payment", 20, Duration::from_secs(30));
    let prod = common::read_all(&f.prod.bootstrap, "orders.payment", 20, Duration::from_secs(30));
    bridge.stop(Duration::from_secs(30));
    let users = |rs: &[Read]| rs.iter().filter(|r| r.header("x-user-id") == Some(b"U1".as_slice())).count();
    eprintln!("after a restart with the Config Mapper down: {} rush, {} prod outputs", rush.len(), prod.len());
    assert_eq!((rush.len(), users(&rush)), (20, 20), "U1's events reach Rush before and after the restart");
    assert_eq!((prod.len(), users(&prod)), (20, 0), "U2's events, and only those, stay in production");
}
