use super::*;
use crate::config::{Service, StampMode};
use crate::extract::JsonPointer;
use crate::whitelist::{Entry, Snapshot};
use proptest::prelude::*;

const KEY: &str = "event_tenancy";

fn key() -> TenancyKey {
    TenancyKey::new(KEY)
}
type H<'a> = [(&'a str, Option<&'a [u8]>)];

fn route(services: &[&str], user: UserLocator, stamp: StampMode) -> Route {
    Route {
        topic: "orders".into(),
        services: services.iter().map(|s| Service { name: (*s).into(), output_topic: format!("orders.{s}") }).collect(),
        user,
        stamp,
        upstream_stamps: UpstreamStamps::default(),
        return_path: false,
        outbox_topic: "tenancy-bridge.rush.orders".into(),
        decisions_topic: "tenancy-bridge.decisions.orders".into(),
    }
}

fn snap(entries: &[(&str, &[&str], i64)]) -> Snapshot {
    Snapshot::new(
        1,
        entries.iter().map(|(u, s, exp)| ((*u).to_string(), Entry::new(s.iter().map(|x| (*x).into()).collect(), *exp))),
    )
}

fn json_route(stamp: StampMode) -> Route {
    route(&["payment", "shipping"], UserLocator::Json(JsonPointer::parse("/user_id").unwrap()), stamp)
}

#[test]
fn whitelisted_user_goes_to_rush_for_listed_services_only() {
    let r = route(&["payment", "shipping"], UserLocator::Header("x-user-id".into()), StampMode::Header);
    let s = snap(&[("U1", &["payment"], i64::MAX)]);
    let h: &H = &[("x-user-id", Some(b"U1"))];
    let d = decide(&r, &RecordView { key: None, payload: None, headers: h }, &s, 0, &key());
    assert_eq!(d.cluster(0), Cluster::Rush);
    assert_eq!(d.cluster(1), Cluster::Prod);
    assert_eq!(d.user.as_deref(), Some("U1"));
    assert_eq!(d.reason, Reason::Whitelist);
    assert_eq!(d.splice, None);

    let h: &H = &[("x-user-id", Some(b"U2"))];
    let d = decide(&r, &RecordView { key: None, payload: None, headers: h }, &s, 0, &key());
    assert!(d.rush.is_empty());
}

#[test]
fn expired_entry_is_production() {
    let r = route(&["payment"], UserLocator::Key, StampMode::Header);
    let s = snap(&[("U1", &["payment"], 1_000)]);
    let h: &H = &[];
    let rec = RecordView { key: Some(b"U1"), payload: None, headers: h };
    assert_eq!(decide(&r, &rec, &s, 999, &key()).cluster(0), Cluster::Rush);
    assert_eq!(decide(&r, &rec, &s, 1_000, &key()).cluster(0), Cluster::Prod);
}

#[test]
fn missing_user_and_non_json_pass_through_with_reason() {
    let r = json_route(StampMode::Header);
    let s = snap(&[("U1", &["payment"], i64::MAX)]);
    let h: &H = &[];
    let d = decide(&r, &RecordView { key: None, payload: Some(b"{\"a\":1}"), headers: h }, &s, 0, &key());
    assert_eq!(d.reason, Reason::Passthrough(Passthrough::NoUser));
    let d = decide(&r, &RecordView { key: None, payload: Some(b"\x00avro"), headers: h }, &s, 0, &key());
    assert_eq!(d.reason, Reason::Passthrough(Passthrough::NotJson));
    assert!(d.rush.is_empty());
}

fn with_policy(mut r: Route, policy: UpstreamStamps) -> Route {
    r.upstream_stamps = policy;
    r
}

fn decide_headers<'a>(r: &Route, s: &Snapshot, h: &'a H<'a>) -> Decision<'a> {
    decide(r, &RecordView { key: None, payload: None, headers: h }, s, 0, &key())
}

