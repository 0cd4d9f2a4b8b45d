//! Ordered offset tracking: an input offset becomes committable only when every output of that
//! record, and of every earlier record of its partition, is acknowledged.
//!
//! The consumer thread calls [`Tracker::begin`] before producing a record's outputs; producer
//! delivery callbacks call [`Tracker::ack`]. Each in-flight record is identified to librdkafka
//! by a `usize` opaque (partition slot and offset), so a delivery costs no allocation.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

const OFFSET_BITS: u32 = 48;
const OFFSET_MASK: usize = (1 << OFFSET_BITS) - 1;
/// Slots are recycled modulo this; a stale ack is also checked against the pending offsets.
const SLOTS: u32 = 1 << (usize::BITS - OFFSET_BITS);

pub use crate::config::PartitionKey;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub key: PartitionKey,
    pub offset: i64,
    pub class: crate::kafka::ErrorClass,
    pub reason: String,
}

#[derive(Debug, Default)]
struct Track {
    slot: u32,
    /// (offset, outputs not yet acknowledged, input bytes), in offset order.
    pending: VecDeque<(i64, u32, u32)>,
    /// Next offset to commit (Kafka's convention: last done + 1); `None` until one is done.
    done_up_to: Option<i64>,
    committed: Option<i64>,
    failed: bool,
}

#[derive(Debug, Default)]
struct Inner {
    tracks: HashMap<PartitionKey, Track>,
    by_slot: HashMap<u32, PartitionKey>,
    next_slot: u32,
    in_flight: usize,
    in_flight_bytes: usize,
    failure: Option<Failure>,
    /// What the waiter in [`Tracker::wait_below`] waits for: an acknowledgement wakes it only
    /// once the load is below this, not on every delivery (which at 100,000 deliveries a second
    /// kept the relay thread waking and fighting the delivery thread for the lock).
    wake_below: Option<Load>,
}

/// What is in flight: input records read and not fully acknowledged, and their bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    pub records: usize,
    pub bytes: usize,
}

#[derive(Debug, Default)]
pub struct Tracker {
    inner: Mutex<Inner>,
    progressed: Condvar,
    /// `in_flight_bytes`, for the poll loop to read per record without the lock.
    bytes: AtomicUsize,
}

pub fn opaque(slot: u32, offset: i64) -> usize {
    ((slot as usize) << OFFSET_BITS) | (offset as usize & OFFSET_MASK)
}

