//! The input consumer: one group over every route topic on prod, commits driven by the tracker.
//!
//! librdkafka runs rebalance callbacks on the thread that polls, synchronously, which is why the
//! poll loop lives on its own thread rather than on an async runtime.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::dead_letter::Refusals;
use super::health::{Direction, Health};
use super::offsets::{PartitionKey, Tracker};
use super::partition_transactions::PartitionTransactions;
use super::producer::Flush;
use super::transaction::{Outcome, TransactionError, Transactions};

/// Why offsets were not committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Transaction(#[from] TransactionError),
}

/// Partitions revoked since the poll loop last looked, for state it keeps per partition.
#[derive(Debug, Default)]
pub struct Revoked {
    /// Set with the keys, so the loop checks an atomic per record rather than a lock.
    any: std::sync::atomic::AtomicBool,
    keys: std::sync::Mutex<Vec<PartitionKey>>,
}

impl Revoked {
    fn add(&self, keys: &[PartitionKey]) {
        if let Ok(mut k) = self.keys.lock() {
            k.extend_from_slice(keys);
            self.any.store(true, Relaxed);
        }
    }

    /// The partitions revoked since the last call (usually none, at the cost of one load).
    pub fn take(&self) -> Vec<PartitionKey> {
        if !self.any.swap(false, Relaxed) {
            return Vec::new();
        }
        self.keys.lock().map(|mut k| std::mem::take(&mut *k)).unwrap_or_default()
    }
}

pub struct RebalanceContext {
    pub tracker: Arc<Tracker>,
    pub producers: Arc<dyn Flush>,
    pub route_topics: Vec<String>,
    pub drain_timeout: Duration,
    pub health: Arc<Health>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub direction: Direction,
    /// Revoked partitions, so what the forward direction keeps per partition (parked records,
    /// pins) is dropped.
    pub revoked: Option<Arc<Revoked>>,
    /// Exactly-once: offsets commit inside the prod producer's transactions.
    pub transactions: Option<Arc<Transactions>>,
    /// Exactly-once across clusters (Rush lane, return path): one transaction per partition on
    /// the cluster written, with the progress stored there.
    pub partition_transactions: Option<Arc<PartitionTransactions>>,
    /// Exactly-once: refused writes booked for the re-read, done once their input commits.
    pub refusals: Option<Arc<Refusals>>,
}

impl ClientContext for RebalanceContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let d = self.direction;
        crate::metrics::kafka_statistics(&self.metrics, d.client(), d.source().as_str(), &statistics);
    }
}

impl RebalanceContext {
    fn export_assigned(&self) {
        let n = self.health.assigned(self.direction).load(Relaxed);
        self.metrics.assigned_partitions.with_label_values(&[self.direction.as_str()]).set(n as i64);
    }
}

impl RebalanceContext {
    fn keys(&self, tpl: &TopicPartitionList) -> Vec<PartitionKey> {
        tpl.elements()
            .iter()
            .filter_map(|e| self.route_topics.iter().position(|t| t == e.topic()).map(|r| (r, e.partition())))
            .collect()
    }

    /// Commits what is fully acknowledged for `keys` (all when `None`). A synchronous commit
    /// (hand-over, shutdown) also repeats offsets an asynchronous one may not have landed.
    /// Exactly-once commits the open transaction instead, with every partition's offsets.
    pub fn commit(
        &self,
        consumer: &BaseConsumer<Self>,
        keys: Option<&[PartitionKey]>,
        mode: CommitMode,
    ) -> Result<usize, CommitError> {
        if let Some(t) = &self.transactions {
            return self.commit_transaction(consumer, t);
        }
        if let Some(pt) = &self.partition_transactions {
            let offsets = pt.commit(keys, &self.tracker, self.tracker.failure().is_some())?;
            self.settle(&offsets);
            // The source cluster's group learns it too: the backlog probe reads it there, and
            // it is where a target rebuilt empty starts again from.
            if !offsets.is_empty() {
                if let Err(e) = consumer.commit(&self.offset_list(&offsets), CommitMode::Async) {
                    tracing::debug!(error = %e, "progress not recorded on the source cluster; the next commit repeats it");
                }
            }
            return Ok(offsets.len());
        }
        let offsets = self.tracker.take_committable(keys, matches!(mode, CommitMode::Sync));
        if offsets.is_empty() {
            return Ok(0);
        }
        match consumer.commit(&self.offset_list(&offsets), mode) {
            Ok(()) => Ok(offsets.len()),
            Err(e) => {
                self.tracker.uncommit(&offsets);
                Err(e.into())
            }
        }
    }

