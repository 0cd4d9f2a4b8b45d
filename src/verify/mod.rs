//! `tenancy-bridge verify`: reads route inputs and both clusters' outputs and reports every
//! violation of the invariant, per route and service. [`check`] judges; this module reads.
//!
//! Order of reads: the bridge group's committed offsets, then the inputs (those are judged),
//! then the outputs, then the inputs again; records found only by the second read explain
//! outputs of events that arrived meanwhile and are not judged. A read that cannot reach a
//! partition's end is an error, never a silently shorter report. An input not delivered yet is "pending", not missing, unless the
//! bridge's group already committed past it and no Rush copy of it waits in the outbox for the
//! Rush lane.

pub mod check;
mod read;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use check::{Inputs, Locators, Record, ReturnReport, Rules, ServiceReport};
pub use read::{ClusterReader, ReadError, record_of};

use crate::config::Config;
use crate::decision_log::DecisionReader;
use crate::extract::TenancyKey;
use crate::headers::{OUTBOX_INPUT_OFFSET, OUTBOX_OUTPUT, Provenance, dead_letter as dlq};
use crate::pinning::Chain;

pub struct Options {
    /// Judge only records whose timestamp is at most this old.
    pub since: Option<Duration>,
    /// The bridge's group (default `bridge.group_id`), for committed offsets.
    pub group: Option<String>,
    /// A read with no high watermark to go by ends after this much quiet.
    pub idle: Duration,
    /// Longest time spent reading one topic.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self { since: None, group: None, idle: Duration::from_secs(2), timeout: Duration::from_secs(300) }
    }
}

#[derive(Debug, Clone)]
pub struct RouteReport {
    pub topic: String,
    pub services: Vec<ServiceReport>,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub routes: Vec<RouteReport>,
    /// Per return route, and how many Rush records carried its own provenance (dropped by design).
    pub returns: Vec<(ReturnReport, usize)>,
    /// What could not be read and weakens the judgement (no decision log: lookup mode, an
    /// older bridge).
    pub notes: Vec<String>,
}

impl Report {
    pub fn violations(&self) -> usize {
        let fwd: usize = self.routes.iter().flat_map(|r| &r.services).map(|s| s.violations.len()).sum();
        fwd + self.returns.iter().map(|(r, _)| r.violations.len()).sum::<usize>()
    }

