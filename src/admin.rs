//! The daemon's admin endpoint: `/metrics` (Prometheus text), `/livez`, `/readyz`.
//!
//! Ready means: an assignment from the consumer group received (an idle member with no
//! partitions is ready), no producer in a fatal state or without a broker up
//! (librdkafka statistics, every `statistics.interval.ms`), the whitelist loaded
//! (or its first load failed and the bridge is explicitly failing safe to production), and no
//! shutdown under way: `/readyz` turns 503 the moment a stop signal arrives, before the drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::background::Background;
use crate::metrics::Metrics;
use crate::relay::{Health, ProducerRole};
use crate::whitelist::lookup::LookupCache;
use crate::whitelist::{SharedSnapshot, SourceStatus};

/// What the endpoint reads.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub shutdown: Arc<AtomicBool>,
    /// The snapshot in use (snapshot mode) and, when polled from a Config Mapper, its status.
    pub snapshot: Option<SharedSnapshot>,
    pub source: Option<Arc<SourceStatus>>,
    /// Lookup mode's cache, whose request count and state are exported at scrape time.
    pub lookup: Option<Arc<LookupCache>>,
}

impl AdminState {
    /// Why the bridge is not ready; empty when it is.
    pub fn not_ready(&self) -> Vec<String> {
        let mut why: Vec<String> = Vec::new();
        if self.shutdown.load(Relaxed) {
            why.push("shutting down".into());
        }
        if !self.health.joined.load(Relaxed) {
            why.push("not yet assigned input partitions by the consumer group".into());
        }
        if self.health.producer_fatal.load(Relaxed) {
            why.push("a producer is in a fatal state".into());
        }
        if let Some(e) = self.health.forward_down() {
            why.push(format!("forward direction starting again after: {e}"));
        }
        // The Rush cluster is a test environment: its absence degrades, never unreadies.
        for p in ProducerRole::ALL.into_iter().filter(|p| *p != ProducerRole::Rush) {
            if self.health.unreachable(p) {
                why.push(format!("{}: no broker up", p.name()));
            }
        }
        if let Some(s) = &self.source {
            // The first refresh runs before the relay starts: success, or a counted failure
            // after which every event is production (failing safe) — either is a decision.
            if s.last_ok_ms.load(Relaxed) == 0 && s.refresh_errors.load(Relaxed) == 0 {
                why.push("whitelist not loaded yet".into());
            }
        }
        why
    }

    /// Brings the scrape-time gauges up to date.
    fn refresh_gauges(&self) {
        let m = &self.metrics;
        if let Some(s) = &self.snapshot {
            let snap = s.load();
            m.whitelist_version.set(snap.version() as i64);
            m.whitelist_entries.set(snap.len() as i64);
            m.envs_refused.set(snap.refused_envs().len() as i64);
        }
        if let Some(s) = &self.source {
            m.whitelist_staleness.set(s.staleness_seconds().unwrap_or(f64::INFINITY));
            catch_up(&m.whitelist_refresh_errors, s.refresh_errors.load(Relaxed));
        }
        if let Some(c) = &self.lookup {
            catch_up(&m.lookup_requests, c.requests.load(Relaxed));
            catch_up(&m.whitelist_refresh_errors, c.status.refresh_errors.load(Relaxed));
            m.lookup_degraded.set(i64::from(c.degraded()));
        }
        m.ready.set(i64::from(self.not_ready().is_empty()));
    }
}

/// Brings a counter exported from another component's own count up to it.
fn catch_up(counter: &prometheus::IntCounter, total: u64) {
    let exported = counter.get();
    if total > exported {
        counter.inc_by(total - exported);
    }
}

pub fn router(state: Arc<AdminState>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    s.refresh_gauges();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics::encode(&s.metrics.registry))
}

async fn readyz(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let why = s.not_ready();
    // The Rush cluster is a test environment: its absence is said, never a reason to unready.
    let degraded = s.health.rush_degraded();
    let rush = if degraded.is_empty() {
        String::new()
    } else {
        format!("; rush degraded (production unaffected, Rush copies wait in the outbox): {}", degraded.join("; "))
    };
    // Held partitions are production waiting on purpose (bounded): said, never a reason to
    // unready (a restart would not read their history either).
    let held = s.metrics.decision_history_held.get();
    let rush = if held > 0 {
        format!(
            "{rush}; holding {held} input partition(s) whose decision history cannot be read (bridge.decision_history_hold)"
        )
    } else {
        rush
    };
    if why.is_empty() {
        (StatusCode::OK, format!("ready{rush}\n"))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}{rush}\n", why.join("; ")))
    }
}

/// The endpoint on its own thread and runtime; stops when dropped.
pub struct Admin {
    pub addr: SocketAddr,
    _server: Background,
}

impl Admin {
    /// Binds `listen` now (a bad address or a port in use is a start-up error) and serves.
    pub fn start(listen: &str, state: Arc<AdminState>) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind(listen))?;
        let addr = listener.local_addr()?;
        let server = Background::spawn("admin-http", rt, move |shutdown| async move {
            if let Err(e) = axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await {
                tracing::error!(error = %e, "admin endpoint stopped");
            }
        })?;
        tracing::info!(%addr, "admin endpoint: /metrics /livez /readyz");
        Ok(Self { addr, _server: server })
    }
}
