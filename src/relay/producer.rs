//! The two output producers (prod and Rush) and their delivery reports.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Timestamp};

use super::offsets::Tracker;
use super::stats::Stats;
use crate::kafka::{ErrorClass, classify};
use crate::metrics::{self, Metrics, OutputMetrics};
use crate::tenancy::Cluster;

pub struct DeliveryContext {
    cluster: Cluster,
    client: &'static str,
    outputs: OutputMetrics,
    metrics: Arc<Metrics>,
    /// The return path's prod producer counts its acknowledgements apart from fan-out outputs.
    return_path: bool,
    tracker: Arc<Tracker>,
    stats: Arc<Stats>,
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka reports an idempotence failure (lost sequence) as a fatal global error;
        // every later delivery then fails, which stops the relay through the tracker.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            self.stats.producer_fatal.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        tracing::error!(cluster = self.cluster.as_str(), %error, reason, "producer error");
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        metrics::kafka_statistics(&self.metrics, self.client, self.cluster.as_str(), &statistics);
        // Learned brokers have a node id; the bootstrap entries (-1) do not count.
        let up = statistics.brokers.values().any(|b| b.nodeid >= 0 && b.state == "UP");
        let i = match (self.return_path, self.cluster) {
            (true, _) => 2,
            (false, Cluster::Prod) => 0,
            (false, Cluster::Rush) => 1,
        };
        self.stats.producer_unreachable[i].store(!up, std::sync::atomic::Ordering::Relaxed);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        match result {
            Ok(msg) => {
                self.outputs.acked(msg.topic());
                if let Some(ts) = msg.timestamp().to_millis() {
                    let age_ms = crate::whitelist::now_ms().saturating_sub(ts).max(0);
                    self.outputs.age.observe(age_ms as f64 / 1000.0);
                }
                if self.return_path {
                    self.stats.return_forwarded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    self.stats.acked(self.cluster);
                }
                self.tracker.ack(opaque);
            }
            Err((err, msg)) => {
                let class = classify(err);
                self.stats.produce_error(class);
                self.outputs.error(class);
                let reason = format!(
                    "{} cluster, {}[{}]: {err} ({} error)",
                    self.cluster.as_str(),
                    msg.topic(),
                    msg.partition(),
                    class.as_str()
                );
                tracing::error!(%reason, "output not delivered; the relay stops and will not commit past it");
                self.tracker.fail(opaque, reason);
            }
        }
    }
}

pub type OutputProducer = ThreadedProducer<DeliveryContext>;

pub struct Producers {
    pub prod: OutputProducer,
    pub rush: OutputProducer,
}

impl Producers {
    pub fn create(
        config: &crate::config::Config,
        tracker: &Arc<Tracker>,
        stats: &Arc<Stats>,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, KafkaError> {
        let ctx = |cluster, client| DeliveryContext {
            cluster,
            client,
            outputs: metrics.outputs(config, cluster, false),
            metrics: metrics.clone(),
            return_path: false,
            tracker: tracker.clone(),
            stats: stats.clone(),
        };
        let prod = crate::kafka::producer_config(&config.prod, "prod", config);
        let rush = crate::kafka::producer_config(&config.rush, "rush", config);
        Ok(Self {
            prod: prod.create_with_context(ctx(Cluster::Prod, "producer-prod"))?,
            rush: rush.create_with_context(ctx(Cluster::Rush, "producer-rush"))?,
        })
    }

    pub fn get(&self, cluster: Cluster) -> &OutputProducer {
        match cluster {
            Cluster::Prod => &self.prod,
            Cluster::Rush => &self.rush,
        }
    }
}

/// The return path's producer: writes to prod, acknowledgements counted as returned records.
pub fn return_producer(
    config: &crate::config::Config,
    tracker: &Arc<Tracker>,
    stats: &Arc<Stats>,
    metrics: &Arc<Metrics>,
) -> Result<OutputProducer, KafkaError> {
    let prod = crate::kafka::producer_config(&config.prod, "prod-return", config);
    prod.create_with_context(DeliveryContext {
        cluster: Cluster::Prod,
        client: "producer-return",
        outputs: metrics.outputs(config, Cluster::Prod, true),
        metrics: metrics.clone(),
        return_path: true,
        tracker: tracker.clone(),
        stats: stats.clone(),
    })
}

/// What a consumer must drain before it gives partitions away or stops.
pub trait Flush: Send + Sync {
    /// Waits up to `timeout` for everything queued to be delivered.
    fn drain(&self, timeout: Duration) -> Result<(), KafkaError>;
}

impl Flush for Producers {
    fn drain(&self, timeout: Duration) -> Result<(), KafkaError> {
        let started = std::time::Instant::now();
        self.prod.flush(timeout)?;
        self.rush.flush(timeout.saturating_sub(started.elapsed()))
    }
}

impl Flush for OutputProducer {
    fn drain(&self, timeout: Duration) -> Result<(), KafkaError> {
        Producer::flush(self, timeout)
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

/// How long to wait for queue space before trying again. The in-flight bound normally keeps
/// the queue from filling; this covers a burst of large fan-outs.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(2);

/// Enqueues `out`, waiting while the producer queue is full. Returns other errors classified.
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
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(QUEUE_FULL_BACKOFF);
            }
            Err((e, _)) => {
                let class = classify(&e);
                return Err((e, class));
            }
        }
    }
}
