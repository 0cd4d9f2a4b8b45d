//! The Rush lane: carries Rush copies from the prod outbox to the Rush cluster.
//!
//! The forward direction writes a Rush copy, decided and stamped, to its route's outbox on prod
//! (same partition as its input) and commits its input as soon as prod has it. This lane reads
//! the outboxes in a consumer group of its own and writes each copy to the Rush topic its header
//! names, committing an outbox offset only once Rush has acknowledged it. So the Rush cluster
//! being slow, frozen, down or rebuilt empty never touches production: copies wait in the outbox
//! (bounded by its retention, `bridge.rush_retention`) and arrive in partition order when Rush
//! is back. The lane restarts itself on any Rush-side error, with back-off, re-creating missing
//! Rush topics first; it never stops the bridge.

pub mod backlog;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::Timestamp;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Message};

use super::direction::poll::{Handler, input_bytes};
use super::direction::rebalance::{RebalanceContext, Revoked};
use super::direction::{self, Spec};
use super::error::RelayError;
use super::health::{Direction, Health, ProducerRole};
use super::offsets::Tracker;
use super::output::{CrossCluster, Origin, Writer, cross_cluster_producers};
use super::producer::Output;
use super::stop::Stop;
use crate::config::Config;
use crate::environment;
use crate::extract::Headers;
use crate::headers::{InputHeaders, OUTBOX_ENV, OUTBOX_HEADERS, OUTBOX_INPUT_TIMESTAMP, OUTBOX_OUTPUT, copy_without};
use crate::kafka;
use crate::metrics::Metrics;
use crate::tenancy::Cluster;

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A lane that ran this long before failing starts again from the first back-off.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Runs the lane until `stop`, restarting it after every Rush-side failure.
pub fn run(config: &Config, stop: &Stop<'_>, health: &Arc<Health>, metrics: &Arc<Metrics>) {
    let mut backoff = FIRST_BACKOFF;
    while !stop.requested() {
        let started = Instant::now();
        let Err(e) = run_once(config, stop, health, metrics) else { continue };
        metrics.rush_lane_restarts.inc();
        health.set_rush_lane_down(Some(e.to_string()));
        if started.elapsed() >= HEALTHY_RUN {
            backoff = FIRST_BACKOFF;
        }
        tracing::error!(
            error = %e, retry_in = ?backoff,
            "rush lane stopped; production is unaffected, Rush copies wait in the outbox"
        );
        stop.sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn run_once(config: &Config, stop: &Stop<'_>, health: &Arc<Health>, metrics: &Arc<Metrics>) -> Result<(), RelayError> {
    let checked = crate::topics::ensure_rush(config)?;
    let mut routes = Vec::new();
    let mut broken = Vec::new();
    for (route, result) in config.routes.iter().zip(checked) {
        match result {
            Ok(()) => routes.push(route),
            Err(e) => {
                tracing::error!(
                    route = %route.topic, error = %e, recheck_in = ?BROKEN_RECHECK,
                    "rush topics of this route unusable: its copies wait in the outbox; other routes flow"
                );
                broken.push(format!("rush topics of route {:?}: {e}", route.topic));
            }
        }
    }
    metrics.rush_routes_broken.set(broken.len() as i64);
    health.set_rush_routes_broken(broken.clone());
    health.rush_topics_ready.store(true, std::sync::atomic::Ordering::Relaxed);
    if broken.is_empty() {
        return run_routes(config, &routes, stop, health, metrics);
    }
    // Broken routes are checked again from time to time (someone fixes the topic); the lane
    // carries the others meanwhile.
    let until = stop.until(Instant::now() + BROKEN_RECHECK);
    if routes.is_empty() {
        until.sleep(BROKEN_RECHECK);
        return Ok(());
    }
    run_routes(config, &routes, &until, health, metrics)
}

/// How long a lane that left routes out runs before it checks their Rush topics again.
const BROKEN_RECHECK: Duration = Duration::from_secs(60);

/// The lane over the outboxes of `routes`.
fn run_routes(
    config: &Config,
    routes: &[&crate::config::Route],
    stop: &Stop<'_>,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
) -> Result<(), RelayError> {
    let tracker = Arc::new(Tracker::new());
    let outboxes: Vec<String> = routes.iter().map(|r| r.outbox_topic.clone()).collect();
    let group = config.bridge.rush_group_id();
    let mut consumer = kafka::consumer_config(&config.prod, "prod-rush-lane", &group);
    kafka::fit_records(&mut consumer, config);
    // Exactly-once: Rush copies commit on Rush with the lane's progress, stored on Rush in a
    // group of the same name.
    let cross = CrossCluster {
        role: ProducerRole::Rush,
        topics: &outboxes,
        target: &config.rush,
        progress_group: group,
        session_timeout: kafka::session_timeout(&consumer),
        name: "rush-lane",
    };
    // Rush refusing a copy restarts the lane (production is unaffected): no dead letters here.
    let producers = cross_cluster_producers(config, cross, &tracker, health, metrics, None)?;
    let writer = Writer::new(producers, Cluster::Rush, metrics);
    let commit = writer.commit_strategy(None);
    let flush = writer.flush();
    let mut lane = RushLane {
        watch: AssignmentWatch {
            health: health.clone(),
            backlog_age: metrics.rush_backlog_age.clone(),
            unassigned_since: None,
        },
        outputs: routes.iter().map(|r| r.services.iter().map(|s| s.output_topic.clone()).collect()).collect(),
        outboxes: outboxes.clone(),
        writer,
        tracker: tracker.clone(),
        invalid: metrics.rush_outbox_invalid.clone(),
        envs: Environments::new(config, routes, health, metrics),
    };
    health.set_rush_lane_down(None);
    let spec = Spec {
        direction: Direction::RushLane,
        consumer,
        topics: outboxes,
        tracker,
        flush,
        commit,
        revoked: Arc::new(Revoked::default()),
    };
    direction::run(config, spec, &mut lane, health, metrics, stop)
}

struct RushLane {
    /// Per route: the outbox, and the Rush topics a copy from it may go to.
    outboxes: Vec<String>,
    outputs: Vec<Vec<String>>,
    writer: Writer,
    tracker: Arc<Tracker>,
    invalid: prometheus::IntCounter,
    envs: Environments,
    watch: AssignmentWatch,
}

/// How long the lane's consumer may go without a partition while copies wait before it is
/// replaced. Longer than a group join after a restart of either cluster's broker.
const UNASSIGNED_LIMIT: Duration = Duration::from_secs(60);

/// Replaces a lane consumer that stays out of its group while Rush copies age in the outbox.
/// After a production broker froze through a join (or past the session timeout), librdkafka's
/// consumer was seen to never get its assignment again; a new consumer joins at once. A lane
/// that is only idle (another instance carries every partition) sees no aged backlog and stays.
struct AssignmentWatch {
    health: Arc<Health>,
    backlog_age: prometheus::Gauge,
    unassigned_since: Option<Instant>,
}

impl AssignmentWatch {
    fn check(&mut self) -> Result<(), RelayError> {
        if self.health.assigned(Direction::RushLane).load(std::sync::atomic::Ordering::Relaxed) > 0 {
            self.unassigned_since = None;
            return Ok(());
        }
        let unassigned = self.unassigned_since.get_or_insert_with(Instant::now).elapsed();
        let backlog_age = self.backlog_age.get();
        if unassigned >= UNASSIGNED_LIMIT && backlog_age >= UNASSIGNED_LIMIT.as_secs_f64() {
            return Err(RelayError::LaneUnassigned { unassigned, backlog_age });
        }
        Ok(())
    }
}

impl Handler for RushLane {
    fn begin_batch(&mut self) -> Result<(), RelayError> {
        self.watch.check()
    }

    fn handle(&mut self, msg: &BorrowedMessage<'_>, _: &BaseConsumer<RebalanceContext>) -> Result<(), RelayError> {
        let Some(ri) = self.outboxes.iter().position(|t| t == msg.topic()) else {
            tracing::warn!(topic = msg.topic(), "rush lane: record from a topic that is no outbox; skipped");
            return Ok(());
        };
        let key = (ri, msg.partition());
        let headers = InputHeaders(msg.headers());
        let named = headers.last(OUTBOX_OUTPUT).and_then(|v| std::str::from_utf8(v).ok());
        let output = named.and_then(|t| self.outputs[ri].iter().position(|o| o == t));
        let env = match headers.last(OUTBOX_ENV) {
            None => Some(environment::DEFAULT),
            Some(v) => std::str::from_utf8(v).ok().filter(|e| environment::valid(e)),
        };
        let (Some(output), Some(env)) = (output, env) else {
            // Not written by this bridge's configuration (a route's service was removed, or
            // someone else produced here): nothing to carry, and nothing to stop for.
            self.invalid.inc();
            tracing::warn!(
                outbox = msg.topic(), partition = msg.partition(), offset = msg.offset(), destination = ?named,
                env = ?headers.last(OUTBOX_ENV).map(String::from_utf8_lossy),
                "rush lane: outbox record names no output of its route, or no environment; skipped"
            );
            self.tracker.begin(key, msg.offset(), 0, 0);
            return Ok(());
        };
        let (topic, partition) = match self.envs.topics(env)? {
            Some(topics) => {
                let t = &topics[ri][output];
                (&t.name, t.partition(msg.partition()))
            }
            None => (&self.outputs[ri][output], msg.partition()),
        };
        let opaque = self.tracker.begin(key, msg.offset(), 1, input_bytes(msg));
        let out = Output {
            topic,
            partition,
            key: msg.key(),
            payload: msg.payload(),
            headers: msg.headers().map(|h| copy_without(h, &OUTBOX_HEADERS)),
            timestamp: input_timestamp(&headers).unwrap_or_else(|| msg.timestamp()),
            opaque,
        };
        let origin = Origin {
            input: (msg.topic(), msg.partition(), msg.offset()),
            route: msg.topic(),
            service: "",
            output_topic: topic,
            cluster: Cluster::Rush,
        };
        self.writer.write(key, out, &origin, msg)
    }
}

/// The environments the lane has written to since it started, with their Rush topics: an
/// environment's topics are made right (created, grown) before its first copy is written.
struct Environments {
    config: Config,
    /// The routes the lane carries, by index into the configuration.
    routes: Vec<usize>,
    /// Per environment other than the default: per route, per service, its Rush topic.
    topics: std::collections::HashMap<String, Vec<Vec<EnvTopic>>>,
    /// Why environments' topics are degraded, for `/readyz`.
    mismatched: Vec<String>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

/// Where a copy of one environment goes: its topic, and the partitions it has when that is not
/// its input's count (created by hand or auto-created by a client). Such a topic still takes
/// every copy, on `input partition % partitions`: one key's copies stay on one partition in
/// order, and the environment keeps working while `/readyz` names the topic to fix.
struct EnvTopic {
    name: String,
    fold: Option<i32>,
}

impl EnvTopic {
    fn partition(&self, input: i32) -> i32 {
        self.fold.filter(|n| *n > 0).map_or(input, |n| input % n)
    }
}

impl Environments {
    fn new(config: &Config, routes: &[&crate::config::Route], health: &Arc<Health>, metrics: &Arc<Metrics>) -> Self {
        let routes = routes.iter().filter_map(|r| config.routes.iter().position(|c| c.topic == r.topic)).collect();
        Self {
            config: config.clone(),
            routes,
            topics: Default::default(),
            mismatched: Vec::new(),
            health: health.clone(),
            metrics: metrics.clone(),
        }
    }

    /// `env`'s topics, indexed like the lane's outputs; `None` for the default environment,
    /// whose topics are the outputs themselves.
    fn topics(&mut self, env: &str) -> Result<Option<&Vec<Vec<EnvTopic>>>, RelayError> {
        if environment::is_default(env) {
            return Ok(None);
        }
        if !self.topics.contains_key(env) {
            let mismatched = crate::topics::ensure_env(&self.config, env)?;
            for m in &mismatched {
                tracing::error!(
                    env, topic = %m.topic, partitions = m.partitions, input_partitions = m.input_partitions,
                    "rush lane: an environment's Rush topic has the wrong partition count; its copies go to \
                     input partition % {}, each key on one partition in order; recreate it to restore partitions",
                    m.partitions
                );
                self.mismatched.push(format!(
                    "environment {env}: rush topic {} has {} partitions, its input {}",
                    m.topic, m.partitions, m.input_partitions
                ));
            }
            self.metrics.rush_env_topics_mismatched.add(mismatched.len() as i64);
            self.health.set_rush_envs_degraded(self.mismatched.clone());
            let fold = |name: &str| {
                mismatched.iter().find(|m| m.topic == name).map(|m| i32::try_from(m.partitions).unwrap_or(i32::MAX))
            };
            let topics = self
                .routes
                .iter()
                .map(|&ri| {
                    let route = &self.config.routes[ri];
                    (route.services.iter())
                        .map(|s| environment::rush_topic(env, &s.output_topic))
                        .map(|name| EnvTopic { fold: fold(&name), name })
                        .collect()
                })
                .collect();
            tracing::info!(env, "rush lane: environment's Rush topics ready");
            self.metrics.rush_envs.inc();
            self.health.rush_env_ready(env);
            self.topics.insert(env.to_owned(), topics);
        }
        Ok(self.topics.get(env))
    }
}

impl Drop for Environments {
    /// The next run of the lane checks every environment's topics again.
    fn drop(&mut self) {
        self.metrics.rush_env_topics_mismatched.sub(self.mismatched.len() as i64);
        self.metrics.rush_envs.sub(self.topics.len() as i64);
        self.health.set_rush_envs_degraded(Vec::new());
    }
}

/// The input's timestamp an outbox record carries (the outbox's own is its log-append time).
fn input_timestamp(headers: &InputHeaders<'_, BorrowedHeaders>) -> Option<Timestamp> {
    let text = std::str::from_utf8(headers.last(OUTBOX_INPUT_TIMESTAMP)?).ok()?;
    text.parse().ok().map(Timestamp::CreateTime)
}
