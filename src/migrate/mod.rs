//! `tenancy-bridge migrate`: moves the committed offsets of a stopped consumer group between a
//! route's raw topic and a service's filtered topic on prod, so that it resumes right after the
//! last event it processed. [`plan`] decides from what is read here; this module reads and
//! commits.
//!
//! Read order: the group's and the bridge's committed offsets, the decision log, the filtered
//! topic, then the raw topic. Every output read then has its input among the inputs read, and
//! every input the bridge committed has its output among the outputs read.

pub mod plan;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

pub use plan::{Direction, PartitionPlan, Step};
use plan::{Facts, Names, OffsetMap};

use crate::config::{Config, Route, Service};
use crate::decision_log::DecisionReader;
use crate::kafka::admin_config;
use crate::verify::check::{Record, exact_identity};
use crate::verify::{ClusterReader, ReadError};

const GROUP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Options<'a> {
    pub route: &'a str,
    pub service: &'a str,
    pub group: &'a str,
    pub direction: Direction,
    pub dry_run: bool,
    /// Read only records at most this old (and 5 minutes more): bounds memory on long topics.
    pub since: Option<Duration>,
    /// A topic read with no high watermark to go by ends after this much quiet.
    pub idle: Duration,
    /// Longest time spent reading one topic.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("route {route:?} is not in the config (routes: {known})")]
    NoRoute { route: String, known: String },
    #[error("service {service:?} is not on route {route:?} (its services: {known})")]
    NoService { route: String, service: String, known: String },
    #[error("group {0:?} is the bridge's own consumer group; migrate moves the groups of the services")]
    BridgeGroup(String),
    #[error(
        "consumer group {group:?} on prod is not stopped (state {state}{members}): stop every member first; \
         migrate only moves the offsets of a group with no members"
    )]
    Active { group: String, state: String, members: String },
    #[error("prod cluster: filtered topic {0:?} does not exist: has the bridge run with this route?")]
    NoOutput(String),
    #[error("prod cluster, group {group:?}: {what}: {source}")]
    Kafka { group: String, what: &'static str, source: KafkaError },
    #[error("group {group:?}: {partitions} partition(s) cannot be moved exactly; nothing was committed\n{plan}")]
    Refused { group: String, partitions: usize, plan: String },
    #[error("group {group:?}: committed, but {topic}[{partition}] reads back as {found:?}, not {want}")]
    NotApplied { group: String, topic: String, partition: i32, want: i64, found: Option<i64> },
    #[error("prod cluster: committed offsets of group {group:?} on {topic:?}: {source}")]
    Offsets { group: String, topic: String, source: Box<ReadError> },
    #[error(
        "prod cluster: {raw:?} has {raw_count} partitions and {filtered:?} {filtered_count}: the filtered topic must \
         have its input's partition count"
    )]
    Partitions { raw: String, raw_count: usize, filtered: String, filtered_count: usize },
    #[error("group {group:?} has no committed offset on {topic:?}: nothing to move (is the group name right?)")]
    NothingCommitted { group: String, topic: String },
    #[error("group {group:?}: its offsets changed while migrate read the topics (a member ran); nothing was committed")]
    Moved { group: String },
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// Plans the move and, unless a dry run, commits it; returns the plan and what was done, as printed.
pub fn run(config: &Config, o: &Options<'_>) -> Result<String, MigrateError> {
    let (ri, route, service) = find(config, o.route, o.service)?;
    if o.group == config.bridge.group_id {
        return Err(MigrateError::BridgeGroup(o.group.to_owned()));
    }
    let (source, target) = match o.direction {
        Direction::Filtered => (&route.topic, &service.output_topic),
        Direction::Raw => (&service.output_topic, &route.topic),
    };
    let kafka = |what| {
        let group = o.group.to_owned();
        move |source| MigrateError::Kafka { group: group.clone(), what, source }
    };
    let mut c = admin_config(&config.prod, "migrate");
    c.set("group.id", o.group).set("enable.auto.commit", "false");
    let client: BaseConsumer = c.create().map_err(kafka("client"))?;
    ensure_stopped(&client, o.group)?;

    let reader = ClusterReader::new(&config.prod, "prod", o.idle, o.timeout)?;
    let offsets = |group: &str, topic: &str| {
        reader.committed(&config.prod, group, topic).map_err(|source| MigrateError::Offsets {
            group: group.to_owned(),
            topic: topic.to_owned(),
            source: Box::new(source),
        })
    };
    let group_at = offsets(o.group, source)?;
    let target_at = offsets(o.group, target)?;
    let bridge_at = offsets(&config.bridge.group_id, &route.topic)?;
    let marks = reader.watermarks(&service.output_topic)?;
    let raw_marks = reader.watermarks(&route.topic)?;
    if marks.is_empty() {
        return Err(MigrateError::NoOutput(service.output_topic.clone()));
    }
    if marks.len() != raw_marks.len() {
        return Err(MigrateError::Partitions {
            raw: route.topic.clone(),
            raw_count: raw_marks.len(),
            filtered: service.output_topic.clone(),
            filtered_count: marks.len(),
        });
    }
    let (map_starts, note) = map_starts(config, ri, marks.keys().copied());
    let read_from = o.since.map(|d| crate::clock::now_ms() - d.as_millis() as i64 - SINCE_SLACK_MS);
    let outputs = by_partition(reader.read(&service.output_topic, read_from, true)?);
    let inputs = by_partition(reader.read(&route.topic, read_from, true)?);

    let names = Names { raw: &route.topic, filtered: &service.output_topic };
    let none = Vec::new();
    let plans: Vec<PartitionPlan> = marks
        .iter()
        .map(|(&p, &(low, high))| {
            let read = outputs.get(&p).unwrap_or(&none);
            let map = OffsetMap::build(inputs.get(&p).unwrap_or(&none), read, exact_identity);
            // Some brokers (tansu) report a high watermark per batch: what was read counts too.
            let output_high = high.max(read.last().map_or(0, |r| r.offset + 1));
            // With a window, nothing before the first output read is known.
            let output_start = match read_from {
                None => low,
                Some(_) => read.first().map_or(output_high, |r| r.offset).max(low),
            };
            let facts = Facts {
                partition: p,
                group_at: group_at.get(&p).copied(),
                target_at: target_at.get(&p).copied(),
                bridge_at: bridge_at.get(&p).copied(),
                map_start: map_starts.get(&p).copied(),
                input_start: raw_marks.get(&p).map_or(0, |(low, _)| *low),
                output_start,
                output_high,
            };
            plan::plan(o.direction, &facts, &map, names)
        })
        .collect();

    let mut text = format!("group {:?} on prod: {source} -> {target}\n", o.group);
    text.push_str(&plan::render(&plans, source, target));
    if let Some(n) = note {
        text.push_str(&format!("note: {n}\n"));
    }
    let refused = plans.iter().filter(|p| matches!(p.step, Step::Refuse(_))).count();
    if refused > 0 {
        return Err(MigrateError::Refused { group: o.group.to_owned(), partitions: refused, plan: text });
    }
    if plans.iter().all(|p| matches!(p.step, Step::Skip(_))) {
        return Err(MigrateError::NothingCommitted { group: o.group.to_owned(), topic: source.clone() });
    }
    let changes: Vec<(i32, i64)> = plans
        .iter()
        .filter(|p| p.changes())
        .filter_map(|p| match p.step {
            Step::Move { to, .. } => Some((p.partition, to)),
            _ => None,
        })
        .collect();
    if o.dry_run {
        text.push_str(&format!("dry run: {} partition(s) would change; nothing committed\n", changes.len()));
        return Ok(text);
    }
    if changes.is_empty() {
        text.push_str("nothing to change: the group is already there\n");
        return Ok(text);
    }
    // A member that came and went while the topics were read moved the offsets the plan is
    // made from: check both again right before committing.
    ensure_stopped(&client, o.group)?;
    if offsets(o.group, source)? != group_at || offsets(o.group, target)? != target_at {
        return Err(MigrateError::Moved { group: o.group.to_owned() });
    }
    let mut tpl = TopicPartitionList::new();
    for &(p, to) in &changes {
        tpl.add_partition_offset(target, p, Offset::Offset(to)).map_err(kafka("offsets"))?;
    }
    client.commit(&tpl, CommitMode::Sync).map_err(kafka("commit"))?;
    let now = offsets(o.group, target)?;
    for &(p, to) in &changes {
        if now.get(&p) != Some(&to) {
            return Err(MigrateError::NotApplied {
                group: o.group.to_owned(),
                topic: target.clone(),
                partition: p,
                want: to,
                found: now.get(&p).copied(),
            });
        }
    }
    text.push_str(&format!(
        "committed {} partition(s) of {target}; the group's offsets on {source} are left as they were\n",
        changes.len()
    ));
    Ok(text)
}

