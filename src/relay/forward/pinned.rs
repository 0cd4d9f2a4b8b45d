//! Snapshot mode, decided once: each record is decided by the epoch pinned for its offset in
//! the decision log ([`crate::decision_log`]); a partition taken over replays what previous owners
//! pinned up to its horizon, then pins the live whitelist before deciding with it.

use std::collections::HashMap;
use std::sync::Arc;

use rdkafka::message::{BorrowedMessage, Message};

use super::fan_out::FanOut;
use crate::decision_log::DecisionLog;
use crate::metrics::Metrics;
use crate::pinning::{Chain, Epoch, PartitionPins, Pick};
use crate::relay::direction::rebalance::Revoked;
use crate::relay::error::RelayError;
use crate::relay::offsets::PartitionKey;
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
    replayed: prometheus::IntCounter,
    refreshed: prometheus::IntCounter,
    unreadable: prometheus::IntCounter,
}

/// Waits before reading a partition's decision history again after a transient error (a
/// broker away for a moment): on the poll thread, well inside max.poll.interval.ms.
const LOAD_RETRIES: [std::time::Duration; 3] =
    [std::time::Duration::from_millis(250), std::time::Duration::from_millis(750), std::time::Duration::from_secs(2)];

/// Pins to write with one epoch: partition and first offset.
type Pins = Vec<(PartitionKey, i64)>;

/// How often held partitions are checked for pins due to be written again, at most.
const REFRESH_CHECK_MS: i64 = 60_000;

impl Pinned {
    pub fn new(
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
            unreadable: metrics.decision_history_unreadable.clone(),
        }
    }

    /// Once per batch: forget revoked partitions, and if the whitelist changed (a new
    /// snapshot, or an entry expired), pin the new epoch ahead for every partition that
    /// decides live, in one write.
    pub fn begin_batch(&mut self, now_ms: i64) -> Result<(), RelayError> {
        for key in self.revoked.take() {
            self.partitions.remove(&key);
        }
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
        let ahead: Vec<(PartitionKey, i64)> =
            self.partitions.iter().filter_map(|(k, p)| p.pin_ahead(&self.live).map(|from| (*k, from))).collect();
        if !ahead.is_empty() {
            self.log.record(&self.live, &ahead)?;
            for (key, _) in &ahead {
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
            match due.iter_mut().find(|(e, _)| Arc::ptr_eq(e, epoch)) {
                Some((_, keys)) => keys.push((*key, from)),
                None => due.push((epoch.clone(), vec![(*key, from)])),
            }
        }
        for (epoch, keys) in &due {
            self.log.record(epoch, keys)?;
            for (key, _) in keys {
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

    /// Decides `msg` of route `ri` with the epoch pinned for its offset (pinning the live one
    /// first where none is), and fans it out.
    pub fn decide(&mut self, ri: usize, msg: &BorrowedMessage<'_>, fan_out: &mut FanOut) -> Result<(), RelayError> {
        let key = (ri, msg.partition());
        if !self.partitions.contains_key(&key) {
            let pins = self.take_over(key, msg)?;
            self.partitions.insert(key, pins);
        }
        let Some(pins) = self.partitions.get_mut(&key) else {
            return Ok(());
        };
        match pins.pick(msg.offset(), &self.live) {
            Pick::Decide(epoch) => {
                if !Arc::ptr_eq(epoch, &self.live) {
                    self.replayed.inc();
                }
                fan_out.decide(ri, msg, &*epoch.snapshot, epoch.clock_ms)?;
            }
            Pick::Record { from } => {
                self.log.record(&self.live, &[(key, from)])?;
                pins.pinned(from, self.live.clone());
                fan_out.decide(ri, msg, &*self.live.snapshot, self.live.clock_ms)?;
            }
        }
        Ok(())
    }

    /// A partition seen for the first time since it was assigned: what previous owners pinned
    /// from this record on, and the horizon below which they may have decided.
    fn take_over(&mut self, key: PartitionKey, msg: &BorrowedMessage<'_>) -> Result<PartitionPins, RelayError> {
        let (topic, partition, from) = (msg.topic(), msg.partition(), msg.offset());
        let horizon = self.log.reader.log_end(topic, partition)?;
        let mut recorded = self.log.reader.load(key, from);
        for wait in LOAD_RETRIES {
            match &recorded {
                Err(e) if e.curable() => {
                    tracing::warn!(topic, partition, error = %e, retry_in = ?wait, "decision log unreadable; trying again");
                    std::thread::sleep(wait);
                    recorded = self.log.reader.load(key, from);
                }
                _ => break,
            }
        }
        let recorded = match recorded {
            Ok(chain) => chain,
            Err(e) => {
                // Production goes on: decided from the live whitelist, and pinned from here.
                self.unreadable.inc();
                tracing::error!(topic, partition, offset = from, error = %e,
                    "decision log unreadable: records a previous owner decided may be decided again differently");
                Chain::default()
            }
        };
        if !recorded.is_empty() {
            tracing::info!(topic, partition, from, horizon, pins = recorded.len(), "replaying recorded decisions");
        }
        Ok(PartitionPins::taken_over(recorded, horizon))
    }
}
