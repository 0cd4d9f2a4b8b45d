//! Output topics: same name on both clusters, same partition count as their input, so a record
//! keeps its partition number and with it its order and key locality. The same holds for a
//! return route's raw topic on Rush. Partitions added to an input are followed: every topic
//! that mirrors it (outputs, outbox, decision log, raw topic) grows to match (with
//! `bridge.create_topics`), each time the forward direction or the Rush lane starts.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::{ClusterConfig, Config};
use crate::environment;
use crate::kafka::admin_config;
use crate::topic_settings::{self, Settings};

const METADATA_TIMEOUT: Duration = Duration::from_secs(15);
/// Every Kafka broker since 0.11 answers DescribeConfigs at once; one that does not (some test
/// brokers) delays the start by this much, and outputs get the broker's defaults.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

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
    #[error(
        "{cluster} cluster: cannot add partitions to topic {topic:?} to follow its input (now {expected}): {reason}"
    )]
    Grow { cluster: &'static str, topic: String, expected: usize, reason: String },
    #[error(
        "{cluster} cluster: the bridge's own topic {topic:?} has cleanup.policy={policy}: compaction refuses its \
         keyless records and drops repeated keys, so decisions, copies or dead letters would be lost; set \
         cleanup.policy=delete (kafka-configs.sh --alter --entity-type topics --entity-name {topic} \
         --add-config cleanup.policy=delete)"
    )]
    Compacted { cluster: &'static str, topic: String, policy: String },
}

impl TopicError {
    /// Whether checking the topics again later can succeed by itself: the cluster did not answer,
    /// or a creation failed. A missing input or a topic with more partitions than its input
    /// needs an operator.
    pub fn curable(&self) -> bool {
        matches!(self, Self::Metadata { .. } | Self::Create { .. } | Self::Grow { .. })
    }
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
    topic: Cow<'a, str>,
    input: Option<&'a str>,
    /// Settings to create it with.
    settings: Vec<(&'static str, String)>,
    /// An output: one that exists already is compared with its input's settings.
    output: bool,
}

/// A route's input topic on prod.
#[derive(Debug, Clone, Default)]
pub struct InputTopic {
    pub partitions: usize,
    /// Its settings among [`topic_settings::COPIED`]; empty if the broker would not say.
    pub settings: Settings,
}

/// Every route's input topic on prod, by name.
pub type InputTopics = BTreeMap<String, InputTopic>;

fn inputs(config: &Config, prod: &BTreeMap<String, usize>) -> Result<InputTopics, TopicError> {
    let mut inputs = BTreeMap::new();
    for (i, r) in config.routes.iter().enumerate() {
        let n = *prod.get(&r.topic).ok_or_else(|| TopicError::MissingInput { route: i, topic: r.topic.clone() })?;
        inputs.insert(r.topic.clone(), InputTopic { partitions: n, settings: Settings::new() });
    }
    if !config.bridge.copy_topic_settings {
        return Ok(inputs);
    }
    let names: Vec<&str> = inputs.keys().map(String::as_str).collect();
    for (topic, settings) in describe(&config.prod, "prod", &names) {
        if let Some(input) = inputs.get_mut(&topic) {
            input.settings = settings;
        }
    }
    Ok(inputs)
}

/// The route outputs of `config` and the settings each takes from its input. On Rush every
/// record is a stamped copy: its outputs take the input's limit plus room for the stamp.
fn outputs<'a>(config: &'a Config, inputs: &InputTopics, stamped: bool) -> Vec<Wanted<'a>> {
    config.routes.iter().flat_map(|r| route_outputs(r, inputs, stamped)).collect()
}

/// [`outputs`] of one route.
fn route_outputs<'a>(r: &'a crate::config::Route, inputs: &InputTopics, stamped: bool) -> Vec<Wanted<'a>> {
    let mut settings = topic_settings::copied(&inputs[&r.topic].settings);
    if stamped {
        topic_settings::with_stamp_room(&mut settings);
    }
    r.services
        .iter()
        .map(|s| Wanted {
            topic: Cow::Borrowed(&s.output_topic),
            input: Some(r.topic.as_str()),
            settings: settings.clone(),
            output: true,
        })
        .collect()
}

