//! A blocking HTTP client of the Config Mapper API, shared by the `whitelist` CLI and the
//! bridge's snapshot poller. Every request has a timeout; bodies are size-capped.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Snapshot, SnapshotError};
use crate::config_mapper::AuditRecord;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("Config Mapper at {url} is unreachable: {source}")]
    Unreachable { url: String, source: ureq::Error },
    #[error("Config Mapper refused {what} ({status}): {message}")]
    Refused { what: String, status: u16, message: String },
    #[error("Config Mapper answer to {what} is not understood: {reason}")]
    Garbled { what: String, reason: String },
    #[error("Config Mapper snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
}

/// Largest answer read: a snapshot of ~100,000 users.
const MAX_ANSWER: u64 = 64 * 1024 * 1024;

pub struct MapperClient {
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
}

/// What a conditional snapshot request returned.
pub enum SnapshotAnswer {
    Changed { snapshot: Snapshot, etag: Option<String> },
    NotModified,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryView {
    pub user: String,
    pub services: Vec<String>,
    pub expires_at: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

#[derive(Deserialize)]
struct SnapshotBody {
    entries: Vec<EntryView>,
}

#[derive(Deserialize)]
struct AuditBody {
    records: Vec<AuditRecord>,
}

fn encode(segment: &str) -> String {
    // User ids and service names are restricted to URL-safe characters by the server; encode
    // anything else rather than letting it change the path.
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b':' | b'+') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl MapperClient {
    pub fn new(base: &str, token: Option<String>, timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .user_agent(concat!("tenancy-bridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Self { base: base.trim_end_matches('/').to_owned(), agent, token }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn unreachable(&self, source: ureq::Error) -> ClientError {
        ClientError::Unreachable { url: self.base.clone(), source }
    }

    fn read(&self, what: &str, resp: &mut ureq::http::Response<ureq::Body>) -> Result<Vec<u8>, ClientError> {
        resp.body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_vec()
            .map_err(|e| ClientError::Garbled { what: what.to_owned(), reason: e.to_string() })
    }

    fn refused(&self, what: &str, resp: &mut ureq::http::Response<ureq::Body>) -> ClientError {
        let status = resp.status().as_u16();
        let body = self.read(what, resp).unwrap_or_default();
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(200).collect());
        ClientError::Refused { what: what.to_owned(), status, message }
    }

    fn auth(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    /// `GET /v1/whitelist`, conditional on `etag`.
    pub fn snapshot(&self, etag: Option<&str>) -> Result<SnapshotAnswer, ClientError> {
        let mut req = self.agent.get(self.url("/v1/whitelist"));
        if let Some(e) = etag {
            req = req.header("If-None-Match", e);
        }
        let mut resp = req.call().map_err(|e| self.unreachable(e))?;
        match resp.status().as_u16() {
            304 => Ok(SnapshotAnswer::NotModified),
            200 => {
                let etag = resp.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_owned);
                let body = self.read("GET /v1/whitelist", &mut resp)?;
                Ok(SnapshotAnswer::Changed { snapshot: Snapshot::from_json(&body)?, etag })
            }
            _ => Err(self.refused("GET /v1/whitelist", &mut resp)),
        }
    }

    /// `GET path`, expecting 200 and a JSON body of type `T`.
    fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let what = format!("GET {path}");
        let mut resp = self.agent.get(self.url(path)).call().map_err(|e| self.unreachable(e))?;
        if resp.status() != 200 {
            return Err(self.refused(&what, &mut resp));
        }
        let body = self.read(&what, &mut resp)?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Garbled { what, reason: e.to_string() })
    }

    pub fn list(&self) -> Result<Vec<EntryView>, ClientError> {
        Ok(self.get_json::<SnapshotBody>("/v1/whitelist")?.entries)
    }

    /// `GET /v1/whitelist/{user}`: `None` when the user is not whitelisted.
    pub fn lookup(&self, user: &str) -> Result<Option<EntryView>, ClientError> {
        let what = format!("GET /v1/whitelist/{user}");
        let mut resp = self
            .agent
            .get(self.url(&format!("/v1/whitelist/{}", encode(user))))
            .call()
            .map_err(|e| self.unreachable(e))?;
        match resp.status().as_u16() {
            404 => Ok(None),
            200 => {
                let body = self.read(&what, &mut resp)?;
                serde_json::from_slice(&body)
                    .map(Some)
                    .map_err(|e| ClientError::Garbled { what, reason: e.to_string() })
            }
            _ => Err(self.refused(&what, &mut resp)),
        }
    }

    pub fn add(
        &self,
        user: &str,
        services: &[String],
        ttl: Duration,
        reason: Option<&str>,
    ) -> Result<EntryView, ClientError> {
        let what = format!("PUT /v1/whitelist/{user}");
        let body = serde_json::json!({"services": services, "ttl_seconds": ttl.as_secs(), "reason": reason});
        let mut req = self.agent.put(self.url(&format!("/v1/whitelist/{}", encode(user))));
        if let Some(a) = self.auth() {
            req = req.header("Authorization", a);
        }
        let mut resp = req.send_json(&body).map_err(|e| self.unreachable(e))?;
        if resp.status() != 200 {
            return Err(self.refused(&what, &mut resp));
        }
        let body = self.read(&what, &mut resp)?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Garbled { what, reason: e.to_string() })
    }

    /// Removes a user (or one service of theirs). `Ok(false)` when there was nothing to remove.
    pub fn remove(&self, user: &str, service: Option<&str>) -> Result<bool, ClientError> {
        let path = match service {
            Some(s) => format!("/v1/whitelist/{}/{}", encode(user), encode(s)),
            None => format!("/v1/whitelist/{}", encode(user)),
        };
        let what = format!("DELETE {path}");
        let mut req = self.agent.delete(self.url(&path));
        if let Some(a) = self.auth() {
            req = req.header("Authorization", a);
        }
        let mut resp = req.call().map_err(|e| self.unreachable(e))?;
        match resp.status().as_u16() {
            204 | 200 => Ok(true),
            404 => Ok(false),
            _ => Err(self.refused(&what, &mut resp)),
        }
    }

    pub fn audit(&self) -> Result<Vec<AuditRecord>, ClientError> {
        Ok(self.get_json::<AuditBody>("/v1/audit")?.records)
    }
}
