//! Who runs in the harness, on what data, started how.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::common;

pub const PARTITIONS: i32 = 4;
pub const INPUT: &str = "bench.in";
pub const USERS: usize = 10_000;
/// One user in this many is whitelisted (for payment).
pub const WHITELISTED_EVERY: usize = 100;
const MAPPER_TOKEN: &str = "bench:0123456789abcdef-throughput";
/// Services of the route, in order: a run with N services uses the first N.
pub const SERVICES: [&str; 10] =
    ["payment", "shipping", "billing", "search", "ledger", "fraud", "email", "audit", "loyalty", "stock"];

/// Where the user id of an input record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum UserAt {
    Header,
    /// `/user_id`, the first member of a 1 KiB object.
    JsonStart,
    /// `/user_id`, the last member, after 1 KiB of other members.
    JsonEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Who {
    /// rust-rdkafka consume → produce `copies` times, nothing else (`baselines::copy_loop`).
    Copy {
        copies: usize,
    },
    /// confluent-kafka, the same copy in Python (`relay.py`).
    Python,
    Bridge {
        user: UserAt,
        services: usize,
        exactly_once: bool,
    },
    /// The bridge (user in a header, one service) with the Rush broker frozen once it runs.
    RushFrozen,
    /// Lookup mode against a Config Mapper; reads the input twice (cold, then cached).
    Lookup {
        long_ttl: bool,
    },
    /// The bridge (user in a header, one service) with the whitelisted users spread over `envs`
    /// environments.
    Envs {
        envs: usize,
    },
}

impl Who {
    pub fn name(self) -> String {
        match self {
            Who::Copy { copies } => format!("copy loop ×{copies}"),
            Who::Python => "python relay".into(),
            Who::Bridge { user, services, exactly_once } => format!(
                "bridge {} ×{services}{}",
                match user {
                    UserAt::Header => "header",
                    UserAt::JsonStart => "json-start",
                    UserAt::JsonEnd => "json-end",
                },
                if exactly_once { " EOS" } else { "" }
            ),
            Who::RushFrozen => "bridge Rush frozen".into(),
            Who::Lookup { long_ttl: false } => "lookup default TTLs".into(),
            Who::Lookup { long_ttl: true } => "lookup warm".into(),
            Who::Envs { envs } => format!("bridge {envs} envs"),
        }
    }

    pub fn user(self) -> UserAt {
        match self {
            Who::Bridge { user, .. } => user,
            Who::Copy { .. } | Who::Python | Who::RushFrozen | Who::Envs { .. } => UserAt::Header,
            Who::Lookup { .. } => UserAt::JsonStart,
        }
    }

    /// Times the input is read: lookup mode's second pass finds every user cached.
    /// How many of the `records` inputs this run reads: a run writing N copies reads 1/N of them
    /// (at least 100,000), so every run takes about as long; the Rush-frozen run reads the
    /// 200,000 records of backlog its memory target is stated for.
    pub fn records(self, records: usize) -> usize {
        let outputs = match self {
            Who::Copy { copies } => copies,
            Who::Bridge { services, .. } => services,
            Who::RushFrozen => return records.min(200_000),
            Who::Python | Who::Lookup { .. } | Who::Envs { .. } => 1,
        };
        (records / outputs).max(100_000).min(records)
    }

    pub fn passes(self) -> usize {
        if matches!(self, Who::Lookup { .. }) { 2 } else { 1 }
    }

    /// A plain baseline, which reports its own progress on stdout instead of committing.
    pub fn reports_progress(self) -> bool {
        matches!(self, Who::Copy { .. } | Who::Python)
    }

    /// The topic whose records the latency readers time.
    pub fn latency_output(self) -> String {
        match self {
            Who::Copy { .. } => "copy.out.0".into(),
            Who::Python => "copy.out.py".into(),
            _ => format!("{INPUT}.payment"),
        }
    }
}

