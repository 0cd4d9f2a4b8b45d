//! The input consumer: one group over every route topic on prod, commits driven by the tracker.
//!
//! librdkafka runs rebalance callbacks on the thread that polls, synchronously, which is why the
//! poll loop lives on its own thread rather than on an async runtime.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::health::{Direction, Health};
use super::offsets::{PartitionKey, Tracker};
use super::producer::Flush;

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
    pub fn commit(
        &self,
        consumer: &BaseConsumer<Self>,
        keys: Option<&[PartitionKey]>,
        mode: CommitMode,
    ) -> KafkaResult<usize> {
        let offsets = self.tracker.take_committable(keys, matches!(mode, CommitMode::Sync));
        if offsets.is_empty() {
            return Ok(0);
        }
        let mut tpl = TopicPartitionList::with_capacity(offsets.len());
        for ((route, partition), next) in &offsets {
            tpl.add_partition_offset(&self.route_topics[*route], *partition, Offset::Offset(*next))?;
        }
        match consumer.commit(&tpl, mode) {
            Ok(()) => Ok(offsets.len()),
            Err(e) => {
                self.tracker.uncommit(&offsets);
                Err(e)
            }
        }
    }
}

impl ConsumerContext for RebalanceContext {
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
                if let Err(e) = self.producers.drain(self.drain_timeout) {
                    tracing::warn!(error = %e, "producers not drained within drain_timeout on revoke; the next owner replays the rest");
                }
                match self.commit(consumer, Some(&keys), CommitMode::Sync) {
                    Ok(n) => tracing::info!(partitions = keys.len(), committed = n, "partitions revoked"),
                    Err(e) => {
                        self.metrics.commit_failures.with_label_values(&[self.direction.as_str()]).inc();
                        tracing::warn!(error = %e, "commit on revoke failed; the next owner replays from the last commit")
                    }
                }
                self.tracker.remove(&keys);
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
                self.health.assigned(self.direction).fetch_add(tpl.count(), Relaxed);
                if self.direction == Direction::Forward {
                    self.health.joined.store(true, Relaxed);
                }
                self.export_assigned();
                tracing::info!(partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance error"),
        }
    }
}
