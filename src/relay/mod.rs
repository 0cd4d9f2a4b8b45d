//! The relay: consume route topics on prod, decide each record once, write one output per
//! service to prod or (through the prod outbox and the Rush lane) to Rush, commit an input
//! offset only when all its writes on prod (and those of every earlier record of its
//! partition) are acknowledged. Nothing the forward direction waits for is on Rush.
//!
//! The Rush lane ([`rush_lane`]) carries outbox records to Rush on its own thread and restarts
//! itself on Rush-side errors. With `return_path` routes, a third loop consumes their raw topics
//! on Rush and forwards them to prod ([`return_path`]).
//!
//! Threads: the caller's thread polls the prod consumer (rebalance callbacks run there too),
//! one thread each the Rush lane and the return path; each producer has its own poll thread
//! for delivery reports. Nothing here is async.

mod consumer;
mod dead_letter;
pub mod decisions;
mod error;
mod forward;
mod headers;
mod health;
pub mod offsets;
mod parking;
mod partition_transactions;
mod pinned;
pub mod pipeline;
mod poll;
mod producer;
pub mod return_path;
mod rush_backlog;
mod rush_lane;
pub mod topics;
mod transaction;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use error::RelayError;
pub use headers::{OUTBOX_INPUT_OFFSET, OUTBOX_OUTPUT, Provenance, dead_letter as dead_letter_headers};
pub use health::{Direction, Health, ProducerRole, Summary};
pub use offsets::Tracker;
pub use pipeline::ProduceError;

use crate::config::{Config, Delivery};
use crate::kafka;
use crate::metrics::Metrics;
use crate::telemetry::HopTracer;

/// How often the Rush backlog is measured (as often as librdkafka reports its statistics).
const RUSH_BACKLOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
pub use crate::whitelist::WhitelistSource;
use consumer::RebalanceContext;
use forward::{Forward, Source};
use pipeline::Pipeline;
use return_path::ReturnPath;

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

