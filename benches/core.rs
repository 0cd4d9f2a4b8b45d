#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The pure core per event: finding the user, deciding, stamping.
//! JSON lookups: the bridge's own lazy scan (`json_scan`) against sonic-rs (lazy `get`),
//! simd-json (tape parse of a copy) and serde_json (full `Value`).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tenancy_bridge::config::StampMode;
use tenancy_bridge::config::{Route, Service};
use tenancy_bridge::extract::{self, JsonPointer, RecordView, TenancyKey, UserLocator};
use tenancy_bridge::tenancy;
use tenancy_bridge::whitelist::{Entry, Snapshot};

type H<'a> = [(&'a str, Option<&'a [u8]>)];

/// A JSON object of about `size` bytes with `"user_id"` first or last.
fn payload(size: usize, user_first: bool) -> Vec<u8> {
    let mut fields = Vec::new();
    let mut len = 0;
    let mut i = 0;
    while len < size.saturating_sub(40) {
        let f = format!(r#""field_{i}":"value-{i}-abcdefghijklmnopqrstuvwxyz""#);
        len += f.len() + 1;
        fields.push(f);
        i += 1;
    }
    let user = r#""user_id":"U4242""#.to_string();
    if user_first {
        fields.insert(0, user);
    } else {
        fields.push(user);
    }
    format!("{{{}}}", fields.join(",")).into_bytes()
}

fn route(user: UserLocator, stamp: StampMode) -> Route {
    Route {
        topic: "orders".into(),
        services: ["payment", "shipping"]
            .iter()
            .map(|s| Service { name: (*s).into(), output_topic: format!("orders.{s}") })
            .collect(),
        user,
        stamp,
        upstream_stamps: Default::default(),
        return_path: false,
        outbox_topic: "tenancy-bridge.rush.orders".into(),
        decisions_topic: "tenancy-bridge.decisions.orders".into(),
    }
}

fn snapshot(users: usize) -> Snapshot {
    Snapshot::new(1, (0..users).map(|i| (format!("U{i}"), Entry::new(vec!["payment".into()], i64::MAX))))
}

fn extract_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("extract");
    let headers: &H = &[("traceparent", Some(b"00-abc-def-01")), ("x-user-id", Some(b"U4242"))];
    g.bench_function("header", |b| {
        let loc = UserLocator::Header("x-user-id".into());
        let v = RecordView { key: None, payload: None, headers };
        b.iter(|| extract::user(black_box(&loc), black_box(&v)).map(|u| u.len()))
    });
    g.bench_function("key", |b| {
        let v = RecordView { key: Some(b"U4242"), payload: None, headers };
        b.iter(|| extract::user(black_box(&UserLocator::Key), black_box(&v)).map(|u| u.len()))
    });
    let pointer = JsonPointer::parse("/user_id").unwrap();
    for size in [1024, 16 * 1024] {
        for (pos, first) in [("start", true), ("end", false)] {
            let p = payload(size, first);
            let id = format!("{}KiB-{pos}", size / 1024);
            g.throughput(Throughput::Bytes(p.len() as u64));
            g.bench_with_input(BenchmarkId::new("json_scan", &id), &p, |b, p| {
                let loc = UserLocator::Json(pointer.clone());
                let h: &H = &[];
                b.iter(|| {
                    let v = RecordView { key: None, payload: Some(black_box(p.as_slice())), headers: h };
                    extract::user(&loc, &v).map(|u| u.len())
                })
            });
            g.bench_with_input(BenchmarkId::new("sonic-rs", &id), &p, |b, p| {
                b.iter(|| {
                    let v = sonic_rs::get_from_slice(black_box(p.as_slice()), ["user_id"]).ok()?;
                    Some(v.as_raw_str().len())
                })
            });
            g.bench_with_input(BenchmarkId::new("simd-json", &id), &p, |b, p| {
                use simd_json::prelude::*;
                let mut buf = p.clone();
                b.iter(|| {
                    // simd-json parses in place, so each event costs a copy of the payload.
                    buf.copy_from_slice(black_box(p));
                    let v = simd_json::to_borrowed_value(&mut buf).ok()?;
                    v.get("user_id").and_then(|u| u.as_str()).map(str::len)
                })
            });
            g.bench_with_input(BenchmarkId::new("serde_json", &id), &p, |b, p| {
                b.iter(|| {
                    let v: serde_json::Value = serde_json::from_slice(black_box(p)).ok()?;
                    v.pointer("/user_id").and_then(|u| u.as_str()).map(str::len)
                })
            });
        }
    }
    g.finish();
}

