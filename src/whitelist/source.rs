//! Starting the whitelist source a config names: a file, a Config Mapper polled for snapshots,
//! or per-user lookups.

use std::sync::Arc;
use std::time::Duration;

use super::client::MapperClient;
use super::lookup::{LookupCache, LookupSettings};
use super::{FileSource, SharedSnapshot, Snapshot, SnapshotPoller, SourceStatus, WatchError, shared};
use crate::config::{WhitelistConfig, WhitelistMode};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    File(#[from] WatchError),
    #[error("cannot start the whitelist poller thread: {0}")]
    Spawn(std::io::Error),
    #[error("whitelist: set `url` or `file`")]
    NoSource,
    #[error("whitelist: {0}")]
    Client(#[from] super::client::ClientError),
}

/// Where decisions read the whitelist from.
#[derive(Clone)]
pub enum WhitelistSource {
    /// A whole snapshot, swapped atomically by a source (file or Config Mapper poller).
    Snapshot(SharedSnapshot),
    /// Per-user lookups through a cache, answered by `workers` threads.
    Lookup { cache: Arc<LookupCache>, workers: usize },
}

impl From<SharedSnapshot> for WhitelistSource {
    fn from(s: SharedSnapshot) -> Self {
        Self::Snapshot(s)
    }
}

/// A running source; dropping it stops it.
pub enum Running {
    File(FileSource),
    Poller(SnapshotPoller),
    /// Lookup mode: the relay's workers ask the Config Mapper themselves.
    Lookup,
}

impl Running {
    /// Refresh status of a polled Config Mapper (none for a file or lookup mode).
    pub fn status(&self) -> Option<Arc<SourceStatus>> {
        match self {
            Self::Poller(p) => Some(p.status()),
            _ => None,
        }
    }
}

/// Starts the source `w` names and returns it with what the relay reads decisions from; at
/// most `max_envs` environments besides the default one are served.
pub fn start(w: &WhitelistConfig, max_envs: usize) -> Result<(Running, WhitelistSource), StartError> {
    let snapshot: SharedSnapshot = shared(Snapshot::empty());
    match (&w.file, &w.url, w.mode) {
        (Some(path), _, _) => {
            let source = FileSource::start(path.clone(), w.refresh, snapshot.clone(), max_envs)?;
            Ok((Running::File(source), snapshot.into()))
        }
        (None, Some(url), WhitelistMode::Snapshot) => {
            let client = client(url, w)?;
            let poller =
                SnapshotPoller::start(client, w.refresh, snapshot.clone(), max_envs).map_err(StartError::Spawn)?;
            Ok((Running::Poller(poller), snapshot.into()))
        }
        (None, Some(url), WhitelistMode::Lookup) => {
            let settings = LookupSettings {
                cache_ttl: w.cache_ttl,
                negative_ttl: w.negative_ttl,
                failure_backoff: w.negative_ttl.min(Duration::from_secs(1)),
                capacity: w.cache_size,
                wait: w.lookup_wait,
                request_timeout: w.request_timeout,
                max_envs,
            };
            let cache = Arc::new(LookupCache::http(settings, client(url, w)?));
            Ok((Running::Lookup, WhitelistSource::Lookup { cache, workers: w.lookup_workers }))
        }
        (None, None, _) => Err(StartError::NoSource),
    }
}

/// The daemon's Config Mapper client: `whitelist.ca_file` trusted, else `$TENANCY_BRIDGE_CA_FILE`.
pub fn client(url: &str, w: &crate::config::WhitelistConfig) -> Result<MapperClient, super::client::ClientError> {
    match &w.ca_file {
        Some(ca) => MapperClient::with_ca(url, None, w.request_timeout, Some(ca)),
        None => MapperClient::new(url, None, w.request_timeout),
    }
}