/// [`run_with`] exporting to `metrics`. The forward direction runs on the caller's thread, the
/// return path (if any route has one) on another; either failing stops both.
pub fn run_observed(
    config: &Config,
    whitelist: impl Into<WhitelistSource>,
    shutdown: &AtomicBool,
    observers: &Observers,
) -> Result<Summary, RelayError> {
    let whitelist = whitelist.into();
    let (health, metrics, tracer) = (&observers.health, &observers.metrics, &observers.tracer);
    let inputs = topics::ensure_prod(config)?;
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
    let failed = AtomicBool::new(false);
    let stop = || shutdown.load(Ordering::Relaxed) || failed.load(Ordering::Relaxed);
    let (forward, back) = std::thread::scope(|scope| {
        // The Rush lane never fails the bridge: it restarts itself. Only a panic stops the rest.
        let lane = {
            let health = health.clone();
            let (stop, failed) = (&stop, &failed);
            std::thread::Builder::new().name("rush-lane".into()).spawn_scoped(scope, move || {
                let _stops_both = StopOnPanic(failed);
                rush_lane::run(config, stop, &health, metrics);
            })
        };
        let probe = {
            let stop = &stop;
            std::thread::Builder::new().name("rush-backlog".into()).spawn_scoped(scope, move || {
                rush_backlog::run(config, stop, metrics, RUSH_BACKLOG_INTERVAL);
            })
        };
        if lane.is_err() || probe.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        let back = config.routes.iter().any(|r| r.return_path).then(|| {
            let health = health.clone();
            let (stop, failed) = (&stop, &failed);
            std::thread::Builder::new().name("return-path".into()).spawn_scoped(scope, move || {
                // A panic must stop the forward direction too, not only an error.
                let _stops_both = StopOnPanic(failed);
                let r = run_return_path_restarting(config, stop, health, metrics, tracer.clone());
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                r
            })
        });
        // A return path that cannot even start must not leave the bridge running without it.
        let forward = if matches!(back, Some(Err(_))) {
            Ok(())
        } else {
            // The scope joins the return path before a panic here unwinds past it: stop it.
            let _stops_both = StopOnPanic(&failed);
            run_forward(config, whitelist, &stop, health.clone(), metrics, tracer.clone())
        };
        if forward.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        let lane = match lane {
            Err(source) => Err(RelayError::Thread { what: "rush lane", source }),
            Ok(handle) => handle.join().map_err(|panic| {
                failed.store(true, Ordering::Relaxed);
                RelayError::Panicked { what: "rush lane", message: panic_message(panic.as_ref()) }
            }),
        };
        let back = match back {
            None => Ok(()),
            Some(Err(source)) => Err(RelayError::Thread { what: "return path", source }),
            Some(Ok(handle)) => handle.join().unwrap_or_else(|panic| {
                failed.store(true, Ordering::Relaxed);
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

/// The forward direction: prod route topics → per-service outputs on prod or Rush.
fn run_forward(
    config: &Config,
    whitelist: WhitelistSource,
    stop: &dyn Fn() -> bool,
    health: Arc<Health>,
    metrics: &Arc<Metrics>,
    tracer: Arc<HopTracer>,
) -> Result<(), RelayError> {
    let tracker = Arc::new(Tracker::new());
    let mut context = producer::delivery_context(config, ProducerRole::Prod, &tracker, &health, metrics);
    let rewrites = config.bridge.delivery == Delivery::ExactlyOnce;
    let refusals = Arc::new(dead_letter::Refusals::new(&config.bridge.dead_letter_topic, rewrites));
    context = context.with_refusals(refusals.clone());
    let producers = Arc::new(
        producer::output_producer_with(config, ProducerRole::Prod, context)
            .map_err(|source| RelayError::Client { what: "prod producer", source })?,
    );
    let mut consumer_config = kafka::consumer_config(&config.prod, "prod", &config.bridge.group_id);
    kafka::fit_records(&mut consumer_config, config);
    let transactions = match config.bridge.delivery {
        Delivery::AtLeastOnce => None,
        Delivery::ExactlyOnce => Some(Arc::new(transaction::Transactions::init(
            producers.clone(),
            config.bridge.transactional_id(),
            config.bridge.transaction_timeout,
            kafka::session_timeout(&consumer_config),
            metrics,
            stop,
        )?)),
    };
    let route_topics: Vec<String> = config.routes.iter().map(|r| r.topic.clone()).collect();
    // Both sources keep state per partition that a revocation ends.
    let revoked = Arc::new(consumer::Revoked::default());
    let context = RebalanceContext {
        tracker: tracker.clone(),
        producers: producers.clone(),
        route_topics: route_topics.clone(),
        drain_timeout: config.bridge.drain_timeout,
        health: health.clone(),
        metrics: metrics.clone(),
        direction: Direction::Forward,
        revoked: Some(revoked.clone()),
        transactions,
        partition_transactions: None,
        refusals: rewrites.then(|| refusals.clone()),
    };
    let consumer = subscribe(consumer_config, context, &route_topics)?;
    tracing::info!(routes = route_topics.len(), group = %config.bridge.group_id, "relay started");

    let pipeline =
        Pipeline::new(config, producers.clone(), tracker.clone(), metrics, tracer).with_refusals(Some(refusals));
    let source = match whitelist {
        WhitelistSource::Snapshot(s) => {
            let log = decisions::DecisionLog::new(config, metrics)?;
            Source::Pinned(Box::new(pinned::Pinned::new(s, log, revoked, metrics, crate::whitelist::now_ms())))
        }
        WhitelistSource::Lookup { cache, workers } => Source::Lookup(Box::new(
            parking::Parking::new(
                cache,
                workers,
                parking::HoldLimits { records: config.bridge.max_in_flight, bytes: config.bridge.max_in_flight_bytes },
                metrics,
                revoked,
            )
            .map_err(|source| RelayError::Thread { what: "lookup workers", source })?,
        )),
    };
    let mut handler = Forward::new(pipeline, source);
    let limits = poll::Limits::new(config, &health, metrics, Direction::Forward);
    let result = poll::run(&consumer, &tracker, &limits, &mut handler, stop);
    finish(config, &consumer, &*producers, &tracker, &route_topics, result)
}

/// Exactly-once, the return path starts again from its progress on prod after an aborted
/// transaction (a write that failed, a pause, a takeover); any other error stops the bridge.
fn run_return_path_restarting(
    config: &Config,
    stop: &dyn Fn() -> bool,
    health: Arc<Health>,
    metrics: &Arc<Metrics>,
    tracer: Arc<HopTracer>,
) -> Result<(), RelayError> {
    // Outlives each run: exactly-once books a refused write, and the next run dead-letters it.
    let rewrites = config.bridge.delivery == Delivery::ExactlyOnce;
    let refusals = Arc::new(dead_letter::Refusals::new(&config.bridge.dead_letter_topic, rewrites));
    loop {
        match run_return_path(config, stop, health.clone(), metrics, tracer.clone(), &refusals) {
            Err(e @ (RelayError::Transaction(_) | RelayError::Delivery { .. }))
                if config.bridge.delivery == Delivery::ExactlyOnce && !stop() =>
            {
                metrics.return_path_restarts.inc();
                tracing::warn!(error = %e, "return path transactions aborted; starting again from its progress on prod");
                let until = std::time::Instant::now() + RETURN_PATH_BACKOFF;
                while !stop() && std::time::Instant::now() < until {
                    std::thread::sleep(poll::POLL_TIMEOUT);
                }
            }
            r => return r,
        }
    }
}

const RETURN_PATH_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

/// The return path: Rush raw topics of return routes → the same topics on prod.
fn run_return_path(
    config: &Config,
    stop: &dyn Fn() -> bool,
    health: Arc<Health>,
    metrics: &Arc<Metrics>,
    tracer: Arc<HopTracer>,
    refusals: &Arc<dead_letter::Refusals>,
) -> Result<(), RelayError> {
    let topics: Vec<String> = config.routes.iter().filter(|r| r.return_path).map(|r| r.topic.clone()).collect();
    // The Rush lane creates the raw topics on Rush; subscribing before they exist would leave
    // the consumer waiting for a metadata refresh (minutes) after they appear.
    while !health.rush_topics_ready.load(Ordering::Relaxed) {
        if stop() {
            return Ok(());
        }
        std::thread::sleep(poll::POLL_TIMEOUT);
    }
    let tracker = Arc::new(Tracker::new());
    let mut consumer_config = kafka::consumer_config(&config.rush, "rush", &config.bridge.group_id);
    kafka::fit_records(&mut consumer_config, config);
    // Exactly-once: prod writes commit on prod with the Rush offsets they consumed, stored on
    // prod in the group `{group_id}.return`.
    let direction = partition_transactions::Direction {
        role: ProducerRole::Return,
        topics: &topics,
        target: &config.prod,
        progress_group: config.bridge.return_progress_group(),
        session_timeout: kafka::session_timeout(&consumer_config),
        name: "return",
        refusals: Some(refusals.clone()),
    };
    let writer = partition_transactions::writer(config, direction, &tracker, &health, metrics)?;
    let context = RebalanceContext {
        tracker: tracker.clone(),
        producers: writer.flush(),
        route_topics: topics.clone(),
        drain_timeout: config.bridge.drain_timeout,
        health: health.clone(),
        metrics: metrics.clone(),
        direction: Direction::Return,
        revoked: None,
        transactions: None,
        partition_transactions: writer.transactions(),
        refusals: refusals.rewrites.then(|| refusals.clone()),
    };
    let consumer = subscribe(consumer_config, context, &topics)?;
    tracing::info!(topics = ?topics, group = %config.bridge.group_id, "return path started");
    let flush = writer.flush();
    let mut handler = ReturnPath::new(config, writer, tracker.clone(), metrics, tracer, refusals.clone());
    let limits = poll::Limits::new(config, &health, metrics, Direction::Return);
    let result = poll::run(&consumer, &tracker, &limits, &mut handler, stop);
    finish(config, &consumer, &*flush, &tracker, &topics, result)
}

fn subscribe(
    client: rdkafka::ClientConfig,
    context: RebalanceContext,
    topics: &[String],
) -> Result<BaseConsumer<RebalanceContext>, RelayError> {
    let consumer: BaseConsumer<RebalanceContext> =
        client.create_with_context(context).map_err(|source| RelayError::Client { what: "consumer", source })?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names).map_err(|source| RelayError::Client { what: "subscription", source })?;
    Ok(consumer)
}

/// Drain: whatever was enqueued gets its chance to be acknowledged, then everything done is
/// committed. A failure in the loop still commits the safe prefix before it.
fn finish(
    config: &Config,
    consumer: &BaseConsumer<RebalanceContext>,
    producers: &dyn producer::Flush,
    tracker: &Tracker,
    topics: &[String],
    result: Result<(), RelayError>,
) -> Result<(), RelayError> {
    let drained = producers.drain(config.bridge.drain_timeout);
    if let Err(e) = consumer.context().commit(consumer, None, CommitMode::Sync) {
        tracing::error!(error = %e, "final commit failed; uncommitted records will be replayed on restart");
    }
    let pending = tracker.in_flight();
    consumer.unsubscribe();
    result?;
    if let Some(e) = consumer.context().transactions.as_ref().and_then(|t| t.fatal()) {
        return Err(e.into());
    }
    if let Some(f) = tracker.failure() {
        return Err(delivery_error(topics, f));
    }
    if drained.is_err() && pending > 0 {
        return Err(RelayError::DrainTimeout { pending });
    }
    Ok(())
}

/// Sets the shared failure flag when the thread holding it unwinds.
struct StopOnPanic<'a>(&'a AtomicBool);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

fn delivery_error(route_topics: &[String], f: offsets::Failure) -> RelayError {
    RelayError::Delivery {
        topic: route_topics.get(f.key.0).cloned().unwrap_or_default(),
        partition: f.key.1,
        offset: f.offset,
        reason: f.reason,
    }
}
