//! Where a record is decided and fanned out: one input record → one output per service of its
//! route, each on the cluster its decision names. Every write goes to prod: a Rush copy goes to
//! the route's outbox there, and the Rush lane ([`crate::relay::rush_lane`]) carries it to Rush,
//! so production's progress never waits for the Rush cluster.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use rdkafka::message::{Header, Message};

use crate::config::{Config, Route};
use crate::environment;
use crate::extract::{Headers, RecordView, TenancyKey};
use crate::headers::{
    InputHeaders, OUTBOX_ENV, OUTBOX_INPUT_OFFSET, OUTBOX_INPUT_TIMESTAMP, OUTBOX_OUTPUT, Provenance, copy_headers,
    with_trace,
};
use crate::metrics::{Metrics, RouteMetrics};
use crate::relay::direction::poll::input_bytes;
use crate::relay::error::RelayError;
use crate::relay::health::Direction;
use crate::relay::offsets::Tracker;
use crate::relay::output::{Origin, Writer};
use crate::relay::producer::Output;
use crate::telemetry::{Hop, HopTracer};
use crate::tenancy::{self, Cluster, Decision, Reason, Subject};
use crate::whitelist::Whitelist;

/// Decisions are timed 1 in this many; two clock reads would cost a third of one.
const TIME_EVERY: u32 = 64;

pub struct FanOut {
    routes: Vec<Route>,
    tenancy_key: TenancyKey,
    writer: Writer,
    tracker: Arc<Tracker>,
    metrics: Vec<RouteMetrics>,
    tracer: Arc<HopTracer>,
    /// Return-path provenance headers, which a Rush copy must not carry: a Rush service that
    /// passes headers on would otherwise make its own new events look like loops.
    provenance: Provenance,
    decision_time: prometheus::Histogram,
    untimed: u32,
    /// Reused across records so stamping allocates only for the payload copy librdkafka takes.
    stamp: String,
    payload: Vec<u8>,
    offset_text: String,
}

