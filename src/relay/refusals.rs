//! Refused records: writes a broker refused for good (too large even for the limits the bridge
//! follows, refused by its policy). Delivery reports hand them back here, on the producer's
//! thread; the direction's poll thread takes them and its output writer dead-letters each in
//! its output's place ([`super::output`]). One name for the concept: a [`Refusal`].

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};

use super::offsets::{PartitionKey, Tracker};
use crate::kafka::ErrorClass;

/// A write the broker refused for good, as its delivery report gave it back.
pub struct Refusal {
    pub opaque: usize,
    pub message: OwnedMessage,
    pub error: KafkaError,
}

/// How many refused writes may wait for the poll thread; past it the relay stops as before
/// (something refuses everything, which no dead-letter topic should absorb).
const MAX_WAITING: usize = 10_000;

/// Refused writes from the delivery reports of a direction's producer (the forward direction's
/// prod producer, the return path's).
///
/// At-least-once queues each for the poll thread, which dead-letters it in its output's place.
/// Exactly-once cannot: the refusal failed the open transaction, which is aborted and read
/// again. So it books the refused output instead, and the re-read dead-letters it before
/// writing it ([`super::output::Writer::write`]).
pub struct Refusals {
    /// The dead-letter topic: a refusal of its own writes is no poison record but a failure.
    pub topic: String,
    /// Exactly-once: book refusals for the re-read instead of queueing them.
    pub exactly_once: bool,
    waiting: Mutex<VecDeque<Refusal>>,
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
    pub fn new(topic: &str, exactly_once: bool) -> Self {
        Self {
            topic: topic.to_owned(),
            exactly_once,
            waiting: Mutex::new(VecDeque::new()),
            book: Mutex::new(VecDeque::new()),
            booked: AtomicUsize::new(0),
        }
    }

    /// A delivery report's refused write: queued for the poll thread (at-least-once) or booked
    /// for the re-read (exactly-once). Returns how the tracker must take it: not at all
    /// (`None`: queued, it will be dead-lettered in its output's place), as a failure to
    /// rewrite (`Retry`: booked, the transaction aborts and reads it again), or as poison (the
    /// queue is full, or it was the dead-letter topic itself that refused).
    pub fn take_back(
        &self,
        error: &KafkaError,
        msg: &rdkafka::message::BorrowedMessage<'_>,
        opaque: usize,
        tracker: &Tracker,
    ) -> Option<ErrorClass> {
        if self.topic == msg.topic() {
            return Some(ErrorClass::Poison);
        }
        if !self.exactly_once {
            let queued = self.offer(Refusal { opaque, message: msg.detach(), error: error.clone() });
            return (!queued).then_some(ErrorClass::Poison);
        }
        match tracker.locate(opaque) {
            Some((key, offset)) => {
                self.book(key, offset, msg.topic(), error.clone());
                Some(ErrorClass::Retry)
            }
            None => Some(ErrorClass::Poison),
        }
    }

    /// Queues `p` for the poll thread; false when the queue is full.
    pub fn offer(&self, p: Refusal) -> bool {
        let mut q = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= MAX_WAITING {
            return false;
        }
        q.push_back(p);
        true
    }

    pub fn take(&self) -> VecDeque<Refusal> {
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
    pub fn booked(&self, key: PartitionKey, offset: i64, output_topic: &str) -> Option<KafkaError> {
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
