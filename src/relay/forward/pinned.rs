//! Snapshot mode, decided once: each record is decided by the epoch pinned for its offset in
//! the decision log ([`crate::decision_log`]); a partition taken over replays what previous owners
//! pinned up to its horizon, then pins the live whitelist before deciding with it.

use std::collections::HashMap;
use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::fan_out::FanOut;
use super::held::pause;
use crate::config::Config;
use crate::decision_log::{DecisionError, DecisionLog};
use crate::metrics::Metrics;
use crate::pinning::{Chain, Epoch, PartitionPins, Pick, claim_after};
use crate::relay::direction::rebalance::{RebalanceContext, Revoked};
use crate::relay::error::RelayError;
use crate::relay::offsets::PartitionKey;
use crate::tenancy::Subject;
use crate::whitelist::{SharedSnapshot, Snapshot};

pub struct Pinned {
    shared: SharedSnapshot,
    /// The snapshot `live` was made from, to notice a swap with one pointer compare.
    seen: Arc<Snapshot>,
    live: Arc<Epoch>,
    partitions: HashMap<PartitionKey, PartitionPins, foldhash::fast::RandomState>,
    log: DecisionLog,
    revoked: Arc<Revoked>,
    /// How old a pin in use may grow before it is written again, and when to look next.
    refresh_every_ms: i64,
    next_refresh_check_ms: i64,
    /// Partitions whose decision history could not be read, until it can (or `hold_ms`).
    held: HashMap<PartitionKey, Hold>,
    hold_ms: i64,
    replayed: prometheus::IntCounter,
    refreshed: prometheus::IntCounter,
    unreadable: prometheus::IntCounter,
    held_gauge: prometheus::IntGauge,
}

/// A partition held because its decision history could not be read.
struct Hold {
    /// Since when, across tries: past `hold_ms` it is decided from the live whitelist.
    since_ms: i64,
    /// While paused, when to resume it for another try; `None` once resumed (its next record
    /// tries again).
    retry_at_ms: Option<i64>,
}

/// A held partition is tried again after 1 s, then a little later each time, at most 5 s.
const HOLD_RETRY_MS: i64 = 1_000;
const HOLD_RETRY_MAX_MS: i64 = 5_000;
/// How long rewinding a held partition may take.
const SEEK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Pins to write with one epoch: partition, first offset and claim.
type Pins = Vec<(PartitionKey, i64, u64)>;

/// How often held partitions are checked for pins due to be written again, at most.
const REFRESH_CHECK_MS: i64 = 60_000;

impl Pinned {
    pub fn new(
        config: &Config,
        shared: SharedSnapshot,
        log: DecisionLog,
        revoked: Arc<Revoked>,
        metrics: &Metrics,
        now_ms: i64,
    ) -> Self {
        let seen = shared.load_full();
        let live = Arc::new(Epoch::new(seen.clone(), now_ms));
        let refresh_every_ms = i64::try_from(log.refresh_every().as_millis()).unwrap_or(i64::MAX);
        Self {
            shared,
            seen,
            live,
            partitions: HashMap::default(),
            refresh_every_ms,
            next_refresh_check_ms: now_ms,
            log,
            revoked,
            replayed: metrics.decisions_replayed.clone(),
            refreshed: metrics.decision_pins_refreshed.clone(),
            held_gauge: metrics.decision_history_held.clone(),
            held: HashMap::new(),
            hold_ms: i64::try_from(config.bridge.decision_history_hold.as_millis()).unwrap_or(i64::MAX),
            unreadable: metrics.decision_history_unreadable.clone(),
        }
    }

    /// Once per batch: forget revoked partitions, and if the whitelist changed (a new
    /// snapshot, or an entry expired), pin the new epoch ahead for every partition that
    /// decides live, in one write.
    pub fn begin_batch(&mut self, now_ms: i64) -> Result<(), RelayError> {
        let revoked = self.revoked.take();
        self.forget(&revoked);
        if now_ms >= self.next_refresh_check_ms {
            self.refresh(now_ms)?;
            self.next_refresh_check_ms = now_ms.saturating_add((self.refresh_every_ms / 4).clamp(1, REFRESH_CHECK_MS));
        }
        let current = self.shared.load_full();
        let swapped = !Arc::ptr_eq(&current, &self.seen);
        if !swapped && now_ms < self.live.changes_at_ms {
            return Ok(());
        }
        let fingerprint = if swapped { current.fingerprint() } else { self.live.fingerprint };
        self.seen = current.clone();
        let next = Epoch::with_fingerprint(fingerprint, current, now_ms);
        if next.same_decisions(&self.live) {
            return Ok(());
        }
        self.live = Arc::new(next);
        let ahead: Pins = (self.partitions.iter())
            .filter_map(|(k, p)| p.pin_ahead(&self.live).map(|from| (*k, from, p.claim())))
            .collect();
        if !ahead.is_empty() {
            self.log.record(&self.live, &ahead)?;
            for (key, _, _) in &ahead {
                if let Some(p) = self.partitions.get_mut(key) {
                    p.pinned_ahead(self.live.clone());
                }
            }
        }
        Ok(())
    }

