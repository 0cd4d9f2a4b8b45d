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

use super::producer::OutputProducer;
use crate::metrics::Metrics;

/// Why the forward direction cannot go on with transactions.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransactionError {
    #[error(
        "transactional id {id:?} was fenced: another live instance has the same bridge.instance_id, \
         or this one was replaced while it was paused ({reason})"
    )]
    Fenced { id: String, reason: String },
    #[error("transaction {step} failed for good on prod: {reason}")]
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
    open: AtomicBool,
    /// When the open transaction began: one older than the transaction timeout is aborted,
    /// never committed, whatever the broker would still accept.
    began: Mutex<Instant>,
    /// Set by an abort; the poll loop seeks back before it handles another record.
    rewind: AtomicBool,
    fatal: Mutex<Option<TransactionError>>,
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
        metrics: &Metrics,
        stop: &dyn Fn() -> bool,
    ) -> Result<Self, TransactionError> {
        let t = Self {
            producer,
            id,
            timeout,
            open: AtomicBool::new(false),
            began: Mutex::new(Instant::now()),
            rewind: AtomicBool::new(false),
            fatal: Mutex::new(None),
            confirmed: Mutex::new(HashMap::new()),
            committed: metrics.transactions.with_label_values(&["committed"]),
            aborted: metrics.transactions.with_label_values(&["aborted"]),
            fenced: metrics.transactions.with_label_values(&["fenced"]),
            seconds: metrics.transaction_seconds.clone(),
        };
        loop {
            match t.producer.init_transactions(timeout) {
                Ok(()) => break,
                Err(e) if retriable(&e) && !stop() => {
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
        if !self.open.load(Relaxed) {
            return Ok(Outcome::Idle);
        }
        let started = Instant::now();
        if let Err(e) = self.producer.flush(self.timeout) {
            return self.abort(format!("outputs not acknowledged within the transaction timeout: {e}"));
        }
        if let Some(reason) = failed() {
            return self.abort(reason);
        }
        if let Some(reason) = self.expired() {
            return self.abort(reason);
        }
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
        if let Some(reason) = self.expired() {
            return self.abort(reason);
        }
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
        self.seconds.observe(started.elapsed().as_secs_f64());
        Ok(Outcome::Committed)
    }

    /// Aborts what is open (an assignment was lost, or a write failed).
    pub fn abort(&self, reason: String) -> Result<Outcome, TransactionError> {
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

    fn expired(&self) -> Option<String> {
        let age = self.began.lock().map(|b| b.elapsed()).unwrap_or_default();
        (age > self.timeout).then(|| {
            format!(
                "open for {age:.1?}, longer than bridge.transaction_timeout ({:?}): this instance was \
                 paused and its partitions may have moved",
                self.timeout
            )
        })
    }

    /// Whether an abort left records to read again (and forgets it).
    pub fn take_rewind(&self) -> bool {
        self.rewind.swap(false, Relaxed)
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
        let fenced = matches!(
            e.rdkafka_error_code(),
            Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
        );
        let err = if fenced {
            self.fenced.inc();
            TransactionError::Fenced { id: self.id.clone(), reason: e.to_string() }
        } else {
            TransactionError::Fatal { step, reason: e.to_string() }
        };
        tracing::error!(id = %self.id, error = %err, "transactions stopped");
        if let Ok(mut f) = self.fatal.lock() {
            f.get_or_insert_with(|| err.clone());
        }
        err
    }
}

fn retriable(e: &KafkaError) -> bool {
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