impl FanOut {
    pub fn new(
        config: &Config,
        writer: Writer,
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
            writer,
            tracker,
            stamp: String::new(),
            payload: Vec::new(),
            offset_text: String::new(),
        }
    }

    /// The index of the route whose input `topic` is.
    pub fn route_index(&self, topic: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.topic == topic)
    }

    pub fn route_topic(&self, index: usize) -> Option<&str> {
        self.routes.get(index).map(|r| r.topic.as_str())
    }

    /// Dead-letters the writes the broker refused since the last call, each in place of the
    /// output it was. One whose input was revoked meanwhile is left to the partition's next
    /// owner, which reads the input again.
    pub fn dead_letter_refused(&mut self) -> Result<(), RelayError> {
        for refusal in self.writer.take_refusals() {
            let Some(((ri, partition), offset)) = self.tracker.locate(refusal.opaque) else { continue };
            let Some(route) = self.routes.get(ri) else { continue };
            let topic = refusal.message.topic();
            let (service, cluster) = if topic == route.outbox_topic {
                let named = InputHeaders(refusal.message.headers()).last(OUTBOX_OUTPUT).map(<[u8]>::to_vec);
                (route.services.iter().find(|s| named.as_deref() == Some(s.output_topic.as_bytes())), Cluster::Rush)
            } else {
                (route.services.iter().find(|s| s.output_topic == topic), Cluster::Prod)
            };
            let Some(service) = service else { continue };
            let origin = Origin {
                input: (&route.topic, partition, offset),
                route: &route.topic,
                service: &service.name,
                output_topic: &service.output_topic,
                cluster,
            };
            self.writer.dead_letter_refused((ri, partition), &refusal, &origin)?;
        }
        Ok(())
    }

    /// Starts timing a decision, 1 in [`TIME_EVERY`].
    pub fn start_timer(&mut self) -> Option<Instant> {
        self.untimed += 1;
        (self.untimed >= TIME_EVERY).then(Instant::now)
    }

    /// What `msg` of route `ri`'s decision depends on besides the whitelist: its user, or an
    /// upstream stamp, found once.
    /// `headers` are `msg`'s. `None`: `ri` is no route of this relay.
    pub fn subject<'m, M: Message>(
        &self,
        ri: usize,
        msg: &'m M,
        headers: &'m InputHeaders<'m, M::Headers>,
    ) -> Option<Subject<'m>> {
        let view = RecordView { key: msg.key(), payload: msg.payload(), headers };
        Some(tenancy::subject(self.routes.get(ri)?, &view, &self.tenancy_key))
    }

    /// Snapshot mode: decides `msg` of route `ri` once from `whitelist` and enqueues each of its
    /// outputs. On error the record stays pending in the tracker, so its offset is never
    /// committed.
    pub fn decide<M: Message, W: Whitelist + ?Sized>(
        &mut self,
        ri: usize,
        msg: &M,
        whitelist: &W,
        now_ms: i64,
    ) -> Result<(), RelayError> {
        let started = self.start_timer();
        let headers = InputHeaders(msg.headers());
        let Some(subject) = self.subject(ri, msg, &headers) else { return Ok(()) };
        self.decide_subject(ri, msg, subject, whitelist, now_ms, started)
    }

    /// Decides `msg` with the subject found in it (at once, or when its lookup came in).
    pub fn decide_subject<M: Message, W: Whitelist + ?Sized>(
        &mut self,
        ri: usize,
        msg: &M,
        subject: Subject<'_>,
        whitelist: &W,
        now_ms: i64,
        started: Option<Instant>,
    ) -> Result<(), RelayError> {
        let Some(route) = self.routes.get(ri) else { return Ok(()) };
        let decision = tenancy::decide_subject(route, msg.payload(), subject, whitelist, now_ms);
        if let Some(t) = started {
            self.untimed = 0;
            self.decision_time.observe(t.elapsed().as_secs_f64());
        }
        self.fan_out(ri, msg, decision)
    }

    fn fan_out<M: Message>(&mut self, ri: usize, msg: &M, decision: Decision<'_>) -> Result<(), RelayError> {
        let route = &self.routes[ri];
        let input_headers = msg.headers();
        let headers = InputHeaders(input_headers);
        let m = &self.metrics[ri];
        m.records_in.inc();
        match decision.reason {
            Reason::Passthrough(p) => m.passthrough(p).inc(),
            Reason::Upstream if decision.rejected.is_empty() => m.upstream.inc(),
            Reason::Upstream => {
                for i in decision.rejected.iter() {
                    if let Some(c) = m.rejected.get(i) {
                        c.inc();
                    }
                }
            }
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
                    let env = decision.envs.of(i);
                    if environment::is_default(env) {
                        m.stamped[i].inc();
                    } else {
                        m.stamped_envs.with_label_values(&[&route.topic, &service.name, env]).inc();
                    }
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
                        direction: Direction::Forward.as_str(),
                        output_topic: &service.output_topic,
                    };
                    let trace = self.tracer.hop(|k| headers.last(k), &hop);
                    let key = self.tenancy_key.as_str();
                    let drop = [
                        key,
                        &self.provenance.origin,
                        &self.provenance.topic,
                        OUTBOX_OUTPUT,
                        OUTBOX_INPUT_OFFSET,
                        OUTBOX_INPUT_TIMESTAMP,
                        OUTBOX_ENV,
                    ];
                    let mut out = with_trace(input_headers, &drop, &trace);
                    if let Some(s) = stamp {
                        out = out.insert(Header { key, value: Some(s) });
                    }
                    // Where the Rush lane writes it, and which input it is (verify, explain).
                    self.offset_text.clear();
                    let _ = write!(self.offset_text, "{}", msg.offset());
                    let offset_len = self.offset_text.len();
                    if let Some(ms) = msg.timestamp().to_millis() {
                        let _ = write!(self.offset_text, "{ms}");
                    }
                    let (offset, timestamp) = self.offset_text.split_at(offset_len);
                    out = out
                        .insert(Header { key: OUTBOX_OUTPUT, value: Some(service.output_topic.as_str()) })
                        .insert(Header { key: OUTBOX_INPUT_OFFSET, value: Some(offset) });
                    if !timestamp.is_empty() {
                        out = out.insert(Header { key: OUTBOX_INPUT_TIMESTAMP, value: Some(timestamp) });
                    }
                    if !environment::is_default(env) {
                        out = out.insert(Header { key: OUTBOX_ENV, value: Some(env) });
                    }
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
            let origin = Origin {
                input: (&route.topic, msg.partition(), msg.offset()),
                route: &route.topic,
                service: &service.name,
                output_topic: &service.output_topic,
                cluster,
            };
            self.writer.write((ri, msg.partition()), out, &origin, msg)?;
        }
        Ok(())
    }
}
