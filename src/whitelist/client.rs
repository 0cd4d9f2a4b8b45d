//! A blocking HTTP client of the Config Mapper API, shared by the `whitelist` CLI and the
//! bridge's snapshot poller. Every request has a timeout; bodies are size-capped.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use reqwest::blocking::Response;

use super::{Snapshot, SnapshotError};

/// Environment variable naming a PEM file of CA certificates every Config Mapper client trusts
/// besides the built-in Mozilla roots (the CLI's commands; the daemon also reads `whitelist.ca_file`).
pub const CA_FILE_ENV: &str = "TENANCY_BRIDGE_CA_FILE";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("Config Mapper at {url} is unreachable: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("CA file {path}: {reason}")]
    Ca { path: std::path::PathBuf, reason: String },
    #[error("cannot set up the HTTP client: {0}")]
    Setup(reqwest::Error),
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
    http: reqwest::blocking::Client,
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
    /// Absent: the default environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

impl EntryView {
    pub fn env(&self) -> &str {
        self.env.as_deref().unwrap_or(crate::environment::DEFAULT)
    }
}

/// One live environment, as `GET /v1/envs` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnvView {
    pub env: String,
    pub users: Vec<String>,
    pub services: Vec<String>,
    /// When its last placement expires, and the environment with it.
    pub expires_at: String,
}

#[derive(Deserialize)]
struct EnvsBody {
    envs: Vec<EnvView>,
}

/// `GET /v1/whitelist/{user}`: the old form is one entry; a Config Mapper with environments
/// adds every placement of the user under `entries`.
#[derive(Deserialize)]
struct UserBody {
    #[serde(flatten)]
    entry: EntryView,
    #[serde(default)]
    entries: Option<Vec<EntryView>>,
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
    /// A client of the Config Mapper at `base`; every request ends within `timeout`.
    /// A client trusting the built-in Mozilla roots and the CAs in `$TENANCY_BRIDGE_CA_FILE`, if
    /// set.
    pub fn new(base: &str, token: Option<String>, timeout: Duration) -> Result<Self, ClientError> {
        let ca = std::env::var_os(CA_FILE_ENV).map(std::path::PathBuf::from);
        Self::with_ca(base, token, timeout, ca.as_deref())
    }

