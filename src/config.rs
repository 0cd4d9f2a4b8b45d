//! The configuration file: TOML, typed and validated once at start.
//!
//! Parsing goes raw TOML → environment overrides → typed structs (`deny_unknown_fields`, so
//! a typo is an error naming the key) → `Config::validate`, which checks what types cannot
//! (loops, duplicate outputs, one user source per route) and resolves every output topic.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::extract::{JsonPointer, UserLocator};

mod bridge;
pub use bridge::{BridgeConfig, Delivery};

/// Prefix of environment variables that override config keys: `TENANCY_BRIDGE__PROD__BOOTSTRAP_SERVERS`
/// sets `prod.bootstrap_servers`; `__` separates table levels.
pub const ENV_PREFIX: &str = "TENANCY_BRIDGE__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config is not valid TOML or has a wrong key or type: {0}")]
    Parse(String),
    #[error("environment variable {var}: {reason}")]
    Env { var: String, reason: String },
    #[error("`{field}`: {reason}")]
    Invalid { field: String, reason: String },
}

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), reason: reason.into() }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub bootstrap_servers: String,
    /// librdkafka properties for every client of this cluster, passed through unchanged;
    /// librdkafka checks them at validate time.
    #[serde(default)]
    pub kafka: BTreeMap<String, toml::Value>,
    /// Properties for this cluster's consumers only (`session.timeout.ms`, `fetch.*`, …), applied
    /// after `kafka`, so librdkafka does not warn about consumer properties on producers.
    #[serde(default)]
    pub consumer: BTreeMap<String, toml::Value>,
    /// Properties for this cluster's producers only (`linger.ms`, `compression.type`, …).
    #[serde(default)]
    pub producer: BTreeMap<String, toml::Value>,
}

/// Which of a cluster's property tables apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRole {
    Consumer,
    Producer,
    Admin,
}

impl ClusterConfig {
    /// The properties for a client in `role`: the shared table, then the role's own (which wins).
    /// librdkafka wants every value as a string; TOML lets users write numbers and booleans.
    pub fn kafka_properties(&self, role: ClientRole) -> impl Iterator<Item = (&str, String)> {
        let own = match role {
            ClientRole::Consumer => Some(&self.consumer),
            ClientRole::Producer => Some(&self.producer),
            ClientRole::Admin => None,
        };
        self.kafka.iter().chain(own.into_iter().flatten()).map(|(k, v)| {
            let v = match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.as_str(), v)
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WhitelistMode {
    #[default]
    Snapshot,
    Lookup,
}

/// The daemon's admin HTTP endpoint: `/metrics`, `/livez`, `/readyz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on; empty turns the endpoint off.
    #[serde(default = "defaults::admin_listen")]
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: defaults::admin_listen() }
    }
}

/// Traces of the bridge hop for Rush-stamped and return-path records.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/HTTP endpoint (e.g. `http://tempo:4318`); else `OTEL_EXPORTER_OTLP_ENDPOINT`; unset: no export.
    pub otlp_endpoint: Option<String>,
    /// `http/protobuf` (default) or `http/json`; else `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub otlp_protocol: Option<String>,
    /// The `service.name` resource attribute (default `tenancy-bridge`).
    pub service_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhitelistConfig {
    /// Config Mapper base URL.
    pub url: Option<String>,
    /// A local whitelist file (the Config Mapper's snapshot JSON), reloaded when it changes.
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub mode: WhitelistMode,
    #[serde(default = "defaults::refresh", with = "humantime_serde")]
    pub refresh: Duration,
    /// Lookup mode: how long a listed user's answer is reused (a change takes this long).
    #[serde(default = "defaults::cache_ttl", with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Lookup mode: how long "not whitelisted" is reused.
    #[serde(default = "defaults::negative_ttl", with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// Lookup mode: most users cached.
    #[serde(default = "defaults::cache_size")]
    pub cache_size: u64,
    /// Lookup mode: concurrent lookups.
    #[serde(default = "defaults::lookup_workers")]
    pub lookup_workers: usize,
    /// Lookup mode: longest a record waits for its user's first answer; after it, and while the
    /// Config Mapper fails or answers slower than this, users not cached are production.
    #[serde(default = "defaults::lookup_wait", with = "humantime_serde")]
    pub lookup_wait: Duration,
    /// Timeout of one request to the Config Mapper.
    #[serde(default = "defaults::request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// CA certificates (PEM) trusted for an `https` Config Mapper besides the built-in Mozilla
    /// roots; else
    /// `$TENANCY_BRIDGE_CA_FILE`.
    pub ca_file: Option<PathBuf>,
}