    /// Writes again the pins in use that are [`Self::refresh_every_ms`] old, one write per
    /// epoch: a partition whose whitelist stays the same for longer than the decision log's
    /// retention keeps its decisions on record.
    fn refresh(&mut self, now_ms: i64) -> Result<(), RelayError> {
        let mut due: Vec<(Arc<Epoch>, Pins)> = Vec::new();
        for (key, pins) in &self.partitions {
            let Some((from, epoch)) = pins.refresh_due(now_ms, self.refresh_every_ms) else { continue };
            let pin = (*key, from, pins.claim());
            match due.iter_mut().find(|(e, _)| Arc::ptr_eq(e, epoch)) {
                Some((_, keys)) => keys.push(pin),
                None => due.push((epoch.clone(), vec![pin])),
            }
        }
        for (epoch, keys) in &due {
            self.log.record(epoch, keys)?;
            for (key, _, _) in keys {
                if let Some(p) = self.partitions.get_mut(key) {
                    p.refreshed(now_ms);
                }
            }
            self.refreshed.inc_by(keys.len() as u64);
            tracing::info!(
                partitions = keys.len(),
                version = epoch.snapshot.version(),
                "decisions in use written again"
            );
        }
        Ok(())
    }

    /// Partitions revoked: their pins and holds end (the next owner reads their history).
    pub fn forget(&mut self, keys: &[PartitionKey]) {
        for key in keys {
            self.partitions.remove(key);
            self.release(*key);
        }
    }

    /// Decides `msg` of route `ri` with the epoch pinned for its offset (pinning the live one
    /// first where none is), and fans it out.
    pub fn decide(
        &mut self,
        ri: usize,
        msg: &BorrowedMessage<'_>,
        fan_out: &mut FanOut,
        consumer: &BaseConsumer<RebalanceContext>,
        now_ms: i64,
    ) -> Result<(), RelayError> {
        self.with_epoch(ri, msg, consumer, now_ms, |epoch| fan_out.decide(ri, msg, &*epoch.snapshot, epoch.clock_ms))
            .map(drop)
    }

    /// [`Self::decide`] with the subject already found in `msg` (lookup mode found it to ask
    /// for its user). `false`: not decided, its partition is held and will read it again.
    #[allow(clippy::too_many_arguments)]
    pub fn decide_subject<M: Message>(
        &mut self,
        ri: usize,
        msg: &M,
        subject: Subject<'_>,
        fan_out: &mut FanOut,
        consumer: &BaseConsumer<RebalanceContext>,
        now_ms: i64,
        started: Option<std::time::Instant>,
    ) -> Result<bool, RelayError> {
        self.with_epoch(ri, msg, consumer, now_ms, |epoch| {
            fan_out.decide_subject(ri, msg, subject, &*epoch.snapshot, epoch.clock_ms, started)
        })
    }

    /// Runs `decide` with the epoch pinned for `msg`'s offset, pinning the live one first where
    /// none is. `false`: the partition's history cannot be read, and it is held instead.
    fn with_epoch<M: Message>(
        &mut self,
        ri: usize,
        msg: &M,
        consumer: &BaseConsumer<RebalanceContext>,
        now_ms: i64,
        decide: impl FnOnce(&Epoch) -> Result<(), RelayError>,
    ) -> Result<bool, RelayError> {
        let key = (ri, msg.partition());
        if self.is_held(key) {
            // Fetched before the hold: read again once the partition is resumed.
            return Ok(false);
        }
        if !self.partitions.contains_key(&key) {
            let pins = match self.take_over(key, msg, now_ms)? {
                Ok(pins) => {
                    if self.release(key) {
                        tracing::info!(topic = msg.topic(), partition = key.1, "decision history readable again");
                    }
                    pins
                }
                Err(e) => match self.unreadable(key, msg, &e, consumer, now_ms) {
                    Some(pins) => pins,
                    None => return Ok(false),
                },
            };
            self.partitions.insert(key, pins);
        }
        let Some(pins) = self.partitions.get_mut(&key) else {
            return Ok(false);
        };
        match pins.pick(msg.offset(), &self.live) {
            Pick::Decide(epoch) => {
                if !Arc::ptr_eq(epoch, &self.live) {
                    self.replayed.inc();
                }
                decide(epoch)?;
            }
            Pick::Record { from } => {
                self.log.record(&self.live, &[(key, from, pins.claim())])?;
                pins.pinned(from, self.live.clone());
                decide(&self.live)?;
            }
        }
        Ok(true)
    }

