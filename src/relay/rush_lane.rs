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

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{BorrowedMessage, Message};

use super::RelayError;
use super::consumer::RebalanceContext;
use super::headers::{InputHeaders, OUTBOX_INPUT_OFFSET, OUTBOX_OUTPUT, copy_without};
use super::health::{Direction, Health, ProducerRole};
use super::offsets::Tracker;
use super::partition_transactions::{self, Writer};
use super::pipeline::{ProduceError, input_bytes};
use super::poll::{self, Handler};
use super::producer::{Output, send};
use crate::config::Config;
use crate::extract::Headers;
use crate::kafka;
use crate::metrics::Metrics;
use crate::tenancy::Cluster;

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A lane that ran this long before failing starts again from the first back-off.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Runs the lane until `stop`, restarting it after every Rush-side failure.
pub fn run(config: &Config, stop: &dyn Fn() -> bool, health: &Arc<Health>, metrics: &Arc<Metrics>) {
    let mut backoff = FIRST_BACKOFF;
    while !stop() {
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
        let until = Instant::now() + backoff;
        while !stop() && Instant::now() < until {
            std::thread::sleep(poll::POLL_TIMEOUT);
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn run_once(
    config: &Config,
    stop: &dyn Fn() -> bool,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
) -> Result<(), RelayError> {
    super::topics::ensure_rush(config)?;
    health.rush_topics_ready.store(true, std::sync::atomic::Ordering::Relaxed);
    let tracker = Arc::new(Tracker::new());
    let outboxes: Vec<String> = config.routes.iter().map(|r| r.outbox_topic.clone()).collect();
    let group = config.bridge.rush_group_id();
    let mut consumer_config = kafka::consumer_config(&config.prod, "prod-rush-lane", &group);
    kafka::fit_records(&mut consumer_config, config);
    // Exactly-once: Rush copies commit on Rush with the lane's progress, stored on Rush in a
    // group of the same name.
    let direction = partition_transactions::Direction {
        role: ProducerRole::Rush,
        topics: &outboxes,
        target: &config.rush,
        progress_group: group.clone(),
        session_timeout: kafka::session_timeout(&consumer_config),
        name: "rush-lane",
        // Rush refusing a copy restarts the lane (production is unaffected): see the README.
        refusals: None,
    };
    let writer = partition_transactions::writer(config, direction, &tracker, health, metrics)?;
    let context = RebalanceContext {
        tracker: tracker.clone(),
        producers: writer.flush(),
        partition_transactions: writer.transactions(),
        route_topics: outboxes.clone(),
        drain_timeout: config.bridge.drain_timeout,
        health: health.clone(),
        metrics: metrics.clone(),
        direction: Direction::RushLane,
        revoked: None,
        transactions: None,
        refusals: None,
    };
    let consumer = super::subscribe(consumer_config, context, &outboxes)?;
    health.set_rush_lane_down(None);
    tracing::info!(%group, "rush lane started");
    let mut lane = RushLane {
        outputs: config.routes.iter().map(|r| r.services.iter().map(|s| s.output_topic.clone()).collect()).collect(),
        outboxes: outboxes.clone(),
        writer,
        tracker: tracker.clone(),
        metrics: metrics.clone(),
    };
    let limits = poll::Limits::new(config, health, metrics, Direction::RushLane);
    let result = poll::run(&consumer, &tracker, &limits, &mut lane, stop);
    let flush = lane.writer.flush();
    super::finish(config, &consumer, &*flush, &tracker, &outboxes, result)
}

struct RushLane {
    /// Per route: the outbox, and the Rush topics a copy from it may go to.
    outboxes: Vec<String>,
    outputs: Vec<Vec<String>>,
    writer: Writer,
    tracker: Arc<Tracker>,
    metrics: Arc<Metrics>,
}

impl Handler for RushLane {
    fn handle(&mut self, msg: &BorrowedMessage<'_>, _: &BaseConsumer<RebalanceContext>) -> Result<(), RelayError> {
        let Some(ri) = self.outboxes.iter().position(|t| t == msg.topic()) else {
            tracing::warn!(topic = msg.topic(), "rush lane: record from a topic that is no outbox; skipped");
            return Ok(());
        };
        let key = (ri, msg.partition());
        let headers = InputHeaders(msg.headers());
        let named = headers.last(OUTBOX_OUTPUT).and_then(|v| std::str::from_utf8(v).ok());
        let Some(topic) = named.and_then(|t| self.outputs[ri].iter().find(|o| *o == t)) else {
            // Not written by this bridge's configuration (a route's service was removed, or
            // someone else produced here): nothing to carry, and nothing to stop for.
            self.metrics.rush_outbox_invalid.inc();
            tracing::warn!(
                outbox = msg.topic(), partition = msg.partition(), offset = msg.offset(), destination = ?named,
                "rush lane: outbox record names no output of its route; skipped"
            );
            self.tracker.begin(key, msg.offset(), 0, 0);
            return Ok(());
        };
        let producer = self.writer.for_partition(key)?;
        let opaque = self.tracker.begin(key, msg.offset(), 1, input_bytes(msg));
        let out = Output {
            topic,
            partition: msg.partition(),
            key: msg.key(),
            payload: msg.payload(),
            headers: msg.headers().map(|h| copy_without(h, &[OUTBOX_OUTPUT, OUTBOX_INPUT_OFFSET])),
            timestamp: msg.timestamp(),
            opaque,
        };
        send(&producer, out).map_err(|(source, class)| {
            self.metrics.produce_error(Cluster::Rush, class);
            Box::new(ProduceError {
                input_topic: msg.topic().to_owned(),
                partition: msg.partition(),
                offset: msg.offset(),
                cluster: "rush",
                output_topic: topic.clone(),
                class,
                source,
            })
        })?;
        Ok(())
    }
}
