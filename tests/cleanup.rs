#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `tenancy-bridge cleanup` against a Config Mapper process and two tansu brokers: the service
//! leaves every whitelist entry, its Rush topics and groups go, prod is untouched, a dry run
//! changes nothing, a second run finds nothing to do.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{Broker, Input, Mapper};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use tenancy_bridge::whitelist::client::MapperClient;

const TOKEN: &str = "qa:cleanup-test-token-0123456789";

fn cleanup(config: &std::path::Path, extra: &[&str]) -> (Output, String) {
    let args =
        if extra.iter().any(|a| *a == "--env" || *a == "--expired") { vec![] } else { vec!["--service", "payment"] };
    let out = Command::new(env!("CARGO_BIN_EXE_tenancy-bridge"))
        .arg("cleanup")
        .args(args)
        .arg("--config")
        .arg(config)
        .args(extra)
        .env("TENANCY_BRIDGE_TOKEN", TOKEN)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("cleanup {extra:?}:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    (out, text)
}

/// A Rush instance of `service` that read its topic, committed and stopped (an empty group).
fn consume_and_commit(bootstrap: &str, group: &str, topic: &str) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("max.poll.interval.ms", "10000")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    common::wait_until(&format!("{group} read nothing from {topic}"), deadline, || {
        let Some(r) = c.poll(Duration::from_millis(100)) else { return false };
        r.unwrap();
        c.commit_consumer_state(CommitMode::Sync).unwrap();
        true
    });
    c.unsubscribe();
}

fn groups(bootstrap: &str) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    c.fetch_group_list(None, Duration::from_secs(10)).unwrap().groups().iter().map(|g| g.name().to_owned()).collect()
}

#[test]
fn cleanup_ends_a_rush_session_for_one_service() {
    let (prod, rush) = (Broker::start(), Broker::start());
    let mapper = Mapper::start(&format!("{TOKEN}\n"));
    for t in ["orders", "orders.payment", "orders.shipping"] {
        common::create_topic(&prod.bootstrap, t, 2);
    }
    for t in ["orders.payment", "orders.shipping"] {
        common::create_topic(&rush.bootstrap, t, 2);
        let one = Input { partition: 0, key: None, payload: Some(b"{}".to_vec()), headers: vec![], timestamp: 1 };
        common::produce(&rush.bootstrap, t, &[one]);
    }
    consume_and_commit(&rush.bootstrap, "payment-rush", "orders.payment");
    consume_and_commit(&rush.bootstrap, "shipping-rush", "orders.shipping");
    let admin =
        MapperClient::new(&mapper.url, Some(TOKEN.split_once(':').unwrap().1.to_owned()), Duration::from_secs(5))
            .unwrap();
    let day = Duration::from_secs(86_400);
    admin.add("U1", &["payment".into(), "shipping".into()], day, Some("qa"), None).unwrap();
    admin.add("U2", &["payment".into()], day, Some("qa"), None).unwrap();
    admin.add("U3", &["shipping".into()], day, Some("qa"), None).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        format!(
            "[prod]\nbootstrap_servers = \"{}\"\n[rush]\nbootstrap_servers = \"{}\"\n[whitelist]\nurl = \"{}\"\n\
             [[routes]]\ntopic = \"orders\"\nservices = [\"payment\", \"shipping\"]\nuser = {{ header = \"u\" }}\n",
            prod.bootstrap, rush.bootstrap, mapper.url
        ),
    )
    .unwrap();

    // Dry run: the plan, and nothing changes.
    let (out, text) = cleanup(&config, &["--delete-topics", "--dry-run"]);
    assert!(out.status.success());
    assert!(text.contains("whitelist: U1: would remove payment (keeps shipping)"), "{text}");
    assert!(text.contains("whitelist: U2: would remove payment (no services left)"), "{text}");
    assert!(text.contains("rush group payment-rush: would delete"), "{text}");
    assert!(text.contains("rush topic orders.payment: would delete"), "{text}");
    assert!(!text.contains("shipping-rush"), "{text}");
    assert_eq!(admin.list().unwrap().len(), 3);
    assert!(common::topic_exists(&rush.bootstrap, "orders.payment"));

    let (out, text) = cleanup(&config, &["--delete-topics"]);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("whitelist: U1: removed payment (keeps shipping)"), "{text}");
    assert!(text.contains("rush group payment-rush: deleted"), "{text}");
    assert!(text.contains("rush topic orders.payment: deleted"), "{text}");
    let left: Vec<(String, Vec<String>)> = admin.list().unwrap().into_iter().map(|e| (e.user, e.services)).collect();
    assert_eq!(left, vec![("U1".into(), vec!["shipping".into()]), ("U3".into(), vec!["shipping".into()])]);
    assert!(!common::topic_exists(&rush.bootstrap, "orders.payment"));
    assert!(common::topic_exists(&rush.bootstrap, "orders.shipping"));
    assert!(common::topic_exists(&prod.bootstrap, "orders.payment"), "prod must never be touched");
    let g = groups(&rush.bootstrap);
    assert!(!g.contains(&"payment-rush".to_string()) && g.contains(&"shipping-rush".to_string()), "{g:?}");
    let audit = admin.audit().unwrap();
    assert!(audit.iter().any(|a| a.user == "U2" && a.action == "remove"), "{audit:?}");

    // Idempotent.
    let (out, text) = cleanup(&config, &["--delete-topics"]);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("nobody is whitelisted for payment"), "{text}");
    assert!(text.contains("rush topic orders.payment: already gone"), "{text}");

    let (out, _) = Command::new(env!("CARGO_BIN_EXE_tenancy-bridge"))
        .args(["cleanup", "--service", "nope", "--config"])
        .arg(&config)
        .output()
        .map(|o| (o.clone(), ()))
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"nope\" is not listed on any route"));
}

