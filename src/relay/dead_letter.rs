//! Poison records: an output write that fails for good (too large even for the limits the
//! bridge follows, refused by the broker) sends the input record to the dead-letter topic on
//! prod in its place, so production keeps flowing past it. The dead-letter write takes the
//! output's place in the offset tracker: the input is committed once it is acknowledged.
//!
//! A write refused before it leaves the client is dead-lettered at once; one the broker refuses
//! comes back in a delivery report, on the producer's thread, and waits in [`Refusals`] for the
//! poll thread, which writes it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};

use super::headers::{copy_headers, dead_letter as h};
use super::offsets::PartitionKey;
use super::producer::{Output, OutputProducer, send};
use crate::kafka::ErrorClass;
use crate::metrics::Metrics;
use crate::tenancy::Cluster;

/// Which output of which input refused a record, and why.
pub struct Refused<'a> {
    /// The input: topic, partition, offset.
    pub input: (&'a str, i32, i64),
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

/// Writes `msg`'s key, value and headers to `topic` with headers naming what refused it and
/// which input it was, as the output `opaque` stood for. A value too large for the dead-letter topic too is left
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
    let (input_topic, partition, offset) = refused.input;
    let (partition, offset) = (partition.to_string(), offset.to_string());
    let headers = |omitted: Option<&str>| {
        let mut out = msg.headers().map_or_else(OwnedHeaders::new, copy_headers);
        for (key, value) in [
            (h::TOPIC, input_topic),
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
            input_topic, partition = refused.input.1, offset = refused.input.2,
            service = refused.service, cluster = refused.cluster.as_str(), output_topic = refused.output_topic,
            %reason, error = %refused.error, dead_letter_topic = topic,
            "poison record: written to the dead-letter topic instead of its output"
        );
    }
    written
}

/// A write the broker refused for good, as its delivery report gave it back.
pub struct Poisoned {
    pub opaque: usize,
    pub message: OwnedMessage,
    pub error: KafkaError,
}

/// How many refused writes may wait for the poll thread; past it the relay stops as before
/// (something refuses everything, which no dead-letter topic should absorb).
const MAX_WAITING: usize = 10_000;

/// Refused writes from the delivery reports of the forward direction's prod producer.
///
/// At-least-once queues each for the poll thread, which dead-letters it in its output's place.
/// Exactly-once cannot: the refusal failed the open transaction, which is aborted and read
/// again. So it books the refused output instead, and the re-read dead-letters it before
/// writing it ([`send_or_refusal`]).
pub struct Refusals {
    /// The dead-letter topic: a refusal of its own writes is no poison record but a failure.
    pub topic: String,
    /// Exactly-once: book refusals for the re-read instead of queueing them.
    pub rewrites: bool,
    waiting: Mutex<VecDeque<Poisoned>>,
    book: Mutex<VecDeque<Booked>>,
    /// Entries in `book`, read without its lock.
    booked: AtomicUsize,
}

/// An output the broker refused, to be dead-lettered when its input is read again.
struct Booked {
    key: PartitionKey,
    offset: i64,
    output_topic: String,
    error: KafkaError,
    at: std::time::Instant,
}

/// How long a booking outlives its last use at most: a partition that moved to another
/// instance is never committed here, and its bookings must not cost a scan per output forever.
/// Not dropped on revoke: a direction that restarts revokes its partitions and reads them again.
const BOOKED_FOR: std::time::Duration = std::time::Duration::from_secs(600);

impl Refusals {
    pub fn new(topic: &str, rewrites: bool) -> Self {
        Self {
            topic: topic.to_owned(),
            rewrites,
            waiting: Mutex::new(VecDeque::new()),
            book: Mutex::new(VecDeque::new()),
            booked: AtomicUsize::new(0),
        }
    }

    /// Queues `p` for the poll thread; false when the queue is full.
    pub fn offer(&self, p: Poisoned) -> bool {
        let mut q = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= MAX_WAITING {
            return false;
        }
        q.push_back(p);
        true
    }

