//! The `[bridge]` table: topics, groups, bounds and the delivery guarantee.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid, valid_header_name, valid_topic_name};

/// What the bridge promises about each output after a crash, restart or rebalance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Every output at least once; after a crash an output may be written twice, on the same
    /// cluster (never on the other one: decisions are pinned).
    #[default]
    AtLeastOnce,
    /// Prod outputs and the Rush outbox commit atomically with the input offsets: a
    /// read_committed consumer sees each output once.
    ExactlyOnce,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AtLeastOnce => "at-least-once",
            Self::ExactlyOnce => "exactly-once",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    #[serde(default = "defaults::group_id")]
    pub group_id: String,
    #[serde(default = "defaults::output_topic")]
    pub output_topic: String,
    #[serde(default = "defaults::tenancy_header")]
    pub tenancy_header: String,
    /// Header the return path adds to what it forwards from Rush to prod (value `rush`); the
    /// raw topic's name goes in the same header name plus `-topic`.
    #[serde(default = "defaults::origin_header")]
    pub origin_header: String,
    /// Input records read but not yet acknowledged on every output; the consumer pauses above it.
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: usize,
    /// The same bound in bytes: keys and payloads of input records in flight, once per output
    /// (what the producers' queues hold), so large records or many services cannot fill the
    /// queues before the record bound is reached.
    #[serde(default = "defaults::max_in_flight_bytes")]
    pub max_in_flight_bytes: usize,
    /// On SIGTERM, how long to wait for outstanding outputs before exiting without committing them.
    #[serde(default = "defaults::drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Create missing output topics with the input's partition count.
    #[serde(default = "defaults::create_topics")]
    pub create_topics: bool,
    /// Read topic settings (DescribeConfigs): each input's, to create its outputs with them and
    /// size the clients by its `max.message.bytes`; and the bridge's own topics', to refuse a
    /// compacted one. Off: outputs get the broker's defaults and `max_record_bytes` sizes the
    /// clients (for topics managed elsewhere, e.g. by GitOps).
    #[serde(default = "defaults::create_topics")]
    pub copy_topic_settings: bool,
    /// Replication factor for created output topics; -1 uses the broker's default.
    #[serde(default = "defaults::replication_factor")]
    pub replication_factor: i32,
    /// How often consumed offsets that are fully acknowledged are committed.
    #[serde(default = "defaults::commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Prod topic (per route, `{topic}` replaced) where Rush copies wait for the Rush lane, so
    /// production progress never depends on the Rush cluster.
    #[serde(default = "defaults::rush_outbox_topic")]
    pub rush_outbox_topic: String,
    /// How long the Rush cluster may be away before a Rush copy is lost: the outbox's retention.
    #[serde(default = "defaults::rush_retention", with = "humantime_serde")]
    pub rush_retention: Duration,
    /// Consumer group of the Rush lane (outbox → Rush); default `{group_id}.rush`.
    #[serde(default)]
    pub rush_group_id: Option<String>,
    /// Prod topic (per route, `{topic}` replaced, partitioned like the input) recording which
    /// whitelist decides each input offset, so a replay decides it again the same way.
    #[serde(default = "defaults::decisions_topic")]
    pub decisions_topic: String,
    /// Prod topic (one partition) holding the whitelist snapshots the decision records name.
    #[serde(default = "defaults::snapshots_topic")]
    pub snapshots_topic: String,
    /// On prod: where a record goes whose output write fails for good (poison), with headers
    /// naming its input, service, cluster and error, so production keeps flowing past it.
    #[serde(default = "defaults::dead_letter_topic")]
    pub dead_letter_topic: String,
    /// Retention of both; records older than half of it are written again while still in use.
    #[serde(default = "defaults::decisions_retention", with = "humantime_serde")]
    pub decisions_retention: Duration,
    /// How old a pin or snapshot still in use may grow before it is written again (a partition
    /// whose whitelist has not changed for days keeps its decisions on record); default and
    /// at most half of `decisions_retention`.
    #[serde(default, with = "humantime_serde")]
    pub decisions_refresh: Option<Duration>,
    /// How long an input partition whose decision history cannot be read is held (not
    /// decided, tried again) before it is decided from the live whitelist; `0s` decides at once.
    #[serde(default = "defaults::decision_history_hold", with = "humantime_serde")]
    pub decision_history_hold: Duration,
    /// Most environments (besides the default one) served at once; placements in further
    /// environments (the last by name) are refused: their users' events stay in production.
    #[serde(default = "defaults::max_envs")]
    pub max_envs: usize,
    /// `at-least-once` (the default) or `exactly-once` (Kafka transactions on prod).
    #[serde(default)]
    pub delivery: Delivery,
    /// Exactly-once: how long one transaction collects outputs before it commits with its
    /// input offsets; a read_committed consumer sees an output at most this much later.
    #[serde(default = "defaults::transaction_interval", with = "humantime_serde")]
    pub transaction_interval: Duration,
    /// Exactly-once: how long the broker keeps a transaction of a vanished instance open
    /// before aborting it; read_committed consumers of its partitions wait that long at most.
    #[serde(default = "defaults::transaction_timeout", with = "humantime_serde")]
    pub transaction_timeout: Duration,
    /// Names this instance in its transactional id (`{group_id}.{instance_id}.forward`). It
    /// must differ between live instances and stay the same across a restart of one, so the
    /// restarted instance aborts what its predecessor left open. Default: the host name, plus
    /// the process id unless it is 1 ([`default_instance_id`]).
    #[serde(default)]
    pub instance_id: Option<String>,
    /// The largest record (bytes) the bridge relays: its producers take this plus room for the
    /// stamp. Default: the largest `max.message.bytes` of the route inputs, read at start.
    #[serde(default)]
    pub max_record_bytes: Option<usize>,
}

