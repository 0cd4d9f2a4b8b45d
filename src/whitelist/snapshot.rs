//! The whitelist as the relay sees it: an immutable snapshot, swapped whole.
//!
//! Pure: parsing and lookup only. The wire format is the Config Mapper's
//! `GET /v1/whitelist` body, which is also the format of a local whitelist file.

use std::collections::HashMap;
use std::time::UNIX_EPOCH;

use crate::clock::parse_rfc3339_ms;

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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub services: Vec<Box<str>>,
    /// Unix milliseconds; the entry is dead from this instant on.
    pub expires_at_ms: i64,
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
        let mut expiries: Vec<i64> = entries.values().map(|e| e.expires_at_ms).collect();
        expiries.sort_unstable();
        expiries.dedup();
        Self { version, entries, expiries }
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let wire: WireSnapshot = serde_json::from_slice(bytes)?;
        let mut entries = Users::with_capacity_and_hasher(wire.entries.len(), Default::default());
        for (index, e) in wire.entries.into_iter().enumerate() {
            let fail = |reason: String| SnapshotError::Entry { index, user: e.user.clone(), reason };
            if e.user.is_empty() {
                return Err(fail("user is empty".into()));
            }
            let expires_at_ms =
                parse_rfc3339_ms(&e.expires_at).map_err(|err| fail(format!("expires_at {:?}: {err}", e.expires_at)))?;
            let services = e.services.iter().map(|s| s.as_str().into()).collect();
            // A user listed twice keeps the union of services and the later expiry: the safest
            // reading of a mapper that returned duplicates is the most inclusive one it stated.
            entries
                .entry(e.user.into_boxed_str())
                .and_modify(|old: &mut Entry| {
                    for s in &e.services {
                        if !old.services.iter().any(|o| **o == **s) {
                            old.services.push(s.as_str().into());
                        }
                    }
                    old.expires_at_ms = old.expires_at_ms.max(expires_at_ms);
                })
                .or_insert(Entry { services, expires_at_ms });
        }
        Ok(Self::indexed(wire.version, entries))
    }

    /// The wire format again, canonical (users and their services sorted), so that equal
    /// contents give equal bytes: what the decision log stores and [`Self::fingerprint`] hashes.
    pub fn to_json(&self) -> String {
        let entries = self.canonical_entries();
        serde_json::json!({ "version": self.version, "entries": entries }).to_string()
    }

    fn canonical_entries(&self) -> Vec<serde_json::Value> {
        let mut users: Vec<(&str, &Entry)> = self.entries.iter().map(|(u, e)| (&**u, e)).collect();
        users.sort_unstable_by_key(|(u, _)| *u);
        users
            .into_iter()
            .map(|(user, e)| {
                let mut services: Vec<&str> = e.services.iter().map(|s| &**s).collect();
                services.sort_unstable();
                // RFC 3339 ends at year 9999; anything later never expires either way.
                let ms = e.expires_at_ms.clamp(0, LAST_RFC3339_MS) as u64;
                let expires = UNIX_EPOCH + std::time::Duration::from_millis(ms);
                serde_json::json!({
                    "user": user,
                    "services": services,
                    "expires_at": humantime::format_rfc3339_millis(expires).to_string(),
                })
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

    /// The services `user` is under test for at `now_ms`; `None` if not whitelisted or expired.
    pub fn services_for(&self, user: &str, now_ms: i64) -> Option<&[Box<str>]> {
        self.entries.get(user)?.live_services(now_ms)
    }
}

impl Entry {
    pub fn live_services(&self, now_ms: i64) -> Option<&[Box<str>]> {
        (self.expires_at_ms > now_ms).then_some(self.services.as_slice())
    }
}

/// What a decision reads: the services a user is under test for. A whole [`Snapshot`] in
/// snapshot mode, one looked-up user ([`OneUser`]) in lookup mode.
pub trait Whitelist {
    fn services_for(&self, user: &str, now_ms: i64) -> Option<&[Box<str>]>;
}

impl<W: Whitelist + ?Sized> Whitelist for &W {
    fn services_for(&self, user: &str, now_ms: i64) -> Option<&[Box<str>]> {
        (**self).services_for(user, now_ms)
    }
}

impl Whitelist for Snapshot {
    fn services_for(&self, user: &str, now_ms: i64) -> Option<&[Box<str>]> {
        Snapshot::services_for(self, user, now_ms)
    }
}

/// The answer of a per-user lookup, for the one user whose subject it decides (`None`: not
/// whitelisted, or no answer to be had).
pub struct Answered(pub Option<std::sync::Arc<Entry>>);

impl Whitelist for Answered {
    fn services_for(&self, _user: &str, now_ms: i64) -> Option<&[Box<str>]> {
        self.0.as_deref()?.live_services(now_ms)
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
        assert_eq!(s.services_for("U1", now).unwrap().len(), 1);
        assert!(s.services_for("U2", now).is_none(), "expired entry must not match");
        assert!(s.services_for("U3", now).is_none());
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
        assert_eq!(back.services_for("U2", 0).map(<[_]>::len), Some(2));
        let c = Snapshot::new(3, [("U1".to_string(), Entry { services: vec!["payment".into()], expires_at_ms: 1 })]);
        assert_ne!(c.fingerprint(), a.fingerprint());
    }

    #[test]
    fn next_expiry_is_strictly_after() {
        let e = |ms| Entry { services: vec!["p".into()], expires_at_ms: ms };
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
        assert_eq!(s.services_for("U1", 0).unwrap().len(), 2);
    }
}
