//! Poison records: an output write that fails for good (too large even for the limits the
//! bridge follows, refused by the broker) sends the input record to the dead-letter topic on
//! prod in its place, so production keeps flowing past it. The dead-letter write takes the
//! output's place in the offset tracker: the input is committed once it is acknowledged.

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};

use super::headers::{copy_headers, dead_letter as h};
use super::producer::{Output, OutputProducer, send};
use crate::kafka::ErrorClass;
use crate::metrics::Metrics;
use crate::tenancy::Cluster;

/// Which output of which input refused a record, and why.
pub struct Refused<'a> {
    pub route: &'a str,
    pub service: &'a str,
    pub output_topic: &'a str,
    /// The cluster the record was decided for (a Rush copy is refused by the outbox on prod).
    pub cluster: Cluster,
    pub error: &'a KafkaError,
}

/// The short reason a dead-letter record is counted by: the broker or client error code.
pub fn reason(error: &KafkaError) -> String {
    error.rdkafka_error_code().map_or_else(|| "client".to_owned(), |c| format!("{c:?}"))
}

/// Writes `msg` (key, value, headers as read) to `topic` with headers naming what refused it,
/// as the output `opaque` stood for. A value too large for the dead-letter topic too is left
/// out and its length recorded, so the record is still accounted for.
pub fn write<M: Message>(
    producer: &OutputProducer,
    topic: &str,
    msg: &M,
    refused: &Refused<'_>,
    opaque: usize,
    metrics: &Metrics,
) -> Result<(), (KafkaError, ErrorClass)> {
    let reason = reason(refused.error);
    let error = refused.error.to_string();
    let (partition, offset) = (msg.partition().to_string(), msg.offset().to_string());
    let headers = |omitted: Option<&str>| {
        let mut out = msg.headers().map_or_else(OwnedHeaders::new, copy_headers);
        for (key, value) in [
            (h::TOPIC, msg.topic()),
            (h::PARTITION, partition.as_str()),
            (h::OFFSET, offset.as_str()),
            (h::SERVICE, refused.service),
            (h::OUTPUT, refused.output_topic),
            (h::CLUSTER, refused.cluster.as_str()),
            (h::REASON, reason.as_str()),
            (h::ERROR, error.as_str()),
        ] {
            out = out.insert(Header { key, value: Some(value) });
        }
        if let Some(len) = omitted {
            out = out.insert(Header { key: h::VALUE_OMITTED, value: Some(len) });
        }
        out
    };
    let record = |payload, headers| Output {
        topic,
        // One partition (the bridge creates it so): the headers say where each came from.
        partition: 0,
        key: msg.key(),
        payload,
        headers: Some(headers),
        timestamp: msg.timestamp(),
        opaque,
    };
    let written = match send(producer, record(msg.payload(), headers(None))) {
        Err((_, ErrorClass::Poison)) => {
            let len = msg.payload().map_or(0, <[u8]>::len).to_string();
            send(producer, record(None, headers(Some(&len))))
        }
        r => r,
    };
    if written.is_ok() {
        metrics.dead_letter.with_label_values(&[refused.route, refused.service, &reason]).inc();
        tracing::error!(
            input_topic = msg.topic(), partition = msg.partition(), offset = msg.offset(),
            service = refused.service, cluster = refused.cluster.as_str(), output_topic = refused.output_topic,
            %reason, error = %refused.error, dead_letter_topic = topic,
            "poison record: written to the dead-letter topic instead of its output"
        );
    }
    written
}
