//! Measures the Rush backlog from the prod side, whatever state the Rush lane is in.
//!
//! The lane's own view disappears exactly when it matters (Rush away, the lane restarting), so
//! this probe reads only prod: the rush group's committed outbox offsets against the outboxes'
//! watermarks give the copies not yet on Rush, and the first of them gives the backlog's age. A
//! committed offset below the low watermark (or none, with a low watermark above 0) means
//! retention deleted copies before Rush had them: those are counted as lost and logged, once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::clock::now_ms;
use crate::config::Config;
use crate::kafka;
use crate::metrics::Metrics;
use crate::relay::stop::Stop;

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Probes every `interval` until `stop`. Errors are logged and retried at the next interval:
/// the probe is an observer and must never stop anything.
pub fn run(config: &Config, stop: &Stop<'_>, metrics: &Arc<Metrics>, interval: Duration) {
    let mut cc = kafka::consumer_config(&config.prod, "prod-rush-backlog", &config.bridge.rush_group_id());
    // It reads one record per lagging partition: prefetch only a little.
    cc.set("queued.max.messages.kbytes", "1024");
    cc.set("fetch.max.bytes", "1048576");
    // Its context has no statistics handler: librdkafka's would only be logged.
    cc.set("statistics.interval.ms", "0");
    let consumer: BaseConsumer = match cc.create() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "rush backlog probe cannot start; rush_backlog metrics stay unset");
            return;
        }
    };
    let outboxes: Vec<&str> = config.routes.iter().map(|r| r.outbox_topic.as_str()).collect();
    let mut lost_counted: HashMap<(String, i32), i64> = HashMap::new();
    while !stop.requested() {
        match probe(&consumer, &outboxes, &mut lost_counted, metrics) {
            Ok(b) => {
                metrics.rush_backlog.set(b.records);
                let age = b.oldest_ms.map_or(0, |ts| now_ms().saturating_sub(ts).max(0));
                metrics.rush_backlog_age.set(age as f64 / 1000.0);
            }
            Err(e) => tracing::warn!(error = %e, "rush backlog probe failed; retrying"),
        }
        stop.sleep(interval);
    }
}

struct Backlog {
    records: i64,
    oldest_ms: Option<i64>,
}

fn probe(
    consumer: &BaseConsumer,
    outboxes: &[&str],
    lost_counted: &mut HashMap<(String, i32), i64>,
    metrics: &Metrics,
) -> Result<Backlog, rdkafka::error::KafkaError> {
    let mut all = TopicPartitionList::new();
    for topic in outboxes {
        let md = consumer.fetch_metadata(Some(topic), PROBE_TIMEOUT)?;
        for t in md.topics() {
            for p in t.partitions() {
                all.add_partition(t.name(), p.id());
            }
        }
    }
    let committed = consumer.committed_offsets(all, PROBE_TIMEOUT)?;
    let mut records = 0;
    let mut first_waiting = TopicPartitionList::new();
    for e in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), PROBE_TIMEOUT)?;
        // No commit yet: nothing of this partition ever reached Rush, so every copy from its
        // first one (offset 0: the outbox is the bridge's own) is waiting, or lost if retention
        // took it. The lane itself starts at the low watermark (auto.offset.reset = earliest).
        let next = match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        };
        let key = (e.topic().to_owned(), e.partition());
        let counted = lost_counted.get(&key).copied().unwrap_or(i64::MIN);
        if next < low && counted < low {
            let lost = low - next.max(counted);
            metrics.rush_copies_lost.inc_by(lost as u64);
            tracing::error!(
                outbox = e.topic(),
                partition = e.partition(),
                lost,
                from = next,
                to = low,
                "rush copies lost: the outbox's retention (bridge.rush_retention) deleted them before Rush had them"
            );
            lost_counted.insert(key, low);
        }
        let start = next.max(low);
        if high > start {
            records += high - start;
            first_waiting.add_partition_offset(e.topic(), e.partition(), Offset::Offset(start))?;
        }
    }
    Ok(Backlog { records, oldest_ms: oldest_timestamp(consumer, first_waiting)? })
}

/// The earliest timestamp among the first waiting record of each partition.
fn oldest_timestamp(
    consumer: &BaseConsumer,
    first: TopicPartitionList,
) -> Result<Option<i64>, rdkafka::error::KafkaError> {
    let mut want = first.count();
    if want == 0 {
        return Ok(None);
    }
    consumer.assign(&first)?;
    let mut seen: HashMap<(String, i32), ()> = HashMap::new();
    let mut oldest: Option<i64> = None;
    let deadline = Instant::now() + PROBE_TIMEOUT;
    while want > 0 && Instant::now() < deadline {
        let Some(r) = consumer.poll(crate::relay::direction::poll::POLL_TIMEOUT) else { continue };
        let Ok(m) = r else { continue };
        if seen.insert((m.topic().to_owned(), m.partition()), ()).is_none() {
            want -= 1;
            // A record without a time still waits; its age is unknown, not zero.
            if let Some(ts) = m.timestamp().to_millis() {
                oldest = Some(oldest.map_or(ts, |o| o.min(ts)));
            }
        }
    }
    consumer.unassign()?;
    Ok(oldest)
}