fn split(opaque: usize) -> (u32, i64) {
    ((opaque >> OFFSET_BITS) as u32, (opaque & OFFSET_MASK) as i64)
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a thread panicked mid-update; the counts are still the best
        // information there is, and refusing them would stop commits (not lose data).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `offset` of `key` (`bytes` of input) with `outputs` outputs to wait for;
    /// returns its opaque. Offsets of one partition must be begun in increasing order.
    pub fn begin(&self, key: PartitionKey, offset: i64, outputs: u32, bytes: usize) -> usize {
        let mut g = self.lock();
        let inner = &mut *g;
        let track = match inner.tracks.get_mut(&key) {
            Some(t) => t,
            None => {
                // Skip slots still owned by a live partition (long-lived assignments under
                // cooperative rebalancing can outlast a full turn of the counter).
                for _ in 0..SLOTS {
                    if !inner.by_slot.contains_key(&inner.next_slot) {
                        break;
                    }
                    inner.next_slot = (inner.next_slot + 1) % SLOTS;
                }
                let slot = inner.next_slot;
                inner.next_slot = (inner.next_slot + 1) % SLOTS;
                inner.by_slot.insert(slot, key);
                inner.tracks.entry(key).or_insert(Track { slot, ..Track::default() })
            }
        };
        debug_assert!(
            track.pending.back().is_none_or(|p| p.0 < offset) && track.done_up_to.is_none_or(|d| d <= offset),
            "offsets of {key:?} begun out of order: {offset} after {:?} / done up to {:?}",
            track.pending.back(),
            track.done_up_to
        );
        let slot = track.slot;
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        if outputs == 0 && track.pending.is_empty() {
            track.done_up_to = Some(offset + 1);
        } else {
            track.pending.push_back((offset, outputs, bytes));
            inner.in_flight += 1;
            inner.in_flight_bytes += bytes as usize;
            self.bytes.store(inner.in_flight_bytes, Relaxed);
        }
        opaque(slot, offset)
    }

    /// One output of the record behind `opaque` is acknowledged.
    pub fn ack(&self, opaque: usize) {
        let (slot, offset) = split(opaque);
        let mut g = self.lock();
        let inner = &mut *g;
        let Some(key) = inner.by_slot.get(&slot) else { return };
        let Some(track) = inner.tracks.get_mut(key) else { return };
        let Ok(i) = track.pending.binary_search_by_key(&offset, |p| p.0 & OFFSET_MASK as i64) else {
            return;
        };
        let remaining = &mut track.pending[i].1;
        *remaining = remaining.saturating_sub(1);
        let (mut released, mut bytes) = (0, 0);
        while let Some(&(o, 0, b)) = track.pending.front() {
            track.pending.pop_front();
            if !track.failed {
                track.done_up_to = Some(o + 1);
            }
            released += 1;
            bytes += b as usize;
        }
        if released > 0 {
            inner.in_flight -= released;
            inner.in_flight_bytes -= bytes;
            self.bytes.store(inner.in_flight_bytes, Relaxed);
            if inner.wake_below.is_some_and(|w| inner.in_flight < w.records && inner.in_flight_bytes < w.bytes) {
                inner.wake_below = None;
                self.progressed.notify_all();
            }
        }
    }

    /// An output of the record behind `opaque` failed for good: nothing at or after it in that
    /// partition may be committed, and the relay must stop. Returns whether this is the first
    /// failure (the one [`Tracker::failure`] reports), so an outage is logged once, not per record.
    pub fn fail(&self, opaque: usize, class: crate::kafka::ErrorClass, reason: String) -> bool {
        let (slot, offset) = split(opaque);
        let mut g = self.lock();
        let inner = &mut *g;
        let mut first = false;
        if let Some(key) = inner.by_slot.get(&slot).copied() {
            if let Some(track) = inner.tracks.get_mut(&key) {
                // The failed record is still pending, so `done_up_to` is already before it;
                // freezing keeps it there.
                track.failed = true;
            }
            if inner.failure.is_none() {
                inner.failure = Some(Failure { key, offset, class, reason });
                first = true;
            }
        }
        self.progressed.notify_all();
        first
    }

    /// The input partition and offset behind `opaque`, while it is still waiting for outputs.
    pub fn locate(&self, opaque: usize) -> Option<(PartitionKey, i64)> {
        let (slot, offset) = split(opaque);
        let g = self.lock();
        let key = *g.by_slot.get(&slot)?;
        let track = g.tracks.get(&key)?;
        let i = track.pending.binary_search_by_key(&offset, |p| p.0 & OFFSET_MASK as i64).ok()?;
        Some((key, track.pending[i].0))
    }

    pub fn failure(&self) -> Option<Failure> {
        self.lock().failure.clone()
    }

    /// Bytes in flight as of the last change, without the lock.
    pub fn bytes_in_flight(&self) -> usize {
        self.bytes.load(Relaxed)
    }

    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Records and input bytes in flight.
    pub fn load(&self) -> Load {
        let g = self.lock();
        Load { records: g.in_flight, bytes: g.in_flight_bytes }
    }

    /// Waits until the load is below `limit` in records and in bytes, a failure is recorded,
    /// or `timeout`. One thread waits at a time (the poll loop of this tracker's direction).
    pub fn wait_below(&self, limit: Load, timeout: Duration) -> Load {
        let mut g = self.lock();
        g.wake_below = Some(limit);
        let (mut g, _) = self
            .progressed
            .wait_timeout_while(g, timeout, |i| {
                (i.in_flight >= limit.records || i.in_flight_bytes >= limit.bytes) && i.failure.is_none()
            })
            .unwrap_or_else(|p| p.into_inner());
        g.wake_below = None;
        Load { records: g.in_flight, bytes: g.in_flight_bytes }
    }

    /// Offsets that are done but not yet committed, for `keys` (all partitions when `None`).
    /// They are marked committed; call [`Tracker::uncommit`] if the commit fails. With `again`,
    /// offsets already marked are included too: an asynchronous commit may still be in flight
    /// or have failed unseen, and a hand-over must not rely on it.
    pub fn take_committable(&self, keys: Option<&[PartitionKey]>, again: bool) -> Vec<(PartitionKey, i64)> {
        let mut g = self.lock();
        let mut out = Vec::new();
        for (key, t) in g.tracks.iter_mut() {
            if keys.is_some_and(|ks| !ks.contains(key)) {
                continue;
            }
            if let Some(next) = t.done_up_to {
                if again || t.committed != Some(next) {
                    t.committed = Some(next);
                    out.push((*key, next));
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// A commit of these offsets failed: offer them again next time.
    pub fn uncommit(&self, offsets: &[(PartitionKey, i64)]) {
        let mut g = self.lock();
        for (key, off) in offsets {
            if let Some(t) = g.tracks.get_mut(key) {
                if t.committed == Some(*off) {
                    t.committed = None;
                }
            }
        }
    }

    /// Forgets everything: an aborted transaction undid what was in flight and done.
    pub fn reset(&self) {
        let mut g = self.lock();
        *g = Inner { next_slot: g.next_slot, ..Inner::default() };
        self.bytes.store(0, Relaxed);
        self.progressed.notify_all();
    }

    /// Records of `key` still waiting for outputs.
    pub fn pending(&self, key: PartitionKey) -> usize {
        self.lock().tracks.get(&key).map_or(0, |t| t.pending.len())
    }

    /// Forgets partitions this instance no longer owns (after a revoke). Their pending
    /// records no longer count against the in-flight bound.
    pub fn remove(&self, keys: &[PartitionKey]) {
        let mut g = self.lock();
        for key in keys {
            if let Some(t) = g.tracks.remove(key) {
                g.by_slot.remove(&t.slot);
                g.in_flight -= t.pending.len();
                g.in_flight_bytes -= t.pending.iter().map(|p| p.2 as usize).sum::<usize>();
            }
        }
        self.bytes.store(g.in_flight_bytes, Relaxed);
        self.progressed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: PartitionKey = (0, 3);

    #[test]
    fn commits_only_contiguous_fully_acked_prefix() {
        let t = Tracker::new();
        let a = t.begin(P, 10, 2, 0);
        let b = t.begin(P, 11, 1, 0);
        let c = t.begin(P, 15, 2, 0);
        assert_eq!(t.in_flight(), 3);
        t.ack(b);
        t.ack(c);
        t.ack(c);
        assert!(t.take_committable(None, false).is_empty(), "10 still has an output outstanding");
        t.ack(a);
        assert!(t.take_committable(None, false).is_empty(), "10 has two outputs");
        t.ack(a);
        assert_eq!(t.take_committable(None, false), vec![(P, 16)]);
        assert_eq!(t.in_flight(), 0);
        assert!(t.take_committable(None, false).is_empty(), "already committed");
    }

    #[test]
    fn failure_freezes_the_partition() {
        let t = Tracker::new();
        let a = t.begin(P, 1, 1, 0);
        let b = t.begin(P, 2, 1, 0);
        let c = t.begin(P, 3, 1, 0);
        t.ack(a);
        assert!(t.fail(b, crate::kafka::ErrorClass::Fatal, "boom".into()));
        t.ack(b);
        t.ack(c);
        assert_eq!(t.take_committable(None, false), vec![(P, 2)]);
        assert_eq!(t.failure().unwrap().offset, 2);
    }

    #[test]
    fn partitions_are_independent_and_removable() {
        let t = Tracker::new();
        let q: PartitionKey = (1, 0);
        let a = t.begin(P, 5, 1, 0);
        let _b = t.begin(q, 7, 1, 0);
        t.ack(a);
        assert_eq!(t.take_committable(Some(&[P]), false), vec![(P, 6)]);
        t.remove(&[q]);
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.pending(q), 0);
    }

    #[test]
    fn uncommit_offers_again_and_stale_acks_are_ignored() {
        let t = Tracker::new();
        let a = t.begin(P, 1, 1, 0);
        t.ack(a);
        let taken = t.take_committable(None, false);
        t.uncommit(&taken);
        assert_eq!(t.take_committable(None, false), taken);
        assert!(t.take_committable(None, false).is_empty());
        assert_eq!(t.take_committable(None, true), taken, "a hand-over commits again");
        t.ack(a);
        t.ack(opaque(999, 1));
        assert_eq!(t.in_flight(), 0);
    }

    const NO_BYTES_LIMIT: usize = usize::MAX;

    #[test]
    fn wait_below_wakes_on_ack() {
        let t = std::sync::Arc::new(Tracker::new());
        let a = t.begin(P, 1, 1, 100);
        let t2 = t.clone();
        let h = std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let load = t2.wait_below(Load { records: 1, bytes: NO_BYTES_LIMIT }, Duration::from_secs(10));
            (load, started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(20));
        t.ack(a);
        let (load, waited) = h.join().unwrap();
        assert_eq!(load, Load { records: 0, bytes: 0 });
        // Without the notify it would return only at its 10 s timeout.
        assert!(waited < Duration::from_secs(5), "woke after {waited:?}");
    }

    #[test]
    fn bytes_in_flight_are_counted_and_released() {
        let t = Tracker::new();
        let a = t.begin(P, 1, 2, 1000);
        let b = t.begin(P, 2, 1, 500);
        let _c = t.begin((1, 0), 9, 1, 70);
        assert_eq!(t.load(), Load { records: 3, bytes: 1570 });
        t.ack(b);
        assert_eq!(t.load().bytes, 1570, "2 waits behind 1");
        t.ack(a);
        t.ack(a);
        assert_eq!(t.load(), Load { records: 1, bytes: 70 });
        let limit = Load { records: 100, bytes: 50 };
        assert_eq!(t.wait_below(limit, Duration::from_millis(1)).bytes, 70, "still above the byte bound");
        t.remove(&[(1, 0)]);
        assert_eq!(t.load(), Load { records: 0, bytes: 0 });
    }
}
