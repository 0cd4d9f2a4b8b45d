//! Fault-test helpers: a seeded generator, a whitelist that flips, kill -9, reading every
//! output of both clusters back.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::invariant::TID;
use super::{Bridge, ByService, Read, Reader};

/// A small deterministic generator: the seed is printed, so a failing run can be repeated.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Flips the whitelist file between two contents every `every` until dropped.
pub struct Flipper {
    pub flips: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flipper {
    /// Flips the whitelist file between U1 and U2 on payment (U2 always on shipping) and U2
    /// on shipping alone.
    pub fn start(path: std::path::PathBuf, every: Duration) -> Self {
        let on = super::whitelist_json(2, &[("U1", &["payment"]), ("U2", &["payment", "shipping"])]);
        let off = super::whitelist_json(3, &[("U2", &["shipping"])]);
        Self::every(every, move |n| super::write_atomic(&path, if n % 2 == 0 { &on } else { &off }))
    }

    /// Calls `flip(n)` for n = 0, 1, … every `every` (on a fixed schedule) until dropped.
    pub fn every(every: Duration, mut flip: impl FnMut(usize) + Send + 'static) -> Self {
        let (flips, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let thread = {
            let (flips, stop) = (flips.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    flip(flips.fetch_add(1, Ordering::Relaxed));
                    next += every;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
            })
        };
        Self { flips, stop, thread: Some(thread) }
    }
}

impl Drop for Flipper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Event `i` of user `user`, on partition `i % partitions`, payload `{"n":i}`.
pub fn user_event(i: usize, partitions: i32, user: String) -> super::Input {
    super::Input {
        partition: (i % partitions as usize) as i32,
        key: Some(user.clone().into_bytes()),
        payload: Some(format!(r#"{{"n":{i}}}"#).into_bytes()),
        headers: vec![(TID.into(), Some(i.to_string().into_bytes())), ("x-user-id".into(), Some(user.into_bytes()))],
        timestamp: tenancy_bridge::clock::now_ms(),
    }
}

/// Starts the bridge at `config` `kills` times and kills it (-9) each time at a random point of
/// its progress: once its group `watcher` has committed `at_least` plus a random number below
/// `spread` records of `orders` past where the previous instance left them. A point in the
/// stream, waited for with a deadline, not a sleep.
pub fn kill_repeatedly(
    config: &std::path::Path,
    watcher: &super::OffsetWatcher,
    partitions: i32,
    kills: usize,
    rng: &mut Lcg,
    (at_least, spread): (i64, u64),
) {
    let mut committed = 0;
    for k in 0..kills {
        let bridge = Bridge::start(config);
        let target = committed + 1 + at_least + rng.below(spread) as i64;
        let what = format!("kill {k}: no progress to {target} committed");
        super::wait_until(&what, Instant::now() + Duration::from_secs(90), || {
            watcher.committed("orders", partitions) >= target
        });
        kill9(bridge);
        committed = watcher.committed("orders", partitions);
    }
}

pub fn kill9(bridge: Bridge) {
    let ok = std::process::Command::new("kill").args(["-KILL", &bridge.pid().to_string()]).status().unwrap();
    assert!(ok.success());
    drop(bridge);
}

pub fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))?.trim().parse().ok()
}

/// Every output of every service on both clusters, read until each input has shown up at
/// least once per service (or two minutes pass), then a moment more for duplicates. Counting
/// records would stop early: replays after kill -9 write many twice.
pub fn read_outputs_of(
    prod: &str,
    rush: &str,
    inputs: &HashMap<&[u8], &Read>,
    services: &[&str],
    isolation: &str,
) -> (ByService, ByService) {
    let (mut p, mut r) = (ByService::new(), ByService::new());
    for svc in services {
        let topic = format!("orders.{svc}");
        let mut readers =
            [Reader::with_isolation(prod, &topic, isolation), Reader::with_isolation(rush, &topic, isolation)];
        let mut seen = HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut done_at: Option<Instant> = None;
        while done_at.is_none_or(|t| t.elapsed() < Duration::from_secs(1)) && Instant::now() < deadline {
            for reader in &mut readers {
                let before = reader.records.len();
                while reader.poll(Duration::from_millis(10)) {}
                for o in &reader.records[before..] {
                    seen.insert(o.header(TID).unwrap().to_vec());
                }
            }
            if done_at.is_none() && seen.len() >= inputs.len() {
                done_at = Some(Instant::now());
            }
        }
        let [pr, rr] = readers;
        p.insert(svc.to_string(), pr.records);
        r.insert(svc.to_string(), rr.records);
    }
    (p, r)
}

pub fn user(r: &Read) -> &str {
    std::str::from_utf8(r.header("x-user-id").unwrap()).unwrap()
}

/// Watches a group's committed offsets: a zombie's stale commit would move one backwards.
pub struct CommitWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl CommitWatch {
    pub fn start(bootstrap: &str, group: &str, partitions: i32) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = super::OffsetWatcher::new(bootstrap, group);
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut last: std::collections::HashMap<i32, i64> = std::collections::HashMap::new();
                let mut back = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for (p, o) in watcher.by_partition("orders", partitions) {
                        if let Some(prev) = last.insert(p, o).filter(|prev| o < *prev) {
                            back.push(format!("orders[{p}]: {prev} -> {o}"));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                back
            })
        };
        Self { stop, thread }
    }

    pub fn finish(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}
