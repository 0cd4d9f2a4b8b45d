//! The output producers and their delivery reports.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Timestamp};

use super::health::{Health, ProducerRole};
use super::offsets::Tracker;
use super::refusals::Refusals;
use crate::kafka::{ErrorClass, classify};
use crate::metrics::{self, Metrics, OutputMetrics};
use crate::tenancy::Cluster;

#[derive(Clone)]
pub struct DeliveryContext {
    cluster: Cluster,
    client: &'static str,
    role: ProducerRole,
    outputs: OutputMetrics,
    metrics: Arc<Metrics>,
    tracker: Arc<Tracker>,
    health: Arc<Health>,
    /// Where writes the broker refuses for good go back to, for the dead-letter topic; without
    /// it such a refusal stops the relay.
    refusals: Option<Arc<Refusals>>,
}

impl DeliveryContext {
    pub fn with_refusals(mut self, refusals: Arc<Refusals>) -> Self {
        self.refusals = Some(refusals);
        self
    }
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka reports an idempotence failure (lost sequence) as a fatal global error;
        // every later delivery then fails, which stops the relay through the tracker.
        // Only a prod producer's state makes the bridge unready: a Rush-side one (fenced, say)
        // degrades the Rush side, whose lane starts again with a new producer.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            match self.cluster {
                Cluster::Prod => self.health.producer_fatal.store(true, std::sync::atomic::Ordering::Relaxed),
                Cluster::Rush => self.health.set_rush_lane_down(Some(format!("rush producer: {error}"))),
            }
        }
        tracing::error!(cluster = self.cluster.as_str(), %error, reason, "producer error");
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        metrics::kafka_statistics(&self.metrics, self.client, self.cluster.as_str(), &statistics);
        // Learned brokers have a node id; the bootstrap entries (-1) do not count.
        let up = statistics.brokers.values().any(|b| b.nodeid >= 0 && b.state == "UP");
        self.health.set_unreachable(self.role, !up);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        match result {
            Ok(msg) => {
                self.outputs.acked(msg.topic());
                if let Some(ts) = msg.timestamp().to_millis() {
                    let age_ms = crate::clock::now_ms().saturating_sub(ts).max(0);
                    self.outputs.age.observe(age_ms as f64 / 1000.0);
                }
                self.tracker.ack(opaque);
            }
            Err((err, msg)) => {
                let mut class = classify(err);
                self.outputs.error(class);
                if class == ErrorClass::Poison {
                    let refused = match &self.refusals {
                        Some(r) => r.take_back(err, msg, opaque, &self.tracker),
                        None => Some(ErrorClass::Poison),
                    };
                    match refused {
                        None => return,
                        Some(c) => class = c,
                    }
                }
                let reason = format!(
                    "{} cluster, {}[{}]: {err} ({} error)",
                    self.cluster.as_str(),
                    msg.topic(),
                    msg.partition(),
                    class.as_str()
                );
                // Later failures of the same outage are counted (above), not logged again.
                let log = reason.clone();
                if self.tracker.fail(opaque, class, reason) {
                    tracing::error!(reason = %log, "output not delivered; offsets from it on are not committed");
                }
            }
        }
    }
}

pub type OutputProducer = ThreadedProducer<DeliveryContext>;

/// A producer of `role` whose delivery reports go to `context` (see [`delivery_context`]): the
/// forward direction's prod outputs and outbox, the Rush lane's Rush copies, or the return
/// path's prod writes.
pub fn output_producer_with(
    config: &crate::config::Config,
    role: ProducerRole,
    context: DeliveryContext,
) -> Result<OutputProducer, KafkaError> {
    let mut settings = producer_settings(config, role);
    if role == ProducerRole::Prod && config.bridge.delivery == crate::config::Delivery::ExactlyOnce {
        crate::kafka::transactional(&mut settings, config, &config.bridge.transactional_id());
    }
    settings.create_with_context(context)
}

/// The librdkafka settings of a producer of `role` (no transactional id).
pub fn producer_settings(config: &crate::config::Config, role: ProducerRole) -> rdkafka::ClientConfig {
    let (cluster, name) = role_cluster(role);
    let cluster_config = match cluster {
        Cluster::Prod => &config.prod,
        Cluster::Rush => &config.rush,
    };
    crate::kafka::producer_config(cluster_config, name, config)
}