#[test]
fn a_stamp_alone_never_moves_an_event_off_prod() {
    // What a user found: a header naming a user the whitelist does not hold for that service
    // took the event away from production.
    let r = route(&["payment", "shipping"], UserLocator::Header("x-user-id".into()), StampMode::Header);
    let s = snap(&[("u1", &["payment"], i64::MAX)]);
    let h: &H = &[("x-user-id", Some(b"u3")), (KEY, Some(b"u3_payment"))];
    let d = decide_headers(&r, &s, h);
    assert_eq!((d.reason, d.rush, d.rejected.len()), (Reason::Upstream, ServiceSet::EMPTY, 1));
    let h: &H = &[("x-user-id", Some(b"u1")), (KEY, Some(b"u1_shipping"))];
    let d = decide_headers(&r, &s, h);
    assert!(d.rush.is_empty(), "u1 is not whitelisted for shipping");
    assert!(d.rejected.contains(1) && !d.rejected.contains(0));
    // An expired entry holds nothing.
    let expired = snap(&[("u1", &["payment"], 1)]);
    let h: &H = &[(KEY, Some(b"u1_payment"))];
    let d = decide(&r, &RecordView { key: None, payload: None, headers: h }, &expired, 5, &key());
    assert!(d.rush.is_empty() && d.rejected.contains(0));
}

#[test]
fn a_stamp_the_whitelist_holds_is_honoured_for_the_services_it_names() {
    let r = route(&["payment", "shipping"], UserLocator::Header("x-user-id".into()), StampMode::Header);
    let s = snap(&[("U_1", &["payment", "shipping"], i64::MAX)]);
    let h: &H = &[("x-user-id", Some(b"U9")), (KEY, Some(b"U_1_shipping"))];
    let d = decide_headers(&r, &s, h);
    assert_eq!(d.reason, Reason::Upstream);
    assert_eq!((d.cluster(0), d.cluster(1)), (Cluster::Prod, Cluster::Rush));
    assert_eq!(d.user.as_deref(), Some("U_1"), "users may contain '_'");
    assert!(d.rejected.is_empty());
    // The stamp's user is the one looked up, not the header's.
    let subject = subject(&r, &RecordView { key: None, payload: None, headers: h }, &key());
    assert_eq!(subject.user(), Some("U_1"));

    let h: &H = &[(KEY, Some(b"U_1_payment, U_1_shipping"))];
    assert_eq!(decide_headers(&r, &s, h).rush.len(), 2);

    // A stamp for another service only: production for this route, nothing rejected.
    let h: &H = &[("x-user-id", Some(b"U1")), (KEY, Some(b"U1_billing"))];
    let d = decide_headers(&r, &snap(&[("U1", &["payment"], i64::MAX)]), h);
    assert_eq!(d.reason, Reason::Upstream);
    assert!(d.rush.is_empty() && d.rejected.is_empty());
}

#[test]
fn a_stamp_names_a_service_exactly() {
    // With `payment` and `order_payment`, the bridge's own stamp for U1's order_payment must
    // not read as U1_order's payment.
    let r = route(&["payment", "order_payment"], UserLocator::Header("x-user-id".into()), StampMode::Header);
    let h: &H = &[(KEY, Some(b"U1_order_payment"))];
    let trusted = with_policy(r.clone(), UpstreamStamps::Trust);
    let d = decide_headers(&trusted, &snap(&[]), h);
    assert_eq!((d.cluster(0), d.cluster(1)), (Cluster::Prod, Cluster::Rush));
    assert_eq!(d.user.as_deref(), Some("U1"));
    let d = decide_headers(&r, &snap(&[("U1_order", &["payment"], i64::MAX)]), h);
    assert!(d.rush.is_empty(), "U1_order's payment entry does not admit U1's order_payment stamp");
}

#[test]
fn trust_honours_any_stamp_and_ignore_reads_none() {
    let r = route(&["payment", "shipping"], UserLocator::Header("x-user-id".into()), StampMode::Header);
    let s = snap(&[("U2", &["payment"], i64::MAX)]);
    let h: &H = &[("x-user-id", Some(b"U2")), (KEY, Some(b"U7_shipping"))];
    let d = decide_headers(&with_policy(r.clone(), UpstreamStamps::Trust), &s, h);
    assert_eq!((d.reason, d.cluster(0), d.cluster(1)), (Reason::Upstream, Cluster::Prod, Cluster::Rush));
    assert_eq!(d.user.as_deref(), Some("U7"));
    let d = decide_headers(&with_policy(r, UpstreamStamps::Ignore), &s, h);
    assert_eq!((d.reason, d.cluster(0), d.cluster(1)), (Reason::Whitelist, Cluster::Rush, Cluster::Prod));
    assert_eq!(d.user.as_deref(), Some("U2"));
}

