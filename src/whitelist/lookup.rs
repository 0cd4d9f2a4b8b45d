//! Lookup mode: one `GET /v1/whitelist/{user}` per user, for Config Mappers that only answer
//! per user. Answers are cached (moka): listed users for `cache_ttl` (never past their own
//! expiry), unlisted users for `negative_ttl`, failed lookups for a short back-off during which
//! the user's last answer stands (production if it never had one: [`super::answers`]). Concurrent misses for one user make one request (moka's `get_with`).
//!
//! An answer older than its TTL is *stale*: still served (for as long again at most) while a
//! worker refreshes it, so a busy user never waits for the Config Mapper twice. A whitelist
//! change therefore reaches an active user within one TTL plus one lookup.
//!
//! The relay never blocks on a lookup: it asks [`LookupCache::peek`] and, on a miss, hands the
//! user to a [`LookupPool`] worker and holds that partition's records until the answer is in,
//! for at most `lookup_wait`. A Config Mapper that fails or answers slower than that is
//! *degraded*: misses are then decided without an answer at once (the last one stands), and
//! only occasional probes go out until one answers in time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use moka::Expiry;

use super::answers::Answers;
use super::client::MapperClient;
use super::{Entry, Placement, SourceStatus};
use crate::clock::{now_ms, parse_rfc3339_ms};

/// A cached answer about one user.
#[derive(Debug, Clone)]
pub enum Answer {
    Listed(Arc<Entry>),
    NotListed,
    /// The lookup failed: the user's last answer stands (production if none) until the
    /// back-off ends and it is asked again.
    Failed,
}

impl Answer {
    pub fn entry(&self) -> Option<&Entry> {
        match self {
            Answer::Listed(e) => Some(e),
            _ => None,
        }
    }

    pub fn into_entry(self) -> Option<Arc<Entry>> {
        match self {
            Answer::Listed(e) => Some(e),
            _ => None,
        }
    }
}

/// What the cache holds for a user: the answer, and when it should be asked again.
#[derive(Debug, Clone)]
struct Cached {
    answer: Answer,
    refresh_at: Instant,
    /// When it is no longer served at all.
    expires_at: Instant,
    /// The generation of [`LookupCache::answers`] that reflects it.
    generation: u64,
}

/// A cache hit; `stale` answers are still right to use, but due for a refresh.
#[derive(Debug, Clone)]
pub struct Hit {
    pub answer: Answer,
    pub stale: bool,
    /// Past this it is no longer an answer (for callers that keep a copy).
    pub refresh_at: Instant,
    pub expires_at: Instant,
    /// A snapshot of [`LookupCache::answers`] built at this generation or later decides as
    /// this answer does.
    pub generation: u64,
}

/// Fetches one user's entry: `Ok(None)` when not whitelisted.
pub type Fetch = Box<dyn Fn(&str) -> Result<Option<Entry>, String> + Send + Sync>;

#[derive(Debug, Clone, Copy)]
pub struct LookupSettings {
    pub cache_ttl: Duration,
    pub negative_ttl: Duration,
    pub failure_backoff: Duration,
    pub capacity: u64,
    /// Longest a record waits for its user's answer once it is asked; a slower Config Mapper
    /// is degraded.
    pub wait: Duration,
    /// Timeout of one request; with `wait`, the most a record ever waits (queued lookups
    /// included).
    pub request_timeout: Duration,
    /// Most environments besides the default one: answers placing a user in a further one are
    /// refused for that environment (production).
    pub max_envs: usize,
}

impl LookupSettings {
    /// How long an answer is fresh.
    fn ttl(&self, answer: &Answer) -> Duration {
        match answer {
            Answer::Listed(e) => self.cache_ttl.min(left(e)),
            Answer::NotListed => self.negative_ttl,
            Answer::Failed => self.failure_backoff,
        }
    }
}

fn left(e: &Entry) -> Duration {
    Duration::from_millis((e.expires_at_ms() - now_ms()).max(0) as u64)
}

