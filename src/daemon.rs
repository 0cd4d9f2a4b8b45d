//! `tenancy-bridge run`: the whitelist source, the admin endpoint and the relay, wired together.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::admin::{Admin, AdminState};
use crate::config::Config;
use crate::metrics::{Metrics, MetricsError};
use crate::relay::{self, Observers, RelayError, Stats, Summary, WhitelistSource};
use crate::telemetry::{HopTracer, TelemetryError};
use crate::whitelist::source::{self, StartError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Whitelist(#[from] StartError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("admin.listen {addr}: {source}")]
    Admin { addr: String, source: std::io::Error },
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    #[error("relay stopped")]
    Relay(#[from] RelayError),
}

/// Runs until `shutdown` is set (or the relay fails), then drains and returns its summary.
pub fn run(config: &Config, shutdown: Arc<AtomicBool>) -> Result<Summary, DaemonError> {
    // Held for the run: dropping a source stops it.
    let (running, whitelist) = source::start(&config.whitelist)?;
    let metrics = Arc::new(Metrics::new()?);
    let stats = Arc::new(Stats::default());
    let tracer = Arc::new(HopTracer::new(&config.telemetry)?);
    let snapshot = match &whitelist {
        WhitelistSource::Snapshot(s) => Some(s.clone()),
        WhitelistSource::Lookup { .. } => None,
    };
    let state = Arc::new(AdminState {
        metrics: metrics.clone(),
        stats: stats.clone(),
        shutdown: shutdown.clone(),
        snapshot,
        source: running.status(),
    });
    let _admin = match config.admin.listen.as_str() {
        "" => None,
        listen => {
            Some(Admin::start(listen, state).map_err(|source| DaemonError::Admin { addr: listen.to_owned(), source })?)
        }
    };
    let observers = Observers { stats, metrics, tracer };
    let summary = relay::run_observed(config, whitelist, &shutdown, &observers);
    observers.tracer.shutdown();
    drop(running);
    Ok(summary?)
}
