//! Where a record is decided and fanned out: one input record → one output per service of its
//! route, each on the cluster its decision names. Every write goes to prod: a Rush copy goes to
//! the route's outbox there, and the Rush lane ([`super::rush_lane`]) carries it to Rush, so
//! production's progress never waits for the Rush cluster.

use std::fmt::Write as _;
use std::sync::Arc;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message};

use super::dead_letter::{self, Refusals, Refused};
use super::headers::{InputHeaders, OUTBOX_INPUT_OFFSET, OUTBOX_OUTPUT, Provenance, copy_headers, with_trace};
use super::offsets::Tracker;
use super::producer::{Output, OutputProducer};
use crate::config::{Config, Route};
use crate::extract::{Headers, RecordView, TenancyKey};
use crate::kafka::ErrorClass;
use crate::metrics::{Metrics, RouteMetrics};
use crate::telemetry::{Hop, HopTracer};
use crate::tenancy::{self, Cluster, Decision, Reason, Subject};
use crate::whitelist::Whitelist;

/// A record the bridge cannot write out, nor dead-letter; the relay stops before committing
/// past it.
#[derive(Debug, thiserror::Error)]
#[error("cannot produce {input_topic}[{partition}]@{offset} to {cluster} {output_topic}: {source} ({} error)", class.as_str())]
pub struct ProduceError {
    pub input_topic: String,
    pub partition: i32,
    pub offset: i64,
    pub cluster: &'static str,
    pub output_topic: String,
    pub class: ErrorClass,
    pub source: KafkaError,
}

const TIME_EVERY: u32 = 64;

/// What lookup mode says about a record's user: decide now from this whitelist, or hold the
/// record until the answer is in.
pub enum Verdict<W> {
    Decide(W),
    Hold,
}

pub struct Pipeline {
    routes: Vec<Route>,
    tenancy_key: TenancyKey,
    producer: Arc<OutputProducer>,
    tracker: Arc<Tracker>,
    all_metrics: Arc<Metrics>,
    metrics: Vec<RouteMetrics>,
    tracer: Arc<HopTracer>,
    /// Return-path provenance headers, which a Rush copy must not carry: a Rush service that
    /// passes headers on would otherwise make its own new events look like loops.
    provenance: Provenance,
    decision_time: prometheus::Histogram,
    /// Decisions are timed 1 in [`TIME_EVERY`]; two clock reads would cost a third of one.
    untimed: u32,
    /// Reused across records so stamping allocates only for the payload copy librdkafka takes.
    stamp: String,
    payload: Vec<u8>,
    offset_text: String,
    dead_letter_topic: String,
    refusals: Option<Arc<Refusals>>,
}

impl Pipeline {
    pub fn new(
        config: &Config,
        producer: Arc<OutputProducer>,
        tracker: Arc<Tracker>,
        metrics: &Arc<Metrics>,
        tracer: Arc<HopTracer>,
    ) -> Self {
        Self {
            tracer,
            provenance: Provenance::new(config),
            metrics: (0..config.routes.len()).map(|i| metrics.route(config, i)).collect(),
            decision_time: metrics.decision_seconds.clone(),
            untimed: 0,
            routes: config.routes.clone(),
            tenancy_key: TenancyKey::new(&config.bridge.tenancy_header),
            producer,
            tracker,
            all_metrics: metrics.clone(),
            stamp: String::new(),
            payload: Vec::new(),
            offset_text: String::new(),
            dead_letter_topic: config.bridge.dead_letter_topic.clone(),
            refusals: None,
        }
    }

    /// Writes the broker refused for good reach the pipeline through `refusals`.
    pub fn with_refusals(mut self, refusals: Option<Arc<Refusals>>) -> Self {
        self.refusals = refusals;
        self
    }

