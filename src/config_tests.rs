use super::*;

const BASE: &str = r#"
[prod]
bootstrap_servers = "127.0.0.1:9092"
[prod.kafka]
"linger.ms" = 5
[rush]
bootstrap_servers = "127.0.0.1:9192"
[whitelist]
file = "whitelist.json"
[[routes]]
topic = "orders"
services = ["payment", "shipping"]
user = { header = "x-user-id" }
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, std::iter::empty())
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn defaults_and_outputs() {
    let c = parse(BASE).unwrap();
    assert_eq!(c.bridge.group_id, "tenancy-bridge");
    assert_eq!(c.bridge.tenancy_header, "event_tenancy");
    assert_eq!(c.whitelist.refresh, Duration::from_secs(1));
    assert_eq!(c.whitelist.mode, WhitelistMode::Snapshot);
    let r = &c.routes[0];
    assert_eq!(r.stamp, StampMode::Header);
    assert!(!r.return_path);
    assert_eq!(r.services[1], Service { name: "shipping".into(), output_topic: "orders.shipping".into() });
    assert_eq!(c.prod.kafka_properties(ClientRole::Admin).collect::<Vec<_>>(), vec![("linger.ms", "5".to_string())]);
}

#[test]
fn unknown_keys_are_errors_naming_the_key() {
    let e = err(&format!("{BASE}\n[bridge]\ngroup_idd = \"x\"\n"));
    assert!(e.contains("group_idd"), "{e}");
    let e = err(&BASE.replace("services =", "servics ="));
    assert!(e.contains("servics"), "{e}");
}

