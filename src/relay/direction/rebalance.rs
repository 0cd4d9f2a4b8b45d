//! A direction's consumer context: rebalance events handled by named methods (assigned, revoked),
//! commits through the direction's [`CommitStrategy`], librdkafka's statistics exported.
//!
//! librdkafka runs rebalance callbacks on the thread that polls, synchronously, which is why the
//! poll loop lives on its own thread rather than on an async runtime.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{ClientContext, TopicPartitionList};

use crate::relay::commit::{self, CommitError, CommitStrategy};
use crate::relay::health::{Direction, Health};
use crate::relay::offsets::{PartitionKey, Tracker};
use crate::relay::producer::Flush;

/// How long a claim waits for the source cluster's id (known from metadata by then).
const SOURCE_CLUSTER_WITHIN: Duration = Duration::from_secs(2);

/// Partitions revoked since the poll loop last looked, for state it keeps per partition.
#[derive(Debug, Default)]
pub struct Revoked {
    /// Set with the keys, so the loop checks an atomic per record rather than a lock.
    any: std::sync::atomic::AtomicBool,
    keys: std::sync::Mutex<Vec<PartitionKey>>,
}

impl Revoked {
    /// Each key once: a direction that never takes them (the Rush lane, the return path) keeps
    /// at most one entry per partition it ever held.
    fn add(&self, keys: &[PartitionKey]) {
        if let Ok(mut k) = self.keys.lock() {
            for key in keys {
                if !k.contains(key) {
                    k.push(*key);
                }
            }
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
    /// What a revocation drains (at-least-once) and the end of the direction flushes.
    pub flush: Arc<dyn Flush>,
    /// The topics read, indexed like the partition keys.
    pub topics: Vec<String>,
    pub drain_timeout: Duration,
    pub health: Arc<Health>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub direction: Direction,
    /// Revoked partitions, so what a direction keeps per partition (held records, pins) is
    /// dropped.
    pub revoked: Arc<Revoked>,
    pub commit: CommitStrategy,
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
        commit::keys(&self.topics, tpl)
    }

    /// Commits what is fully acknowledged for `keys` (all when `None`), as the direction's
    /// strategy does.
    pub fn commit(
        &self,
        consumer: &BaseConsumer<Self>,
        keys: Option<&[PartitionKey]>,
        mode: CommitMode,
    ) -> Result<usize, CommitError> {
        self.commit.commit(consumer, &self.tracker, &self.topics, keys, mode)
    }

    /// Exactly-once, after an abort: every assigned partition starts again from its committed
    /// offset, with nothing of what was read since kept (tracker, parked records, pins).
    pub fn rewind_if_aborted(&self, consumer: &BaseConsumer<Self>) -> KafkaResult<()> {
        let Some(t) = self.commit.transaction() else { return Ok(()) };
        if !t.take_rewind() {
            return Ok(());
        }
        let keys = self.keys(&consumer.assignment()?);
        self.tracker.reset();
        self.revoked.add(&keys);
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
        let Some(t) = self.commit.transaction().filter(|t| t.unproven()) else { return true };
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
            if let Err(e) = consumer.subscribe(&self.topics.iter().map(String::as_str).collect::<Vec<_>>()) {
                tracing::error!(error = %e, "cannot subscribe again after a pause");
            }
        }
        false
    }

    /// An abort is waiting for [`Self::rewind_if_aborted`]: records polled now are stale.
    pub fn rewind_pending(&self) -> bool {
        self.commit.transaction().is_some_and(|t| t.rewind_pending())
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
        if let (Some(pt), true) = (self.commit.partition_transactions(), assign) {
            let source_cluster = consumer.client().fetch_cluster_id(SOURCE_CLUSTER_WITHIN);
            for ((route, partition), offset) in pt.claim(&self.keys(tpl), source_cluster) {
                if let Some(topic) = self.topics.get(route) {
                    let _ = tpl.set_partition_offset(topic, partition, offset);
                }
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
                    let route = self.topics.iter().position(|t| t == e.topic())?;
                    Some(((route, e.partition()), e.offset().to_raw()?))
                })
                .collect();
            self.tracker.uncommit(&failed);
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => self.revoked(consumer, tpl),
            Rebalance::Assign(tpl) => self.assigned(tpl),
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance error"),
        }
    }
}

impl RebalanceContext {
    /// Partitions leave this instance: everything read from them is written and committed
    /// before another instance starts on them, or it would write those records again. A lost
    /// assignment (this instance was paused or cut off) belongs to another instance already:
    /// its open transactions must not commit.
    fn revoked(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let keys = self.keys(tpl);
        let lost = consumer.assignment_lost();
        let mut undrained = None;
        match &self.commit {
            CommitStrategy::Transaction { transactions, .. } if lost => {
                let _ = transactions.abort("the assignment was lost".into());
            }
            CommitStrategy::PartitionTransactions { transactions, .. } if lost => transactions.release(&keys),
            CommitStrategy::Offsets => {
                if let Err(e) = self.flush.drain(self.drain_timeout) {
                    undrained = Some(e);
                }
            }
            _ => {}
        }
        match self.commit(consumer, Some(&keys), CommitMode::Sync) {
            Ok(n) => tracing::info!(
                direction = self.direction.as_str(),
                partitions = keys.len(),
                committed = n,
                lost,
                "partitions revoked"
            ),
            Err(e) => {
                self.metrics.commit_failures.with_label_values(&[self.direction.as_str()]).inc();
                tracing::warn!(error = %e, "commit on revoke failed; the next owner replays from the last commit")
            }
        }
        self.tracker.remove(&keys);
        if let Some(e) = undrained {
            // After the commit and with the revoked partitions forgotten: what is dropped of
            // them is the next owner's to write, not a failure here.
            self.purge_after_drain_timeout(&e);
        }
        match &self.commit {
            CommitStrategy::PartitionTransactions { transactions, .. } => transactions.release(&keys),
            CommitStrategy::Transaction { transactions, .. } => {
                for e in tpl.elements() {
                    transactions.forget(e.topic(), e.partition());
                }
            }
            CommitStrategy::Offsets => {}
        }
        self.revoked.add(&keys);
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

    /// At-least-once, on revoke, past `drain_timeout`: what is still queued is dropped. Left
    /// queued it would be written while the next owner writes the same records again from the
    /// last commit, the two interleaving in the outputs. Dropped outputs of partitions this
    /// instance keeps (a cooperative revoke) fail their delivery, so the direction starts again
    /// from its commits (at least once).
    fn purge_after_drain_timeout(&self, e: &KafkaError) {
        self.flush.purge_queued();
        self.metrics.revoke_purges.with_label_values(&[self.direction.as_str()]).inc();
        // Requests already on the wire still complete (or fail) on their own.
        let in_flight = self.flush.drain(self.drain_timeout);
        tracing::warn!(
            error = %e, in_flight_done = in_flight.is_ok(),
            "producers not drained within drain_timeout on revoke; queued outputs dropped, the next owner writes them from the last commit"
        );
    }

    /// Partitions come to this instance.
    fn assigned(&self, tpl: &TopicPartitionList) {
        // A fresh assignment is the group's word that this instance is a member.
        if let Some(t) = self.commit.transaction() {
            t.proven("a fresh assignment");
        }
        self.health.assigned(self.direction).fetch_add(tpl.count(), Relaxed);
        if self.direction == Direction::Forward {
            self.health.joined.store(true, Relaxed);
        }
        self.export_assigned();
        tracing::info!(direction = self.direction.as_str(), partitions = ?self.keys(tpl), "partitions assigned");
    }
}
