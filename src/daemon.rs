//! `tenancy-bridge run`: the whitelist source, the admin endpoint and the relay, wired together.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use crate::admin::{Admin, AdminState};
use crate::config::Config;
use crate::decision_log::DecisionReader;
use crate::relay::{self, Observers, RelayError, Summary, WhitelistSource};
use crate::whitelist::source::{self, StartError};
use crate::whitelist::{SharedSnapshot, SourceStatus};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Whitelist(#[from] StartError),
    #[error("admin.listen {addr}: {source}")]
    Admin { addr: String, source: std::io::Error },
    #[error("relay stopped")]
    Relay(#[from] RelayError),
}

/// Runs until `shutdown` is set (or the relay fails), then drains and returns its summary.
pub fn run(config: &Config, shutdown: Arc<AtomicBool>) -> Result<Summary, DaemonError> {
    // Held for the run: dropping a source stops it.
    let (running, whitelist) = source::start(&config.whitelist, config.bridge.max_envs)?;
    if let (WhitelistSource::Snapshot(shared), Some(status)) = (&whitelist, running.status()) {
        if !status.loaded() {
            start_from_snapshot_log(config, shared, &status);
        }
    }
    let observers = Observers::new(config)?;
    let (snapshot, lookup) = match &whitelist {
        WhitelistSource::Snapshot(s) => (Some(s.clone()), None),
        WhitelistSource::Lookup { cache, .. } => (None, Some(cache.clone())),
    };
    let state = Arc::new(AdminState {
        metrics: observers.metrics.clone(),
        health: observers.health.clone(),
        shutdown: shutdown.clone(),
        snapshot,
        source: running.status(),
        lookup,
    });
    let _admin = match config.admin.listen.as_str() {
        "" => None,
        listen => {
            Some(Admin::start(listen, state).map_err(|source| DaemonError::Admin { addr: listen.to_owned(), source })?)
        }
    };
    let summary = relay::run_observed(config, whitelist, &shutdown, &observers);
    observers.tracer.shutdown();
    drop(running);
    Ok(summary?)
}

/// The Config Mapper did not answer at start: rather than decide everyone as production until
/// it does, start from the last snapshot an instance decided with (its entries still expire on
/// time). The poller replaces it with the Config Mapper's own as soon as one arrives.
fn start_from_snapshot_log(config: &Config, shared: &SharedSnapshot, status: &SourceStatus) {
    let empty = shared.load_full();
    let latest = DecisionReader::new(config).and_then(|r| r.latest_snapshot());
    match latest {
        Ok(Some(snapshot)) => {
            let (version, users) = (snapshot.version(), snapshot.len());
            let previous = shared.compare_and_swap(&empty, Arc::new(snapshot));
            if Arc::ptr_eq(&previous, &empty) {
                status.version.store(version, Relaxed);
                status.users.store(users, Relaxed);
                tracing::warn!(
                    version, users, topic = %config.bridge.snapshots_topic,
                    "Config Mapper unreachable at start: deciding with the last snapshot in the snapshot log until it answers"
                );
            }
        }
        Ok(None) => tracing::warn!(
            "Config Mapper unreachable at start and the snapshot log is empty: every event is production until it answers"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "Config Mapper unreachable at start and the snapshot log unreadable: every event is production until it answers")
        }
    }
}
