//! The whitelist as the relay sees it: an immutable snapshot, swapped whole.
//!
//! Pure: parsing and lookup only. The wire format is the Config Mapper's
//! `GET /v1/whitelist` body, which is also the format of a local whitelist file.

use std::collections::HashMap;
use std::time::UNIX_EPOCH;

use crate::clock::parse_rfc3339_ms;
use crate::environment::{self, Env};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("whitelist is not valid JSON of the form {{\"version\": N, \"entries\": [...]}}: {0}")]
    Json(#[from] serde_json::Error),
    #[error("whitelist entry {index} (user {user:?}): {reason}")]
    Entry { index: usize, user: String, reason: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSnapshot {
    version: u64,
    entries: Vec<WireEntry>,
}

#[derive(Debug, Deserialize)]
struct WireEntry {
    user: String,
    services: Vec<String>,
    /// RFC 3339, e.g. "2026-11-27T15:00:00Z".
    expires_at: String,
    /// Absent: the default environment (every Config Mapper from before environments).
    #[serde(default)]
    env: Option<String>,
}

/// A user's services in one environment, until an expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub env: Env,
    pub services: Vec<Box<str>>,
    /// Unix milliseconds; the placement is dead from this instant on.
    pub expires_at_ms: i64,
}

impl Placement {
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.expires_at_ms > now_ms
    }

    fn holds(&self, service: &str) -> bool {
        self.services.iter().any(|s| **s == *service)
    }
}

/// A user's whitelist entry: where each of their services under test runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Sorted by environment, at most one per environment.
    pub placements: Vec<Placement>,
}

impl Entry {
    /// Services in the default environment (the only form before environments).
    pub fn new(services: Vec<Box<str>>, expires_at_ms: i64) -> Self {
        Self::placed(environment::DEFAULT.into(), services, expires_at_ms)
    }

    pub fn placed(env: Env, services: Vec<Box<str>>, expires_at_ms: i64) -> Self {
        Self { placements: vec![Placement { env, services, expires_at_ms }] }
    }

    /// Adds a placement; one in an environment already present merges with it (the union of
    /// services and the later expiry: the most inclusive reading of a mapper that repeated
    /// itself).
    pub fn add(&mut self, p: Placement) {
        match self.placements.binary_search_by(|q| q.env.cmp(&p.env)) {
            Ok(i) => {
                let old = &mut self.placements[i];
                for s in p.services {
                    if !old.holds(&s) {
                        old.services.push(s);
                    }
                }
                old.expires_at_ms = old.expires_at_ms.max(p.expires_at_ms);
            }
            Err(i) => self.placements.insert(i, p),
        }
    }

    /// The live placement `service` runs in at `now_ms`, if any. A (user, service) is in one
    /// environment at a time; should a whitelist hold it in two, the first by name decides,
    /// so every reader of that whitelist picks the same one.
    pub fn placement_of(&self, service: &str, now_ms: i64) -> Option<&Placement> {
        self.placements.iter().find(|p| p.is_live(now_ms) && p.holds(service))
    }

    /// When the last placement expires.
    pub fn expires_at_ms(&self) -> i64 {
        self.placements.iter().map(|p| p.expires_at_ms).max().unwrap_or(i64::MIN)
    }

    pub fn is_live(&self, now_ms: i64) -> bool {
        self.placements.iter().any(|p| p.is_live(now_ms))
    }

    /// Every service of a live placement, with its environment.
    pub fn live_services(&self, now_ms: i64) -> impl Iterator<Item = (&str, &str)> {
        self.placements
            .iter()
            .filter(move |p| p.is_live(now_ms))
            .flat_map(|p| p.services.iter().map(move |s| (&**s, &*p.env)))
    }
}

/// Keys come from the trusted whitelist; event-controlled input only looks up. A fast seeded
/// hash is therefore safe here, and it is most of a decision's cost.
type Users = HashMap<Box<str>, Entry, foldhash::fast::RandomState>;

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    version: u64,
    entries: Users,
    /// Every distinct expiry, ascending: when the decisions this snapshot gives next change.
    expiries: Vec<i64>,
    /// Environments beyond `bridge.max_envs` whose placements [`Self::limit_envs`] removed.
    refused: Vec<Env>,
}

