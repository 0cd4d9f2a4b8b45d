#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The binary's `validate` command: resolved outputs on success, field-named errors otherwise.

use std::process::Command;

fn validate(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let wl = dir.path().join("wl.json");
    std::fs::write(
        &wl,
        r#"{"version":3,"entries":[{"user":"U1","services":["payment"],"expires_at":"2099-01-01T00:00:00Z"}]}"#,
    )
    .unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config.replace("WL", &wl.display().to_string())).unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_tenancy-bridge")).args(["validate", "--config"]).arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

const GOOD: &str = r#"
[prod]
bootstrap_servers = "127.0.0.1:1"
[rush]
bootstrap_servers = "127.0.0.1:2"
[whitelist]
file = "WL"
[[routes]]
topic = "orders"
services = ["payment", "shipping"]
user = { json = "/user_id" }
"#;

#[test]
fn validate_prints_every_output_on_both_clusters() {
    let (ok, out) = validate(GOOD);
    assert!(ok, "{out}");
    assert!(out.contains("prod:orders.payment") && out.contains("rush:orders.shipping"), "{out}");
    assert!(out.contains("version 3, 1 users"), "{out}");
}

#[test]
fn validate_names_the_bad_field_and_fails() {
    let (ok, out) = validate(&GOOD.replace("services =", "servicez ="));
    assert!(!ok);
    assert!(out.contains("servicez"), "{out}");
    let (ok, out) = validate(&GOOD.replace("[rush]\n", "[rush]\nkafka = { \"no.such.property\" = 1 }\n"));
    assert!(!ok);
    assert!(out.contains("rush.kafka") && out.contains("no.such.property"), "{out}");
    let looped =
        format!("{GOOD}\n[[routes]]\ntopic = \"orders.payment\"\nservices = [\"x\"]\nuser = {{ key = true }}\n");
    let (ok, out) = validate(&looped);
    assert!(!ok && out.contains("loop"), "{out}");
}

#[test]
fn validate_reports_a_broken_whitelist_file() {
    let (ok, out) = validate(&GOOD.replace("WL", "/nonexistent/wl.json"));
    assert!(!ok);
    assert!(out.contains("/nonexistent/wl.json"), "{out}");
}

#[test]
fn shipped_configs_validate() {
    for path in ["config/tenancy-bridge.example.toml", "config/compose/tenancy-bridge.toml"] {
        let out =
            Command::new(env!("CARGO_BIN_EXE_tenancy-bridge")).args(["validate", "--config", path]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{path}: {text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("return path      rush:orders -> prod:orders"), "{path}: {text}");
    }
}
