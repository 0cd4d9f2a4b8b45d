//! The invariant, checked on records read back (pure: no Kafka client here).
//!
//! Inputs carry no id, so an output is matched to its input by identity: partition, key,
//! timestamp, headers and payload, ignoring what the bridge may change on a Rush copy (the
//! tenancy stamp, trace context, return-path provenance). Within one partition an output stream
//! is matched greedily in order, so a record seen again is a duplicate and a record seen after a
//! later one is out of order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};

use crate::config::{Route, UpstreamStamps};
use crate::extract::{Headers, RecordView, TenancyKey};
use crate::json_scan::Found;
use crate::pinning::{Chain, Epoch};
use crate::tenancy::{self, Cluster, Reason};
use crate::whitelist::Whitelist;

/// One record as read from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: Option<i64>,
}

impl Record {
    /// The last value of header `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().rev().find(|(k, _)| k == name).and_then(|(_, v)| v.as_deref())
    }
}

impl Headers for Record {
    fn last(&self, name: &str) -> Option<&[u8]> {
        self.header(name)
    }
}

/// Where an input record is, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct At {
    pub partition: i32,
    pub offset: i64,
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}]@{}", self.partition, self.offset)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// On neither cluster, and the bridge's group has committed past it.
    Missing {
        input: At,
    },
    Duplicated {
        input: At,
        cluster: Cluster,
        copies: usize,
    },
    OnBoth {
        input: At,
    },
    /// Delivered after an output of a later input of its partition.
    OutOfOrder {
        input: At,
        cluster: Cluster,
        output_offset: i64,
    },
    /// On Rush although its decision cannot name Rush (no user, not JSON, upstream stamp for
    /// other services), or on prod although an upstream stamp names this service.
    WrongCluster {
        input: At,
        cluster: Cluster,
        why: String,
    },
    Stamp {
        input: At,
        output_offset: i64,
        want: String,
        found: String,
    },
    /// On Rush, but in another environment than the one its recorded decision named.
    WrongEnvironment {
        input: At,
        want: String,
        found: String,
    },
    /// Copied to two environments.
    TwoEnvironments {
        input: At,
        first: String,
        second: String,
    },
    /// An output that matches no input of its partition.
    Unknown {
        cluster: Cluster,
        partition: i32,
        output_offset: i64,
    },
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing { input } => write!(f, "input {input}: missing on both clusters"),
            Self::Duplicated { input, cluster, copies } => {
                write!(f, "input {input}: duplicated, {copies} copies on {}", cluster.as_str())
            }
            Self::OnBoth { input } => write!(f, "input {input}: on both clusters"),
            Self::OutOfOrder { input, cluster, output_offset } => {
                write!(
                    f,
                    "input {input}: out of partition order on {} (output offset {output_offset})",
                    cluster.as_str()
                )
            }
            Self::WrongCluster { input, cluster, why } => {
                write!(f, "input {input}: on {}, but {why}", cluster.as_str())
            }
            Self::Stamp { input, output_offset, want, found } => {
                write!(f, "input {input}: Rush copy @{output_offset} stamped {found}, want {want:?}")
            }
            Self::TwoEnvironments { input, first, second } => {
                write!(f, "input {input}: in two environments, {first} and {second}")
            }
            Self::WrongEnvironment { input, want, found } => {
                write!(f, "input {input}: in environment {found}, but its recorded decision names {want}")
            }
            Self::Unknown { cluster, partition, output_offset } => write!(
                f,
                "{} output [{partition}]@{output_offset} matches no input record of its partition",
                cluster.as_str()
            ),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceReport {
    pub service: String,
    /// Input records judged.
    pub inputs: usize,
    /// Inputs delivered to prod / Rush (first copies).
    pub prod: usize,
    pub rush: usize,
    /// Inputs not delivered yet that the bridge has not committed, or whose Rush copy waits in
    /// the outbox for the Rush lane: in flight, not violations.
    pub pending: usize,
    /// Inputs an output refused (poison), found in the dead-letter topic: accounted for, not lost.
    pub dead_lettered: usize,
    /// Inputs whose cluster was judged by the decision recorded for them (the others decided
    /// by a whitelist may be on either cluster).
    pub pinned: usize,
    pub violations: Vec<Violation>,
}

