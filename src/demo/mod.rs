//! `tenancy-bridge demo`: the whole system in one process, no setup. Two librdkafka mock
//! clusters stand in for prod and Rush, the reference Config Mapper runs on a free port with a
//! temporary database, U1 is whitelisted for `payment` in the default environment and two QA
//! users for `payment` in environments `pr-42` and `pr-57` (two versions of payment side by
//! side), and the relay runs with the return path. Traffic covers the blog's four scenarios; each service instance's deliveries are
//! checked exactly once, then `verify` checks the invariant on every topic.

mod services;

use std::fmt::Write as _;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::background::Background;
use crate::config::Config;
use crate::config_mapper;
use crate::relay::{self, Direction};
use crate::verify;
use crate::whitelist::client::MapperClient;
use services::{Event, Instance};

const PARTITIONS: i32 = 3;
const SERVICES: [&str; 2] = ["payment", "shipping"];
const DEMO_USER: &str = "U1";
const DEMO_SERVICE: &str = "payment";
/// Two pull requests' environments of payment, each with a QA user of its own.
const DEMO_ENVS: [(&str, &str); 2] = [("pr-42", "QA42"), ("pr-57", "QA57")];

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_separators() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(22_000), "22,000");
        assert_eq!(super::thousands(1_234_567), "1,234,567");
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("config mapper: {0}")]
    Mapper(String),
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("whitelist: {0}")]
    Whitelist(#[from] crate::whitelist::source::StartError),
    #[error("relay: {0}")]
    Relay(#[from] relay::RelayError),
    #[error("verify: {0}")]
    Verify(#[from] verify::ReadError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub struct Options {
    /// Events the old (prod) producer writes; every tenth is the demo user's.
    pub prod_events: usize,
    /// Events the new (Rush) producer writes, all the demo user's.
    pub rush_events: usize,
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self { prod_events: 10_000, rush_events: 1_000, timeout: Duration::from_secs(120) }
    }
}

fn events(opts: &Options) -> (Vec<Event>, Vec<Event>) {
    let old = (0..opts.prod_events)
        .map(|i| Event {
            id: format!("p{i}"),
            user: match (i % 10, i % 20) {
                (0, _) => DEMO_USER.into(),
                (_, 5) => DEMO_ENVS[0].1.into(),
                (_, 15) => DEMO_ENVS[1].1.into(),
                _ => format!("U{}", 2 + i % 40),
            },
            partition: (i % PARTITIONS as usize) as i32,
        })
        .collect();
    let new = (0..opts.rush_events)
        .map(|i| Event { id: format!("r{i}"), user: DEMO_USER.into(), partition: (i % PARTITIONS as usize) as i32 })
        .collect();
    (old, new)
}

/// Who must receive `e`: the demo service's Rush instance of the environment its user is in,
/// else prod.
fn receiver(e: &Event, service: &str) -> &'static str {
    if service != DEMO_SERVICE {
        return "prod";
    }
    if e.user == DEMO_USER {
        return "rush";
    }
    DEMO_ENVS.iter().find(|(_, user)| e.user == *user).map_or("prod", |(env, _)| env)
}

