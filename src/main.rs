use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::Parser as _;
use tenancy_bridge::config::Config;
use tenancy_bridge::whitelist;
use tenancy_bridge::{cleanup, config_mapper, daemon, demo, explain, migrate, report, verify, whitelist_cli};

mod cli;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Prints to stdout; a closed pipe (`| head`) ends the output quietly instead of panicking.
fn emit(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // The demo prints its own report; only trouble should interrupt it.
    let default_filter =
        if matches!(cli.command, cli::Command::Demo { .. }) { "warn,librdkafka=error" } else { "info,librdkafka=warn" };
    init_logging(cli.log_format, default_filter);
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: cli::LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        cli::LogFormat::Text => builder.init(),
        cli::LogFormat::Json => builder.json().init(),
    }
}

fn dispatch(command: cli::Command) -> anyhow::Result<()> {
    match command {
        cli::Command::Validate { config, topics } => {
            let c = Config::load(&config)?;
            report::check_kafka_properties(&c)?;
            emit(&report::describe(&c, &config));
            if topics {
                emit(&report::topic_settings(&c));
            }
            if let Some(path) = &c.whitelist.file {
                let s = whitelist::load_file(path)?;
                emit(&format!("whitelist file: version {}, {} users\n", s.version(), s.len()));
            }
            Ok(())
        }
        cli::Command::Run { config } => {
            let c = Config::load(&config)?;
            let shutdown = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                // A second signal exits at once, for an operator who does not want to wait.
                signal_hook::flag::register_conditional_shutdown(sig, 130, shutdown.clone())?;
                signal_hook::flag::register(sig, shutdown.clone())?;
            }
            let summary = daemon::run(&c, shutdown)?;
            emit(&format!("{summary}\n"));
            Ok(())
        }
        cli::Command::Demo { events, rush_events } => {
            let opts = demo::Options { prod_events: events, rush_events, ..demo::Options::default() };
            let ok = demo::run(&opts, &mut std::io::stdout().lock())?;
            anyhow::ensure!(ok, "the demo found a problem (report above)");
            Ok(())
        }
        cli::Command::Verify { config, since, group, json, max_listed, idle } => {
            let c = Config::load(&config)?;
            let opts = verify::Options { since, group, idle, ..verify::Options::default() };
            let report = verify::run(&c, &opts)?;
            if json {
                emit(&format!("{:#}\n", report.to_json()));
            } else {
                emit(&report.render(max_listed));
            }
            match report.violations() {
                0 => Ok(()),
                n => anyhow::bail!("{n} violations of the invariant"),
            }
        }
        cli::Command::Migrate { config, route, service, group, to, dry_run, since, idle } => {
            let c = Config::load(&config)?;
            let direction = match to {
                cli::MigrateTo::Filtered => migrate::Direction::Filtered,
                cli::MigrateTo::Raw => migrate::Direction::Raw,
            };
            let timeout = verify::Options::default().timeout;
            let opts = migrate::Options {
                route: &route,
                service: &service,
                group: &group,
                direction,
                dry_run,
                since,
                idle,
                timeout,
            };
            emit(&migrate::run(&c, &opts)?);
            Ok(())
        }
        cli::Command::Explain { config, route, user, partition, offset, json, idle } => {
            let c = Config::load(&config)?;
            let subject = match (user, partition, offset) {
                (Some(u), _, _) => explain::Subject::User(u),
                (None, Some(partition), Some(offset)) => explain::Subject::Record { partition, offset },
                _ => anyhow::bail!("give --user, or --partition and --offset"),
            };
            let timeout = verify::Options::default().timeout;
            let answer = explain::run(&c, &explain::Options { route: &route, subject, idle, timeout })?;
            emit(&if json { format!("{:#}\n", answer.json) } else { answer.text });
            Ok(())
        }
        cli::Command::Cleanup { config, service, env, expired, delete_topics, dry_run, groups, token_file } => {
            let c = Config::load(&config)?;
            if expired {
                emit(&cleanup::expired(&c)?);
                return Ok(());
            }
            let target = match (&service, &env) {
                (Some(s), _) => cleanup::Target::Service(s),
                (None, Some(e)) => cleanup::Target::Env(e),
                (None, None) => anyhow::bail!("cleanup: pass --service, --env or --expired"),
            };
            let opts =
                cleanup::Options { target, delete_topics, dry_run, groups: &groups, token_file: token_file.as_deref() };
            let outcome = cleanup::run(&c, &opts);
            emit(&outcome.text);
            match outcome.error {
                None => Ok(()),
                Some(e) => Err(e.into()),
            }
        }
        cli::Command::ConfigMapper { listen, db, token_file, max_ttl, tls_cert, tls_key } => {
            let tls = tls_cert.zip(tls_key).map(|(cert, key)| config_mapper::TlsFiles { cert, key });
            config_mapper::run(&listen, config_mapper::Options { db, token_file, max_ttl, tls })?;
            Ok(())
        }
        cli::Command::Whitelist { action, url, token_file, json } => {
            let action = match action {
                cli::WhitelistAction::Add { user, services, ttl, reason, env } => {
                    whitelist_cli::Action::Add { user, services, ttl, reason, env }
                }
                cli::WhitelistAction::Rm { user, services } => whitelist_cli::Action::Rm { user, services },
                cli::WhitelistAction::Ls => whitelist_cli::Action::Ls,
                cli::WhitelistAction::Envs => whitelist_cli::Action::Envs,
                cli::WhitelistAction::Audit => whitelist_cli::Action::Audit,
            };
            emit(&whitelist_cli::run(&url, token_file.as_deref(), json, action)?);
            Ok(())
        }
    }
}
