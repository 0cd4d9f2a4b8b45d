//! A whitelist read from a local file (the Config Mapper's snapshot JSON), reloaded on change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{SharedSnapshot, Snapshot, SnapshotError};

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot read whitelist file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("whitelist file {path}: {source}")]
    Parse { path: PathBuf, source: SnapshotError },
    #[error("cannot start the whitelist watcher thread: {0}")]
    Spawn(std::io::Error),
}

/// Polls a whitelist file every `refresh` and swaps in each new valid version.
/// A file that turns unreadable or invalid keeps the last good snapshot (and logs why).
pub struct FileSource {
    stop: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

fn read(path: &Path) -> Result<Vec<u8>, WatchError> {
    std::fs::read(path).map_err(|source| WatchError::Read { path: path.into(), source })
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Snapshot, WatchError> {
    Snapshot::from_json(bytes).map_err(|source| WatchError::Parse { path: path.into(), source })
}

/// Reads and parses a whitelist file once.
pub fn load(path: &Path) -> Result<Snapshot, WatchError> {
    parse(path, &read(path)?)
}

impl FileSource {
    /// Loads the file once (an error here is a start-up error) and starts watching it.
    /// At most `max_envs` environments besides the default one ([`Snapshot::limit_envs`]).
    pub fn start(
        path: PathBuf,
        refresh: Duration,
        target: SharedSnapshot,
        max_envs: usize,
    ) -> Result<Self, WatchError> {
        // Compared by content, not mtime: two writes within one mtime tick must not be missed.
        let mut seen = read(&path)?;
        let first = limited(parse(&path, &seen)?, max_envs);
        tracing::info!(path = %path.display(), version = first.version(), users = first.len(), "whitelist loaded");
        target.store(Arc::new(first));
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("whitelist-file".into())
            .spawn(move || {
                loop {
                    match stopped.recv_timeout(refresh) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    let bytes = match read(&path) {
                        Ok(b) if b == seen => continue,
                        Ok(b) => b,
                        Err(e) => {
                            tracing::error!(error = %e, "whitelist reload failed; keeping the last good snapshot");
                            continue;
                        }
                    };
                    let parsed = parse(&path, &bytes).map(|s| limited(s, max_envs));
                    seen = bytes;
                    match parsed {
                        Ok(s) => {
                            tracing::info!(version = s.version(), users = s.len(), "whitelist reloaded");
                            target.store(Arc::new(s));
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "whitelist reload failed; keeping the last good snapshot")
                        }
                    }
                }
            })
            .map_err(WatchError::Spawn)?;
        Ok(Self { stop, thread: Some(thread) })
    }
}

/// `snapshot` with at most `max_envs` environments; the refused ones are logged (and shown by
/// the `envs_refused` gauge).
pub fn limited(snapshot: Snapshot, max_envs: usize) -> Snapshot {
    let s = snapshot.limit_envs(max_envs);
    if !s.refused_envs().is_empty() {
        let refused: Vec<&str> = s.refused_envs().iter().map(|e| &**e).collect();
        tracing::error!(
            max_envs,
            ?refused,
            "whitelist names more environments than bridge.max_envs: these are refused and their users' events \
             stay in production (raise bridge.max_envs or end environments)"
        );
    }
    s
}

impl Drop for FileSource {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