/// Checks (and with `bridge.create_topics`, creates) every topic the bridge writes on prod: the
/// outputs, the Rush outboxes and the decision logs. Returns the route inputs.
pub fn ensure_prod(config: &Config) -> Result<InputTopics, TopicError> {
    let prod = partition_counts(&config.prod, "prod")?;
    let inputs = inputs(config, &prod)?;
    let retention = |d: std::time::Duration| vec![("retention.ms", d.as_millis().to_string())];
    let internal =
        |topic: &str, input, settings| Wanted { topic: Cow::Owned(topic.to_owned()), input, settings, output: false };
    let mut wanted = vec![internal(&config.bridge.snapshots_topic, None, retention(config.bridge.decisions_retention))];
    // Takes the largest record any input accepts, with the headers that say why it is there.
    let largest = topic_settings::record_limit(inputs.values().map(|i| &i.settings));
    let dead_letter = largest.map(|n| ("max.message.bytes", topic_settings::producer_max_bytes(n).to_string()));
    wanted.push(internal(&config.bridge.dead_letter_topic, None, dead_letter.into_iter().collect()));
    for r in &config.routes {
        let input = Some(r.topic.as_str());
        let mut outbox = retention(config.bridge.rush_retention);
        // Retention counts from when a copy was decided, not from the input's own timestamp:
        // a back-filled week-old event must still be carried to Rush.
        outbox.push(("message.timestamp.type", "LogAppendTime".to_owned()));
        // Its records are stamped copies with headers of their own.
        if let Some(limit) = topic_settings::max_message_bytes(&inputs[&r.topic].settings) {
            outbox.push(("max.message.bytes", topic_settings::producer_max_bytes(limit).to_string()));
        }
        wanted.push(internal(&r.outbox_topic, input, outbox));
        wanted.push(internal(&r.decisions_topic, input, retention(config.bridge.decisions_retention)));
    }
    wanted.extend(outputs(config, &inputs, false));
    ensure(config, &config.prod, "prod", &prod, &inputs, &wanted)?;
    Ok(inputs)
}

/// The same on Rush: the outputs, and each return route's raw topic, where Rush instances
/// produce; it mirrors prod's partitioning so a record can keep its partition on the way back.
/// Run by the Rush lane whenever it starts, so a Rush cluster rebuilt empty gets them again.
/// Each route on its own: one route's broken topic (created by hand with another partition
/// count) is that route's error, in the route's place in the result; a cluster that cannot
/// be read is the whole call's.
pub fn ensure_rush(config: &Config) -> Result<Vec<Result<(), TopicError>>, TopicError> {
    let inputs = inputs(config, &partition_counts(&config.prod, "prod")?)?;
    let rush = partition_counts(&config.rush, "rush")?;
    let mut routes = Vec::with_capacity(config.routes.len());
    for r in &config.routes {
        let mut wanted = rush_topics(r, &inputs, environment::DEFAULT);
        // Exactly-once: the Rush lane's progress is stored on Rush as its group's committed
        // offsets of the outbox, and a broker keeps offsets only of topics it has. This topic
        // stays empty; it anchors them.
        if config.bridge.delivery == crate::config::Delivery::ExactlyOnce {
            let input = Some(r.topic.as_str());
            wanted.push(Wanted { topic: Cow::Borrowed(&r.outbox_topic), input, settings: Vec::new(), output: false });
        }
        match ensure(config, &config.rush, "rush", &rush, &inputs, &wanted) {
            Err(e @ TopicError::Metadata { .. }) => return Err(e),
            result => routes.push(result),
        }
    }
    Ok(routes)
}

/// Route `r`'s topics on Rush in environment `env`: its outputs, and its raw topic if it
/// returns.
fn rush_topics<'a>(r: &'a crate::config::Route, inputs: &InputTopics, env: &str) -> Vec<Wanted<'a>> {
    let mut wanted = route_outputs(r, inputs, true);
    if r.return_path {
        let settings = topic_settings::copied(&inputs[&r.topic].settings);
        wanted.push(Wanted { topic: Cow::Borrowed(&r.topic), input: Some(r.topic.as_str()), settings, output: true });
    }
    if !environment::is_default(env) {
        for w in &mut wanted {
            w.topic = Cow::Owned(environment::rush_topic(env, &w.topic));
        }
    }
    wanted
}

