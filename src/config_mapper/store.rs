//! The Config Mapper's database: whitelist entries and the append-only audit, in SQLite.
//!
//! Every change and its audit record are written in one transaction: if the audit cannot be
//! written, the change does not happen. Expired entries stay in the table (they are history)
//! but are filtered out of every read at their expiry.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::clock::{format_rfc3339_ms, now_ms};
pub use crate::whitelist::client::AuditRecord;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("database: stored services of {user:?} are corrupt: {source}")]
    Corrupt { user: String, source: serde_json::Error },
    /// A scoped token asked to change what its scope does not cover.
    #[error("{reason}")]
    OutOfScope { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredEntry {
    pub user: String,
    pub services: Vec<String>,
    /// Unix milliseconds.
    #[serde(skip)]
    pub expires_at_ms: i64,
    pub expires_at: String,
}

/// What a change did, for the response and the audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    Nothing,
    Entry,
    Services(Vec<String>),
}

pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open = |source| StoreError::Open { path: path.display().to_string(), source };
        let conn = Connection::open(path).map_err(open)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS entries (
                 user TEXT PRIMARY KEY,
                 services TEXT NOT NULL,
                 expires_at_ms INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS audit (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 at_ms INTEGER NOT NULL,
                 who TEXT NOT NULL,
                 action TEXT NOT NULL,
                 user TEXT NOT NULL,
                 services TEXT NOT NULL,
                 ttl_seconds INTEGER,
                 reason TEXT
             );
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             INSERT OR IGNORE INTO meta (key, value) VALUES ('version', 0);
             -- The audit is append-only, enforced by the database itself.
             CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
                 BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
             CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
                 BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;",
        )
        .map_err(open)?;
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The version (bumped by every change) and the live entries at `now`, ordered by user.
    pub fn snapshot(&self, now: i64) -> Result<(u64, Vec<StoredEntry>), StoreError> {
        let conn = self.lock();
        let version: i64 = conn.query_row("SELECT value FROM meta WHERE key = 'version'", [], |r| r.get(0))?;
        let mut stmt =
            conn.prepare("SELECT user, services, expires_at_ms FROM entries WHERE expires_at_ms > ?1 ORDER BY user")?;
        let rows = stmt.query_map(params![now], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (user, services, expires_at_ms) = row?;
            out.push(entry(user, &services, expires_at_ms)?);
        }
        Ok((version.max(0) as u64, out))
    }

    pub fn get(&self, user: &str, now: i64) -> Result<Option<StoredEntry>, StoreError> {
        let conn = self.lock();
        let row = conn
            .query_row(
                "SELECT services, expires_at_ms FROM entries WHERE user = ?1 AND expires_at_ms > ?2",
                params![user, now],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()?;
        row.map(|(services, exp)| entry(user.to_owned(), &services, exp)).transpose()
    }

    /// Sets `user`'s services and expiry (replacing any earlier entry), audited.
    /// Sets `user`'s services. `scope` (a scoped token's services) must cover every service
    /// asked for and every service the entry holds now, which the write replaces.
    pub fn put(
        &self,
        user: &str,
        services: &[String],
        ttl_seconds: i64,
        who: &str,
        reason: Option<&str>,
        scope: Option<&[String]>,
    ) -> Result<StoredEntry, StoreError> {
        let now = now_ms();
        let expires_at_ms = now.saturating_add(ttl_seconds.saturating_mul(1000));
        let services_json = serde_json::to_string(services).unwrap_or_else(|_| "[]".into());
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if let Some(scope) = scope {
            let held = current_services(&tx, user, now)?;
            in_scope(who, scope, services, "whitelist users for")?;
            in_scope(who, scope, &held, &format!("replace {user:?}'s entry, which holds"))?;
        }
        tx.execute(
            "INSERT INTO entries (user, services, expires_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(user) DO UPDATE SET services = excluded.services, expires_at_ms = excluded.expires_at_ms",
            params![user, services_json, expires_at_ms],
        )?;
        audit(&tx, now, who, "put", user, &services_json, Some(ttl_seconds), reason)?;
        tx.commit()?;
        entry(user.to_owned(), &services_json, expires_at_ms)
    }

    /// Removes `user`'s entry, or only `service` from it (the entry goes with its last service).
    pub fn remove(
        &self,
        user: &str,
        service: Option<&str>,
        who: &str,
        reason: Option<&str>,
        scope: Option<&[String]>,
    ) -> Result<Removed, StoreError> {
        let now = now_ms();
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let current = current_services(&tx, user, now)?;
        if current.is_empty() {
            return Ok(Removed::Nothing);
        }
        let (removed, left): (Vec<String>, Vec<String>) = match service {
            None => (current, Vec::new()),
            Some(s) => current.into_iter().partition(|x| x == s),
        };
        if removed.is_empty() {
            return Ok(Removed::Nothing);
        }
        if let Some(scope) = scope {
            in_scope(who, scope, &removed, &format!("remove {user:?} from"))?;
        }
        if left.is_empty() {
            tx.execute("DELETE FROM entries WHERE user = ?1", params![user])?;
        } else {
            let left_json = serde_json::to_string(&left).unwrap_or_else(|_| "[]".into());
            tx.execute("UPDATE entries SET services = ?2 WHERE user = ?1", params![user, left_json])?;
        }
        let removed_json = serde_json::to_string(&removed).unwrap_or_else(|_| "[]".into());
        audit(&tx, now, who, "remove", user, &removed_json, None, reason)?;
        tx.commit()?;
        Ok(if left.is_empty() { Removed::Entry } else { Removed::Services(removed) })
    }

    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT id, at_ms, who, action, user, services, ttl_seconds, reason FROM audit ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, Option<i64>>(6)?,
                r.get::<_, Option<String>>(7)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at, who, action, user, services, ttl_seconds, reason) = row?;
            let services =
                serde_json::from_str(&services).map_err(|source| StoreError::Corrupt { user: user.clone(), source })?;
            out.push(AuditRecord { id, at: format_rfc3339_ms(at), who, action, user, services, ttl_seconds, reason });
        }
        out.reverse();
        Ok(out)
    }

    /// Checks the database answers (for `/healthz`).
    pub fn ping(&self) -> Result<(), StoreError> {
        self.lock().query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }
}