/// Runs the demo, printing progress and the report to `out`. `Ok(true)` when everything held.
pub fn run(opts: &Options, out: &mut dyn Write) -> Result<bool, DemoError> {
    let started = Instant::now();
    writeln!(out, "tenancy-bridge demo: two in-process Kafka clusters, a Config Mapper, the bridge\n")?;
    let prod: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1)?;
    let rush: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1)?;
    // The mock cluster cannot create topics through the admin API; the bridge would otherwise.
    prod.create_topic("orders", PARTITIONS, 1)?;
    rush.create_topic("orders", PARTITIONS, 1)?;
    // The outbox where Rush copies wait on prod until the Rush lane has them on Rush.
    prod.create_topic("tenancy-bridge.rush.orders", PARTITIONS, 1)?;
    // The decision log (pins per input partition) and the snapshots its pins name.
    prod.create_topic("tenancy-bridge.decisions.orders", PARTITIONS, 1)?;
    prod.create_topic("tenancy-bridge.snapshots", 1, 1)?;
    prod.create_topic("tenancy-bridge.dead-letter", 1, 1)?;
    for s in SERVICES {
        prod.create_topic(&format!("orders.{s}"), PARTITIONS, 1)?;
        rush.create_topic(&format!("orders.{s}"), PARTITIONS, 1)?;
        // The bridge creates an environment's topics before its first copy; the mock cluster
        // cannot, so the demo does.
        for (env, _) in DEMO_ENVS {
            rush.create_topic(&format!("{env}.orders.{s}"), PARTITIONS, 1)?;
        }
    }
    for (env, _) in DEMO_ENVS {
        rush.create_topic(&format!("{env}.orders"), PARTITIONS, 1)?;
    }
    let (prod_bs, rush_bs) = (prod.bootstrap_servers(), rush.bootstrap_servers());
    writeln!(out, "  prod cluster    {prod_bs}   (mock, topic orders, {PARTITIONS} partitions)")?;
    writeln!(out, "  rush cluster    {rush_bs}")?;

    let dir = tempfile_dir()?;
    let mapper = DemoMapper::start(&dir)?;
    let client = MapperClient::new(&mapper.url, Some(mapper.token.clone()), Duration::from_secs(5))
        .map_err(|e| DemoError::Mapper(e.to_string()))?;
    client
        .add(DEMO_USER, &[DEMO_SERVICE.into()], Duration::from_secs(3600), Some("demo"), None)
        .map_err(|e| DemoError::Mapper(e.to_string()))?;
    writeln!(out, "  config mapper   {}   whitelisted {DEMO_USER} for {DEMO_SERVICE} (ttl 1h)", mapper.url)?;
    for (env, user) in DEMO_ENVS {
        client
            .add(user, &[DEMO_SERVICE.into()], Duration::from_secs(3600), Some("demo"), Some(env))
            .map_err(|e| DemoError::Mapper(e.to_string()))?;
        writeln!(out, "                  whitelisted {user} for {DEMO_SERVICE} in environment {env}")?;
    }
    writeln!(out, "  route           orders -> payment, shipping; user from header x-user-id; return path on\n")?;

    let config = Config::parse(&config_text(&prod_bs, &rush_bs, &mapper.url), std::iter::empty())?;
    let (_source, whitelist) = crate::whitelist::source::start(&config.whitelist, config.bridge.max_envs)?;
    let shutdown = Arc::new(AtomicBool::new(false));
    let observers = Arc::new(relay::Observers::new(&config)?);
    let relay = {
        let (config, shutdown, observers) = (config.clone(), shutdown.clone(), observers.clone());
        std::thread::Builder::new()
            .name("demo-relay".into())
            .spawn(move || relay::run_observed(&config, whitelist, &shutdown, &observers))?
    };

    let mut instances = Vec::new();
    for s in SERVICES {
        instances.push(Instance::start("prod", &prod_bs, s)?);
        instances.push(Instance::start("rush", &rush_bs, s)?);
    }
    for (env, _) in DEMO_ENVS {
        instances.push(Instance::start_in("rush", env, &rush_bs, DEMO_SERVICE)?);
    }
    writeln!(
        out,
        "  waiting for the bridge and the {} service instances (two in environments) to join their groups…",
        instances.len()
    )?;
    let deadline = Instant::now() + opts.timeout;
    loop {
        let health = &observers.health;
        let mut ready = health.assigned(Direction::Forward).load(Ordering::Relaxed) > 0
            && health.assigned(Direction::Return).load(Ordering::Relaxed) > 0;
        for i in &mut instances {
            ready &= i.assigned(&config.bridge.tenancy_header);
        }
        if ready || Instant::now() > deadline || relay.is_finished() {
            break;
        }
    }
    let (old, new) = events(opts);
    let expected: usize = old.len() * SERVICES.len() + new.len() * SERVICES.len();
    writeln!(
        out,
        "  producing {} events on prod (old producer) and {} on Rush (new producer)…",
        thousands(old.len()),
        thousands(new.len())
    )?;
    let traffic_started = Instant::now();
    services::produce(&prod_bs, "orders", &old)?;
    services::produce(&rush_bs, "orders", &new)?;

    let (mut last_progress, mut quiet_since) = (Instant::now(), Instant::now());
    let mut done_at = None;
    loop {
        let mut arrived = 0;
        for i in &mut instances {
            arrived += i.poll(&config.bridge.tenancy_header);
        }
        if arrived > 0 {
            quiet_since = Instant::now();
        }
        let received: usize = instances.iter().map(Instance::received).sum();
        if received >= expected && done_at.is_none() {
            done_at = Some(traffic_started.elapsed());
        }
        // Linger a moment after the last expected delivery, so a duplicate would show.
        if done_at.is_some() && quiet_since.elapsed() > Duration::from_millis(500) {
            break;
        }
        if Instant::now() > deadline || relay.is_finished() {
            writeln!(out, "  stopped waiting: {} of {} deliveries", thousands(received), thousands(expected))?;
            break;
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            writeln!(out, "  … {} of {} deliveries so far", thousands(received), thousands(expected))?;
        }
    }
    let elapsed = done_at.unwrap_or_else(|| traffic_started.elapsed());

    writeln!(out, "  running verify on every topic…\n")?;
    let report = verify::run(&config, &verify::Options { idle: Duration::from_secs(1), ..Default::default() })?;
    shutdown.store(true, Ordering::Relaxed);
    let summary = relay.join().map_err(|_| DemoError::Mapper("relay thread panicked".into()))??;

    let (table, scenarios_ok) = scenarios(&instances, &old, &new);
    out.write_all(table.as_bytes())?;
    let total_in = old.len() + new.len();
    writeln!(
        out,
        "\n  totals          {} events in ({} via the return path), {} deliveries: prod {} · rush {}",
        thousands(total_in),
        thousands(summary.return_forwarded as usize),
        thousands((summary.outputs_prod + summary.outputs_rush) as usize),
        thousands(summary.outputs_prod as usize),
        thousands(summary.outputs_rush as usize)
    )?;
    writeln!(
        out,
        "  throughput      {} events/s through the bridge ({:.2} s from first produce to last delivery)",
        thousands((total_in as f64 / elapsed.as_secs_f64().max(1e-3)) as usize),
        elapsed.as_secs_f64()
    )?;
    let violations = report.violations();
    writeln!(
        out,
        "  verify          {}",
        if violations == 0 { "invariant held: 0 violations".to_owned() } else { format!("{violations} VIOLATIONS") }
    )?;
    if violations > 0 {
        out.write_all(report.render(10).as_bytes())?;
    }
    let ok = scenarios_ok && violations == 0;
    writeln!(
        out,
        "\n  {} in {:.1} s",
        if ok { "everything held" } else { "SOMETHING WENT WRONG (see above)" },
        started.elapsed().as_secs_f64()
    )?;
    Ok(ok)
}