/// An environment's Rush topic whose partition count is not its input's (created by hand or
/// by a client's auto-creation): its copies are folded onto the partitions it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatched {
    pub topic: String,
    pub partitions: usize,
    pub input_partitions: usize,
}

/// Environment `env`'s Rush topics (not the default environment's), made right before its
/// first copy: missing ones created, short ones grown. One that has more partitions than its
/// input, or fewer and cannot grow, is returned rather than refused: the environment keeps
/// flowing on the partitions it has, and only it is affected.
pub fn ensure_env(config: &Config, env: &str) -> Result<Vec<Mismatched>, TopicError> {
    let inputs = inputs(config, &partition_counts(&config.prod, "prod")?)?;
    let rush = partition_counts(&config.rush, "rush")?;
    let mut wanted = Vec::new();
    let mut mismatched = Vec::new();
    for r in &config.routes {
        for w in rush_topics(r, &inputs, env) {
            let expected = inputs[&r.topic].partitions;
            let Some(&actual) = rush.get(&*w.topic).filter(|n| **n != expected) else {
                wanted.push(w);
                continue;
            };
            // Short of its input's partitions: grown if it can be (as the default
            // environment's are), else folded like one that has too many.
            let grown = actual < expected
                && config.bridge.create_topics
                && grow(&config.rush, "rush", &[(&w.topic, expected)])
                    .map_err(|e| tracing::warn!(error = %e, "environment topic cannot grow"))
                    .is_ok();
            if !grown {
                mismatched.push(Mismatched {
                    topic: w.topic.to_string(),
                    partitions: actual,
                    input_partitions: expected,
                });
            }
        }
    }
    ensure(config, &config.rush, "rush", &rush, &inputs, &wanted)?;
    Ok(mismatched)
}

/// The raw topics environments other than the default one have on Rush, as
/// `(route index, env, topic)`: where the return path reads what their Rush instances produce.
pub fn rush_env_raw_topics(config: &Config) -> Result<Vec<(usize, String, String)>, TopicError> {
    let rush = partition_counts(&config.rush, "rush")?;
    let mut found = Vec::new();
    for (ri, r) in config.routes.iter().enumerate().filter(|(_, r)| r.return_path) {
        for name in rush.keys() {
            match environment::of_rush_topic(name, &r.topic) {
                Some(env) if !environment::is_default(env) => found.push((ri, env.to_owned(), name.clone())),
                _ => {}
            }
        }
    }
    Ok(found)
}

/// One output topic as `validate --topics` shows it.
#[derive(Debug, Clone)]
pub struct OutputView {
    pub cluster: &'static str,
    pub topic: String,
    pub input: String,
    /// Its settings among the copied keys: as the broker reports them if it exists, else those
    /// the bridge would create it with.
    pub settings: Settings,
    pub exists: bool,
    pub mismatches: Vec<topic_settings::Mismatch>,
}

/// Every route output on both clusters with its settings, against its input's. A cluster that
/// cannot be read is an error for that cluster only.
pub fn outputs_view(config: &Config) -> Vec<Result<Vec<OutputView>, TopicError>> {
    let inputs = match partition_counts(&config.prod, "prod").and_then(|prod| inputs(config, &prod)) {
        Ok(i) => i,
        Err(e) => return vec![Err(e)],
    };
    let clusters = [("prod", &config.prod), ("rush", &config.rush)];
    clusters
        .into_iter()
        .map(|(name, cluster)| {
            let existing = partition_counts(cluster, name)?;
            let wanted = outputs(config, &inputs, name == "rush");
            let present: Vec<&str> = wanted.iter().map(|w| &*w.topic).filter(|t| existing.contains_key(*t)).collect();
            let described = describe(cluster, name, &present);
            Ok(wanted
                .iter()
                .map(|w| {
                    let input = w.input.unwrap_or_default();
                    let exists = existing.contains_key(&*w.topic);
                    let settings = if exists {
                        described.get(&*w.topic).cloned().unwrap_or_default()
                    } else {
                        w.settings.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
                    };
                    let mismatches =
                        if exists { topic_settings::compare(&inputs[input].settings, &settings) } else { Vec::new() };
                    OutputView {
                        cluster: name,
                        topic: w.topic.to_string(),
                        input: input.to_owned(),
                        settings,
                        exists,
                        mismatches,
                    }
                })
                .collect())
        })
        .collect()
}