    /// A client trusting the built-in Mozilla roots and the CAs in the PEM file `ca` (a private
    /// CA that signed an `https` Config Mapper's certificate).
    pub fn with_ca(
        base: &str,
        token: Option<String>,
        timeout: Duration,
        ca: Option<&std::path::Path>,
    ) -> Result<Self, ClientError> {
        let mut builder = reqwest::blocking::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("tenancy-bridge/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca {
            let fail = |reason: String| ClientError::Ca { path: path.to_owned(), reason };
            let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| fail(e.to_string()))?;
            if certs.is_empty() {
                return Err(fail("no CERTIFICATE in it".into()));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(ClientError::Setup)?;
        Ok(Self { base: base.trim_end_matches('/').to_owned(), http, token })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn unreachable(&self, source: reqwest::Error) -> ClientError {
        ClientError::Unreachable { url: self.base.clone(), source: source.without_url() }
    }

    fn call(&self, req: reqwest::blocking::RequestBuilder) -> Result<Response, ClientError> {
        req.send().map_err(|e| self.unreachable(e))
    }

    fn read(&self, what: &str, resp: Response) -> Result<Vec<u8>, ClientError> {
        use std::io::Read;
        let garbled = |reason: String| ClientError::Garbled { what: what.to_owned(), reason };
        let mut body = Vec::new();
        resp.take(MAX_ANSWER + 1).read_to_end(&mut body).map_err(|e| garbled(e.to_string()))?;
        if body.len() as u64 > MAX_ANSWER {
            return Err(garbled(format!("larger than {MAX_ANSWER} bytes")));
        }
        Ok(body)
    }

    fn refused(&self, what: &str, resp: Response) -> ClientError {
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
        let mut req = self.http.get(self.url("/v1/whitelist"));
        if let Some(e) = etag {
            req = req.header("If-None-Match", e);
        }
        let resp = self.call(req)?;
        match resp.status().as_u16() {
            304 => Ok(SnapshotAnswer::NotModified),
            200 => {
                let etag = resp.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_owned);
                let body = self.read("GET /v1/whitelist", resp)?;
                Ok(SnapshotAnswer::Changed { snapshot: Snapshot::from_json(&body)?, etag })
            }
            _ => Err(self.refused("GET /v1/whitelist", resp)),
        }
    }

    /// `GET path`, expecting 200 and a JSON body of type `T`.
    fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let what = format!("GET {path}");
        let resp = self.call(self.http.get(self.url(path)))?;
        if resp.status() != 200 {
            return Err(self.refused(&what, resp));
        }
        let body = self.read(&what, resp)?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Garbled { what, reason: e.to_string() })
    }

    pub fn list(&self) -> Result<Vec<EntryView>, ClientError> {
        Ok(self.get_json::<SnapshotBody>("/v1/whitelist")?.entries)
    }

    /// `GET /v1/whitelist/{user}`: the user's placements, none when not whitelisted.
    pub fn lookup(&self, user: &str) -> Result<Vec<EntryView>, ClientError> {
        let what = format!("GET /v1/whitelist/{user}");
        let resp = self.call(self.http.get(self.url(&format!("/v1/whitelist/{}", encode(user)))))?;
        match resp.status().as_u16() {
            404 => Ok(Vec::new()),
            200 => {
                let body = self.read(&what, resp)?;
                let body: UserBody =
                    serde_json::from_slice(&body).map_err(|e| ClientError::Garbled { what, reason: e.to_string() })?;
                Ok(body.entries.unwrap_or_else(|| vec![body.entry]))
            }
            _ => Err(self.refused(&what, resp)),
        }
    }

    /// Places `user`'s `services` in `env` (`None`: the default environment).
    pub fn add(
        &self,
        user: &str,
        services: &[String],
        ttl: Duration,
        reason: Option<&str>,
        env: Option<&str>,
    ) -> Result<EntryView, ClientError> {
        let what = format!("PUT /v1/whitelist/{user}");
        let mut body = serde_json::json!({"services": services, "ttl_seconds": ttl.as_secs(), "reason": reason});
        if let Some(env) = env {
            body["env"] = serde_json::Value::from(env);
        }
        let mut req = self
            .http
            .put(self.url(&format!("/v1/whitelist/{}", encode(user))))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(a) = self.auth() {
            req = req.header("Authorization", a);
        }
        let resp = self.call(req)?;
        if resp.status() != 200 {
            return Err(self.refused(&what, resp));
        }
        let body = self.read(&what, resp)?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Garbled { what, reason: e.to_string() })
    }

    /// Removes a user (or one service of theirs). `Ok(false)` when there was nothing to remove.
    pub fn remove(&self, user: &str, service: Option<&str>) -> Result<bool, ClientError> {
        self.delete(&match service {
            Some(s) => format!("/v1/whitelist/{}/{}", encode(user), encode(s)),
            None => format!("/v1/whitelist/{}", encode(user)),
        })
    }

    /// An authorised `DELETE`: `Ok(false)` when there was nothing to delete.
    fn delete(&self, path: &str) -> Result<bool, ClientError> {
        let what = format!("DELETE {path}");
        let mut req = self.http.delete(self.url(path));
        if let Some(a) = self.auth() {
            req = req.header("Authorization", a);
        }
        let resp = self.call(req)?;
        match resp.status().as_u16() {
            204 | 200 => Ok(true),
            404 => Ok(false),
            _ => Err(self.refused(&what, resp)),
        }
    }

    pub fn envs(&self) -> Result<Vec<EnvView>, ClientError> {
        Ok(self.get_json::<EnvsBody>("/v1/envs")?.envs)
    }

    /// `DELETE /v1/envs/{env}`: ends an environment. `Ok(false)` when it had no entries.
    pub fn end_env(&self, env: &str) -> Result<bool, ClientError> {
        self.delete(&format!("/v1/envs/{}", encode(env)))
    }

    pub fn audit(&self) -> Result<Vec<AuditRecord>, ClientError> {
        Ok(self.get_json::<AuditBody>("/v1/audit")?.records)
    }
}

/// One audited change, as stored and as `GET /v1/audit` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub id: i64,
    pub at: String,
    pub who: String,
    pub action: String,
    pub user: String,
    /// The environment changed (absent in records from before environments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    pub services: Vec<String>,
    pub ttl_seconds: Option<i64>,
    pub reason: Option<String>,
}