/// Lookup mode's bound on environments: the first `max` environments answered are served,
/// later ones refused for as long as the process runs (answers come one user at a time, so
/// there is no whole whitelist to choose by name).
pub struct EnvLimit {
    max: usize,
    admitted: std::sync::Mutex<std::collections::BTreeSet<String>>,
    refused: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl EnvLimit {
    pub fn new(max: usize) -> Self {
        Self { max, admitted: Default::default(), refused: Default::default() }
    }

    fn admits(&self, env: &str) -> bool {
        if crate::environment::is_default(env) {
            return true;
        }
        let Ok(mut admitted) = self.admitted.lock() else { return false };
        if admitted.contains(env) || admitted.len() < self.max {
            admitted.insert(env.to_owned());
            return true;
        }
        if self.refused.lock().is_ok_and(|mut r| r.insert(env.to_owned())) {
            tracing::error!(
                env,
                max_envs = self.max,
                "lookup answer places a user in an environment beyond bridge.max_envs: refused, its events stay in production"
            );
        }
        false
    }
}

/// A user's entry from the placements a Config Mapper answered (`None`: none).
fn entry_of(views: Vec<super::client::EntryView>, envs: &EnvLimit) -> Result<Option<Entry>, String> {
    let mut entry: Option<Entry> = None;
    for v in views {
        let expires_at_ms = parse_rfc3339_ms(&v.expires_at).map_err(|e| format!("expires_at: {e}"))?;
        crate::environment::check(v.env()).map_err(|e| format!("env: {e}"))?;
        if !envs.admits(v.env()) {
            continue;
        }
        let placement = Placement {
            env: v.env().into(),
            services: v.services.into_iter().map(String::into_boxed_str).collect(),
            expires_at_ms,
        };
        match &mut entry {
            Some(e) => e.add(placement),
            None => entry = Some(Entry { placements: vec![placement] }),
        }
    }
    Ok(entry)
}

struct AnswerExpiry;

impl Expiry<Box<str>, Cached> for AnswerExpiry {
    fn expire_after_create(&self, _: &Box<str>, value: &Cached, created: Instant) -> Option<Duration> {
        Some(value.expires_at.saturating_duration_since(created))
    }

    fn expire_after_update(
        &self,
        key: &Box<str>,
        value: &Cached,
        updated: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, updated)
    }
}

pub struct LookupCache {
    cache: moka::sync::Cache<Box<str>, Cached, foldhash::fast::RandomState>,
    fetch: Fetch,
    settings: LookupSettings,
    pub requests: AtomicU64,
    degraded: AtomicBool,
    /// Users whose request is on the wire, and since when.
    asking: std::sync::Mutex<std::collections::HashMap<Box<str>, Instant>>,
    pub status: Arc<SourceStatus>,
    /// The listed answers being served: what the relay decides from, and pins.
    pub answers: Answers,
}

