//! Snapshot mode: polls the Config Mapper's `GET /v1/whitelist` with `If-None-Match` every
//! `refresh` and swaps each new snapshot in whole.
//!
//! Outage rule: production traffic never waits for the whitelist. If the Config Mapper does not
//! answer, the relay keeps the last good snapshot (entries still expire on time, since the
//! snapshot carries expiries); if it never answered, everyone is production.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::SharedSnapshot;
use super::client::{MapperClient, SnapshotAnswer};
use crate::clock::now_ms;

/// How a whitelist source is doing; read by logs now and by metrics.
#[derive(Debug, Default)]
pub struct SourceStatus {
    /// Unix ms of the last successful refresh (200 or 304); 0 = never.
    pub last_ok_ms: AtomicI64,
    pub refresh_errors: AtomicU64,
    pub version: AtomicU64,
    pub users: AtomicUsize,
}

impl SourceStatus {
    /// Seconds since the last good refresh, `None` if there never was one.
    pub fn staleness_seconds(&self) -> Option<f64> {
        match self.last_ok_ms.load(Relaxed) {
            0 => None,
            t => Some((now_ms() - t).max(0) as f64 / 1000.0),
        }
    }

    pub fn loaded(&self) -> bool {
        self.last_ok_ms.load(Relaxed) != 0
    }
}

pub struct SnapshotPoller {
    stop: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
    pub status: Arc<SourceStatus>,
}

struct Poll {
    client: MapperClient,
    target: SharedSnapshot,
    status: Arc<SourceStatus>,
    etag: Option<String>,
    failing_since: Option<i64>,
    max_envs: usize,
}

impl Poll {
    fn once(&mut self) {
        match self.client.snapshot(self.etag.as_deref()) {
            Ok(SnapshotAnswer::Changed { snapshot, etag }) => {
                let snapshot = super::file::limited(snapshot, self.max_envs);
                if snapshot.version() != self.status.version.load(Relaxed) || !self.status.loaded() {
                    tracing::info!(
                        version = snapshot.version(),
                        users = snapshot.len(),
                        "whitelist snapshot swapped in"
                    );
                }
                self.status.version.store(snapshot.version(), Relaxed);
                self.status.users.store(snapshot.len(), Relaxed);
                self.target.store(Arc::new(snapshot));
                self.etag = etag;
                self.ok();
            }
            Ok(SnapshotAnswer::NotModified) => self.ok(),
            Err(e) => {
                self.status.refresh_errors.fetch_add(1, Relaxed);
                let first = self.failing_since.is_none();
                let since = *self.failing_since.get_or_insert_with(now_ms);
                // Loud on the first failure, then about once a minute, so an outage is visible
                // without flooding the log at every refresh.
                if first || (now_ms() - since) % 60_000 < 1_000 {
                    match self.status.staleness_seconds() {
                        Some(s) => {
                            tracing::warn!(error = %e, stale_seconds = s, "whitelist refresh failed; keeping the last good snapshot")
                        }
                        None => {
                            tracing::error!(error = %e, "whitelist never loaded; every event is production until the Config Mapper answers")
                        }
                    }
                }
            }
        }
    }

    fn ok(&mut self) {
        if let Some(since) = self.failing_since.take() {
            tracing::info!(outage_seconds = (now_ms() - since) / 1000, "whitelist refresh recovered");
        }
        self.status.last_ok_ms.store(now_ms(), Relaxed);
    }
}

impl SnapshotPoller {
    /// Tries once right away (the relay starts either way), then every `refresh`.
    /// Polls every `refresh`; at most `max_envs` environments besides the default one.
    pub fn start(
        client: MapperClient,
        refresh: Duration,
        target: SharedSnapshot,
        max_envs: usize,
    ) -> std::io::Result<Self> {
        let status = Arc::new(SourceStatus::default());
        let mut poll = Poll { client, target, status: status.clone(), etag: None, failing_since: None, max_envs };
        poll.once();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name("whitelist-poll".into()).spawn(move || {
            loop {
                match stopped.recv_timeout(refresh) {
                    Err(RecvTimeoutError::Timeout) => poll.once(),
                    _ => return,
                }
            }
        })?;
        Ok(Self { stop, thread: Some(thread), status })
    }

    pub fn status(&self) -> Arc<SourceStatus> {
        self.status.clone()
    }
}

impl Drop for SnapshotPoller {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
