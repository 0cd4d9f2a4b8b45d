//! `tenancy-bridge explain`: where a user's events of a route would go now, and why; or where
//! one input record went for each service, by which recorded decision.
//!
//! Read-only. A record is found on its outputs as `verify` and `migrate` find it: by identity,
//! in partition order ([`crate::migrate::plan::OffsetMap`]).

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use crate::clock::{format_rfc3339_ms, now_ms};
use crate::config::{Config, Route, UpstreamStamps};
use crate::decision_log::DecisionReader;
use crate::environment;
use crate::extract::{RecordView, TenancyKey};
use crate::headers::{OUTBOX_INPUT_OFFSET, OUTBOX_OUTPUT, Provenance, dead_letter as dlq};
use crate::migrate::plan::OffsetMap;
use crate::tenancy::{self, Reason};
use crate::verify::check::{Record, Rules, exact_identity, identity};
use crate::verify::{ClusterReader, ReadError, volatile_headers};
use crate::whitelist::Snapshot;

pub enum Subject {
    User(String),
    Record { partition: i32, offset: i64 },
}

pub struct Options<'a> {
    pub route: &'a str,
    pub subject: Subject,
    pub idle: Duration,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("route {route:?} is not in the config (routes: {known})")]
    NoRoute { route: String, known: String },
    #[error("the whitelist could not be read: {0}")]
    Whitelist(String),
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// The answer: readable text, and the same as JSON.
pub struct Explanation {
    pub text: String,
    pub json: Value,
}

pub fn run(config: &Config, o: &Options<'_>) -> Result<Explanation, ExplainError> {
    let Some((ri, route)) = config.routes.iter().enumerate().find(|(_, r)| r.topic == o.route) else {
        let known = config.routes.iter().map(|r| r.topic.as_str()).collect::<Vec<_>>().join(", ");
        return Err(ExplainError::NoRoute { route: o.route.to_owned(), known });
    };
    match &o.subject {
        Subject::User(user) => explain_user(config, route, user),
        Subject::Record { partition, offset } => explain_record(config, ri, route, *partition, *offset, o),
    }
}

/// The whitelist the bridge would read now, and, when asked for a user and a Config Mapper
/// keeps an audit, who last changed that user's entry.
fn current_whitelist(config: &Config, audit_of: Option<&str>) -> Result<(Snapshot, Option<String>), ExplainError> {
    let failed = |e: &dyn std::fmt::Display| ExplainError::Whitelist(e.to_string());
    if let Some(path) = &config.whitelist.file {
        return Ok((crate::whitelist::load_file(path).map_err(|e| failed(&e))?, None));
    }
    let url = config.whitelist.url.as_deref().unwrap_or_default();
    let client = crate::whitelist::source::client(url, &config.whitelist).map_err(|e| failed(&e))?;
    let snapshot = match client.snapshot(None).map_err(|e| failed(&e))? {
        crate::whitelist::client::SnapshotAnswer::Changed { snapshot, .. } => snapshot,
        crate::whitelist::client::SnapshotAnswer::NotModified => Snapshot::empty(),
    };
    let Some(user) = audit_of else { return Ok((snapshot, None)) };
    let audit = client.audit().ok().and_then(|records| {
        let last = records.into_iter().filter(|r| r.user == user).max_by_key(|r| r.id)?;
        let why = last.reason.map(|r| format!(": {r}")).unwrap_or_default();
        Some(format!("last change: {} by {} at {}{why}", last.action, last.who, last.at))
    });
    Ok((snapshot, audit))
}

/// The environments with a live placement in the whitelist the bridge would read now.
pub fn current_envs(config: &Config) -> Result<Vec<String>, ExplainError> {
    let (snapshot, _) = current_whitelist(config, None)?;
    Ok(snapshot.live_envs(now_ms()).iter().map(|e| e.to_string()).collect())
}