    /// Dead-letters the writes the broker refused since the last call, each in place of the
    /// output it was. One whose input was revoked meanwhile is left to the partition's next
    /// owner, which reads the input again.
    pub fn dead_letter_refused(&mut self) -> Result<(), Box<ProduceError>> {
        let Some(refusals) = &self.refusals else { return Ok(()) };
        for p in refusals.take() {
            let Some(((ri, partition), offset)) = self.tracker.locate(p.opaque) else { continue };
            let route = &self.routes[ri];
            let topic = p.message.topic();
            let (service, cluster) = if topic == route.outbox_topic {
                let named = InputHeaders(p.message.headers()).last(OUTBOX_OUTPUT).map(<[u8]>::to_vec);
                (route.services.iter().find(|s| named.as_deref() == Some(s.output_topic.as_bytes())), Cluster::Rush)
            } else {
                (route.services.iter().find(|s| s.output_topic == topic), Cluster::Prod)
            };
            let Some(service) = service else { continue };
            let refused = Refused {
                input: (&route.topic, partition, offset),
                route: &route.topic,
                service: &service.name,
                output_topic: &service.output_topic,
                cluster,
                error: &p.error,
            };
            dead_letter::write(
                &self.producer,
                &self.dead_letter_topic,
                &p.message,
                &refused,
                p.opaque,
                &self.all_metrics,
            )
            .map_err(|(source, class)| {
                self.all_metrics.produce_error(Cluster::Prod, class);
                Box::new(ProduceError {
                    input_topic: route.topic.clone(),
                    partition,
                    offset,
                    cluster: "prod",
                    output_topic: self.dead_letter_topic.clone(),
                    class,
                    source,
                })
            })?;
        }
        Ok(())
    }

