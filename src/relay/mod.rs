//! The relay: consume route topics on prod, decide each record once, write one output per
//! service to prod or Rush, commit an input offset only when all its outputs (and those of
//! every earlier record of its partition) are acknowledged.
//!
//! Threads: the caller's thread polls the consumer (rebalance callbacks run there too); each
//! producer has its own poll thread for delivery reports. Nothing here is async.

mod consumer;
pub mod offsets;
mod parking;
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
use crate::whitelist::lookup::LookupCache;
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

/// Where decisions read the whitelist from.
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

/// How many records are handled per whitelist snapshot load and clock read.
const BATCH: usize = 512;
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
const LOOKUP_POLL_TIMEOUT: Duration = Duration::from_millis(5);

/// Runs until `shutdown` is set or an error stops it; then drains, commits, and returns what it did.
pub fn run(
    config: &Config,
    whitelist: impl Into<WhitelistSource>,
    shutdown: &AtomicBool,
) -> Result<Summary, RelayError> {
    run_with(config, whitelist, shutdown, Arc::new(Stats::default()))
}

/// [`run`] with counters the caller can read while it runs.
pub fn run_with(
    config: &Config,
    whitelist: impl Into<WhitelistSource>,
    shutdown: &AtomicBool,
    stats: Arc<Stats>,
) -> Result<Summary, RelayError> {
    let whitelist = whitelist.into();
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
    let revoked = match whitelist {
        WhitelistSource::Lookup { .. } => Some(Arc::new(std::sync::Mutex::new(Vec::new()))),
        WhitelistSource::Snapshot(_) => None,
    };
    let context = RebalanceContext {
        tracker: tracker.clone(),
        producers: producers.clone(),
        route_topics: route_topics.clone(),
        drain_timeout: config.bridge.drain_timeout,
        stats: stats.clone(),
        revoked: revoked.clone(),
    };
    let consumer: BaseConsumer<RebalanceContext> = kafka::consumer_config(config)
        .create_with_context(context)
        .map_err(|source| RelayError::Client { what: "consumer", source })?;
    let topics: Vec<&str> = route_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(|source| RelayError::Client { what: "subscription", source })?;
    tracing::info!(routes = topics.len(), group = %config.bridge.group_id, "relay started");

    let mut pipeline = Pipeline::new(config, producers.clone(), tracker.clone(), stats.clone());
    let mut source = match whitelist {
        WhitelistSource::Snapshot(s) => Source::Snapshot(s),
        WhitelistSource::Lookup { cache, workers } => {
            Source::Lookup(parking::Parking::new(cache, workers, revoked.unwrap_or_default()).map_err(|e| {
                RelayError::Client { what: "lookup workers", source: KafkaError::ClientCreation(e.to_string()) }
            })?)
        }
    };
    let result = poll_loop(config, &consumer, &mut pipeline, &tracker, &stats, &mut source, shutdown);

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

enum Source {
    Snapshot(SharedSnapshot),
    Lookup(parking::Parking),
}

fn poll_loop(
    config: &Config,
    consumer: &BaseConsumer<RebalanceContext>,
    pipeline: &mut Pipeline,
    tracker: &Tracker,
    stats: &Stats,
    source: &mut Source,
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
                set_paused(consumer, true, pipeline, source);
                paused = true;
            }
            tracker.wait_below(max_in_flight, POLL_TIMEOUT);
        } else if paused && in_flight <= max_in_flight / 2 {
            set_paused(consumer, false, pipeline, source);
            paused = false;
        }

        let snapshot = match &*source {
            Source::Snapshot(s) => Some(s.load_full()),
            Source::Lookup(_) => None,
        };
        let now = now_ms();
        // Parked records wait for lookups: poll briefly so their answers are picked up soon.
        let first_timeout = match &*source {
            Source::Lookup(p) if p.has_parked() => LOOKUP_POLL_TIMEOUT,
            _ => POLL_TIMEOUT,
        };
        // While paused, one zero-timeout poll serves callbacks; a record still returned was
        // fetched before the pause and is handled in order.
        for n in 0..budget.max(1) {
            let timeout = if n == 0 && !paused { first_timeout } else { Duration::ZERO };
            match consumer.poll(timeout) {
                None => break,
                Some(Ok(msg)) => match (&mut *source, &snapshot) {
                    (Source::Lookup(p), _) => p.offer(&msg, pipeline, consumer, now)?,
                    (Source::Snapshot(_), Some(s)) => pipeline.process(&msg, &**s, now)?,
                    (Source::Snapshot(_), None) => {}
                },
                Some(Err(e)) => match classify(&e) {
                    ErrorClass::Retry => {
                        tracing::warn!(error = %e, "consumer error, retrying");
                        break;
                    }
                    class => return Err(RelayError::Consume { class, source: e }),
                },
            }
        }
        if let Source::Lookup(p) = &mut *source {
            p.drain(pipeline, consumer, now)?;
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

/// Pauses or resumes the whole assignment; a resume leaves partitions parked for a lookup paused.
fn set_paused(consumer: &BaseConsumer<RebalanceContext>, pause: bool, pipeline: &Pipeline, source: &Source) {
    let result = consumer.assignment().and_then(|a| {
        if pause {
            return consumer.pause(&a);
        }
        let parked: Vec<(usize, i32)> = match source {
            Source::Lookup(p) => p.parked_partitions().collect(),
            Source::Snapshot(_) => Vec::new(),
        };
        let mut tpl = rdkafka::TopicPartitionList::new();
        for e in a.elements() {
            let is_parked = pipeline.route_index(e.topic()).is_some_and(|r| parked.contains(&(r, e.partition())));
            if !is_parked {
                tpl.add_partition(e.topic(), e.partition());
            }
        }
        consumer.resume(&tpl)
    });
    match result {
        Ok(()) => tracing::debug!(pause, "backpressure"),
        Err(e) => tracing::warn!(error = %e, pause, "cannot change pause state"),
    }
}
