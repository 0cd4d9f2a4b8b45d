//! The forward direction: prod route topics → per-service outputs on prod, and Rush copies to
//! the prod outbox. Where a record is decided: from the epoch pinned for its offset
//! ([`pinned`], snapshot mode), or once its user's lookup is in ([`held`], lookup mode); then
//! fanned out ([`fan_out`]).

pub mod fan_out;
pub mod held;
pub mod pinned;

use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{BorrowedMessage, Message};

use std::sync::Arc;

use crate::clock::now_ms;
use crate::config::{Config, Delivery};
use crate::decision_log::DecisionLog;
use crate::kafka;
use crate::metrics::Metrics;
use crate::relay::commit::CommitStrategy;
use crate::relay::commit::transaction::Transactions;
use crate::relay::direction::poll::{Handler, POLL_TIMEOUT};
use crate::relay::direction::rebalance::{RebalanceContext, Revoked};
use crate::relay::direction::{self, Spec};
use crate::relay::error::RelayError;
use crate::relay::health::{Direction, Health, ProducerRole};
use crate::relay::offsets::Tracker;
use crate::relay::output::{Producers, Writer};
use crate::relay::producer::{delivery_context, output_producer_with};
use crate::relay::refusals::Refusals;
use crate::relay::stop::Stop;
use crate::telemetry::HopTracer;
use crate::tenancy::Cluster;
use crate::whitelist::WhitelistSource;
use fan_out::FanOut;
use held::{HoldLimits, Holding};
use pinned::Pinned;

/// Held records wait for lookups: poll briefly so their answers are picked up soon.
const LOOKUP_POLL_TIMEOUT: Duration = Duration::from_millis(5);

/// Runs the forward direction until `stop`: prod route topics → per-service outputs on prod and
/// Rush copies in the prod outbox.
pub fn run(
    config: &Config,
    whitelist: WhitelistSource,
    stop: &Stop<'_>,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
    tracer: Arc<HopTracer>,
) -> Result<(), RelayError> {
    let tracker = Arc::new(Tracker::new());
    let exactly_once = config.bridge.delivery == Delivery::ExactlyOnce;
    let refusals = Arc::new(Refusals::new(&config.bridge.dead_letter_topic, exactly_once));
    let context =
        delivery_context(config, ProducerRole::Prod, &tracker, health, metrics).with_refusals(refusals.clone());
    let producer = Arc::new(
        output_producer_with(config, ProducerRole::Prod, context)
            .map_err(|source| RelayError::Client { what: "prod producer", source })?,
    );
    let mut consumer = kafka::consumer_config(&config.prod, "prod", &config.bridge.group_id);
    kafka::fit_records(&mut consumer, config);
    let commit = match config.bridge.delivery {
        Delivery::AtLeastOnce => CommitStrategy::Offsets,
        Delivery::ExactlyOnce => CommitStrategy::Transaction {
            transactions: Arc::new(Transactions::init(
                producer.clone(),
                config.bridge.transactional_id(),
                config.bridge.transaction_timeout,
                kafka::session_timeout(&consumer),
                metrics,
                stop,
            )?),
            refusals: refusals.clone(),
        },
    };
    // Both sources keep state per partition that a revocation ends.
    let revoked = Arc::new(Revoked::default());
    let source = match whitelist {
        WhitelistSource::Snapshot(s) => {
            let log = DecisionLog::new(config, metrics)?;
            Source::Pinned(Box::new(Pinned::new(config, s, log, revoked.clone(), metrics, now_ms())))
        }
        WhitelistSource::Lookup { cache, workers } => {
            let limits = HoldLimits { records: config.bridge.max_in_flight, bytes: config.bridge.max_in_flight_bytes };
            // Decided from the answers being served, pinned like a snapshot; revocations reach
            // the pins through the holding.
            let answers = crate::whitelist::shared(crate::whitelist::Snapshot::empty());
            let log = DecisionLog::new(config, metrics)?;
            let pinned = Pinned::new(config, answers.clone(), log, Arc::default(), metrics, now_ms());
            let holding = Holding::new(cache, workers, limits, metrics, revoked.clone(), (pinned, answers))
                .map_err(|source| RelayError::Thread { what: "lookup workers", source })?;
            Source::Lookup(Box::new(holding))
        }
    };
    let writer = Writer::new(Producers::One(producer.clone()), Cluster::Prod, metrics)
        .with_dead_letters(&config.bridge.dead_letter_topic, refusals);
    let mut handler = Forward::new(FanOut::new(config, writer, tracker.clone(), metrics, tracer), source);
    let spec = Spec {
        direction: Direction::Forward,
        consumer,
        topics: config.routes.iter().map(|r| r.topic.clone()).collect(),
        tracker,
        flush: producer,
        commit,
        revoked,
    };
    direction::run(config, spec, &mut handler, health, metrics, stop)
}

/// Where the whitelist a record is decided with comes from.
pub enum Source {
    /// Whole snapshots, each record decided by the epoch pinned for its offset.
    Pinned(Box<Pinned>),
    /// Per-user lookups; a record waits for its user's answer.
    Lookup(Box<Holding>),
}

pub struct Forward {
    pub fan_out: FanOut,
    pub source: Source,
    now: i64,
}

impl Forward {
    pub fn new(fan_out: FanOut, source: Source) -> Self {
        Self { fan_out, source, now: 0 }
    }
}

impl Handler for Forward {
    fn begin_batch(&mut self) -> Result<(), RelayError> {
        self.fan_out.dead_letter_refused()?;
        // One snapshot load and one clock reading per batch.
        self.now = now_ms();
        match &mut self.source {
            Source::Pinned(p) => p.begin_batch(self.now)?,
            Source::Lookup(h) => h.begin_batch(self.now)?,
        }
        Ok(())
    }

    fn poll_timeout(&self) -> Duration {
        match &self.source {
            Source::Lookup(h) if h.has_parked() => LOOKUP_POLL_TIMEOUT,
            _ => POLL_TIMEOUT,
        }
    }

    fn handle(
        &mut self,
        msg: &BorrowedMessage<'_>,
        consumer: &BaseConsumer<RebalanceContext>,
    ) -> Result<(), RelayError> {
        let Some(ri) = self.fan_out.route_index(msg.topic()) else {
            // Subscribed topics are exactly the route inputs; anything else is not ours to route.
            tracing::warn!(topic = msg.topic(), "record from a topic without a route; skipped");
            return Ok(());
        };
        match &mut self.source {
            Source::Lookup(h) => h.offer(ri, msg, &mut self.fan_out, consumer, self.now),
            Source::Pinned(p) => p.decide(ri, msg, &mut self.fan_out, consumer, self.now),
        }
    }

    fn end_batch(&mut self, consumer: &BaseConsumer<RebalanceContext>) -> Result<(), RelayError> {
        match &mut self.source {
            Source::Lookup(h) => h.end_batch(&mut self.fan_out, consumer, self.now)?,
            Source::Pinned(p) => p.end_batch(consumer, &self.fan_out, self.now, |_| false),
        }
        Ok(())
    }

    fn held(&self, topic: &str, partition: i32) -> bool {
        match &self.source {
            Source::Lookup(h) => self.fan_out.route_index(topic).is_some_and(|r| h.is_paused((r, partition))),
            Source::Pinned(p) => self.fan_out.route_index(topic).is_some_and(|r| p.is_held((r, partition))),
        }
    }
}