/// The settings of `topics` on a cluster. A broker that cannot describe them is logged and
/// leaves them out: outputs are then created with the broker's defaults, as before this check.
fn describe(cluster: &ClusterConfig, name: &'static str, topics: &[&str]) -> BTreeMap<String, Settings> {
    let mut found = BTreeMap::new();
    if topics.is_empty() {
        return found;
    }
    let admin: AdminClient<DefaultClientContext> = match admin_config(cluster, name).create() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(cluster = name, error = %e, "cannot describe topic settings");
            return found;
        }
    };
    let specs: Vec<ResourceSpecifier<'_>> = topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let opts = AdminOptions::new().request_timeout(Some(DESCRIBE_TIMEOUT));
    match futures_executor::block_on(admin.describe_configs(&specs, &opts)) {
        Ok(results) => {
            for (topic, r) in topics.iter().zip(results) {
                match r {
                    Ok(resource) => {
                        let settings = topic_settings::COPIED
                            .iter()
                            .filter_map(|k| Some(((*k).to_owned(), resource.get(k)?.value.clone()?)))
                            .collect();
                        found.insert((*topic).to_owned(), settings);
                    }
                    Err(code) => tracing::warn!(cluster = name, topic, error = %code, "cannot describe topic settings"),
                }
            }
        }
        Err(e) => tracing::warn!(cluster = name, error = %e, "cannot describe topic settings"),
    }
    found
}

fn ensure(
    config: &Config,
    cluster: &ClusterConfig,
    name: &'static str,
    existing: &BTreeMap<String, usize>,
    inputs: &InputTopics,
    wanted: &[Wanted<'_>],
) -> Result<(), TopicError> {
    let mut missing = Vec::new();
    let mut present = Vec::new();
    let mut short = Vec::new();
    for w in wanted {
        let expected = w.input.map_or(1, |i| inputs[i].partitions);
        match existing.get(&*w.topic) {
            // Partitions were added to the input: records of the new ones need theirs.
            Some(&actual) if actual < expected && w.input.is_some() && config.bridge.create_topics => {
                short.push((&*w.topic, expected));
                present.push(w);
            }
            Some(&actual) if actual != expected => {
                return Err(TopicError::PartitionMismatch {
                    cluster: name,
                    topic: w.topic.to_string(),
                    input: w.input.unwrap_or("(none: one partition)").to_owned(),
                    expected,
                    actual,
                });
            }
            Some(_) => present.push(w),
            None => missing.push((&*w.topic, expected, w.settings.as_slice())),
        }
    }
    if config.bridge.copy_topic_settings {
        check_internal(cluster, name, &present)?;
        report_mismatches(cluster, name, inputs, &present);
    }
    if !short.is_empty() {
        grow(cluster, name, &short)?;
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !config.bridge.create_topics {
        return Err(TopicError::MissingOutput { cluster: name, topic: missing[0].0.to_owned() });
    }
    create(cluster, name, &missing, config.bridge.replication_factor)
}

/// Logs every copied setting on which an existing output differs from its input. A warning,
/// not an error: refusing to start would stop every production output for the sake of the
/// records one output refuses.
fn report_mismatches(cluster: &ClusterConfig, name: &'static str, inputs: &InputTopics, present: &[&Wanted<'_>]) {
    let outputs: Vec<&Wanted<'_>> = present.iter().copied().filter(|w| w.output && w.input.is_some()).collect();
    let names: Vec<&str> = outputs.iter().map(|w| &*w.topic).collect();
    let settings = describe(cluster, name, &names);
    for w in outputs {
        let (Some(input), Some(output)) = (w.input, settings.get(&*w.topic)) else { continue };
        for m in topic_settings::compare(&inputs[input].settings, output) {
            tracing::warn!(
                cluster = name, topic = %w.topic, input, key = m.key, output_value = %m.output,
                input_value = %m.input, refuses = m.refuses, "output topic setting differs from its input: {m}"
            );
        }
    }
}

/// The bridge's own topics that exist already (outbox, decision and snapshot logs, dead
/// letters): a compacted one is refused, as Kafka Connect refuses internal topics with the
/// wrong policy; other settings that differ from what the bridge would create are logged.
fn check_internal(cluster: &ClusterConfig, name: &'static str, present: &[&Wanted<'_>]) -> Result<(), TopicError> {
    let internal: Vec<&Wanted<'_>> = present.iter().copied().filter(|w| !w.output).collect();
    let names: Vec<&str> = internal.iter().map(|w| &*w.topic).collect();
    let described = describe(cluster, name, &names);
    for w in internal {
        let Some(actual) = described.get(&*w.topic) else { continue };
        if let Some(policy) = actual.get("cleanup.policy").filter(|p| p.contains("compact")) {
            return Err(TopicError::Compacted { cluster: name, topic: w.topic.to_string(), policy: policy.clone() });
        }
        for (key, wanted) in &w.settings {
            match actual.get(*key) {
                Some(value) if value.trim() != wanted.trim() => tracing::warn!(
                    cluster = name, topic = %w.topic, key, value = %value, wanted = %wanted,
                    "the bridge's own topic has a setting other than the one it creates it with"
                ),
                _ => {}
            }
        }
    }
    Ok(())
}