impl Snapshot {
    pub fn empty() -> Self {
        Self::default()
    }

    pub fn new(version: u64, entries: impl IntoIterator<Item = (String, Entry)>) -> Self {
        let entries = entries.into_iter().map(|(u, e)| (u.into_boxed_str(), e)).collect();
        Self::indexed(version, entries)
    }

    fn indexed(version: u64, entries: Users) -> Self {
        let mut expiries: Vec<i64> =
            entries.values().flat_map(|e| e.placements.iter().map(|p| p.expires_at_ms)).collect();
        expiries.sort_unstable();
        expiries.dedup();
        Self { version, entries, expiries, refused: Vec::new() }
    }

    /// At most `max` environments besides the default one: the first `max` by name keep their
    /// placements, the others' are removed (their users' events stay in production) and
    /// listed by [`Self::refused_envs`]. Never merged into another environment. By name, so
    /// every instance reading this whitelist refuses the same ones, and a pinned snapshot
    /// (stored as limited) replays alike.
    pub fn limit_envs(mut self, max: usize) -> Self {
        let mut envs: Vec<Env> = (self.entries.values())
            .flat_map(|e| e.placements.iter().map(|p| p.env.clone()))
            .filter(|e| !environment::is_default(e))
            .collect();
        envs.sort_unstable();
        envs.dedup();
        if envs.len() <= max {
            return self;
        }
        let refused = envs.split_off(max);
        for entry in self.entries.values_mut() {
            entry.placements.retain(|p| !refused.contains(&p.env));
        }
        self.entries.retain(|_, e| !e.placements.is_empty());
        let mut limited = Self::indexed(self.version, self.entries);
        limited.refused = refused;
        limited
    }

    /// The environments [`Self::limit_envs`] refused.
    pub fn refused_envs(&self) -> &[Env] {
        &self.refused
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let wire: WireSnapshot = serde_json::from_slice(bytes)?;
        let mut entries = Users::with_capacity_and_hasher(wire.entries.len(), Default::default());
        // Environments are few: every placement of one shares its name.
        let mut envs: HashMap<String, Env> = HashMap::new();
        for (index, e) in wire.entries.into_iter().enumerate() {
            let fail = |reason: String| SnapshotError::Entry { index, user: e.user.clone(), reason };
            if e.user.is_empty() {
                return Err(fail("user is empty".into()));
            }
            let expires_at_ms =
                parse_rfc3339_ms(&e.expires_at).map_err(|err| fail(format!("expires_at {:?}: {err}", e.expires_at)))?;
            let env_name = e.env.as_deref().unwrap_or(environment::DEFAULT);
            environment::check(env_name).map_err(|r| fail(format!("env: {r}")))?;
            let env = envs.entry(env_name.to_owned()).or_insert_with(|| env_name.into()).clone();
            let services = e.services.iter().map(|s| s.as_str().into()).collect();
            let placement = Placement { env, services, expires_at_ms };
            match entries.get_mut(e.user.as_str()) {
                Some(entry) => entry.add(placement),
                None => {
                    entries.insert(e.user.into_boxed_str(), Entry { placements: vec![placement] });
                }
            }
        }
        Ok(Self::indexed(wire.version, entries))
    }

    /// The wire format again, canonical (users, their environments and services sorted), so
    /// that equal contents give equal bytes: what the decision log stores and
    /// [`Self::fingerprint`] hashes. The default environment is left unnamed, so a whitelist
    /// without environments has the bytes and fingerprint it had before they existed.
    pub fn to_json(&self) -> String {
        let entries = self.canonical_entries();
        serde_json::json!({ "version": self.version, "entries": entries }).to_string()
    }

