//! Lookup mode in the relay: a record whose user is not cached waits, with every later record
//! of its partition, while a worker asks the Config Mapper. Its partition is paused meanwhile;
//! every other partition goes on. Order holds because a parked partition's records are only
//! ever taken from the front of its queue.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use super::consumer::RebalanceContext;
use super::offsets::PartitionKey;
use super::pipeline::{Pipeline, ProduceError};
use crate::whitelist::OneUser;
use crate::whitelist::lookup::{LookupCache, LookupPool};

/// The whitelist for a record that needs no lookup: nobody is listed.
struct Nobody;

impl crate::whitelist::Whitelist for Nobody {
    fn services_for(&self, _: &str, _: i64) -> Option<&[Box<str>]> {
        None
    }
}

pub struct Parking {
    cache: Arc<LookupCache>,
    pool: LookupPool,
    done: Receiver<Box<str>>,
    /// Users handed to a worker and not yet answered.
    asked: HashSet<Box<str>>,
    parked: HashMap<PartitionKey, VecDeque<OwnedMessage>>,
    /// Partitions the rebalance callback took away; their parked records are dropped (never
    /// begun, so never committed: the next owner reads them again).
    revoked: Arc<Mutex<Vec<PartitionKey>>>,
}

enum Ready {
    Decided,
    Waiting,
}

impl Parking {
    pub fn new(
        cache: Arc<LookupCache>,
        workers: usize,
        revoked: Arc<Mutex<Vec<PartitionKey>>>,
    ) -> std::io::Result<Self> {
        let (tx, done) = std::sync::mpsc::channel();
        let pool = LookupPool::start(cache.clone(), workers, tx)?;
        Ok(Self { cache, pool, done, asked: HashSet::new(), parked: HashMap::new(), revoked })
    }

    pub fn has_parked(&self) -> bool {
        !self.parked.is_empty()
    }

    /// Decides `msg` now if its whitelist answer is at hand, else parks it (and its partition).
    pub fn offer(
        &mut self,
        msg: &BorrowedMessage<'_>,
        pipeline: &mut Pipeline,
        consumer: &BaseConsumer<RebalanceContext>,
        now: i64,
    ) -> Result<(), Box<ProduceError>> {
        // A revoke and a new assignment of the same partition can happen inside one poll: the
        // old queue must be gone before a record of the new assignment could join it.
        self.apply_revocations();
        let Some(route) = pipeline.route_index(msg.topic()) else { return pipeline.process(msg, &Nobody, now) };
        let key = (route, msg.partition());
        if let Some(queue) = self.parked.get_mut(&key) {
            queue.push_back(msg.detach());
            return Ok(());
        }
        if let Ready::Waiting = self.try_decide(msg, pipeline, now)? {
            self.parked.entry(key).or_default().push_back(msg.detach());
            pause(consumer, msg.topic(), msg.partition(), true);
        }
        Ok(())
    }

    fn try_decide<M: Message>(
        &mut self,
        msg: &M,
        pipeline: &mut Pipeline,
        now: i64,
    ) -> Result<Ready, Box<ProduceError>> {
        let Some(user) = pipeline.user_to_look_up(msg) else {
            pipeline.process(msg, &Nobody, now)?;
            return Ok(Ready::Decided);
        };
        match self.cache.cached(&user) {
            Some(answer) => {
                pipeline.process(msg, &OneUser { user: &user, entry: answer.entry() }, now)?;
                Ok(Ready::Decided)
            }
            None => {
                if !self.asked.contains(&user) && self.pool.submit(&user) {
                    self.asked.insert(user);
                }
                Ok(Ready::Waiting)
            }
        }
    }

    /// Takes in finished lookups and decides every parked record that can now go, in order.
    pub fn drain(
        &mut self,
        pipeline: &mut Pipeline,
        consumer: &BaseConsumer<RebalanceContext>,
        now: i64,
    ) -> Result<(), Box<ProduceError>> {
        for user in self.done.try_iter() {
            self.asked.remove(&user);
        }
        self.apply_revocations();
        let keys: Vec<PartitionKey> = self.parked.keys().copied().collect();
        for key in keys {
            let Some(mut queue) = self.parked.remove(&key) else { continue };
            while let Some(front) = queue.front() {
                match self.try_decide(front, pipeline, now)? {
                    Ready::Decided => {
                        queue.pop_front();
                    }
                    Ready::Waiting => break,
                }
            }
            match queue.front() {
                Some(_) => {
                    self.parked.insert(key, queue);
                }
                None => {
                    if let Some(topic) = pipeline.route_topic(key.0) {
                        pause(consumer, topic, key.1, false);
                    }
                }
            }
        }
        Ok(())
    }

    fn apply_revocations(&mut self) {
        let revoked: Vec<PartitionKey> = match self.revoked.lock() {
            Ok(mut r) if !r.is_empty() => std::mem::take(&mut *r),
            _ => return,
        };
        for key in revoked {
            self.parked.remove(&key);
        }
    }

    /// Parked partitions, which a backpressure resume must leave paused.
    pub fn parked_partitions(&self) -> impl Iterator<Item = PartitionKey> + '_ {
        self.parked.keys().copied()
    }
}

fn pause(consumer: &BaseConsumer<RebalanceContext>, topic: &str, partition: i32, on: bool) {
    let mut tpl = TopicPartitionList::new();
    if tpl.add_partition_offset(topic, partition, Offset::Invalid).is_err() {
        return;
    }
    let r = if on { consumer.pause(&tpl) } else { consumer.resume(&tpl) };
    if let Err(e) = r {
        tracing::warn!(topic, partition, error = %e, pause = on, "cannot change a partition's pause state");
    }
}
