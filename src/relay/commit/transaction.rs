//! Exactly-once on prod: the forward direction's prod writes (outputs and the Rush outbox) and
//! its input offsets commit in one Kafka transaction per `bridge.transaction_interval`.
//!
//! Fencing is the consumer group's (KIP-447): the offsets go to the transaction with the
//! group metadata, so a broker refuses them from an instance whose generation is gone, and
//! that transaction aborts. One producer per instance, whatever the partition count; the
//! transactional id only has to be stable across restarts of one instance, so that the
//! restarted process aborts what its predecessor left open instead of leaving read_committed
//! consumers waiting for `bridge.transaction_timeout`.
//!
//! A broker without KIP-447's generation check (tansu 0.6 is one) would take a stale
//! instance's offsets, so the bridge guards itself too: a transaction open longer than
//! `stale_after` (the smaller of the transaction and session timeouts: the process was paused
//! and its partitions may have moved) is aborted, never committed, and the instance then leaves
//! and joins its group again before it writes.
//!
//! Every call here blocks; all of them run on the consumer's thread (poll loop and rebalance
//! callbacks), never on an async runtime.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};

use crate::metrics::Metrics;
use crate::relay::producer::{self, OutputProducer};
use crate::relay::stop::Stop;

/// Why the forward direction cannot go on with transactions.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransactionError {
    #[error(
        "transactional id {id:?} was fenced: {} ({reason})",
        if *paused {
            "this instance was paused past its transaction timeout and the broker moved on; it starts again"
        } else {
            "another live instance has the same bridge.instance_id, or this one was replaced while it was paused"
        }
    )]
    Fenced {
        id: String,
        reason: String,
        /// Fenced while a transaction of this process was older than a transaction may be: the
        /// process was paused, and a fresh producer cures it (Kafka Streams rejoins the same
        /// way). Otherwise another live process may hold the id, and starting again would only
        /// fence it in turn.
        paused: bool,
    },
    #[error("transaction {step} failed for good: {reason}")]
    Fatal { step: &'static str, reason: String },
}

/// What a commit attempt came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was open.
    Idle,
    Committed,
    /// Aborted: everything since the last commit must be read again.
    Aborted(String),
}

pub struct Transactions {
    producer: Arc<OutputProducer>,
    id: String,
    timeout: Duration,
    /// A transaction open longer than this is from a paused process: aborted, never committed.
    stale_after: Duration,
    open: AtomicBool,
    /// When the open transaction began: one older than the transaction timeout is aborted,
    /// never committed, whatever the broker would still accept.
    began: Mutex<Instant>,
    /// Set by an abort; the poll loop seeks back before it handles another record.
    rewind: AtomicBool,
    /// Set by a stale abort: the instance must rejoin its group before writing.
    unproven: AtomicBool,
    /// The rejoin of a stale instance was asked for.
    rejoining: AtomicBool,
    fatal: Mutex<Option<TransactionError>>,
    /// Set with `fatal`: checked per record, so an atomic rather than the lock.
    stopped: AtomicBool,
    /// Input positions this instance committed, per partition it still owns: where an abort
    /// goes back to without asking the broker.
    confirmed: Mutex<HashMap<(String, i32), i64>>,
    committed: prometheus::IntCounter,
    aborted: prometheus::IntCounter,
    fenced: prometheus::IntCounter,
    seconds: prometheus::Histogram,
}

impl Transactions {
    /// Registers the transactional id with prod, aborting what an earlier process with the
    /// same id left open. Waits while prod is unreachable, until `stop`.
    pub fn init(
        producer: Arc<OutputProducer>,
        id: String,
        timeout: Duration,
        stale_after: Duration,
        metrics: &Metrics,
        stop: &Stop<'_>,
    ) -> Result<Self, TransactionError> {
        let t = Self {
            producer,
            id,
            timeout,
            stale_after: stale_after.min(timeout),
            open: AtomicBool::new(false),
            began: Mutex::new(Instant::now()),
            rewind: AtomicBool::new(false),
            unproven: AtomicBool::new(false),
            rejoining: AtomicBool::new(false),
            fatal: Mutex::new(None),
            stopped: AtomicBool::new(false),
            confirmed: Mutex::new(HashMap::new()),
            committed: metrics.transactions.with_label_values(&["committed"]),
            aborted: metrics.transactions.with_label_values(&["aborted"]),
            fenced: metrics.transactions.with_label_values(&["fenced"]),
            seconds: metrics.transaction_seconds.clone(),
        };
        loop {
            match t.producer.init_transactions(timeout) {
                Ok(()) => break,
                Err(e) if retriable(&e) && !stop.requested() => {
                    tracing::warn!(error = %e, id = %t.id, "cannot register the transactional id yet; retrying");
                }
                Err(e) => return Err(t.failed("init", &e)),
            }
        }
        tracing::info!(id = %t.id, "transactions registered on prod");
        Ok(t)
    }