/// What a check ignores and may rely on.
pub struct Rules<'a> {
    pub tenancy: &'a TenancyKey,
    /// Headers the bridge may add or rewrite on a copy (trace context, provenance).
    pub volatile_headers: &'a [&'a str],
}

/// Everyone listed for every service: the decision verify can reproduce without history.
struct Everyone(crate::whitelist::Entry);

impl Whitelist for Everyone {
    fn entry(&self, _: &str) -> Option<&crate::whitelist::Entry> {
        Some(&self.0)
    }
}

/// What an input's decision must be for one service, as far as it can be known afterwards.
enum Expect {
    /// Must be on prod (no usable user, or an upstream stamp not naming this service).
    Prod(String),
    /// Must be on Rush, stamped `stamp`, because `why`; in environment `env` when the decision
    /// is recorded.
    Rush { stamp: String, why: String, env: Option<String> },
    /// The whitelist at the time decided; if on Rush, stamped so.
    Either(String),
}

fn expect(route: &Route, everyone: &Everyone, service: usize, input: &Record, rules: &Rules<'_>) -> Expect {
    let view = RecordView { key: input.key.as_deref(), payload: input.payload.as_deref(), headers: input };
    let d = tenancy::decide(route, &view, everyone, 0, rules.tenancy);
    let mut stamp = String::new();
    if let Some(u) = &d.user {
        tenancy::tenancy_value(u, &route.services[service].name, &mut stamp);
    }
    match d.reason {
        Reason::Passthrough(p) => Expect::Prod(format!("it is production traffic ({})", p.as_str())),
        // Verified stamps are honoured only where the whitelist held the pair: the whitelist
        // of the time decided, as for any user.
        Reason::Upstream if d.cluster(service) == Cluster::Rush && route.upstream_stamps == UpstreamStamps::Verify => {
            Expect::Either(stamp)
        }
        Reason::Upstream if d.cluster(service) == Cluster::Rush => {
            Expect::Rush { stamp, why: "its upstream stamp names this service".into(), env: None }
        }
        Reason::Upstream => Expect::Prod("its upstream stamp does not name this service".into()),
        Reason::Whitelist if d.cluster(service) == Cluster::Rush => Expect::Either(stamp),
        // A payload-stamped route keeps an event it cannot stamp on prod.
        Reason::Whitelist => Expect::Prod("its payload cannot carry a stamp".into()),
    }
}

/// What the whitelist pinned for `input` decided for `service`: the decision the bridge made
/// (and made again on every replay).
fn recorded(route: &Route, service: usize, input: &Record, epoch: &Epoch, rules: &Rules<'_>, stamp: &str) -> Expect {
    let view = RecordView { key: input.key.as_deref(), payload: input.payload.as_deref(), headers: input };
    let d = tenancy::decide(route, &view, &*epoch.snapshot, epoch.clock_ms, rules.tenancy);
    let version = epoch.snapshot.version();
    let user = d.user.as_deref().unwrap_or_default();
    match d.cluster(service) {
        Cluster::Rush => Expect::Rush {
            stamp: stamp.to_owned(),
            why: format!("the whitelist pinned for it (version {version}) lists {user} for this service"),
            env: Some(d.envs.of(service).to_owned()),
        },
        Cluster::Prod => Expect::Prod(format!(
            "the whitelist pinned for it (version {version}) does not list {user} for this service"
        )),
    }
}

/// Identity of a record for matching: everything but what the bridge may change on a copy.
pub fn identity(r: &Record, rules: &Rules<'_>, strip_payload_stamp: bool) -> u64 {
    let skip = |k: &str| k == rules.tenancy.as_str() || rules.volatile_headers.contains(&k);
    match (&r.payload, strip_payload_stamp) {
        (Some(p), true) => identity_with(r, skip, Some(&without_member(p, rules.tenancy))),
        (p, _) => identity_with(r, skip, p.as_deref()),
    }
}

/// Identity of a record copied byte for byte (a prod output): every header counts, so two
/// events that differ only in an upstream stamp stay apart.
pub fn exact_identity(r: &Record) -> u64 {
    identity_with(r, |_| false, r.payload.as_deref())
}

