#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The reference Config Mapper as a real process on 127.0.0.1:0 with a temporary database,
//! driven over HTTP and through the `whitelist` CLI.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Mapper;
use tenancy_bridge::whitelist::client::{ClientError, MapperClient, SnapshotAnswer};

const TOKEN: &str = "qa-team:0123456789abcdef-secret";

fn raw(mapper: &Mapper, method: &str, path: &str, auth: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let http = reqwest::blocking::Client::new();
    let url = format!("{}{path}", mapper.url);
    let mut req = match method {
        "PUT" => http.put(&url).header("content-type", "application/json").body(body.to_owned()),
        "DELETE" => http.delete(&url),
        _ => http.get(&url),
    };
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

fn client(mapper: &Mapper) -> MapperClient {
    MapperClient::new(&mapper.url, Some("0123456789abcdef-secret".into()), Duration::from_secs(5)).unwrap()
}

#[test]
fn writes_need_the_token() {
    let m = Mapper::start(TOKEN);
    let body = r#"{"services":["payment"],"ttl_seconds":60}"#;
    assert_eq!(raw(&m, "PUT", "/v1/whitelist/U1", None, body).0, 401);
    assert_eq!(raw(&m, "PUT", "/v1/whitelist/U1", Some("Bearer wrong-token-0000000"), body).0, 403);
    assert_eq!(raw(&m, "DELETE", "/v1/whitelist/U1", None, "").0, 401);
    let (status, e) = raw(&m, "PUT", "/v1/whitelist/U1", Some("Bearer 0123456789abcdef-secret"), body);
    assert_eq!(status, 200, "{e}");
    assert_eq!(e["services"], serde_json::json!(["payment"]));
}

#[test]
fn bad_requests_name_the_problem() {
    let m = Mapper::start(TOKEN);
    let auth = Some("Bearer 0123456789abcdef-secret");
    let cases = [
        ("/v1/whitelist/U1", r#"{"services":[],"ttl_seconds":60}"#, 400, "services"),
        ("/v1/whitelist/U1", r#"{"services":["a"],"ttl_seconds":60,"colour":"red"}"#, 400, "colour"),
        ("/v1/whitelist/U1", r#"{"services":["a"]}"#, 400, "ttl_seconds"),
        ("/v1/whitelist/U1", r#"{"services":["a"],"ttl_seconds":0}"#, 400, "ttl_seconds"),
        ("/v1/whitelist/U1", r#"{"services":["a"],"ttl_seconds":-5}"#, 400, "ttl_seconds"),
        ("/v1/whitelist/U1", r#"{"services":["a"],"ttl_seconds":999999999}"#, 400, "maximum"),
        ("/v1/whitelist/U%20X", r#"{"services":["a"],"ttl_seconds":60}"#, 400, "user"),
        ("/v1/whitelist/U1", r#"{"services":["no/slash"],"ttl_seconds":60}"#, 400, "services"),
        ("/v1/whitelist/U1", "not json", 400, "body"),
    ];
    for (path, body, want, word) in cases {
        let (status, e) = raw(&m, "PUT", path, auth, body);
        assert_eq!(status, want, "{body}: {e}");
        assert!(e["error"].as_str().unwrap_or_default().contains(word), "{body}: {e}");
    }
    let big = format!(r#"{{"services":["a"],"ttl_seconds":60,"reason":"{}"}}"#, "x".repeat(20_000));
    let (status, e) = raw(&m, "PUT", "/v1/whitelist/U1", auth, &big);
    assert_eq!(status, 413, "{e}");
    assert!(e["error"].as_str().unwrap_or_default().contains("limit"), "{e}");
    assert_eq!(raw(&m, "GET", "/v1/whitelist/U1", None, "").0, 404);
}

#[test]
fn entries_expire_without_a_restart_and_etags_follow() {
    let m = Mapper::start(TOKEN);
    let c = client(&m);
    c.add("U1", &["payment".into()], Duration::from_secs(1), Some("short"), None).unwrap();
    c.add("U2", &["payment".into()], Duration::from_secs(3600), None, None).unwrap();
    let SnapshotAnswer::Changed { snapshot, etag } = c.snapshot(None).unwrap() else { panic!("expected a body") };
    assert_eq!(snapshot.len(), 2);
    assert!(matches!(c.snapshot(etag.as_deref()).unwrap(), SnapshotAnswer::NotModified));
    assert!(!c.lookup("U1").unwrap().is_empty());
    common::wait_until("U1 did not expire", Instant::now() + Duration::from_secs(5), || {
        c.lookup("U1").unwrap().is_empty()
    });
    // The expiry changes the answer, so the old ETag no longer matches.
    let SnapshotAnswer::Changed { snapshot, .. } = c.snapshot(etag.as_deref()).unwrap() else {
        panic!("an expired entry must change the snapshot")
    };
    assert_eq!(snapshot.len(), 1);
    assert_eq!(c.list().unwrap().iter().map(|e| e.user.as_str()).collect::<Vec<_>>(), ["U2"]);
}

#[test]
fn restart_keeps_entries_and_the_audit_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let m = Mapper::start_in(dir.path(), TOKEN);
    let c = client(&m);
    c.add("U1", &["payment".into(), "shipping".into()], Duration::from_secs(3600), Some("release 7 QA"), None).unwrap();
    c.add("U2", &["ledger".into()], Duration::from_secs(3600), None, None).unwrap();
    assert!(c.remove("U1", Some("shipping")).unwrap());
    assert!(c.remove("U2", None).unwrap());
    assert!(!c.remove("U2", None).unwrap(), "removing twice finds nothing");
    drop(m);

    let m = Mapper::start_in(dir.path(), TOKEN);
    let c = client(&m);
    let entries = c.list().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].services, ["payment"]);
    let audit = c.audit().unwrap();
    let summary: Vec<(String, String, String, Vec<String>)> =
        audit.iter().map(|a| (a.who.clone(), a.action.clone(), a.user.clone(), a.services.clone())).collect();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        summary,
        vec![
            ("qa-team".into(), "put".into(), "U1".into(), s(&["payment", "shipping"])),
            ("qa-team".into(), "put".into(), "U2".into(), s(&["ledger"])),
            ("qa-team".into(), "remove".into(), "U1".into(), s(&["shipping"])),
            ("qa-team".into(), "remove".into(), "U2".into(), s(&["ledger"])),
        ]
    );
    assert_eq!(audit[0].reason.as_deref(), Some("release 7 QA"));
    assert_eq!(audit[0].ttl_seconds, Some(3600));
    assert!(audit.iter().all(|a| a.at.ends_with('Z')));
}

fn cli(m: &Mapper, token_file: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tenancy-bridge"))
        .arg("whitelist")
        .args(args)
        .args(["--url", &m.url, "--token-file"])
        .arg(token_file)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
}

#[test]
fn whitelist_cli_adds_lists_and_removes() {
    let m = Mapper::start(TOKEN);
    let tf = m.dir.path().join("cli-token");
    std::fs::write(&tf, TOKEN).unwrap();
    let (ok, out) =
        cli(&m, &tf, &["add", "--user", "U5", "--services", "payment,shipping", "--ttl", "4h", "--reason", "smoke"]);
    assert!(ok && out.contains("whitelisted U5 for payment,shipping"), "{out}");
    let (ok, out) = cli(&m, &tf, &["ls"]);
    assert!(ok && out.contains("USER") && out.contains("U5") && out.contains("payment,shipping"), "{out}");
    let (ok, out) = cli(&m, &tf, &["ls", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(ok && v[0]["user"] == "U5", "{out}");
    let (ok, out) = cli(&m, &tf, &["rm", "--user", "U5", "--services", "shipping"]);
    assert!(ok && out.contains("removed shipping from U5"), "{out}");
    let (ok, out) = cli(&m, &tf, &["add", "--user", "U6", "--services", "payment", "--ttl", "30d"]);
    assert!(!ok && out.contains("maximum"), "{out}");
    let (ok, out) = cli(&m, &tf, &["audit"]);
    assert!(ok && out.contains("smoke") && out.contains("qa-team"), "{out}");

    let bad = m.dir.path().join("bad-token");
    std::fs::write(&bad, "wrong-token-0123456789").unwrap();
    let (ok, out) = cli(&m, &bad, &["rm", "--user", "U5"]);
    assert!(!ok && out.contains("403"), "{out}");
    let url = m.url.clone();
    drop(m);
    let out =
        Command::new(env!("CARGO_BIN_EXE_tenancy-bridge")).args(["whitelist", "ls", "--url", &url]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("unreachable"), "{text}");
}

#[test]
fn client_reports_a_refusal_with_the_servers_message() {
    let m = Mapper::start(TOKEN);
    let c = MapperClient::new(&m.url, Some("not-the-token-0000000".into()), Duration::from_secs(5)).unwrap();
    match c.add("U1", &["a".into()], Duration::from_secs(60), None, None) {
        Err(ClientError::Refused { status: 403, message, .. }) => assert!(message.contains("token"), "{message}"),
        other => panic!("expected a 403 refusal, got {other:?}"),
    }
}

/// Whitelisting a user routes their real production events to code under test: a team's token
/// is scoped to its services, and may be stored as its SHA-256 only.
#[test]
fn a_scoped_token_whitelists_only_for_its_services() {
    let secret = "payments-team-secret-0001";
    let hex: String = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let m = Mapper::start(&format!("{TOKEN}\npay-team:sha256={hex}:payment\n"));
    let pay = Some(format!("Bearer {secret}"));
    let body = |s: &str| format!(r#"{{"services":["{s}"],"ttl_seconds":60}}"#);
    let (status, e) = raw(&m, "PUT", "/v1/whitelist/U1", pay.as_deref(), &body("payment"));
    assert_eq!(status, 200, "{e}");
    let (status, e) = raw(&m, "PUT", "/v1/whitelist/U2", pay.as_deref(), &body("shipping"));
    assert_eq!(status, 403, "{e}");
    let message = e["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("pay-team") && message.contains("shipping") && message.contains("scoped to payment"),
        "{e}"
    );
    // An entry another team's token gave shipping cannot be replaced or removed whole.
    let qa = Some("Bearer 0123456789abcdef-secret");
    assert_eq!(
        raw(&m, "PUT", "/v1/whitelist/U3", qa, r#"{"services":["payment","shipping"],"ttl_seconds":60}"#).0,
        200
    );
    assert_eq!(raw(&m, "PUT", "/v1/whitelist/U3", pay.as_deref(), &body("payment")).0, 403);
    assert_eq!(raw(&m, "DELETE", "/v1/whitelist/U3", pay.as_deref(), "").0, 403);
    assert_eq!(raw(&m, "DELETE", "/v1/whitelist/U3/payment", pay.as_deref(), "").0, 204);
    // The audit names the token.
    let (_, audit) = raw(&m, "GET", "/v1/audit", None, "");
    let who: Vec<&str> = audit["records"].as_array().unwrap().iter().filter_map(|a| a["who"].as_str()).collect();
    assert!(who.contains(&"pay-team") && who.contains(&"qa-team"), "{audit}");
}

#[test]
fn environments_hold_each_user_service_once_and_the_old_forms_still_work() {
    let m = Mapper::start(TOKEN);
    let auth = Some("Bearer 0123456789abcdef-secret");
    let put = |user: &str, body: &str| raw(&m, "PUT", &format!("/v1/whitelist/{user}"), auth, body);
    // The old form: no env, the default environment.
    assert_eq!(put("U1", r#"{"services":["shipping"],"ttl_seconds":600}"#).0, 200);
    let (status, e) = put("U1", r#"{"services":["payment"],"ttl_seconds":600,"env":"pr-42"}"#);
    assert_eq!((status, e["env"].as_str()), (200, Some("pr-42")), "{e}");
    // A second environment for a (user, service) held elsewhere: 409, naming the holder.
    let (status, e) = put("U1", r#"{"services":["payment","search"],"ttl_seconds":600,"env":"pr-57"}"#);
    assert_eq!(status, 409, "{e}");
    let msg = e["error"].as_str().unwrap_or_default();
    assert!(msg.contains("\"pr-42\"") && msg.contains("\"payment\""), "{msg}");
    let (status, e) = put("U1", r#"{"services":["payment"],"ttl_seconds":600}"#);
    assert_eq!(status, 409, "the default environment is an environment too: {e}");
    let (status, e) = put("U1", r#"{"services":["payment"],"ttl_seconds":600,"env":"PR_42"}"#);
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().unwrap_or_default().contains("env"), "{e}");
    assert_eq!(put("U2", r#"{"services":["payment"],"ttl_seconds":600,"env":"pr-42"}"#).0, 200);

    // GET of a user: the old form (services, expires_at) and every placement.
    let (status, u) = raw(&m, "GET", "/v1/whitelist/U1", None, "");
    assert_eq!(status, 200);
    assert_eq!(u["services"], serde_json::json!(["payment", "shipping"]), "{u}");
    assert!(u["expires_at"].is_string());
    let placed: Vec<(String, String)> =
        client(&m).lookup("U1").unwrap().into_iter().map(|e| (e.env().to_owned(), e.services.join(","))).collect();
    assert_eq!(placed, [("pr-42".into(), "payment".into()), ("rush".into(), "shipping".into())]);

    // The snapshot carries env on every entry; the bridge reads it so.
    let SnapshotAnswer::Changed { snapshot, .. } = client(&m).snapshot(None).unwrap() else { panic!("no snapshot") };
    let u1 = snapshot.entry("U1").unwrap();
    assert_eq!(&*u1.placement_of("payment", 0).unwrap().env, "pr-42");
    assert_eq!(&*u1.placement_of("shipping", 0).unwrap().env, "rush");

    let envs = client(&m).envs().unwrap();
    let names: Vec<(&str, usize)> = envs.iter().map(|e| (e.env.as_str(), e.users.len())).collect();
    assert_eq!(names, [("pr-42", 2), ("rush", 1)]);

    // DELETE of a service finds it in whichever environment holds it; ending an environment
    // leaves the others.
    assert_eq!(raw(&m, "DELETE", "/v1/whitelist/U2/payment", auth, "").0, 204);
    assert_eq!(raw(&m, "DELETE", "/v1/envs/pr-42", None, "").0, 401);
    assert_eq!(raw(&m, "DELETE", "/v1/envs/pr-42", auth, "").0, 204);
    assert_eq!(raw(&m, "DELETE", "/v1/envs/pr-42", auth, "").0, 404);
    let left: Vec<String> = client(&m).list().unwrap().into_iter().map(|e| format!("{}:{}", e.user, e.env())).collect();
    assert_eq!(left, ["U1:rush"]);
    let audit = client(&m).audit().unwrap();
    assert!(audit.iter().any(|a| a.action == "end-env" && a.user == "U1" && a.env.as_deref() == Some("pr-42")));

    // The CLI places and lists.
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tenancy-bridge"))
            .arg("whitelist")
            .args(args)
            .args(["--url", &m.url])
            .env("TENANCY_BRIDGE_TOKEN", TOKEN)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = cli(&["add", "--user", "U9", "--services", "payment", "--ttl", "1h", "--env", "pr-9"]);
    assert!(ok && text.contains("in environment pr-9"), "{text}");
    let (ok, text) = cli(&["add", "--user", "U9", "--services", "payment", "--ttl", "1h", "--env", "pr-10"]);
    assert!(!ok && text.contains("pr-9"), "{text}");
    let (ok, text) = cli(&["ls"]);
    assert!(ok && text.contains("ENV") && text.lines().any(|l| l.contains("U9") && l.contains("pr-9")), "{text}");
    let (ok, text) = cli(&["envs"]);
    assert!(ok && text.lines().any(|l| l.starts_with("pr-9")), "{text}");
}

/// A CA and a certificate it signed for 127.0.0.1 and localhost, written as PEM files in
/// `dir`: (ca, cert, key).
fn tls_files(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let paths = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// Given a certificate and key the Config Mapper serves HTTPS: a client trusting the CA (the
/// library's, and the CLI through `TENANCY_BRIDGE_CA_FILE`) writes and reads; one that does
/// not trust it, or speaks plain HTTP, gets nothing; a key that is not one stops the start,
/// naming the file.
#[test]
fn serves_https_given_a_certificate_and_key() {
    let files = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tls_files(files.path());
    let args =
        [std::ffi::OsStr::new("--tls-cert"), cert.as_os_str(), std::ffi::OsStr::new("--tls-key"), key.as_os_str()];
    let m = Mapper::start_with(&format!("{TOKEN}\n"), &args);
    assert!(m.url.starts_with("https://127.0.0.1:"), "{}", m.url);

    let secret = TOKEN.split_once(':').unwrap().1;
    let trusting = MapperClient::with_ca(&m.url, Some(secret.into()), Duration::from_secs(5), Some(&ca)).unwrap();
    trusting.add("U1", &["payment".to_owned()], Duration::from_secs(600), None, None).unwrap();
    let listed = trusting.list().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");

    // The daemon's client, trusting `whitelist.ca_file`.
    let w = tenancy_bridge::config::WhitelistConfig { ca_file: Some(ca.clone()), ..Default::default() };
    let daemon = tenancy_bridge::whitelist::source::client(&m.url, &w).unwrap();
    assert!(matches!(daemon.snapshot(None).unwrap(), SnapshotAnswer::Changed { .. }), "the daemon's snapshot poll");

    let untrusting = MapperClient::with_ca(&m.url, None, Duration::from_secs(5), None).unwrap();
    let refused = untrusting.list().unwrap_err();
    assert!(matches!(refused, ClientError::Unreachable { .. }), "{refused}");
    let plain = MapperClient::new(&m.url.replace("https://", "http://"), None, Duration::from_secs(5)).unwrap();
    assert!(plain.list().is_err(), "plain HTTP to the TLS port");

    // The CLI, trusting the CA through the environment.
    let token_file = files.path().join("token");
    std::fs::write(&token_file, secret).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tenancy-bridge"))
        .args(["whitelist", "ls", "--url", &m.url, "--token-file"])
        .arg(&token_file)
        .env("TENANCY_BRIDGE_CA_FILE", &ca)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("U1"), "{text}{}", String::from_utf8_lossy(&out.stderr));

    // A certificate given as the key: the start fails, naming the key file.
    let out = Command::new(env!("CARGO_BIN_EXE_tenancy-bridge"))
        .args(["config-mapper", "--listen", "127.0.0.1:0", "--db"])
        .arg(files.path().join("other.db"))
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&cert)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with a certificate as its key");
    assert!(err.contains("TLS key") && err.contains(&*cert.to_string_lossy()), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"), "listened before checking its key");
}