impl LookupCache {
    pub fn new(settings: LookupSettings, fetch: Fetch) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(settings.capacity)
            .expire_after(AnswerExpiry)
            .build_with_hasher(foldhash::fast::RandomState::default());
        Self {
            cache,
            fetch,
            settings,
            requests: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
            asking: std::sync::Mutex::default(),
            status: Arc::new(SourceStatus::default()),
            answers: Answers::default(),
        }
    }

    /// Backed by a Config Mapper's per-user endpoint.
    pub fn http(settings: LookupSettings, client: MapperClient) -> Self {
        let envs = EnvLimit::new(settings.max_envs);
        Self::new(
            settings,
            Box::new(move |user| match client.lookup(user) {
                Ok(views) => entry_of(views, &envs),
                Err(e) => Err(e.to_string()),
            }),
        )
    }

    pub fn settings(&self) -> &LookupSettings {
        &self.settings
    }

    /// The cached answer, without asking anyone.
    pub fn peek(&self, user: &str) -> Option<Hit> {
        self.peek_at(user, Instant::now())
    }

    /// [`LookupCache::peek`] with the caller's clock reading (the relay reads it once a batch).
    pub fn peek_at(&self, user: &str, now: Instant) -> Option<Hit> {
        let c = self.cache.get(user)?;
        Some(Hit {
            stale: now >= c.refresh_at,
            answer: c.answer,
            refresh_at: c.refresh_at,
            expires_at: c.expires_at,
            generation: c.generation,
        })
    }

    /// The Config Mapper failed or answered slower than `wait` at its last lookup.
    pub fn degraded(&self) -> bool {
        self.degraded.load(Relaxed)
    }

    /// How long `user`'s request has been on the wire; `None` if it is not (queued, or done).
    pub fn asking_for(&self, user: &str) -> Option<Duration> {
        self.asking.lock().ok()?.get(user).map(Instant::elapsed)
    }

    /// A request has been on the wire longer than `wait`: the Config Mapper is slow now, not
    /// only when that request ends.
    pub fn mark_slow(&self) {
        if !self.degraded.swap(true, Relaxed) {
            tracing::warn!(
                "a whitelist lookup is taking longer than lookup_wait; users not cached are production until lookups are fast again"
            );
        }
    }

    /// The answer, asking the Config Mapper on a miss. Concurrent callers for one user share
    /// one request. Blocks: call from a lookup worker, never from the relay's poll loop.
    pub fn get(&self, user: &str) -> Answer {
        self.cache.get_with(user.into(), || self.ask(user).unwrap_or_else(|| self.cached(user, Answer::Failed))).answer
    }

    /// Asks again for a user whose answer is stale. A failure keeps the stale answer (it
    /// expires on its own) rather than turning a listed user into production early.
    pub fn refresh(&self, user: &str) {
        if let Some(fresh) = self.ask(user) {
            self.cache.insert(user.into(), fresh);
        }
    }

    /// The answer as cached, recorded in [`Self::answers`] first.
    fn cached(&self, user: &str, answer: Answer) -> Cached {
        let now = Instant::now();
        let fresh = self.settings.ttl(&answer);
        let served = match &answer {
            // Stale for as long as it was fresh, never past the entry's own expiry.
            Answer::Listed(e) => (fresh * 2).min(left(e)),
            Answer::NotListed => fresh * 2,
            // A failure is not served stale: it is asked again after its back-off.
            Answer::Failed => fresh,
        };
        let generation = match &answer {
            Answer::Listed(e) => self.answers.record(user, Some(e)),
            Answer::NotListed => self.answers.record(user, None),
            // No answer: the last good one stands, as a snapshot-mode whitelist does.
            Answer::Failed => self.answers.generation(),
        };
        Cached { refresh_at: now + fresh, expires_at: now + served, answer, generation }
    }

    /// One request; `None` when it failed (counted, logged, and the Config Mapper degraded).
    fn ask(&self, user: &str) -> Option<Cached> {
        self.requests.fetch_add(1, Relaxed);
        let started = Instant::now();
        if let Ok(mut a) = self.asking.lock() {
            a.insert(user.into(), started);
        }
        let result = (self.fetch)(user);
        if let Ok(mut a) = self.asking.lock() {
            a.remove(user);
        }
        let slow = started.elapsed() > self.settings.wait;
        let answer = match result {
            Ok(entry) => {
                self.status.last_ok_ms.store(now_ms(), Relaxed);
                entry.map_or(Answer::NotListed, |e| Answer::Listed(Arc::new(e)))
            }
            Err(e) => {
                self.status.refresh_errors.fetch_add(1, Relaxed);
                if !self.degraded.swap(true, Relaxed) {
                    tracing::warn!(error = %e, "whitelist lookups failing; users not cached are production until the Config Mapper answers again");
                }
                return None;
            }
        };
        match (slow, self.degraded.swap(slow, Relaxed)) {
            (true, false) => tracing::warn!(
                took_ms = started.elapsed().as_millis() as u64,
                "whitelist lookups slower than lookup_wait; users not cached are production until they are fast again"
            ),
            (false, true) => tracing::info!("whitelist lookups answering in time again"),
            _ => {}
        }
        Some(self.cached(user, answer))
    }
}

