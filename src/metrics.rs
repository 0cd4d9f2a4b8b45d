//! Every Prometheus metric of the bridge, defined once. Labels are routes, services, clusters,
//! reasons and partitions, never users. The hot path holds handles resolved at start
//! ([`RouteMetrics`], [`OutputMetrics`]), so counting a record is an atomic add.

use std::collections::HashMap;

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::config::Config;
use crate::environment;
use crate::extract::Passthrough;
use crate::kafka::ErrorClass;
use crate::tenancy::Cluster;

pub const PREFIX: &str = "tenancy_bridge";

/// Seconds from an event's timestamp to its output's acknowledgement.
const AGE_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
/// Seconds to decide one record (extract, whitelist, plan the stamp); sampled.
const DECISION_BUCKETS: &[f64] = &[1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6, 5e-6, 1e-5, 5e-5, 1e-4, 1e-3];

#[derive(Debug, thiserror::Error)]
#[error("metric registry: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

pub struct Metrics {
    pub registry: Registry,
    pub records_in: IntCounterVec,
    pub records_out: IntCounterVec,
    pub rush_stamped: IntCounterVec,
    pub passthrough: IntCounterVec,
    pub upstream_honoured: IntCounterVec,
    pub upstream_rejected: IntCounterVec,
    pub produce_errors: IntCounterVec,
    pub dead_letter: IntCounterVec,
    pub uncommitted: IntGaugeVec,
    pub consumer_errors: IntCounterVec,
    pub backpressure_pauses: IntCounterVec,
    pub revoke_purges: IntCounterVec,
    pub commit_failures: IntCounterVec,
    pub assigned_partitions: IntGaugeVec,
    pub record_age: HistogramVec,
    pub decision_seconds: Histogram,
    pub return_records: IntCounterVec,
    pub consumer_lag: IntGaugeVec,
    pub kafka_queue_messages: IntGaugeVec,
    pub kafka_broker_rtt: GaugeVec,
    pub kafka_broker_errors: IntGaugeVec,
    pub whitelist_version: IntGauge,
    pub whitelist_entries: IntGauge,
    pub whitelist_staleness: Gauge,
    pub whitelist_refresh_errors: IntCounter,
    pub lookup_requests: IntCounter,
    pub lookup_unanswered: IntCounter,
    pub lookup_held: IntGauge,
    pub lookup_degraded: IntGauge,
    pub rush_backlog: IntGauge,
    pub rush_backlog_age: Gauge,
    pub rush_lane_restarts: IntCounter,
    pub forward_restarts: IntCounter,
    pub rush_outbox_invalid: IntCounter,
    pub rush_copies_lost: IntCounter,
    pub rush_routes_broken: IntGauge,
    pub rush_envs: IntGauge,
    pub rush_env_topics_mismatched: IntGauge,
    pub envs_refused: IntGauge,
    pub decision_pins: IntCounter,
    pub decision_pins_refreshed: IntCounter,
    pub decisions_replayed: IntCounter,
    pub decision_history_unreadable: IntCounter,
    pub decision_history_held: IntGauge,
    pub transactions: IntCounterVec,
    pub lane_transactions: IntCounterVec,
    pub progress_new_source: IntCounterVec,
    pub return_path_restarts: IntCounter,
    pub transaction_seconds: Histogram,
    pub ready: IntGauge,
}

fn name(n: &str) -> String {
    format!("{PREFIX}_{n}")
}

