//! Decided once: which whitelist decides each input offset, so that a replay decides it again
//! exactly as the first time.
//!
//! An [`Epoch`] is a whitelist snapshot read at a fixed instant. Before a partition decides its
//! first record with a new epoch, the relay durably records a [`Pin`] "from offset O, epoch E"
//! (the I/O lives in `decision_log`). A later owner of the partition rebuilds the
//! [`Chain`] of pins from the log and decides every offset a previous owner may have decided
//! (those below the partition's high watermark when it took over, its *horizon*) with the epoch
//! pinned for it. From the horizon on it decides with the live whitelist, pinning first.
//!
//! Each pin carries its writer's *claim* on the partition, taken when it took the partition over:
//! above every claim in the log then (and the clock's milliseconds). A pin written after one of a
//! higher claim was written by a previous owner that had not noticed it lost the partition (a
//! zombie, paused past its session timeout) and is ignored: it cannot override its successor's
//! decisions. The group generation would say the same, but librdkafka does not let it out.
//!
//! Pure: no I/O, no clock. Decisions read `Epoch::clock_ms`, never the wall clock, which is
//! what makes an expiry replay the same way.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::whitelist::Snapshot;

/// A snapshot read at one instant.
#[derive(Debug)]
pub struct Epoch {
    pub snapshot: Arc<Snapshot>,
    pub fingerprint: u64,
    pub clock_ms: i64,
    /// The first expiry after `clock_ms`: from then on the same snapshot decides differently.
    pub changes_at_ms: i64,
}

impl Epoch {
    pub fn new(snapshot: Arc<Snapshot>, clock_ms: i64) -> Self {
        Self::with_fingerprint(snapshot.fingerprint(), snapshot, clock_ms)
    }

    pub fn with_fingerprint(fingerprint: u64, snapshot: Arc<Snapshot>, clock_ms: i64) -> Self {
        let changes_at_ms = snapshot.next_expiry_after(clock_ms);
        Self { snapshot, fingerprint, clock_ms, changes_at_ms }
    }

    /// Whether the two give every event the same decision: same content, and no entry
    /// expires between their instants.
    pub fn same_decisions(&self, other: &Epoch) -> bool {
        let (early, late) = if self.clock_ms <= other.clock_ms { (self, other) } else { (other, self) };
        self.fingerprint == other.fingerprint && early.changes_at_ms > late.clock_ms
    }
}

/// "From offset `from` on, `epoch` decides this partition", written under `claim` (0: by a
/// version that did not claim).
#[derive(Debug, Clone)]
pub struct Pin {
    pub from: i64,
    pub epoch: Arc<Epoch>,
    pub claim: u64,
}

/// The pins of one partition, in the order they were recorded.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    pins: Vec<Pin>,
    /// The highest claim applied.
    claim: u64,
}

impl Chain {
    /// Applies a pin read from the log: it overrides every earlier pin from its offset on
    /// (the log's order is the order they were recorded, so the last word wins), unless an
    /// owner with a higher claim wrote before it (a zombie's pin: ignored). A pin without a
    /// claim always applies, as it did before claims.
    pub fn apply(&mut self, pin: Pin) {
        if self.ignores(pin.claim) {
            return;
        }
        self.claim = self.claim.max(pin.claim);
        let keep = self.pins.partition_point(|p| p.from < pin.from);
        self.pins.truncate(keep);
        self.pins.push(pin);
    }

    /// Whether a pin written under `claim` now would be a zombie's.
    pub fn ignores(&self, claim: u64) -> bool {
        claim != 0 && claim < self.claim
    }

    /// The claim a new owner takes: above every claim applied, and at least `now_ms`.
    pub fn next_claim(&self, now_ms: i64) -> u64 {
        claim_after(self.claim, now_ms)
    }

    /// The pins, oldest first.
    pub fn pins(&self) -> &[Pin] {
        &self.pins
    }

    /// The pin deciding `offset`: the last one from at or before it.
    pub fn covering(&self, offset: i64) -> Option<&Pin> {
        self.covering_index(offset).map(|i| &self.pins[i])
    }

    fn covering_index(&self, offset: i64) -> Option<usize> {
        self.pins.partition_point(|p| p.from <= offset).checked_sub(1)
    }

    /// Whether the pins reach back to `offset` (a scan of the log backwards can stop).
    pub fn reaches(&self, offset: i64) -> bool {
        self.pins.first().is_some_and(|p| p.from <= offset)
    }

    /// Drops the pins no offset from `offset` on can need (their claims still count).
    pub fn trim_before(&mut self, offset: i64) {
        let i = self.pins.partition_point(|p| p.from <= offset);
        self.pins.drain(..i.saturating_sub(1));
    }

    pub fn first(&self) -> Option<&Pin> {
        self.pins.first()
    }

    pub fn last(&self) -> Option<&Pin> {
        self.pins.last()
    }

    pub fn len(&self) -> usize {
        self.pins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
    }
}

/// A claim above `highest`, and at least `now_ms`.
pub fn claim_after(highest: u64, now_ms: i64) -> u64 {
    highest.saturating_add(1).max(u64::try_from(now_ms).unwrap_or(0))
}

/// What decides the next record of a partition.
#[derive(Debug)]
pub enum Pick<'a> {
    /// Decide with this epoch; nothing to record.
    Decide(&'a Arc<Epoch>),
    /// Record "from this offset, the live epoch" durably first, then call [`PartitionPins::pinned`].
    Record { from: i64 },
}

