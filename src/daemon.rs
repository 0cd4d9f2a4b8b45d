//! `tenancy-bridge run`: the whitelist source, the admin endpoint and the relay, wired together.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::admin::{Admin, AdminState};
use crate::config::Config;
use crate::relay::{self, Observers, RelayError, Summary, WhitelistSource};
use crate::whitelist::source::{self, StartError};

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
    let (running, whitelist) = source::start(&config.whitelist)?;
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