fn identity_with(r: &Record, skip: impl Fn(&str) -> bool, payload: Option<&[u8]>) -> u64 {
    let mut h = foldhash::quality::FixedState::with_seed(0x7e4a).build_hasher();
    h.write_i32(r.partition);
    write_opt(&mut h, r.key.as_deref());
    h.write_i64(r.timestamp.unwrap_or(i64::MIN));
    for (k, v) in &r.headers {
        if skip(k) {
            continue;
        }
        h.write(k.as_bytes());
        h.write_u8(0xff);
        write_opt(&mut h, v.as_deref());
    }
    h.write_u8(0xfe);
    write_opt(&mut h, payload);
    h.finish()
}

fn write_opt(h: &mut impl Hasher, b: Option<&[u8]>) {
    match b {
        None => h.write_u8(0),
        Some(b) => {
            h.write_u8(1);
            h.write_usize(b.len());
            h.write(b);
        }
    }
}

/// The payload without its top-level tenancy member (and one adjacent comma), so an input and
/// its payload-stamped copy compare equal however the stamp was spliced in.
pub fn without_member(payload: &[u8], key: &TenancyKey) -> Vec<u8> {
    let Found::Value { start, end } = key.find_in(payload) else { return payload.to_vec() };
    let quoted = format!("\"{}\"", key.as_str());
    let mut k = start;
    while k > 0 && payload[k - 1].is_ascii_whitespace() {
        k -= 1;
    }
    if k == 0 || payload[k - 1] != b':' {
        return payload.to_vec();
    }
    k -= 1;
    while k > 0 && payload[k - 1].is_ascii_whitespace() {
        k -= 1;
    }
    let Some(key_start) = k.checked_sub(quoted.len()) else { return payload.to_vec() };
    if &payload[key_start..k] != quoted.as_bytes() {
        return payload.to_vec();
    }
    let after = payload[end..].iter().position(|b| !b.is_ascii_whitespace()).map(|i| end + i);
    let (cut_from, cut_to) = match after {
        Some(i) if payload[i] == b',' => (key_start, i + 1),
        _ => {
            let before = payload[..key_start].iter().rposition(|b| !b.is_ascii_whitespace());
            match before {
                Some(i) if payload[i] == b',' => (i, end),
                _ => (key_start, end),
            }
        }
    };
    let mut out = Vec::with_capacity(payload.len());
    out.extend_from_slice(&payload[..cut_from]);
    out.extend_from_slice(&payload[cut_to..]);
    out
}

/// Inputs of one partition by identity, in offset order.
type Index = HashMap<(i32, u64), Vec<usize>>;

/// Matches one output stream to the inputs, in order per partition. Returns, per matched output,
/// the input index; unmatched outputs are reported.
fn match_stream(
    all: &Inputs<'_>,
    index: &Index,
    outputs: &[Record],
    ids: impl Fn(&Record) -> u64,
    cluster: Cluster,
    copies: &mut [usize],
    violations: &mut Vec<Violation>,
) -> Vec<(usize, usize)> {
    let (inputs, window_start) = (all.records, all.window_start);
    let mut last: HashMap<i32, usize> = HashMap::new();
    let mut matched = Vec::new();
    for (oi, o) in outputs.iter().enumerate() {
        let Some(candidates) = index.get(&(o.partition, ids(o))) else {
            // Older than the window: its input was not read, so it proves nothing.
            let outside = window_start.is_some_and(|w| o.timestamp.is_some_and(|t| t < w));
            if !outside {
                violations.push(Violation::Unknown { cluster, partition: o.partition, output_offset: o.offset });
            }
            continue;
        };
        let floor = last.get(&o.partition).copied();
        let next = candidates.iter().copied().find(|&i| floor.is_none_or(|f| i > f) && copies[i] == 0);
        match next {
            Some(i) => {
                last.insert(o.partition, i);
                copies[i] += 1;
                matched.push((i, oi));
            }
            None => {
                // Seen before on this cluster: a duplicate; never seen: it came too late.
                let i = candidates.iter().copied().find(|&i| copies[i] == 0).unwrap_or(candidates[0]);
                if copies[i] == 0 {
                    let at = At { partition: inputs[i].partition, offset: inputs[i].offset };
                    violations.push(Violation::OutOfOrder { input: at, cluster, output_offset: o.offset });
                }
                copies[i] += 1;
            }
        }
    }
    matched
}

