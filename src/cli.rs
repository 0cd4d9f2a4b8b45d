//! Command-line definitions only.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "tenancy-bridge",
    version,
    about = "Routes production Kafka events of whitelisted users to Rush test environments"
)]
pub struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "TENANCY_BRIDGE_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MigrateTo {
    Filtered,
    Raw,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the bridge daemon until SIGTERM or Ctrl-C.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config file: print the resolved routes and output topics, or the error.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
        /// Also read both clusters: each output topic's settings against its input's.
        #[arg(long)]
        topics: bool,
    },
    /// The whole system in one process, no setup: two in-process Kafka clusters, a Config
    /// Mapper, the bridge with its return path, the four producer/consumer scenarios, verify.
    Demo {
        /// Events the old (prod) producer writes; every tenth belongs to the whitelisted user.
        #[arg(long, default_value_t = 10_000)]
        events: usize,
        /// Events the new (Rush) producer writes.
        #[arg(long, default_value_t = 1_000)]
        rush_events: usize,
    },
    /// Check the invariant on real topics: per route and service, where every input record went,
    /// and every record missing, duplicated, on both clusters, out of order or wrongly stamped.
    /// Exits 1 on any violation.
    Verify {
        #[arg(long, short)]
        config: PathBuf,
        /// Judge only records at most this old (by record timestamp), e.g. 15m; default: all.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// The bridge's consumer group, for what it has committed (default: bridge.group_id).
        #[arg(long)]
        group: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// How many violations to list per service.
        #[arg(long, default_value_t = 20)]
        max_listed: usize,
        /// A topic read stops after this long without a record; a partition not read to its
        /// end by then is an error.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        idle: std::time::Duration,
    },
    /// Move the committed offsets of a stopped consumer group of a service from the raw topic
    /// to its filtered topic on prod (or back), so it resumes right after the last event it
    /// processed: nothing skipped, nothing processed twice. Refuses what it cannot prove.
    Migrate {
        #[arg(long, short)]
        config: PathBuf,
        /// The route's raw topic.
        #[arg(long)]
        route: String,
        #[arg(long)]
        service: String,
        /// The service's consumer group on prod (it must have no members).
        #[arg(long)]
        group: String,
        /// Where the group goes: `filtered` (from T to T.S) or `raw` (from T.S back to T).
        #[arg(long, value_enum, default_value_t = MigrateTo::Filtered)]
        to: MigrateTo,
        /// Print the plan per partition; commit nothing.
        #[arg(long)]
        dry_run: bool,
        /// Read only records at most this old (by timestamp, plus 5 minutes), e.g. 2h: bounds
        /// memory on long topics; a position before the window is refused. Default: all.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// A topic read stops after this long without a record.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        idle: std::time::Duration,
    },
    /// Where a user's events of a route would go now for each service, and why; or where one
    /// input record went, on which output offset, by which recorded decision.
    Explain {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        route: String,
        #[arg(long, conflicts_with_all = ["partition", "offset"], required_unless_present = "partition")]
        user: Option<String>,
        #[arg(long, requires = "offset")]
        partition: Option<i32>,
        #[arg(long, requires = "partition")]
        offset: Option<i64>,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
        /// A topic read stops after this long without a record.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        idle: std::time::Duration,
    },
    /// End a Rush session for a service, or a whole environment: remove its whitelist entries
    /// and, when asked, delete its topics and consumer groups on the Rush cluster (never on
    /// prod). `--expired` reports the Rush topics of environments the whitelist no longer has.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["service", "env", "expired"])))]
    Cleanup {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        service: Option<String>,
        /// An environment: its entries, its `{env}.…` topics and the groups reading them.
        #[arg(long)]
        env: Option<String>,
        /// Report the Rush topics of environments with no live whitelist entry.
        #[arg(long)]
        expired: bool,
        /// Also delete the service's `{topic}.{service}` topics and the groups reading them on Rush.
        #[arg(long)]
        delete_topics: bool,
        /// Print what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// A Rush consumer group to delete besides those found reading the service's topics.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// File holding the Config Mapper write token; else $TENANCY_BRIDGE_TOKEN.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Run the reference Config Mapper (the whitelist service) until SIGTERM or Ctrl-C.
    ConfigMapper {
        /// Address to listen on; port 0 picks a free one (the bound address is printed).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// SQLite database file (created if missing).
        #[arg(long)]
        db: PathBuf,
        /// Write tokens, one per line (`name:token` or `token`); else $TENANCY_BRIDGE_TOKEN;
        /// without either the whitelist is read-only.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Longest TTL a whitelist entry may ask for.
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        max_ttl: std::time::Duration,
        /// Serve HTTPS with this certificate chain (PEM, leaf first); needs --tls-key.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key of --tls-cert (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Read or change the whitelist on a Config Mapper.
    Whitelist {
        #[command(subcommand)]
        action: WhitelistAction,
        /// Config Mapper base URL.
        #[arg(long, global = true, env = "TENANCY_BRIDGE_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// File holding the write token (first token in it); else $TENANCY_BRIDGE_TOKEN.
        #[arg(long, global = true)]
        token_file: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum WhitelistAction {
    /// Whitelist a user for services, for a limited time.
    Add {
        #[arg(long)]
        user: String,
        /// Comma-separated service names.
        #[arg(long, value_delimiter = ',', required = true)]
        services: Vec<String>,
        /// How long the entry lives (e.g. 30m, 4h, 2d); required, capped by the server.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// Why, for the audit log.
        #[arg(long)]
        reason: Option<String>,
        /// The environment the services run in (default: the default environment, `rush`).
        #[arg(long)]
        env: Option<String>,
    },
    /// Remove a user, or only some of their services.
    Rm {
        #[arg(long)]
        user: String,
        #[arg(long, value_delimiter = ',')]
        services: Vec<String>,
    },
    /// List the live whitelist.
    Ls,
    /// List the live environments: their users, services and expiry.
    Envs,
    /// Show the audit log.
    Audit,
}
