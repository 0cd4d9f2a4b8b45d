//! Wires the relay's threads: the forward direction on the caller's thread, the Rush lane, the
//! Rush backlog probe and (if any route has one) the return path on their own. One [`Stop`]
//! stops them all: a signal, or any of them failing or panicking.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::error::RelayError;
use super::health::{Health, Summary};
use super::stop::Stop;
use super::{forward, return_path, rush_lane};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::telemetry::HopTracer;
use crate::whitelist::WhitelistSource;

/// How often the Rush backlog is measured (as often as librdkafka reports its statistics).
const RUSH_BACKLOG_INTERVAL: Duration = Duration::from_secs(5);
/// The forward direction's waits before it starts again, doubling up to the second.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run this long was healthy: the next fault waits the first back-off again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Runs until `shutdown` is set or an error stops it; then drains, commits, and returns what it did.
pub fn run(
    config: &Config,
    whitelist: impl Into<WhitelistSource>,
    shutdown: &AtomicBool,
) -> Result<Summary, RelayError> {
    let observers = Observers::new(config)?;
    let summary = run_observed(config, whitelist, shutdown, &observers);
    observers.tracer.shutdown();
    summary
}

/// Where a run reports: state, Prometheus metrics (every count), bridge-hop traces.
pub struct Observers {
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub tracer: Arc<HopTracer>,
}

impl Observers {
    pub fn new(config: &Config) -> Result<Self, RelayError> {
        Ok(Self {
            health: Arc::new(Health::default()),
            metrics: Arc::new(Metrics::new()?),
            tracer: Arc::new(HopTracer::new(&config.telemetry)?),
        })
    }
}

/// [`run`] exporting to `observers`. The forward direction runs on the caller's thread, the
/// return path (if any route has one) on another; either failing stops both.
pub fn run_observed(
    config: &Config,
    whitelist: impl Into<WhitelistSource>,
    shutdown: &AtomicBool,
    observers: &Observers,
) -> Result<Summary, RelayError> {
    let whitelist = whitelist.into();
    let (health, metrics, tracer) = (&observers.health, &observers.metrics, &observers.tracer);
    let inputs = crate::topics::ensure_prod(config)?;
    let sized;
    let config = match config.bridge.max_record_bytes {
        Some(_) => config,
        None => {
            let mut c = config.clone();
            c.bridge.max_record_bytes = crate::topic_settings::record_limit(inputs.values().map(|i| &i.settings));
            tracing::info!(max_record_bytes = ?c.bridge.max_record_bytes, "largest record the inputs accept");
            sized = c;
            &sized
        }
    };
    let stop = Stop::new(shutdown);
    let (forward, back) = std::thread::scope(|scope| {
        let stop = &stop;
        // The Rush lane never fails the bridge: it restarts itself. Only a panic stops the rest.
        let lane = std::thread::Builder::new().name("rush-lane".into()).spawn_scoped(scope, move || {
            let _stops_all = stop.on_panic();
            rush_lane::run(config, stop, health, metrics);
        });
        let probe = std::thread::Builder::new().name("rush-backlog".into()).spawn_scoped(scope, move || {
            rush_lane::backlog::run(config, stop, metrics, RUSH_BACKLOG_INTERVAL);
        });
        if lane.is_err() || probe.is_err() {
            stop.fail();
        }
        let back = config.routes.iter().any(|r| r.return_path).then(|| {
            std::thread::Builder::new().name("return-path".into()).spawn_scoped(scope, move || {
                // A panic must stop the forward direction too, not only an error.
                let _stops_all = stop.on_panic();
                let r = return_path::run(config, stop, health, metrics, tracer);
                if r.is_err() {
                    stop.fail();
                }
                r
            })
        });
        // A return path that cannot even start must not leave the bridge running without it.
        let forward = if matches!(back, Some(Err(_))) {
            Ok(())
        } else {
            // The scope joins the return path before a panic here unwinds past it: stop it.
            let _stops_all = stop.on_panic();
            run_forward(config, &whitelist, stop, observers)
        };
        if forward.is_err() {
            stop.fail();
        }
        let lane = match lane {
            Err(source) => Err(RelayError::Thread { what: "rush lane", source }),
            Ok(handle) => handle.join().map_err(|panic| {
                stop.fail();
                RelayError::Panicked { what: "rush lane", message: panic_message(panic.as_ref()) }
            }),
        };
        let back = match back {
            None => Ok(()),
            Some(Err(source)) => Err(RelayError::Thread { what: "return path", source }),
            Some(Ok(handle)) => handle.join().unwrap_or_else(|panic| {
                stop.fail();
                Err(RelayError::Panicked { what: "return path", message: panic_message(panic.as_ref()) })
            }),
        };
        (forward, back.and(lane))
    });
    let summary = Summary::read(metrics);
    tracing::info!(%summary, "relay stopped");
    forward?;
    back?;
    Ok(summary)
}

/// The forward direction, started again after a fault a restart cures ([`RelayError::curable`]:
/// a production broker frozen or restarted, a membership lost meanwhile): it drains, leaves its
/// group, waits and joins again, as a supervisor restarting the process would, without the
/// crash loop. Production outputs wait meanwhile, and `/readyz` says why. What a restart cannot
/// cure stops the bridge.
fn run_forward(
    config: &Config,
    whitelist: &WhitelistSource,
    stop: &Stop<'_>,
    observers: &Observers,
) -> Result<(), RelayError> {
    let (health, metrics) = (&observers.health, &observers.metrics);
    let mut backoff = FIRST_BACKOFF;
    let mut again = false;
    loop {
        let started = Instant::now();
        // A start after a fault checks the topics again: partitions added to an input meanwhile
        // are followed, an output deleted meanwhile is created again.
        let checked =
            if again { crate::topics::ensure_prod(config).map(drop).map_err(RelayError::from) } else { Ok(()) };
        again = true;
        let run = checked
            .and_then(|()| forward::run(config, whitelist.clone(), stop, health, metrics, observers.tracer.clone()));
        let error = match run {
            Err(e) if e.curable() && !stop.requested() => e,
            other => {
                health.set_forward_down(None);
                return other;
            }
        };
        metrics.forward_restarts.inc();
        health.set_forward_down(Some(error.to_string()));
        if started.elapsed() >= HEALTHY_RUN {
            backoff = FIRST_BACKOFF;
        }
        tracing::error!(
            error = %error, retry_in = ?backoff,
            "forward direction stopped on a fault a restart cures; it joins its group again (production outputs wait)"
        );
        stop.sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}
