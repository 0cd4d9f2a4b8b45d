#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Environments under churn and kill -9, on Apache Kafka: events flow at 1,000/s while users
//! move between environments and back more than three times a second, an environment is
//! ended and another one created in every cycle, and the bridge is killed -9 at random
//! moments. Each event reaches exactly one destination per service (production, or the one
//! environment the whitelist placed its user in), for read_committed and read_uncommitted
//! readers alike: a replay decides with the pinned whitelist, environments included.
//!
//! `ENV_MOVES_KILLS` (default 10) sets how many times the bridge is killed.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::chaos::{Flipper, Lcg, kill_repeatedly, user, user_event};
use common::invariant::TID;
use common::paced::PacedProducer;
use common::{Bridge, Fixture, Input, OffsetWatcher, Read, Reader};

const PARTITIONS: i32 = 3;
const USERS: usize = 40;
const SERVICES: [&str; 2] = ["payment", "shipping"];
const ENVS: [&str; 4] = ["pr-1", "pr-2", "pr-3", "pr-4"];

/// The four whitelists the test cycles through, as (user, environment, services).
/// U1's payment moves pr-1 → pr-2 → production → pr-1; U2's payment goes pr-2 → production
/// → the default environment; pr-1 is ended (state 2) and pr-4 created; U2's shipping stays
/// in pr-3 throughout.
const STATES: [&[(&str, &str, &[&str])]; 4] = [
    &[("U1", "pr-1", &["payment"]), ("U2", "pr-2", &["payment"]), ("U2", "pr-3", &["shipping"])],
    &[("U1", "pr-2", &["payment"]), ("U2", "pr-3", &["shipping"]), ("U3", "rush", &["payment"])],
    &[("U2", "rush", &["payment"]), ("U2", "pr-3", &["shipping"]), ("U3", "pr-4", &["payment"])],
    &[("U1", "pr-1", &["payment"]), ("U1", "rush", &["shipping"]), ("U2", "pr-3", &["shipping"])],
];

fn whitelist(version: usize, state: &[(&str, &str, &[&str])]) -> String {
    let entries: Vec<serde_json::Value> = state
        .iter()
        .map(|(u, env, s)| serde_json::json!({"user": u, "env": env, "services": s, "expires_at": "2099-01-01T00:00:00Z"}))
        .collect();
    serde_json::json!({"version": version, "entries": entries}).to_string()
}

/// Where the test ever placed `user`'s `service`, production included.
fn allowed(user: &str, service: &str) -> Vec<&'static str> {
    let mut out = vec!["prod"];
    for state in STATES {
        for (u, env, services) in state {
            if *u == user && services.contains(&service) && !out.contains(env) {
                out.push(env);
            }
        }
    }
    if user == "U2" && service == "shipping" {
        return vec!["pr-3"];
    }
    out
}

fn input(i: usize) -> Input {
    user_event(i, PARTITIONS, format!("U{}", i % USERS))
}

#[test]
fn moves_between_environments_under_kill_9_exactly_once() {
    moves_under_kill_9(true);
}

#[test]
fn moves_between_environments_under_kill_9_at_least_once() {
    moves_under_kill_9(false);
}