    pub fn take(&self) -> VecDeque<Poisoned> {
        std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Remembers that `output_topic` refused the input at `offset` of `key`. The oldest entry
    /// goes when the book is full: that input is long committed, or fails once more and is
    /// booked again.
    pub fn book(&self, key: PartitionKey, offset: i64, output_topic: &str, error: KafkaError) {
        let mut b = self.book.lock().unwrap_or_else(|e| e.into_inner());
        if b.len() >= MAX_WAITING {
            b.pop_front();
        }
        b.push_back(Booked {
            key,
            offset,
            output_topic: output_topic.to_owned(),
            error,
            at: std::time::Instant::now(),
        });
        self.booked.store(b.len(), Relaxed);
    }

    /// Exactly-once: the error `output_topic` refused this input with before an abort, if it
    /// did. Kept until the input is committed: should the rewrite abort too, its next rewrite
    /// dead-letters the record again rather than retrying a write the broker refused (one
    /// decision per refused write, whichever broker answers next). Costs one atomic load per
    /// output while nothing is booked.
    fn booked(&self, key: PartitionKey, offset: i64, output_topic: &str) -> Option<KafkaError> {
        if self.booked.load(Relaxed) == 0 {
            return None;
        }
        let b = self.book.lock().unwrap_or_else(|e| e.into_inner());
        b.iter().find(|x| x.key == key && x.offset == offset && x.output_topic == output_topic).map(|x| x.error.clone())
    }

    /// A transaction committed `key` up to `next`: what was booked before it is done, and so
    /// is what was booked longer than [`BOOKED_FOR`] ago.
    pub fn settle(&self, key: PartitionKey, next: i64) {
        self.settle_at(key, next, std::time::Instant::now());
    }

    fn settle_at(&self, key: PartitionKey, next: i64, now: std::time::Instant) {
        if self.booked.load(Relaxed) == 0 {
            return;
        }
        let mut b = self.book.lock().unwrap_or_else(|e| e.into_inner());
        b.retain(|x| !(x.key == key && x.offset < next) && now.saturating_duration_since(x.at) < BOOKED_FOR);
        self.booked.store(b.len(), Relaxed);
    }
}

/// A write refused for good, to dead-letter in its place.
pub struct Refusal {
    pub error: KafkaError,
    /// Its delivery report counted it already (a refusal booked before an abort).
    pub counted: bool,
}

/// Sends `out` for the input at `offset` of `key`, unless `refusals` booked it as refused
/// before an abort. `Ok(Some)`: refused for good, dead-letter it; `Err`: any other failure.
pub fn send_or_refusal(
    producer: &OutputProducer,
    out: Output<'_>,
    refusals: Option<&Refusals>,
    key: PartitionKey,
    offset: i64,
) -> Result<Option<Refusal>, (KafkaError, ErrorClass)> {
    if let Some(error) = refusals.and_then(|r| r.booked(key, offset, out.topic)) {
        return Ok(Some(Refusal { error, counted: true }));
    }
    match send(producer, out) {
        Ok(()) => Ok(None),
        Err((error, ErrorClass::Poison)) => Ok(Some(Refusal { error, counted: false })),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode;

    fn too_large() -> KafkaError {
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
    }

    #[test]
    fn a_booked_refusal_holds_across_rereads_until_its_input_commits() {
        let r = Refusals::new("dlq", true);
        r.book((0, 2), 7, "orders.payment", too_large());
        for _ in 0..2 {
            assert!(r.booked((0, 2), 7, "orders.payment").is_some(), "a second abort must not forget it");
        }
        assert!(r.booked((0, 2), 7, "orders.shipping").is_none());
        assert!(r.booked((0, 1), 7, "orders.payment").is_none());
        r.settle((0, 2), 7);
        assert!(r.booked((0, 2), 7, "orders.payment").is_some(), "offset 7 is not committed at next = 7");
        r.settle((0, 2), 8);
        assert!(r.booked((0, 2), 7, "orders.payment").is_none());
        assert_eq!(r.booked.load(Relaxed), 0);
    }

    #[test]
    fn bookings_of_a_partition_never_committed_here_expire() {
        let r = Refusals::new("dlq", true);
        r.book((0, 1), 3, "orders.payment", too_large());
        r.book((0, 2), 3, "orders.payment", too_large());
        let now = std::time::Instant::now();
        r.settle_at((0, 2), 0, now);
        assert!(r.booked((0, 1), 3, "orders.payment").is_some(), "kept while young");
        r.settle_at((0, 2), 0, now + BOOKED_FOR);
        assert!(r.booked((0, 1), 3, "orders.payment").is_none());
        assert_eq!(r.booked.load(Relaxed), 0);
    }
}