fn entry(user: String, services: &str, expires_at_ms: i64) -> Result<StoredEntry, StoreError> {
    let services =
        serde_json::from_str(services).map_err(|source| StoreError::Corrupt { user: user.clone(), source })?;
    Ok(StoredEntry { user, services, expires_at_ms, expires_at: format_rfc3339_ms(expires_at_ms) })
}

#[allow(clippy::too_many_arguments)]
fn audit(
    tx: &rusqlite::Transaction<'_>,
    now: i64,
    who: &str,
    action: &str,
    user: &str,
    services_json: &str,
    ttl_seconds: Option<i64>,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO audit (at_ms, who, action, user, services, ttl_seconds, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![now, who, action, user, services_json, ttl_seconds, reason],
    )?;
    tx.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'", [])?;
    Ok(())
}

/// The services `user`'s unexpired entry holds now (none without one).
fn current_services(tx: &rusqlite::Transaction<'_>, user: &str, now: i64) -> Result<Vec<String>, StoreError> {
    let current = tx
        .query_row("SELECT services FROM entries WHERE user = ?1 AND expires_at_ms > ?2", params![user, now], |r| {
            r.get::<_, String>(0)
        })
        .optional()?;
    match current {
        Some(c) => Ok(entry(user.to_owned(), &c, 0)?.services),
        None => Ok(Vec::new()),
    }
}