/// Registers `m` and hands it back, so each metric is defined and registered in one place.
fn reg<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, m: M) -> Result<M, MetricsError> {
    registry.register(Box::new(m.clone()))?;
    Ok(m)
}

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let counter = |n: &str, help: &str, labels: &[&str]| {
            reg(&registry, IntCounterVec::new(Opts::new(name(n), help), labels)?)
        };
        let gauge =
            |n: &str, help: &str, labels: &[&str]| reg(&registry, IntGaugeVec::new(Opts::new(name(n), help), labels)?);
        let m = Self {
            records_in: counter("records_in_total", "Input records read from a route topic on prod.", &["route"])?,
            records_out: counter(
                "records_out_total",
                "Outputs acknowledged, by route, service, destination cluster and (on Rush) environment.",
                &["route", "service", "cluster", "env"],
            )?,
            rush_stamped: counter(
                "rush_stamped_total",
                "Rush copies stamped with event_tenancy, by route, service and environment.",
                &["route", "service", "env"],
            )?,
            passthrough: counter(
                "passthrough_total",
                "Records sent to production unchanged without a whitelist lookup, by reason.",
                &["route", "reason"],
            )?,
            upstream_honoured: counter(
                "upstream_honoured_total",
                "Records whose existing event_tenancy stamp was honoured in full (the whitelist held every pair it named, \
                 or the route trusts stamps).",
                &["route"],
            )?,
            upstream_rejected: counter(
                "upstream_rejected_total",
                "Copies kept on prod because an existing event_tenancy stamp named a (user, service) the whitelist \
                 did not hold, by route and service.",
                &["route", "service"],
            )?,
            dead_letter: counter(
                "dead_letter_total",
                "Records written to the dead-letter topic instead of an output (poison), by route, service and reason.",
                &["route", "service", "reason"],
            )?,
            produce_errors: counter(
                "produce_errors_total",
                "Failed writes by cluster and class (retry, fatal, poison).",
                &["cluster", "class"],
            )?,
            uncommitted: gauge(
                "uncommitted_records",
                "Records read but not yet committed (outputs pending), by direction.",
                &["direction"],
            )?,
            consumer_errors: counter(
                "consumer_errors_total",
                "Consumer errors that were retried (a fatal one stops the bridge), by direction.",
                &["direction"],
            )?,
            backpressure_pauses: counter(
                "backpressure_pauses_total",
                "Times the consumer paused because what is in flight stayed at its bound for a second, by direction.",
                &["direction"],
            )?,
            revoke_purges: counter(
                "revoke_purges_total",
                "At-least-once revokes whose drain timed out: queued outputs dropped so none is written after the next \
                 owner starts, by direction.",
                &["direction"],
            )?,
            commit_failures: counter(
                "commit_failures_total",
                "Offset commits the broker refused (offered again; a crash replays from the last good one).",
                &["direction"],
            )?,
            assigned_partitions: gauge(
                "assigned_partitions",
                "Partitions this instance owns, by direction (forward: prod routes, return: Rush raw topics).",
                &["direction"],
            )?,
            record_age: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(name("record_age_seconds"), "Event timestamp to output acknowledgement.")
                        .buckets(AGE_BUCKETS.to_vec()),
                    &["cluster"],
                )?,
            )?,
            decision_seconds: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(name("decision_seconds"), "Time to decide one record (1 in 64 sampled).")
                        .buckets(DECISION_BUCKETS.to_vec()),
                )?,
            )?,
            return_records: counter(
                "return_records_total",
                "Return path records: read on Rush, forwarded (acknowledged on prod), dropped as loops.",
                &["route", "outcome"],
            )?,
            consumer_lag: gauge(
                "consumer_lag",
                "Records behind the partition's high watermark (librdkafka statistics).",
                &["cluster", "topic", "partition"],
            )?,
            kafka_queue_messages: gauge(
                "kafka_queue_messages",
                "Messages in a client's librdkafka queues (librdkafka statistics).",
                &["client"],
            )?,
            kafka_broker_rtt: reg(
                &registry,
                GaugeVec::new(
                    Opts::new(name("kafka_broker_rtt_seconds"), "Average broker round trip (librdkafka statistics)."),
                    &["client", "broker"],
                )?,
            )?,
            kafka_broker_errors: gauge(
                "kafka_broker_errors",
                "Transmit and receive errors a client saw on its brokers since start (librdkafka statistics).",
                &["client"],
            )?,
            whitelist_version: reg(
                &registry,
                IntGauge::new(name("whitelist_version"), "Version of the whitelist snapshot in use.")?,
            )?,
            whitelist_entries: reg(
                &registry,
                IntGauge::new(name("whitelist_entries"), "Users in the whitelist snapshot in use.")?,
            )?,
            whitelist_staleness: reg(
                &registry,
                Gauge::new(
                    name("whitelist_staleness_seconds"),
                    "Seconds since the whitelist was last refreshed from the Config Mapper.",
                )?,
            )?,
            whitelist_refresh_errors: reg(
                &registry,
                IntCounter::new(name("whitelist_refresh_errors_total"), "Failed whitelist refreshes.")?,
            )?,
            lookup_requests: reg(
                &registry,
                IntCounter::new(
                    name("whitelist_lookup_requests_total"),
                    "Lookup mode: requests to the Config Mapper.",
                )?,
            )?,
            lookup_unanswered: reg(
                &registry,
                IntCounter::new(
                    name("whitelist_lookup_unanswered_total"),
                    "Lookup mode: records decided as production because the Config Mapper had not answered \
                     within lookup_wait or was degraded.",
                )?,
            )?,
            lookup_held: reg(
                &registry,
                IntGauge::new(name("whitelist_lookup_held_records"), "Lookup mode: records waiting for a lookup.")?,
            )?,
            lookup_degraded: reg(
                &registry,
                IntGauge::new(
                    name("whitelist_lookup_degraded"),
                    "Lookup mode: 1 while the Config Mapper fails or answers slower than lookup_wait.",
                )?,
            )?,
            rush_backlog: reg(
                &registry,
                IntGauge::new(
                    name("rush_backlog_records"),
                    "Rush copies in the prod outbox not yet written to Rush (the rush group's lag on the outboxes).",
                )?,
            )?,
            rush_backlog_age: reg(
                &registry,
                Gauge::new(
                    name("rush_backlog_age_seconds"),
                    "Age (by event timestamp) of the oldest Rush copy in the prod outbox not yet written to Rush; \
                     0 when none waits.",
                )?,
            )?,
            rush_lane_restarts: reg(
                &registry,
                IntCounter::new(
                    name("rush_lane_restarts_total"),
                    "Times the Rush lane stopped on a Rush-side error and started again (production unaffected).",
                )?,
            )?,
            forward_restarts: reg(
                &registry,
                IntCounter::new(
                    name("forward_restarts_total"),
                    "Times the forward direction stopped on a fault a restart cures (a production broker frozen \
                     or restarted, a group membership lost) and joined its group again.",
                )?,
            )?,
            rush_outbox_invalid: reg(
                &registry,
                IntCounter::new(
                    name("rush_outbox_invalid_total"),
                    "Outbox records without a valid destination header, skipped (not written by this bridge).",
                )?,
            )?,
            rush_copies_lost: reg(
                &registry,
                IntCounter::new(
                    name("rush_copies_lost_total"),
                    "Rush copies the outbox's retention (bridge.rush_retention) deleted before the Rush lane \
                     wrote them.",
                )?,
            )?,
            rush_routes_broken: reg(
                &registry,
                IntGauge::new(
                    name("rush_routes_broken"),
                    "Routes whose Rush topics cannot be used (wrong partition count, cannot be created): their \
                     copies wait in the outbox while every other route's flow.",
                )?,
            )?,
            rush_envs: reg(
                &registry,
                IntGauge::new(
                    name("rush_envs"),
                    "Environments other than the default one whose Rush topics the Rush lane has made ready and \
                     writes to.",
                )?,
            )?,
            rush_env_topics_mismatched: reg(
                &registry,
                IntGauge::new(
                    name("rush_env_topics_mismatched"),
                    "Environments' Rush topics whose partition count is not their input's: their copies go to \
                     input partition % partitions (each key on one partition, in order); /readyz names them.",
                )?,
            )?,
            envs_refused: reg(
                &registry,
                IntGauge::new(
                    name("envs_refused"),
                    "Environments of the current whitelist beyond bridge.max_envs, refused: their users' events \
                     stay in production (snapshot mode; lookup mode logs each).",
                )?,
            )?,
            decision_pins: reg(
                &registry,
                IntCounter::new(
                    name("decision_pins_total"),
                    "Pins written to the decision log (an input partition starting on a new whitelist epoch).",
                )?,
            )?,
            decision_pins_refreshed: reg(
                &registry,
                IntCounter::new(
                    name("decision_pins_refreshed_total"),
                    "Pins written again for partitions whose whitelist stayed the same for bridge.decisions_refresh, \
                     so that retention never deletes decisions still in use.",
                )?,
            )?,
            decisions_replayed: reg(
                &registry,
                IntCounter::new(
                    name("decisions_replayed_total"),
                    "Input records decided again with the whitelist a previous owner pinned for them.",
                )?,
            )?,
            decision_history_unreadable: reg(
                &registry,
                IntCounter::new(
                    name("decision_history_unreadable_total"),
                    "Partitions taken over whose decision log could not be read, decided from the live whitelist after \
                     bridge.decision_history_hold.",
                )?,
            )?,
            decision_history_held: reg(
                &registry,
                IntGauge::new(
                    name("decision_history_held"),
                    "Input partitions held (not decided) because their decision history cannot be read, for at most \
                     bridge.decision_history_hold.",
                )?,
            )?,
            transactions: counter(
                "transactions_total",
                "Exactly-once transactions on prod by outcome: committed, aborted (read again), fenced.",
                &["outcome"],
            )?,
            lane_transactions: counter(
                "partition_transactions_total",
                "Exactly-once transactions of the Rush lane (on Rush) and the return path (on prod), one \
                 transactional id per source partition, by direction and outcome: committed, aborted, fenced.",
                &["direction", "outcome"],
            )?,
            progress_new_source: counter(
                "progress_new_source_total",
                "Partitions of the Rush lane or the return path whose exactly-once progress was made on \
                 another incarnation of the source cluster (rebuilt) and which were read from their beginning.",
                &["direction"],
            )?,
            return_path_restarts: reg(
                &registry,
                IntCounter::new(
                    name("return_path_restarts_total"),
                    "Exactly-once: times the return path started again from its progress on prod after an abort.",
                )?,
            )?,
            transaction_seconds: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        name("transaction_commit_seconds"),
                        "Time to flush and commit one transaction with its input offsets.",
                    )
                    .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                )?,
            )?,
            ready: reg(&registry, IntGauge::new(name("ready"), "1 when /readyz answers 200.")?)?,
            registry,
        };
        Ok(m)
    }

    /// The total of `vec`'s series whose labels include every pair of `labels`.
    pub fn sum(&self, vec: &IntCounterVec, labels: &[(&str, &str)]) -> u64 {
        use prometheus::core::Collector;
        let mut total = 0.0;
        for family in vec.collect() {
            for metric in family.get_metric() {
                let pairs = metric.get_label();
                if labels.iter().all(|(k, v)| pairs.iter().any(|p| p.name() == *k && p.value() == *v)) {
                    total += metric.get_counter().get_value();
                }
            }
        }
        total as u64
    }

    /// A write the producer refused before it was queued.
    pub fn produce_error(&self, cluster: Cluster, class: ErrorClass) {
        self.produce_errors.with_label_values(&[cluster.as_str(), class.as_str()]).inc();
    }

    /// Handles for one route's hot path.
    pub fn route(&self, config: &Config, route: usize) -> RouteMetrics {
        let r = &config.routes[route];
        let t = r.topic.as_str();
        // At zero from the start, so `increase()` (and its alert) sees the first dead letter.
        for s in &r.services {
            for code in crate::kafka::POISON {
                self.dead_letter.with_label_values(&[t, &s.name, &format!("{code:?}")]);
            }
        }
        RouteMetrics {
            records_in: self.records_in.with_label_values(&[t]),
            upstream: self.upstream_honoured.with_label_values(&[t]),
            passthrough: Passthrough::ALL.map(|p| self.passthrough.with_label_values(&[t, p.as_str()])),
            stamped: (r.services.iter())
                .map(|s| self.rush_stamped.with_label_values(&[t, &s.name, environment::DEFAULT]))
                .collect(),
            stamped_envs: self.rush_stamped.clone(),
            rejected: r.services.iter().map(|s| self.upstream_rejected.with_label_values(&[t, &s.name])).collect(),
            return_in: self.return_records.with_label_values(&[t, "read"]),
            return_looped: self.return_records.with_label_values(&[t, "looped"]),
            return_forwarded: self.return_records.with_label_values(&[t, "forwarded"]),
        }
    }

    /// Handles for one producer's delivery reports, by output topic.
    pub fn outputs(&self, config: &Config, cluster: Cluster, return_path: bool) -> OutputMetrics {
        let c = cluster.as_str();
        // On prod there is no environment; on Rush these are the default one's topics.
        let env = if cluster == Cluster::Rush { environment::DEFAULT } else { "" };
        let mut by_topic = HashMap::default();
        let mut services = HashMap::default();
        for r in &config.routes {
            if return_path {
                if r.return_path {
                    by_topic.insert(r.topic.clone(), self.return_records.with_label_values(&[&r.topic, "forwarded"]));
                }
                continue;
            }
            for s in &r.services {
                by_topic
                    .insert(s.output_topic.clone(), self.records_out.with_label_values(&[&r.topic, &s.name, c, env]));
                services.insert(s.output_topic.clone(), (r.topic.clone(), s.name.clone()));
            }
        }
        let env_outputs = (cluster == Cluster::Rush && !return_path)
            .then(|| EnvOutputs { records_out: self.records_out.clone(), services });
        OutputMetrics {
            by_topic,
            env_outputs,
            age: self.record_age.with_label_values(&[c]),
            errors: [ErrorClass::Retry, ErrorClass::Fatal, ErrorClass::Poison]
                .map(|class| self.produce_errors.with_label_values(&[c, class.as_str()])),
        }
    }
}

