//! Kafka client set-up and the classification of every Kafka error the bridge sees.

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::{ClientRole, ClusterConfig, Config};

/// What the bridge does about a Kafka error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient: wait and try again (queue full, broker moving, network blip).
    Retry,
    /// The bridge cannot go on (auth, fenced producer, lost idempotence, missing topic).
    Fatal,
    /// This one record can never be written (too large, rejected as invalid).
    Poison,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Fatal => "fatal",
            Self::Poison => "poison",
        }
    }
}

pub fn classify(err: &KafkaError) -> ErrorClass {
    match err.rdkafka_error_code() {
        Some(code) => classify_code(code),
        // Errors without a broker code are client-side: bad config, missing topic names, …
        None => ErrorClass::Fatal,
    }
}

/// Errors that refuse one record and would refuse it again: it goes to the dead-letter topic.
pub const POISON: [RDKafkaErrorCode; 7] = [
    RDKafkaErrorCode::MessageSizeTooLarge,
    RDKafkaErrorCode::InvalidMessageSize,
    RDKafkaErrorCode::InvalidMessage,
    RDKafkaErrorCode::InvalidRecord,
    RDKafkaErrorCode::InvalidTimestamp,
    RDKafkaErrorCode::BadCompression,
    RDKafkaErrorCode::UnsupportedCompressionType,
];

pub fn classify_code(code: RDKafkaErrorCode) -> ErrorClass {
    use RDKafkaErrorCode as C;
    match code {
        C::QueueFull
        | C::MessageTimedOut
        | C::RequestTimedOut
        | C::OperationTimedOut
        | C::NetworkException
        | C::BrokerTransportFailure
        | C::AllBrokersDown
        | C::BrokerNotAvailable
        | C::LeaderNotAvailable
        | C::NotLeaderForPartition
        | C::NotEnoughReplicas
        | C::NotEnoughReplicasAfterAppend
        | C::NotCoordinator
        | C::CoordinatorNotAvailable
        | C::CoordinatorLoadInProgress
        | C::RebalanceInProgress
        | C::KafkaStorageError
        | C::PreferredLeaderNotAvailable
        | C::FetchSessionIdNotFound
        | C::OutOfOrderSequenceNumber
        | C::Resolve
        | C::ThrottlingQuotaExceeded
        | C::PartitionEOF
        // Dropped by the client, not refused: an aborted transaction purges what it had queued,
        // and exactly-once writes it again.
        | C::PurgeQueue
        | C::PurgeInflight => ErrorClass::Retry,
        c if POISON.contains(&c) => ErrorClass::Poison,
        _ => ErrorClass::Fatal,
    }
}

/// Errors no restart of a client can cure: who the bridge is, what it may do, and what it was
/// told to use. A restart cures everything else a broker says (a frozen or restarted broker, a
/// coordinator that moved, a membership lost meanwhile).
pub fn needs_an_operator(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::DelegationTokenAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication
            | C::InvalidConfig
            | C::InvalidArgument
            | C::UnsupportedFeature
            | C::UnsupportedVersion
    )
}

fn base(cluster: &ClusterConfig, role: ClientRole, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cluster.bootstrap_servers);
    c.set("client.id", client_id);
    // Lag, queue depth and broker round trips for /metrics; a user setting wins.
    c.set("statistics.interval.ms", "5000");
    for (k, v) in cluster.kafka_properties(role) {
        c.set(k, v);
    }
    c
}

/// Properties the bridge needs whatever the user wrote.
const PRODUCER_FIXED: &[(&str, &str)] = &[
    // Ordered, duplicate-free writes per partition, also across internal retries.
    ("enable.idempotence", "true"),
    ("acks", "all"),
    // An output topic is created by the bridge with its input's partition count, never by a
    // broker's auto-create (which would use num.partitions and break partition mapping).
    ("allow.auto.create.topics", "false"),
];

pub fn producer_config(cluster: &ClusterConfig, name: &str, config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    // Defaults first, so the user's [*.kafka] table can override them.
    c.set("linger.ms", "5");
    c.set("message.timeout.ms", "120000");
    let max_services = config.routes.iter().map(|r| r.services.len()).max().unwrap_or(1);
    // The in-flight bound decides memory; the producer queue must never be the tighter bound.
    let queue = (config.bridge.max_in_flight * max_services + 1000).min(10_000_000);
    c.set("queue.buffering.max.messages", queue.to_string());
    // Likewise in bytes: every output of the bytes in flight, with room for headers and stamps.
    let kbytes = (config.bridge.max_in_flight_bytes / 1024 * max_services * 2 + 65_536).clamp(1 << 20, 2_097_151);
    c.set("queue.buffering.max.kbytes", kbytes.to_string());
    if let Some(limit) = config.bridge.max_record_bytes {
        // A record its input topic accepted must fit, stamped; librdkafka checks this before
        // the broker does and fails the write as too large.
        c.set("message.max.bytes", crate::topic_settings::producer_max_bytes(limit).to_string());
    }
    let user = base(cluster, ClientRole::Producer, &format!("tenancy-bridge-{name}"));
    for (k, v) in user.config_map() {
        c.set(k, v);
    }
    for (k, v) in PRODUCER_FIXED {
        c.set(*k, *v);
    }
    c
}