/// What a lookup worker is asked to do for a user.
enum Job {
    /// Not cached: fetch it (shared with any concurrent miss for the same user).
    Miss(Box<str>),
    /// Cached but stale: fetch it again and replace it.
    Refresh(Box<str>),
}

/// Lookup workers: a bounded queue of users to look up, answers announced on `done`.
pub struct LookupPool {
    queue: Option<SyncSender<Job>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl LookupPool {
    /// `done` receives each user once its answer is cached.
    pub fn start(
        cache: Arc<LookupCache>,
        workers: usize,
        done: std::sync::mpsc::Sender<Box<str>>,
    ) -> std::io::Result<Self> {
        let (queue, rx) = std::sync::mpsc::sync_channel::<Job>(workers * 64);
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let (rx, cache, done) = (rx.clone(), cache.clone(), done.clone());
            threads.push(std::thread::Builder::new().name(format!("whitelist-lookup-{i}")).spawn(move || {
                while let Some(job) = next(&rx) {
                    let user = match job {
                        Job::Miss(user) => {
                            cache.get(&user);
                            user
                        }
                        Job::Refresh(user) => {
                            cache.refresh(&user);
                            user
                        }
                    };
                    if done.send(user).is_err() {
                        return;
                    }
                }
            })?);
        }
        Ok(Self { queue: Some(queue), threads })
    }

    /// Queues a lookup of a user not cached; `false` if the queue is full (try again later).
    pub fn submit(&self, user: &str) -> bool {
        self.send(Job::Miss(user.into()))
    }

    /// Queues a refresh of a stale answer; `false` if the queue is full.
    pub fn submit_refresh(&self, user: &str) -> bool {
        self.send(Job::Refresh(user.into()))
    }

    fn send(&self, job: Job) -> bool {
        match self.queue.as_ref().map(|q| q.try_send(job)) {
            Some(Ok(())) => true,
            Some(Err(TrySendError::Full(_))) | Some(Err(TrySendError::Disconnected(_))) | None => false,
        }
    }
}

fn next(rx: &std::sync::Mutex<Receiver<Job>>) -> Option<Job> {
    rx.lock().ok()?.recv().ok()
}

