use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context as _;
use clap::Parser as _;
use tenancy_bridge::config::Config;
use tenancy_bridge::whitelist::{self, FileSource, Snapshot};
use tenancy_bridge::{relay, report};

mod cli;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging(cli.log_format);
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: cli::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,librdkafka=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        cli::LogFormat::Text => builder.init(),
        cli::LogFormat::Json => builder.json().init(),
    }
}

fn dispatch(command: cli::Command) -> anyhow::Result<()> {
    match command {
        cli::Command::Validate { config } => {
            let c = Config::load(&config)?;
            report::check_kafka_properties(&c)?;
            print!("{}", report::describe(&c, &config));
            if let Some(path) = &c.whitelist.file {
                let s = whitelist::load_file(path)?;
                println!("whitelist file: version {}, {} users", s.version(), s.len());
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
            let snapshot = whitelist::shared(Snapshot::empty());
            let _source = match (&c.whitelist.file, &c.whitelist.url) {
                (Some(path), _) => FileSource::start(path.clone(), c.whitelist.refresh, snapshot.clone())?,
                _ => anyhow::bail!(
                    "whitelist.url: the Config Mapper client is not in this build yet; use whitelist.file"
                ),
            };
            let summary = relay::run(&c, snapshot, &shutdown).context("relay stopped")?;
            println!("{summary}");
            Ok(())
        }
    }
}
