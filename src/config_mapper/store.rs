//! The Config Mapper's database: whitelist entries and the append-only audit, in SQLite.
//!
//! Every change and its audit record are written in one transaction: if the audit cannot be
//! written, the change does not happen. Expired entries stay in the table (they are history)
//! but are filtered out of every read at their expiry.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, params};
use serde::Serialize;

use super::auth::Scope;
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
    /// A (user, service) is in one environment at a time.
    #[error("user {user:?} is already whitelisted for {service:?} in environment {env:?}: remove it there first")]
    Held { user: String, service: String, env: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredEntry {
    pub user: String,
    pub env: String,
    pub services: Vec<String>,
    /// Unix milliseconds.
    #[serde(skip)]
    pub expires_at_ms: i64,
    pub expires_at: String,
}

/// A live environment: who is in it, for which services, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvSummary {
    pub env: String,
    pub users: Vec<String>,
    pub services: Vec<String>,
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
             -- Before environments: one row per user, all in the default environment.
             CREATE TABLE IF NOT EXISTS entries (
                 user TEXT PRIMARY KEY,
                 services TEXT NOT NULL,
                 expires_at_ms INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS placements (
                 user TEXT NOT NULL,
                 env TEXT NOT NULL,
                 services TEXT NOT NULL,
                 expires_at_ms INTEGER NOT NULL,
                 PRIMARY KEY (user, env)
             );
             INSERT OR IGNORE INTO placements (user, env, services, expires_at_ms)
                 SELECT user, 'rush', services, expires_at_ms FROM entries;
             DELETE FROM entries;
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
        let has_env: bool = conn
            .query_row("SELECT COUNT(*) FROM pragma_table_info('audit') WHERE name = 'env'", [], |r| r.get::<_, i64>(0))
            .map_err(open)?
            > 0;
        if !has_env {
            conn.execute_batch("ALTER TABLE audit ADD COLUMN env TEXT").map_err(open)?;
        }
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The version (bumped by every change) and the live placements at `now`, ordered by user
    /// and environment.
    pub fn snapshot(&self, now: i64) -> Result<(u64, Vec<StoredEntry>), StoreError> {
        let conn = self.lock();
        let version: i64 = conn.query_row("SELECT value FROM meta WHERE key = 'version'", [], |r| r.get(0))?;
        let out = placements(&conn, "expires_at_ms > ?1 ORDER BY user, env", params![now])?;
        Ok((version.max(0) as u64, out))
    }

    /// `user`'s live placements, by environment.
    pub fn get(&self, user: &str, now: i64) -> Result<Vec<StoredEntry>, StoreError> {
        placements(&self.lock(), "user = ?1 AND expires_at_ms > ?2 ORDER BY env", params![user, now])
    }

    /// The live environments at `now`, by name.
    pub fn envs(&self, now: i64) -> Result<Vec<EnvSummary>, StoreError> {
        let all = placements(&self.lock(), "expires_at_ms > ?1 ORDER BY env, user", params![now])?;
        let mut out: Vec<(EnvSummary, i64)> = Vec::new();
        for p in all {
            if out.last().is_none_or(|(e, _)| e.env != p.env) {
                let summary =
                    EnvSummary { env: p.env.clone(), users: vec![], services: vec![], expires_at: String::new() };
                out.push((summary, i64::MIN));
            }
            let Some((e, expires)) = out.last_mut() else { continue };
            e.users.push(p.user);
            for s in p.services {
                if !e.services.contains(&s) {
                    e.services.push(s);
                }
            }
            *expires = (*expires).max(p.expires_at_ms);
        }
        Ok(out
            .into_iter()
            .map(|(mut e, expires)| {
                e.services.sort();
                e.expires_at = format_rfc3339_ms(expires);
                e
            })
            .collect())
    }

    /// Sets `user`'s services in `env` and their expiry (replacing what the user had in `env`;
    /// other environments' placements stay), audited. Refused when another environment holds
    /// one of the services. `scope` (a scoped token's services) must cover every service asked
    /// for and every service the placement holds now, which the write replaces.
    #[allow(clippy::too_many_arguments)]
    pub fn put(
        &self,
        user: &str,
        env: &str,
        services: &[String],
        ttl_seconds: i64,
        who: &str,
        reason: Option<&str>,
        scope: &Scope,
    ) -> Result<StoredEntry, StoreError> {
        let now = now_ms();
        let expires_at_ms = now.saturating_add(ttl_seconds.saturating_mul(1000));
        let services_json = serde_json::to_string(services).unwrap_or_else(|_| "[]".into());
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let held = placements(&tx, "user = ?1 AND expires_at_ms > ?2", params![user, now])?;
        for other in held.iter().filter(|p| p.env != env) {
            if let Some(s) = services.iter().find(|s| other.services.contains(s)) {
                return Err(StoreError::Held { user: user.into(), service: s.clone(), env: other.env.clone() });
            }
        }
        env_in_scope(who, scope, env)?;
        if let Some(scope) = scope.services() {
            in_scope(who, scope, services, "whitelist users for")?;
            let replaced = held.iter().filter(|p| p.env == env).flat_map(|p| p.services.iter().cloned());
            in_scope(who, scope, &replaced.collect::<Vec<_>>(), &format!("replace {user:?}'s entry, which holds"))?;
        }
        tx.execute(
            "INSERT INTO placements (user, env, services, expires_at_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(user, env) DO UPDATE SET services = excluded.services, expires_at_ms = excluded.expires_at_ms",
            params![user, env, services_json, expires_at_ms],
        )?;
        audit(&tx, now, who, "put", user, env, &services_json, Some(ttl_seconds), reason)?;
        tx.commit()?;
        stored(user.to_owned(), env.to_owned(), &services_json, expires_at_ms)
    }

    /// Removes all of `user`'s placements, or only `service`, wherever it is (a placement goes
    /// with its last service).
    pub fn remove(
        &self,
        user: &str,
        service: Option<&str>,
        who: &str,
        reason: Option<&str>,
        scope: &Scope,
    ) -> Result<Removed, StoreError> {
        let now = now_ms();
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let held = placements(&tx, "user = ?1 AND expires_at_ms > ?2", params![user, now])?;
        let mut removed_any = Vec::new();
        let mut left_any = false;
        for p in held {
            let (removed, left): (Vec<String>, Vec<String>) = match service {
                None => (p.services, Vec::new()),
                Some(s) => p.services.into_iter().partition(|x| x == s),
            };
            left_any |= !left.is_empty();
            if removed.is_empty() {
                continue;
            }
            env_in_scope(who, scope, &p.env)?;
            if let Some(scope) = scope.services() {
                in_scope(who, scope, &removed, &format!("remove {user:?} from"))?;
            }
            take(&tx, user, &p.env, &left)?;
            let removed_json = serde_json::to_string(&removed).unwrap_or_else(|_| "[]".into());
            audit(&tx, now, who, "remove", user, &p.env, &removed_json, None, reason)?;
            removed_any.extend(removed);
        }
        if removed_any.is_empty() {
            return Ok(Removed::Nothing);
        }
        tx.commit()?;
        Ok(if left_any { Removed::Services(removed_any) } else { Removed::Entry })
    }

    /// Ends environment `env`: removes every placement in it, audited per user. Returns the
    /// users it held (none: nothing to end).
    pub fn end_env(
        &self,
        env: &str,
        who: &str,
        reason: Option<&str>,
        scope: &Scope,
    ) -> Result<Vec<String>, StoreError> {
        let now = now_ms();
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let held = placements(&tx, "env = ?1 AND expires_at_ms > ?2 ORDER BY user", params![env, now])?;
        env_in_scope(who, scope, env)?;
        for p in &held {
            if let Some(scope) = scope.services() {
                in_scope(who, scope, &p.services, &format!("end environment {env:?}, which holds {:?} for", p.user))?;
            }
            take(&tx, &p.user, env, &[])?;
            let services_json = serde_json::to_string(&p.services).unwrap_or_else(|_| "[]".into());
            audit(&tx, now, who, "end-env", &p.user, env, &services_json, None, reason)?;
        }
        tx.commit()?;
        Ok(held.into_iter().map(|p| p.user).collect())
    }

    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT id, at_ms, who, action, user, services, ttl_seconds, reason, env FROM audit ORDER BY id DESC LIMIT ?1",
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
                r.get::<_, Option<String>>(8)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at, who, action, user, services, ttl_seconds, reason, env) = row?;
            let services =
                serde_json::from_str(&services).map_err(|source| StoreError::Corrupt { user: user.clone(), source })?;
            let at = format_rfc3339_ms(at);
            out.push(AuditRecord { id, at, who, action, user, env, services, ttl_seconds, reason });
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

fn stored(user: String, env: String, services: &str, expires_at_ms: i64) -> Result<StoredEntry, StoreError> {
    let services =
        serde_json::from_str(services).map_err(|source| StoreError::Corrupt { user: user.clone(), source })?;
    Ok(StoredEntry { user, env, services, expires_at_ms, expires_at: format_rfc3339_ms(expires_at_ms) })
}

/// The placements `filter` (a `WHERE` clause over `user`, `env`, `expires_at_ms`) selects.
fn placements(conn: &Connection, filter: &str, params: impl rusqlite::Params) -> Result<Vec<StoredEntry>, StoreError> {
    let mut stmt =
        conn.prepare(&format!("SELECT user, env, services, expires_at_ms FROM placements WHERE {filter}"))?;
    let rows = stmt.query_map(params, |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get(3)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (user, env, services, expires_at_ms) = row?;
        out.push(stored(user, env, &services, expires_at_ms)?);
    }
    Ok(out)
}

/// Leaves `user` with `left` in `env` (nothing left: the placement goes).
fn take(tx: &rusqlite::Transaction<'_>, user: &str, env: &str, left: &[String]) -> Result<(), StoreError> {
    if left.is_empty() {
        tx.execute("DELETE FROM placements WHERE user = ?1 AND env = ?2", params![user, env])?;
    } else {
        let left_json = serde_json::to_string(left).unwrap_or_else(|_| "[]".into());
        tx.execute("UPDATE placements SET services = ?3 WHERE user = ?1 AND env = ?2", params![user, env, left_json])?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn audit(
    tx: &rusqlite::Transaction<'_>,
    now: i64,
    who: &str,
    action: &str,
    user: &str,
    env: &str,
    services_json: &str,
    ttl_seconds: Option<i64>,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO audit (at_ms, who, action, user, env, services, ttl_seconds, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![now, who, action, user, env, services_json, ttl_seconds, reason],
    )?;
    tx.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'", [])?;
    Ok(())
}

/// Refuses an environment outside the token's.
fn env_in_scope(who: &str, scope: &Scope, env: &str) -> Result<(), StoreError> {
    match scope.envs() {
        Some(envs) if !scope.allows_env(env) => Err(StoreError::OutOfScope {
            reason: format!("token {who:?} may not change environment {env:?}: it is scoped to {}", envs.join(", ")),
        }),
        _ => Ok(()),
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
        let e = s
            .put("U1", "rush", &["payment".into(), "shipping".into()], 60, "qa", Some("release 42"), &Scope::ALL)
            .unwrap();
        assert_eq!(e.services, ["payment", "shipping"]);
        assert_eq!(s.get("U1", now_ms()).unwrap()[0].services.len(), 2);
        assert_eq!(s.snapshot(now_ms()).unwrap().0, 1);
        assert_eq!(
            s.remove("U1", Some("payment"), "qa", None, &Scope::ALL).unwrap(),
            Removed::Services(vec!["payment".into()])
        );
        assert_eq!(s.get("U1", now_ms()).unwrap()[0].services, ["shipping"]);
        assert_eq!(s.remove("U1", Some("payment"), "qa", None, &Scope::ALL).unwrap(), Removed::Nothing);
        assert_eq!(s.remove("U1", None, "qa", None, &Scope::ALL).unwrap(), Removed::Entry);
        assert!(s.get("U1", now_ms()).unwrap().is_empty());
        let log = s.audit_log(100).unwrap();
        assert_eq!(log.iter().map(|a| a.action.as_str()).collect::<Vec<_>>(), ["put", "remove", "remove"]);
        assert_eq!(log[0].reason.as_deref(), Some("release 42"));
        assert_eq!(s.snapshot(now_ms()).unwrap().0, 3);
    }

    #[test]
    fn a_scoped_token_changes_only_what_its_scope_covers() {
        let (_d, s) = store();
        let pay = ["payment".to_owned()];
        let scope = &Scope::of_services(pay.to_vec());
        s.put("U1", "rush", &["payment".into()], 60, "pay-team", None, scope).unwrap();
        let e = s.put("U2", "rush", &["shipping".into()], 60, "pay-team", None, scope).unwrap_err().to_string();
        assert!(e.contains("pay-team") && e.contains("\"shipping\"") && e.contains("scoped to payment"), "{e}");
        s.put("U3", "rush", &["payment".into(), "shipping".into()], 60, "ops", None, &Scope::ALL).unwrap();
        // Replacing U3's entry would drop shipping, which another team set.
        let e = s.put("U3", "rush", &["payment".into()], 60, "pay-team", None, scope).unwrap_err().to_string();
        assert!(e.contains("replace") && e.contains("shipping"), "{e}");
        assert!(s.remove("U3", None, "pay-team", None, scope).is_err());
        assert_eq!(s.remove("U3", Some("payment"), "pay-team", None, scope).unwrap(), Removed::Services(pay.to_vec()));
        assert!(s.remove("U3", Some("shipping"), "pay-team", None, scope).is_err());
        assert_eq!(s.get("U3", now_ms()).unwrap()[0].services, ["shipping"]);
        // Refused writes leave no audit line; the accepted ones name the token.
        let who: Vec<String> = s.audit_log(100).unwrap().into_iter().map(|a| a.who).collect();
        assert_eq!(who, ["pay-team", "ops", "pay-team"]);
    }

    #[test]
    fn expired_entries_vanish_from_reads() {
        let (_d, s) = store();
        s.put("U1", "rush", &["payment".into()], 1, "qa", None, &Scope::ALL).unwrap();
        let later = now_ms() + 1_001;
        assert!(s.get("U1", later).unwrap().is_empty());
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
        assert!(s.put("U1", "rush", &["payment".into()], 60, "qa", None, &Scope::ALL).is_err());
        assert!(s.get("U1", now_ms()).unwrap().is_empty());
        assert_eq!(s.snapshot(now_ms()).unwrap().0, 0, "version unchanged");
    }

    #[test]
    fn audit_is_append_only() {
        let (_d, s) = store();
        s.put("U1", "rush", &["a".into()], 60, "qa", None, &Scope::ALL).unwrap();
        let conn = s.lock();
        assert!(conn.execute("DELETE FROM audit", []).is_err());
        assert!(conn.execute("UPDATE audit SET who = 'x'", []).is_err());
    }

    #[test]
    fn a_user_service_is_in_one_environment_at_a_time() {
        let (_d, s) = store();
        s.put("U1", "pr-42", &["payment".into()], 60, "qa", None, &Scope::ALL).unwrap();
        s.put("U1", "pr-57", &["shipping".into()], 60, "qa", None, &Scope::ALL).unwrap();
        let e = s.put("U1", "rush", &["payment".into(), "search".into()], 60, "qa", None, &Scope::ALL).unwrap_err();
        assert!(matches!(&e, StoreError::Held { env, service, .. } if env == "pr-42" && service == "payment"), "{e}");
        assert!(e.to_string().contains("\"pr-42\""), "{e}");
        // Setting an environment replaces the user's services there only.
        s.put("U1", "pr-42", &["payment".into(), "search".into()], 60, "qa", None, &Scope::ALL).unwrap();
        let placed: Vec<(String, Vec<String>)> =
            s.get("U1", now_ms()).unwrap().into_iter().map(|p| (p.env, p.services)).collect();
        assert_eq!(
            placed,
            [("pr-42".into(), vec!["payment".into(), "search".into()]), ("pr-57".into(), vec!["shipping".into()])]
        );
        s.put("U2", "pr-42", &["payment".into()], 120, "qa", None, &Scope::ALL).unwrap();
        let envs = s.envs(now_ms()).unwrap();
        assert_eq!(envs.iter().map(|e| e.env.as_str()).collect::<Vec<_>>(), ["pr-42", "pr-57"]);
        assert_eq!(envs[0].users, ["U1", "U2"]);
        assert_eq!(envs[0].services, ["payment", "search"]);
        // Removing a service finds it in whichever environment holds it.
        assert_eq!(
            s.remove("U1", Some("shipping"), "qa", None, &Scope::ALL).unwrap(),
            Removed::Services(vec!["shipping".into()])
        );
        assert_eq!(s.end_env("pr-42", "qa", Some("merged"), &Scope::ALL).unwrap(), ["U1", "U2"]);
        assert!(s.end_env("pr-42", "qa", None, &Scope::ALL).unwrap().is_empty(), "ending twice is a no-op");
        assert!(s.snapshot(now_ms()).unwrap().1.is_empty());
        let log = s.audit_log(100).unwrap();
        let ended: Vec<_> = log.iter().filter(|a| a.action == "end-env").map(|a| a.env.as_deref()).collect();
        assert_eq!(ended, [Some("pr-42"), Some("pr-42")]);
    }

    #[test]
    fn a_database_from_before_environments_keeps_its_entries_in_the_default_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE entries (user TEXT PRIMARY KEY, services TEXT NOT NULL, expires_at_ms INTEGER NOT NULL);
                 CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, who TEXT NOT NULL,
                     action TEXT NOT NULL, user TEXT NOT NULL, services TEXT NOT NULL, ttl_seconds INTEGER, reason TEXT);
                 INSERT INTO entries VALUES ('U1', '[\"payment\"]', 99999999999999);
                 INSERT INTO audit (at_ms, who, action, user, services) VALUES (1, 'qa', 'put', 'U1', '[\"payment\"]');",
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let got = s.get("U1", now_ms()).unwrap();
        assert_eq!((got[0].env.as_str(), got[0].services.as_slice()), ("rush", &["payment".to_owned()][..]));
        assert_eq!(s.audit_log(10).unwrap()[0].env, None);
        s.put("U1", "rush", &["shipping".into()], 60, "qa", None, &Scope::ALL).unwrap();
        drop(s);
        let s = Store::open(&path).unwrap();
        assert_eq!(s.get("U1", now_ms()).unwrap()[0].services, ["shipping"], "opened twice, migrated once");
    }

    #[test]
    fn a_token_scoped_to_environments_changes_only_those() {
        let (_d, s) = store();
        let team = &Scope::ALL.with_envs(vec!["team-ledger-*".into()]);
        s.put("U1", "team-ledger-1", &["ledger".into()], 60, "ledger", None, team).unwrap();
        let e = s.put("U2", "pr-42", &["ledger".into()], 60, "ledger", None, team).unwrap_err().to_string();
        assert!(e.contains("\"pr-42\"") && e.contains("team-ledger-*"), "{e}");
        assert!(s.put("U2", "rush", &["ledger".into()], 60, "ledger", None, team).is_err(), "nor the default");
        s.put("U3", "pr-42", &["payment".into()], 60, "ops", None, &Scope::ALL).unwrap();
        assert!(s.remove("U3", None, "ledger", None, team).is_err());
        assert!(s.end_env("pr-42", "ledger", None, team).is_err());
        assert_eq!(s.end_env("team-ledger-1", "ledger", None, team).unwrap(), ["U1"]);
        assert_eq!(s.get("U3", now_ms()).unwrap().len(), 1, "refused writes changed nothing");
    }
}
