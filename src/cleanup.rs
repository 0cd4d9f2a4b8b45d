//! `tenancy-bridge cleanup --service S`: ends a Rush session for S. Removes S from every
//! whitelist entry and, with `delete_topics`, deletes S's per-service topics and the consumer
//! groups that read them on the Rush cluster. `--env E` ends environment E the same way: its
//! whitelist entries, its `{E}.…` topics and their groups. `--expired` reports the Rush topics
//! of environments the whitelist no longer has. Never touches the prod cluster. Idempotent.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::Config;
use crate::environment;
use crate::kafka::admin_config;
use crate::topics::partition_counts;
use crate::whitelist::client::{ClientError, MapperClient};
use crate::whitelist_cli::{CliError, token};

const TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("service {0:?} is not listed on any route of this config")]
    UnknownService(String),
    #[error("environment {0:?}: {1}")]
    Env(String, String),
    #[error(transparent)]
    Token(#[from] CliError),
    #[error("whitelist: {0}")]
    Mapper(#[from] ClientError),
    #[error("whitelist file {path}: {reason}")]
    File { path: String, reason: String },
    #[error(transparent)]
    Topics(#[from] crate::topics::TopicError),
    #[error("rush cluster: {what}: {source}")]
    Kafka { what: &'static str, source: KafkaError },
    #[error("some steps failed (see above); run again once fixed")]
    Incomplete,
}

/// What a cleanup ends.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A service's Rush session in the default environment.
    Service(&'a str),
    /// An environment: every service of it.
    Env(&'a str),
}

pub struct Options<'a> {
    pub target: Target<'a>,
    pub delete_topics: bool,
    pub dry_run: bool,
    /// Consumer groups to delete besides those found reading S's topics.
    pub groups: &'a [String],
    pub token_file: Option<&'a Path>,
}

/// What a cleanup did (or, dry, would do), and why it stopped early or is incomplete.
pub struct Outcome {
    pub text: String,
    pub error: Option<CleanupError>,
}

/// Runs the cleanup. A failing deletion is reported in the text and makes the outcome
/// [`CleanupError::Incomplete`] after the other steps have run.
pub fn run(config: &Config, o: &Options<'_>) -> Outcome {
    let mut text = String::new();
    let error = match steps(config, o, &mut text) {
        Ok(true) => None,
        Ok(false) => Some(CleanupError::Incomplete),
        Err(e) => Some(e),
    };
    Outcome { text, error }
}

/// The Rush topics `target` owns: a service's outputs, or everything an environment has
/// (outputs and raw topics, under its prefix).
fn topics_of(config: &Config, target: Target<'_>) -> Vec<String> {
    match target {
        Target::Service(service) => (config.routes.iter())
            .flat_map(|r| r.services.iter().filter(|s| s.name == service).map(|s| s.output_topic.clone()))
            .collect(),
        Target::Env(env) => (config.routes.iter())
            .flat_map(|r| {
                let raw = r.return_path.then_some(&r.topic);
                r.services.iter().map(|s| &s.output_topic).chain(raw).map(|t| environment::rush_topic(env, t))
            })
            .collect(),
    }
}

fn steps(config: &Config, o: &Options<'_>, out: &mut String) -> Result<bool, CleanupError> {
    if let Target::Env(env) = o.target {
        environment::check(env).map_err(|e| CleanupError::Env(env.to_owned(), e))?;
        if environment::is_default(env) {
            let why = "the default environment is ended per service (cleanup --service S)".to_owned();
            return Err(CleanupError::Env(env.to_owned(), why));
        }
    }
    let owned = topics_of(config, o.target);
    let topics: Vec<&str> = owned.iter().map(String::as_str).collect();
    // Explicit groups alone are fine: the service may have left the config already.
    if let (Target::Service(service), true) = (o.target, topics.is_empty() && o.groups.is_empty()) {
        return Err(CleanupError::UnknownService(service.to_owned()));
    }
    let verb = |done: &'static str, dry: &'static str| if o.dry_run { dry } else { done };
    let what = match o.target {
        Target::Service(s) => format!("service {s}"),
        Target::Env(e) => format!("environment {e}"),
    };
    let _ = writeln!(out, "cleanup of {what}{}", if o.dry_run { " (dry run: nothing changes)" } else { "" });
    let mut ok = match o.target {
        Target::Service(service) => whitelist(config, service, o, out, verb)?,
        Target::Env(env) => whitelist_env(config, env, o, out, verb)?,
    };
    if !o.delete_topics {
        let _ = writeln!(out, "rush topics and groups kept (pass --delete-topics to delete them)");
        return Ok(ok);
    }
    let admin: AdminClient<DefaultClientContext> = admin_config(&config.rush, "rush")
        .create()
        .map_err(|source| CleanupError::Kafka { what: "admin client", source })?;
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT)).request_timeout(Some(TIMEOUT));

    let mut groups = groups_reading(config, &topics)?;
    for g in o.groups {
        if !groups.contains(g) {
            groups.push(g.clone());
        }
    }
    groups.retain(|g| *g != config.bridge.group_id);
    if groups.is_empty() {
        let _ = writeln!(out, "rush groups: none read {}", topics.join(", "));
    }
    if !groups.is_empty() && !o.dry_run {
        let names: Vec<&str> = groups.iter().map(String::as_str).collect();
        let results = futures_executor::block_on(admin.delete_groups(&names, &opts))
            .map_err(|source| CleanupError::Kafka { what: "delete groups", source })?;
        for r in results {
            match r {
                Ok(g) => {
                    let _ = writeln!(out, "rush group {g}: deleted");
                }
                Err((g, RDKafkaErrorCode::GroupIdNotFound)) => {
                    let _ = writeln!(out, "rush group {g}: already gone");
                }
                Err((g, RDKafkaErrorCode::NonEmptyGroup)) => {
                    ok = false;
                    let _ = writeln!(
                        out,
                        "rush group {g}: NOT deleted, it still has members (stop the Rush instances first)"
                    );
                }
                Err((g, code)) => {
                    ok = false;
                    let _ = writeln!(out, "rush group {g}: NOT deleted: {code}");
                }
            }
        }
    } else {
        for g in &groups {
            let _ = writeln!(out, "rush group {g}: would delete");
        }
    }

    let existing = partition_counts(&config.rush, "rush")?;
    let present: Vec<&str> = topics.iter().copied().filter(|t| existing.contains_key(*t)).collect();
    for t in topics.iter().filter(|t| !existing.contains_key(**t)) {
        let _ = writeln!(out, "rush topic {t}: already gone");
    }
    if !ok {
        // Deleting topics under running Rush instances would break them mid-session.
        for t in &present {
            let _ = writeln!(out, "rush topic {t}: kept while its readers are still running");
        }
        return Ok(false);
    }
    if o.dry_run || present.is_empty() {
        for t in &present {
            let _ = writeln!(out, "rush topic {t}: would delete");
        }
        return Ok(ok);
    }
    let results = futures_executor::block_on(admin.delete_topics(&present, &opts))
        .map_err(|source| CleanupError::Kafka { what: "delete topics", source })?;
    for r in results {
        match r {
            Ok(t) => {
                let _ = writeln!(out, "rush topic {t}: {}", verb("deleted", "would delete"));
            }
            Err((t, RDKafkaErrorCode::UnknownTopicOrPartition)) => {
                let _ = writeln!(out, "rush topic {t}: already gone");
            }
            Err((t, code)) => {
                ok = false;
                let _ = writeln!(out, "rush topic {t}: NOT deleted: {code}");
            }
        }
    }
    Ok(ok)
}

/// Removes the service from every whitelist entry (Config Mapper or file).
fn whitelist(
    config: &Config,
    service: &str,
    o: &Options<'_>,
    out: &mut String,
    verb: impl Fn(&'static str, &'static str) -> &'static str,
) -> Result<bool, CleanupError> {
    if let Some(path) = &config.whitelist.file {
        return whitelist_file(path, o, out, &verb, |user, e| {
            let services = e.get_mut("services").and_then(|s| s.as_array_mut())?;
            let before = services.len();
            services.retain(|s| s.as_str() != Some(service));
            (services.len() != before).then(|| format!("{user}: {} {service}", verb("removed", "would remove")))
        });
    }
    let Some(url) = &config.whitelist.url else { return Ok(true) };
    let reader = MapperClient::new(url, None, TIMEOUT)?;
    let entries: Vec<_> = reader.list()?.into_iter().filter(|e| e.services.iter().any(|s| s == service)).collect();
    if entries.is_empty() {
        let _ = writeln!(out, "whitelist: nobody is whitelisted for {service}");
        return Ok(true);
    }
    let writer = if o.dry_run { None } else { Some(MapperClient::new(url, Some(token(o.token_file)?), TIMEOUT)?) };
    for e in entries {
        if let Some(w) = &writer {
            w.remove(&e.user, Some(service))?;
        }
        let left: Vec<&str> = e.services.iter().map(String::as_str).filter(|s| *s != service).collect();
        let rest = if left.is_empty() { "no services left".to_owned() } else { format!("keeps {}", left.join(",")) };
        let _ = writeln!(out, "whitelist: {}: {} {service} ({rest})", e.user, verb("removed", "would remove"));
    }
    Ok(true)
}

/// Removes every whitelist entry of environment `env` (Config Mapper or file).
fn whitelist_env(
    config: &Config,
    env: &str,
    o: &Options<'_>,
    out: &mut String,
    verb: impl Fn(&'static str, &'static str) -> &'static str,
) -> Result<bool, CleanupError> {
    if let Some(path) = &config.whitelist.file {
        return whitelist_file(path, o, out, &verb, |user, e| {
            (e.get("env").and_then(|v| v.as_str()) == Some(env)).then(|| {
                e["services"] = serde_json::Value::Array(Vec::new());
                format!("{user}: {} from {env}", verb("removed", "would remove"))
            })
        });
    }
    let Some(url) = &config.whitelist.url else { return Ok(true) };
    let users: Vec<String> = (MapperClient::new(url, None, TIMEOUT)?.list()?.into_iter())
        .filter(|e| e.env() == env)
        .map(|e| e.user)
        .collect();
    if users.is_empty() {
        let _ = writeln!(out, "whitelist: nobody is in environment {env}");
        return Ok(true);
    }
    if !o.dry_run {
        MapperClient::new(url, Some(token(o.token_file)?), TIMEOUT)?.end_env(env)?;
    }
    let _ = writeln!(out, "whitelist: {} {} from {env}", verb("removed", "would remove"), users.join(", "));
    Ok(true)
}

/// Applies `change` to every entry of the whitelist file (it says what it did to an entry, or
/// `None`); entries left without services go.
fn whitelist_file(
    path: &Path,
    o: &Options<'_>,
    out: &mut String,
    verb: impl Fn(&'static str, &'static str) -> &'static str,
    mut change: impl FnMut(&str, &mut serde_json::Value) -> Option<String>,
) -> Result<bool, CleanupError> {
    let fail = |reason: String| CleanupError::File { path: path.display().to_string(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let mut doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
    let Some(entries) = doc.get_mut("entries").and_then(|e| e.as_array_mut()) else {
        return Err(fail("no \"entries\" array".into()));
    };
    let mut changed = 0;
    for e in entries.iter_mut() {
        let user = e.get("user").and_then(|u| u.as_str()).unwrap_or_default().to_owned();
        if let Some(did) = change(&user, e) {
            changed += 1;
            let _ = writeln!(out, "whitelist file: {did}");
        }
    }
    entries.retain(|e| e.get("services").and_then(|s| s.as_array()).is_none_or(|s| !s.is_empty()));
    if changed == 0 {
        let _ = writeln!(out, "whitelist file: {}", verb("nothing to remove", "nothing to remove"));
        return Ok(true);
    }
    if o.dry_run {
        return Ok(true);
    }
    let version = doc.get("version").and_then(|v| v.as_u64()).unwrap_or(0) + 1;
    doc["version"] = version.into();
    // Atomic replace, so the bridge's file watcher never reads half a file.
    let tmp = path.with_extension("cleanup.tmp");
    std::fs::write(&tmp, doc.to_string())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| fail(e.to_string()))?;
    Ok(true)
}

/// The Rush topics of environments that have no live whitelist entry (expired, or ended
/// without `--delete-topics`), for an operator to delete with `cleanup --env E
/// --delete-topics`. Read only.
pub fn expired(config: &Config) -> Result<String, CleanupError> {
    let live = crate::explain::current_envs(config).map_err(|e| CleanupError::Env("*".into(), e.to_string()))?;
    let existing = partition_counts(&config.rush, "rush")?;
    let mut stale: std::collections::BTreeMap<&str, Vec<&str>> = std::collections::BTreeMap::new();
    for name in existing.keys() {
        let owned = config.routes.iter().flat_map(|r| {
            let raw = r.return_path.then_some(&r.topic);
            r.services.iter().map(|s| &s.output_topic).chain(raw)
        });
        for topic in owned {
            match environment::of_rush_topic(name, topic) {
                Some(env) if !environment::is_default(env) && !live.iter().any(|l| l == env) => {
                    stale.entry(env).or_default().push(name);
                }
                _ => {}
            }
        }
    }
    if stale.is_empty() {
        return Ok("no Rush topics of expired environments\n".into());
    }
    let mut out = String::new();
    for (env, topics) in stale {
        let _ = writeln!(out, "environment {env} has no live whitelist entry; its Rush topics: {}", topics.join(", "));
        let _ = writeln!(out, "  end it with: tenancy-bridge cleanup --config FILE --env {env} --delete-topics");
    }
    Ok(out)
}

/// Groups on Rush that have committed offsets on any of `topics` (so they belong to the
/// service's Rush instances), found without joining them.
fn groups_reading(config: &Config, topics: &[&str]) -> Result<Vec<String>, CleanupError> {
    let kafka = |what| move |source| CleanupError::Kafka { what, source };
    let lister: BaseConsumer = admin_config(&config.rush, "rush").create().map_err(kafka("client"))?;
    let list = lister.fetch_group_list(None, TIMEOUT).map_err(kafka("list groups"))?;
    let existing = partition_counts(&config.rush, "rush")?;
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in 0..existing.get(*t).copied().unwrap_or(0) {
            tpl.add_partition(t, p as i32);
        }
    }
    let mut found = Vec::new();
    if tpl.count() == 0 {
        return Ok(found);
    }
    for g in list.groups() {
        let mut c = admin_config(&config.rush, "rush");
        c.set("group.id", g.name()).set("enable.auto.commit", "false");
        let probe: BaseConsumer = c.create().map_err(kafka("client"))?;
        let committed = probe.committed_offsets(tpl.clone(), TIMEOUT).map_err(kafka("committed offsets"))?;
        if committed.elements().iter().any(|e| e.offset().to_raw().is_some_and(|o| o >= 0)) {
            found.push(g.name().to_owned());
        }
    }
    Ok(found)
}