    /// A partition seen for the first time since it was assigned: what previous owners pinned
    /// from this record on, and the horizon below which they may have decided; or why that
    /// history cannot be read (the partition is then held and tried again, without blocking
    /// the others: [`Self::unreadable`]).
    fn take_over<M: Message>(
        &mut self,
        key: PartitionKey,
        msg: &M,
        now_ms: i64,
    ) -> Result<Result<PartitionPins, DecisionError>, RelayError> {
        let (topic, partition, from) = (msg.topic(), msg.partition(), msg.offset());
        let horizon = self.log.reader.log_end(topic, partition)?;
        let recorded = match self.log.reader.load(key, from) {
            Ok(recorded) => recorded,
            Err(e) => return Ok(Err(e)),
        };
        let claim = recorded.next_claim(now_ms);
        // A write, failing like any pin write (not a history that cannot be read).
        self.log.claim(key, &recorded, claim)?;
        if !recorded.is_empty() {
            tracing::info!(
                topic,
                partition,
                from,
                horizon,
                pins = recorded.len(),
                claim,
                "replaying recorded decisions"
            );
        }
        Ok(Ok(PartitionPins::taken_over(recorded, horizon, claim)))
    }

    /// The decision history of `msg`'s partition cannot be read (a broker away for a moment,
    /// or a snapshot gone): hold the partition (paused, read again from `msg` later) rather
    /// than guess, until it has been held for `bridge.decision_history_hold`; past that,
    /// decide from the live whitelist and pin it (production goes on), counted and logged.
    /// Returns the partition's pins when it goes on.
    fn unreadable<M: Message>(
        &mut self,
        key: PartitionKey,
        msg: &M,
        e: &DecisionError,
        consumer: &BaseConsumer<RebalanceContext>,
        now_ms: i64,
    ) -> Option<PartitionPins> {
        let (topic, partition, offset) = (msg.topic(), msg.partition(), msg.offset());
        let since_ms = self.held.get(&key).map_or(now_ms, |h| h.since_ms);
        let held_for = now_ms.saturating_sub(since_ms);
        if held_for < self.hold_ms && seek_and_pause(consumer, topic, partition, offset) {
            // Tried again soon at first, less often the longer it lasts.
            let wait = (HOLD_RETRY_MS + held_for / 4).min(HOLD_RETRY_MAX_MS);
            self.held.insert(key, Hold { since_ms, retry_at_ms: Some(now_ms.saturating_add(wait)) });
            self.held_gauge.set(self.held.len() as i64);
            tracing::error!(topic, partition, offset, error = %e, held_for_ms = held_for,
                "decision history unreadable: partition held (not decided) until it can be read");
            return None;
        }
        self.release(key);
        self.unreadable.inc();
        tracing::error!(topic, partition, offset, error = %e,
            "decision history unreadable: deciding from the live whitelist; records a previous owner decided may be decided again differently");
        // Above the claims in the log, if they can be read: this owner's pins must count.
        let highest = self.log.reader.highest_claim(key).unwrap_or(0);
        Some(PartitionPins::taken_over(Chain::default(), i64::MIN, claim_after(highest, now_ms)))
    }

    /// Ends `key`'s hold, if it had one.
    fn release(&mut self, key: PartitionKey) -> bool {
        let had = self.held.remove(&key).is_some();
        if had {
            self.held_gauge.set(self.held.len() as i64);
        }
        had
    }

    /// Once per batch, after it: held partitions due for another try are resumed (their next
    /// record takes the partition over again).
    /// Partitions `paused_elsewhere` names are left paused (their retry comes when resumed).
    pub fn end_batch(
        &mut self,
        consumer: &BaseConsumer<RebalanceContext>,
        fan_out: &FanOut,
        now_ms: i64,
        paused_elsewhere: impl Fn(PartitionKey) -> bool,
    ) {
        for (key, hold) in &mut self.held {
            if hold.retry_at_ms.is_some_and(|at| at <= now_ms) {
                hold.retry_at_ms = None;
                if !paused_elsewhere(*key)
                    && let Some(topic) = fan_out.route_topic(key.0)
                {
                    pause(consumer, topic, key.1, false);
                }
            }
        }
    }

    /// Whether `key` is paused for its decision history (a backpressure resume leaves it so).
    pub fn is_held(&self, key: PartitionKey) -> bool {
        !self.held.is_empty() && self.held.get(&key).is_some_and(|h| h.retry_at_ms.is_some())
    }
}

/// Rewinds a partition to `offset` and pauses it; `false` if the consumer refused either.
fn seek_and_pause(consumer: &BaseConsumer<RebalanceContext>, topic: &str, partition: i32, offset: i64) -> bool {
    let mut tpl = TopicPartitionList::new();
    if tpl.add_partition_offset(topic, partition, Offset::Offset(offset)).is_err() {
        return false;
    }
    if let Err(e) = consumer.pause(&tpl) {
        tracing::warn!(topic, partition, error = %e, "cannot pause a partition to hold it");
        return false;
    }
    match consumer.seek_partitions(tpl, SEEK_TIMEOUT) {
        Ok(done) if done.elements().iter().all(|e| e.error().is_ok()) => true,
        other => {
            tracing::warn!(topic, partition, result = ?other.err(), "cannot rewind a held partition");
            false
        }
    }
}