#[test]
fn user_source_must_be_exactly_one() {
    let e = err(&BASE.replace(r#"user = { header = "x-user-id" }"#, r#"user = { header = "a", json = "/b" }"#));
    assert!(e.contains("routes[0].user"), "{e}");
    let e = err(&BASE.replace(r#"user = { header = "x-user-id" }"#, r#"user = { json = "user_id" }"#));
    assert!(e.contains("routes[0].user.json") && e.contains("'/'"), "{e}");
    let c = parse(&BASE.replace(r#"user = { header = "x-user-id" }"#, r#"user = { key = true }"#)).unwrap();
    assert_eq!(c.routes[0].user, UserLocator::Key);
}

#[test]
fn loops_and_collisions_are_rejected() {
    let looped =
        format!("{BASE}\n[[routes]]\ntopic = \"orders.payment\"\nservices = [\"x\"]\nuser = {{ key = true }}\n");
    let e = err(&looped);
    assert!(e.contains("loop") && e.contains("orders.payment"), "{e}");
    let e = err(&format!("{BASE}\n[bridge]\noutput_topic = \"{{topic}}-copy\"\n"));
    assert!(e.contains("bridge.output_topic") && e.contains("{service}"), "{e}");
    let dup = BASE.replace(r#"["payment", "shipping"]"#, r#"["payment", "payment"]"#);
    assert!(err(&dup).contains("routes[0].services[1]"));
    let e = err(&format!("{BASE}\n[[routes]]\ntopic = \"orders\"\nservices = [\"x\"]\nuser = {{ key = true }}\n"));
    assert!(e.contains("routes[1].topic"), "{e}");
}

#[test]
fn return_path_topologies_that_could_loop_are_rejected() {
    let c = parse(&BASE.replace("user = {", "return_path = true\nuser = {")).unwrap();
    assert!(c.routes[0].return_path);
    assert_eq!(c.bridge.origin_header, "tenancy-origin");
    // Rush and prod the same cluster: the return path would read what it writes.
    let same = BASE.replace("\"127.0.0.1:9192\"", "\" 127.0.0.1:9092 \"");
    let e = err(&same.replace("user = {", "return_path = true\nuser = {"));
    assert!(e.contains("rush.bootstrap_servers") && e.contains("loop"), "{e}");
    // A return-path input that is also an output: the bridge's own Rush writes would come back.
    let e = err(&format!(
        "{BASE}\n[[routes]]\ntopic = \"orders.shipping\"\nservices = [\"x\"]\nreturn_path = true\nuser = {{ key = true }}\n"
    ));
    assert!(e.contains("loop") && e.contains("orders.shipping"), "{e}");
    let e = err(&format!("{BASE}\n[bridge]\norigin_header = \"event_tenancy\"\n"));
    assert!(e.contains("bridge.origin_header"), "{e}");
}

#[test]
fn bad_values_name_the_field() {
    assert!(err(&BASE.replace("\"127.0.0.1:9192\"", "\"\"")).contains("rush.bootstrap_servers"));
    assert!(
        err(&BASE.replace("services = [\"payment\", \"shipping\"]", "services = []")).contains("routes[0].services")
    );
    assert!(err(&BASE.replace("topic = \"orders\"", "topic = \"or ders\"")).contains("routes[0].topic"));
    let e = err(&format!("{BASE}\n[bridge]\nmax_in_flight = 0\n"));
    assert!(e.contains("bridge.max_in_flight"), "{e}");
    let e = err(&BASE.replace("file = \"whitelist.json\"", "file = \"w\"\nrefresh = \"soon\""));
    assert!(e.contains("soon"), "{e}");
    let e = err(&BASE.replace("\"linger.ms\" = 5", "\"group.id\" = \"x\""));
    assert!(e.contains("prod.kafka.\"group.id\""), "{e}");
    let e = err(&BASE.replace("file = \"whitelist.json\"", "url = \"ftp://x\""));
    assert!(e.contains("whitelist.url"), "{e}");
    let e = err(&BASE.replace("file = \"whitelist.json\"", ""));
    assert!(e.contains("`whitelist`"), "{e}");
    let e = err(&BASE.replace("user = { header", "stamp = \"body\"\nuser = { header"));
    assert!(e.contains("body"), "{e}");
}

#[test]
fn environment_overrides_keys() {
    let env = [
        ("TENANCY_BRIDGE__PROD__BOOTSTRAP_SERVERS", "kafka-prod:9092"),
        ("TENANCY_BRIDGE__BRIDGE__GROUP_ID", "g2"),
        ("TENANCY_BRIDGE__BRIDGE__MAX_IN_FLIGHT", "7"),
        ("TENANCY_BRIDGE__RUSH__KAFKA__SECURITY.PROTOCOL", "SSL"),
        ("UNRELATED", "x"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let c = Config::parse(BASE, env).unwrap();
    assert_eq!(c.prod.bootstrap_servers, "kafka-prod:9092");
    assert_eq!(c.bridge.group_id, "g2");
    assert_eq!(c.bridge.max_in_flight, 7);
    assert_eq!(c.rush.kafka_properties(ClientRole::Producer).next(), Some(("security.protocol", "SSL".to_string())));

    let bad = [("TENANCY_BRIDGE__BRIDGE__NOPE", "1")].map(|(k, v)| (k.to_string(), v.to_string()));
    assert!(Config::parse(BASE, bad).unwrap_err().to_string().contains("NOPE".to_lowercase().as_str()));
}

#[test]
fn role_tables_apply_only_to_their_clients_and_win() {
    let text = BASE.replace(
        "[rush]",
        "[prod.consumer]\n\"session.timeout.ms\" = 6000\n[prod.producer]\n\"linger.ms\" = 20\n[rush]",
    );
    let c = parse(&text).unwrap();
    let get = |role| c.prod.kafka_properties(role).collect::<Vec<_>>();
    assert_eq!(get(ClientRole::Consumer), vec![("linger.ms", "5".into()), ("session.timeout.ms", "6000".into())]);
    assert_eq!(get(ClientRole::Producer), vec![("linger.ms", "5".into()), ("linger.ms", "20".into())]);
    assert_eq!(get(ClientRole::Admin), vec![("linger.ms", "5".into())]);
    let e = err(&BASE.replace("[rush]", "[prod.consumer]\n\"group.id\" = \"x\"\n[rush]"));
    assert!(e.contains("prod.consumer.\"group.id\""), "{e}");
}

#[test]
fn delivery_and_its_transactions() {
    let c = parse(BASE).unwrap();
    assert_eq!(c.bridge.delivery, Delivery::AtLeastOnce);
    let eos = format!("{BASE}\n[bridge]\ndelivery = \"exactly-once\"\ninstance_id = \"pod-3\"\n");
    let c = parse(&eos).unwrap();
    assert_eq!(c.bridge.delivery, Delivery::ExactlyOnce);
    assert_eq!(c.bridge.transactional_id(), "tenancy-bridge.pod-3.forward");
    assert_eq!(c.bridge.transaction_interval, Duration::from_secs(1));
    let e = err(&format!("{BASE}\n[bridge]\ndelivery = \"exactly-twice\"\n"));
    assert!(e.contains("exactly-twice") && e.contains("exactly-once"), "{e}");
    let e = err(&format!("{BASE}\n[bridge]\ntransaction_interval = \"5s\"\ntransaction_timeout = \"10s\"\n"));
    assert!(e.contains("bridge.transaction_timeout"), "{e}");
    let e = err(&format!("{BASE}\n[bridge]\ninstance_id = \" \"\n"));
    assert!(e.contains("bridge.instance_id"), "{e}");
    // Without one, two processes on one host get different ids; a container's process 1 keeps
    // its host name.
    use crate::config::bridge::default_instance_id;
    assert_ne!(default_instance_id("vm-1", 4711), default_instance_id("vm-1", 4712));
    assert_eq!(default_instance_id("pod-7", 1), "pod-7");
    let c = parse(&format!("{BASE}\n[bridge]\ndelivery = \"exactly-once\"\n")).unwrap();
    assert!(c.bridge.transactional_id().ends_with(&format!("-{}.forward", std::process::id())));
}
