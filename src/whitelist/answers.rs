//! Lookup mode's answers as a whitelist: every user a lookup answered as listed, for as long as
//! that answer is served. The relay decides from a [`Snapshot`] of it, pinned in the decision
//! log like a snapshot-mode whitelist, so a replay (after kill -9, or on the next owner of a
//! partition) decides each offset as it was first decided, although it asks another cache.
//!
//! Answers that say "not listed" are not kept: a user absent from the snapshot is production,
//! which is what such an answer decides. Only a change of what the snapshot would hold moves
//! its generation, so a busy user's refreshes with the same answer cost no new pin.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{Entry, Snapshot};

#[derive(Default)]
pub struct Answers {
    inner: Mutex<Inner>,
    /// A copy of `Inner::generation`, read without the lock once per batch.
    generation: AtomicU64,
}

#[derive(Default)]
struct Inner {
    /// Listed users: their entry, and until when the cache serves it.
    users: HashMap<Box<str>, (Arc<Entry>, Instant), foldhash::fast::RandomState>,
    generation: u64,
}

/// What the relay decides from: the listed answers served at one instant.
pub struct Built {
    pub snapshot: Snapshot,
    /// Every answer recorded at or before this generation is reflected in `snapshot`.
    pub generation: u64,
    /// When one of its answers stops being served: the snapshot must be built again then.
    pub next_expiry: Option<Instant>,
}

impl Answers {
    /// Records the answer for `user` that the cache serves until `expires_at` (`None`: not
    /// listed, or no answer). Returns the generation it belongs to: a snapshot built at that
    /// generation or later reflects it.
    pub fn record(&self, user: &str, entry: Option<&Arc<Entry>>, expires_at: Instant, now: Instant) -> u64 {
        let Ok(mut inner) = self.inner.lock() else { return u64::MAX };
        let changed = match entry {
            Some(entry) => match inner.users.get_mut(user) {
                // Same entry, still served: a refresh; only how long it is served moves.
                Some((held, until)) if **held == **entry && *until > now => {
                    *until = expires_at;
                    false
                }
                _ => {
                    inner.users.insert(user.into(), (entry.clone(), expires_at));
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

    /// The listed answers still served at `now` (those that are not are forgotten).
    pub fn build(&self, now: Instant) -> Built {
        let Ok(mut inner) = self.inner.lock() else {
            return Built { snapshot: Snapshot::empty(), generation: u64::MAX, next_expiry: None };
        };
        inner.users.retain(|_, (_, until)| *until > now);
        let next_expiry = inner.users.values().map(|(_, until)| *until).min();
        let entries: Vec<(String, Entry)> =
            inner.users.iter().map(|(u, (e, _))| (u.to_string(), Entry::clone(e))).collect();
        Built { snapshot: Snapshot::new(inner.generation, entries), generation: inner.generation, next_expiry }
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
    use std::time::Duration;

    fn entry(service: &str) -> Arc<Entry> {
        Arc::new(Entry::new(vec![service.into()], i64::MAX))
    }

    #[test]
    fn only_a_change_of_what_is_listed_moves_the_generation() {
        let a = Answers::default();
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        assert_eq!(a.record("U9", None, later, now), 0, "a user never listed changes nothing");
        let g1 = a.record("U1", Some(&entry("payment")), later, now);
        assert_eq!(g1, 1);
        assert_eq!(a.record("U1", Some(&entry("payment")), later + Duration::from_secs(1), now), 1, "a refresh");
        assert_eq!(a.record("U1", Some(&entry("shipping")), later, now), 2, "another entry");
        assert_eq!(a.record("U1", None, later, now), 3, "no longer listed");
        assert_eq!(a.generation(), 3);
        assert!(a.is_empty());
    }

    #[test]
    fn a_snapshot_holds_what_is_served_and_says_when_it_changes() {
        let a = Answers::default();
        let now = Instant::now();
        a.record("U1", Some(&entry("payment")), now + Duration::from_secs(10), now);
        a.record("U2", Some(&entry("shipping")), now + Duration::from_secs(20), now);
        let built = a.build(now);
        assert_eq!(built.snapshot.len(), 2);
        assert_eq!(built.generation, 2);
        assert_eq!(built.next_expiry, Some(now + Duration::from_secs(10)));
        let built = a.build(now + Duration::from_secs(10));
        assert!(built.snapshot.entry("U1").is_none(), "no longer served");
        assert!(built.snapshot.entry("U2").is_some());
        // An answer served again after it lapsed is a change: the last build left it out.
        let g = a.record("U1", Some(&entry("payment")), now + Duration::from_secs(30), now + Duration::from_secs(11));
        assert_eq!(g, 3);
    }

    #[test]
    fn the_same_answers_build_the_same_fingerprint() {
        let (a, b) = (Answers::default(), Answers::default());
        let now = Instant::now();
        for (user, svc) in [("U1", "payment"), ("U2", "shipping")] {
            a.record(user, Some(&entry(svc)), now + Duration::from_secs(5), now);
        }
        for (user, svc) in [("U2", "shipping"), ("U1", "payment")] {
            b.record(user, Some(&entry(svc)), now + Duration::from_secs(9), now);
        }
        assert_eq!(a.build(now).snapshot.fingerprint(), b.build(now).snapshot.fingerprint());
    }
}
