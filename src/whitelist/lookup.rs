//! Lookup mode: one `GET /v1/whitelist/{user}` per user, for Config Mappers that only answer
//! per user. Answers are cached (moka): listed users until `cache_ttl` or their own expiry,
//! unlisted users for `negative_ttl`, failed lookups for a short back-off during which the user
//! is production. Concurrent misses for one user make one request (moka's `get_with`).
//!
//! The relay never blocks on a lookup: it asks [`LookupCache::cached`] and, on a miss, hands
//! the user to a [`LookupPool`] worker and parks that partition until the answer is in.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use moka::Expiry;

use super::client::MapperClient;
use super::{Entry, SourceStatus, now_ms, parse_rfc3339_ms};

/// A cached answer about one user.
#[derive(Debug, Clone)]
pub enum Answer {
    Listed(Arc<Entry>),
    NotListed,
    /// The lookup failed: production until the back-off ends and it is asked again.
    Failed,
}

impl Answer {
    pub fn entry(&self) -> Option<&Entry> {
        match self {
            Answer::Listed(e) => Some(e),
            _ => None,
        }
    }
}

/// Fetches one user's entry: `Ok(None)` when not whitelisted.
pub type Fetch = Box<dyn Fn(&str) -> Result<Option<Entry>, String> + Send + Sync>;

#[derive(Debug, Clone, Copy)]
pub struct LookupSettings {
    pub cache_ttl: Duration,
    pub negative_ttl: Duration,
    pub failure_backoff: Duration,
    pub capacity: u64,
}

struct AnswerExpiry(LookupSettings);

impl Expiry<Box<str>, Answer> for AnswerExpiry {
    fn expire_after_create(&self, _: &Box<str>, value: &Answer, _: Instant) -> Option<Duration> {
        Some(match value {
            Answer::Listed(e) => {
                // Never serve an entry past its own expiry.
                let left = Duration::from_millis((e.expires_at_ms - now_ms()).max(0) as u64);
                self.0.cache_ttl.min(left)
            }
            Answer::NotListed => self.0.negative_ttl,
            Answer::Failed => self.0.failure_backoff,
        })
    }
}

pub struct LookupCache {
    cache: moka::sync::Cache<Box<str>, Answer>,
    fetch: Fetch,
    pub requests: AtomicU64,
    pub status: Arc<SourceStatus>,
}

impl LookupCache {
    pub fn new(settings: LookupSettings, fetch: Fetch) -> Self {
        let cache =
            moka::sync::Cache::builder().max_capacity(settings.capacity).expire_after(AnswerExpiry(settings)).build();
        Self { cache, fetch, requests: AtomicU64::new(0), status: Arc::new(SourceStatus::default()) }
    }

    /// Backed by a Config Mapper's per-user endpoint.
    pub fn http(settings: LookupSettings, client: MapperClient) -> Self {
        Self::new(
            settings,
            Box::new(move |user| match client.lookup(user) {
                Ok(None) => Ok(None),
                Ok(Some(v)) => {
                    let expires_at_ms = parse_rfc3339_ms(&v.expires_at).map_err(|e| format!("expires_at: {e}"))?;
                    Ok(Some(Entry {
                        services: v.services.into_iter().map(String::into_boxed_str).collect(),
                        expires_at_ms,
                    }))
                }
                Err(e) => Err(e.to_string()),
            }),
        )
    }

    /// The cached answer, without asking anyone.
    pub fn cached(&self, user: &str) -> Option<Answer> {
        self.cache.get(user)
    }

    /// The answer, asking the Config Mapper on a miss. Concurrent callers for one user share
    /// one request. Blocks: call from a lookup worker, never from the relay's poll loop.
    pub fn get(&self, user: &str) -> Answer {
        self.cache.get_with(user.into(), || {
            self.requests.fetch_add(1, Relaxed);
            match (self.fetch)(user) {
                Ok(Some(e)) => {
                    self.status.last_ok_ms.store(now_ms(), Relaxed);
                    Answer::Listed(Arc::new(e))
                }
                Ok(None) => {
                    self.status.last_ok_ms.store(now_ms(), Relaxed);
                    Answer::NotListed
                }
                Err(e) => {
                    self.status.refresh_errors.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, "whitelist lookup failed; this user is production for now");
                    Answer::Failed
                }
            }
        })
    }
}

/// Lookup workers: a bounded queue of users to look up, answers announced on `done`.
pub struct LookupPool {
    queue: Option<SyncSender<Box<str>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl LookupPool {
    /// `done` receives each user once its answer is cached.
    pub fn start(
        cache: Arc<LookupCache>,
        workers: usize,
        done: std::sync::mpsc::Sender<Box<str>>,
    ) -> std::io::Result<Self> {
        let (queue, rx) = std::sync::mpsc::sync_channel::<Box<str>>(workers * 64);
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let (rx, cache, done) = (rx.clone(), cache.clone(), done.clone());
            threads.push(std::thread::Builder::new().name(format!("whitelist-lookup-{i}")).spawn(move || {
                while let Some(user) = next(&rx) {
                    cache.get(&user);
                    if done.send(user).is_err() {
                        return;
                    }
                }
            })?);
        }
        Ok(Self { queue: Some(queue), threads })
    }

    /// Queues a lookup; `false` if the queue is full (the caller tries again later).
    pub fn submit(&self, user: &str) -> bool {
        match self.queue.as_ref().map(|q| q.try_send(user.into())) {
            Some(Ok(())) => true,
            Some(Err(TrySendError::Full(_))) | Some(Err(TrySendError::Disconnected(_))) | None => false,
        }
    }
}

fn next(rx: &std::sync::Mutex<Receiver<Box<str>>>) -> Option<Box<str>> {
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
        }
    }

    #[test]
    fn concurrent_misses_make_one_request() {
        let cache = Arc::new(LookupCache::new(
            settings(),
            Box::new(|_| {
                std::thread::sleep(Duration::from_millis(100));
                Ok(Some(Entry { services: vec!["payment".into()], expires_at_ms: i64::MAX }))
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
    }

    #[test]
    fn negative_answers_and_failures_expire() {
        let cache = LookupCache::new(settings(), Box::new(|u| if u == "down" { Err("boom".into()) } else { Ok(None) }));
        assert!(matches!(cache.get("U2"), Answer::NotListed));
        assert!(matches!(cache.cached("U2"), Some(Answer::NotListed)));
        assert!(matches!(cache.get("down"), Answer::Failed));
        std::thread::sleep(Duration::from_millis(300));
        assert!(cache.cached("U2").is_none() && cache.cached("down").is_none());
    }

    #[test]
    fn entries_never_outlive_their_expiry() {
        let exp = now_ms() + 150;
        let cache =
            LookupCache::new(settings(), Box::new(move |_| Ok(Some(Entry { services: vec![], expires_at_ms: exp }))));
        assert!(matches!(cache.get("U1"), Answer::Listed(_)));
        std::thread::sleep(Duration::from_millis(300));
        assert!(cache.cached("U1").is_none());
    }
}
