//! The poll loop both directions share: bounded in flight (wait at the bound, pause when it
//! lasts, resume below half), one batch per whitelist load, periodic commits of what is fully
//! acknowledged.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::BorrowedMessage;

use super::rebalance::RebalanceContext;
use crate::kafka::{ErrorClass, classify};
use crate::relay::commit::CommitError;
use crate::relay::error::RelayError;
use crate::relay::health::{Direction, Health};
use crate::relay::offsets::{Load, Tracker};
use crate::relay::stop::Stop;

/// How many records are handled per batch (one whitelist snapshot load and clock read).
pub const BATCH: usize = 512;
pub const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How long the load may stay at the in-flight bound before the partitions are paused.
const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// Whether `load` is below `limit` in records and in bytes.
fn below(load: Load, limit: Load) -> bool {
    load.records < limit.records && load.bytes < limit.bytes
}

/// What a direction does with the records the loop polls.
pub trait Handler {
    /// Once per batch, before its records.
    fn begin_batch(&mut self) -> Result<(), RelayError> {
        Ok(())
    }
    /// How long the first poll of a batch may wait.
    fn poll_timeout(&self) -> Duration {
        POLL_TIMEOUT
    }
    fn handle(
        &mut self,
        msg: &BorrowedMessage<'_>,
        consumer: &BaseConsumer<RebalanceContext>,
    ) -> Result<(), RelayError>;
    /// Once per batch, after its records.
    fn end_batch(&mut self, _consumer: &BaseConsumer<RebalanceContext>) -> Result<(), RelayError> {
        Ok(())
    }
    /// A partition a backpressure resume must leave paused (it waits for something else).
    fn held(&self, _topic: &str, _partition: i32) -> bool {
        false
    }
}

pub struct Limits<'a> {
    pub max_in_flight: Load,
    pub commit_interval: Duration,
    pub in_flight_peak: &'a AtomicUsize,
    pub in_flight_bytes_peak: &'a AtomicUsize,
    pub uncommitted: prometheus::IntGauge,
    pub consumer_errors: prometheus::IntCounter,
    pub backpressure_pauses: prometheus::IntCounter,
    pub commit_failures: prometheus::IntCounter,
    /// The return path subscribes to Rush topics a rebuilt Rush cluster may not have yet.
    pub unknown_topic_is_transient: bool,
}

impl<'a> Limits<'a> {
    /// The bounds of `config` and the metric handles of one direction (`forward`, `return`).
    pub fn new(
        config: &crate::config::Config,
        health: &'a Health,
        metrics: &crate::metrics::Metrics,
        direction: Direction,
    ) -> Self {
        let label = direction.as_str();
        Self {
            max_in_flight: Load { records: config.bridge.max_in_flight, bytes: config.bridge.max_in_flight_bytes },
            // Exactly-once commits each direction's transactions at their own pace.
            commit_interval: match config.bridge.delivery {
                crate::config::Delivery::ExactlyOnce => config.bridge.transaction_interval,
                crate::config::Delivery::AtLeastOnce => config.bridge.commit_interval,
            },
            in_flight_peak: &health.in_flight_peak,
            in_flight_bytes_peak: &health.in_flight_bytes_peak,
            uncommitted: metrics.uncommitted.with_label_values(&[label]),
            consumer_errors: metrics.consumer_errors.with_label_values(&[label]),
            backpressure_pauses: metrics.backpressure_pauses.with_label_values(&[label]),
            commit_failures: metrics.commit_failures.with_label_values(&[direction.as_str()]),
            unknown_topic_is_transient: direction == Direction::Return,
        }
    }
}