    fn canonical_entries(&self) -> Vec<serde_json::Value> {
        let mut users: Vec<(&str, &Entry)> = self.entries.iter().map(|(u, e)| (&**u, e)).collect();
        users.sort_unstable_by_key(|(u, _)| *u);
        users
            .into_iter()
            .flat_map(|(user, e)| e.placements.iter().map(move |p| (user, p)))
            .map(|(user, p)| {
                let mut services: Vec<&str> = p.services.iter().map(|s| &**s).collect();
                services.sort_unstable();
                // RFC 3339 ends at year 9999; anything later never expires either way.
                let ms = p.expires_at_ms.clamp(0, LAST_RFC3339_MS) as u64;
                let expires = UNIX_EPOCH + std::time::Duration::from_millis(ms);
                let mut v = serde_json::json!({
                    "user": user,
                    "services": services,
                    "expires_at": humantime::format_rfc3339_millis(expires).to_string(),
                });
                if !environment::is_default(&p.env) {
                    v["env"] = serde_json::Value::from(&*p.env);
                }
                v
            })
            .collect()
    }

    /// A stable 64-bit hash of the content (not the version): two snapshots with the same
    /// fingerprint give every event the same decision at the same instant.
    pub fn fingerprint(&self) -> u64 {
        let entries = serde_json::Value::Array(self.canonical_entries()).to_string();
        fnv1a(entries.as_bytes())
    }