impl Drop for LookupPool {
    fn drop(&mut self) {
        self.queue.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    fn settings() -> LookupSettings {
        LookupSettings {
            cache_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_millis(200),
            failure_backoff: Duration::from_millis(100),
            capacity: 1000,
            wait: Duration::from_millis(50),
            request_timeout: Duration::from_secs(1),
            max_envs: 100,
        }
    }

    /// Polls `cond` until it holds; fails after `within` (well under any TTL it must not reach).
    fn wait_until(what: &str, within: Duration, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + within;
        while !cond() {
            assert!(Instant::now() < deadline, "{what} not within {within:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn listed() -> Entry {
        Entry::new(vec!["payment".into()], i64::MAX)
    }

    #[test]
    fn concurrent_misses_make_one_request() {
        let cache = Arc::new(LookupCache::new(
            LookupSettings { wait: Duration::from_secs(1), ..settings() },
            Box::new(|_| {
                std::thread::sleep(Duration::from_millis(100));
                Ok(Some(listed()))
            }),
        ));
        let barrier = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (c, b) = (cache.clone(), barrier.clone());
                std::thread::spawn(move || {
                    b.wait();
                    c.get("U1")
                })
            })
            .collect();
        for h in handles {
            assert!(matches!(h.join().unwrap(), Answer::Listed(_)));
        }
        assert_eq!(cache.requests.load(Relaxed), 1);
        assert!(!cache.degraded());
    }

    #[test]
    fn negative_answers_go_stale_then_expire_and_failures_expire() {
        let cache = LookupCache::new(settings(), Box::new(|u| if u == "down" { Err("boom".into()) } else { Ok(None) }));
        assert!(matches!(cache.get("U2"), Answer::NotListed));
        assert!(matches!(cache.peek("U2"), Some(Hit { answer: Answer::NotListed, stale: false, .. })));
        assert!(matches!(cache.get("down"), Answer::Failed));
        assert!(cache.degraded(), "a failed lookup degrades the Config Mapper");
        // negative_ttl 200 ms: stale after it, gone after twice it; the failure (100 ms) first.
        wait_until("U2 stale", Duration::from_secs(2), || cache.peek("U2").is_some_and(|h| h.stale));
        assert!(matches!(cache.peek("U2"), Some(Hit { answer: Answer::NotListed, stale: true, .. })));
        assert!(cache.peek("down").is_none(), "failures are never served stale");
        wait_until("U2 gone", Duration::from_secs(2), || cache.peek("U2").is_none());
    }

    #[test]
    fn a_refresh_replaces_a_stale_answer_and_a_failed_one_keeps_it() {
        let flip = Arc::new(AtomicU64::new(0));
        let f = flip.clone();
        let cache = LookupCache::new(
            LookupSettings { cache_ttl: Duration::from_millis(100), ..settings() },
            Box::new(move |_| match f.load(Relaxed) {
                0 => Ok(Some(listed())),
                1 => Err("down".into()),
                _ => Ok(None),
            }),
        );
        assert!(matches!(cache.get("U1"), Answer::Listed(_)));
        wait_until("U1 stale", Duration::from_secs(2), || cache.peek("U1").is_some_and(|h| h.stale));
        flip.store(1, Relaxed);
        cache.refresh("U1");
        let hit = cache.peek("U1").unwrap();
        assert!(matches!(hit.answer, Answer::Listed(_)) && hit.stale, "a failed refresh keeps the stale answer");
        assert!(cache.degraded());
        flip.store(2, Relaxed);
        cache.refresh("U1");
        assert!(matches!(cache.peek("U1").unwrap(), Hit { answer: Answer::NotListed, stale: false, .. }));
        assert!(!cache.degraded(), "an answer in time ends the degraded state");
    }

    #[test]
    fn an_answer_slower_than_the_wait_degrades() {
        let cache = LookupCache::new(
            settings(),
            // A Config Mapper that takes 80 ms to answer (lookup_wait is 50 ms).
            Box::new(|_| {
                std::thread::sleep(Duration::from_millis(80));
                Ok(None)
            }),
        );
        assert!(matches!(cache.get("U1"), Answer::NotListed), "a slow answer is still an answer");
        assert!(cache.degraded());
    }

    #[test]
    fn entries_never_outlive_their_expiry() {
        let exp = now_ms() + 150;
        let cache = LookupCache::new(settings(), Box::new(move |_| Ok(Some(Entry::new(vec![], exp)))));
        assert!(matches!(cache.get("U1"), Answer::Listed(_)));
        // cache_ttl is 60 s: only the entry's own expiry (150 ms) can end it this soon.
        wait_until("U1 gone", Duration::from_secs(5), || cache.peek("U1").is_none());
    }

    #[test]
    fn lookup_answers_carry_environments_and_respect_the_limit() {
        let view = |env: Option<&str>, s: &str| super::super::client::EntryView {
            user: "U1".into(),
            services: vec![s.into()],
            expires_at: "2099-01-01T00:00:00Z".into(),
            env: env.map(str::to_owned),
        };
        let limit = EnvLimit::new(1);
        let e = entry_of(vec![view(Some("pr-1"), "payment"), view(None, "shipping")], &limit).unwrap().unwrap();
        assert_eq!(&*e.placement_of("payment", 0).unwrap().env, "pr-1");
        assert_eq!(&*e.placement_of("shipping", 0).unwrap().env, "rush");
        let e = entry_of(vec![view(Some("pr-2"), "payment"), view(None, "shipping")], &limit).unwrap().unwrap();
        assert!(e.placement_of("payment", 0).is_none(), "a second environment is refused at max_envs = 1");
        assert!(e.placement_of("shipping", 0).is_some());
        assert!(entry_of(vec![view(Some("Bad_Env"), "payment")], &limit).unwrap_err().contains("env"));
    }
}
