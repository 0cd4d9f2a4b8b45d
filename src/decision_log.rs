//! The decision log on prod: the pins of [`crate::pinning`] (one topic per route, partitioned
//! like its input, one record per partition and epoch) and the whitelist snapshots they name
//! (one topic, written once per content and again before its retention could delete it).
//!
//! A pin is acknowledged by prod (acks=all) before any record it decides is produced, so no
//! output can be read whose decision is not on record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::config::{Config, PartitionKey};
use crate::kafka;
use crate::pinning::{Chain, Epoch, PIN_FORMAT, Pin, PinRecord, fingerprint_hex, parse_fingerprint};
use crate::whitelist::Snapshot;

/// How long a pin may take to be acknowledged before the relay stops (prod is away then, and
/// no output could be written either).
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Reads happen on the poll thread when a partition is taken over: well inside the consumer's
/// `max.poll.interval.ms`.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Looking past a short high watermark: a broker that reports one ahead of what it can serve
/// must not hold the takeover.
const TAIL_TIMEOUT: Duration = Duration::from_secs(2);
/// Pins read per step when scanning a partition's log backwards for the one covering an offset.
const SCAN_STEP: i64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum DecisionError {
    #[error("cannot record decisions in {topic:?}: {source}")]
    Write { topic: String, source: KafkaError },
    #[error("decision log {topic:?} not acknowledged within {WRITE_TIMEOUT:?}")]
    WriteTimeout { topic: String },
    #[error("cannot read decision log {topic:?}[{partition}]: {source}")]
    Read { topic: String, partition: i32, source: KafkaError },
    #[error("decision log {topic:?}[{partition}] not read to offset {end} within {READ_TIMEOUT:?}")]
    ReadTimeout { topic: String, partition: i32, end: i64 },
    #[error("snapshot {fingerprint} at {topic:?}@{offset}: {reason}")]
    Snapshot { topic: String, offset: i64, fingerprint: String, reason: String },
    #[error("decision log client: {0}")]
    Client(KafkaError),
}

impl DecisionError {
    /// Whether trying again later can cure it: the decision log's broker was away or slow. A
    /// snapshot that cannot be read back, or a client that cannot be made, stays so.
    pub fn curable(&self) -> bool {
        match self {
            Self::Write { source, .. } | Self::Read { source, .. } => {
                source.rdkafka_error_code().is_none_or(|c| !crate::kafka::needs_an_operator(c))
            }
            Self::WriteTimeout { .. } | Self::ReadTimeout { .. } => true,
            Self::Snapshot { .. } | Self::Client(_) => false,
        }
    }
}

#[derive(Default)]
pub struct Acks(Mutex<Vec<(usize, Result<i64, KafkaError>)>>);

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        let r = result.as_ref().map(|m| m.offset()).map_err(|(e, _)| e.clone());
        if let Ok(mut acks) = self.0.lock() {
            acks.push((index, r));
        }
    }
}

/// Writes pins and the snapshots they name; reads them back through its [`DecisionReader`].
pub struct DecisionLog {
    producer: BaseProducer<Acks>,
    pub reader: DecisionReader,
    /// Snapshots this process wrote: where in the snapshot log, and when.
    written: HashMap<u64, (i64, Instant)>,
    rewrite_after: Duration,
    pins: prometheus::IntCounter,
}

/// The reader's client: the end of a partition is how every read ends, not an error to log.
pub struct EndIsNormal;

