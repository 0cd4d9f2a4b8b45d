//! Output topics: same name on both clusters, same partition count as their input, so a record
//! keeps its partition number and with it its order and key locality. The same holds for a
//! return route's raw topic on Rush.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::{ClusterConfig, Config};
use crate::kafka::admin_config;

const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("{cluster} cluster: cannot read topic metadata: {source}")]
    Metadata { cluster: &'static str, source: KafkaError },
    #[error("input topic {topic:?} does not exist on the prod cluster (routes[{route}].topic)")]
    MissingInput { route: usize, topic: String },
    #[error(
        "{cluster} cluster: topic {topic:?} has {actual} partitions but prod input {input:?} has {expected}; \
         records must keep their partition, so delete or repartition it"
    )]
    PartitionMismatch { cluster: &'static str, topic: String, input: String, expected: usize, actual: usize },
    #[error("{cluster} cluster: output topic {topic:?} is missing and bridge.create_topics is false")]
    MissingOutput { cluster: &'static str, topic: String },
    #[error("{cluster} cluster: cannot create output topic {topic:?}: {reason}")]
    Create { cluster: &'static str, topic: String, reason: String },
}

/// Partition count of every topic on a cluster.
pub fn partition_counts(cluster: &ClusterConfig, name: &'static str) -> Result<BTreeMap<String, usize>, TopicError> {
    let err = |source| TopicError::Metadata { cluster: name, source };
    let client: BaseConsumer = admin_config(cluster, name).create().map_err(err)?;
    let md = client.fetch_metadata(None, METADATA_TIMEOUT).map_err(err)?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| (t.name().to_owned(), t.partitions().len()))
        .collect())
}

/// A topic the bridge writes, and the input whose partition count it must have (one
/// partition if none).
struct Wanted<'a> {
    topic: &'a str,
    input: Option<&'a str>,
    /// `retention.ms` to create it with (the outbox); the broker's default otherwise.
    retention_ms: Option<String>,
}

/// Partition count of every route's input topic on prod.
fn inputs(config: &Config, prod: &BTreeMap<String, usize>) -> Result<BTreeMap<String, usize>, TopicError> {
    let mut inputs = BTreeMap::new();
    for (i, r) in config.routes.iter().enumerate() {
        let n = *prod.get(&r.topic).ok_or_else(|| TopicError::MissingInput { route: i, topic: r.topic.clone() })?;
        inputs.insert(r.topic.clone(), n);
    }
    Ok(inputs)
}

/// Checks (and with `bridge.create_topics`, creates) every topic the bridge writes on prod: the
/// outputs and the Rush outboxes. Returns the partition count of each input topic.
pub fn ensure_prod(config: &Config) -> Result<BTreeMap<String, usize>, TopicError> {
    let prod = partition_counts(&config.prod, "prod")?;
    let inputs = inputs(config, &prod)?;
    let retention = config.bridge.rush_retention.as_millis().to_string();
    let decisions_retention = config.bridge.decisions_retention.as_millis().to_string();
    let snapshots =
        Wanted { topic: &config.bridge.snapshots_topic, input: None, retention_ms: Some(decisions_retention.clone()) };
    let mut wanted = vec![snapshots];
    for r in &config.routes {
        let input = Some(r.topic.as_str());
        wanted.push(Wanted { topic: &r.outbox_topic, input, retention_ms: Some(retention.clone()) });
        wanted.push(Wanted { topic: &r.decisions_topic, input, retention_ms: Some(decisions_retention.clone()) });
        wanted.extend(r.services.iter().map(|s| Wanted { topic: &s.output_topic, input, retention_ms: None }));
    }
    ensure(config, &config.prod, "prod", &prod, &inputs, &wanted)?;
    Ok(inputs)
}