/// The input side of a check.
pub struct Inputs<'a> {
    /// Every input record read, in (partition, offset) order.
    pub records: &'a [Record],
    /// Which records are judged; the others (outside the time window, or written after the
    /// outputs were read) only explain outputs.
    pub judged: &'a [bool],
    /// The bridge group's committed next offset per partition, read before any output.
    pub committed: &'a BTreeMap<i32, i64>,
    /// Start of the time window, if any.
    pub window_start: Option<i64>,
    /// The decision log's pins per partition: which whitelist decided each offset.
    pub pins: &'a BTreeMap<i32, Chain>,
}

impl Inputs<'_> {
    fn index(&self, rules: &Rules<'_>, strip_payload_stamp: bool) -> Index {
        let mut index: Index = HashMap::new();
        for (i, r) in self.records.iter().enumerate() {
            index.entry((r.partition, identity(r, rules, strip_payload_stamp))).or_default().push(i);
        }
        index
    }

    fn judged(&self) -> impl Iterator<Item = (usize, &Record)> {
        self.records.iter().enumerate().filter(|(i, _)| self.judged.get(*i).copied().unwrap_or(false))
    }

    fn missing(&self, r: &Record) -> bool {
        self.committed.get(&r.partition).is_some_and(|&c| r.offset < c)
    }
}

/// Where an input with no output on either cluster may rightly be, for a service.
#[derive(Debug, Default)]
pub struct Elsewhere {
    /// Rush copies in the route's outbox that the Rush lane has not committed yet: the forward
    /// direction committed their inputs, but the copies reach Rush only when the lane gets to
    /// them (after a stop, or while Rush is away). Copies the lane committed past are not here:
    /// one of those missing on Rush is lost.
    waiting: HashSet<(i32, i64, Vec<u8>)>,
    /// Inputs whose output refused them (poison), written to the dead-letter topic instead.
    dead_lettered: HashSet<(i32, i64, Vec<u8>)>,
}

/// The headers that locate an outbox or dead-letter record's input and output.
pub struct Locators<'a> {
    pub input_topic: Option<&'a str>,
    pub partition: Option<&'a str>,
    pub offset: &'a str,
    pub output: &'a str,
}

impl Elsewhere {
    /// Adds the copies of `outbox` (as read from prod) at or past the Rush lane's committed
    /// offsets `lane`; an outbox record is in its input's partition.
    pub fn waiting(mut self, outbox: &[Record], lane: &BTreeMap<i32, i64>, h: &Locators<'_>) -> Self {
        let unsent = outbox.iter().filter(|r| r.offset >= lane.get(&r.partition).copied().unwrap_or(0));
        self.waiting.extend(unsent.filter_map(|r| locate(r, r.partition, h)));
        self
    }

    /// Adds the records of the dead-letter topic that came from `topic`.
    pub fn dead_lettered(mut self, dead: &[Record], topic: &str, h: &Locators<'_>) -> Self {
        let (Some(from), Some(partition)) = (h.input_topic, h.partition) else { return self };
        let ours = dead.iter().filter(|r| r.header(from) == Some(topic.as_bytes()));
        let parsed = ours.filter_map(|r| {
            let p = std::str::from_utf8(r.header(partition)?).ok()?.parse().ok()?;
            locate(r, p, h)
        });
        self.dead_lettered.extend(parsed);
        self
    }

    fn holds(set: &HashSet<(i32, i64, Vec<u8>)>, input: &Record, output_topic: &str) -> bool {
        !set.is_empty() && set.contains(&(input.partition, input.offset, output_topic.as_bytes().to_vec()))
    }
}

/// The (partition, offset) of each dead-letter record that came from `source`.
pub fn dead_lettered_from(dead: &[Record], source: &str, h: &Locators<'_>) -> HashSet<(i32, i64)> {
    let (Some(from), Some(partition)) = (h.input_topic, h.partition) else { return HashSet::new() };
    let number = |r: &Record, k: &str| std::str::from_utf8(r.header(k)?).ok()?.parse::<i64>().ok();
    dead.iter()
        .filter(|r| r.header(from) == Some(source.as_bytes()))
        .filter_map(|r| Some((i32::try_from(number(r, partition)?).ok()?, number(r, h.offset)?)))
        .collect()
}

fn locate(r: &Record, partition: i32, h: &Locators<'_>) -> Option<(i32, i64, Vec<u8>)> {
    let offset = std::str::from_utf8(r.header(h.offset)?).ok()?.parse().ok()?;
    Some((partition, offset, r.header(h.output)?.to_vec()))
}