/// With `--since`, topics are read from this much earlier, as `verify` reads them.
const SINCE_SLACK_MS: i64 = 5 * 60 * 1000;

/// The route and service named, with the route's index in the config.
pub fn find<'c>(
    config: &'c Config,
    route: &str,
    service: &str,
) -> Result<(usize, &'c Route, &'c Service), MigrateError> {
    let names = |it: &mut dyn Iterator<Item = &str>| it.collect::<Vec<_>>().join(", ");
    let Some((ri, r)) = config.routes.iter().enumerate().find(|(_, r)| r.topic == route) else {
        let known = names(&mut config.routes.iter().map(|r| r.topic.as_str()));
        return Err(MigrateError::NoRoute { route: route.to_owned(), known });
    };
    let Some(s) = r.services.iter().find(|s| s.name == service) else {
        let known = names(&mut r.services.iter().map(|s| s.name.as_str()));
        return Err(MigrateError::NoService { route: route.to_owned(), service: service.to_owned(), known });
    };
    Ok((ri, r, s))
}

/// A group is stopped when the coordinator lists no member and no rebalance.
fn ensure_stopped(client: &BaseConsumer, group: &str) -> Result<(), MigrateError> {
    let list = client.fetch_group_list(Some(group), GROUP_TIMEOUT).map_err(|source| MigrateError::Kafka {
        group: group.to_owned(),
        what: "describe group",
        source,
    })?;
    for g in list.groups().iter().filter(|g| g.name() == group) {
        let members: Vec<String> =
            g.members().iter().map(|m| format!("{} ({} at {})", m.id(), m.client_id(), m.client_host())).collect();
        if !members.is_empty() || !matches!(g.state(), "" | "Empty" | "Dead") {
            let members = if members.is_empty() { String::new() } else { format!("; members: {}", members.join(", ")) };
            return Err(MigrateError::Active { group: group.to_owned(), state: g.state().to_owned(), members });
        }
    }
    Ok(())
}

/// The first input offset with a recorded decision, per partition; and why there are none.
fn map_starts(
    config: &Config,
    ri: usize,
    partitions: impl Iterator<Item = i32>,
) -> (BTreeMap<i32, i64>, Option<String>) {
    let topic = &config.routes[ri].topic;
    let mut reader = match DecisionReader::new(config) {
        Ok(r) => r,
        Err(e) => return (BTreeMap::new(), Some(format!("decision log of {topic} not read: {e}"))),
    };
    let mut starts = BTreeMap::new();
    for p in partitions {
        match reader.load((ri, p), 0) {
            Ok(chain) => {
                if let Some(pin) = chain.first() {
                    starts.insert(p, pin.from);
                }
            }
            Err(e) => return (starts, Some(format!("decision log of {topic}[{p}] not read: {e}"))),
        }
    }
    (starts, None)
}

fn by_partition(records: Vec<Record>) -> BTreeMap<i32, Vec<Record>> {
    let mut out: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
    for r in records {
        out.entry(r.partition).or_default().push(r);
    }
    out
}
