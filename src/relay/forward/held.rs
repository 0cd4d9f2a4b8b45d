//! Lookup mode in the forward direction: records held for their user's answer. A record whose
//! user is cached is decided at once. A record whose user is not waits, with every later record of its partition (order), while a worker asks the
//! Config Mapper; its partition keeps being read, and the users of the records held behind it
//! are looked up too, so lookups run side by side instead of one per round trip. Other
//! partitions go on.
//!
//! What decides a record is not the answer itself but a snapshot of every listed answer
//! ([`crate::whitelist::answers`]), pinned in the decision log like a snapshot-mode
//! whitelist ([`Pinned`]): a replay after kill -9, or the next owner of a partition, decides each
//! offset with the answers it was first decided with, whatever its own cache says. A record
//! waits until its user's answer is in that snapshot (built again once a batch when answers
//! changed).
//!
//! Production never waits for a slow whitelist: a record whose lookup has been on the wire
//! for `lookup_wait` is decided without it (production, unless an earlier answer listed its
//! user: the last good answer stands, as a snapshot-mode whitelist is kept through an outage)
//! and the Config Mapper is marked degraded; while it is (failing, or slower than that),
//! uncached users are decided so at once. A lookup queued behind others of a healthy Config Mapper (a cold start) is waited
//! for, up to `lookup_wait + request_timeout` in all. Every such decision is counted. Held records are bounded in count and bytes; a partition that would grow past the
//! bound is paused until its queue drains.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use super::fan_out::FanOut;
use super::pinned::Pinned;
use crate::headers::InputHeaders;
use crate::relay::direction::rebalance::{RebalanceContext, Revoked};
use crate::relay::error::RelayError;
use crate::relay::offsets::PartitionKey;
use crate::tenancy::Subject;
use crate::whitelist::SharedSnapshot;
use crate::whitelist::lookup::{Hit, LookupCache, LookupPool};

/// A record waiting for its user's answer, with what was found in it when it arrived.
struct Held {
    msg: OwnedMessage,
    route: usize,
    subject: Subject<'static>,
    since: Instant,
    bytes: usize,
}

/// What lookup mode can say about a subject now.
enum Now {
    /// Its answer (or that it needs none) is in the snapshot decisions are made from.
    Decide,
    /// No answer to be had in time: decided from the snapshot without one (production unless
    /// an earlier answer listed the user), counted.
    Unanswered,
    /// Asked, or answered after the snapshot was built: hold the record.
    Wait,
}

/// Bounds on what waits for lookups.
pub struct HoldLimits {
    pub records: usize,
    pub bytes: usize,
}

pub struct Holding {
    cache: Arc<LookupCache>,
    pool: LookupPool,
    done: Receiver<Box<str>>,
    /// Users handed to a worker and not yet answered.
    asked: HashSet<Box<str>, foldhash::fast::RandomState>,
    parked: HashMap<PartitionKey, VecDeque<Held>>,
    /// Partitions paused because what is held reached its bound.
    paused: HashSet<PartitionKey>,
    held_records: usize,
    held_bytes: usize,
    limits: HoldLimits,
    wait: Duration,
    /// The most a record waits, queued lookups included.
    max_hold: Duration,
    probe_every: Duration,
    last_probe: Option<Instant>,
    unanswered: prometheus::IntCounter,
    held_gauge: prometheus::IntGauge,
    /// Partitions the rebalance callback took away; their held records are dropped (never
    /// begun, so never committed: the next owner reads them again).
    revoked: Arc<Revoked>,
    /// Read once per batch: whether an answer is stale needs no clock read per record.
    batch_now: Instant,
    /// This thread's copy of the answers it used, in front of the shared cache: one hash and
    /// no synchronisation per record. A user's copy is dropped whenever a worker answers for
    /// that user again, and the copy expires when the shared entry does.
    local: HashMap<Box<str>, Hit, foldhash::fast::RandomState>,
    local_capacity: usize,
    /// Decides from the answers snapshot, pinned per offset.
    pinned: Pinned,
    /// The answers snapshot `pinned` reads, built from the cache's answers.
    answers: SharedSnapshot,
    /// The generation of answers that snapshot reflects.
    built: u64,
}

