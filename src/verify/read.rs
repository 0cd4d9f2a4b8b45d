//! Reading whole topics (or a time window of them) without joining any consumer group.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers as _, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::check::Record;
use crate::config::ClusterConfig;
use crate::kafka::admin_config;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// Once every partition reached its high watermark, this much quiet ends a read (a broker that
/// reports a high watermark short by a batch, tansu, delivers the rest meanwhile)...
const SETTLE: Duration = Duration::from_millis(200);
/// ...or this long past the marks, quiet or not: Apache Kafka answers a fetch as soon as a
/// record arrives, so a topic still being written is never quiet, and a read waiting for quiet
/// there ran to its timeout (300 s).
const PAST_THE_MARKS: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{cluster} cluster, topic {topic:?}: {what}: {source}")]
    Kafka { cluster: &'static str, topic: String, what: &'static str, source: Box<KafkaError> },
    #[error("{cluster} cluster: input topic {topic:?} does not exist (is this the right config?)")]
    Missing { cluster: &'static str, topic: String },
    #[error(
        "{cluster} cluster, topic {topic:?}: partition {partition} not read to its end ({end}) within the \
         read limits; the report would be incomplete"
    )]
    Incomplete { cluster: &'static str, topic: String, partition: i32, end: i64 },
}

/// A copy of a consumed record.
pub fn record_of<M: Message>(m: &M) -> Record {
    Record {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
        headers: m
            .headers()
            .map(|h| h.iter().map(|x| (x.key.to_owned(), x.value.map(<[u8]>::to_vec))).collect())
            .unwrap_or_default(),
        timestamp: m.timestamp().to_millis(),
    }
}

/// One cluster, read through one client.
pub struct ClusterReader {
    name: &'static str,
    consumer: BaseConsumer,
    /// Without a high watermark to go by, this much quiet ends a read.
    pub idle: Duration,
    pub timeout: Duration,
}

impl ClusterReader {
    pub fn new(
        cluster: &ClusterConfig,
        name: &'static str,
        idle: Duration,
        timeout: Duration,
    ) -> Result<Self, ReadError> {
        let mut c = admin_config(cluster, name);
        c.set("group.id", "tenancy-bridge-verify")
            .set("enable.auto.commit", "false")
            // The end of a partition as the fetcher sees it: past aborted records and transaction
            // markers, which a read_committed reader is never handed and so never sees pass.
            .set("enable.partition.eof", "true")
            // Only what committed transactions (and non-transactional writes) made visible.
            .set("isolation.level", "read_committed");
        let consumer = c.create().map_err(|source| ReadError::Kafka {
            cluster: name,
            topic: String::new(),
            what: "client",
            source: Box::new(source),
        })?;
        Ok(Self { name, consumer, idle, timeout })
    }

    fn err(&self, topic: &str, what: &'static str) -> impl Fn(KafkaError) -> ReadError + '_ {
        let topic = topic.to_owned();
        move |source| ReadError::Kafka { cluster: self.name, topic: topic.clone(), what, source: Box::new(source) }
    }

    pub fn partitions(&self, topic: &str) -> Result<i32, ReadError> {
        let md = self.consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT).map_err(self.err(topic, "metadata"))?;
        Ok(md.topics().first().map_or(0, |t| t.partitions().len()) as i32)
    }

    /// The next offset to be written, per partition.
    fn ends(&self, topic: &str) -> Result<BTreeMap<i32, i64>, ReadError> {
        Ok(self.watermarks(topic)?.into_iter().map(|(p, (_, high))| (p, high)).collect())
    }

    /// Log start and high watermark, per partition.
    pub fn watermarks(&self, topic: &str) -> Result<BTreeMap<i32, (i64, i64)>, ReadError> {
        let mut marks = BTreeMap::new();
        for p in 0..self.partitions(topic)? {
            let m =
                self.consumer.fetch_watermarks(topic, p, METADATA_TIMEOUT).map_err(self.err(topic, "watermarks"))?;
            marks.insert(p, m);
        }
        Ok(marks)
    }

