#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Several Rush environments at once, on real brokers over TCP: each environment's topics hold
//! exactly its users' events for its services, production exactly the rest, in partition order;
//! the return path reads each environment's raw topic and says where a record came from.
//! Judged by the test's own oracle (who it placed where), not the bridge's decision code.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::invariant::TID;
use common::{Bridge, Fixture, Input, Read};

const EVENTS: usize = 50_000;
const USERS: usize = 1_000;
const PARTITIONS: i32 = 4;
const SERVICES: [&str; 2] = ["payment", "shipping"];
const PAYMENT_ENVS: [&str; 3] = ["pr-1", "pr-2", "pr-3"];
const SHIPPING_ENVS: [&str; 2] = ["pr-7", "pr-8"];
/// Created by hand with 1 partition where its input has 4.
const BROKEN: &str = "pr-3.orders.payment";

/// The oracle: where user `u`'s events for `service` belong (`None`: production).
/// U0–U29: payment in pr-1/pr-2/pr-3; U30–U49: shipping in pr-7/pr-8; U50–U59: payment in
/// pr-2 and shipping in pr-8 (one user, two environments); U60–U79: both services in the
/// default environment, `rush`, as an old Config Mapper would list them. 60 users in named
/// environments, 80 whitelisted of 1,000.
fn placed(u: usize, service: &str) -> Option<&'static str> {
    match (u, service) {
        (0..=29, "payment") => Some(PAYMENT_ENVS[u % 3]),
        (30..=49, "shipping") => Some(SHIPPING_ENVS[u % 2]),
        (50..=59, "payment") => Some("pr-2"),
        (50..=59, "shipping") => Some("pr-8"),
        (60..=79, _) => Some("rush"),
        _ => None,
    }
}

/// The whitelist file: one entry per (user, environment), the default one named by no `env`.
fn whitelist() -> String {
    let mut entries = Vec::new();
    for u in 0..USERS {
        let mut by_env: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for s in SERVICES {
            if let Some(env) = placed(u, s) {
                by_env.entry(env).or_default().push(s);
            }
        }
        for (env, services) in by_env {
            let mut e = serde_json::json!({"user": format!("U{u}"), "services": services, "expires_at": "2099-01-01T00:00:00Z"});
            if env != "rush" {
                e["env"] = env.into();
            }
            entries.push(e);
        }
    }
    serde_json::json!({"version": 1, "entries": entries}).to_string()
}

fn user_of(i: usize) -> usize {
    // Whitelisted users are busier than the rest, as testers are: a quarter of the events.
    if i % 4 == 0 { (i / 4) % 80 } else { (i * 7919) % USERS }
}