impl Holding {
    /// `pinned` must read `answers`, and be left without revocations of its own: they reach it
    /// through this.
    pub fn new(
        cache: Arc<LookupCache>,
        workers: usize,
        limits: HoldLimits,
        metrics: &crate::metrics::Metrics,
        revoked: Arc<Revoked>,
        (pinned, answers): (Pinned, SharedSnapshot),
    ) -> std::io::Result<Self> {
        let (tx, done) = std::sync::mpsc::channel();
        let pool = LookupPool::start(cache.clone(), workers, tx)?;
        let settings = *cache.settings();
        Ok(Self {
            cache,
            pool,
            done,
            asked: HashSet::default(),
            parked: HashMap::new(),
            paused: HashSet::new(),
            held_records: 0,
            held_bytes: 0,
            limits,
            wait: settings.wait,
            max_hold: settings.wait + settings.request_timeout,
            probe_every: settings.failure_backoff,
            last_probe: None,
            unanswered: metrics.lookup_unanswered.clone(),
            held_gauge: metrics.lookup_held.clone(),
            revoked,
            batch_now: Instant::now(),
            local: HashMap::default(),
            local_capacity: usize::try_from(settings.capacity).unwrap_or(usize::MAX).max(1),
            pinned,
            answers,
            built: 0,
        })
    }

    /// Once per batch: the answers snapshot is built again if answers changed, and pinned
    /// ahead for every partition deciding live.
    pub fn begin_batch(&mut self, now_ms: i64) -> Result<(), RelayError> {
        self.batch_now = Instant::now();
        self.apply_revocations();
        let answers = &self.cache.answers;
        if answers.generation() != self.built {
            let built = answers.build(now_ms);
            self.built = built.generation;
            self.answers.store(Arc::new(built.snapshot));
        }
        self.pinned.begin_batch(now_ms)
    }

    /// After a batch: held records whose answers came in are decided, partitions held for
    /// their decision history tried again.
    pub fn end_batch(
        &mut self,
        fan_out: &mut FanOut,
        consumer: &BaseConsumer<RebalanceContext>,
        now_ms: i64,
    ) -> Result<(), RelayError> {
        let drained = self.drain(fan_out, consumer, now_ms);
        // A partition also paused for holding too much stays paused until its queue drains.
        let paused = &self.paused;
        self.pinned.end_batch(consumer, fan_out, now_ms, |key| paused.contains(&key));
        drained
    }

    pub fn has_parked(&self) -> bool {
        !self.parked.is_empty()
    }

    /// Decides `msg` of route `ri` now if its whitelist answer is at hand, else holds it (and
    /// every later record of its partition).
    pub fn offer(
        &mut self,
        ri: usize,
        msg: &BorrowedMessage<'_>,
        fan_out: &mut FanOut,
        consumer: &BaseConsumer<RebalanceContext>,
        now: i64,
    ) -> Result<(), RelayError> {
        // A revoke and a new assignment of the same partition can happen inside one poll: the
        // old queue must be gone before a record of the new assignment could join it.
        self.apply_revocations();
        let key = (ri, msg.partition());
        if self.pinned.is_held(key) {
            // Fetched before its partition was held and rewound: read again once resumed.
            return Ok(());
        }
        let queued = !self.parked.is_empty() && self.parked.contains_key(&key);
        let started = fan_out.start_timer();
        let headers = InputHeaders(msg.headers());
        let Some(subject) = fan_out.subject(ri, msg, &headers) else { return Ok(()) };
        let decide_now = match subject.user() {
            // Behind a waiting record, even one that needs no lookup: order first, but have its
            // answer ready in time.
            user if queued => {
                if let Some(user) = user {
                    self.prefetch(user);
                }
                false
            }
            None => true,
            Some(user) => match self.now(user) {
                Now::Decide => true,
                Now::Unanswered => {
                    self.unanswered.inc();
                    true
                }
                Now::Wait => false,
            },
        };
        match decide_now {
            // Not decided (`false`): its partition is held and reads it again.
            true => self.pinned.decide_subject(ri, msg, subject, fan_out, consumer, now, started).map(drop),
            false => {
                let held = Held {
                    route: ri,
                    subject: subject.into_owned(),
                    since: Instant::now(),
                    bytes: size(msg),
                    msg: msg.detach(),
                };
                self.hold(held, consumer);
                Ok(())
            }
        }
    }