impl Default for WhitelistConfig {
    fn default() -> Self {
        Self {
            url: None,
            file: None,
            ca_file: None,
            mode: WhitelistMode::Snapshot,
            refresh: defaults::refresh(),
            cache_ttl: defaults::cache_ttl(),
            negative_ttl: defaults::negative_ttl(),
            cache_size: defaults::cache_size(),
            lookup_workers: defaults::lookup_workers(),
            lookup_wait: defaults::lookup_wait(),
            request_timeout: defaults::request_timeout(),
        }
    }
}

mod defaults {
    use std::time::Duration;
    pub fn refresh() -> Duration {
        Duration::from_secs(1)
    }
    pub fn cache_ttl() -> Duration {
        Duration::from_secs(10)
    }
    pub fn negative_ttl() -> Duration {
        Duration::from_secs(5)
    }
    pub fn cache_size() -> u64 {
        100_000
    }
    pub fn lookup_workers() -> usize {
        8
    }
    pub fn lookup_wait() -> Duration {
        Duration::from_millis(200)
    }
    pub fn request_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn admin_listen() -> String {
        "127.0.0.1:9464".into()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUserSource {
    header: Option<String>,
    json: Option<String>,
    key: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    topic: String,
    services: Vec<String>,
    user: RawUserSource,
    #[serde(default)]
    stamp: StampMode,
    #[serde(default)]
    upstream_stamps: UpstreamStamps,
    #[serde(default)]
    return_path: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    prod: ClusterConfig,
    rush: ClusterConfig,
    #[serde(default)]
    whitelist: WhitelistConfig,
    #[serde(default)]
    bridge: BridgeConfig,
    #[serde(default)]
    admin: AdminConfig,
    #[serde(default)]
    telemetry: TelemetryConfig,
    routes: Vec<RawRoute>,
}

/// One consuming service of a route and its output topic (same name on both clusters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub output_topic: String,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub topic: String,
    pub services: Vec<Service>,
    pub user: UserLocator,
    pub stamp: StampMode,
    pub upstream_stamps: UpstreamStamps,
    pub return_path: bool,
    /// Where this route's Rush copies wait on prod for the Rush lane.
    pub outbox_topic: String,
    /// Where this route's decisions are pinned on prod.
    pub decisions_topic: String,
}

/// The validated configuration. Built only through [`Config::parse`], so every instance is valid.
#[derive(Debug, Clone)]
pub struct Config {
    pub prod: ClusterConfig,
    pub rush: ClusterConfig,
    pub whitelist: WhitelistConfig,
    pub bridge: BridgeConfig,
    pub admin: AdminConfig,
    pub telemetry: TelemetryConfig,
    pub routes: Vec<Route>,
}

/// Routes can have at most this many services: a decision is a bit set over them.
pub const MAX_SERVICES_PER_ROUTE: usize = 64;

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, std::env::vars())
    }

    /// Parses `text`, applies `TENANCY_BRIDGE__*` overrides found in `env`, and validates.
    pub fn parse(text: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        apply_env_overrides(&mut table, env)?;
        let raw: RawConfig =
            RawConfig::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse(e.to_string()))?;
        Self::validate(raw)
    }

    fn validate(raw: RawConfig) -> Result<Self, ConfigError> {
        for (name, c) in [("prod", &raw.prod), ("rush", &raw.rush)] {
            if c.bootstrap_servers.trim().is_empty() {
                return Err(invalid(format!("{name}.bootstrap_servers"), "must not be empty"));
            }
            for (table, props) in [("kafka", &c.kafka), ("consumer", &c.consumer), ("producer", &c.producer)] {
                for key in [
                    "bootstrap.servers",
                    "group.id",
                    "enable.auto.commit",
                    "enable.auto.offset.store",
                    "transactional.id",
                ] {
                    if props.contains_key(key) {
                        return Err(invalid(
                            format!("{name}.{table}.\"{key}\""),
                            "is set by the bridge itself; use the dedicated key",
                        ));
                    }
                }
            }
        }
        if same_servers(&raw.prod.bootstrap_servers, &raw.rush.bootstrap_servers) {
            return Err(invalid(
                "rush.bootstrap_servers",
                "names the prod cluster: outputs would collide and the return path would loop",
            ));
        }
        raw.bridge.validate()?;
        let b = &raw.bridge;
        let w = &raw.whitelist;
        if w.url.is_some() && w.file.is_some() {
            return Err(invalid("whitelist", "set either `url` or `file`, not both"));
        }
        if w.url.is_none() && w.file.is_none() {
            return Err(invalid("whitelist", "set `url` (a Config Mapper) or `file` (a local snapshot)"));
        }
        if let Some(url) = &w.url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid("whitelist.url", format!("{url:?} is not an http(s) URL")));
            }
        }
        if w.refresh.is_zero() {
            return Err(invalid("whitelist.refresh", "must be greater than zero"));
        }
        if w.mode == WhitelistMode::Lookup && w.url.is_none() {
            return Err(invalid("whitelist.mode", "\"lookup\" asks a Config Mapper per user: set whitelist.url"));
        }
        for (field, d) in [
            ("whitelist.cache_ttl", w.cache_ttl),
            ("whitelist.negative_ttl", w.negative_ttl),
            ("whitelist.request_timeout", w.request_timeout),
            ("whitelist.lookup_wait", w.lookup_wait),
        ] {
            if d.is_zero() {
                return Err(invalid(field, "must be greater than zero"));
            }
        }
        if w.cache_size == 0 {
            return Err(invalid("whitelist.cache_size", "must be at least 1"));
        }
        if w.lookup_workers == 0 || w.lookup_workers > 256 {
            return Err(invalid("whitelist.lookup_workers", "must be between 1 and 256"));
        }
        if raw.routes.is_empty() {
            return Err(invalid("routes", "at least one [[routes]] entry is required"));
        }

        let mut routes = Vec::with_capacity(raw.routes.len());
        let mut inputs = BTreeSet::new();
        for (i, r) in raw.routes.into_iter().enumerate() {
            let at = |f: &str| format!("routes[{i}].{f}");
            if !valid_topic_name(&r.topic) {
                return Err(invalid(at("topic"), format!("{:?} is not a valid Kafka topic name", r.topic)));
            }
            if !inputs.insert(r.topic.clone()) {
                return Err(invalid(at("topic"), format!("topic {:?} has two routes", r.topic)));
            }
            if r.services.is_empty() {
                return Err(invalid(at("services"), "must list at least one service"));
            }
            if r.services.len() > MAX_SERVICES_PER_ROUTE {
                return Err(invalid(at("services"), format!("at most {MAX_SERVICES_PER_ROUTE} services")));
            }
            let mut services: Vec<Service> = Vec::with_capacity(r.services.len());
            for (j, name) in r.services.iter().enumerate() {
                if !valid_service_name(name) {
                    return Err(invalid(
                        format!("routes[{i}].services[{j}]"),
                        format!("{name:?}: use letters, digits, '.', '-' or '_'"),
                    ));
                }
                if services.iter().any(|s| &s.name == name) {
                    return Err(invalid(format!("routes[{i}].services[{j}]"), format!("{name:?} is listed twice")));
                }
                let output_topic = b.output_topic.replace("{topic}", &r.topic).replace("{service}", name);
                if !valid_topic_name(&output_topic) {
                    return Err(invalid(
                        "bridge.output_topic",
                        format!("gives {output_topic:?} for route {:?}, not a valid topic name", r.topic),
                    ));
                }
                services.push(Service { name: name.clone(), output_topic });
            }
            let user = match (r.user.header, r.user.json, r.user.key) {
                (Some(h), None, None | Some(false)) if !h.is_empty() => UserLocator::Header(h),
                (None, Some(p), None | Some(false)) => {
                    UserLocator::Json(JsonPointer::parse(&p).map_err(|reason| invalid(at("user.json"), reason))?)
                }
                (None, None, Some(true)) => UserLocator::Key,
                _ => {
                    return Err(invalid(
                        at("user"),
                        "set exactly one of { header = \"name\" }, { json = \"/pointer\" }, { key = true }",
                    ));
                }
            };
            let outbox_topic = b.rush_outbox_topic.replace("{topic}", &r.topic);
            if !valid_topic_name(&outbox_topic) {
                return Err(invalid(
                    "bridge.rush_outbox_topic",
                    format!("gives {outbox_topic:?} for route {:?}, not a valid topic name", r.topic),
                ));
            }
            let decisions_topic = b.decisions_topic.replace("{topic}", &r.topic);
            if !valid_topic_name(&decisions_topic) {
                return Err(invalid(
                    "bridge.decisions_topic",
                    format!("gives {decisions_topic:?} for route {:?}, not a valid topic name", r.topic),
                ));
            }
            routes.push(Route {
                topic: r.topic,
                services,
                user,
                stamp: r.stamp,
                upstream_stamps: r.upstream_stamps,
                return_path: r.return_path,
                outbox_topic,
                decisions_topic,
            });
        }

        // An output that is also an input would feed the bridge its own writes.
        let mut outputs = BTreeMap::new();
        if inputs.contains(&b.snapshots_topic) {
            return Err(invalid("bridge.snapshots_topic", format!("{:?} is also a route input", b.snapshots_topic)));
        }
        outputs.insert(b.snapshots_topic.clone(), "(the snapshot log)".to_string());
        for r in &routes {
            for (topic, field, what) in [
                (&r.outbox_topic, "bridge.rush_outbox_topic", "outbox"),
                (&r.decisions_topic, "bridge.decisions_topic", "decision log"),
            ] {
                if inputs.contains(topic) {
                    return Err(invalid(field, format!("{what} {topic:?} is also a route input: that is a loop")));
                }
                if let Some(other) = outputs.insert(topic.clone(), r.topic.clone()) {
                    return Err(invalid(field, format!("routes {other:?} and {:?} both write {topic:?}", r.topic)));
                }
            }
            for s in &r.services {
                if inputs.contains(&s.output_topic) {
                    return Err(invalid(
                        format!("routes[topic={}].services", r.topic),
                        format!("output topic {:?} is also a route input: that is a loop", s.output_topic),
                    ));
                }
                if let Some(other) = outputs.insert(s.output_topic.clone(), r.topic.clone()) {
                    return Err(invalid(
                        "bridge.output_topic",
                        format!("routes {other:?} and {:?} both write {:?}", r.topic, s.output_topic),
                    ));
                }
            }
        }

        if !raw.admin.listen.is_empty() && raw.admin.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid("admin.listen", "must be host:port with an IP address (e.g. 0.0.0.0:9464), or empty"));
        }
        if let Some(p) = &raw.telemetry.otlp_protocol {
            if p != "http/protobuf" && p != "http/json" {
                return Err(invalid("telemetry.otlp_protocol", "must be \"http/protobuf\" or \"http/json\""));
            }
        }
        Ok(Config {
            prod: raw.prod,
            rush: raw.rush,
            whitelist: raw.whitelist,
            bridge: raw.bridge,
            admin: raw.admin,
            telemetry: raw.telemetry,
            routes,
        })
    }
}