/// The four-scenario table, and whether every instance got exactly its events, once each.
fn scenarios(instances: &[Instance], old: &[Event], new: &[Event]) -> (String, bool) {
    let mut s = String::new();
    let _ = writeln!(s, "  {:<34} {:>9} {:>9}  who got them", "scenario", "expected", "received");
    let mut all_ok = true;
    let rows = [
        ("1 old producer -> old consumer", old, "p", "prod"),
        ("2 old producer -> new consumer", old, "p", "rush"),
        ("3 new producer -> old consumer", new, "r", "prod"),
        ("4 new producer -> new consumer", new, "r", "rush"),
    ];
    for (name, events, prefix, cluster) in rows {
        let (mut want, mut got, mut ok) = (0, 0, true);
        let mut who = Vec::new();
        for inst in instances.iter().filter(|i| i.cluster == cluster) {
            let mine: Vec<&Event> = events.iter().filter(|e| receiver(e, inst.service) == inst.place).collect();
            let received = inst.got.iter().filter(|(id, _)| id.starts_with(prefix)).map(|(_, (n, _))| n).sum::<usize>();
            for e in &mine {
                let want_stamp = (cluster == "rush").then(|| format!("{}_{}", e.user, inst.service));
                match inst.got.get(&e.id) {
                    Some((1, stamp)) if *stamp == want_stamp => {}
                    _ => ok = false,
                }
            }
            ok &= received == mine.len();
            want += mine.len();
            got += received;
            if received > 0 {
                who.push(format!("{} {} {}", inst.place, inst.service, thousands(received)));
            }
        }
        all_ok &= ok;
        let who = if who.is_empty() { "nobody".into() } else { who.join(", ") };
        let mark = if ok { "exactly once" } else { "MISMATCH" };
        let _ = writeln!(s, "  {name:<34} {:>9} {:>9}  {who} ({mark})", thousands(want), thousands(got));
    }
    (s, all_ok)
}

/// 12345 → "12,345".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn config_text(prod: &str, rush: &str, mapper: &str) -> String {
    format!(
        r#"
[prod]
bootstrap_servers = "{prod}"
[prod.consumer]
"session.timeout.ms" = 6000
[rush]
bootstrap_servers = "{rush}"
[rush.consumer]
"session.timeout.ms" = 6000
[whitelist]
url = "{mapper}"
refresh = "200ms"
[bridge]
group_id = "tenancy-bridge-demo"
commit_interval = "200ms"
drain_timeout = "10s"
create_topics = false
copy_topic_settings = false
[[routes]]
topic = "orders"
services = ["payment", "shipping"]
user = {{ header = "x-user-id" }}
return_path = true
"#
    )
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("tenancy-bridge-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The reference Config Mapper on a free port, on its own runtime thread; stopped on drop.
struct DemoMapper {
    url: String,
    token: String,
    dir: std::path::PathBuf,
    server: Option<Background>,
}

impl DemoMapper {
    fn start(dir: &std::path::Path) -> Result<Self, DemoError> {
        let token = format!(
            "demo-{:x}",
            std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), Instant::now())
        );
        let token_file = dir.join("tokens");
        std::fs::write(&token_file, format!("demo:{token}\n"))?;
        let opts = config_mapper::Options {
            db: dir.join("whitelist.db"),
            token_file: Some(token_file),
            max_ttl: config_mapper::DEFAULT_MAX_TTL,
            tls: None,
        };
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = Background::spawn("demo-config-mapper", rt, move |shutdown| async move {
            if let Err(e) = config_mapper::serve(listener, opts, shutdown).await {
                tracing::error!(error = %e, "demo config mapper stopped");
            }
        })?;
        Ok(Self { url, token, dir: dir.to_owned(), server: Some(server) })
    }
}

impl Drop for DemoMapper {
    fn drop(&mut self) {
        // Stop the server before its database goes.
        drop(self.server.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