fn decide_and_stamp_benches(c: &mut Criterion) {
    let key = TenancyKey::new("event_tenancy");
    let mut g = c.benchmark_group("decide");
    let snap = snapshot(10_000);
    let header_route = route(UserLocator::Header("x-user-id".into()), StampMode::Header);
    for (name, user) in [("whitelisted", &b"U4242"[..]), ("not-whitelisted", &b"X99"[..])] {
        let headers: &H = &[("x-user-id", Some(user))];
        g.bench_function(format!("header-route/{name}"), |b| {
            let v = RecordView { key: None, payload: None, headers };
            b.iter(|| tenancy::decide(black_box(&header_route), black_box(&v), &snap, 0, &key).rush)
        });
    }
    g.finish();

    let mut g = c.benchmark_group("stamp");
    let p = payload(1024, true);
    g.bench_function("header-value", |b| {
        let mut s = String::new();
        b.iter(|| {
            tenancy::tenancy_value(black_box("U4242"), black_box("payment"), &mut s);
            s.len()
        })
    });
    g.bench_function("payload-1KiB", |b| {
        let mut out = Vec::new();
        b.iter(|| {
            let splice = tenancy::plan_splice(Some(black_box(&p)), &key).ok()?;
            tenancy::stamp_payload(&p, splice, "event_tenancy", "U4242_payment", &mut out);
            Some(out.len())
        })
    });
    g.finish();

    // The whole core per event at 1 KiB JSON: find the user by JSON pointer, decide against a
    // 10,000-user snapshot, stamp the Rush copy (header value and payload splice).
    let mut g = c.benchmark_group("per-event-1KiB");
    let json_route = route(UserLocator::Json(JsonPointer::parse("/user_id").unwrap()), StampMode::Both);
    let not_listed = payload(1024, true);
    let not_listed = String::from_utf8(not_listed).unwrap().replace("U4242", "X4242").into_bytes();
    g.bench_function("extract+decide/user-first/not-whitelisted", |b| {
        let h: &H = &[];
        b.iter(|| {
            let v = RecordView { key: None, payload: Some(black_box(not_listed.as_slice())), headers: h };
            tenancy::decide(&json_route, &v, &snap, 0, &key).rush
        })
    });
    for (pos, first) in [("user-first", true), ("user-last", false)] {
        let p = payload(1024, first);
        g.bench_function(format!("extract+decide+stamp/{pos}"), |b| {
            let h: &H = &[];
            let mut stamp = String::new();
            let mut out = Vec::new();
            b.iter(|| {
                let v = RecordView { key: None, payload: Some(black_box(p.as_slice())), headers: h };
                let d = tenancy::decide(&json_route, &v, &snap, 0, &key);
                if let (Some(user), Some(splice)) = (d.user.as_deref(), d.splice) {
                    tenancy::tenancy_value(user, "payment", &mut stamp);
                    tenancy::stamp_payload(&p, splice, "event_tenancy", &stamp, &mut out);
                }
                out.len()
            })
        });
    }
    g.finish();
}