fn moves_under_kill_9(exactly_once: bool) {
    let kills = std::env::var("ENV_MOVES_KILLS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let group = if exactly_once { "env-moves-eos" } else { "env-moves" };
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("seed {seed}");
    let mut rng = Lcg(seed);
    let extra = if exactly_once { "delivery = \"exactly-once\"\ninstance_id = \"killed\"" } else { "" };
    let f = Fixture::builder()
        .topic("orders", PARTITIONS)
        .whitelist_text(&whitelist(1, STATES[0]))
        .group(group)
        .bridge(extra)
        .build();
    let (prod, rush) = (&f.prod.bootstrap, &f.rush.bootstrap);
    let path = f.whitelist.clone();
    let flipper = Flipper::every(Duration::from_millis(250), move |n| {
        common::write_atomic(&path, &whitelist(n + 2, STATES[(n + 1) % STATES.len()]));
    });
    let producer = PacedProducer::start(prod, "orders", 1_000, input);
    let watcher = OffsetWatcher::new(prod, group);
    let started = Instant::now();
    kill_repeatedly(&f.config, &watcher, PARTITIONS, kills, &mut rng, (0, 1_500));
    let killed_for = started.elapsed();
    let flips = flipper.flips.load(Ordering::Relaxed);
    drop(flipper);
    let total = producer.finish();
    let (rate, flip_rate) = (total as f64 / killed_for.as_secs_f64(), flips as f64 / killed_for.as_secs_f64());
    eprintln!(
        "{kills} kills in {killed_for:.1?}: {total} events ({rate:.0}/s), {flips} whitelist changes ({flip_rate:.1}/s)"
    );
    assert!(rate >= 900.0, "the producer fell behind: {rate:.0} events/s");
    assert!(flip_rate >= 3.0, "users moved only {flip_rate:.1} times a second");

    // A last instance finishes the work.
    let bridge = Bridge::start(&f.config);
    common::wait_until(
        "the last instance did not commit every input",
        Instant::now() + Duration::from_secs(180),
        || watcher.committed("orders", PARTITIONS) >= total as i64,
    );
    let inputs = common::read_all(prod, "orders", total, Duration::from_secs(60));
    assert_eq!(inputs.len(), total);
    let by_tid: HashMap<&[u8], &Read> = inputs.iter().map(|r| (r.header(TID).unwrap(), r)).collect();
    let mut violations = Vec::new();
    for isolation in ["read_committed", "read_uncommitted"] {
        let (found, duplicates) = destinations(prod, rush, &by_tid, isolation, &mut violations);
        let mut placed = HashMap::<&str, usize>::new();
        for svc in SERVICES {
            for (tid, input) in &by_tid {
                let u = user(input);
                let t = String::from_utf8_lossy(tid);
                match found.get(&(svc, *tid)).map(Vec::as_slice).unwrap_or_default() {
                    [] => violations.push(format!("{isolation} {svc}: event {t} of {u} on no destination")),
                    [one, rest @ ..] if rest.iter().any(|d| d != one) => violations
                        .push(format!("{isolation} {svc}: event {t} of {u} on two destinations: {one}, {rest:?}")),
                    [one, ..] if !allowed(u, svc).contains(one) => {
                        violations.push(format!("{isolation} {svc}: event {t} of {u} in {one}, never placed there"))
                    }
                    [one, ..] => *placed.entry(one).or_default() += 1,
                }
            }
        }
        eprintln!(
            "{isolation}: {total} events x 2 services by destination {placed:?}; {duplicates} duplicated on one destination"
        );
        // Every environment was used. How much each gets depends on which whitelist was
        // pinned when: one clean-clone run gave pr-4 only 20 copies, others 225 to 1,202.
        for env in ENVS {
            assert!(
                placed.get(env).copied().unwrap_or(0) > 0,
                "{isolation}: environment {env} got too little: {placed:?}"
            );
        }
        // Exactly-once readers see each output once on Apache Kafka; at-least-once may write
        // an event twice after a kill, always on the same destination.
        if exactly_once && isolation == "read_committed" && duplicates > 0 {
            violations.push(format!("exactly-once: {duplicates} outputs duplicated for read_committed readers"));
        }
    }
    // `verify` judges every event by the decision recorded for it, environment included.
    violations.extend(common::invariant::verify_by_recorded_decisions(&f.text, total, !exactly_once));
    bridge.stop(Duration::from_secs(60));
    assert!(
        violations.is_empty(),
        "{} violations, first: {:#?}",
        violations.len(),
        &violations[..violations.len().min(10)]
    );
}

/// Per (service, event tid): every destination it was found in.
type Found<'a> = HashMap<(&'static str, &'a [u8]), Vec<&'static str>>;

/// Every destination each (service, event) was found in, and how many outputs were copies of
/// one already found on the same destination.
fn destinations<'a>(
    prod: &str,
    rush: &str,
    by_tid: &HashMap<&'a [u8], &Read>,
    isolation: &str,
    violations: &mut Vec<String>,
) -> (Found<'a>, usize) {
    let mut found = Found::new();
    let mut duplicates = 0;
    for svc in SERVICES {
        let mut places: Vec<(&'static str, &str, String)> =
            vec![("prod", prod, format!("orders.{svc}")), ("rush", rush, format!("orders.{svc}"))];
        for env in ENVS {
            if !allowed_anywhere(env, svc) {
                continue;
            }
            places.push((env, rush, format!("{env}.orders.{svc}")));
        }
        let mut readers: Vec<(&'static str, Reader)> =
            places.iter().map(|(d, b, t)| (*d, Reader::with_isolation(b, t, isolation))).collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut seen = std::collections::HashSet::new();
        let mut done_at: Option<Instant> = None;
        while done_at.is_none_or(|t| t.elapsed() < Duration::from_secs(2)) && Instant::now() < deadline {
            for (_, r) in &mut readers {
                let before = r.records.len();
                while r.poll(Duration::from_millis(10)) {}
                seen.extend(r.records[before..].iter().map(|o| o.header(TID).unwrap().to_vec()));
            }
            if done_at.is_none() && seen.len() >= by_tid.len() {
                done_at = Some(Instant::now());
            }
        }
        for (dest, r) in &readers {
            for o in &r.records {
                let Some((tid, input)) = by_tid.get_key_value(o.header(TID).unwrap()) else {
                    violations.push(format!("{dest}:{svc}: an output of no input"));
                    continue;
                };
                if *dest != "prod" {
                    let stamp = format!("{}_{svc}", user(input));
                    if o.header("event_tenancy") != Some(stamp.as_bytes()) {
                        violations.push(format!(
                            "{dest}:{svc}: event of {} stamped {:?}",
                            user(input),
                            o.header("event_tenancy")
                        ));
                    }
                }
                let at = found.entry((svc, *tid)).or_default();
                duplicates += usize::from(at.contains(dest));
                at.push(dest);
            }
        }
    }
    (found, duplicates)
}

/// Whether any state places any user's `service` in `env`.
fn allowed_anywhere(env: &str, service: &str) -> bool {
    STATES.iter().any(|s| s.iter().any(|(_, e, services)| *e == env && services.contains(&service)))
}
