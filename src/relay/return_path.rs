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
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};

use super::RelayError;
use super::consumer::RebalanceContext;
use super::offsets::Tracker;
use super::pipeline::{InputHeaders, ProduceError, with_trace};
use super::poll::Handler;
use super::producer::{Output, OutputProducer, send};
use crate::config::Config;
use crate::extract::Headers;
use crate::metrics::{Metrics, RouteMetrics};
use crate::telemetry::{Hop, HopTracer, Propagated};
use crate::tenancy::Cluster;

/// Value of the provenance header on forwarded records.
pub const ORIGIN_RUSH: &str = "rush";

/// Names of the two provenance headers: origin (`rush`) and the raw topic it came through.
#[derive(Debug, Clone)]
pub struct Provenance {
    pub origin: String,
    pub topic: String,
}

impl Provenance {
    pub fn new(config: &Config) -> Self {
        let origin = config.bridge.origin_header.clone();
        Self { topic: format!("{origin}-topic"), origin }
    }

    /// True when `headers` say the record already came through the return path of `topic`.
    pub fn came_through<H: Headers + ?Sized>(&self, headers: &H, topic: &str) -> bool {
        headers.last(&self.origin) == Some(ORIGIN_RUSH.as_bytes())
            && headers.last(&self.topic) == Some(topic.as_bytes())
    }

    /// The input headers, earlier provenance and trace context replaced by this hop's.
    fn stamp<H: rdkafka::message::Headers>(
        &self,
        headers: Option<&H>,
        topic: &str,
        trace: &Propagated,
    ) -> OwnedHeaders {
        with_trace(headers, &[&self.origin, &self.topic], trace)
            .insert(Header { key: &self.origin, value: Some(ORIGIN_RUSH) })
            .insert(Header { key: &self.topic, value: Some(topic) })
    }
}

pub struct ReturnPath {
    topics: Vec<String>,
    provenance: Provenance,
    producer: Arc<OutputProducer>,
    tracker: Arc<Tracker>,
    metrics: Arc<Metrics>,
    routes: Vec<RouteMetrics>,
    tracer: Arc<HopTracer>,
}

impl ReturnPath {
    /// For the raw topics of `config`'s return routes, in route order.
    pub fn new(
        config: &Config,
        producer: Arc<OutputProducer>,
        tracker: Arc<Tracker>,
        metrics: &Arc<Metrics>,
        tracer: Arc<HopTracer>,
    ) -> Self {
        let routes: Vec<usize> = (0..config.routes.len()).filter(|&i| config.routes[i].return_path).collect();
        Self {
            topics: routes.iter().map(|&i| config.routes[i].topic.clone()).collect(),
            routes: routes.iter().map(|&i| metrics.route(config, i)).collect(),
            metrics: metrics.clone(),
            provenance: Provenance::new(config),
            tracer,
            producer,
            tracker,
        }
    }
}

impl Handler for ReturnPath {
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
        send(&self.producer, out).map_err(|(source, class)| {
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
