//! The whitelist as the relay sees it: an immutable snapshot, swapped whole.
//!
//! Pure: parsing and lookup only. The wire format is the Config Mapper's
//! `GET /v1/whitelist` body, which is also the format of a local whitelist file.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

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
}

impl Snapshot {
    pub fn empty() -> Self {
        Self::default()
    }

    pub fn new(version: u64, entries: impl IntoIterator<Item = (String, Entry)>) -> Self {
        let entries = entries.into_iter().map(|(u, e)| (u.into_boxed_str(), e)).collect();
        Self { version, entries }
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
        Ok(Self { version: wire.version, entries })
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

pub fn parse_rfc3339_ms(s: &str) -> Result<i64, String> {
    let t = humantime::parse_rfc3339_weak(s).map_err(|e| e.to_string())?;
    let ms = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).map_err(|_| "too far in the future".to_string())?,
        Err(_) => return Err("before 1970".into()),
    };
    Ok(ms)
}

/// Wall-clock Unix milliseconds; read once per batch by the relay, never per record.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
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
    fn duplicate_users_merge() {
        let json = br#"{"version":1,"entries":[
            {"user":"U1","services":["a"],"expires_at":"2030-01-01T00:00:00Z"},
            {"user":"U1","services":["b"],"expires_at":"2031-01-01T00:00:00Z"}]}"#;
        let s = Snapshot::from_json(json).unwrap();
        assert_eq!(s.services_for("U1", 0).unwrap().len(), 2);
    }
}