    /// Opens a transaction if none is (a local call: librdkafka talks to the broker on the
    /// first write).
    pub fn begin(&self) -> Result<(), TransactionError> {
        self.check_fatal()?;
        if self.open.load(Relaxed) {
            return Ok(());
        }
        self.producer.begin_transaction().map_err(|e| self.failed("begin", &e))?;
        if let Ok(mut b) = self.began.lock() {
            *b = Instant::now();
        }
        self.open.store(true, Relaxed);
        Ok(())
    }

    /// Flushes, adds `offsets()` (read after the flush, so they cover every acknowledged
    /// write) with the group's metadata, and commits. `failed` says an output of this
    /// transaction was refused: it aborts instead.
    pub fn commit<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        failed: &dyn Fn() -> Option<String>,
        offsets: &dyn Fn() -> TopicPartitionList,
    ) -> Result<Outcome, TransactionError> {
        self.check_fatal()?;
        if !self.open.load(Relaxed) {
            return Ok(Outcome::Idle);
        }
        let started = Instant::now();
        if let Err(e) = producer::flush(&self.producer, self.timeout) {
            return self.abort(format!("outputs not acknowledged within the transaction timeout: {e}"));
        }
        if let Some(reason) = failed() {
            return self.abort(reason);
        }
        if self.stale().is_some() {
            return self.abort_stale();
        }
        let flushed = started.elapsed();
        let offsets = offsets();
        if offsets.count() > 0 {
            let Some(group) = consumer.group_metadata() else {
                return self.abort("no consumer group metadata to fence with".into());
            };
            if let Err(e) = self.retrying(|| self.producer.send_offsets_to_transaction(&offsets, &group, self.timeout))
            {
                return self.settle("send_offsets", &e);
            }
        }
        // Checked again right before the commit: a process paused between the two calls (a
        // freeze, a long GC-like stall) has been replaced by now. A broker that expires
        // transactions would refuse the commit; one that does not (tansu) would accept it.
        if self.stale().is_some() {
            return self.abort_stale();
        }
        let sent = started.elapsed();
        if let Err(e) = self.retrying(|| self.producer.commit_transaction(self.timeout)) {
            return self.settle("commit", &e);
        }
        self.open.store(false, Relaxed);
        if let Ok(mut c) = self.confirmed.lock() {
            for e in offsets.elements() {
                if let Offset::Offset(o) = e.offset() {
                    c.insert((e.topic().to_owned(), e.partition()), o);
                }
            }
        }
        self.committed.inc();
        tracing::debug!(
            id = %self.id,
            offsets = ?offsets.to_topic_map(),
            flush = ?flushed,
            send_offsets = ?(sent - flushed),
            commit = ?(started.elapsed() - sent),
            "transaction committed"
        );
        self.seconds.observe(started.elapsed().as_secs_f64());
        Ok(Outcome::Committed)
    }

    /// Aborts what is open (an assignment was lost, or a write failed).
    pub fn abort(&self, reason: String) -> Result<Outcome, TransactionError> {
        self.check_fatal()?;
        if !self.open.load(Relaxed) {
            return Ok(Outcome::Idle);
        }
        self.retrying(|| self.producer.abort_transaction(self.timeout)).map_err(|e| self.failed("abort", &e))?;
        self.open.store(false, Relaxed);
        self.rewind.store(true, Relaxed);
        self.aborted.inc();
        tracing::warn!(id = %self.id, %reason, "transaction aborted; its records will be read again");
        Ok(Outcome::Aborted(reason))
    }

    pub fn rewind_pending(&self) -> bool {
        self.rewind.load(Relaxed)
    }

    /// How long the open transaction has been open, when that is longer than `stale_after`.
    fn stale(&self) -> Option<Duration> {
        if !self.open.load(Relaxed) {
            return None;
        }
        let age = self.began.lock().map(|b| b.elapsed()).unwrap_or_default();
        (age > self.stale_after).then_some(age)
    }

    /// Aborts the open transaction if this process was paused for longer than `stale_after`
    /// (checked after every blocking poll, before records are handled): whether it is still a
    /// member of the group must be proven before it writes again.
    pub fn abort_if_stale(&self) -> Result<bool, TransactionError> {
        if self.stale().is_none() {
            return Ok(false);
        }
        self.abort_stale().map(|_| true)
    }

    fn abort_stale(&self) -> Result<Outcome, TransactionError> {
        let age = self.stale().unwrap_or_default();
        self.unproven.store(true, Relaxed);
        self.abort(format!(
            "open for {age:.1?}, longer than {:?} (the smaller of bridge.transaction_timeout and the \
             consumer's session.timeout.ms): this instance was paused and its partitions may have moved",
            self.stale_after
        ))
    }

    /// Whether the instance must prove its group membership before it writes again.
    pub fn unproven(&self) -> bool {
        self.unproven.load(Relaxed)
    }

    /// The group confirmed this instance (`how`: a fresh assignment, a commit it accepted), or
    /// it has no partitions left to write for.
    pub fn proven(&self, how: &str) {
        self.rejoining.store(false, Relaxed);
        if self.unproven.swap(false, Relaxed) {
            tracing::info!(id = %self.id, how, "group membership settled after a pause");
        }
    }

    /// True the first time it is called while a rejoin is pending.
    pub fn rejoin_once(&self) -> bool {
        !self.rejoining.swap(true, Relaxed)
    }

    /// Whether an abort left records to read again (and forgets it).
    pub fn take_rewind(&self) -> bool {
        self.rewind.swap(false, Relaxed)
    }

    /// Once transactions stopped for good, every later step fails at once with the same error
    /// (each would otherwise wait out the transaction timeout before the bridge can stop).
    fn check_fatal(&self) -> Result<(), TransactionError> {
        if !self.stopped.load(Relaxed) {
            return Ok(());
        }
        self.fatal().map_or(Ok(()), Err)
    }

    /// The error that stopped transactions, if one did.
    pub fn fatal(&self) -> Option<TransactionError> {
        self.fatal.lock().ok().and_then(|f| f.clone())
    }

    /// Repeats `step` while librdkafka calls its error retriable, up to the transaction timeout.
    fn retrying(&self, step: impl Fn() -> Result<(), KafkaError>) -> Result<(), KafkaError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match step() {
                Err(e) if retriable(&e) && Instant::now() < deadline => {
                    tracing::debug!(error = %e, "transaction step retried");
                    std::thread::sleep(Duration::from_millis(50));
                }
                r => return r,
            }
        }
    }

    /// After a failed step: abort if the transaction can be, else stop for good.
    fn settle(&self, step: &'static str, e: &KafkaError) -> Result<Outcome, TransactionError> {
        match e {
            KafkaError::Transaction(t) if t.txn_requires_abort() => self.abort(format!("{step}: {e}")),
            // A retriable error that outlasted the timeout: the transaction may still be
            // aborted; if even that fails, the error is for good.
            _ if retriable(e) => self.abort(format!("{step}: {e}")),
            _ => Err(self.failed(step, e)),
        }
    }

    fn failed(&self, step: &'static str, e: &KafkaError) -> TransactionError {
        let paused = self.stale().is_some() || self.unproven();
        let err = classify_failure(&self.id, step, e, paused);
        if matches!(err, TransactionError::Fenced { .. }) {
            self.fenced.inc();
        }
        tracing::error!(id = %self.id, error = %err, "transactions stopped");
        if let Ok(mut f) = self.fatal.lock() {
            f.get_or_insert_with(|| err.clone());
        }
        self.stopped.store(true, Relaxed);
        err
    }
}

