//! The `whitelist` command: add, remove and list entries on a Config Mapper.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::clock::parse_rfc3339_ms;
use crate::config_mapper::{TOKEN_ENV, Tokens};
use crate::whitelist::client::{AuditRecord, ClientError, EntryView, EnvView, MapperClient};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Token(#[from] crate::config_mapper::TokenError),
    #[error("no write token: pass --token-file or set {TOKEN_ENV}")]
    NoToken,
    #[error("--services: {0}")]
    Services(String),
    #[error("--env: {0}")]
    Env(String),
}

const TIMEOUT: Duration = Duration::from_secs(10);

pub enum Action {
    Add { user: String, services: Vec<String>, ttl: Duration, reason: Option<String>, env: Option<String> },
    Rm { user: String, services: Vec<String> },
    Ls,
    Envs,
    Audit,
}

pub(crate) fn token(token_file: Option<&Path>) -> Result<String, CliError> {
    let tokens = match token_file {
        Some(p) => Tokens::load(p)?,
        None => match std::env::var(TOKEN_ENV) {
            Ok(t) => Tokens::parse(&t).map_err(|_| CliError::NoToken)?,
            Err(_) => return Err(CliError::NoToken),
        },
    };
    tokens.first().map(str::to_owned).ok_or(CliError::NoToken)
}

/// Runs `action` and returns what to print.
pub fn run(url: &str, token_file: Option<&Path>, json: bool, action: Action) -> Result<String, CliError> {
    match action {
        Action::Add { user, services, ttl, reason, env } => {
            if services.iter().any(String::is_empty) {
                return Err(CliError::Services("empty service name".into()));
            }
            if let Some(e) = &env {
                crate::environment::check(e).map_err(CliError::Env)?;
            }
            let client = MapperClient::new(url, Some(token(token_file)?), TIMEOUT)?;
            let e = client.add(&user, &services, ttl, reason.as_deref(), env.as_deref())?;
            Ok(if json {
                to_json(&e)
            } else {
                format!(
                    "whitelisted {} for {} in environment {} until {}\n",
                    e.user,
                    e.services.join(","),
                    e.env(),
                    e.expires_at
                )
            })
        }
        Action::Rm { user, services } => {
            let client = MapperClient::new(url, Some(token(token_file)?), TIMEOUT)?;
            let mut out = String::new();
            if services.is_empty() {
                let removed = client.remove(&user, None)?;
                let _ = writeln!(
                    out,
                    "{}",
                    if removed { format!("removed {user}") } else { format!("{user} was not whitelisted") }
                );
            }
            for s in &services {
                let removed = client.remove(&user, Some(s))?;
                let _ = writeln!(
                    out,
                    "{}",
                    if removed {
                        format!("removed {s} from {user}")
                    } else {
                        format!("{user} was not whitelisted for {s}")
                    }
                );
            }
            Ok(out)
        }
        Action::Ls => {
            let entries = MapperClient::new(url, None, TIMEOUT)?.list()?;
            Ok(if json { to_json(&entries) } else { table(&entries) })
        }
        Action::Envs => {
            let envs = MapperClient::new(url, None, TIMEOUT)?.envs()?;
            Ok(if json { to_json(&envs) } else { envs_table(&envs) })
        }
        Action::Audit => {
            let records = MapperClient::new(url, None, TIMEOUT)?.audit()?;
            Ok(if json { to_json(&records) } else { audit_table(&records) })
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).map(|s| s + "\n").unwrap_or_default()
}

fn table(entries: &[EntryView]) -> String {
    if entries.is_empty() {
        return "no whitelisted users\n".into();
    }
    let now = crate::clock::now_ms();
    let w = entries.iter().map(|e| e.user.len()).max().unwrap_or(4).max(4);
    let mut out = format!("{:<w$}  {:<16}  {:<30}  {:<20}  LEFT\n", "USER", "ENV", "SERVICES", "EXPIRES");
    for e in entries {
        let left = left(&e.expires_at, now);
        let _ = writeln!(
            out,
            "{:<w$}  {:<16}  {:<30}  {:<20}  {left}",
            e.user,
            e.env(),
            e.services.join(","),
            e.expires_at
        );
    }
    out
}

fn left(expires_at: &str, now: i64) -> String {
    parse_rfc3339_ms(expires_at)
        .map(|t| humantime::format_duration(Duration::from_secs(((t - now).max(0) / 1000) as u64)).to_string())
        .unwrap_or_default()
}

fn envs_table(envs: &[EnvView]) -> String {
    if envs.is_empty() {
        return "no live environments\n".into();
    }
    let now = crate::clock::now_ms();
    let mut out = format!("{:<16}  {:>5}  {:<30}  {:<20}  LEFT\n", "ENV", "USERS", "SERVICES", "EXPIRES");
    for e in envs {
        let left = left(&e.expires_at, now);
        let _ = writeln!(
            out,
            "{:<16}  {:>5}  {:<30}  {:<20}  {left}",
            e.env,
            e.users.len(),
            e.services.join(","),
            e.expires_at
        );
    }
    out
}

fn audit_table(records: &[AuditRecord]) -> String {
    let mut out =
        format!("{:<20}  {:<10}  {:<7}  {:<16}  {:<24}  REASON\n", "WHEN", "WHO", "ACTION", "USER", "SERVICES");
    for r in records {
        let _ = writeln!(
            out,
            "{:<20}  {:<10}  {:<7}  {:<16}  {:<24}  {}",
            r.at,
            r.who,
            r.action,
            r.user,
            r.services.join(","),
            r.reason.as_deref().unwrap_or("")
        );
    }
    out
}