    /// A table per route, then every violation (the first `max_listed` per service).
    pub fn render(&self, max_listed: usize) -> String {
        let mut s = String::new();
        for r in &self.routes {
            let inputs = r.services.first().map_or(0, |x| x.inputs);
            let _ = writeln!(s, "route {} ({inputs} input records)", r.topic);
            let _ = writeln!(
                s,
                "  {:<20} {:>9} {:>9} {:>9} {:>9} {:>11} {:>13}",
                "service", "prod", "rush", "pending", "pinned", "violations", "dead-letter"
            );
            for x in &r.services {
                let _ = writeln!(
                    s,
                    "  {:<20} {:>9} {:>9} {:>9} {:>9} {:>11} {:>13}",
                    x.service,
                    x.prod,
                    x.rush,
                    x.pending,
                    x.pinned,
                    x.violations.len(),
                    x.dead_lettered
                );
            }
        }
        for (r, looped) in &self.returns {
            let _ = writeln!(
                s,
                "return path {}: {} Rush records, {} on prod, {} pending, {} dead-lettered, {looped} dropped as loops, \
                 {} violations",
                r.topic,
                r.rush_records,
                r.forwarded,
                r.pending,
                r.dead_lettered,
                r.violations.len()
            );
        }
        let lists = self
            .routes
            .iter()
            .flat_map(|r| r.services.iter().map(move |x| (format!("{} -> {}", r.topic, x.service), &x.violations)))
            .chain(self.returns.iter().map(|(r, _)| (format!("return path {}", r.topic), &r.violations)));
        for (what, violations) in lists {
            for v in violations.iter().take(max_listed) {
                let _ = writeln!(s, "VIOLATION {what}: {v}");
            }
            if violations.len() > max_listed {
                let _ = writeln!(s, "VIOLATION {what}: … and {} more", violations.len() - max_listed);
            }
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        match self.violations() {
            0 => s.push_str("invariant held\n"),
            n => {
                let _ = writeln!(s, "invariant VIOLATED: {n} violations");
            }
        }
        s
    }

    pub fn to_json(&self) -> serde_json::Value {
        let violations = |v: &[check::Violation]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        serde_json::json!({
            "violations": self.violations(),
            "routes": self.routes.iter().map(|r| serde_json::json!({
                "topic": r.topic,
                "services": r.services.iter().map(|x| serde_json::json!({
                    "service": x.service, "inputs": x.inputs, "prod": x.prod, "rush": x.rush,
                    "pending": x.pending, "pinned": x.pinned, "dead_lettered": x.dead_lettered,
                    "violations": violations(&x.violations),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "notes": self.notes,
            "return_paths": self.returns.iter().map(|(r, looped)| serde_json::json!({
                "topic": r.topic, "rush_records": r.rush_records, "forwarded": r.forwarded,
                "pending": r.pending, "dead_lettered": r.dead_lettered, "dropped_as_loops": looped, "violations": violations(&r.violations),
            })).collect::<Vec<_>>(),
        })
    }
}

const OUTBOX_HEADERS: Locators<'static> =
    Locators { input_topic: None, partition: None, offset: OUTBOX_INPUT_OFFSET, output: OUTBOX_OUTPUT };
const DEAD_LETTER_HEADERS: Locators<'static> = Locators {
    input_topic: Some(dlq::TOPIC),
    partition: Some(dlq::PARTITION),
    offset: dlq::OFFSET,
    output: dlq::OUTPUT,
};

/// Headers the bridge may add or rewrite on a copy; they do not make an output another record.
const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// The headers a copy may carry that its input did not: trace context, return-path provenance.
pub fn volatile_headers(provenance: &Provenance) -> [&str; 4] {
    [TRACE_HEADERS[0], TRACE_HEADERS[1], provenance.origin.as_str(), provenance.topic.as_str()]
}

/// With `--since`, inputs and outputs are read from this much earlier, so records whose
/// timestamps are out of order around the window start are still found.
const SINCE_SLACK_MS: i64 = 5 * 60 * 1000;

pub fn run(config: &Config, opts: &Options) -> Result<Report, ReadError> {
    let prod = ClusterReader::new(&config.prod, "prod", opts.idle, opts.timeout)?;
    let rush = ClusterReader::new(&config.rush, "rush", opts.idle, opts.timeout)?;
    let group = opts.group.as_deref().unwrap_or(&config.bridge.group_id);
    let lane_group = config.bridge.rush_group_id.clone().unwrap_or_else(|| format!("{group}.rush"));
    let since_ms = opts.since.map(|d| crate::clock::now_ms() - d.as_millis() as i64);
    let read_from = since_ms.map(|s| s - SINCE_SLACK_MS);
    let key = TenancyKey::new(&config.bridge.tenancy_header);
    let provenance = Provenance::new(config);
    let volatile = volatile_headers(&provenance);
    let rules = Rules { tenancy: &key, volatile_headers: &volatile };

    let mut report = Report { routes: Vec::new(), returns: Vec::new(), notes: Vec::new() };
    let mut decisions = DecisionReader::new(config);
    for (ri, route) in config.routes.iter().enumerate() {
        // Committed offsets first: anything the bridge commits later was written before the
        // outputs are read, so "committed and on neither cluster" is never a race.
        let committed = prod.committed(&config.prod, group, &route.topic)?;
        let rush_committed =
            if route.return_path { Some(rush.committed(&config.rush, group, &route.topic)?) } else { None };
        // The Rush lane's progress as prod knows it (under exactly-once prod learns it just after
        // Rush does): a copy at or past it may still be on its way, never one before it.
        let lane = prod.committed(&config.prod, &lane_group, &route.outbox_topic)?;
        // After this route's committed offsets: a dead letter of an input committed by then is in it.
        let dead_letters = prod.read(&config.bridge.dead_letter_topic, read_from, false)?;
        let first = prod.read(&route.topic, read_from, true)?;
        let raw_first = if route.return_path { Some(rush.read(&route.topic, read_from, false)?) } else { None };
        // Each service's Rush copies: the default environment's topic, then every other
        // environment's that Rush has, each record with its environment.
        let rush_topics = crate::topics::partition_counts(&config.rush, "rush").unwrap_or_default();
        let mut outputs = Vec::new();
        for s in &route.services {
            let mut copies = rush.read(&s.output_topic, read_from, false)?;
            let mut envs = vec![crate::environment::DEFAULT.to_owned(); copies.len()];
            for name in rush_topics.keys() {
                let Some(env) = crate::environment::of_rush_topic(name, &s.output_topic) else { continue };
                if crate::environment::is_default(env) {
                    continue;
                }
                let more = rush.read(name, read_from, false)?;
                envs.extend(std::iter::repeat_n(env.to_owned(), more.len()));
                copies.extend(more);
            }
            outputs.push((prod.read(&s.output_topic, read_from, false)?, copies, envs));
        }
        // After the Rush outputs: a copy the lane moves meanwhile is found in one or the other.
        let outbox = prod.read(&route.outbox_topic, read_from, false)?;
        let elsewhere = check::Elsewhere::default().waiting(&outbox, &lane, &OUTBOX_HEADERS).dead_lettered(
            &dead_letters,
            &route.topic,
            &DEAD_LETTER_HEADERS,
        );
        let (records, judged) = with_later(&prod, &route.topic, first, read_from, since_ms, |_| true)?;
        // After the outputs: a pin is on prod before any output it decides, so every output read
        // has its decision among these.
        let pins = match &mut decisions {
            Ok(reader) => recorded_pins(reader, ri, &route.topic, &records, &judged, &mut report.notes),
            Err(e) => {
                report.notes.push(format!("route {}: decision log not read ({e})", route.topic));
                BTreeMap::new()
            }
        };
        let inputs =
            Inputs { records: &records, judged: &judged, committed: &committed, window_start: since_ms, pins: &pins };
        let services = (0..route.services.len())
            .map(|i| {
                let (p, r, envs) = &outputs[i];
                check::check_service_in_envs(route, i, &inputs, (p, r, envs), &elsewhere, &rules)
            })
            .collect();
        report.routes.push(RouteReport { topic: route.topic.clone(), services });

        if let (Some(raw_first), Some(committed)) = (raw_first, rush_committed) {
            let came_back = |r: &Record| provenance.came_through(r, &route.topic);
            let forwarded: Vec<Record> = records.iter().filter(|r| came_back(r)).cloned().collect();
            // Records already carrying this topic's provenance are dropped by design (loops).
            let (raw, judged) = with_later(&rush, &route.topic, raw_first, read_from, since_ms, |r| !came_back(r))?;
            let looped = raw.iter().zip(&judged).filter(|(r, _)| came_back(r)).count();
            let none = BTreeMap::new();
            let inputs =
                Inputs { records: &raw, judged: &judged, committed: &committed, window_start: since_ms, pins: &none };
            let dead = check::dead_lettered_from(&dead_letters, &format!("rush:{}", route.topic), &DEAD_LETTER_HEADERS);
            report.returns.push((check::check_return(&route.topic, &inputs, &forwarded, &dead, &rules), looped));
        }
    }
    Ok(report)
}

/// The pins covering the judged inputs of route `ri`, per partition. A partition whose log
/// cannot be read is judged without them, and said so.
fn recorded_pins(
    reader: &mut DecisionReader,
    ri: usize,
    topic: &str,
    records: &[Record],
    judged: &[bool],
    notes: &mut Vec<String>,
) -> BTreeMap<i32, Chain> {
    let mut first: BTreeMap<i32, i64> = BTreeMap::new();
    for (r, _) in records.iter().zip(judged).filter(|(_, j)| **j) {
        first.entry(r.partition).or_insert(r.offset);
    }
    let mut pins = BTreeMap::new();
    for (partition, from) in first {
        match reader.load((ri, partition), from) {
            Ok(chain) => {
                pins.insert(partition, chain);
            }
            Err(e) => notes.push(format!("{topic}[{partition}]: decisions not read ({e})")),
        }
    }
    pins
}

/// `first` plus the records of `topic` written since it was read (a second read, for outputs
/// of events that arrived while the outputs were read), in (partition, offset) order, and which
/// are judged: those of the first read inside the window that `judge` accepts.
fn with_later(
    reader: &ClusterReader,
    topic: &str,
    first: Vec<Record>,
    read_from: Option<i64>,
    since_ms: Option<i64>,
    judge: impl Fn(&Record) -> bool,
) -> Result<(Vec<Record>, Vec<bool>), ReadError> {
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for r in &first {
        last.insert(r.partition, r.offset);
    }
    let in_window = |r: &Record| since_ms.is_none_or(|s| r.timestamp.is_some_and(|t| t >= s));
    let mut all: Vec<(Record, bool)> = first
        .into_iter()
        .map(|r| {
            let judged = in_window(&r) && judge(&r);
            (r, judged)
        })
        .collect();
    let again = reader.read(topic, read_from, false)?;
    all.extend(again.into_iter().filter(|r| last.get(&r.partition).is_none_or(|o| r.offset > *o)).map(|r| (r, false)));
    all.sort_by_key(|(r, _)| (r.partition, r.offset));
    Ok(all.into_iter().unzip())
}