pub struct RouteMetrics {
    pub records_in: IntCounter,
    pub upstream: IntCounter,
    pub passthrough: [IntCounter; Passthrough::ALL.len()],
    /// Per service of the route, in route order: copies to the default environment.
    pub stamped: Vec<IntCounter>,
    /// Copies to other environments, labelled as they come (they are few).
    pub stamped_envs: IntCounterVec,
    /// Upstream stamps the whitelist did not hold, per service of the route, in route order.
    pub rejected: Vec<IntCounter>,
    pub return_in: IntCounter,
    pub return_looped: IntCounter,
    pub return_forwarded: IntCounter,
}

impl RouteMetrics {
    pub fn passthrough(&self, p: Passthrough) -> &IntCounter {
        let i = Passthrough::ALL.iter().position(|x| *x == p).unwrap_or(0);
        &self.passthrough[i]
    }
}

#[derive(Clone)]
pub struct OutputMetrics {
    /// Looked up once per delivery report, hence the fast hasher.
    by_topic: HashMap<String, IntCounter, foldhash::fast::RandomState>,
    /// On Rush: the outputs of environments other than the default one, `{env}.{output}`.
    env_outputs: Option<EnvOutputs>,
    pub age: Histogram,
    errors: [IntCounter; 3],
}

#[derive(Clone)]
struct EnvOutputs {
    records_out: IntCounterVec,
    /// Output topic → (route, service).
    services: HashMap<String, (String, String), foldhash::fast::RandomState>,
}