impl ClientContext for EndIsNormal {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
            tracing::warn!(%error, reason, "decision log reader");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EndIsNormal {}

/// Reads a route partition's pins back, with the snapshots they name (cached, bounded).
pub struct DecisionReader {
    reader: BaseConsumer<EndIsNormal>,
    snapshots_topic: String,
    route_topics: Vec<String>,
    decisions_topics: Vec<String>,
    snapshots: HashMap<u64, Arc<Snapshot>>,
    /// Where each snapshot read back was found (a new owner's claim names it there again).
    named_at: HashMap<u64, i64>,
}

/// A record read back: its offset and value.
type Read = (i64, Vec<u8>);

/// How many of the snapshot log's last records are searched for a snapshot by its content.
const SNAPSHOT_SEARCH: i64 = 64;

/// Snapshots kept in memory: the live one and the few a replay or `verify` needs.
const SNAPSHOT_CACHE: usize = 64;

impl DecisionLog {
    pub fn new(config: &Config, metrics: &crate::metrics::Metrics) -> Result<Self, DecisionError> {
        let mut producer = kafka::producer_config(&config.prod, "decisions", config);
        producer.set("linger.ms", "0").set("message.timeout.ms", WRITE_TIMEOUT.as_millis().to_string());
        let producer = producer.create_with_context(Acks::default()).map_err(DecisionError::Client)?;
        Ok(Self {
            producer,
            reader: DecisionReader::new(config)?,
            written: HashMap::new(),
            rewrite_after: config.bridge.decisions_refresh(),
            pins: metrics.decision_pins.clone(),
        })
    }

    /// How old a pin or snapshot in use may grow before it is written again.
    pub fn refresh_every(&self) -> Duration {
        self.rewrite_after
    }

    /// Durably records "from offset `from` of partition `key`, `epoch` decides", under the
    /// writer's claim on it, for each pin.
    pub fn record(&mut self, epoch: &Epoch, pins: &[(PartitionKey, i64, u64)]) -> Result<(), DecisionError> {
        let snapshot_offset = self.snapshot_offset(epoch)?;
        let records: Vec<_> =
            pins.iter().map(|&(key, from, claim)| self.pin_record(key, from, epoch, snapshot_offset, claim)).collect();
        self.write(&records)?;
        self.pins.inc_by(pins.len() as u64);
        Ok(())
    }

    /// Writes `chain` (what previous owners recorded from the offset a new owner starts at)
    /// again, in order, under the new owner's `claim`: a previous owner that wakes up later
    /// and writes a pin under its own, lower claim is then ignored by every reader, even before
    /// the new owner's first pin of its own. Nothing to write for an empty chain: the new owner
    /// pins before its first decision.
    pub fn claim(&mut self, key: PartitionKey, chain: &Chain, claim: u64) -> Result<(), DecisionError> {
        let mut offsets = Vec::with_capacity(chain.len());
        for pin in chain.pins() {
            // Where this process wrote it, or where the reader found it: nothing to write but
            // the pins.
            let fingerprint = pin.epoch.fingerprint;
            let known = self.written.get(&fingerprint).map(|(o, _)| *o);
            let offset = match known.or_else(|| self.reader.named_at.get(&fingerprint).copied()) {
                Some(offset) => offset,
                None => self.snapshot_offset(&pin.epoch)?,
            };
            offsets.push(offset);
        }
        let records: Vec<_> = (chain.pins().iter().zip(offsets))
            .map(|(pin, snapshot_offset)| self.pin_record(key, pin.from, &pin.epoch, snapshot_offset, claim))
            .collect();
        self.write(&records)?;
        self.pins.inc_by(records.len() as u64);
        Ok(())
    }

    fn pin_record(
        &self,
        (route, partition): PartitionKey,
        from: i64,
        epoch: &Epoch,
        snapshot_offset: i64,
        claim: u64,
    ) -> (&str, i32, Vec<u8>) {
        let record = PinRecord {
            v: PIN_FORMAT,
            topic: self.reader.route_topics[route].clone(),
            partition,
            from_offset: from,
            snapshot: fingerprint_hex(epoch.fingerprint),
            snapshot_offset,
            version: epoch.snapshot.version(),
            clock_ms: epoch.clock_ms,
            claim,
        };
        let payload = serde_json::to_vec(&record).unwrap_or_default();
        (self.reader.decisions_topics[route].as_str(), partition, payload)
    }

