//! Lookup mode's answers as a whitelist: every user a lookup answered as listed, with the
//! entry last answered. The relay decides from a [`Snapshot`] of it, pinned in the decision log
//! like a snapshot-mode whitelist, so a replay (after kill -9, or on the next owner of a
//! partition) decides each offset as it was first decided, although it asks another cache.
//!
//! Answers that say "not listed" are not kept: a user absent from the snapshot is production,
//! which is what such an answer decides. An answer that lapsed from the cache stays until the
//! next answer for that user says otherwise (the relay asks again before deciding with it, and
//! while the Config Mapper does not answer it is the last good answer, as a snapshot-mode
//! whitelist is kept through an outage); an entry whose placements all expired is dropped.
//! Only a change of what the snapshot holds moves its generation, so refreshes and repeated
//! answers cost no new pin and no new snapshot in the decision log.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use super::{Entry, Snapshot};

#[derive(Default)]
pub struct Answers {
    inner: Mutex<Inner>,
    /// A copy of `Inner::generation`, read without the lock once per batch.
    generation: AtomicU64,
}

#[derive(Default)]
struct Inner {
    /// Listed users and the entry last answered for each.
    users: HashMap<Box<str>, Arc<Entry>, foldhash::fast::RandomState>,
    generation: u64,
}

/// What the relay decides from: the listed answers at one generation.
pub struct Built {
    pub snapshot: Snapshot,
    /// Every answer recorded at or before this generation is reflected in `snapshot`.
    pub generation: u64,
}

impl Answers {
    /// Records an answer for `user`: `Some(entry)` listed, `None` not listed. Returns the
    /// generation it belongs to: a snapshot built at that generation or later reflects it.
    pub fn record(&self, user: &str, entry: Option<&Arc<Entry>>) -> u64 {
        let Ok(mut inner) = self.inner.lock() else { return u64::MAX };
        let changed = match entry {
            Some(entry) => match inner.users.get(user) {
                Some(held) if **held == **entry => false,
                _ => {
                    inner.users.insert(user.into(), entry.clone());
                    true
                }
            },
            None => inner.users.remove(user).is_some(),
        };
        if changed {
            inner.generation += 1;
            self.generation.store(inner.generation, Relaxed);
        }
        inner.generation
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    /// The listed answers, without the entries that decide nothing any more at `now_ms`.
    pub fn build(&self, now_ms: i64) -> Built {
        let Ok(mut inner) = self.inner.lock() else {
            return Built { snapshot: Snapshot::empty(), generation: u64::MAX };
        };
        inner.users.retain(|_, e| e.is_live(now_ms));
        let entries: Vec<(String, Entry)> = inner.users.iter().map(|(u, e)| (u.to_string(), Entry::clone(e))).collect();
        Built { snapshot: Snapshot::new(inner.generation, entries), generation: inner.generation }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.users.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(service: &str, expires_at_ms: i64) -> Arc<Entry> {
        Arc::new(Entry::new(vec![service.into()], expires_at_ms))
    }

    #[test]
    fn only_a_change_of_what_is_listed_moves_the_generation() {
        let a = Answers::default();
        assert_eq!(a.record("U9", None), 0, "a user never listed changes nothing");
        assert_eq!(a.record("U1", Some(&entry("payment", i64::MAX))), 1);
        assert_eq!(a.record("U1", Some(&entry("payment", i64::MAX))), 1, "the same answer again");
        assert_eq!(a.record("U1", Some(&entry("shipping", i64::MAX))), 2, "another entry");
        assert_eq!(a.record("U1", None), 3, "no longer listed");
        assert_eq!(a.generation(), 3);
        assert!(a.is_empty());
    }

    #[test]
    fn a_snapshot_holds_the_listed_answers_whose_entries_still_decide() {
        let a = Answers::default();
        a.record("U1", Some(&entry("payment", 1_000)));
        a.record("U2", Some(&entry("shipping", 2_000)));
        let built = a.build(0);
        assert_eq!((built.snapshot.len(), built.generation), (2, 2));
        let built = a.build(1_000);
        assert!(built.snapshot.entry("U1").is_none(), "its entry expired");
        assert!(built.snapshot.entry("U2").is_some());
        assert_eq!(built.generation, 2, "dropping what decides nothing is no change");
    }

    #[test]
    fn the_same_answers_build_the_same_fingerprint() {
        let (a, b) = (Answers::default(), Answers::default());
        for (user, svc) in [("U1", "payment"), ("U2", "shipping")] {
            a.record(user, Some(&entry(svc, i64::MAX)));
        }
        for (user, svc) in [("U2", "shipping"), ("U1", "payment")] {
            b.record(user, Some(&entry(svc, i64::MAX)));
        }
        assert_eq!(a.build(0).snapshot.fingerprint(), b.build(0).snapshot.fingerprint());
    }
}
