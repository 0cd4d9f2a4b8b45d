//! The one output writer of a direction: it owns the producers, the refused records and the
//! dead-letter topic, and the metrics and errors of a write. Directions build an [`Output`] and
//! hand it here with its [`Origin`]; the normal path is one enqueue, and dead-lettering is a
//! branch taken only for a refused record.

use std::sync::Arc;

use rdkafka::error::KafkaError;
use rdkafka::message::Message;

use super::{Origin, dead_letter};
use crate::config::{ClusterConfig, Config, Delivery};
use crate::kafka::ErrorClass;
use crate::metrics::Metrics;
use crate::relay::commit::CommitStrategy;
use crate::relay::commit::partition_transactions::{PartitionTransactions, Target};
use crate::relay::error::{ProduceError, RelayError};
use crate::relay::health::{Health, ProducerRole};
use crate::relay::offsets::{PartitionKey, Tracker};
use crate::relay::producer::{
    Flush, Output, OutputProducer, delivery_context, output_producer_with, producer_settings, send,
};
use crate::relay::refusals::{Refusal, Refusals};
use crate::tenancy::Cluster;

/// Who writes a direction's outputs: one producer, or (exactly-once across clusters) one
/// transactional producer per source partition.
pub enum Producers {
    One(Arc<OutputProducer>),
    PerPartition(Arc<PartitionTransactions>),
}

impl Producers {
    /// The producer of source partition `key`'s outputs, in an open transaction if per partition.
    fn for_partition(&self, key: PartitionKey) -> Result<Arc<OutputProducer>, RelayError> {
        match self {
            Self::One(p) => Ok(p.clone()),
            Self::PerPartition(t) => Ok(t.producer(key)?),
        }
    }
}

/// Where refused records go instead of their outputs.
struct DeadLetters {
    topic: String,
    refusals: Arc<Refusals>,
}

pub struct Writer {
    producers: Producers,
    /// The cluster written (the forward direction's outbox is on prod too).
    cluster: Cluster,
    /// `None`: a refused record stops the direction (the Rush lane, which restarts).
    dead_letters: Option<DeadLetters>,
    metrics: Arc<Metrics>,
}

impl Writer {
    /// A writer to `cluster` whose refused records stop the direction.
    pub fn new(producers: Producers, cluster: Cluster, metrics: &Arc<Metrics>) -> Self {
        Self { producers, cluster, dead_letters: None, metrics: metrics.clone() }
    }

    /// Refused records go to `topic` instead; their delivery reports come back via `refusals`.
    pub fn with_dead_letters(mut self, topic: &str, refusals: Arc<Refusals>) -> Self {
        self.dead_letters = Some(DeadLetters { topic: topic.to_owned(), refusals });
        self
    }

    /// What a revocation or the end of the direction drains.
    pub fn flush(&self) -> Arc<dyn Flush> {
        match &self.producers {
            Producers::One(p) => p.clone(),
            Producers::PerPartition(t) => t.clone(),
        }
    }

    /// How a direction written by this writer commits: its consumer group's offsets with one
    /// producer, transactions per source partition with one producer each. `refusals`: the
    /// refused writes booked for the re-read, settled as their inputs commit.
    pub fn commit_strategy(&self, refusals: Option<Arc<Refusals>>) -> CommitStrategy {
        match &self.producers {
            Producers::One(_) => CommitStrategy::Offsets,
            Producers::PerPartition(t) => CommitStrategy::PartitionTransactions { transactions: t.clone(), refusals },
        }
    }

    /// Enqueues `out`, the output `origin` names of the record `input` of partition `key`. A
    /// record refused for good (by the client now, or booked from an earlier delivery report)
    /// goes to the dead-letter topic in its place. Anything else that fails stops the direction
    /// before it commits past the record.
    pub fn write<M: Message>(
        &self,
        key: PartitionKey,
        out: Output<'_>,
        origin: &Origin<'_>,
        input: &M,
    ) -> Result<(), RelayError> {
        let per_partition;
        let producer: &OutputProducer = match &self.producers {
            Producers::One(p) => p,
            Producers::PerPartition(t) => {
                per_partition = t.producer(key)?;
                &per_partition
            }
        };
        let (topic, opaque) = (out.topic, out.opaque);
        if let Some(d) = &self.dead_letters {
            // Refused before an abort (exactly-once): dead-lettered, not tried again. Its
            // delivery report counted it already.
            if let Some(error) = d.refusals.booked(key, origin.input.2, topic) {
                return self.dead_letter(producer, d, input, origin, &error, opaque);
            }
        }
        let Err((error, class)) = send(producer, out) else { return Ok(()) };
        self.metrics.produce_error(self.cluster, class);
        match (&self.dead_letters, class) {
            (Some(d), ErrorClass::Poison) => self.dead_letter(producer, d, input, origin, &error, opaque),
            _ => Err(self.failed(origin, topic, error, class)),
        }
    }