/// Runs until `stop` says so or a record cannot be handled. A delivery failure ends the loop
/// quietly: the caller reports it after the drain.
pub fn run<H: Handler>(
    consumer: &BaseConsumer<RebalanceContext>,
    tracker: &Tracker,
    limits: &Limits<'_>,
    handler: &mut H,
    stop: &Stop<'_>,
) -> Result<(), RelayError> {
    let max_in_flight = limits.max_in_flight;
    let mut last_commit = Instant::now();
    let mut paused = false;
    let mut at_bound_since: Option<Instant> = None;
    let resume_mark = Load { records: max_in_flight.records / 2 + 1, bytes: max_in_flight.bytes / 2 + 1 };
    // Below the bound by a batch (or a sixteenth of the bytes), so a wait at the bound ends
    // with a batch to read, not with one record per acknowledgement.
    let refill_mark = Load {
        records: max_in_flight.records - BATCH.min(max_in_flight.records / 2),
        bytes: max_in_flight.bytes - max_in_flight.bytes / 16,
    };
    let context = consumer.context();
    while !stop.requested() {
        if let Some(f) = tracker.failure() {
            // Exactly-once undoes a transaction whose write failed for a passing reason and
            // reads it again; anything else stops the relay, which reports it.
            if context.commit.transaction().is_none() || f.class != ErrorClass::Retry {
                return Ok(());
            }
            commit(consumer, limits)?;
            std::thread::sleep(REWRITE_BACKOFF);
        }
        if !context.membership_proven(consumer) {
            // Possibly replaced while paused: serve callbacks (the revocation comes through
            // here) and write nothing; what is polled meanwhile is read again after the rewind.
            let _ = consumer.poll(POLL_TIMEOUT);
            continue;
        }
        context.rewind_if_aborted(consumer).map_err(|source| RelayError::Rewind { source })?;
        if let Some(t) = context.commit.transaction() {
            t.begin()?;
        }
        // Backpressure: what is in flight stays bounded. At the bound the loop first only waits
        // for acknowledgements, as a plain copy loop waits on a full producer queue; it pauses the
        // partitions only when the load stays at the bound for PAUSE_AFTER (a stalled cluster),
        // because librdkafka drops what it prefetched for a paused partition and fetches it
        // again on resume. Pausing keeps the group membership alive (poll still runs, serving
        // rebalances) while nothing new is fetched.
        let mut load = tracker.load();
        if paused {
            if below(load, resume_mark) {
                set_paused(consumer, false, handler);
                paused = false;
            } else {
                // Still draining towards the resume mark: wait for acknowledgements, do not spin.
                load = tracker.wait_below(resume_mark, POLL_TIMEOUT);
            }
        } else if !below(load, max_in_flight) {
            let since = *at_bound_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= PAUSE_AFTER {
                set_paused(consumer, true, handler);
                paused = true;
                limits.backpressure_pauses.inc();
                tracing::info!(
                    records = load.records,
                    bytes = load.bytes,
                    "in flight at its bound for {PAUSE_AFTER:?}: consumer paused until half of it is acknowledged"
                );
            } else {
                load = tracker.wait_below(refill_mark, POLL_TIMEOUT);
            }
        }
        let budget = if paused || !below(load, max_in_flight) {
            0
        } else {
            at_bound_since = None;
            (max_in_flight.records - load.records).min(BATCH)
        };

        // A process frozen at the bound (or in the wait above) must not write anything, pins
        // included, before it knows it still owns its partitions: the loop goes round, and the
        // membership check above makes it rejoin first.
        if let Some(t) = context.commit.transaction()
            && t.abort_if_stale()?
        {
            continue;
        }
        handler.begin_batch()?;
        // A wait for records must not hold back a commit that is due: under exactly-once the
        // commit is what makes outputs visible.
        let first_timeout = handler.poll_timeout().min(limits.commit_interval.saturating_sub(last_commit.elapsed()));
        // While paused, one zero-timeout poll serves callbacks (a record it returns was fetched
        // before the pause and is handled in order). At the bound but not paused, nothing is
        // polled: callbacks wait at most PAUSE_AFTER, and the bound holds to the record.
        // The byte bound holds within a batch too: a burst of large records ends it early.
        let polls = if budget > 0 { budget } else { usize::from(paused) };
        for n in 0..polls {
            let timeout = if n == 0 && budget > 0 { first_timeout } else { Duration::ZERO };
            match consumer.poll(timeout) {
                None => break,
                // An abort during this poll (a revocation) left this record to be read again.
                Some(Ok(_)) if context.rewind_pending() => break,
                Some(Ok(msg)) => {
                    if let Some(t) = context.commit.transaction() {
                        // The first poll of a batch may have waited through a pause of the
                        // process: what it returned is read again after the abort.
                        if n == 0 && t.abort_if_stale()? {
                            break;
                        }
                        // A revocation during this poll may have committed the transaction.
                        t.begin()?;
                    }
                    handler.handle(&msg, consumer)?;
                    if tracker.bytes_in_flight() >= max_in_flight.bytes {
                        break;
                    }
                }
                Some(Err(e)) => match classify(&e) {
                    _ if limits.unknown_topic_is_transient
                        && e.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition) =>
                    {
                        limits.consumer_errors.inc();
                        tracing::warn!(error = %e, "subscribed topic missing on its cluster, retrying");
                        break;
                    }
                    ErrorClass::Retry => {
                        limits.consumer_errors.inc();
                        tracing::warn!(error = %e, "consumer error, retrying");
                        break;
                    }
                    class => return Err(RelayError::Consume { class, source: e }),
                },
            }
        }
        if ready_to_end_batch(context)? {
            handler.end_batch(consumer)?;
        }
        let load = tracker.load();
        limits.in_flight_peak.fetch_max(load.records, Ordering::Relaxed);
        limits.in_flight_bytes_peak.fetch_max(load.bytes, Ordering::Relaxed);
        limits.uncommitted.set(load.records as i64);

        if last_commit.elapsed() >= limits.commit_interval {
            last_commit = Instant::now();
            commit(consumer, limits)?;
        }
    }
    Ok(())
}