type NewTopicSpec<'a> = (&'a str, usize, &'a [(&'static str, String)]);

/// Adds partitions to `topics` (name, the input's count), then waits until metadata shows them.
fn grow(cluster: &ClusterConfig, name: &'static str, topics: &[(&str, usize)]) -> Result<(), TopicError> {
    let fail = |topic: &str, expected: usize, reason: String| TopicError::Grow {
        cluster: name,
        topic: topic.to_owned(),
        expected,
        reason,
    };
    let (first, first_n) = topics[0];
    let admin: AdminClient<DefaultClientContext> =
        admin_config(cluster, name).create().map_err(|e| fail(first, first_n, e.to_string()))?;
    let new: Vec<NewPartitions<'_>> = topics.iter().map(|(t, n)| NewPartitions::new(t, *n)).collect();
    let opts = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
    let results = futures_executor::block_on(admin.create_partitions(&new, &opts))
        .map_err(|e| fail(first, first_n, e.to_string()))?;
    for r in results {
        match r {
            Ok(t) => tracing::warn!(
                cluster = name, topic = %t,
                "partitions were added to its input: topic grown to match, records keep their partition"
            ),
            // Another bridge instance grew it first.
            Err((_, RDKafkaErrorCode::InvalidPartitions)) => {}
            Err((t, code)) => {
                let n = topics.iter().find(|(name, _)| *name == t).map_or(0, |(_, n)| *n);
                return Err(fail(&t, n, code.to_string()));
            }
        }
    }
    wait_visible(cluster, name, topics.iter().map(|(t, n)| (*t, *n)), |t, n| fail(t, n, "not visible".into()))
}

/// Waits until the cluster's metadata shows every topic with its partition count, so the first
/// produce does not race a creation.
fn wait_visible<'a>(
    cluster: &ClusterConfig,
    name: &'static str,
    topics: impl Iterator<Item = (&'a str, usize)> + Clone,
    late: impl Fn(&str, usize) -> TopicError,
) -> Result<(), TopicError> {
    let deadline = Instant::now() + METADATA_TIMEOUT;
    loop {
        let now = partition_counts(cluster, name)?;
        let pending = topics.clone().find(|(t, n)| now.get(*t) != Some(n));
        match pending {
            None => return Ok(()),
            Some((t, n)) if Instant::now() >= deadline => return Err(late(t, n)),
            Some(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn create(cluster: &ClusterConfig, name: &'static str, topics: &[NewTopicSpec<'_>], rf: i32) -> Result<(), TopicError> {
    let fail = |topic: &str, reason: String| TopicError::Create { cluster: name, topic: topic.to_owned(), reason };
    let admin: AdminClient<DefaultClientContext> =
        admin_config(cluster, name).create().map_err(|e| fail(topics[0].0, e.to_string()))?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(t, n, settings)| {
            settings
                .iter()
                .fold(NewTopic::new(t, *n as i32, TopicReplication::Fixed(rf)), |topic, (k, v)| topic.set(k, v))
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
    wait_visible(cluster, name, topics.iter().map(|(t, n, _)| (*t, *n)), |t, n| {
        fail(t, format!("not visible with {n} partitions after {METADATA_TIMEOUT:?}"))
    })
}
