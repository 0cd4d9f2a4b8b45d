//! Why the relay stopped, and why a record could not be written.

use rdkafka::error::KafkaError;

use super::commit::transaction::TransactionError;
use crate::kafka::ErrorClass;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Topics(#[from] crate::topics::TopicError),
    #[error("cannot create the {what}: {source}")]
    Client { what: &'static str, source: KafkaError },
    #[error("cannot start the {what} thread: {source}")]
    Thread { what: &'static str, source: std::io::Error },
    #[error("consumer: {source} ({} error)", class.as_str())]
    Consume { class: ErrorClass, source: KafkaError },
    #[error(transparent)]
    Produce(#[from] Box<ProduceError>),
    #[error("output of {topic}[{partition}]@{offset} failed: {reason}; offsets from there on were not committed")]
    Delivery { topic: String, partition: i32, offset: i64, reason: String },
    #[error(transparent)]
    Transaction(#[from] TransactionError),
    #[error("cannot read again from the committed offsets after an aborted transaction: {source}")]
    Rewind { source: KafkaError },
    #[error(transparent)]
    Decisions(#[from] crate::decision_log::DecisionError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    #[error("{pending} records still unacknowledged after the drain timeout; they will be replayed on restart")]
    DrainTimeout { pending: usize },
    #[error("the {what} thread panicked: {message}; offsets from there on were not committed")]
    Panicked { what: &'static str, message: String },
}

/// A record the bridge cannot write out, nor dead-letter; the relay stops before committing
/// past it. Built in one place, the output writer.
#[derive(Debug, thiserror::Error)]
#[error("cannot produce {input_topic}[{partition}]@{offset} to {cluster} {output_topic}: {source} ({} error)", class.as_str())]
pub struct ProduceError {
    pub input_topic: String,
    pub partition: i32,
    pub offset: i64,
    pub cluster: &'static str,
    pub output_topic: String,
    pub class: ErrorClass,
    pub source: KafkaError,
}