fn explain_user(config: &Config, route: &Route, user: &str) -> Result<Explanation, ExplainError> {
    let (snapshot, audit) = current_whitelist(config, Some(user))?;
    let now = now_ms();
    let entry = snapshot.entry(user);
    let mode = format!("{:?}", config.whitelist.mode).to_lowercase();
    let mut text =
        format!("user {user:?} on route {} (whitelist version {}, {mode} mode)\n", route.topic, snapshot.version());
    match entry {
        Some(e) if e.is_live(now) => {
            for p in e.placements.iter().filter(|p| p.is_live(now)) {
                let _ = writeln!(
                    text,
                    "  whitelisted for {} in environment {} until {}",
                    p.services.join(", "),
                    p.env,
                    format_rfc3339_ms(p.expires_at_ms)
                );
            }
        }
        Some(e) => {
            let _ = writeln!(
                text,
                "  entry expired at {}: treated as not whitelisted",
                format_rfc3339_ms(e.expires_at_ms())
            );
        }
        None => text.push_str("  not whitelisted\n"),
    }
    if let Some(a) = &audit {
        let _ = writeln!(text, "  {a}");
    }
    let mut services = Vec::new();
    for s in &route.services {
        let placed = entry.and_then(|e| e.placement_of(&s.name, now));
        let (cluster, topic, env, why) = match placed {
            Some(p) => (
                "rush",
                environment::rush_topic(&p.env, &s.output_topic),
                Some(&*p.env),
                format!(
                    "whitelisted for {} in environment {} until {}",
                    s.name,
                    p.env,
                    format_rfc3339_ms(p.expires_at_ms)
                ),
            ),
            None if entry.is_some_and(|e| e.is_live(now)) => {
                ("prod", s.output_topic.clone(), None, format!("whitelisted, but not for {}", s.name))
            }
            None => ("prod", s.output_topic.clone(), None, "not whitelisted".to_owned()),
        };
        let _ = writeln!(text, "  {:<16} -> {cluster}:{topic}  ({why})", s.name);
        services.push(json!({"service": s.name, "cluster": cluster, "topic": topic, "env": env, "why": why}));
    }
    let stamps = match route.upstream_stamps {
        UpstreamStamps::Verify => "is honoured only for the (user, service) pairs the whitelist holds",
        UpstreamStamps::Trust => "is honoured over the whitelist (upstream_stamps = \"trust\")",
        UpstreamStamps::Ignore => "is decided by its user, the stamp ignored (upstream_stamps = \"ignore\")",
    };
    let _ = writeln!(
        text,
        "  an event already stamped upstream (event_tenancy) {stamps}; one with no usable user goes to prod"
    );
    let json = json!({
        "route": route.topic, "user": user, "whitelist_version": snapshot.version(), "mode": mode,
        "expires_at": entry.map(|e| format_rfc3339_ms(e.expires_at_ms())), "audit": audit, "services": services,
    });
    Ok(Explanation { text, json })
}

/// Where one service's copy of the record is.
fn locate(
    s: usize,
    route: &Route,
    input: &Record,
    found: &Found,
    rules: &Rules<'_>,
    partition_inputs: &[Record],
) -> (String, Option<i64>) {
    let name = &route.services[s].output_topic;
    let rush_name = &found.rush_topics[s];
    let p = input.partition;
    let on = |records: &[Record], identity: &dyn Fn(&Record) -> u64| {
        let outs: Vec<Record> = records.iter().filter(|r| r.partition == p).cloned().collect();
        OffsetMap::build(partition_inputs, &outs, identity).output_of(input.offset)
    };
    // Prod copies are byte for byte; Rush copies are stamped and carry their own trace context.
    if let Some(at) = on(&found.outputs[s].0, &exact_identity) {
        return (format!("on prod {name}[{p}]@{at}"), Some(at));
    }
    let strip = route.stamp.payload();
    if let Some(at) = on(&found.outputs[s].1, &|r| identity(r, rules, strip)) {
        return (format!("on rush {rush_name}[{p}]@{at}"), Some(at));
    }
    let offset = input.offset.to_string();
    let waiting = found.outbox.iter().find(|r| {
        r.partition == p
            && r.header(OUTBOX_INPUT_OFFSET) == Some(offset.as_bytes())
            && r.header(OUTBOX_OUTPUT) == Some(name.as_bytes())
    });
    if let Some(w) = waiting {
        return (format!("waiting for the Rush lane in the outbox {}[{p}]@{}", route.outbox_topic, w.offset), None);
    }
    let partition = p.to_string();
    let dead = found.dead_letters.iter().find(|r| {
        r.header(dlq::TOPIC) == Some(route.topic.as_bytes())
            && r.header(dlq::PARTITION) == Some(partition.as_bytes())
            && r.header(dlq::OFFSET) == Some(offset.as_bytes())
            && r.header(dlq::OUTPUT) == Some(name.as_bytes())
    });
    if let Some(d) = dead {
        let reason = d.header(dlq::REASON).map(String::from_utf8_lossy).unwrap_or_default();
        return (format!("dead-lettered ({reason}) at {}@{}", d.partition, d.offset), None);
    }
    ("on neither cluster".to_owned(), None)
}

