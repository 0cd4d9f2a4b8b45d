//! Why the relay stopped.

use rdkafka::error::KafkaError;

use super::pipeline::ProduceError;
use crate::kafka::ErrorClass;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Topics(#[from] super::topics::TopicError),
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
    Transaction(#[from] super::transaction::TransactionError),
    #[error("cannot read again from the committed offsets after an aborted transaction: {source}")]
    Rewind { source: KafkaError },
    #[error(transparent)]
    Decisions(#[from] super::decisions::DecisionError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    #[error("{pending} records still unacknowledged after the drain timeout; they will be replayed on restart")]
    DrainTimeout { pending: usize },
    #[error("the {what} thread panicked: {message}; offsets from there on were not committed")]
    Panicked { what: &'static str, message: String },
}