/// Makes a producer transactional (exactly-once). librdkafka refuses a message timeout longer
/// than the transaction timeout: a write that cannot land within one transaction aborts it.
pub fn transactional(c: &mut ClientConfig, config: &Config, id: &str) {
    c.set("transactional.id", id);
    transaction_timeouts(c, config);
}

/// The transaction timeout, and a message timeout within it.
pub fn transaction_timeouts(c: &mut ClientConfig, config: &Config) {
    let timeout_ms = config.bridge.transaction_timeout.as_millis().to_string();
    c.set("transaction.timeout.ms", &timeout_ms);
    let message_ms = c.get("message.timeout.ms").and_then(|m| m.parse::<u128>().ok());
    if message_ms.is_none_or(|m| m > config.bridge.transaction_timeout.as_millis()) {
        c.set("message.timeout.ms", &timeout_ms);
    }
}

/// The relay's consumer on `cluster` (prod for the routes, Rush for the return path).
pub fn consumer_config(cluster: &ClusterConfig, name: &str, group_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    // A new group starts at the beginning: an event produced before the bridge first ran is
    // still an input event that must reach its outputs.
    c.set("auto.offset.reset", "earliest");
    // What librdkafka prefetches, bounded (its default, 64 MiB); the relay's own bound is
    // bridge.max_in_flight. Once the prefetch is full librdkafka waits fetch.queue.backoff.ms
    // before fetching again: at its default (1 s) the relay emptied the queue in a fraction of
    // that and then waited on it, half of the time at 100,000 records/s; at 50 ms it keeps up
    // with a plain copy loop (benches/throughput.rs). The wait sends no request to the broker.
    c.set("queued.max.messages.kbytes", "65536");
    c.set("fetch.queue.backoff.ms", "50");
    // fetch.wait.max.ms stays at librdkafka's 500 ms: Apache Kafka answers a fetch as soon as a
    // record is there, so it adds latency only on brokers that hold a fetch to its limit
    // (tansu). 10 ms there cut the added latency but collapsed exactly-once throughput on tansu
    // (tests/decided_once.rs fell behind 1,000 events/s); README "Benchmarks" has the figures.
    let user = base(cluster, ClientRole::Consumer, &format!("tenancy-bridge-consumer-{name}"));
    for (k, v) in user.config_map() {
        c.set(k, v);
    }
    c.set("group.id", group_id);
    // Offsets are committed only after every output is acknowledged, by the relay itself.
    c.set("enable.auto.commit", "false");
    c.set("enable.auto.offset.store", "false");
    c.set("enable.partition.eof", "false");
    c
}

/// Lets a relay consumer fetch the largest record `config` relays (librdkafka returns a record
/// larger than `max.partition.fetch.bytes` alone, but never one above `fetch.max.bytes`).
pub fn fit_records(c: &mut ClientConfig, config: &Config) {
    let Some(limit) = config.bridge.max_record_bytes else { return };
    let need = crate::topic_settings::producer_max_bytes(limit);
    let fetch = c.get("fetch.max.bytes").and_then(|v| v.parse::<usize>().ok()).unwrap_or(FETCH_MAX_BYTES);
    if fetch < need {
        c.set("fetch.max.bytes", need.to_string());
    }
    let receive = c.get("receive.message.max.bytes").and_then(|v| v.parse::<usize>().ok()).unwrap_or(RECEIVE_MAX_BYTES);
    // librdkafka requires room for the protocol framing above fetch.max.bytes.
    if receive < need.max(fetch) + 512 {
        c.set("receive.message.max.bytes", (need.max(fetch) + 512).to_string());
    }
}

/// librdkafka's defaults for the consumer's fetch limits.
const FETCH_MAX_BYTES: usize = 52_428_800;
const RECEIVE_MAX_BYTES: usize = 100_000_000;

/// The session timeout a consumer built from `c` runs with (librdkafka's default: 45 s).
pub fn session_timeout(c: &ClientConfig) -> std::time::Duration {
    let ms = c.get("session.timeout.ms").and_then(|v| v.parse().ok()).unwrap_or(45_000);
    std::time::Duration::from_millis(ms)
}

pub fn admin_config(cluster: &ClusterConfig, name: &str) -> ClientConfig {
    let mut c = base(cluster, ClientRole::Admin, &format!("tenancy-bridge-admin-{name}"));
    // Admin clients and short-lived readers have no statistics handler: librdkafka's default
    // would log every report.
    c.set("statistics.interval.ms", "0");
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(classify_code(RDKafkaErrorCode::QueueFull), ErrorClass::Retry);
        assert_eq!(classify_code(RDKafkaErrorCode::MessageSizeTooLarge), ErrorClass::Poison);
        assert_eq!(classify_code(RDKafkaErrorCode::TopicAuthorizationFailed), ErrorClass::Fatal);
        assert_eq!(classify_code(RDKafkaErrorCode::InvalidProducerEpoch), ErrorClass::Fatal);
        assert_eq!(classify(&KafkaError::ClientCreation("x".into())), ErrorClass::Fatal);
    }
}