    /// The first expiry strictly after `t_ms` (`i64::MAX` if none): until then, deciding at
    /// `t_ms` or at any later instant gives the same answers.
    pub fn next_expiry_after(&self, t_ms: i64) -> i64 {
        let i = self.expiries.partition_point(|e| *e <= t_ms);
        self.expiries.get(i).copied().unwrap_or(i64::MAX)
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// How many users it lists.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `user`'s entry, live or expired.
    pub fn entry(&self, user: &str) -> Option<&Entry> {
        self.entries.get(user)
    }

    /// The environments with a live placement at `now_ms`, sorted.
    pub fn live_envs(&self, now_ms: i64) -> Vec<Env> {
        let mut envs: Vec<Env> = self
            .entries
            .values()
            .flat_map(|e| e.placements.iter().filter(|p| p.is_live(now_ms)).map(|p| p.env.clone()))
            .collect();
        envs.sort_unstable();
        envs.dedup();
        envs
    }
}

/// What a decision reads: the entry of the user it decides. A whole [`Snapshot`] in snapshot
/// mode, one looked-up user ([`Answered`]) in lookup mode.
pub trait Whitelist {
    fn entry(&self, user: &str) -> Option<&Entry>;
}

impl<W: Whitelist + ?Sized> Whitelist for &W {
    fn entry(&self, user: &str) -> Option<&Entry> {
        (**self).entry(user)
    }
}

impl Whitelist for Snapshot {
    fn entry(&self, user: &str) -> Option<&Entry> {
        Snapshot::entry(self, user)
    }
}

/// The answer of a per-user lookup, for the one user whose subject it decides (`None`: not
/// whitelisted, or no answer to be had).
pub struct Answered(pub Option<std::sync::Arc<Entry>>);

impl Whitelist for Answered {
    fn entry(&self, _user: &str) -> Option<&Entry> {
        self.0.as_deref()
    }
}

/// 9999-12-31T23:59:59.999Z.
const LAST_RFC3339_MS: i64 = 253_402_300_799_999;

/// FNV-1a: stable across builds and platforms, unlike the standard library's hashers.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wire_format_and_honours_expiry() {
        let json = br#"{"version":7,"entries":[
            {"user":"U1","services":["payment"],"expires_at":"2030-01-01T00:00:00Z"},
            {"user":"U2","services":["payment","shipping"],"expires_at":"2000-01-01T00:00:00Z"}]}"#;
        let s = Snapshot::from_json(json).unwrap();
        assert_eq!(s.version(), 7);
        assert_eq!(s.len(), 2);
        let now = parse_rfc3339_ms("2026-11-27T00:00:00Z").unwrap();
        assert_eq!(s.entry("U1").unwrap().live_services(now).count(), 1);
        assert!(s.entry("U2").unwrap().placement_of("payment", now).is_none(), "expired entry must not match");
        assert!(s.entry("U3").is_none());
    }

    #[test]
    fn bad_entries_name_the_entry() {
        let json = br#"{"version":1,"entries":[{"user":"U1","services":[],"expires_at":"soon"}]}"#;
        let err = Snapshot::from_json(json).unwrap_err().to_string();
        assert!(err.contains("entry 0") && err.contains("U1") && err.contains("expires_at"), "{err}");
        assert!(Snapshot::from_json(b"{}").is_err());
        assert!(Snapshot::from_json(br#"{"version":1,"entries":[],"extra":1}"#).is_err());
    }

    #[test]
    fn canonical_json_round_trips_and_fingerprints_content() {
        let a = br#"{"version":3,"entries":[
            {"user":"U2","services":["shipping","payment"],"expires_at":"2030-01-01T00:00:00.250Z"},
            {"user":"U1","services":["payment"],"expires_at":"2031-01-01T00:00:00Z"}]}"#;
        let b = br#"{"version":9,"entries":[
            {"user":"U1","services":["payment"],"expires_at":"2031-01-01T00:00:00Z"},
            {"user":"U2","services":["payment","shipping"],"expires_at":"2030-01-01T00:00:00.250Z"}]}"#;
        let (a, b) = (Snapshot::from_json(a).unwrap(), Snapshot::from_json(b).unwrap());
        assert_eq!(a.fingerprint(), b.fingerprint(), "same content, other order and version");
        let back = Snapshot::from_json(a.to_json().as_bytes()).unwrap();
        assert_eq!(back.version(), 3);
        assert_eq!(back.fingerprint(), a.fingerprint());
        assert_eq!(back.to_json(), a.to_json());
        assert_eq!(back.entry("U2").unwrap().live_services(0).count(), 2);
        let c = Snapshot::new(3, [("U1".to_string(), Entry::new(vec!["payment".into()], 1))]);
        assert_ne!(c.fingerprint(), a.fingerprint());
    }

    #[test]
    fn next_expiry_is_strictly_after() {
        let e = |ms| Entry::new(vec!["p".into()], ms);
        let s = Snapshot::new(1, [("a".into(), e(10)), ("b".into(), e(20)), ("c".into(), e(20))]);
        assert_eq!(s.next_expiry_after(0), 10);
        assert_eq!(s.next_expiry_after(10), 20);
        assert_eq!(s.next_expiry_after(20), i64::MAX);
        assert_eq!(Snapshot::empty().next_expiry_after(5), i64::MAX);
    }

    #[test]
    fn duplicate_users_merge() {
        let json = br#"{"version":1,"entries":[
            {"user":"U1","services":["a"],"expires_at":"2030-01-01T00:00:00Z"},
            {"user":"U1","services":["b"],"expires_at":"2031-01-01T00:00:00Z"}]}"#;
        let s = Snapshot::from_json(json).unwrap();
        assert_eq!(s.entry("U1").unwrap().live_services(0).count(), 2);
    }

    #[test]
    fn placements_carry_environments() {
        let json = br#"{"version":4,"entries":[
            {"user":"U1","services":["payment"],"expires_at":"2030-01-01T00:00:00Z","env":"pr-42"},
            {"user":"U1","services":["shipping"],"expires_at":"2031-01-01T00:00:00Z"},
            {"user":"U2","services":["payment"],"expires_at":"2001-01-01T00:00:00Z","env":"pr-7"},
            {"user":"U2","services":["payment"],"expires_at":"2030-01-01T00:00:00Z","env":"pr-9"}]}"#;
        let s = Snapshot::from_json(json).unwrap();
        let now = parse_rfc3339_ms("2026-11-27T00:00:00Z").unwrap();
        let u1 = s.entry("U1").unwrap();
        assert_eq!(&*u1.placement_of("payment", now).unwrap().env, "pr-42");
        assert_eq!(&*u1.placement_of("shipping", now).unwrap().env, "rush");
        assert_eq!(&*s.entry("U2").unwrap().placement_of("payment", now).unwrap().env, "pr-9", "the live one");
        assert_eq!(s.live_envs(now).iter().map(|e| &**e).collect::<Vec<_>>(), ["pr-42", "pr-9", "rush"]);
        let back = Snapshot::from_json(s.to_json().as_bytes()).unwrap();
        assert_eq!(back.fingerprint(), s.fingerprint());
        assert_eq!(&*back.entry("U1").unwrap().placement_of("payment", now).unwrap().env, "pr-42");
        // The default environment is left unnamed: a whitelist without environments keeps the
        // fingerprint (and so the decision history) it had before they existed.
        let plain = br#"{"version":1,"entries":[{"user":"U1","services":["a"],"expires_at":"2030-01-01T00:00:00Z"}]}"#;
        let named = br#"{"version":1,"entries":[{"user":"U1","services":["a"],"expires_at":"2030-01-01T00:00:00Z","env":"rush"}]}"#;
        let (plain, named) = (Snapshot::from_json(plain).unwrap(), Snapshot::from_json(named).unwrap());
        assert_eq!(plain.to_json(), named.to_json());
        assert!(!plain.to_json().contains("env"));
        let moved = br#"{"version":1,"entries":[{"user":"U1","services":["a"],"expires_at":"2030-01-01T00:00:00Z","env":"pr-1"}]}"#;
        assert_ne!(Snapshot::from_json(moved).unwrap().fingerprint(), plain.fingerprint());
        let bad = br#"{"version":1,"entries":[{"user":"U1","services":["a"],"expires_at":"2030-01-01T00:00:00Z","env":"PR_1"}]}"#;
        let err = Snapshot::from_json(bad).unwrap_err().to_string();
        assert!(err.contains("entry 0") && err.contains("env") && err.contains("PR_1"), "{err}");
    }

    #[test]
    fn environments_beyond_the_limit_are_refused_never_merged() {
        let json = br#"{"version":1,"entries":[
            {"user":"U1","services":["payment"],"expires_at":"2030-01-01T00:00:00Z","env":"pr-3"},
            {"user":"U1","services":["shipping"],"expires_at":"2030-01-01T00:00:00Z","env":"pr-1"},
            {"user":"U2","services":["payment"],"expires_at":"2030-01-01T00:00:00Z","env":"pr-2"},
            {"user":"U3","services":["payment"],"expires_at":"2030-01-01T00:00:00Z"}]}"#;
        let s = Snapshot::from_json(json).unwrap().limit_envs(2);
        assert_eq!(s.refused_envs().iter().map(|e| &**e).collect::<Vec<_>>(), ["pr-3"]);
        let u1 = s.entry("U1").unwrap();
        assert!(u1.placement_of("payment", 0).is_none(), "refused, not moved elsewhere");
        assert_eq!(&*u1.placement_of("shipping", 0).unwrap().env, "pr-1");
        assert_eq!(&*s.entry("U3").unwrap().placement_of("payment", 0).unwrap().env, "rush", "the default is free");
        assert!(!s.to_json().contains("pr-3"), "what is pinned is the limited whitelist");
        let all = Snapshot::from_json(json).unwrap().limit_envs(3);
        assert!(all.refused_envs().is_empty());
    }

    #[test]
    fn a_service_held_in_two_environments_is_decided_by_the_first_by_name() {
        let json = br#"{"version":1,"entries":[
            {"user":"U1","services":["payment"],"expires_at":"2030-01-01T00:00:00Z","env":"pr-9"},
            {"user":"U1","services":["payment"],"expires_at":"2030-01-01T00:00:00Z","env":"pr-10"}]}"#;
        let s = Snapshot::from_json(json).unwrap();
        assert_eq!(&*s.entry("U1").unwrap().placement_of("payment", 0).unwrap().env, "pr-10");
    }
}
