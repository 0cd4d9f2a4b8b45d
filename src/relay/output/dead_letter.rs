//! The dead-letter record: a refused record's key, value and headers, with headers saying which
//! input it was, which output refused it and why. Written by the output writer in the refused
//! output's place, so production keeps flowing past it; the dead-letter write takes the
//! output's place in the offset tracker, so the input is committed once it is acknowledged.

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};

use super::Origin;
use crate::headers::{copy_headers, dead_letter as h};
use crate::kafka::ErrorClass;
use crate::metrics::Metrics;
use crate::relay::producer::{Output, OutputProducer, send};

/// The short reason a dead-letter record is counted by: the broker or client error code.
pub fn reason(error: &KafkaError) -> String {
    error.rdkafka_error_code().map_or_else(|| "client".to_owned(), |c| format!("{c:?}"))
}

/// Writes `msg`'s key, value and headers to `topic` with headers naming which input it was,
/// which output refused it and why (`error`), as the output `opaque` stood for. A value too
/// large for the dead-letter topic too is left out and its length recorded, so the record is
/// still accounted for.
pub fn write<M: Message>(
    producer: &OutputProducer,
    topic: &str,
    msg: &M,
    (origin, error): (&Origin<'_>, &KafkaError),
    opaque: usize,
    metrics: &Metrics,
) -> Result<(), (KafkaError, ErrorClass)> {
    let reason = reason(error);
    let error_text = error.to_string();
    let (input_topic, partition, offset) = origin.input;
    let (partition, offset) = (partition.to_string(), offset.to_string());
    let headers = |omitted: Option<&str>| {
        let mut out = msg.headers().map_or_else(OwnedHeaders::new, copy_headers);
        for (key, value) in [
            (h::TOPIC, input_topic),
            (h::PARTITION, partition.as_str()),
            (h::OFFSET, offset.as_str()),
            (h::SERVICE, origin.service),
            (h::OUTPUT, origin.output_topic),
            (h::CLUSTER, origin.cluster.as_str()),
            (h::REASON, reason.as_str()),
            (h::ERROR, error_text.as_str()),
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
        metrics.dead_letter.with_label_values(&[origin.route, origin.service, &reason]).inc();
        tracing::error!(
            input_topic, partition = origin.input.1, offset = origin.input.2,
            service = origin.service, cluster = origin.cluster.as_str(), output_topic = origin.output_topic,
            %reason, %error, dead_letter_topic = topic,
            "poison record: written to the dead-letter topic instead of its output"
        );
    }
    written
}
