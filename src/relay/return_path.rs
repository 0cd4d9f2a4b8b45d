//! The return path: what Rush instances produce on a route's raw topic on the Rush cluster is
//! forwarded into the same topic on prod, same partition, key, headers and timestamp, plus a
//! provenance header. The forward direction then fans it out like any production event.
//!
//! The bridge writes only `{topic}.{service}` topics on Rush and configuration refuses an
//! output that is also an input, so the bridge never reads its own writes back. A record that
//! arrives on Rush `T` already carrying the provenance of `T` has been through this path once
//! and was copied back by someone else; forwarding it again would loop, so it is dropped and
//! counted (its offset is still committed).

use std::sync::Arc;

use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{BorrowedMessage, Message};

use super::direction::poll::{Handler, POLL_TIMEOUT, input_bytes};
use super::direction::rebalance::{RebalanceContext, Revoked};
use super::direction::{self, Spec};
use super::error::RelayError;
use super::health::{Direction, Health, ProducerRole};
use super::offsets::Tracker;
use super::output::{CrossCluster, Origin, Writer, cross_cluster_producers};
use super::producer::Output;
use super::refusals::Refusals;
use super::stop::Stop;
use crate::config::{Config, Delivery};
use crate::environment;
use crate::extract::Headers;
use crate::headers::{InputHeaders, Provenance};
use crate::kafka;
use crate::metrics::{Metrics, RouteMetrics};
use crate::telemetry::{Hop, HopTracer};
use crate::tenancy::Cluster;

/// The `service` a dead-lettered return-path record names (its input topic is `rush:{topic}`).
pub const RETURN_SERVICE: &str = "return-path";

/// How long exactly-once waits after an abort before the return path starts again.
const RESTART_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs the return path until `stop`. Exactly-once, it starts again from its progress on prod
/// after an aborted transaction (a write that failed, a pause, a takeover); any other error
/// stops the bridge.
pub fn run(
    config: &Config,
    stop: &Stop<'_>,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
    tracer: &Arc<HopTracer>,
) -> Result<(), RelayError> {
    // Outlives each run: exactly-once books a refused write, and the next run dead-letters it.
    let exactly_once = config.bridge.delivery == Delivery::ExactlyOnce;
    let refusals = Arc::new(Refusals::new(&config.bridge.dead_letter_topic, exactly_once));
    loop {
        // An environment's raw topic that appears on Rush is read from the next run on.
        let run = stop.until_changed(&health.rush_envs_changed);
        match run_once(config, &run, health, metrics, tracer, &refusals) {
            Ok(()) if !stop.requested() => {
                // Environments tend to come in bursts (a lane catching up on an outbox): one
                // restart for the burst, not a rebalance of the Rush group per environment.
                settle(stop, &health.rush_envs_changed);
                tracing::info!("return path: an environment's Rush topics appeared; starting again to read them");
            }
            Err(e @ (RelayError::Transaction(_) | RelayError::Delivery { .. }))
                if exactly_once && !stop.requested() =>
            {
                metrics.return_path_restarts.inc();
                tracing::warn!(error = %e, "return path transactions aborted; starting again from its progress on prod");
                stop.sleep(RESTART_BACKOFF);
            }
            r => return r,
        }
    }
}

/// How long no new environment must appear before the return path starts again.
const ENVS_SETTLE: std::time::Duration = std::time::Duration::from_secs(3);

/// Waits until `counter` has not moved for [`ENVS_SETTLE`] (or a stop).
fn settle(stop: &Stop<'_>, counter: &std::sync::atomic::AtomicU64) {
    loop {
        let quiet = stop.until_changed(counter);
        quiet.sleep(ENVS_SETTLE);
        if stop.requested() || !quiet.requested() {
            return;
        }
    }
}

/// One run of the return path: Rush raw topics of return routes → the same topics on prod.
fn run_once(
    config: &Config,
    stop: &Stop<'_>,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
    tracer: &Arc<HopTracer>,
    refusals: &Arc<Refusals>,
) -> Result<(), RelayError> {
    // The Rush lane creates the raw topics on Rush; subscribing before they exist would leave
    // the consumer waiting for a metadata refresh (minutes) after they appear.
    while !health.rush_topics_ready.load(std::sync::atomic::Ordering::Relaxed) {
        if stop.requested() {
            return Ok(());
        }
        std::thread::sleep(POLL_TIMEOUT);
    }
    let sources = sources(config);
    let topics: Vec<String> = sources.iter().map(|s| s.topic.clone()).collect();
    let tracker = Arc::new(Tracker::new());
    let mut consumer = kafka::consumer_config(&config.rush, "rush", &config.bridge.group_id);
    kafka::fit_records(&mut consumer, config);
    // Exactly-once: prod writes commit on prod with the Rush offsets they consumed, stored on
    // prod in the group `{group_id}.return`.
    let cross = CrossCluster {
        role: ProducerRole::Return,
        topics: &topics,
        target: &config.prod,
        progress_group: config.bridge.return_progress_group(),
        session_timeout: kafka::session_timeout(&consumer),
        name: "return",
    };
    let producers = cross_cluster_producers(config, cross, &tracker, health, metrics, Some(refusals))?;
    let writer = Writer::new(producers, Cluster::Prod, metrics)
        .with_dead_letters(&config.bridge.dead_letter_topic, refusals.clone());
    let commit = writer.commit_strategy(Some(refusals.clone()));
    let flush = writer.flush();
    let mut handler = ReturnPath::new(config, sources, writer, tracker.clone(), metrics, tracer.clone());
    let spec = Spec {
        direction: Direction::Return,
        consumer,
        topics,
        tracker,
        flush,
        commit,
        revoked: Arc::new(Revoked::default()),
    };
    direction::run(config, spec, &mut handler, health, metrics, stop)
}