/// Whether what the handler keeps across polls (lookup mode's held records) may be written
/// now. Exactly-once: a revocation during the batch may have committed the transaction (one
/// is begun again), and an abort during it (stale, lost assignment) leaves everything to be read
/// again after the rewind, held records included: nothing is written.
fn ready_to_end_batch(context: &RebalanceContext) -> Result<bool, RelayError> {
    let Some(t) = context.commit.transaction() else { return Ok(true) };
    if context.rewind_pending() || t.unproven() {
        return Ok(false);
    }
    t.begin()?;
    Ok(true)
}

/// How long exactly-once waits after aborting a transaction a write failed, before trying again.
const REWRITE_BACKOFF: Duration = Duration::from_secs(1);

/// A periodic commit: a failed one is retried next time, unless transactions stopped for good.
fn commit(consumer: &BaseConsumer<RebalanceContext>, limits: &Limits<'_>) -> Result<(), RelayError> {
    match consumer.context().commit(consumer, None, CommitMode::Async) {
        Ok(_) => Ok(()),
        Err(CommitError::Transaction(e)) => Err(e.into()),
        Err(e) => {
            limits.commit_failures.inc();
            tracing::warn!(error = %e, "commit failed; will retry");
            Ok(())
        }
    }
}

/// Pauses or resumes the whole assignment; a resume leaves held partitions paused.
fn set_paused<H: Handler>(consumer: &BaseConsumer<RebalanceContext>, pause: bool, handler: &H) {
    let result = consumer.assignment().and_then(|a| {
        if pause {
            return consumer.pause(&a);
        }
        let mut tpl = rdkafka::TopicPartitionList::new();
        for e in a.elements().iter().filter(|e| !handler.held(e.topic(), e.partition())) {
            tpl.add_partition(e.topic(), e.partition());
        }
        consumer.resume(&tpl)
    });
    match result {
        Ok(()) => tracing::debug!(pause, "backpressure"),
        Err(e) => tracing::warn!(error = %e, pause, "cannot change pause state"),
    }
}

/// What an input record weighs against `bridge.max_in_flight_bytes`.
pub fn input_bytes<M: rdkafka::message::Message>(msg: &M) -> usize {
    msg.payload().map_or(0, <[u8]>::len) + msg.key().map_or(0, <[u8]>::len)
}