    /// Next offset committed by `group`, per partition (no group join: a plain offset fetch).
    pub fn committed(
        &self,
        cluster: &ClusterConfig,
        group: &str,
        topic: &str,
    ) -> Result<BTreeMap<i32, i64>, ReadError> {
        let mut c = admin_config(cluster, self.name);
        c.set("group.id", group).set("enable.auto.commit", "false");
        let client: BaseConsumer = c.create().map_err(self.err(topic, "client"))?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions(topic)? {
            tpl.add_partition(topic, p);
        }
        let got = client.committed_offsets(tpl, METADATA_TIMEOUT).map_err(self.err(topic, "committed offsets"))?;
        Ok(got
            .elements()
            .iter()
            .filter_map(|e| Some((e.partition(), e.offset().to_raw().filter(|o| *o >= 0)?)))
            .collect())
    }

    /// Every record of `topic` from `since_ms` (record timestamp; `None`: the beginning). A
    /// missing topic reads as empty unless `required`.
    pub fn read(&self, topic: &str, since_ms: Option<i64>, required: bool) -> Result<Vec<Record>, ReadError> {
        let ends = self.ends(topic)?;
        if required && ends.is_empty() {
            return Err(ReadError::Missing { cluster: self.name, topic: topic.to_owned() });
        }
        let mut tpl = TopicPartitionList::new();
        for &p in ends.keys() {
            let start = since_ms.map_or(Offset::Beginning, Offset::Offset);
            tpl.add_partition_offset(topic, p, start).map_err(self.err(topic, "assignment"))?;
        }
        if since_ms.is_some() {
            tpl =
                self.consumer.offsets_for_times(tpl, METADATA_TIMEOUT).map_err(self.err(topic, "offsets for times"))?;
        }
        self.consumer.assign(&tpl).map_err(self.err(topic, "assignment"))?;
        let mut records = Vec::new();
        let mut reached: BTreeMap<i32, bool> = BTreeMap::new();
        for e in tpl.elements() {
            let high = ends.get(&e.partition()).copied().unwrap_or(0);
            let done = match e.offset() {
                Offset::End => true,
                Offset::Offset(o) => o >= high,
                _ => high <= 0,
            };
            reached.insert(e.partition(), done);
        }
        let (started, mut quiet_since) = (Instant::now(), Instant::now());
        let mut all_reached_at: Option<Instant> = None;
        loop {
            let all_reached = reached.values().all(|r| *r);
            if all_reached {
                all_reached_at.get_or_insert_with(Instant::now);
            }
            let past_the_marks = all_reached_at.is_some_and(|t| t.elapsed() >= PAST_THE_MARKS);
            let quiet = quiet_since.elapsed();
            if (all_reached && (quiet >= SETTLE || past_the_marks))
                || quiet >= self.idle
                || started.elapsed() >= self.timeout
            {
                break;
            }
            match self.consumer.poll(Duration::from_millis(50)) {
                Some(Ok(m)) => {
                    quiet_since = Instant::now();
                    if ends.get(&m.partition()).is_some_and(|h| m.offset() + 1 >= *h) {
                        reached.insert(m.partition(), true);
                    }
                    records.push(record_of(&m));
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    reached.insert(p, true);
                }
                Some(Err(e)) => return Err(self.err(topic, "fetch")(e)),
                // A partition written in transactions ends with a marker no record shows: the
                // position passes it, the last record's offset does not.
                None => {
                    if let Ok(positions) = self.consumer.position() {
                        for e in positions.elements() {
                            if let (Offset::Offset(o), Some(h)) = (e.offset(), ends.get(&e.partition())) {
                                if o >= *h {
                                    reached.insert(e.partition(), true);
                                }
                            }
                        }
                    }
                }
            }
        }
        if let Some((&partition, _)) = reached.iter().find(|(_, done)| !**done) {
            let end = ends.get(&partition).copied().unwrap_or(0);
            return Err(ReadError::Incomplete { cluster: self.name, topic: topic.to_owned(), partition, end });
        }
        self.consumer.unassign().map_err(self.err(topic, "assignment"))?;
        records.sort_by_key(|r| (r.partition, r.offset));
        Ok(records)
    }
}