/// What was read for one record.
struct Found {
    outputs: Vec<(Vec<Record>, Vec<Record>)>,
    /// Per service: the Rush topic read (the decided environment's).
    rush_topics: Vec<String>,
    outbox: Vec<Record>,
    dead_letters: Vec<Record>,
}

fn explain_record(
    config: &Config,
    ri: usize,
    route: &Route,
    partition: i32,
    offset: i64,
    o: &Options<'_>,
) -> Result<Explanation, ExplainError> {
    let prod = ClusterReader::new(&config.prod, "prod", o.idle, o.timeout)?;
    let rush = ClusterReader::new(&config.rush, "rush", o.idle, o.timeout)?;
    let at = format!("{}[{partition}]@{offset}", route.topic);
    let bridge_at = prod.committed(&config.prod, &config.bridge.group_id, &route.topic)?.get(&partition).copied();
    let low = prod.watermarks(&route.topic)?.get(&partition).map_or(0, |(low, _)| *low);
    let plain = |text: String, state: &str| Explanation {
        json: json!({"route": route.topic, "partition": partition, "offset": offset, "state": state, "text": text.trim()}),
        text,
    };
    if offset < low {
        return Ok(plain(format!("{at}: deleted by retention (the partition starts at {low})\n"), "deleted"));
    }
    let mut found =
        Found { outputs: Vec::new(), rush_topics: Vec::new(), outbox: Vec::new(), dead_letters: Vec::new() };
    for s in &route.services {
        found.outputs.push((prod.read(&s.output_topic, None, false)?, rush.read(&s.output_topic, None, false)?));
        found.rush_topics.push(s.output_topic.clone());
    }
    found.outbox = prod.read(&route.outbox_topic, None, false)?;
    found.dead_letters = prod.read(&config.bridge.dead_letter_topic, None, false)?;
    // Inputs last: every output read has its input among them.
    let inputs: Vec<Record> =
        prod.read(&route.topic, None, true)?.into_iter().filter(|r| r.partition == partition).collect();
    let Some(input) = inputs.iter().find(|r| r.offset == offset) else {
        // Read to the end, not by the high watermark: some brokers report it per batch.
        let end = inputs.last().map_or(low, |r| r.offset + 1);
        let text = if offset >= end {
            format!("{at}: not written yet (the partition ends at {end})\n")
        } else {
            format!("{at}: no record at this offset (a transaction marker, or an aborted record)\n")
        };
        return Ok(plain(text, if offset >= end { "not written" } else { "no record" }));
    };

    let key = TenancyKey::new(&config.bridge.tenancy_header);
    let provenance = Provenance::new(config);
    let volatile = volatile_headers(&provenance);
    let rules = Rules { tenancy: &key, volatile_headers: &volatile };
    let view = RecordView { key: input.key.as_deref(), payload: input.payload.as_deref(), headers: input };
    let chain = DecisionReader::new(config).and_then(|mut r| r.load((ri, partition), offset));
    let pin = chain.as_ref().ok().and_then(|chain| chain.covering(offset).cloned());
    let no_pin = match &chain {
        Err(e) => format!("the decision log could not be read ({e})"),
        Ok(c) if c.first().is_some_and(|first| first.from > offset) => {
            format!("it is before the first decision on record (offset {})", c.first().map_or(0, |f| f.from))
        }
        Ok(_) => "no decision on record".to_owned(),
    };
    let relayed = bridge_at.is_some_and(|b| offset < b);
    let mut text = at.clone();
    let (decision, basis) = match &pin {
        Some(pin) => {
            let d = tenancy::decide(route, &view, &*pin.epoch.snapshot, pin.epoch.clock_ms, &key);
            let basis = format!(
                "decided by the whitelist pinned from offset {} (version {}, read at {})",
                pin.from,
                pin.epoch.snapshot.version(),
                format_rfc3339_ms(pin.epoch.clock_ms)
            );
            (d, basis)
        }
        None => {
            let (snapshot, _) = current_whitelist(config, None)?;
            let d = tenancy::decide(route, &view, &snapshot, now_ms(), &key);
            (d, format!("{no_pin}: with today's whitelist (version {})", snapshot.version()))
        }
    };
    let user = decision.user.as_deref().unwrap_or("-").to_owned();
    let reason = match decision.reason {
        Reason::Whitelist => format!("user {user}, looked up in the whitelist"),
        Reason::Upstream if decision.rejected.is_empty() => format!("stamped upstream for user {user}"),
        Reason::Upstream => format!(
            "stamped upstream for user {user}, not honoured for {} (the whitelist did not hold them)",
            decision
                .rejected
                .iter()
                .filter_map(|i| route.services.get(i))
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Reason::Passthrough(p) => format!("production traffic ({})", p.as_str()),
    };
    // A copy decided for another environment than the default one is in that environment's topic.
    for (s, svc) in route.services.iter().enumerate() {
        let env = decision.envs.of(s);
        if decision.cluster(s) == tenancy::Cluster::Rush && !environment::is_default(env) {
            let topic = environment::rush_topic(env, &svc.output_topic);
            found.outputs[s].1 = rush.read(&topic, None, false).unwrap_or_default();
            found.rush_topics[s] = topic;
        }
    }
    let located: Vec<(String, Option<i64>)> =
        (0..route.services.len()).map(|s| locate(s, route, input, &found, &rules, &inputs)).collect();
    let state = match (relayed, located.iter().any(|(_, at)| at.is_some())) {
        (true, _) => "relayed",
        (false, true) => "in flight",
        (false, false) => "not relayed yet",
    };
    let _ = writeln!(
        text,
        ": {state} (the bridge is at {}); {reason}; {basis}",
        bridge_at.map_or_else(|| "no committed offset".to_owned(), |b| b.to_string())
    );
    let mut services = Vec::new();
    for ((s, svc), (where_, output_offset)) in route.services.iter().enumerate().zip(located) {
        let cluster = decision.cluster(s);
        let (verb, where_) = match (relayed, output_offset) {
            (true, _) => ("decided", where_),
            (false, Some(_)) => ("would go to", where_),
            (false, None) => ("would go to", "not relayed yet".to_owned()),
        };
        let env = (cluster == tenancy::Cluster::Rush).then(|| decision.envs.of(s));
        let in_env = env.map(|e| format!(" (environment {e})")).unwrap_or_default();
        let _ = writeln!(text, "  {:<16} {verb} {}{in_env}: {where_}", svc.name, cluster.as_str());
        services.push(json!({
            "service": svc.name, "cluster": cluster.as_str(), "env": env, "found": where_, "output_offset": output_offset,
        }));
    }
    let json = json!({
        "route": route.topic, "partition": partition, "offset": offset, "state": state, "user": decision.user,
        "reason": reason, "basis": basis, "bridge_at": bridge_at, "services": services,
    });
    Ok(Explanation { text, json })
}
