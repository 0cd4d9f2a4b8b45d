//! The relay: consume route topics on prod, decide each record once, write one output per
//! service to prod or Rush, commit an input offset only when all its outputs (and those of
//! every earlier record of its partition) are acknowledged.
//!
//! Threads: the caller's thread polls the consumer (rebalance callbacks run there too); each
//! producer has its own poll thread for delivery reports. Nothing here is async.

mod consumer;
pub mod offsets;
pub mod pipeline;
mod producer;
mod stats;
pub mod topics;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;

pub use offsets::Tracker;
pub use pipeline::ProduceError;
pub use stats::{Stats, Summary};

use crate::config::Config;
use crate::kafka::{self, ErrorClass, classify};
use crate::whitelist::{SharedSnapshot, now_ms};
use consumer::RebalanceContext;
use pipeline::Pipeline;
use producer::Producers;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Topics(#[from] topics::TopicError),
    #[error("cannot create the {what}: {source}")]
    Client { what: &'static str, source: KafkaError },
    #[error("consumer: {source} ({} error)", class.as_str())]
    Consume { class: ErrorClass, source: KafkaError },
    #[error(transparent)]
    Produce(#[from] Box<ProduceError>),
    #[error("output of {topic}[{partition}]@{offset} failed: {reason}; offsets from there on were not committed")]
    Delivery { topic: String, partition: i32, offset: i64, reason: String },
    #[error("{pending} records still unacknowledged after the drain timeout; they will be replayed on restart")]
    DrainTimeout { pending: usize },
}

/// How many records are handled per whitelist snapshot load and clock read.
const BATCH: usize = 512;
const POLL_TIMEOUT: Duration = Duration::from_millis(100);

/// Runs until `shutdown` is set or an error stops it; then drains, commits, and returns what it did.
pub fn run(config: &Config, whitelist: SharedSnapshot, shutdown: &AtomicBool) -> Result<Summary, RelayError> {
    run_with(config, whitelist, shutdown, Arc::new(Stats::default()))
}

/// [`run`] with counters the caller can read while it runs.
pub fn run_with(
    config: &Config,
    whitelist: SharedSnapshot,
    shutdown: &AtomicBool,
    stats: Arc<Stats>,
) -> Result<Summary, RelayError> {
    topics::ensure_outputs(config)?;
    let tracker = Arc::new(Tracker::new());
    let producers = Arc::new(
        Producers::create(
            &kafka::producer_config(&config.prod, "prod", config),
            &kafka::producer_config(&config.rush, "rush", config),
            &tracker,
            &stats,
        )
        .map_err(|source| RelayError::Client { what: "producers", source })?,
    );
    let route_topics: Vec<String> = config.routes.iter().map(|r| r.topic.clone()).collect();
    let context = RebalanceContext {
        tracker: tracker.clone(),
        producers: producers.clone(),
        route_topics: route_topics.clone(),
        drain_timeout: config.bridge.drain_timeout,
        stats: stats.clone(),
    };
    let consumer: BaseConsumer<RebalanceContext> = kafka::consumer_config(config)
        .create_with_context(context)
        .map_err(|source| RelayError::Client { what: "consumer", source })?;
    let topics: Vec<&str> = route_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(|source| RelayError::Client { what: "subscription", source })?;
    tracing::info!(routes = topics.len(), group = %config.bridge.group_id, "relay started");

    let mut pipeline = Pipeline::new(config, producers.clone(), tracker.clone(), stats.clone());
    let result = poll_loop(config, &consumer, &mut pipeline, &tracker, &stats, &whitelist, shutdown);

    // Drain: whatever was enqueued gets its chance to be acknowledged, then everything done is
    // committed. A failure above still commits the safe prefix before it.
    let drained = producers.flush(config.bridge.drain_timeout);
    if let Err(e) = consumer.context().commit(&consumer, None, CommitMode::Sync) {
        tracing::error!(error = %e, "final commit failed; uncommitted records will be replayed on restart");
    }
    let pending = tracker.in_flight();
    consumer.unsubscribe();
    let summary = stats.summary();
    tracing::info!(%summary, "relay stopped");
    result?;
    if let Some(f) = tracker.failure() {
        return Err(delivery_error(&route_topics, f));
    }
    if drained.is_err() && pending > 0 {
        return Err(RelayError::DrainTimeout { pending });
    }
    Ok(summary)
}

fn delivery_error(route_topics: &[String], f: offsets::Failure) -> RelayError {
    RelayError::Delivery {
        topic: route_topics.get(f.key.0).cloned().unwrap_or_default(),
        partition: f.key.1,
        offset: f.offset,
        reason: f.reason,
    }
}

fn poll_loop(
    config: &Config,
    consumer: &BaseConsumer<RebalanceContext>,
    pipeline: &mut Pipeline,
    tracker: &Tracker,
    stats: &Stats,
    whitelist: &SharedSnapshot,
    shutdown: &AtomicBool,
) -> Result<(), RelayError> {
    let max_in_flight = config.bridge.max_in_flight;
    let mut last_commit = Instant::now();
    let mut paused = false;
    while !shutdown.load(Ordering::Relaxed) {
        if tracker.failure().is_some() {
            // Reported by the caller after the drain.
            return Ok(());
        }
        // Backpressure: a slow cluster must not grow memory. Pausing keeps the group
        // membership alive (poll still runs, serving rebalances) while nothing new is fetched.
        let in_flight = tracker.in_flight();
        let budget = max_in_flight.saturating_sub(in_flight).min(BATCH);
        if budget == 0 {
            if !paused {
                set_paused(consumer, true);
                paused = true;
            }
            tracker.wait_below(max_in_flight, POLL_TIMEOUT);
        } else if paused && in_flight <= max_in_flight / 2 {
            set_paused(consumer, false);
            paused = false;
        }

        let snapshot = whitelist.load();
        let now = now_ms();
        // While paused, one zero-timeout poll serves callbacks; a record still returned was
        // fetched before the pause and is handled in order.
        for n in 0..budget.max(1) {
            let timeout = if n == 0 && !paused { POLL_TIMEOUT } else { Duration::ZERO };
            match consumer.poll(timeout) {
                None => break,
                Some(Ok(msg)) => pipeline.process(&msg, &snapshot, now)?,
                Some(Err(e)) => match classify(&e) {
                    ErrorClass::Retry => {
                        tracing::warn!(error = %e, "consumer error, retrying");
                        break;
                    }
                    class => return Err(RelayError::Consume { class, source: e }),
                },
            }
        }
        stats.in_flight_peak.fetch_max(tracker.in_flight(), Ordering::Relaxed);

        if last_commit.elapsed() >= config.bridge.commit_interval {
            last_commit = Instant::now();
            if let Err(e) = consumer.context().commit(consumer, None, CommitMode::Async) {
                tracing::warn!(error = %e, "commit failed; will retry");
            }
        }
    }
    Ok(())
}

fn set_paused(consumer: &BaseConsumer<RebalanceContext>, pause: bool) {
    let result = consumer.assignment().and_then(|a| if pause { consumer.pause(&a) } else { consumer.resume(&a) });
    match result {
        Ok(()) => tracing::debug!(pause, "backpressure"),
        Err(e) => tracing::warn!(error = %e, pause, "cannot change pause state"),
    }
}
