//! Where a record is committed: each direction has one [`CommitStrategy`], and what it commits
//! is what the [`Tracker`] says is fully acknowledged, in partition order.
//!
//! - [`CommitStrategy::Offsets`]: at-least-once, the consumer group's offsets.
//! - [`CommitStrategy::Transaction`]: the forward direction exactly-once, one transaction per
//!   instance on prod with the input offsets ([`transaction`], fenced by KIP-447).
//! - [`CommitStrategy::PartitionTransactions`]: the Rush lane and the return path
//!   exactly-once, one transaction per source partition on the cluster written, with the
//!   progress stored there ([`partition_transactions`]).

pub mod partition_transactions;
pub mod transaction;

use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::offsets::{PartitionKey, Tracker};
use super::refusals::Refusals;
use partition_transactions::PartitionTransactions;
use transaction::{Outcome, TransactionError, Transactions};

/// Why offsets were not committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Transaction(#[from] TransactionError),
}

/// How a direction makes its progress durable.
pub enum CommitStrategy {
    /// At-least-once: the consumer group's offsets, once everything before them is acknowledged.
    Offsets,
    /// Exactly-once on the cluster read (the forward direction): offsets commit inside the
    /// prod producer's transaction. Refused writes booked for the re-read are done once their
    /// input commits.
    Transaction { transactions: Arc<Transactions>, refusals: Arc<Refusals> },
    /// Exactly-once across clusters (Rush lane, return path): one transaction per partition on
    /// the cluster written, with the progress stored there.
    PartitionTransactions { transactions: Arc<PartitionTransactions>, refusals: Option<Arc<Refusals>> },
}

impl CommitStrategy {
    /// The instance's transactions, when offsets commit in them.
    pub fn transaction(&self) -> Option<&Transactions> {
        match self {
            Self::Transaction { transactions, .. } => Some(transactions),
            _ => None,
        }
    }

    pub fn partition_transactions(&self) -> Option<&PartitionTransactions> {
        match self {
            Self::PartitionTransactions { transactions, .. } => Some(transactions),
            _ => None,
        }
    }

    /// Commits what is fully acknowledged for `keys` (all when `None`) of `topics` (indexed like
    /// the partition keys). A synchronous commit (hand-over, shutdown) also repeats offsets an
    /// asynchronous one may not have landed. Transactions commit the open transaction instead.
    pub fn commit<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        tracker: &Tracker,
        topics: &[String],
        keys: Option<&[PartitionKey]>,
        mode: CommitMode,
    ) -> Result<usize, CommitError> {
        match self {
            Self::Offsets => {
                let offsets = tracker.take_committable(keys, matches!(mode, CommitMode::Sync));
                if offsets.is_empty() {
                    return Ok(0);
                }
                match consumer.commit(&offset_list(topics, &offsets), mode) {
                    Ok(()) => Ok(offsets.len()),
                    Err(e) => {
                        tracker.uncommit(&offsets);
                        Err(e.into())
                    }
                }
            }
            Self::Transaction { transactions, refusals } => {
                let committed = commit_transaction(transactions, consumer, tracker, topics)?;
                settle(Some(refusals), &committed);
                Ok(committed.len())
            }
            Self::PartitionTransactions { transactions, refusals } => {
                let offsets = transactions.commit(keys, tracker, tracker.failure().is_some())?;
                settle(refusals.as_ref(), &offsets);
                // The source cluster's group learns it too: the backlog probe reads it there, and
                // it is where a target rebuilt empty starts again from.
                if !offsets.is_empty() {
                    if let Err(e) = consumer.commit(&offset_list(topics, &offsets), CommitMode::Async) {
                        tracing::debug!(error = %e, "progress not recorded on the source cluster; the next commit repeats it");
                    }
                }
                Ok(offsets.len())
            }
        }
    }
}

/// Commits the instance's open transaction with the offsets of every partition it still holds.
fn commit_transaction<C: ConsumerContext>(
    t: &Transactions,
    consumer: &BaseConsumer<C>,
    tracker: &Tracker,
    topics: &[String],
) -> Result<Vec<(PartitionKey, i64)>, CommitError> {
    let committed = std::cell::RefCell::new(Vec::new());
    let offsets = || {
        let mut offsets = tracker.take_committable(None, true);
        // Only partitions this instance holds now: a position of one it lost (a record polled
        // around the revocation) must never reach the group, where it would move the new
        // owner's offset back.
        let held = consumer.assignment().map(|a| keys(topics, &a)).unwrap_or_default();
        offsets.retain(|(key, _)| held.contains(key));
        let list = offset_list(topics, &offsets);
        *committed.borrow_mut() = offsets;
        list
    };
    match t.commit(consumer, &|| tracker.failure().map(|f| f.reason), &offsets)? {
        Outcome::Committed => Ok(committed.into_inner()),
        Outcome::Idle | Outcome::Aborted(_) => Ok(Vec::new()),
    }
}

/// Refusals booked before `committed` are done with.
fn settle(refusals: Option<&Arc<Refusals>>, committed: &[(PartitionKey, i64)]) {
    if let Some(r) = refusals {
        for &(key, next) in committed {
            r.settle(key, next);
        }
    }
}

/// The partition keys of `tpl`'s partitions of `topics`.
pub fn keys(topics: &[String], tpl: &TopicPartitionList) -> Vec<PartitionKey> {
    tpl.elements()
        .iter()
        .filter_map(|e| topics.iter().position(|t| t == e.topic()).map(|r| (r, e.partition())))
        .collect()
}

/// `offsets` as a list of `topics`' partitions.
pub fn offset_list(topics: &[String], offsets: &[(PartitionKey, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for ((route, partition), next) in offsets {
        // Offsets of tracked partitions are valid by construction.
        if let Some(topic) = topics.get(*route) {
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next));
        }
    }
    tpl
}