    /// Where `epoch`'s snapshot is in the snapshot log, writing it first if this process has
    /// not, or not for half the log's retention.
    fn snapshot_offset(&mut self, epoch: &Epoch) -> Result<i64, DecisionError> {
        if let Some((offset, at)) = self.written.get(&epoch.fingerprint)
            && at.elapsed() < self.rewrite_after
        {
            return Ok(*offset);
        }
        let json = epoch.snapshot.to_json().into_bytes();
        let offsets = self.write(&[(self.reader.snapshots_topic.as_str(), 0, json)])?;
        let offset = offsets.first().copied().unwrap_or(-1);
        if self.written.len() >= SNAPSHOT_CACHE {
            let oldest = self.written.iter().min_by_key(|(_, (_, at))| *at).map(|(f, _)| *f);
            oldest.map(|f| self.written.remove(&f));
        }
        self.written.insert(epoch.fingerprint, (offset, Instant::now()));
        self.reader.cache(epoch.fingerprint, epoch.snapshot.clone());
        Ok(offset)
    }

    /// Sends every record and waits until prod acknowledged all of them; their offsets, in order.
    fn write(&self, records: &[(&str, i32, Vec<u8>)]) -> Result<Vec<i64>, DecisionError> {
        let fail = |topic: &str, source| DecisionError::Write { topic: topic.to_owned(), source };
        let Some((first_topic, _, _)) = records.first() else {
            return Ok(Vec::new());
        };
        if let Ok(mut acks) = self.producer.context().0.lock() {
            acks.clear();
        }
        for (i, (topic, partition, payload)) in records.iter().enumerate() {
            let record = BaseRecord::with_opaque_to(topic, i).partition(*partition).payload(payload);
            self.producer.send::<(), _>(record).map_err(|(e, _)| fail(topic, e))?;
        }
        let deadline = Instant::now() + WRITE_TIMEOUT;
        loop {
            self.producer.poll(Duration::from_millis(5));
            let acks = match self.producer.context().0.lock() {
                Ok(acks) if acks.len() >= records.len() => acks.clone(),
                _ if Instant::now() >= deadline => {
                    return Err(DecisionError::WriteTimeout { topic: (*first_topic).to_owned() });
                }
                _ => continue,
            };
            let mut offsets = vec![-1; records.len()];
            for (i, r) in acks {
                offsets[i] = r.map_err(|e| fail(records[i].0, e))?;
            }
            return Ok(offsets);
        }
    }
}

impl DecisionReader {
    pub fn new(config: &Config) -> Result<Self, DecisionError> {
        let mut reader: ClientConfig = kafka::admin_config(&config.prod, "decisions");
        reader
            .set("group.id", format!("{}.decision-reader", config.bridge.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            // A takeover waits for these reads: the end of a partition must show at once, not
            // after the broker's long-poll wait.
            .set("fetch.wait.max.ms", "10")
            .set("isolation.level", "read_committed");
        let reader = reader.create_with_context(EndIsNormal).map_err(DecisionError::Client)?;
        Ok(Self {
            reader,
            snapshots_topic: config.bridge.snapshots_topic.clone(),
            route_topics: config.routes.iter().map(|r| r.topic.clone()).collect(),
            decisions_topics: config.routes.iter().map(|r| r.decisions_topic.clone()).collect(),
            snapshots: HashMap::new(),
            named_at: HashMap::new(),
        })
    }

    fn cache(&mut self, fingerprint: u64, snapshot: Arc<Snapshot>) {
        if self.snapshots.len() >= SNAPSHOT_CACHE && !self.snapshots.contains_key(&fingerprint) {
            // Any one: a miss costs one read of the snapshot log.
            let some = self.snapshots.keys().next().copied();
            some.map(|f| self.snapshots.remove(&f));
        }
        self.snapshots.insert(fingerprint, snapshot);
    }

    /// The pins previous owners of `key` recorded, from the one covering `from` on.
    pub fn load(&mut self, key: PartitionKey, from: i64) -> Result<Chain, DecisionError> {
        let topic = self.decisions_topics[key.0].clone();
        let route_topic = &self.route_topics[key.0];
        let read_err = |source| DecisionError::Read { topic: topic.clone(), partition: key.1, source };
        let (low, high) = self.reader.fetch_watermarks(&topic, key.1, READ_TIMEOUT).map_err(read_err)?;
        // Backwards in growing steps until a pin at or before `from` is among those read.
        let mut records: Vec<PinRecord> = Vec::new();
        let (mut end, mut step) = (high, SCAN_STEP);
        while end > low {
            let start = (end - step).max(low);
            let mut chunk: Vec<PinRecord> = self
                .read(&topic, key.1, start, end)?
                .into_iter()
                .filter_map(|(_, bytes)| serde_json::from_slice::<PinRecord>(&bytes).ok())
                .filter(|r| r.v == PIN_FORMAT && r.topic == *route_topic && r.partition == key.1)
                .collect();
            let reached = chunk.iter().any(|r| r.from_offset <= from);
            chunk.append(&mut records);
            records = chunk;
            if reached {
                break;
            }
            end = start;
            step = step.saturating_mul(4);
        }
        let mut chain = Chain::default();
        for r in records {
            if chain.ignores(r.claim) {
                // A zombie's: its snapshot need not even be readable.
                continue;
            }
            let fingerprint = parse_fingerprint(&r.snapshot).unwrap_or_default();
            let snapshot = self.snapshot(fingerprint, &r)?;
            chain.apply(Pin {
                from: r.from_offset,
                epoch: Arc::new(Epoch::with_fingerprint(fingerprint, snapshot, r.clock_ms)),
                claim: r.claim,
            });
        }
        chain.trim_before(from);
        Ok(chain)
    }

    /// The highest claim among the last pins of `key`, whether or not their snapshots can be
    /// read: what an owner that cannot read the history must claim above.
    pub fn highest_claim(&self, key: PartitionKey) -> Result<u64, DecisionError> {
        let topic = &self.decisions_topics[key.0];
        let route_topic = &self.route_topics[key.0];
        let read_err = |source| DecisionError::Read { topic: topic.clone(), partition: key.1, source };
        let (low, high) = self.reader.fetch_watermarks(topic, key.1, READ_TIMEOUT).map_err(read_err)?;
        Ok(self
            .read(topic, key.1, (high - SCAN_STEP).max(low), high)?
            .iter()
            .filter_map(|(_, bytes)| serde_json::from_slice::<PinRecord>(bytes).ok())
            .filter(|r| r.topic == *route_topic && r.partition == key.1)
            .map(|r| r.claim)
            .max()
            .unwrap_or(0))
    }

    fn snapshot(&mut self, fingerprint: u64, pin: &PinRecord) -> Result<Arc<Snapshot>, DecisionError> {
        if let Some(s) = self.snapshots.get(&fingerprint) {
            return Ok(s.clone());
        }
        let topic = self.snapshots_topic.clone();
        let fail = |reason: String| DecisionError::Snapshot {
            topic: topic.clone(),
            offset: pin.snapshot_offset,
            fingerprint: pin.snapshot.clone(),
            reason,
        };
        let found = self.read(&topic, 0, pin.snapshot_offset, pin.snapshot_offset + 1)?;
        let (offset, snapshot) = match found.into_iter().find(|(o, _)| *o == pin.snapshot_offset) {
            Some((offset, bytes)) => {
                let snapshot = Snapshot::from_json(&bytes).map_err(|e| fail(e.to_string()))?;
                if snapshot.fingerprint() != fingerprint {
                    return Err(fail("its content does not match the fingerprint".into()));
                }
                (offset, snapshot)
            }
            // Deleted by retention: the same content written again later (every instance
            // deciding with it writes it again before retention could delete it) will do.
            None => self.find_by_fingerprint(fingerprint)?.ok_or_else(|| {
                fail("not in the snapshot log, nor written again since (deleted by retention?)".into())
            })?,
        };
        if self.named_at.len() >= SNAPSHOT_CACHE && !self.named_at.contains_key(&fingerprint) {
            self.named_at.clear();
        }
        self.named_at.insert(fingerprint, offset);
        let snapshot = Arc::new(snapshot);
        // Only cached, not counted as written: its age in the log is unknown, so the next pin
        // naming it writes it again.
        self.cache(fingerprint, snapshot.clone());
        Ok(snapshot)
    }

    /// The newest snapshot in the log's last [`SNAPSHOT_SEARCH`] records whose content has
    /// `fingerprint`.
    fn find_by_fingerprint(&self, fingerprint: u64) -> Result<Option<(i64, Snapshot)>, DecisionError> {
        let topic = self.snapshots_topic.as_str();
        let read_err = |source| DecisionError::Read { topic: topic.to_owned(), partition: 0, source };
        let (low, high) = self.reader.fetch_watermarks(topic, 0, READ_TIMEOUT).map_err(read_err)?;
        if high <= low {
            return Ok(None);
        }
        let records = self.read(topic, 0, (high - SNAPSHOT_SEARCH).max(low), high)?;
        Ok(records
            .iter()
            .rev()
            .filter_map(|(offset, bytes)| Snapshot::from_json(bytes).ok().map(|s| (*offset, s)))
            .find(|(_, s)| s.fingerprint() == fingerprint))
    }

    /// The last whitelist any instance decided with, from the snapshot log: what a restart
    /// starts from while the Config Mapper does not answer. `None` if the log is empty.
    pub fn latest_snapshot(&self) -> Result<Option<Snapshot>, DecisionError> {
        let topic = self.snapshots_topic.as_str();
        let read_err = |source| DecisionError::Read { topic: topic.to_owned(), partition: 0, source };
        let (low, high) = self.reader.fetch_watermarks(topic, 0, READ_TIMEOUT).map_err(read_err)?;
        if high <= low {
            return Ok(None);
        }
        // The last few, newest first: one that does not parse (a newer format) is passed over.
        let records = self.read(topic, 0, (high - 8).max(low), high)?;
        Ok(records.iter().rev().find_map(|(_, bytes)| Snapshot::from_json(bytes).ok()))
    }

    /// The end of an input partition: one past its last record now. The high watermark the
    /// broker reports is only where the search starts: the batch holding the record before it
    /// is read to the end of the log, since a broker may report it short (tansu reports one
    /// past the last batch's first offset), and an end reported short would let a new owner
    /// decide again what an old one already decided.
    pub fn log_end(&self, topic: &str, partition: i32) -> Result<i64, DecisionError> {
        let read_err = |source| DecisionError::Read { topic: topic.to_owned(), partition, source };
        let (low, high) = self.reader.fetch_watermarks(topic, partition, READ_TIMEOUT).map_err(read_err)?;
        if high <= low {
            return Ok(high);
        }
        let (tail, complete) = self.read_within(topic, partition, high - 1, i64::MAX, TAIL_TIMEOUT)?;
        if !complete {
            tracing::warn!(topic, partition, high, "end of partition not reached in time; horizon from what was read");
        }
        Ok(tail.last().map_or(high, |(o, _)| (o + 1).max(high)))
    }

    /// Records of `topic[partition]` with offsets in `[start, end)`.
    fn read(&self, topic: &str, partition: i32, start: i64, end: i64) -> Result<Vec<Read>, DecisionError> {
        match self.read_within(topic, partition, start, end, READ_TIMEOUT)? {
            (records, true) => Ok(records),
            (_, false) => Err(DecisionError::ReadTimeout { topic: topic.to_owned(), partition, end }),
        }
    }

    /// [`Self::read`] for at most `timeout`: what was read, and whether it got to the end.
    fn read_within(
        &self,
        topic: &str,
        partition: i32,
        start: i64,
        end: i64,
        timeout: Duration,
    ) -> Result<(Vec<Read>, bool), DecisionError> {
        let read_err = |source| DecisionError::Read { topic: topic.to_owned(), partition, source };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(start)).map_err(read_err)?;
        self.reader.assign(&tpl).map_err(read_err)?;
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while Instant::now() < deadline {
            match self.reader.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok((out, true)),
                Some(Err(e)) => return Err(read_err(e)),
                Some(Ok(m)) => {
                    if m.offset() < end {
                        // An open-ended read (a log end) wants offsets only.
                        let payload = if end == i64::MAX { &[][..] } else { m.payload().unwrap_or_default() };
                        out.push((m.offset(), payload.to_vec()));
                    }
                    if m.offset() >= end - 1 {
                        return Ok((out, true));
                    }
                }
            }
        }
        Ok((out, false))
    }
}
