//! What every direction shares on its consumer side: one runner ([`run`]) that subscribes,
//! polls ([`poll`]) and drains, and the consumer context that handles rebalances and commits
//! ([`rebalance`]). A direction (forward, Rush lane, return path) is a [`Spec`] and a
//! [`poll::Handler`].

pub mod poll;
pub mod rebalance;

use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::relay::commit::CommitStrategy;
use crate::relay::error::RelayError;
use crate::relay::health::{Direction, Health};
use crate::relay::offsets::{self, Tracker};
use crate::relay::producer::Flush;
use crate::relay::stop::Stop;
use rebalance::{RebalanceContext, Revoked};

/// What a direction consumes, what it drains, and how it commits.
pub struct Spec {
    pub direction: Direction,
    /// The consumer's librdkafka settings, group included.
    pub consumer: rdkafka::ClientConfig,
    /// The topics read, indexed like the partition keys.
    pub topics: Vec<String>,
    pub tracker: Arc<Tracker>,
    /// The producers whose deliveries the tracker waits for.
    pub flush: Arc<dyn Flush>,
    pub commit: CommitStrategy,
    /// Where revocations are told to the handler (it keeps state per partition).
    pub revoked: Arc<Revoked>,
}

/// Subscribes, runs the poll loop with `handler` until `stop` or an error, then drains, commits
/// what is done, and reports what stopped it.
pub fn run<H: poll::Handler>(
    config: &Config,
    spec: Spec,
    handler: &mut H,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
    stop: &Stop<'_>,
) -> Result<(), RelayError> {
    let Spec { direction, consumer, topics, tracker, flush, commit, revoked } = spec;
    let group = consumer.get("group.id").unwrap_or_default().to_owned();
    let context = RebalanceContext {
        tracker: tracker.clone(),
        flush: flush.clone(),
        topics: topics.clone(),
        drain_timeout: config.bridge.drain_timeout,
        health: health.clone(),
        metrics: metrics.clone(),
        direction,
        revoked,
        commit,
    };
    let consumer = subscribe(consumer, context, &topics)?;
    tracing::info!(direction = direction.as_str(), ?topics, %group, "direction started");
    let limits = poll::Limits::new(config, health, metrics, direction);
    let result = poll::run(&consumer, &tracker, &limits, handler, stop);
    finish(config, &consumer, &*flush, &tracker, &topics, result)
}

fn subscribe(
    client: rdkafka::ClientConfig,
    context: RebalanceContext,
    topics: &[String],
) -> Result<BaseConsumer<RebalanceContext>, RelayError> {
    let consumer: BaseConsumer<RebalanceContext> =
        client.create_with_context(context).map_err(|source| RelayError::Client { what: "consumer", source })?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names).map_err(|source| RelayError::Client { what: "subscription", source })?;
    Ok(consumer)
}

/// Drain: whatever was enqueued gets its chance to be acknowledged, then everything done is
/// committed. A failure in the loop still commits the safe prefix before it.
fn finish(
    config: &Config,
    consumer: &BaseConsumer<RebalanceContext>,
    producers: &dyn Flush,
    tracker: &Tracker,
    topics: &[String],
    result: Result<(), RelayError>,
) -> Result<(), RelayError> {
    let drained = producers.drain(config.bridge.drain_timeout);
    if let Err(e) = consumer.context().commit(consumer, None, CommitMode::Sync) {
        tracing::error!(error = %e, "final commit failed; uncommitted records will be replayed on restart");
    }
    let pending = tracker.in_flight();
    consumer.unsubscribe();
    result?;
    if let Some(e) = consumer.context().commit.transaction().and_then(|t| t.fatal()) {
        return Err(e.into());
    }
    if let Some(f) = tracker.failure() {
        return Err(delivery_error(topics, f));
    }
    if drained.is_err() && pending > 0 {
        return Err(RelayError::DrainTimeout { pending });
    }
    Ok(())
}

fn delivery_error(topics: &[String], f: offsets::Failure) -> RelayError {
    RelayError::Delivery {
        topic: topics.get(f.key.0).cloned().unwrap_or_default(),
        partition: f.key.1,
        offset: f.offset,
        reason: f.reason,
        class: f.class,
    }
}
