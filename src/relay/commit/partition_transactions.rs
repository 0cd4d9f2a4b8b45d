//! Exactly-once for the directions that read one cluster and write the other: the Rush lane
//! (prod outbox → Rush) and the return path (Rush → prod).
//!
//! Their progress must live on the cluster they write, in the same transaction as the writes:
//! it is stored as the committed offsets of a *progress group* on that cluster
//! (`send_offsets_to_transaction` with the metadata of a consumer that never joins). KIP-447's
//! generation check cannot fence there, because the group that assigns the partitions is on
//! the other cluster. Fencing is per partition instead: each source partition has its own
//! transactional id, `{progress_group}.{topic}.{partition}`, which its next owner registers
//! before writing, so the previous owner's producer is fenced by its epoch and whatever it had
//! open is aborted. The cost is one producer per partition owned, which suits these two
//! low-volume directions (Rush copies of whitelisted users; what Rush services produce).
//!
//! Every call blocks; all run on the direction's poll thread (loop and rebalance callbacks).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::transaction::{TransactionError, retriable};
use crate::relay::offsets::{PartitionKey, Tracker};
use crate::relay::producer::{self, DeliveryContext, Flush, OutputProducer};

/// How long taking a wave of [`CLAIM_PARALLELISM`] partitions over may take (inside a
/// rebalance callback, well within any max.poll.interval.ms); longer, and the direction starts
/// again.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(5);

/// How many partitions a claim registers (and a commit or a release handles) at once.
const CLAIM_PARALLELISM: usize = 16;

/// What a claim of `partitions` new partitions may take: [`CLAIM_TIMEOUT`] per wave, at most
/// [`MAX_CLAIM`].
fn claim_timeout(partitions: usize) -> Duration {
    let waves = u32::try_from(partitions.div_ceil(CLAIM_PARALLELISM).max(1)).unwrap_or(u32::MAX);
    CLAIM_TIMEOUT.saturating_mul(waves).min(MAX_CLAIM)
}

/// The longest a claim may block the direction's poll loop (librdkafka's default
/// max.poll.interval.ms is 300 s).
const MAX_CLAIM: Duration = Duration::from_secs(30);

/// One source partition's producer and its transaction.
struct Slot {
    producer: Arc<OutputProducer>,
    open: bool,
    began: Instant,
}

pub struct PartitionTransactions {
    /// Source topics, indexed like the partition keys of the direction.
    topics: Vec<String>,
    /// Producer settings for the target cluster, without a transactional id.
    settings: ClientConfig,
    context: DeliveryContext,
    progress_group: String,
    /// A consumer of the progress group on the target cluster that never joins it: its
    /// metadata goes with the offsets, and it reads them back for a new owner.
    progress: BaseConsumer,
    metadata: ConsumerGroupMetadata,
    timeout: Duration,
    stale_after: Duration,
    slots: Mutex<HashMap<PartitionKey, Slot>>,
    /// A new owner could not read where its partitions stand: it must not write.
    positions_unknown: AtomicBool,
    /// The id of the source cluster the offsets are read from, stored with each progress
    /// commit: progress made on another incarnation of the source (a rebuilt Rush) says
    /// nothing about the new one's offsets, which start again at 0.
    source_cluster: Mutex<Option<String>>,
    committed: prometheus::IntCounter,
    new_source: prometheus::IntCounter,
    aborted: prometheus::IntCounter,
    fenced: prometheus::IntCounter,
}

/// Where the progress of a cross-cluster direction lives and what its producers are.
pub struct Target<'a> {
    pub topics: Vec<String>,
    pub settings: ClientConfig,
    /// Where every partition producer's delivery reports go.
    pub context: DeliveryContext,
    /// The target cluster's client settings, for the progress group's reader.
    pub progress_client: ClientConfig,
    pub progress_group: String,
    pub timeout: Duration,
    pub stale_after: Duration,
    pub direction: &'a str,
}