/// A partition's pins as its owner uses them.
#[derive(Debug)]
pub struct PartitionPins {
    /// What previous owners recorded; decides every offset below `horizon`.
    recorded: Chain,
    horizon: i64,
    /// The epoch deciding from the horizon on, once there is one.
    current: Option<Arc<Epoch>>,
    /// The offset after the last one decided, if any was.
    next: Option<i64>,
    /// When the pin `current` stands on was recorded, at the latest: its epoch's instant (a
    /// pin is written after its epoch is read), or the moment it was last written again.
    pinned_at_ms: i64,
    /// This owner's claim, written with each of its pins.
    claim: u64,
}

impl PartitionPins {
    /// A partition taken over with what previous owners recorded, whose high watermark was
    /// `horizon` at that moment: no earlier owner can have decided an offset at or above it.
    /// Its claim is `claim` ([`Chain::next_claim`]).
    pub fn taken_over(recorded: Chain, horizon: i64, claim: u64) -> Self {
        Self { recorded, horizon, current: None, next: None, pinned_at_ms: i64::MIN, claim }
    }

    pub fn claim(&self) -> u64 {
        self.claim
    }

    /// Picks the epoch for `offset`, given the whitelist in effect now.
    pub fn pick(&mut self, offset: i64, live: &Arc<Epoch>) -> Pick<'_> {
        if offset < self.horizon && !self.recorded.is_empty() {
            // Below the first recorded pin (its history is gone): the earliest epoch known,
            // which every later replay picks too.
            let i = self.recorded.covering_index(offset).unwrap_or(0);
            self.next = Some(offset + 1);
            return Pick::Decide(&self.recorded.pins[i].epoch);
        }
        if self.current.is_none() {
            // Past the horizon (or before any recorded pin): the last recorded epoch still
            // holds if it decides like the live one, and then needs no new pin.
            self.current = self.recorded.last().map(|p| p.epoch.clone());
            self.pinned_at_ms = self.current.as_ref().map_or(i64::MIN, |e| e.clock_ms);
            self.recorded = Chain::default();
            self.horizon = i64::MIN;
        }
        match &self.current {
            Some(e) if e.same_decisions(live) => {
                self.next = Some(offset + 1);
                Pick::Decide(e)
            }
            _ => Pick::Record { from: offset },
        }
    }

    /// The pin [`Pick::Record`] asked for is durable: decide from `from` on with `live`.
    pub fn pinned(&mut self, from: i64, live: Arc<Epoch>) {
        self.pinned_at_ms = live.clock_ms;
        self.current = Some(live);
        self.recorded = Chain::default();
        self.horizon = i64::MIN;
        self.next = Some(from + 1);
    }

    /// Where a pin for `live` would start if recorded ahead of the partition's next record
    /// (batched when the whitelist changes); `None` while it still replays, has decided
    /// nothing yet, or already decides like `live`.
    pub fn pin_ahead(&self, live: &Epoch) -> Option<i64> {
        let next = self.next?;
        if next < self.horizon || self.current.as_ref().is_some_and(|e| e.same_decisions(live)) {
            return None;
        }
        Some(next)
    }

    /// The pin recorded by [`Self::pin_ahead`] is durable.
    pub fn pinned_ahead(&mut self, live: Arc<Epoch>) {
        self.pinned_at_ms = live.clock_ms;
        self.current = Some(live);
        self.recorded = Chain::default();
        self.horizon = i64::MIN;
    }

    /// A pin to write again, ahead of the partition's next record, with the epoch deciding
    /// now: due once the one in use is `every_ms` old at `now_ms`, so that retention never
    /// deletes the decisions of a partition whose whitelist stays the same for days (a
    /// takeover would otherwise find no pin and decide its replay with a later whitelist).
    pub fn refresh_due(&self, now_ms: i64, every_ms: i64) -> Option<(i64, &Arc<Epoch>)> {
        let next = self.next?;
        let current = self.current.as_ref()?;
        (next >= self.horizon && now_ms.saturating_sub(self.pinned_at_ms) >= every_ms).then_some((next, current))
    }

    /// The pin [`Self::refresh_due`] asked for was written at `at_ms`.
    pub fn refreshed(&mut self, at_ms: i64) {
        self.pinned_at_ms = at_ms;
    }
}

/// A pin as stored in the decision log (one Kafka record per input partition and epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRecord {
    /// Format version of this record.
    pub v: u32,
    pub topic: String,
    pub partition: i32,
    pub from_offset: i64,
    /// The snapshot's fingerprint, hex, and where its content is in the snapshot log.
    pub snapshot: String,
    pub snapshot_offset: i64,
    /// The whitelist's own version number, for people reading the log.
    pub version: u64,
    pub clock_ms: i64,
    /// The writer's claim on the partition ([`Chain::apply`]); absent (0) from versions before
    /// claims.
    #[serde(default)]
    pub claim: u64,
}

pub const PIN_FORMAT: u32 = 1;

pub fn fingerprint_hex(f: u64) -> String {
    format!("{f:016x}")
}

pub fn parse_fingerprint(s: &str) -> Option<u64> {
    u64::from_str_radix(s, 16).ok()
}

#[cfg(test)]
#[path = "pinning_tests.rs"]
mod tests;