/// Checks one service of `route` against its prod and Rush output topics (the default
/// environment's).
pub fn check_service(
    route: &Route,
    service: usize,
    inputs: &Inputs<'_>,
    (prod, rush): (&[Record], &[Record]),
    elsewhere: &Elsewhere,
    rules: &Rules<'_>,
) -> ServiceReport {
    check_service_in_envs(route, service, inputs, (prod, rush, &[]), elsewhere, rules)
}

/// [`check_service`] with the Rush outputs of every environment: `rush_envs[i]` is the
/// environment `rush[i]` was read from (the default one past its end). A copy whose recorded
/// decision named another environment is a violation.
pub fn check_service_in_envs(
    route: &Route,
    service: usize,
    inputs: &Inputs<'_>,
    (prod, rush, rush_envs): (&[Record], &[Record], &[String]),
    elsewhere: &Elsewhere,
    rules: &Rules<'_>,
) -> ServiceReport {
    let stamp_payload = route.stamp.payload();
    let index = inputs.index(rules, stamp_payload);
    let all = inputs.records;
    let mut report = ServiceReport {
        service: route.services[service].name.clone(),
        inputs: inputs.judged().count(),
        ..Default::default()
    };
    let mut on_prod = vec![0; all.len()];
    let mut on_rush = vec![0; all.len()];
    let v = &mut report.violations;
    let id = |r: &Record| identity(r, rules, stamp_payload);
    match_stream(inputs, &index, prod, id, Cluster::Prod, &mut on_prod, v);
    // Each environment's topic is its own stream (its own partition order); an input copied to
    // two environments is a violation like one on both clusters.
    let mut rush_matched = Vec::new();
    let mut env_of: Vec<Option<&str>> = vec![None; all.len()];
    let mut start = 0;
    while start < rush.len() {
        let env = rush_envs.get(start).map_or(crate::environment::DEFAULT, String::as_str);
        let len = (rush_envs.get(start..).unwrap_or_default().iter())
            .take_while(|e| e.as_str() == env)
            .count()
            .max(if start >= rush_envs.len() { rush.len() - start } else { 1 });
        let mut copies = vec![0; all.len()];
        let matched = match_stream(inputs, &index, &rush[start..start + len], id, Cluster::Rush, &mut copies, v);
        rush_matched.extend(matched.into_iter().map(|(i, oi)| (i, oi + start)));
        for (i, n) in copies.into_iter().enumerate().filter(|(_, n)| *n > 0) {
            on_rush[i] += n;
            match env_of[i] {
                Some(other) if other != env => {
                    let input = At { partition: all[i].partition, offset: all[i].offset };
                    v.push(Violation::TwoEnvironments { input, first: other.to_owned(), second: env.to_owned() });
                }
                _ => env_of[i] = Some(env),
            }
        }
        start += len;
    }

    let everyone = Everyone(crate::whitelist::Entry::new(
        route.services.iter().map(|s| s.name.as_str().into()).collect(),
        i64::MAX,
    ));
    let mut rush_copy: HashMap<usize, (&Record, &str)> = HashMap::new();
    for (i, oi) in rush_matched {
        let env = rush_envs.get(oi).map_or(crate::environment::DEFAULT, String::as_str);
        rush_copy.insert(i, (&rush[oi], env));
    }
    for (i, input) in inputs.judged() {
        let at = At { partition: input.partition, offset: input.offset };
        let (np, nr) = (on_prod[i], on_rush[i]);
        report.prod += usize::from(np > 0);
        report.rush += usize::from(nr > 0);
        match (np, nr) {
            (0, 0) => {
                let output = &route.services[service].output_topic;
                if Elsewhere::holds(&elsewhere.dead_lettered, input, output) {
                    report.dead_lettered += 1;
                } else if inputs.missing(input) && !Elsewhere::holds(&elsewhere.waiting, input, output) {
                    report.violations.push(Violation::Missing { input: at });
                } else {
                    report.pending += 1;
                }
                continue;
            }
            (p, r) if p > 0 && r > 0 => report.violations.push(Violation::OnBoth { input: at }),
            (p, _) if p > 1 => {
                report.violations.push(Violation::Duplicated { input: at, cluster: Cluster::Prod, copies: p })
            }
            (_, r) if r > 1 => {
                report.violations.push(Violation::Duplicated { input: at, cluster: Cluster::Rush, copies: r })
            }
            _ => {}
        }
        let cluster = if nr > 0 { Cluster::Rush } else { Cluster::Prod };
        let mut expected = expect(route, &everyone, service, input, rules);
        if let (Expect::Either(stamp), Some(pin)) =
            (&expected, inputs.pins.get(&input.partition).and_then(|c| c.covering(input.offset)))
        {
            report.pinned += 1;
            expected = recorded(route, service, input, &pin.epoch, rules, stamp);
        }
        match (expected, cluster) {
            (Expect::Prod(why), Cluster::Rush) => {
                report.violations.push(Violation::WrongCluster { input: at, cluster, why })
            }
            (Expect::Rush { why, .. }, Cluster::Prod) => {
                report.violations.push(Violation::WrongCluster { input: at, cluster, why })
            }
            (Expect::Rush { stamp: want, env: want_env, .. }, Cluster::Rush) => {
                if let Some((copy, env)) = rush_copy.get(&i) {
                    if let Some(want_env) = want_env.filter(|w| w != env) {
                        let found = (*env).to_owned();
                        report.violations.push(Violation::WrongEnvironment { input: at, want: want_env, found });
                    }
                    if let Some(found) = stamp_problem(route, copy, &want, rules) {
                        let output_offset = copy.offset;
                        report.violations.push(Violation::Stamp { input: at, output_offset, want, found });
                    }
                }
            }
            (Expect::Either(want), Cluster::Rush) => {
                if let Some((copy, _)) = rush_copy.get(&i) {
                    if let Some(found) = stamp_problem(route, copy, &want, rules) {
                        let output_offset = copy.offset;
                        report.violations.push(Violation::Stamp { input: at, output_offset, want, found });
                    }
                }
            }
            _ => {}
        }
    }
    report
}