impl PartitionTransactions {
    pub fn new(target: Target<'_>, metrics: &crate::metrics::Metrics) -> Result<Self, KafkaError> {
        let mut reader = target.progress_client;
        reader.set("group.id", &target.progress_group);
        reader.set("enable.auto.commit", "false");
        let progress: BaseConsumer = reader.create()?;
        let metadata = progress
            .group_metadata()
            .ok_or_else(|| KafkaError::ClientCreation("no group metadata for the progress group".into()))?;
        let by = |outcome: &str| metrics.lane_transactions.with_label_values(&[target.direction, outcome]);
        Ok(Self {
            topics: target.topics,
            settings: target.settings,
            context: target.context,
            progress_group: target.progress_group,
            progress,
            metadata,
            timeout: target.timeout,
            stale_after: target.stale_after.min(target.timeout),
            slots: Mutex::new(HashMap::new()),
            positions_unknown: AtomicBool::new(false),
            source_cluster: Mutex::new(None),
            committed: by("committed"),
            new_source: metrics.progress_new_source.with_label_values(&[target.direction]),
            aborted: by("aborted"),
            fenced: by("fenced"),
        })
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<PartitionKey, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn topic(&self, key: PartitionKey) -> &str {
        self.topics.get(key.0).map_or("", String::as_str)
    }

    fn transactional_id(&self, key: PartitionKey) -> String {
        format!("{}.{}.{}", self.progress_group, self.topic(key), key.1)
    }

    /// The producer for `key`, in an open transaction ([`Self::claim`] registered it).
    pub fn producer(&self, key: PartitionKey) -> Result<Arc<OutputProducer>, TransactionError> {
        if self.positions_unknown.load(Relaxed) {
            return Err(TransactionError::Fatal {
                step: "assign",
                reason: format!("where the progress group {:?} stands could not be read", self.progress_group),
            });
        }
        let mut slots = self.slots();
        let slot = match slots.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.register(key, self.timeout)?),
        };
        if !slot.open {
            slot.producer.begin_transaction().map_err(|e| self.failed(&self.transactional_id(key), "begin", &e))?;
            slot.open = true;
            slot.began = Instant::now();
        }
        Ok(slot.producer.clone())
    }

    /// A producer with `key`'s transactional id, registered: the previous owner is fenced and
    /// what it had open aborted.
    fn register(&self, key: PartitionKey, within: Duration) -> Result<Slot, TransactionError> {
        let id = self.transactional_id(key);
        let mut settings = self.settings.clone();
        settings.set("transactional.id", &id);
        let producer: OutputProducer = settings
            .create_with_context(self.context.clone())
            .map_err(|e| TransactionError::Fatal { step: "create", reason: e.to_string() })?;
        retrying(within, || producer.init_transactions(within)).map_err(|e| self.failed(&id, "init", &e))?;
        tracing::debug!(%id, "partition transactions registered");
        Ok(Slot { producer: Arc::new(producer), open: false, began: Instant::now() })
    }

    /// Takes `keys` over: registers their transactional ids first (fencing the previous
    /// owners, so nothing they still had open can commit), then reads where the progress group
    /// on the cluster written says each stands. Partitions without progress there (a new
    /// group, or a target cluster rebuilt empty) are left out, to start where the source group
    /// says; progress made on another incarnation of the source cluster (`source_cluster`, its
    /// id now) starts from the beginning. A failure leaves the direction unable to write until
    /// it starts again.
    pub fn claim(&self, keys: &[PartitionKey], source_cluster: Option<String>) -> HashMap<PartitionKey, Offset> {
        if source_cluster.is_some() {
            *self.source_cluster.lock().unwrap_or_else(|p| p.into_inner()) = source_cluster;
        }
        let new: Vec<PartitionKey> = {
            let slots = self.slots();
            keys.iter().copied().filter(|k| !slots.contains_key(k)).collect()
        };
        let deadline = Instant::now() + claim_timeout(new.len());
        if let Err(e) = self.register_all(&new, deadline) {
            tracing::error!(group = %self.progress_group, error = %e, "cannot take the new partitions over");
            self.positions_unknown.store(true, Relaxed);
            return HashMap::new();
        }
        let mut tpl = TopicPartitionList::new();
        for &key in keys {
            tpl.add_partition(self.topic(key), key.1);
        }
        let within = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(500));
        match self.progress.committed_offsets(tpl, within) {
            Ok(c) => {
                self.positions_unknown.store(false, Relaxed);
                let source = self.source_cluster();
                keys.iter()
                    .filter_map(|&key| {
                        let stored = c.find_partition(self.topic(key), key.1)?;
                        let Offset::Offset(o) = stored.offset() else { return None };
                        Some((key, self.resume_at(key, o, stored.metadata(), source.as_deref())))
                    })
                    .collect()
            }
            Err(e) => {
                tracing::error!(group = %self.progress_group, error = %e, "cannot read where the new partitions stand");
                self.positions_unknown.store(true, Relaxed);
                HashMap::new()
            }
        }
    }

    /// Registers `keys`, [`CLAIM_PARALLELISM`] at a time: each registration is a producer's
    /// connection and a few round trips to the transaction coordinator, too slow one after
    /// another for a hundred partitions on a distant or TLS cluster.
    fn register_all(&self, keys: &[PartitionKey], deadline: Instant) -> Result<(), TransactionError> {
        let registered = in_parallel(keys.to_vec(), |key| {
            let within = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            (key, self.register(key, within))
        });
        let mut first_error = None;
        let mut slots = self.slots();
        for (key, slot) in registered {
            match slot {
                Ok(slot) => {
                    slots.insert(key, slot);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn source_cluster(&self) -> Option<String> {
        self.source_cluster.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Where `key` resumes given its stored progress `offset`, made on the source cluster
    /// `made_on` (empty: unknown, stored before the id was recorded).
    fn resume_at(&self, key: PartitionKey, offset: i64, made_on: &str, source: Option<&str>) -> Offset {
        match source {
            Some(now) if !made_on.is_empty() && made_on != now => {
                self.new_source.inc();
                tracing::warn!(
                    group = %self.progress_group,
                    topic = self.topic(key),
                    partition = key.1,
                    offset,
                    made_on,
                    now,
                    "progress was made on another incarnation of the source cluster (rebuilt): \
                     reading the partition from its beginning"
                );
                Offset::Beginning
            }
            _ => Offset::Offset(offset),
        }
    }

    /// Commits the open transactions of `keys` (all when `None`) with the offsets `tracker`
    /// has done for them; with `failed`, aborts them instead. Returns the committed offsets.
    /// An error means the direction must start again from the progress group.
    pub fn commit(
        &self,
        keys: Option<&[PartitionKey]>,
        tracker: &Tracker,
        failed: bool,
    ) -> Result<Vec<(PartitionKey, i64)>, TransactionError> {
        let mut slots = self.slots();
        let open: Vec<(PartitionKey, &mut Slot)> = slots
            .iter_mut()
            .filter(|(k, s)| s.open && keys.is_none_or(|ks| ks.contains(k)))
            .map(|(k, s)| (*k, s))
            .collect();
        // A commit is a few round trips to the coordinator; a hundred partitions one after
        // another would hold the poll loop past max.poll.interval.ms on a distant cluster.
        let outcomes = in_parallel(open, |(key, slot)| self.commit_one(key, slot, tracker, failed).map(|o| (key, o)));
        let mut done = Vec::new();
        let mut first_error = None;
        for outcome in outcomes {
            match outcome {
                Ok((key, Some(offset))) => done.push((key, offset)),
                Ok((_, None)) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(done), Err)
    }

    fn commit_one(
        &self,
        key: PartitionKey,
        slot: &mut Slot,
        tracker: &Tracker,
        failed: bool,
    ) -> Result<Option<i64>, TransactionError> {
        let id = self.transactional_id(key);
        let abort = |slot: &mut Slot, reason: String| -> Result<Option<i64>, TransactionError> {
            slot.open = false;
            let _ = slot.producer.abort_transaction(self.timeout);
            self.aborted.inc();
            tracing::warn!(%id, %reason, "partition transaction aborted; the direction starts again from its progress");
            Err(TransactionError::Fatal { step: "commit", reason })
        };
        if failed {
            return abort(slot, "an output of it was not delivered".into());
        }
        if let Err(e) = producer::flush(&slot.producer, self.timeout) {
            return abort(slot, format!("outputs not acknowledged within the transaction timeout: {e}"));
        }
        let age = slot.began.elapsed();
        if age > self.stale_after {
            return abort(slot, format!("open for {age:.1?}: this instance was paused and may have been replaced"));
        }
        let offset = tracker.take_committable(Some(&[key]), true).first().map(|(_, o)| *o);
        if let Some(o) = offset {
            let mut tpl = TopicPartitionList::new();
            let _ = tpl.add_partition_offset(self.topic(key), key.1, Offset::Offset(o));
            if let (Some(cluster), Some(mut e)) = (self.source_cluster(), tpl.find_partition(self.topic(key), key.1)) {
                e.set_metadata(cluster);
            }
            if let Err(e) =
                retrying(self.timeout, || slot.producer.send_offsets_to_transaction(&tpl, &self.metadata, self.timeout))
            {
                return match self.failed(&id, "send_offsets", &e) {
                    f @ TransactionError::Fenced { .. } => Err(f),
                    _ => abort(slot, format!("send_offsets: {e}")),
                };
            }
        }
        if let Err(e) = retrying(self.timeout, || slot.producer.commit_transaction(self.timeout)) {
            return match self.failed(&id, "commit", &e) {
                f @ TransactionError::Fenced { .. } => Err(f),
                _ => abort(slot, format!("commit: {e}")),
            };
        }
        slot.open = false;
        self.committed.inc();
        Ok(offset)
    }

    /// Partitions that left this instance: a lost one's transaction is aborted (its next owner
    /// has fenced it already, or will), and their producers are closed.
    pub fn release(&self, keys: &[PartitionKey]) {
        let leaving: Vec<Slot> = {
            let mut slots = self.slots();
            keys.iter().filter_map(|key| slots.remove(key)).collect()
        };
        // Aborting and closing a producer each take round trips: in parallel, as claims do.
        in_parallel(leaving, |slot| {
            if slot.open {
                let _ = slot.producer.abort_transaction(self.timeout);
                self.aborted.inc();
            }
        });
    }

    /// Aborts every open transaction (the direction stops or starts again).
    pub fn abort_all(&self) {
        let keys: Vec<PartitionKey> = self.slots().keys().copied().collect();
        self.release(&keys);
    }

    fn failed(&self, id: &str, step: &'static str, e: &KafkaError) -> TransactionError {
        let err = super::transaction::classify_failure(id, step, e, false);
        if matches!(err, TransactionError::Fenced { .. }) {
            self.fenced.inc();
            tracing::error!(%id, error = %err, "partition transactions fenced: another instance owns this partition now");
        }
        err
    }
}

impl Flush for PartitionTransactions {
    fn drain(&self, timeout: Duration) -> Result<(), KafkaError> {
        let producers: Vec<Arc<OutputProducer>> = self.slots().values().map(|s| s.producer.clone()).collect();
        let deadline = Instant::now() + timeout;
        for p in producers {
            producer::flush(&p, deadline.saturating_duration_since(Instant::now()))?;
        }
        Ok(())
    }
}

/// Runs `work` on every item, [`CLAIM_PARALLELISM`] at a time, on scoped threads (none for a
/// single item); the results come in no particular order.
fn in_parallel<T: Send, R: Send>(items: Vec<T>, work: impl Fn(T) -> R + Sync) -> Vec<R> {
    if items.len() <= 1 {
        return items.into_iter().map(work).collect();
    }
    let threads = CLAIM_PARALLELISM.min(items.len());
    let queue = Mutex::new(items.into_iter());
    let next = || queue.lock().unwrap_or_else(|p| p.into_inner()).next();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    while let Some(item) = next() {
                        out.push(work(item));
                    }
                    out
                })
            })
            .collect();
        // A worker that panicked has a bug, not a Kafka error: raised again here, as if the
        // work had run on this thread.
        workers.into_iter().flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    })
}

/// Repeats `step` while its error is retriable, up to `timeout`.
fn retrying(timeout: Duration, step: impl Fn() -> Result<(), KafkaError>) -> Result<(), KafkaError> {
    let deadline = Instant::now() + timeout;
    loop {
        match step() {
            Err(e) if retriable(&e) && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            r => return r,
        }
    }
}