impl OutputMetrics {
    pub fn acked(&self, topic: &str) {
        if let Some(c) = self.by_topic.get(topic) {
            c.inc();
            return;
        }
        // An environment's copy: `{env}.{output}`, labelled as it comes (Rush copies are few).
        let Some(e) = &self.env_outputs else { return };
        let Some((env, output)) = topic.split_once('.') else { return };
        if let (true, Some((route, service))) = (environment::valid(env), e.services.get(output)) {
            e.records_out.with_label_values(&[route, service, "rush", env]).inc();
        }
    }

    pub fn error(&self, class: ErrorClass) {
        self.errors[class as usize].inc();
    }
}

/// The Config Mapper's own metrics, served on its `/metrics`.
pub struct MapperMetrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub whitelist_version: IntGauge,
    pub whitelist_entries: IntGauge,
}

impl MapperMetrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let requests = reg(
            &registry,
            IntCounterVec::new(
                Opts::new(name("mapper_requests_total"), "Config Mapper HTTP requests by route, method and status."),
                &["route", "method", "status"],
            )?,
        )?;
        let whitelist_version =
            reg(&registry, IntGauge::new(name("mapper_whitelist_version"), "Whitelist version served.")?)?;
        let whitelist_entries =
            reg(&registry, IntGauge::new(name("mapper_whitelist_entries"), "Live whitelist entries served.")?)?;
        Ok(Self { registry, requests, whitelist_version, whitelist_entries })
    }
}

/// Exports the statistics librdkafka emits every `statistics.interval.ms` for client `client`.
pub fn kafka_statistics(m: &Metrics, client: &str, cluster: &str, s: &rdkafka::Statistics) {
    m.kafka_queue_messages.with_label_values(&[client]).set(s.msg_cnt as i64);
    let mut errors = 0;
    for b in s.brokers.values() {
        errors += b.txerrs + b.rxerrs;
        if let Some(rtt) = &b.rtt {
            m.kafka_broker_rtt.with_label_values(&[client, &b.name]).set(rtt.avg as f64 / 1e6);
        }
    }
    m.kafka_broker_errors.with_label_values(&[client]).set(errors as i64);
    for (topic, t) in &s.topics {
        for (p, part) in &t.partitions {
            // -1 is librdkafka's internal "unassigned" partition; a lag of -1 means unknown.
            if *p < 0 || part.consumer_lag < 0 {
                continue;
            }
            m.consumer_lag.with_label_values(&[cluster, topic, &p.to_string()]).set(part.consumer_lag);
        }
    }
}

/// The registry in Prometheus' text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut out) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    out
}