#[test]
fn cleanup_ends_an_environment_and_reports_expired_ones() {
    let (prod, rush) = (Broker::start(), Broker::start());
    let mapper = Mapper::start(&format!("{TOKEN}\n"));
    common::create_topic(&prod.bootstrap, "orders", 2);
    // What the Rush lane creates for environments pr-5 and pr-6, and the default one.
    let rush_topics =
        ["orders.payment", "pr-5.orders.payment", "pr-5.orders.shipping", "pr-5.orders", "pr-6.orders.payment"];
    for t in rush_topics {
        common::create_topic(&rush.bootstrap, t, 2);
        let one = Input { partition: 0, key: None, payload: Some(b"{}".to_vec()), headers: vec![], timestamp: 1 };
        common::produce(&rush.bootstrap, t, &[one]);
    }
    consume_and_commit(&rush.bootstrap, "payment-pr-5", "pr-5.orders.payment");
    consume_and_commit(&rush.bootstrap, "payment-rush", "orders.payment");
    let admin =
        MapperClient::new(&mapper.url, Some(TOKEN.split_once(':').unwrap().1.to_owned()), Duration::from_secs(5))
            .unwrap();
    let day = Duration::from_secs(86_400);
    admin.add("U1", &["payment".into()], day, Some("pr 5"), Some("pr-5")).unwrap();
    admin.add("U1", &["shipping".into()], day, Some("pr 5"), Some("pr-5")).unwrap();
    admin.add("U2", &["shipping".into()], day, Some("pr 5"), Some("pr-5")).unwrap();
    admin.add("U3", &["payment".into()], day, Some("default"), None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        format!(
            "[prod]\nbootstrap_servers = \"{}\"\n[rush]\nbootstrap_servers = \"{}\"\n[whitelist]\nurl = \"{}\"\n\
             [[routes]]\ntopic = \"orders\"\nservices = [\"payment\", \"shipping\"]\nuser = {{ header = \"u\" }}\n\
             return_path = true\n",
            prod.bootstrap, rush.bootstrap, mapper.url
        ),
    )
    .unwrap();

    // pr-6 has topics but no entry: reported, not touched. pr-5 is live.
    let (out, text) = cleanup(&config, &["--expired"]);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("environment pr-6 has no live whitelist entry") && !text.contains("pr-5"), "{text}");
    assert!(common::topic_exists(&rush.bootstrap, "pr-6.orders.payment"));

    let (out, text) = cleanup(&config, &["--env", "pr-5", "--delete-topics"]);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("whitelist: removed U1, U2 from pr-5"), "{text}");
    assert!(text.contains("rush group payment-pr-5: deleted"), "{text}");
    for t in ["pr-5.orders.payment", "pr-5.orders.shipping", "pr-5.orders"] {
        assert!(text.contains(&format!("rush topic {t}: deleted")), "{text}");
        assert!(!common::topic_exists(&rush.bootstrap, t), "{t}");
    }
    assert!(common::topic_exists(&rush.bootstrap, "orders.payment"), "the default environment's topics stay");
    assert!(groups(&rush.bootstrap).contains(&"payment-rush".to_string()));
    let left: Vec<(String, String)> =
        admin.list().unwrap().into_iter().map(|e| (e.user.clone(), e.env().to_owned())).collect();
    assert_eq!(left, [("U3".to_owned(), "rush".to_owned())]);
    assert!(admin.envs().unwrap().iter().all(|e| e.env != "pr-5"));

    // Safe to run twice.
    let (out, text) = cleanup(&config, &["--env", "pr-5", "--delete-topics"]);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("nobody is in environment pr-5") && text.contains("rush topic pr-5.orders: already gone"),
        "{text}"
    );
    // The default environment is ended per service.
    let (out, _) = cleanup(&config, &["--env", "rush"]);
    assert!(!out.status.success());
}