/// A transaction step's error for good: fenced (another producer took the transactional id,
/// or the broker bumped past this one's epoch), or fatal.
pub(super) fn classify_failure(id: &str, step: &'static str, e: &KafkaError, paused: bool) -> TransactionError {
    let fenced = matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
    );
    if fenced {
        TransactionError::Fenced { id: id.to_owned(), reason: e.to_string(), paused }
    } else {
        TransactionError::Fatal { step, reason: e.to_string() }
    }
}

pub(super) fn retriable(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(t) => t.is_retriable(),
        other => other
            .rdkafka_error_code()
            .is_some_and(|c| crate::kafka::classify_code(c) == crate::kafka::ErrorClass::Retry),
    }
}

impl Transactions {
    /// A partition left this instance: its next owner's commits, not ours, say where it is.
    pub fn forget(&self, topic: &str, partition: i32) {
        if let Ok(mut c) = self.confirmed.lock() {
            c.remove(&(topic.to_owned(), partition));
        }
    }

    /// Seeks every assigned partition back to its committed offset, so what an abort undid is
    /// read again: the position this instance committed last, else the broker's committed
    /// offset, else the beginning (like `auto.offset.reset = earliest`).
    pub fn seek_to_committed<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        timeout: Duration,
    ) -> Result<usize, KafkaError> {
        let assignment = consumer.assignment()?;
        if assignment.count() == 0 {
            return Ok(0);
        }
        let known = self.confirmed.lock().map(|c| c.clone()).unwrap_or_default();
        let mut ask = TopicPartitionList::new();
        let mut tpl = TopicPartitionList::with_capacity(assignment.count());
        for e in assignment.elements() {
            match known.get(&(e.topic().to_owned(), e.partition())) {
                Some(o) => tpl.add_partition_offset(e.topic(), e.partition(), Offset::Offset(*o))?,
                None => {
                    ask.add_partition(e.topic(), e.partition());
                }
            }
        }
        if ask.count() > 0 {
            for e in consumer.committed_offsets(ask, timeout)?.elements() {
                let offset = match e.offset() {
                    Offset::Offset(o) => Offset::Offset(o),
                    _ => Offset::Beginning,
                };
                tpl.add_partition_offset(e.topic(), e.partition(), offset)?;
            }
        }
        seek(consumer, tpl, timeout)
    }
}

fn seek<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tpl: TopicPartitionList,
    timeout: Duration,
) -> Result<usize, KafkaError> {
    let sought = consumer.seek_partitions(tpl, timeout)?;
    for e in sought.elements() {
        e.error()?;
    }
    Ok(sought.count())
}