impl BridgeConfig {
    /// The forward direction's transactional id on prod (exactly-once).
    pub fn transactional_id(&self) -> String {
        let instance =
            self.instance_id.clone().unwrap_or_else(|| default_instance_id(&host_name(), std::process::id()));
        format!("{}.{instance}.forward", self.group_id)
    }

    /// Exactly-once: the prod group holding the return path's Rush offsets.
    pub fn return_progress_group(&self) -> String {
        format!("{}.return", self.group_id)
    }

    /// How old a pin or snapshot in use may grow before it is written again.
    pub fn decisions_refresh(&self) -> Duration {
        let half = self.decisions_retention / 2;
        self.decisions_refresh.map_or(half, |r| r.min(half))
    }

    pub fn rush_group_id(&self) -> String {
        self.rush_group_id.clone().unwrap_or_else(|| format!("{}.rush", self.group_id))
    }
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            group_id: defaults::group_id(),
            output_topic: defaults::output_topic(),
            tenancy_header: defaults::tenancy_header(),
            origin_header: defaults::origin_header(),
            max_in_flight: defaults::max_in_flight(),
            max_in_flight_bytes: defaults::max_in_flight_bytes(),
            drain_timeout: defaults::drain_timeout(),
            create_topics: defaults::create_topics(),
            copy_topic_settings: defaults::create_topics(),
            replication_factor: defaults::replication_factor(),
            commit_interval: defaults::commit_interval(),
            rush_outbox_topic: defaults::rush_outbox_topic(),
            rush_retention: defaults::rush_retention(),
            rush_group_id: None,
            decisions_topic: defaults::decisions_topic(),
            snapshots_topic: defaults::snapshots_topic(),
            dead_letter_topic: defaults::dead_letter_topic(),
            decisions_retention: defaults::decisions_retention(),
            decisions_refresh: None,
            decision_history_hold: defaults::decision_history_hold(),
            max_envs: defaults::max_envs(),
            delivery: Delivery::default(),
            transaction_interval: defaults::transaction_interval(),
            transaction_timeout: defaults::transaction_timeout(),
            instance_id: None,
            max_record_bytes: None,
        }
    }
}