fn input(i: usize) -> Input {
    let user = format!("U{}", user_of(i));
    Input {
        partition: (i % PARTITIONS as usize) as i32,
        key: Some(user.clone().into_bytes()),
        payload: Some(format!(r#"{{"order_id":{i},"user_id":"{user}"}}"#).into_bytes()),
        headers: vec![(TID.into(), Some(i.to_string().into_bytes())), ("x-user-id".into(), Some(user.into_bytes()))],
        timestamp: 1_760_000_000_000 + i as i64,
    }
}

/// Every destination of a service's copies: production, then each environment's Rush topic.
fn destinations(service: &str) -> Vec<(&'static str, String)> {
    let mut d = vec![("prod", "prod".to_owned()), ("rush", "rush".to_owned())];
    let envs: &[&str] = if service == "payment" { &PAYMENT_ENVS } else { &SHIPPING_ENVS };
    d.extend(envs.iter().map(|e| ("rush", (*e).to_owned())));
    d
}

fn topic_of(env: &str, service: &str) -> String {
    if env == "prod" || env == "rush" { format!("orders.{service}") } else { format!("{env}.orders.{service}") }
}

#[test]
fn each_environment_gets_exactly_its_users_events_and_production_the_rest() {
    let routes = "[[routes]]\ntopic = \"orders\"\nservices = [\"payment\", \"shipping\"]\nuser = { header = \"x-user-id\" }\nreturn_path = true\n";
    let f = Fixture::builder().topic("orders", PARTITIONS).whitelist_text(&whitelist()).routes(routes).admin().build();
    let (prod, rush) = (&f.prod.bootstrap, &f.rush.bootstrap);
    // One environment's topic made by hand with the wrong partition count (as a Java client's
    // auto-creation would): that environment keeps flowing on the partition it has, and
    // nothing else is delayed.
    common::create_topic(rush, BROKEN, 1);
    let inputs: Vec<Input> = (0..EVENTS).map(input).collect();
    common::produce(prod, "orders", &inputs[..EVENTS / 2]);
    let started = Instant::now();
    let mut bridge = Bridge::start(&f.config);
    common::produce(prod, "orders", &inputs[EVENTS / 2..]);

    // Every destination of every service, read together until each event shows up once per
    // service.
    let mut wanted: Vec<(String, &str, String)> = Vec::new();
    for s in SERVICES {
        for (cluster, env) in destinations(s) {
            wanted.push((env.clone(), s, topic_of(&env, s)));
            let _ = cluster;
        }
    }
    let topics: Vec<(&str, &str)> = wanted
        .iter()
        .map(|(env, _, t)| (if env == "prod" { prod.as_str() } else { rush.as_str() }, t.as_str()))
        .collect();
    let read = common::read_until(&topics, EVENTS * SERVICES.len(), Duration::from_secs(300));
    let elapsed = started.elapsed();
    bridge.assert_running();

    // (service, tid) → where it was found; per destination topic and partition, the input
    // order of what it holds.
    let mut found: HashMap<(&str, usize), Vec<&str>> = HashMap::new();
    let mut violations = Vec::new();
    let mut per_env: BTreeMap<String, usize> = BTreeMap::new();
    for ((env, service, topic), records) in wanted.iter().zip(&read) {
        *per_env.entry(format!("{env}/{service}")).or_default() += records.len();
        let mut last: HashMap<(i32, Vec<u8>), usize> = HashMap::new();
        for r in records {
            let tid: usize = std::str::from_utf8(r.header(TID).unwrap()).unwrap().parse().unwrap();
            found.entry((service, tid)).or_default().push(env.as_str());
            let i = &inputs[tid];
            let partition = if topic == BROKEN { 0 } else { i.partition };
            if r.partition != partition {
                violations.push(format!("{topic}: event {tid} in partition {} not {partition}", r.partition));
            }
            // Order is the input partition's (the test puts one user's events on several).
            let key = (i.partition, r.key.clone().unwrap_or_default());
            if let Some(prev) = last.insert(key, tid).filter(|prev| *prev > tid) {
                violations.push(format!("{topic}: event {tid} after {prev} of the same key"));
            }
            if env != "prod" {
                let stamp = format!("U{}_{service}", user_of(tid));
                if r.header("event_tenancy") != Some(stamp.as_bytes()) {
                    violations.push(format!("{topic}: event {tid} stamped {:?}", r.header("event_tenancy")));
                }
            }
        }
    }
    for s in SERVICES {
        for tid in 0..EVENTS {
            let expected = placed(user_of(tid), s).unwrap_or("prod");
            match found.get(&(s, tid)).map(Vec::as_slice) {
                Some([one]) if *one == expected => {}
                got => violations
                    .push(format!("{s} copy of event {tid} (U{}): {got:?}, expected [{expected}]", user_of(tid))),
            }
        }
    }
    eprintln!("{EVENTS} events x {} services in {elapsed:.1?}: {per_env:?}", SERVICES.len());
    assert!(
        violations.is_empty(),
        "{} violations, first: {:#?}",
        violations.len(),
        &violations[..violations.len().min(10)]
    );
    for env in PAYMENT_ENVS.iter().chain(&SHIPPING_ENVS) {
        let n: usize = per_env.iter().filter(|(k, _)| k.starts_with(&format!("{env}/"))).map(|(_, n)| n).sum();
        assert!(n > 500, "environment {env} got only {n} copies: too few to mean anything");
    }

    let (status, ready) = common::http_get(f.admin(), "/readyz");
    assert_eq!(status, 200, "only an environment's Rush topic is wrong: {ready}");
    assert!(ready.contains(BROKEN) && ready.contains("pr-3"), "readiness names the topic: {ready}");
    assert_eq!(common::metric(f.admin(), "tenancy_bridge_rush_env_topics_mismatched"), Some(1.0));
    assert_eq!(common::metric(f.admin(), "tenancy_bridge_rush_envs"), Some(5.0));
    // Metrics carry the environment where they carry a service.
    let pr1 = per_env["pr-1/payment"] as f64;
    let stamped = "tenancy_bridge_rush_stamped_total{env=\"pr-1\",route=\"orders\",service=\"payment\"}";
    assert_eq!(common::metric(f.admin(), stamped), Some(pr1));
    let acked = "tenancy_bridge_records_out_total{cluster=\"rush\",env=\"pr-1\",route=\"orders\",service=\"payment\"}";
    assert_eq!(common::metric(f.admin(), acked), Some(pr1));

    // Environments' raw topics were created with the input's partitions before their first
    // copy, so their Rush instances can produce back; what comes back says where from.
    let back: Vec<Input> = (0..200)
        .map(|i| Input { headers: vec![(TID.into(), Some(format!("back{i}").into_bytes()))], ..input(i) })
        .collect();
    common::wait_until("pr-2.orders on Rush", Instant::now() + Duration::from_secs(60), || {
        common::topic_exists(rush, "pr-2.orders")
    });
    common::produce(rush, "pr-2.orders", &back);
    let returned: Vec<Read> = common::read_all(prod, "orders", EVENTS + back.len(), Duration::from_secs(120))
        .into_iter()
        .filter(|r| r.header(TID).is_some_and(|t| t.starts_with(b"back")))
        .collect();
    assert_eq!(returned.len(), back.len(), "every record a pr-2 instance produced came back once");
    assert!(returned.iter().all(|r| r.header("tenancy-origin") == Some(b"pr-2")), "origin names the environment");
    assert!(returned.iter().all(|r| r.header("tenancy-origin-topic") == Some(b"orders")));
    bridge.stop(Duration::from_secs(30));
}