/// A Rush topic the return path reads: a return route's raw topic in one environment.
pub struct Source {
    pub route: usize,
    pub env: String,
    /// Its name on Rush: `{topic}` in the default environment, `{env}.{topic}` in another.
    pub topic: String,
}

/// The raw topics of `config`'s return routes on Rush: the default environment's, and every
/// other environment's that Rush has. Rush not answering leaves the latter out until the
/// next run.
pub fn sources(config: &Config) -> Vec<Source> {
    let mut sources: Vec<Source> = (config.routes.iter().enumerate())
        .filter(|(_, r)| r.return_path)
        .map(|(route, r)| Source { route, env: environment::DEFAULT.to_owned(), topic: r.topic.clone() })
        .collect();
    match crate::topics::rush_env_raw_topics(config) {
        Ok(found) => sources.extend(found.into_iter().map(|(route, env, topic)| Source { route, env, topic })),
        Err(e) => {
            tracing::warn!(error = %e, "return path: cannot list environments' raw topics on Rush; reading the default environment's")
        }
    }
    sources
}

pub struct ReturnPath {
    sources: Vec<Source>,
    /// Per source: its route's topic on prod, where what it returns goes.
    prod_topics: Vec<String>,
    /// `rush:{topic}` per source: where a dead letter says its input was.
    names: Vec<String>,
    provenance: Provenance,
    writer: Writer,
    tracker: Arc<Tracker>,
    routes: Vec<RouteMetrics>,
    tracer: Arc<HopTracer>,
}

impl ReturnPath {
    /// For `sources`, read in that order (the partition keys' index).
    pub fn new(
        config: &Config,
        sources: Vec<Source>,
        writer: Writer,
        tracker: Arc<Tracker>,
        metrics: &Metrics,
        tracer: Arc<HopTracer>,
    ) -> Self {
        Self {
            names: sources.iter().map(|s| format!("rush:{}", s.topic)).collect(),
            prod_topics: sources.iter().map(|s| config.routes[s.route].topic.clone()).collect(),
            routes: sources.iter().map(|s| metrics.route(config, s.route)).collect(),
            sources,
            provenance: Provenance::new(config),
            tracer,
            writer,
            tracker,
        }
    }

    /// The return path's only output of the Rush record at `offset` of `partition` of source `si`.
    fn origin(&self, si: usize, partition: i32, offset: i64) -> Option<Origin<'_>> {
        let topic = self.prod_topics.get(si)?;
        Some(Origin {
            input: (self.names.get(si)?, partition, offset),
            route: topic,
            service: RETURN_SERVICE,
            output_topic: topic,
            cluster: Cluster::Prod,
        })
    }
}

impl Handler for ReturnPath {
    /// At-least-once: dead-letters the writes prod refused since the last batch. One whose
    /// partition was revoked meanwhile is read again by its next owner.
    fn begin_batch(&mut self) -> Result<(), RelayError> {
        for refusal in self.writer.take_refusals() {
            let Some(((ri, partition), offset)) = self.tracker.locate(refusal.opaque) else { continue };
            let Some(origin) = self.origin(ri, partition, offset) else { continue };
            self.writer.dead_letter_refused((ri, partition), &refusal, &origin)?;
        }
        Ok(())
    }

    fn handle(&mut self, msg: &BorrowedMessage<'_>, _: &BaseConsumer<RebalanceContext>) -> Result<(), RelayError> {
        let Some(ri) = self.sources.iter().position(|s| s.topic == msg.topic()) else {
            tracing::warn!(topic = msg.topic(), "return path: record from a topic without a return route; skipped");
            return Ok(());
        };
        let key = (ri, msg.partition());
        self.routes[ri].return_in.inc();
        let topic = &self.prod_topics[ri];
        let env = &self.sources[ri].env;
        let input = InputHeaders(msg.headers());
        if self.provenance.came_through(&input, topic) {
            let looped = &self.routes[ri].return_looped;
            looped.inc();
            let n = looped.get();
            // Every occurrence is counted; the log says so at 1, 2, 4, 8, … to stay readable.
            if n.is_power_of_two() {
                tracing::warn!(
                    topic = %topic, partition = msg.partition(), offset = msg.offset(), dropped = n,
                    "return path: record already came through this topic's return path; dropped, not looped"
                );
            }
            self.tracker.begin(key, msg.offset(), 0, 0);
            return Ok(());
        }
        let opaque = self.tracker.begin(key, msg.offset(), 1, input_bytes(msg));
        let hop = Hop {
            route: topic,
            service: None,
            cluster: "prod",
            direction: Direction::Return.as_str(),
            output_topic: topic,
        };
        let trace = self.tracer.hop(|name| input.last(name), &hop);
        let out = Output {
            topic,
            partition: msg.partition(),
            key: msg.key(),
            payload: msg.payload(),
            headers: Some(self.provenance.stamp(msg.headers(), topic, env, &trace)),
            timestamp: msg.timestamp(),
            opaque,
        };
        let Some(origin) = self.origin(ri, msg.partition(), msg.offset()) else { return Ok(()) };
        // A record Rush accepted that prod will not take is dead-lettered there, not a stop.
        self.writer.write(key, out, &origin, msg)
    }
}