    fn commit_transaction(&self, consumer: &BaseConsumer<Self>, t: &Transactions) -> Result<usize, CommitError> {
        let committed = std::cell::RefCell::new(Vec::new());
        let offsets = || {
            let mut offsets = self.tracker.take_committable(None, true);
            // Only partitions this instance holds now: a position of one it lost (a record
            // polled around the revocation) must never reach the group, where it would move
            // the new owner's offset back.
            let held = consumer.assignment().map(|a| self.keys(&a)).unwrap_or_default();
            offsets.retain(|(key, _)| held.contains(key));
            let list = self.offset_list(&offsets);
            *committed.borrow_mut() = offsets;
            list
        };
        match t.commit(consumer, &|| self.tracker.failure().map(|f| f.reason), &offsets)? {
            Outcome::Committed => {
                let committed = committed.into_inner();
                self.settle(&committed);
                Ok(committed.len())
            }
            Outcome::Idle | Outcome::Aborted(_) => Ok(0),
        }
    }

    fn settle(&self, committed: &[(PartitionKey, i64)]) {
        if let Some(r) = &self.refusals {
            for &(key, next) in committed {
                r.settle(key, next);
            }
        }
    }

    fn offset_list(&self, offsets: &[(PartitionKey, i64)]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::with_capacity(offsets.len());
        for ((route, partition), next) in offsets {
            // Offsets of tracked partitions are valid by construction.
            let _ = tpl.add_partition_offset(&self.route_topics[*route], *partition, Offset::Offset(*next));
        }
        tpl
    }

    /// Exactly-once, after an abort: every assigned partition starts again from its committed
    /// offset, with nothing of what was read since kept (tracker, parked records, pins).
    pub fn rewind_if_aborted(&self, consumer: &BaseConsumer<Self>) -> KafkaResult<()> {
        let Some(t) = &self.transactions else { return Ok(()) };
        if !t.take_rewind() {
            return Ok(());
        }
        let keys = self.keys(&consumer.assignment()?);
        self.tracker.reset();
        if let Some(r) = &self.revoked {
            r.add(&keys);
        }
        let n = t.seek_to_committed(consumer, self.drain_timeout)?;
        tracing::info!(partitions = n, "read again from the committed offsets after an abort");
        Ok(())
    }

    /// Exactly-once, after a pause longer than a transaction may stay open: whether the group
    /// still counts this instance as the owner of its partitions. Nothing a client can do asks
    /// that without writing (a commit of its old positions would move them back on a broker
    /// that takes a replaced member's commit), so the instance leaves the group and joins it
    /// again: nothing is written until the fresh assignment (or none) arrives.
    pub fn membership_proven(&self, consumer: &BaseConsumer<Self>) -> bool {
        let Some(t) = self.transactions.as_ref().filter(|t| t.unproven()) else { return true };
        match consumer.assignment() {
            Ok(a) if a.count() == 0 => {
                t.proven("no partitions assigned");
                return true;
            }
            Ok(_) => {}
            Err(_) => return false,
        }
        if t.rejoin_once() {
            tracing::warn!("paused longer than a transaction may stay open; joining the group again before writing");
            consumer.unsubscribe();
            if let Err(e) = consumer.subscribe(&self.route_topics.iter().map(String::as_str).collect::<Vec<_>>()) {
                tracing::error!(error = %e, "cannot subscribe again after a pause");
            }
        }
        false
    }

    /// An abort is waiting for [`Self::rewind_if_aborted`]: records polled now are stale.
    pub fn rewind_pending(&self) -> bool {
        self.transactions.as_ref().is_some_and(|t| t.rewind_pending())
    }
}