#[test]
fn upstream_stamp_in_payload_is_verified_on_json_routes() {
    let r = json_route(StampMode::Payload);
    let h: &H = &[];
    let p = br#"{"event_tenancy":"U3_payment","user_id":"U4"}"#;
    let view = RecordView { key: None, payload: Some(p.as_slice()), headers: h };
    let d = decide(&r, &view, &snap(&[("U3", &["payment"], i64::MAX)]), 0, &key());
    assert_eq!(d.reason, Reason::Upstream);
    assert_eq!(d.cluster(0), Cluster::Rush);
    assert!(matches!(d.splice, Some(Splice::Replace { .. })));
    let d = decide(&r, &view, &snap(&[("U4", &["payment"], i64::MAX)]), 0, &key());
    assert!(d.rush.is_empty() && d.rejected.contains(0), "U4's entry does not admit U3's stamp");
}

#[test]
fn payload_stamp_insert_and_replace_keep_other_bytes() {
    let mut out = Vec::new();
    let p = br#"  { "b" : 2, "a":[1, 2 ,3]}"#;
    let sp = plan_splice(Some(p), &key()).unwrap();
    stamp_payload(p, sp, KEY, "U1_payment", &mut out);
    assert_eq!(out, br#"  {"event_tenancy":"U1_payment", "b" : 2, "a":[1, 2 ,3]}"#);

    let p = br#"{"x":1,"event_tenancy" :  "old" ,"y":2}"#;
    let sp = plan_splice(Some(p), &key()).unwrap();
    stamp_payload(p, sp, KEY, "U1_payment", &mut out);
    assert_eq!(out, br#"{"x":1,"event_tenancy" :  "U1_payment" ,"y":2}"#);

    let p = b"{ }";
    stamp_payload(p, plan_splice(Some(p), &key()).unwrap(), KEY, "U\"1_p", &mut out);
    assert_eq!(out, br#"{"event_tenancy":"U\"1_p" }"#);
}

#[test]
fn payload_stamp_refuses_non_objects() {
    assert_eq!(plan_splice(Some(b"[1,2]"), &key()), Err(Passthrough::NotObject));
    assert_eq!(plan_splice(Some(b"\"s\""), &key()), Err(Passthrough::NotObject));
    assert_eq!(plan_splice(Some(b"<xml/>"), &key()), Err(Passthrough::NotJson));
    assert_eq!(plan_splice(Some(b""), &key()), Err(Passthrough::NotJson));
    assert_eq!(plan_splice(None, &key()), Err(Passthrough::NotJson));
    assert_eq!(plan_splice(Some(b"{,}"), &key()), Err(Passthrough::NotJson));
    // Found by fuzzing: a broken existing value, replaced, would have made the document valid.
    let broken = b" { \"event_tenancy\" :[0,\xfb\"=\"c\":\"1]}";
    assert_eq!(plan_splice(Some(broken), &key()), Err(Passthrough::NotJson));
}

#[test]
fn unstampable_payload_keeps_the_whole_event_in_prod() {
    // User in a header, stamp in the payload, payload is an array: no Rush copy may go out unmarked.
    let r = route(&["payment"], UserLocator::Header("u".into()), StampMode::Both);
    let h: &H = &[("u", Some(b"U1"))];
    let d = decide(
        &r,
        &RecordView { key: None, payload: Some(b"[1]"), headers: h },
        &snap(&[("U1", &["payment"], i64::MAX)]),
        0,
        &key(),
    );
    assert_eq!(d.reason, Reason::Passthrough(Passthrough::NotObject));
    assert!(d.rush.is_empty());
}

fn arb_json_object() -> impl Strategy<Value = serde_json::Map<String, serde_json::Value>> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i32>().prop_map(|n| serde_json::json!(n)),
        "[a-z\"\\\\ é]{0,8}".prop_map(serde_json::Value::String),
    ];
    let value = leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("[a-z_]{1,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    prop::collection::btree_map("[a-z_]{1,14}", value, 0..6).prop_map(|m| m.into_iter().collect())
}

proptest! {
    /// Every (event, service) gets exactly one cluster, Rush exactly when the user is
    /// whitelisted for that service and not expired.
    #[test]
    fn decision_matches_whitelist(
        users in prop::collection::vec(("[A-Z][0-9]{1,2}", prop::collection::vec(0usize..6, 0..4), any::<bool>()), 0..8),
        services in prop::collection::btree_set("[a-z]{2,6}", 1..6),
        event_user in "[A-Z][0-9]{1,2}",
    ) {
        let services: Vec<&str> = services.iter().map(String::as_str).collect();
        let names = ["payment", "shipping", services[0], "ledger", "mail", services[services.len() - 1]];
        let entries: Vec<(String, Vec<&str>, i64)> = users
            .iter()
            .map(|(u, idx, live)| (u.clone(), idx.iter().map(|i| names[*i]).collect(), if *live { 100 } else { 10 }))
            .collect();
        let snapshot = Snapshot::new(1, entries.iter().map(|(u, s, e)| {
            (u.clone(), Entry::new(s.iter().map(|x| (*x).into()).collect(), *e))
        }));
        let r = route(&services, UserLocator::Key, StampMode::Header);
        let h: &H = &[];
        let d = decide(&r, &RecordView { key: Some(event_user.as_bytes()), payload: None, headers: h }, &snapshot, 50, &key());
        // The oracle: the entries as the test listed them, not the snapshot's lookup.
        let live_entry = entries.iter().rev().find(|(u, _, _)| *u == event_user).filter(|(_, _, e)| *e > 50);
        for (i, s) in r.services.iter().enumerate() {
            let expected = live_entry.is_some_and(|(_, l, _)| l.iter().any(|x| *x == s.name));
            prop_assert_eq!(d.cluster(i) == Cluster::Rush, expected, "service {}", s.name);
        }
        for i in r.services.len()..64 {
            prop_assert!(!d.rush.contains(i), "bit {} outside the route", i);
        }
    }

    /// A spliced payload is valid JSON, has the stamp, and keeps every other member as it was.
    #[test]
    fn payload_splice_keeps_the_document(obj in arb_json_object(), pretty in any::<bool>(), value in "[A-Za-z0-9_\"]{1,12}") {
        let text = if pretty { serde_json::to_vec_pretty(&obj) } else { serde_json::to_vec(&obj) }.unwrap();
        let splice = plan_splice(Some(&text), &key()).unwrap();
        let mut out = Vec::new();
        stamp_payload(&text, splice, KEY, &value, &mut out);
        let parsed: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&out).unwrap();
        prop_assert_eq!(parsed.get(KEY), Some(&serde_json::Value::String(value.clone())));
        for (k, v) in &obj {
            if k != KEY {
                prop_assert_eq!(parsed.get(k), Some(v));
            }
        }
        if let Splice::Insert { at, .. } = splice {
            prop_assert_eq!(&out[..at], &text[..at]);
            prop_assert!(out.ends_with(&text[at..]));
        }
    }
}

#[test]
fn each_rush_copy_goes_to_the_environment_its_service_is_placed_in() {
    let r = route(&["payment", "shipping", "search"], UserLocator::Key, StampMode::Header);
    let mut u1 = Entry::placed("pr-42".into(), vec!["payment".into()], i64::MAX);
    u1.add(crate::whitelist::Placement { env: "rush".into(), services: vec!["shipping".into()], expires_at_ms: 500 });
    let s = Snapshot::new(1, [("U1".to_owned(), u1)]);
    let h: &H = &[];
    let view = RecordView { key: Some(b"U1"), payload: None, headers: h };
    let d = decide(&r, &view, &s, 0, &key());
    assert_eq!((d.cluster(0), d.envs.of(0)), (Cluster::Rush, "pr-42"));
    assert_eq!((d.cluster(1), d.envs.of(1)), (Cluster::Rush, "rush"));
    assert_eq!(d.cluster(2), Cluster::Prod);
    // After the default placement expires, only payment stays on Rush, still in pr-42.
    let d = decide(&r, &view, &s, 500, &key());
    assert_eq!((d.cluster(0), d.envs.of(0)), (Cluster::Rush, "pr-42"));
    assert_eq!(d.cluster(1), Cluster::Prod);
    // A verified upstream stamp is placed where the whitelist places its (user, service).
    let h: &H = &[(KEY, Some(b"U1_payment"))];
    let d = decide(&r, &RecordView { key: Some(b"U1"), payload: None, headers: h }, &s, 0, &key());
    assert_eq!((d.reason, d.rush.len(), d.envs.of(0)), (Reason::Upstream, 1, "pr-42"));
}