/// Same broker list, ignoring order, case and spaces.
fn same_servers(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        let mut v: Vec<String> =
            s.split(',').map(|x| x.trim().to_ascii_lowercase()).filter(|x| !x.is_empty()).collect();
        v.sort();
        v
    };
    norm(a) == norm(b)
}

pub(crate) fn valid_topic_name(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

fn valid_service_name(s: &str) -> bool {
    valid_topic_name(s)
}

pub(crate) fn valid_header_name(h: &str) -> bool {
    !h.is_empty() && h.bytes().all(|c| c.is_ascii_graphic())
}

/// `TENANCY_BRIDGE__A__B=v` sets `a.b = v`. The value is read as a TOML value when it parses as
/// one (`true`, `5`, `"x"`, `["a","b"]`), else as a plain string, so `host:9092` needs no quotes.
fn apply_env_overrides(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (var, value) in env {
        let Some(path) = var.strip_prefix(ENV_PREFIX) else { continue };
        let keys: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
        if keys.iter().any(|k| k.is_empty()) {
            return Err(ConfigError::Env { var, reason: "empty key segment".into() });
        }
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value));
        let (last, parents) =
            keys.split_last().ok_or_else(|| ConfigError::Env { var: var.clone(), reason: "names no key".into() })?;
        let mut cur = &mut *table;
        for k in parents {
            let entry = cur.entry(k.clone()).or_insert_with(|| toml::Value::Table(Default::default()));
            cur = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Env {
                        var,
                        reason: format!("`{k}` is not a table, cannot set a key inside it"),
                    });
                }
            };
        }
        cur.insert(last.clone(), parsed);
    }
    Ok(())
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;

/// Where the Rush copy carries its tenancy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StampMode {
    #[default]
    Header,
    Payload,
    Both,
}

impl StampMode {
    pub fn header(self) -> bool {
        matches!(self, Self::Header | Self::Both)
    }
    pub fn payload(self) -> bool {
        matches!(self, Self::Payload | Self::Both)
    }
}

/// What a route does with a tenancy stamp an event already carries (set upstream by a producer
/// library or a gateway, or passed on by a service that copies its input's headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamStamps {
    /// Honoured only for the (user, service) pairs the whitelist holds, in the epoch the event
    /// is decided with: the whitelist stays the one authority that moves an event off prod.
    #[default]
    Verify,
    /// Every well-formed stamp is honoured, whitelisted or not.
    Trust,
    /// Stamps are not read: the event is decided by its user, as if unstamped.
    Ignore,
}

impl UpstreamStamps {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Verify => "verify",
            Self::Trust => "trust",
            Self::Ignore => "ignore",
        }
    }
}

/// An input partition: the index of its route in [`Config::routes`] and its partition number.
/// What the relay tracks, commits and pins per partition is keyed by it.
pub type PartitionKey = (usize, i32);