/// Refuses, naming the first service outside `scope`.
fn in_scope(who: &str, scope: &[String], services: &[String], doing: &str) -> Result<(), StoreError> {
    match services.iter().find(|s| !scope.contains(s)) {
        None => Ok(()),
        Some(s) => Err(StoreError::OutOfScope {
            reason: format!("token {who:?} may not {doing} {s:?}: it is scoped to {}", scope.join(", ")),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("wl.db")).unwrap();
        (dir, s)
    }

    #[test]
    fn put_get_remove_and_audit() {
        let (_d, s) = store();
        let e = s.put("U1", &["payment".into(), "shipping".into()], 60, "qa", Some("release 42"), None).unwrap();
        assert_eq!(e.services, ["payment", "shipping"]);
        assert_eq!(s.get("U1", now_ms()).unwrap().unwrap().services.len(), 2);
        assert_eq!(s.snapshot(now_ms()).unwrap().0, 1);
        assert_eq!(
            s.remove("U1", Some("payment"), "qa", None, None).unwrap(),
            Removed::Services(vec!["payment".into()])
        );
        assert_eq!(s.get("U1", now_ms()).unwrap().unwrap().services, ["shipping"]);
        assert_eq!(s.remove("U1", Some("payment"), "qa", None, None).unwrap(), Removed::Nothing);
        assert_eq!(s.remove("U1", None, "qa", None, None).unwrap(), Removed::Entry);
        assert!(s.get("U1", now_ms()).unwrap().is_none());
        let log = s.audit_log(100).unwrap();
        assert_eq!(log.iter().map(|a| a.action.as_str()).collect::<Vec<_>>(), ["put", "remove", "remove"]);
        assert_eq!(log[0].reason.as_deref(), Some("release 42"));
        assert_eq!(s.snapshot(now_ms()).unwrap().0, 3);
    }

    #[test]
    fn a_scoped_token_changes_only_what_its_scope_covers() {
        let (_d, s) = store();
        let pay = ["payment".to_owned()];
        let scope = Some(&pay[..]);
        s.put("U1", &["payment".into()], 60, "pay-team", None, scope).unwrap();
        let e = s.put("U2", &["shipping".into()], 60, "pay-team", None, scope).unwrap_err().to_string();
        assert!(e.contains("pay-team") && e.contains("\"shipping\"") && e.contains("scoped to payment"), "{e}");
        s.put("U3", &["payment".into(), "shipping".into()], 60, "ops", None, None).unwrap();
        // Replacing U3's entry would drop shipping, which another team set.
        let e = s.put("U3", &["payment".into()], 60, "pay-team", None, scope).unwrap_err().to_string();
        assert!(e.contains("replace") && e.contains("shipping"), "{e}");
        assert!(s.remove("U3", None, "pay-team", None, scope).is_err());
        assert_eq!(s.remove("U3", Some("payment"), "pay-team", None, scope).unwrap(), Removed::Services(pay.to_vec()));
        assert!(s.remove("U3", Some("shipping"), "pay-team", None, scope).is_err());
        assert_eq!(s.get("U3", now_ms()).unwrap().unwrap().services, ["shipping"]);
        // Refused writes leave no audit line; the accepted ones name the token.
        let who: Vec<String> = s.audit_log(100).unwrap().into_iter().map(|a| a.who).collect();
        assert_eq!(who, ["pay-team", "ops", "pay-team"]);
    }

    #[test]
    fn expired_entries_vanish_from_reads() {
        let (_d, s) = store();
        s.put("U1", &["payment".into()], 1, "qa", None, None).unwrap();
        let later = now_ms() + 1_001;
        assert!(s.get("U1", later).unwrap().is_none());
        assert!(s.snapshot(later).unwrap().1.is_empty());
    }

    #[test]
    fn a_change_whose_audit_fails_does_not_happen() {
        let (_d, s) = store();
        s.lock()
            .execute_batch(
                "CREATE TRIGGER break_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
            )
            .unwrap();
        assert!(s.put("U1", &["payment".into()], 60, "qa", None, None).is_err());
        assert!(s.get("U1", now_ms()).unwrap().is_none());
        assert_eq!(s.snapshot(now_ms()).unwrap().0, 0, "version unchanged");
    }

    #[test]
    fn audit_is_append_only() {
        let (_d, s) = store();
        s.put("U1", &["a".into()], 60, "qa", None, None).unwrap();
        let conn = s.lock();
        assert!(conn.execute("DELETE FROM audit", []).is_err());
        assert!(conn.execute("UPDATE audit SET who = 'x'", []).is_err());
    }
}