/// The same on Rush: the outputs, and each return route's raw topic, where Rush instances
/// produce; it mirrors prod's partitioning so a record can keep its partition on the way back.
/// Run by the Rush lane whenever it starts, so a Rush cluster rebuilt empty gets them again.
pub fn ensure_rush(config: &Config) -> Result<(), TopicError> {
    let inputs = inputs(config, &partition_counts(&config.prod, "prod")?)?;
    let rush = partition_counts(&config.rush, "rush")?;
    let mut wanted = Vec::new();
    for r in &config.routes {
        let input = Some(r.topic.as_str());
        wanted.extend(r.services.iter().map(|s| Wanted { topic: &s.output_topic, input, retention_ms: None }));
        if r.return_path {
            wanted.push(Wanted { topic: &r.topic, input, retention_ms: None });
        }
        // Exactly-once: the Rush lane's progress is stored on Rush as its group's committed
        // offsets of the outbox, and a broker keeps offsets only of topics it has. This topic
        // stays empty; it anchors them.
        if config.bridge.delivery == crate::config::Delivery::ExactlyOnce {
            wanted.push(Wanted { topic: &r.outbox_topic, input, retention_ms: None });
        }
    }
    ensure(config, &config.rush, "rush", &rush, &inputs, &wanted)
}

fn ensure(
    config: &Config,
    cluster: &ClusterConfig,
    name: &'static str,
    existing: &BTreeMap<String, usize>,
    inputs: &BTreeMap<String, usize>,
    wanted: &[Wanted<'_>],
) -> Result<(), TopicError> {
    let mut missing = Vec::new();
    for w in wanted {
        let expected = w.input.map_or(1, |i| inputs[i]);
        match existing.get(w.topic) {
            Some(&actual) if actual != expected => {
                return Err(TopicError::PartitionMismatch {
                    cluster: name,
                    topic: w.topic.to_owned(),
                    input: w.input.unwrap_or("(none: one partition)").to_owned(),
                    expected,
                    actual,
                });
            }
            Some(_) => {}
            None => missing.push((w.topic, expected, w.retention_ms.as_deref())),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !config.bridge.create_topics {
        return Err(TopicError::MissingOutput { cluster: name, topic: missing[0].0.to_owned() });
    }
    create(cluster, name, &missing, config.bridge.replication_factor)
}

type NewTopicSpec<'a> = (&'a str, usize, Option<&'a str>);

fn create(cluster: &ClusterConfig, name: &'static str, topics: &[NewTopicSpec<'_>], rf: i32) -> Result<(), TopicError> {
    let fail = |topic: &str, reason: String| TopicError::Create { cluster: name, topic: topic.to_owned(), reason };
    let admin: AdminClient<DefaultClientContext> =
        admin_config(cluster, name).create().map_err(|e| fail(topics[0].0, e.to_string()))?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(t, n, retention)| {
            let topic = NewTopic::new(t, *n as i32, TopicReplication::Fixed(rf));
            match retention {
                Some(ms) => topic.set("retention.ms", ms),
                None => topic,
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
    let results =
        futures_executor::block_on(admin.create_topics(&new, &opts)).map_err(|e| fail(topics[0].0, e.to_string()))?;
    for r in results {
        match r {
            Ok(t) => tracing::info!(cluster = name, topic = %t, "created output topic"),
            // Another bridge instance created it first: fine, the partition check below covers it.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(fail(&t, code.to_string())),
        }
    }
    // Wait until the cluster's metadata shows them, so the first produce does not race creation.
    let deadline = Instant::now() + METADATA_TIMEOUT;
    loop {
        let now = partition_counts(cluster, name)?;
        let pending: Vec<_> = topics.iter().filter(|(t, n, _)| now.get(*t) != Some(n)).collect();
        match pending.first() {
            None => return Ok(()),
            Some((t, n, _)) if Instant::now() >= deadline => {
                return Err(fail(t, format!("not visible with {n} partitions after {METADATA_TIMEOUT:?}")));
            }
            Some(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