/// `None` when `copy` carries `want` wherever the route stamps; else what it carries.
fn stamp_problem(route: &Route, copy: &Record, want: &str, rules: &Rules<'_>) -> Option<String> {
    let header = copy.last(rules.tenancy.as_str());
    let member = copy.payload.as_deref().and_then(|p| match rules.tenancy.find_in(p) {
        Found::Value { start, end } => serde_json::from_slice::<String>(&p[start..end]).ok(),
        _ => None,
    });
    let header_ok = !route.stamp.header() || header == Some(want.as_bytes());
    let payload_ok = !route.stamp.payload() || member.as_deref() == Some(want);
    if header_ok && payload_ok {
        return None;
    }
    Some(format!(
        "header {:?}, payload {:?}",
        header.map(String::from_utf8_lossy).unwrap_or_default(),
        member.unwrap_or_default()
    ))
}

/// The return path of one topic: every Rush record exactly once on prod, in partition order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReturnReport {
    pub topic: String,
    pub rush_records: usize,
    pub forwarded: usize,
    pub pending: usize,
    /// Rush records prod refused (poison), in the dead-letter topic.
    pub dead_lettered: usize,
    pub violations: Vec<Violation>,
}

/// `rush` are the Rush raw records, `prod` the prod raw topic's records carrying the
/// provenance of `topic` (the caller leaves the others out).
/// `dead_lettered` are the Rush records (partition, offset) prod refused, found in the dead-letter
/// topic.
pub fn check_return(
    topic: &str,
    rush: &Inputs<'_>,
    prod: &[Record],
    dead_lettered: &HashSet<(i32, i64)>,
    rules: &Rules<'_>,
) -> ReturnReport {
    let index = rush.index(rules, false);
    let mut report =
        ReturnReport { topic: topic.to_owned(), rush_records: rush.judged().count(), ..Default::default() };
    let mut copies = vec![0; rush.records.len()];
    let id = |r: &Record| identity(r, rules, false);
    let v = &mut report.violations;
    match_stream(rush, &index, prod, id, Cluster::Prod, &mut copies, v);
    for (i, r) in rush.judged() {
        let input = At { partition: r.partition, offset: r.offset };
        match copies[i] {
            0 if dead_lettered.contains(&(r.partition, r.offset)) => report.dead_lettered += 1,
            0 if rush.missing(r) => report.violations.push(Violation::Missing { input }),
            0 => report.pending += 1,
            1 => report.forwarded += 1,
            n => {
                report.forwarded += 1;
                report.violations.push(Violation::Duplicated { input, cluster: Cluster::Prod, copies: n });
            }
        }
    }
    report
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
