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
    Delivery { topic: String, partition: i32, offset: i64, reason: String, class: ErrorClass },
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
    #[error(
        "the Rush lane's consumer has had no partition for {unassigned:?} while Rush copies wait ({backlog_age:.0} s \
         old): starting it again with a new consumer"
    )]
    LaneUnassigned { unassigned: std::time::Duration, backlog_age: f64 },
}

impl RelayError {
    /// Whether starting the direction again can cure this, as a supervisor restarting the
    /// process would: a production broker frozen or restarted, a coordinator that moved, a group
    /// membership lost meanwhile (`max.poll.interval.ms` passed while a write waited), a write
    /// or a decision-log read that outlasted its timeout, a transactional id the broker fenced
    /// while this process was paused. Not: a configuration, a permission, a
    /// transactional id another live instance holds, a broken thread or a panic, which the
    /// bridge stops for, saying which.
    pub fn curable(&self) -> bool {
        let code = |e: &KafkaError| e.rdkafka_error_code().is_none_or(|c| !crate::kafka::needs_an_operator(c));
        match self {
            Self::Consume { source, .. } | Self::Rewind { source } => code(source),
            Self::Produce(p) => p.class == ErrorClass::Retry || code(&p.source),
            Self::Delivery { class, .. } => *class == ErrorClass::Retry,
            Self::Transaction(TransactionError::Fatal { .. })
            | Self::DrainTimeout { .. }
            | Self::LaneUnassigned { .. } => true,
            Self::Transaction(TransactionError::Fenced { paused, .. }) => *paused,
            Self::Decisions(e) => e.curable(),
            Self::Topics(e) => e.curable(),
            Self::Client { .. }
            | Self::Thread { .. }
            | Self::Metrics(_)
            | Self::Telemetry(_)
            | Self::Panicked { .. } => false,
        }
    }
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