/// Per-event whitelist cost: a snapshot read (snapshot mode) against a cache hit (lookup mode).
fn whitelist_benches(c: &mut Criterion) {
    use std::sync::Arc;
    use std::time::Duration;
    use tenancy_bridge::whitelist::Answered;
    use tenancy_bridge::whitelist::lookup::{LookupCache, LookupSettings};

    let snap = snapshot(10_000);
    let settings = LookupSettings {
        cache_ttl: Duration::from_secs(3600),
        negative_ttl: Duration::from_secs(3600),
        failure_backoff: Duration::from_secs(1),
        capacity: 100_000,
        wait: Duration::from_millis(200),
        request_timeout: Duration::from_secs(2),
        max_envs: 100,
    };
    let cache =
        Arc::new(LookupCache::new(settings, Box::new(|_| Ok(Some(Entry::new(vec!["payment".into()], i64::MAX))))));
    for i in 0..10_000 {
        cache.get(&format!("U{i}"));
    }
    let key = TenancyKey::new("event_tenancy");
    let r = route(UserLocator::Header("x-user-id".into()), StampMode::Header);
    let headers: &H = &[("x-user-id", Some(b"U4242"))];
    let mut g = c.benchmark_group("whitelist");
    g.bench_function("snapshot/lookup", |b| {
        b.iter(|| snap.entry(black_box("U4242")).and_then(|e| e.placement_of("payment", 0)).is_some())
    });
    g.bench_function("lookup-cache/hit", |b| b.iter(|| cache.peek(black_box("U4242")).is_some()));
    // Every user in turn, as a busy topic asks: the cache's bookkeeping at cardinality.
    let users: Vec<String> = (0..10_000).map(|i| format!("U{}", (i * 7919) % 10_000)).collect();
    let mut next = 0;
    g.bench_function("lookup-cache/hit-10k-users", |b| {
        b.iter(|| {
            next = (next + 1) % users.len();
            cache.peek(black_box(&users[next])).is_some()
        })
    });
    g.bench_function("snapshot/decide", |b| {
        let v = RecordView { key: None, payload: None, headers };
        b.iter(|| tenancy::decide(&r, black_box(&v), &snap, 0, &key).rush)
    });
    g.bench_function("lookup-cache/decide", |b| {
        let v = RecordView { key: None, payload: None, headers };
        b.iter(|| {
            // What the relay does in lookup mode: the subject (user found once), a cache hit,
            // a decision.
            let subject = tenancy::subject(&r, black_box(&v), &key);
            let hit = cache.peek(subject.user()?)?;
            Some(tenancy::decide_subject(&r, v.payload, subject, &Answered(hit.answer.into_entry()), 0).rush)
        })
    });
    g.finish();
}

/// Decision cost against the number of environments: 10,000 whitelisted users spread over 1,
/// 10 or 100 environments, decided for a whitelisted and a production user. Flat is the
/// target (DESIGN.md: cost per record does not grow with environments).
fn environment_benches(c: &mut Criterion) {
    let key = TenancyKey::new("event_tenancy");
    let mut g = c.benchmark_group("decide-environments");
    let header_route = route(UserLocator::Header("x-user-id".into()), StampMode::Header);
    for envs in [1usize, 10, 100] {
        let names: Vec<std::sync::Arc<str>> = (0..envs).map(|e| format!("pr-{e}").into()).collect();
        let snap = Snapshot::new(
            1,
            (0..10_000)
                .map(|i| (format!("U{i}"), Entry::placed(names[i % envs].clone(), vec!["payment".into()], i64::MAX))),
        );
        for (name, user) in [("whitelisted", &b"U4242"[..]), ("not-whitelisted", &b"X99"[..])] {
            let headers: &H = &[("x-user-id", Some(user))];
            g.bench_function(format!("{envs}-envs/{name}"), |b| {
                let v = RecordView { key: None, payload: None, headers };
                b.iter(|| {
                    let d = tenancy::decide(black_box(&header_route), black_box(&v), &snap, 0, &key);
                    (d.rush, d.envs.of(0).len())
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, extract_benches, decide_and_stamp_benches, whitelist_benches, environment_benches);
criterion_main!(benches);