pub fn input(i: usize, size: usize, user_at: UserAt) -> common::Input {
    let user = format!("U{}", (i * 7919) % USERS);
    let filler = |used: usize| "x".repeat(size.saturating_sub(used));
    let payload = match user_at {
        UserAt::Header | UserAt::JsonStart => {
            let head = format!(r#"{{"user_id":"{user}","order_id":{i},"note":""#);
            format!("{head}{}\"}}", filler(head.len() + 2))
        }
        UserAt::JsonEnd => {
            let tail = format!(r#"","order_id":{i},"user_id":"{user}"}}"#);
            format!(r#"{{"note":"{}{tail}"#, filler(tail.len() + 9))
        }
    };
    common::Input {
        partition: (i % PARTITIONS as usize) as i32,
        key: Some(user.clone().into_bytes()),
        payload: Some(payload.into_bytes()),
        headers: vec![("x-user-id".into(), Some(user.into_bytes()))],
        timestamp: 1_760_000_000_000 + i as i64,
    }
}

/// Starts `who` on `prod` (and `rush`), consuming [`INPUT`] in `group`; `fetch_wait_ms`: the
/// consumers' `fetch.wait.max.ms` instead of librdkafka's default.
pub fn start(
    who: Who,
    dir: &tempfile::TempDir,
    prod: &common::Broker,
    rush: &common::Broker,
    group: &str,
    mapper: Option<&str>,
    fetch_wait_ms: Option<u64>,
) -> Child {
    match who {
        Who::Copy { copies } => {
            let outputs: Vec<String> = (0..copies).map(|k| format!("copy.out.{k}")).collect();
            for o in &outputs {
                common::create_topic(&prod.bootstrap, o, PARTITIONS);
            }
            let mut command = Command::new(std::env::current_exe().unwrap());
            if let Some(ms) = fetch_wait_ms {
                command.env("COPY_LOOP_FETCH_WAIT_MS", ms.to_string());
            }
            command
                .env("COPY_LOOP_BOOTSTRAP", &prod.bootstrap)
                .env("COPY_LOOP_OUTPUTS", outputs.join(","))
                .env("COPY_LOOP_GROUP", group)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        }
        Who::Python => {
            common::create_topic(&prod.bootstrap, "copy.out.py", PARTITIONS);
            Command::new("python3")
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/throughput/relay.py"))
                .args([prod.bootstrap.as_str(), group, INPUT, "copy.out.py"])
                .env("PYTHONPATH", super::baselines::python_path())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        }
        Who::Bridge { .. } | Who::RushFrozen | Who::Lookup { .. } | Who::Envs { .. } => {
            let config = bridge_config(who, dir, &prod.bootstrap, &rush.bootstrap, group, mapper, fetch_wait_ms);
            let bin = std::env::var("RELAY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tenancy-bridge").to_string());
            Command::new(bin)
                .args(["run", "--config"])
                .arg(&config)
                .env("RUST_LOG", std::env::var("BRIDGE_LOG").unwrap_or_else(|_| "warn".into()))
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        }
    }
}

/// The last progress a baseline printed (records acknowledged), read from its stdout.
pub fn reported_progress(child: &mut Child) -> std::sync::Arc<std::sync::atomic::AtomicI64> {
    let reported = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    if let Some(out) = child.stdout.take() {
        let reported = reported.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let lines = std::io::BufReader::new(out).lines().map_while(Result::ok);
            for n in lines.filter_map(|l| l.trim().parse().ok()) {
                reported.store(n, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    reported
}

/// A Config Mapper process with 1 in [`WHITELISTED_EVERY`] users whitelisted for payment.
pub fn start_mapper() -> common::Mapper {
    let mapper = common::Mapper::start(MAPPER_TOKEN);
    let token = MAPPER_TOKEN.split_once(':').unwrap().1.to_owned();
    let client =
        tenancy_bridge::whitelist::client::MapperClient::new(&mapper.url, Some(token), Duration::from_secs(5)).unwrap();
    for i in (0..USERS).step_by(WHITELISTED_EVERY) {
        client.add(&format!("U{i}"), &["payment".into()], Duration::from_secs(4 * 3600), Some("bench"), None).unwrap();
    }
    mapper
}

/// The bridge at its defaults but for the route: snapshot mode from a file (lookup mode
/// against `mapper` for [`Who::Lookup`]), the same users whitelisted either way.
fn bridge_config(
    who: Who,
    dir: &tempfile::TempDir,
    prod: &str,
    rush: &str,
    group: &str,
    mapper: Option<&str>,
    fetch_wait_ms: Option<u64>,
) -> std::path::PathBuf {
    let wl = dir.path().join("wl.json");
    let users: Vec<String> = (0..USERS).step_by(WHITELISTED_EVERY).map(|i| format!("U{i}")).collect();
    let entries: Vec<(&str, &[&str])> = users.iter().map(|u| (u.as_str(), &["payment"][..])).collect();
    let whitelist = match who {
        // The same users, spread over the environments.
        Who::Envs { envs } => {
            let entries: Vec<serde_json::Value> = (users.iter().enumerate())
                .map(|(k, u)| {
                    serde_json::json!({"user": u, "services": ["payment"], "expires_at": "2099-01-01T00:00:00Z",
                        "env": format!("bench-{}", k % envs)})
                })
                .collect();
            serde_json::json!({"version": 1, "entries": entries}).to_string()
        }
        _ => common::whitelist_json(1, &entries),
    };
    common::write_atomic(&wl, &whitelist);
    let (services, exactly_once) = match who {
        Who::Bridge { services, exactly_once, .. } => (services, exactly_once),
        _ => (1, false),
    };
    let services = SERVICES[..services].iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    let user = match who.user() {
        UserAt::Header => "{ header = \"x-user-id\" }",
        UserAt::JsonStart | UserAt::JsonEnd => "{ json = \"/user_id\" }",
    };
    let path = dir.path().join(format!("{group}.toml"));
    let text = common::config_text(&common::ConfigOpts {
        prod,
        rush,
        whitelist: &wl,
        group,
        routes: &format!("[[routes]]\ntopic = \"{INPUT}\"\nservices = [{services}]\nuser = {user}\n"),
        // BRIDGE_EXTRA: [bridge] keys to try against the defaults (e.g. "max_in_flight = 100000").
        extra_bridge: &format!(
            "{}\n{}",
            if exactly_once { "delivery = \"exactly-once\"\ninstance_id = \"bench\"" } else { "" },
            std::env::var("BRIDGE_EXTRA").unwrap_or_default()
        ),
        // CONSUMER_EXTRA: librdkafka consumer properties to try, TOML lines.
        kafka: &format!(
            "\"max.poll.interval.ms\" = 10000\n\"session.timeout.ms\" = 6000\n{}\n{}",
            fetch_wait_ms.map(|ms| format!("\"fetch.wait.max.ms\" = {ms}")).unwrap_or_default(),
            std::env::var("CONSUMER_EXTRA").unwrap_or_default()
        ),
    });
    let text = match (who, mapper) {
        (Who::Lookup { long_ttl }, Some(url)) => text.replace(
            &format!("file = \"{}\"\nrefresh = \"100ms\"", wl.display()),
            &format!(
                "url = \"{url}\"\nmode = \"lookup\"\n{}",
                if long_ttl { "cache_ttl = \"1h\"\nnegative_ttl = \"1h\"\n" } else { "" }
            ),
        ),
        _ => text,
    };
    // PRODUCER_EXTRA: librdkafka producer properties to try (k=v,k=v), for the copy loop too.
    let text = match producer_extra() {
        extra if extra.is_empty() => text,
        extra => {
            let lines: Vec<String> = extra.iter().map(|(k, v)| format!("\"{k}\" = \"{v}\"")).collect();
            format!("{text}\n[prod.producer]\n{}\n", lines.join("\n"))
        }
    };
    std::fs::write(&path, text).unwrap();
    path
}

/// `PRODUCER_EXTRA` as (property, value) pairs.
pub fn producer_extra() -> Vec<(String, String)> {
    let extra = std::env::var("PRODUCER_EXTRA").unwrap_or_default();
    extra.split(',').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.trim().into(), v.trim().into())).collect()
}
