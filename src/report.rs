//! Human-readable views of a validated config, for `validate`.

use std::fmt::Write as _;
use std::path::Path;

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, ProducerContext};

use crate::config::Config;
use crate::extract::UserLocator;
use crate::kafka;

#[derive(Debug, thiserror::Error)]
#[error("{cluster}.kafka / {cluster}.{client}: librdkafka rejects the {client} configuration: {source}")]
pub struct PropertyError {
    cluster: &'static str,
    client: &'static str,
    source: rdkafka::error::KafkaError,
}

/// A client context that keeps quiet: `validate` builds clients only so librdkafka checks
/// their properties, and their connection attempts are not the user's concern.
struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, _: RDKafkaLogLevel, _: &str, _: &str) {}
    fn error(&self, _: KafkaError, _: &str) {}
}

impl ProducerContext for Quiet {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

impl ConsumerContext for Quiet {}

/// Lets librdkafka check the pass-through properties by building each client (then dropping it).
pub fn check_kafka_properties(config: &Config) -> Result<(), PropertyError> {
    for (cluster, c) in [("prod", &config.prod), ("rush", &config.rush)] {
        kafka::producer_config(c, cluster, config)
            .create_with_context::<_, BaseProducer<Quiet>>(Quiet)
            .map_err(|source| PropertyError { cluster, client: "producer", source })?;
    }
    for (cluster, c) in [("prod", &config.prod), ("rush", &config.rush)] {
        kafka::consumer_config(c, cluster, &config.bridge.group_id)
            .create_with_context::<_, BaseConsumer<Quiet>>(Quiet)
            .map_err(|source| PropertyError { cluster, client: "consumer", source })?;
    }
    Ok(())
}

pub fn describe(config: &Config, path: &Path) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}: valid", path.display());
    let _ = writeln!(s, "prod cluster: {}", config.prod.bootstrap_servers);
    let _ = writeln!(s, "rush cluster: {}", config.rush.bootstrap_servers);
    let source = match (&config.whitelist.file, &config.whitelist.url) {
        (Some(f), _) => format!("file {}", f.display()),
        (_, Some(u)) => format!("{u} ({:?} mode)", config.whitelist.mode).to_lowercase(),
        _ => "none".into(),
    };
    let _ = writeln!(s, "whitelist: {source}, refresh {}", humantime::format_duration(config.whitelist.refresh));
    let _ = writeln!(s, "consumer group: {}", config.bridge.group_id);
    let b = &config.bridge;
    let _ = match b.delivery {
        crate::config::Delivery::AtLeastOnce => writeln!(s, "delivery: at-least-once"),
        crate::config::Delivery::ExactlyOnce => writeln!(
            s,
            "delivery: exactly-once (transactional.id {}, a transaction every {}, timeout {}; \
             readers of the outputs: isolation.level=read_committed)",
            b.transactional_id(),
            humantime::format_duration(b.transaction_interval),
            humantime::format_duration(b.transaction_timeout)
        ),
    };
    for r in &config.routes {
        let user = match &r.user {
            UserLocator::Header(h) => format!("header {h}"),
            UserLocator::Key => "message key".into(),
            UserLocator::Json(p) => format!("json {p}"),
        };
        let _ = writeln!(
            s,
            "route {}: user from {user}; stamp {}; return path {}",
            r.topic,
            format!("{:?}", r.stamp).to_lowercase(),
            if r.return_path { "on" } else { "off" }
        );
        for svc in &r.services {
            let _ = writeln!(s, "  {:<16} prod:{}  rush:{}", svc.name, svc.output_topic, svc.output_topic);
        }
        if r.return_path {
            let _ = writeln!(
                s,
                "  return path      rush:{0} -> prod:{0} (header {1}: rush)",
                r.topic, config.bridge.origin_header
            );
        }
    }
    s
}

/// `validate --topics`: each output's settings on both clusters, read from the brokers.
pub fn topic_settings(config: &Config) -> String {
    let mut s = String::from("output topic settings (copied from the input: ");
    s.push_str(&crate::topic_settings::COPIED.join(", "));
    s.push_str(")\n");
    for cluster in crate::topics::outputs_view(config) {
        let outputs = match cluster {
            Ok(o) => o,
            Err(e) => {
                let _ = writeln!(s, "  cannot read: {e}");
                continue;
            }
        };
        for o in outputs {
            let state = if o.exists { "exists" } else { "missing: would be created with" };
            let values: Vec<String> = o.settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(s, "  {}:{} (input {}) {state} {}", o.cluster, o.topic, o.input, values.join(" "));
            for m in &o.mismatches {
                let _ = writeln!(s, "    WARNING {m}");
            }
        }
    }
    s
}