    pub fn route_index(&self, topic: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.topic == topic)
    }

    pub fn route_topic(&self, index: usize) -> Option<&str> {
        self.routes.get(index).map(|r| r.topic.as_str())
    }

    /// Decides `msg` once and enqueues each of its outputs. On error the record stays pending in
    /// the tracker, so its offset is never committed.
    pub fn process<M: Message, W: Whitelist + ?Sized>(
        &mut self,
        msg: &M,
        whitelist: &W,
        now_ms: i64,
    ) -> Result<(), Box<ProduceError>> {
        self.process_looked_up(msg, now_ms, |_| Verdict::Decide(whitelist)).map(|_| ())
    }

    /// Lookup mode: finds `msg`'s subject, asks `verdict` about its user (`None`: the decision
    /// needs no whitelist) and decides now, or hands the subject back for a record that must
    /// wait for its lookup. The user is extracted once either way.
    pub fn process_looked_up<M: Message, W: Whitelist>(
        &mut self,
        msg: &M,
        now_ms: i64,
        verdict: impl FnOnce(Option<&str>) -> Verdict<W>,
    ) -> Result<Option<(usize, Subject<'static>)>, Box<ProduceError>> {
        let Some(ri) = self.route_index(msg.topic()) else {
            // Subscribed topics are exactly the route inputs; anything else is not ours to route.
            tracing::warn!(topic = msg.topic(), "record from a topic without a route; skipped");
            return Ok(None);
        };
        let route = &self.routes[ri];
        let headers = InputHeaders(msg.headers());
        let view = RecordView { key: msg.key(), payload: msg.payload(), headers: &headers };
        self.untimed += 1;
        let started = (self.untimed >= TIME_EVERY).then(std::time::Instant::now);
        let subject = tenancy::subject(route, &view, &self.tenancy_key);
        let whitelist = match verdict(subject.user()) {
            Verdict::Decide(w) => w,
            Verdict::Hold => return Ok(Some((ri, subject.into_owned()))),
        };
        let decision = tenancy::decide_subject(route, msg.payload(), subject, &whitelist, now_ms);
        if let Some(t) = started {
            self.untimed = 0;
            self.decision_time.observe(t.elapsed().as_secs_f64());
        }
        self.fan_out(ri, msg, decision).map(|()| None)
    }

    /// Decides a record that waited for its lookup, with the subject found when it arrived.
    pub fn process_subject<M: Message, W: Whitelist + ?Sized>(
        &mut self,
        ri: usize,
        msg: &M,
        subject: Subject<'_>,
        whitelist: &W,
        now_ms: i64,
    ) -> Result<(), Box<ProduceError>> {
        let decision = tenancy::decide_subject(&self.routes[ri], msg.payload(), subject, whitelist, now_ms);
        self.fan_out(ri, msg, decision)
    }

    fn fan_out<M: Message>(&mut self, ri: usize, msg: &M, decision: Decision<'_>) -> Result<(), Box<ProduceError>> {
        let route = &self.routes[ri];
        let input_headers = msg.headers();
        let headers = InputHeaders(input_headers);
        let m = &self.metrics[ri];
        m.records_in.inc();
        match decision.reason {
            Reason::Passthrough(p) => m.passthrough(p).inc(),
            Reason::Upstream => m.upstream.inc(),
            Reason::Whitelist => {}
        }

        // Bytes count once per output: that is what the producer queue holds for this record.
        let outputs = route.services.len();
        let opaque =
            self.tracker.begin((ri, msg.partition()), msg.offset(), outputs as u32, input_bytes(msg) * outputs);
        for (i, service) in route.services.iter().enumerate() {
            let cluster = decision.cluster(i);
            let (topic, payload, headers) = match cluster {
                Cluster::Prod => (&service.output_topic, msg.payload(), input_headers.map(copy_headers)),
                Cluster::Rush => {
                    m.stamped[i].inc();
                    let user = decision.user.as_deref().unwrap_or_default();
                    tenancy::tenancy_value(user, &service.name, &mut self.stamp);
                    let payload = match (decision.splice, msg.payload()) {
                        (Some(splice), Some(p)) => {
                            tenancy::stamp_payload(
                                p,
                                splice,
                                self.tenancy_key.as_str(),
                                &self.stamp,
                                &mut self.payload,
                            );
                            Some(self.payload.as_slice())
                        }
                        (_, p) => p,
                    };
                    let stamp = route.stamp.header().then_some(self.stamp.as_str());
                    let hop = Hop {
                        route: &route.topic,
                        service: Some(&service.name),
                        cluster: "rush",
                        direction: super::Direction::Forward.as_str(),
                        output_topic: &service.output_topic,
                    };
                    let trace = self.tracer.hop(|k| headers.last(k), &hop);
                    let key = self.tenancy_key.as_str();
                    let drop =
                        [key, &self.provenance.origin, &self.provenance.topic, OUTBOX_OUTPUT, OUTBOX_INPUT_OFFSET];
                    let mut out = with_trace(input_headers, &drop, &trace);
                    if let Some(s) = stamp {
                        out = out.insert(Header { key, value: Some(s) });
                    }
                    // Where the Rush lane writes it, and which input it is (verify, explain).
                    self.offset_text.clear();
                    let _ = write!(self.offset_text, "{}", msg.offset());
                    out = out
                        .insert(Header { key: OUTBOX_OUTPUT, value: Some(service.output_topic.as_str()) })
                        .insert(Header { key: OUTBOX_INPUT_OFFSET, value: Some(self.offset_text.as_str()) });
                    (&route.outbox_topic, payload, Some(out))
                }
            };
            let out = Output {
                topic,
                partition: msg.partition(),
                key: msg.key(),
                payload,
                headers,
                timestamp: msg.timestamp(),
                opaque,
            };
            let key = (ri, msg.partition());
            let written =
                match dead_letter::send_or_refusal(&self.producer, out, self.refusals.as_deref(), key, msg.offset()) {
                    Ok(None) => Ok(()),
                    Ok(Some(refusal)) => {
                        if !refusal.counted {
                            self.all_metrics.produce_error(Cluster::Prod, ErrorClass::Poison);
                        }
                        let refused = Refused {
                            input: (&route.topic, msg.partition(), msg.offset()),
                            route: &route.topic,
                            service: &service.name,
                            output_topic: &service.output_topic,
                            cluster,
                            error: &refusal.error,
                        };
                        dead_letter::write(
                            &self.producer,
                            &self.dead_letter_topic,
                            msg,
                            &refused,
                            opaque,
                            &self.all_metrics,
                        )
                    }
                    Err(e) => Err(e),
                };
            written.map_err(|(source, class)| {
                self.all_metrics.produce_error(Cluster::Prod, class);
                Box::new(ProduceError {
                    input_topic: route.topic.clone(),
                    partition: msg.partition(),
                    offset: msg.offset(),
                    cluster: "prod",
                    output_topic: topic.clone(),
                    class,
                    source,
                })
            })?;
        }
        Ok(())
    }
}

/// What an input record weighs against `bridge.max_in_flight_bytes`.
pub(super) fn input_bytes<M: Message>(msg: &M) -> usize {
    msg.payload().map_or(0, <[u8]>::len) + msg.key().map_or(0, <[u8]>::len)
}