    /// What can be said about `user` now; asks a worker when it cannot.
    fn now(&mut self, user: &str) -> Now {
        match self.hit(user) {
            Some(hit) => {
                if hit.stale && !self.cache.degraded() {
                    self.ask(user, true);
                }
                // Answered after the snapshot was built: the next batch's has it.
                if hit.generation > self.built { Now::Wait } else { Now::Decide }
            }
            None if self.cache.degraded() => {
                // Production at once; an occasional probe finds out when it answers again.
                if self.last_probe.is_none_or(|t| t.elapsed() >= self.probe_every) && self.ask(user, false) {
                    self.last_probe = Some(Instant::now());
                }
                Now::Unanswered
            }
            None => {
                self.ask(user, false);
                Now::Wait
            }
        }
    }

    /// The answer for `user`: this thread's copy, else the shared cache's (then copied).
    fn hit(&mut self, user: &str) -> Option<Hit> {
        let now = self.batch_now;
        if let Some(h) = self.local.get(user).filter(|h| now < h.expires_at) {
            return Some(Hit { stale: now >= h.refresh_at, ..h.clone() });
        }
        let hit = self.cache.peek_at(user, now)?;
        if self.local.len() >= self.local_capacity {
            // The shared cache keeps what matters; this copy only saves a lookup in it.
            self.local.clear();
        }
        self.local.insert(user.into(), hit.clone());
        Some(hit)
    }

    /// Starts a lookup of a held record's user unless it is cached or already asked.
    fn prefetch(&mut self, user: &str) {
        if !self.cache.degraded() && !self.asked.contains(user) && self.cache.peek_at(user, self.batch_now).is_none() {
            self.ask(user, false);
        }
    }

    /// Hands `user` to a worker once; `false` when already asked or the queue is full.
    fn ask(&mut self, user: &str, refresh: bool) -> bool {
        if self.asked.contains(user) {
            return false;
        }
        let queued = if refresh { self.pool.submit_refresh(user) } else { self.pool.submit(user) };
        if queued {
            self.asked.insert(user.into());
        }
        queued
    }

    fn hold(&mut self, held: Held, consumer: &BaseConsumer<RebalanceContext>) {
        let key = (held.route, held.msg.partition());
        self.held_records += 1;
        self.held_bytes += held.bytes;
        let over = self.held_records > self.limits.records || self.held_bytes > self.limits.bytes;
        if over && self.paused.insert(key) {
            pause(consumer, held.msg.topic(), key.1, true);
        }
        self.parked.entry(key).or_default().push_back(held);
    }

    /// Takes in finished lookups and decides every held record that can now go, in order.
    fn drain(
        &mut self,
        fan_out: &mut FanOut,
        consumer: &BaseConsumer<RebalanceContext>,
        now: i64,
    ) -> Result<(), RelayError> {
        for user in self.done.try_iter() {
            self.local.remove(&user);
            self.asked.remove(&user);
        }
        self.apply_revocations();
        let keys: Vec<PartitionKey> = self.parked.keys().copied().collect();
        for key in keys {
            let Some(mut queue) = self.parked.remove(&key) else { continue };
            if self.pinned.is_held(key) {
                // Rewound to an earlier record than these: they are read again in order.
                self.forget_queue(&queue);
                continue;
            }
            let result = self.decide_front(&mut queue, fan_out, consumer, now);
            if queue.is_empty() {
                if self.paused.remove(&key) {
                    self.resume(consumer, fan_out, key);
                }
            } else {
                self.parked.insert(key, queue);
            }
            result?;
        }
        if self.held_records <= self.limits.records / 2 && self.held_bytes <= self.limits.bytes / 2 {
            for key in std::mem::take(&mut self.paused) {
                self.resume(consumer, fan_out, key);
            }
        }
        self.held_gauge.set(self.held_records as i64);
        Ok(())
    }

