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

/// Checks (and with `bridge.create_topics`, creates) every output topic on both clusters.
/// Returns the partition count of each input topic.
pub fn ensure_outputs(config: &Config) -> Result<BTreeMap<String, usize>, TopicError> {
    let prod = partition_counts(&config.prod, "prod")?;
    let mut inputs = BTreeMap::new();
    for (i, r) in config.routes.iter().enumerate() {
        let n = *prod.get(&r.topic).ok_or_else(|| TopicError::MissingInput { route: i, topic: r.topic.clone() })?;
        inputs.insert(r.topic.clone(), n);
    }
    for (name, cluster, existing) in
        [("prod", &config.prod, prod.clone()), ("rush", &config.rush, partition_counts(&config.rush, "rush")?)]
    {
        let mut missing = Vec::new();
        for r in &config.routes {
            let expected = inputs[&r.topic];
            // On Rush, a return route's raw topic is where Rush instances produce; it mirrors
            // prod's partitioning so a record can keep its partition on the way back.
            let raw = (name == "rush" && r.return_path).then_some(&r.topic);
            for topic in r.services.iter().map(|s| &s.output_topic).chain(raw) {
                match existing.get(topic) {
                    Some(&actual) if actual != expected => {
                        return Err(TopicError::PartitionMismatch {
                            cluster: name,
                            topic: topic.clone(),
                            input: r.topic.clone(),
                            expected,
                            actual,
                        });
                    }
                    Some(_) => {}
                    None => missing.push((topic.as_str(), expected)),
                }
            }
        }
        if missing.is_empty() {
            continue;
        }
        if !config.bridge.create_topics {
            return Err(TopicError::MissingOutput { cluster: name, topic: missing[0].0.to_owned() });
        }
        create(cluster, name, &missing, config.bridge.replication_factor)?;
    }
    Ok(inputs)
}

fn create(cluster: &ClusterConfig, name: &'static str, topics: &[(&str, usize)], rf: i32) -> Result<(), TopicError> {
    let fail = |topic: &str, reason: String| TopicError::Create { cluster: name, topic: topic.to_owned(), reason };
    let admin: AdminClient<DefaultClientContext> =
        admin_config(cluster, name).create().map_err(|e| fail(topics[0].0, e.to_string()))?;
    let new: Vec<NewTopic<'_>> =
        topics.iter().map(|(t, n)| NewTopic::new(t, *n as i32, TopicReplication::Fixed(rf))).collect();
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
        let pending: Vec<_> = topics.iter().filter(|(t, n)| now.get(*t) != Some(n)).collect();
        match pending.first() {
            None => return Ok(()),
            Some((t, n)) if Instant::now() >= deadline => {
                return Err(fail(t, format!("not visible with {n} partitions after {METADATA_TIMEOUT:?}")));
            }
            Some(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