    /// The writes the broker refused since the last call (at-least-once: their delivery reports
    /// queued them). The caller says which output each was and hands it to [`Self::dead_letter`].
    pub fn take_refusals(&self) -> std::collections::VecDeque<Refusal> {
        self.dead_letters.as_ref().map(|d| d.refusals.take()).unwrap_or_default()
    }

    /// Writes a refused record to the dead-letter topic, in place of the output `origin` names.
    pub fn dead_letter_refused(
        &self,
        key: PartitionKey,
        refusal: &Refusal,
        origin: &Origin<'_>,
    ) -> Result<(), RelayError> {
        let Some(d) = &self.dead_letters else {
            return Err(self.failed(origin, refusal.message.topic(), refusal.error.clone(), ErrorClass::Poison));
        };
        let producer = self.producers.for_partition(key)?;
        self.dead_letter(&producer, d, &refusal.message, origin, &refusal.error, refusal.opaque)
    }

    fn dead_letter<M: Message>(
        &self,
        producer: &OutputProducer,
        d: &DeadLetters,
        content: &M,
        origin: &Origin<'_>,
        error: &KafkaError,
        opaque: usize,
    ) -> Result<(), RelayError> {
        dead_letter::write(producer, &d.topic, content, (origin, error), opaque, &self.metrics).map_err(
            |(source, class)| {
                self.metrics.produce_error(self.cluster, class);
                self.failed(origin, &d.topic, source, class)
            },
        )
    }

    fn failed(&self, origin: &Origin<'_>, written: &str, source: KafkaError, class: ErrorClass) -> RelayError {
        let (input_topic, partition, offset) = origin.input;
        RelayError::from(Box::new(ProduceError {
            input_topic: input_topic.to_owned(),
            partition,
            offset,
            cluster: self.cluster.as_str(),
            output_topic: written.to_owned(),
            class,
            source,
        }))
    }
}

/// What a cross-cluster direction (the Rush lane, the return path) reads and where its progress
/// lives.
pub struct CrossCluster<'a> {
    pub role: ProducerRole,
    /// Source topics, indexed like the direction's partition keys.
    pub topics: &'a [String],
    /// The cluster written, where the progress group lives.
    pub target: &'a ClusterConfig,
    pub progress_group: String,
    /// The source consumer's session timeout: a transaction older than that is stale.
    pub session_timeout: std::time::Duration,
    pub name: &'static str,
}

/// The producers of `d`: one producer at-least-once, one transactional producer per source
/// partition exactly-once. Delivery reports of refused writes go to `refusals`, if given.
pub fn cross_cluster_producers(
    config: &Config,
    d: CrossCluster<'_>,
    tracker: &Arc<Tracker>,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
    refusals: Option<&Arc<Refusals>>,
) -> Result<Producers, RelayError> {
    let client = |source| RelayError::Client { what: "producer", source };
    let mut context = delivery_context(config, d.role, tracker, health, metrics);
    if let Some(r) = refusals {
        context = context.with_refusals(r.clone());
    }
    if config.bridge.delivery == Delivery::AtLeastOnce {
        return Ok(Producers::One(Arc::new(output_producer_with(config, d.role, context).map_err(client)?)));
    }
    let mut settings = producer_settings(config, d.role);
    crate::kafka::transaction_timeouts(&mut settings, config);
    let target = Target {
        topics: d.topics.to_vec(),
        settings,
        context,
        progress_client: crate::kafka::admin_config(d.target, &format!("{}-progress", d.name)),
        progress_group: d.progress_group,
        timeout: config.bridge.transaction_timeout,
        stale_after: d.session_timeout,
        direction: d.name,
    };
    Ok(Producers::PerPartition(Arc::new(PartitionTransactions::new(target, metrics).map_err(client)?)))
}