impl ConsumerContext for RebalanceContext {
    /// librdkafka's rebalance (as rdkafka's default), except that partitions of a cross-cluster
    /// exactly-once direction start where the progress group on the cluster written says.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::consumer::RebalanceProtocol::Cooperative;
        use rdkafka::types::RDKafkaRespErr::{
            RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS, RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS,
        };
        let assign = err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
        if let (Some(pt), true) = (&self.partition_transactions, assign) {
            for ((route, partition), offset) in pt.claim(&self.keys(tpl)) {
                let _ = tpl.set_partition_offset(&self.route_topics[route], partition, Offset::Offset(offset));
            }
        }
        let cooperative = matches!(consumer.rebalance_protocol(), Cooperative);
        let result = match err {
            RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.pre_rebalance(consumer, &Rebalance::Assign(tpl));
                if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) }
            }
            RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.pre_rebalance(consumer, &Rebalance::Revoke(tpl));
                if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() }
            }
            other => {
                let e = KafkaError::Rebalance(other.into());
                self.pre_rebalance(consumer, &Rebalance::Error(e));
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, assign, "cannot apply the rebalance");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            self.metrics.commit_failures.with_label_values(&[self.direction.as_str()]).inc();
            tracing::warn!(error = %e, "offset commit failed; offering the offsets again");
            let failed: Vec<(PartitionKey, i64)> = offsets
                .elements()
                .iter()
                .filter_map(|e| {
                    let route = self.route_topics.iter().position(|t| t == e.topic())?;
                    Some(((route, e.partition()), e.offset().to_raw()?))
                })
                .collect();
            self.tracker.uncommit(&failed);
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let keys = self.keys(tpl);
                // Everything read from these partitions must be written and committed before
                // another instance starts on them, or it would write those records again.
                // A lost assignment (this instance was paused or cut off) belongs to another
                // instance already: its open transaction must not commit.
                if let (Some(t), true) = (&self.transactions, consumer.assignment_lost()) {
                    let _ = t.abort("the assignment was lost".into());
                } else if let (Some(pt), true) = (&self.partition_transactions, consumer.assignment_lost()) {
                    pt.release(&keys);
                } else if self.transactions.is_none() && self.partition_transactions.is_none() {
                    if let Err(e) = self.producers.drain(self.drain_timeout) {
                        tracing::warn!(error = %e, "producers not drained within drain_timeout on revoke; the next owner replays the rest");
                    }
                }
                match self.commit(consumer, Some(&keys), CommitMode::Sync) {
                    Ok(n) => tracing::info!(
                        direction = self.direction.as_str(),
                        partitions = keys.len(),
                        committed = n,
                        lost = consumer.assignment_lost(),
                        "partitions revoked"
                    ),
                    Err(e) => {
                        self.metrics.commit_failures.with_label_values(&[self.direction.as_str()]).inc();
                        tracing::warn!(error = %e, "commit on revoke failed; the next owner replays from the last commit")
                    }
                }
                self.tracker.remove(&keys);
                if let Some(pt) = &self.partition_transactions {
                    pt.release(&keys);
                }
                if let Some(t) = &self.transactions {
                    for e in tpl.elements() {
                        t.forget(e.topic(), e.partition());
                    }
                }
                if let Some(r) = &self.revoked {
                    r.add(&keys);
                }
                let _ = self
                    .health
                    .assigned(self.direction)
                    .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(tpl.count())));
                self.export_assigned();
                // A revoked partition's lag is the next owner's to report.
                for e in tpl.elements() {
                    let p = e.partition().to_string();
                    let cluster = self.direction.source().as_str();
                    let _ = self.metrics.consumer_lag.remove_label_values(&[cluster, e.topic(), &p]);
                }
            }
            Rebalance::Assign(tpl) => {
                // A fresh assignment is the group's word that this instance is a member.
                if let Some(t) = &self.transactions {
                    t.proven("a fresh assignment");
                }
                self.health.assigned(self.direction).fetch_add(tpl.count(), Relaxed);
                if self.direction == Direction::Forward {
                    self.health.joined.store(true, Relaxed);
                }
                self.export_assigned();
                tracing::info!(direction = self.direction.as_str(), partitions = ?self.keys(tpl), "partitions assigned");
            }
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance error"),
        }
    }
}