impl BridgeConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let b = self;
        if b.group_id.trim().is_empty() {
            return Err(invalid("bridge.group_id", "must not be empty"));
        }
        if !b.output_topic.contains("{service}") {
            return Err(invalid(
                "bridge.output_topic",
                "must contain {service}, or every service of a route would share one topic",
            ));
        }
        if !b.output_topic.contains("{topic}") {
            return Err(invalid("bridge.output_topic", "must contain {topic}, or routes would share output topics"));
        }
        if !valid_header_name(&b.tenancy_header) {
            return Err(invalid("bridge.tenancy_header", "must be a non-empty printable ASCII name"));
        }
        if !valid_header_name(&b.origin_header) || b.origin_header == b.tenancy_header {
            return Err(invalid("bridge.origin_header", "must be a printable ASCII name other than tenancy_header"));
        }
        if b.max_envs > 10_000 {
            return Err(invalid("bridge.max_envs", "at most 10000: each environment has topics and a metric label"));
        }
        if b.max_in_flight == 0 {
            return Err(invalid("bridge.max_in_flight", "must be at least 1"));
        }
        if b.max_in_flight_bytes < 1 << 20 {
            return Err(invalid("bridge.max_in_flight_bytes", "must be at least 1048576 (1 MiB)"));
        }
        if !b.rush_outbox_topic.contains("{topic}") {
            return Err(invalid("bridge.rush_outbox_topic", "must contain {topic}, or routes would share an outbox"));
        }
        if !b.decisions_topic.contains("{topic}") {
            return Err(invalid("bridge.decisions_topic", "must contain {topic}, or routes would share one"));
        }
        if !valid_topic_name(&b.dead_letter_topic) {
            return Err(invalid("bridge.dead_letter_topic", "must be a valid topic name"));
        }
        if !valid_topic_name(&b.snapshots_topic) {
            return Err(invalid("bridge.snapshots_topic", "must be a valid topic name"));
        }
        if b.decisions_retention < Duration::from_secs(3600) {
            return Err(invalid("bridge.decisions_retention", "must be at least 1h"));
        }
        if let Some(r) = b.decisions_refresh
            && (r < Duration::from_secs(1) || r > b.decisions_retention / 2)
        {
            return Err(invalid(
                "bridge.decisions_refresh",
                "must be between 1s and half of bridge.decisions_retention",
            ));
        }
        if b.rush_retention < Duration::from_secs(60) {
            return Err(invalid("bridge.rush_retention", "must be at least 1m"));
        }
        if b.rush_group_id.as_ref().is_some_and(|g| g.trim().is_empty() || *g == b.group_id) {
            return Err(invalid("bridge.rush_group_id", "must be non-empty and differ from bridge.group_id"));
        }
        if b.replication_factor == 0 || b.replication_factor < -1 {
            return Err(invalid("bridge.replication_factor", "must be -1 (broker default) or ≥ 1"));
        }
        if let Some(id) = &self.instance_id {
            if id.trim().is_empty() || id.chars().any(|c| c.is_control()) {
                return Err(invalid("bridge.instance_id", "must be non-empty printable text"));
            }
        }
        if self.max_record_bytes.is_some_and(|n| !(1024..=1 << 30).contains(&n)) {
            return Err(invalid("bridge.max_record_bytes", "must be between 1024 and 1073741824"));
        }
        if self.transaction_interval < Duration::from_millis(10) {
            return Err(invalid("bridge.transaction_interval", "must be at least 10ms"));
        }
        if self.transaction_timeout < Duration::from_secs(1) || self.transaction_timeout < 4 * self.transaction_interval
        {
            return Err(invalid(
                "bridge.transaction_timeout",
                "must be at least 1s and 4 × transaction_interval, or healthy transactions would time out",
            ));
        }
        Ok(())
    }
}

/// The host name, which a pod or a container keeps across restarts of the process.
/// `{host}-{pid}`, or `{host}` for process 1. Two processes on one host (a systemd template, a
/// VM running two replicas, containers sharing the host's name) never share it, so they never
/// fence each other's transactional id; a container's own process (pid 1, a host name of its
/// own) keeps it across restarts. Elsewhere a restarted process gets a new id, and read_committed
/// readers of its partitions wait for the broker to abort what it left open
/// (`bridge.transaction_timeout` and the broker's next abort check); a stable explicit
/// `instance_id` shortens that.
pub fn default_instance_id(host: &str, pid: u32) -> String {
    if pid == 1 { host.to_owned() } else { format!("{host}-{pid}") }
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tenancy-bridge".into())
}

mod defaults {
    use std::time::Duration;
    pub fn max_in_flight_bytes() -> usize {
        64 << 20
    }
    pub fn group_id() -> String {
        "tenancy-bridge".into()
    }
    pub fn output_topic() -> String {
        "{topic}.{service}".into()
    }
    pub fn tenancy_header() -> String {
        "event_tenancy".into()
    }
    pub fn origin_header() -> String {
        "tenancy-origin".into()
    }
    pub fn max_in_flight() -> usize {
        // High enough that the byte bound decides on a healthy cluster: 20,000 paused and
        // resumed the consumer so often that it capped a 1 KiB stream at about half of what a
        // plain copy loop moves (benches/throughput.rs).
        100_000
    }
    pub fn drain_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn create_topics() -> bool {
        true
    }
    pub fn replication_factor() -> i32 {
        -1
    }
    pub fn commit_interval() -> Duration {
        Duration::from_secs(1)
    }
    pub fn rush_outbox_topic() -> String {
        "tenancy-bridge.rush.{topic}".into()
    }
    pub fn rush_retention() -> Duration {
        Duration::from_secs(7 * 24 * 3600)
    }
    pub fn decisions_topic() -> String {
        "tenancy-bridge.decisions.{topic}".into()
    }
    pub fn snapshots_topic() -> String {
        "tenancy-bridge.snapshots".into()
    }
    pub fn dead_letter_topic() -> String {
        "tenancy-bridge.dead-letter".into()
    }
    pub fn decisions_retention() -> Duration {
        Duration::from_secs(7 * 24 * 3600)
    }
    pub fn decision_history_hold() -> Duration {
        Duration::from_secs(60)
    }
    pub fn max_envs() -> usize {
        100
    }
    pub fn transaction_interval() -> Duration {
        // Each commit first waits for every write in flight, which empties librdkafka's
        // pipeline: at 100 ms exactly-once ran at 0.5× at-least-once on tansu, at 1 s at 0.87×
        // (benches/throughput.rs). Kafka Connect's exactly-once sources commit per offset flush
        // (60 s); a read_committed consumer sees outputs up to one interval later.
        Duration::from_secs(1)
    }
    pub fn transaction_timeout() -> Duration {
        Duration::from_secs(10)
    }
}