    /// Resumes a partition paused for holding too much, unless its decision history holds it.
    fn resume(&self, consumer: &BaseConsumer<RebalanceContext>, fan_out: &FanOut, key: PartitionKey) {
        if !self.pinned.is_held(key) {
            if let Some(topic) = fan_out.route_topic(key.0) {
                pause(consumer, topic, key.1, false);
            }
        }
    }

    /// Decides the front of `queue` for as long as answers are at hand.
    fn decide_front(
        &mut self,
        queue: &mut VecDeque<Held>,
        fan_out: &mut FanOut,
        consumer: &BaseConsumer<RebalanceContext>,
        now: i64,
    ) -> Result<(), RelayError> {
        while let Some(front) = queue.front() {
            let verdict = match front.subject.user() {
                None => Now::Decide,
                Some(user) => match self.now(user) {
                    Now::Wait if self.cache.asking_for(user).is_some_and(|t| t >= self.wait) => {
                        self.cache.mark_slow();
                        Now::Unanswered
                    }
                    // Queued behind other lookups of a Config Mapper that answers in time: a
                    // cold start, worth waiting for, within bounds.
                    Now::Wait if front.since.elapsed() >= self.max_hold => Now::Unanswered,
                    v => v,
                },
            };
            match verdict {
                Now::Wait => return Ok(()),
                Now::Unanswered => self.unanswered.inc(),
                Now::Decide => {}
            }
            let Some(held) = queue.pop_front() else { break };
            self.held_records -= 1;
            self.held_bytes -= held.bytes;
            if !self.pinned.decide_subject(held.route, &held.msg, held.subject, fan_out, consumer, now, None)? {
                // Its partition is held for its decision history, rewound to this record: every
                // record behind it is read again too.
                self.forget_queue(queue);
                queue.clear();
            }
        }
        Ok(())
    }

    /// `queue`'s records leave the bounds' count (they are dropped, to be read again).
    fn forget_queue(&mut self, queue: &VecDeque<Held>) {
        self.held_records -= queue.len();
        self.held_bytes -= queue.iter().map(|h| h.bytes).sum::<usize>();
    }

    fn apply_revocations(&mut self) {
        let revoked = self.revoked.take();
        self.pinned.forget(&revoked);
        for key in revoked {
            self.paused.remove(&key);
            if let Some(queue) = self.parked.remove(&key) {
                self.forget_queue(&queue);
            }
        }
    }

    /// Partitions paused for holding too much or for their decision history, which a
    /// backpressure resume must leave paused.
    pub fn is_paused(&self, key: PartitionKey) -> bool {
        self.paused.contains(&key) || self.pinned.is_held(key)
    }
}

fn size(msg: &BorrowedMessage<'_>) -> usize {
    // The detached copy's bytes plus its bookkeeping.
    msg.payload().map_or(0, <[u8]>::len) + msg.key().map_or(0, <[u8]>::len) + 64
}

/// Pauses (`on`) or resumes one partition; a refusal is logged, the partition left as it was.
pub(super) fn pause(consumer: &BaseConsumer<RebalanceContext>, topic: &str, partition: i32, on: bool) {
    let mut tpl = TopicPartitionList::new();
    if tpl.add_partition_offset(topic, partition, Offset::Invalid).is_err() {
        return;
    }
    let r = if on { consumer.pause(&tpl) } else { consumer.resume(&tpl) };
    if let Err(e) = r {
        tracing::warn!(topic, partition, error = %e, pause = on, "cannot change a partition's pause state");
    }
}