fn role_cluster(role: ProducerRole) -> (Cluster, &'static str) {
    match role {
        ProducerRole::Prod => (Cluster::Prod, "prod"),
        ProducerRole::Rush => (Cluster::Rush, "rush"),
        ProducerRole::Return => (Cluster::Prod, "prod-return"),
    }
}

/// Where the delivery reports of a producer of `role` go.
pub fn delivery_context(
    config: &crate::config::Config,
    role: ProducerRole,
    tracker: &Arc<Tracker>,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
) -> DeliveryContext {
    let (cluster, _) = role_cluster(role);
    let client = match role {
        ProducerRole::Prod => "producer-prod",
        ProducerRole::Rush => "producer-rush",
        ProducerRole::Return => "producer-return",
    };
    DeliveryContext {
        cluster,
        client,
        role,
        outputs: metrics.outputs(config, cluster, role == ProducerRole::Return),
        metrics: metrics.clone(),
        tracker: tracker.clone(),
        health: health.clone(),
        refusals: None,
    }
}

/// What a consumer must drain before it gives partitions away or stops.
pub trait Flush: Send + Sync {
    /// Waits up to `timeout` for everything queued to be delivered.
    fn drain(&self, timeout: Duration) -> Result<(), KafkaError>;

    /// Drops what is queued and not yet sent (its delivery reports say so): after a drain that
    /// timed out on revoke, nothing this instance read may be written after the next owner
    /// starts on it.
    fn purge_queued(&self) {}
}

impl Flush for OutputProducer {
    fn drain(&self, timeout: Duration) -> Result<(), KafkaError> {
        flush(self, timeout)
    }

    fn purge_queued(&self) {
        Producer::purge(self, rdkafka::producer::PurgeConfig::default().queue());
    }
}

/// How often [`flush`] looks whether everything is delivered.
const FLUSH_STEP: Duration = Duration::from_millis(1);

/// Waits up to `timeout` until every queued record is delivered and its report handled.
/// rdkafka's own flush polls the queue for up to 100 ms at a time, but a threaded producer's
/// thread takes the delivery reports from under it: each flush then took 100 ms whatever the
/// broker did, which capped exactly-once at one 512-record batch per transaction (4,900
/// records/s against 50,000 at-least-once).
pub fn flush(producer: &OutputProducer, timeout: Duration) -> Result<(), KafkaError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match Producer::flush(producer, Duration::ZERO) {
            Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(FLUSH_STEP);
            }
            r => return r,
        }
    }
}

/// One output record, borrowed from the input where it is unchanged.
pub struct Output<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub headers: Option<OwnedHeaders>,
    pub timestamp: Timestamp,
    pub opaque: usize,
}

/// How long to wait for queue space before trying again. The in-flight bounds (records and
/// bytes) size the producer queue so it does not fill; this covers a queue a user made smaller.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(2);
/// How long a full queue may hold up the consumer thread (which also serves rebalances)
/// before the write counts as failed: the relay then stops without committing past it.
const QUEUE_FULL_LIMIT: Duration = Duration::from_secs(10);

/// Enqueues `out`, waiting up to [`QUEUE_FULL_LIMIT`] while the producer queue is full.
/// Returns errors classified.
pub fn send(producer: &OutputProducer, out: Output<'_>) -> Result<(), (KafkaError, ErrorClass)> {
    let mut record = BaseRecord::with_opaque_to(out.topic, out.opaque).partition(out.partition);
    if let Some(k) = out.key {
        record = record.key(k);
    }
    if let Some(p) = out.payload {
        record = record.payload(p);
    }
    if let Some(h) = out.headers {
        record = record.headers(h);
    }
    if let Some(ms) = out.timestamp.to_millis() {
        record = record.timestamp(ms);
    }
    let mut waited = Duration::ZERO;
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) if waited < QUEUE_FULL_LIMIT => {
                record = back;
                std::thread::sleep(QUEUE_FULL_BACKOFF);
                waited += QUEUE_FULL_BACKOFF;
            }
            Err((e, _)) => {
                let class = classify(&e);
                return Err((e, class));
            }
        }
    }
}
