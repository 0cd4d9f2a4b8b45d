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
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};

use super::RelayError;
use super::consumer::RebalanceContext;
use super::dead_letter::{self, Refusals, Refused};
use super::headers::{InputHeaders, Provenance};
use super::offsets::Tracker;
use super::partition_transactions::Writer;
use super::pipeline::ProduceError;
use super::poll::Handler;
use super::producer::Output;
use crate::config::Config;
use crate::extract::Headers;
use crate::kafka::ErrorClass;
use crate::metrics::{Metrics, RouteMetrics};
use crate::telemetry::{Hop, HopTracer};
use crate::tenancy::Cluster;

/// The `service` a dead-lettered return-path record names (its input topic is `rush:{topic}`).
pub const RETURN_SERVICE: &str = "return-path";

pub struct ReturnPath {
    topics: Vec<String>,
    dead_letter_topic: String,
    refusals: Arc<Refusals>,
    provenance: Provenance,
    writer: Writer,
    tracker: Arc<Tracker>,
    metrics: Arc<Metrics>,
    routes: Vec<RouteMetrics>,
    tracer: Arc<HopTracer>,
}

impl ReturnPath {
    /// For the raw topics of `config`'s return routes, in route order.
    pub fn new(
        config: &Config,
        writer: Writer,
        tracker: Arc<Tracker>,
        metrics: &Arc<Metrics>,
        tracer: Arc<HopTracer>,
        refusals: Arc<Refusals>,
    ) -> Self {
        let routes: Vec<usize> = (0..config.routes.len()).filter(|&i| config.routes[i].return_path).collect();
        Self {
            topics: routes.iter().map(|&i| config.routes[i].topic.clone()).collect(),
            dead_letter_topic: config.bridge.dead_letter_topic.clone(),
            refusals,
            routes: routes.iter().map(|&i| metrics.route(config, i)).collect(),
            metrics: metrics.clone(),
            provenance: Provenance::new(config),
            tracer,
            writer,
            tracker,
        }
    }
}

impl ReturnPath {
    /// Writes `content` to the dead-letter topic in place of the prod write `opaque` stood for:
    /// the Rush record at `offset` of `partition` of route `ri`, refused with `error`.
    fn dead_letter<M: Message>(
        &self,
        ri: usize,
        (partition, offset): (i32, i64),
        content: &M,
        error: &KafkaError,
        opaque: usize,
    ) -> Result<(), RelayError> {
        let topic = &self.topics[ri];
        let producer = self.writer.for_partition((ri, partition))?;
        let source = format!("rush:{topic}");
        let refused = Refused {
            input: (&source, partition, offset),
            route: topic,
            service: RETURN_SERVICE,
            output_topic: topic,
            cluster: Cluster::Prod,
            error,
        };
        dead_letter::write(&producer, &self.dead_letter_topic, content, &refused, opaque, &self.metrics).map_err(
            |(source, class)| {
                self.metrics.produce_error(Cluster::Prod, class);
                let e = ProduceError {
                    input_topic: format!("rush:{topic}"),
                    partition,
                    offset,
                    cluster: "prod",
                    output_topic: self.dead_letter_topic.clone(),
                    class,
                    source,
                };
                RelayError::from(Box::new(e))
            },
        )
    }
}

impl Handler for ReturnPath {
    /// At-least-once: dead-letters the writes prod refused since the last batch. One whose
    /// partition was revoked meanwhile is read again by its next owner.
    fn begin_batch(&mut self) -> Result<(), RelayError> {
        for p in self.refusals.take() {
            let Some(((ri, partition), offset)) = self.tracker.locate(p.opaque) else { continue };
            self.dead_letter(ri, (partition, offset), &p.message, &p.error, p.opaque)?;
        }
        Ok(())
    }

    fn handle(&mut self, msg: &BorrowedMessage<'_>, _: &BaseConsumer<RebalanceContext>) -> Result<(), RelayError> {
        let Some(ri) = self.topics.iter().position(|t| t == msg.topic()) else {
            tracing::warn!(topic = msg.topic(), "return path: record from a topic without a return route; skipped");
            return Ok(());
        };
        let key = (ri, msg.partition());
        self.routes[ri].return_in.inc();
        let topic = &self.topics[ri];
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
        let producer = self.writer.for_partition(key)?;
        let opaque = self.tracker.begin(key, msg.offset(), 1, super::pipeline::input_bytes(msg));
        let hop = Hop {
            route: topic,
            service: None,
            cluster: "prod",
            direction: super::Direction::Return.as_str(),
            output_topic: topic,
        };
        let trace = self.tracer.hop(|name| input.last(name), &hop);
        let out = Output {
            topic,
            partition: msg.partition(),
            key: msg.key(),
            payload: msg.payload(),
            headers: Some(self.provenance.stamp(msg.headers(), topic, &trace)),
            timestamp: msg.timestamp(),
            opaque,
        };
        match dead_letter::send_or_refusal(&producer, out, Some(&self.refusals), key, msg.offset()) {
            Ok(None) => Ok(()),
            // A record Rush accepted that prod will not take: dead-lettered, not a stop.
            Ok(Some(refusal)) => {
                if !refusal.counted {
                    self.metrics.produce_error(Cluster::Prod, ErrorClass::Poison);
                }
                return self.dead_letter(ri, (msg.partition(), msg.offset()), msg, &refusal.error, opaque);
            }
            Err(e) => Err(e),
        }
        .map_err(|(source, class)| {
            self.metrics.produce_error(Cluster::Prod, class);
            Box::new(ProduceError {
                input_topic: format!("rush:{topic}"),
                partition: msg.partition(),
                offset: msg.offset(),
                cluster: "prod",
                output_topic: topic.clone(),
                class,
                source,
            })
        })?;
        Ok(())
    }
}
