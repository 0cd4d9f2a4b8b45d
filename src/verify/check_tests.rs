use super::*;
use crate::config::Service;
use crate::config::StampMode;
use crate::extract::{JsonPointer, UserLocator};
use std::collections::HashSet;

fn route(stamp: StampMode, user: UserLocator) -> Route {
    Route {
        topic: "orders".into(),
        services: ["payment", "shipping"]
            .map(|s| Service { name: s.into(), output_topic: format!("orders.{s}") })
            .to_vec(),
        user,
        stamp,
        upstream_stamps: crate::config::UpstreamStamps::default(),
        return_path: false,
        outbox_topic: "tenancy-bridge.rush.orders".into(),
        decisions_topic: "tenancy-bridge.decisions.orders".into(),
    }
}

fn header_route() -> Route {
    route(StampMode::Header, UserLocator::Header("x-user-id".into()))
}

fn rec(partition: i32, offset: i64, user: Option<&str>, payload: &str) -> Record {
    let mut headers = vec![("trace".to_string(), Some(b"t".to_vec()))];
    if let Some(u) = user {
        headers.push(("x-user-id".into(), Some(u.as_bytes().to_vec())));
    }
    Record {
        partition,
        offset,
        key: Some(b"k".to_vec()),
        payload: Some(payload.as_bytes().to_vec()),
        headers,
        timestamp: Some(1_000 + offset),
    }
}

/// The copy of `r` at `offset`, stamped in the header for `stamp` when given.
fn copy(r: &Record, offset: i64, stamp: Option<&str>) -> Record {
    let mut c = r.clone();
    c.offset = offset;
    if let Some(s) = stamp {
        c.headers.push(("event_tenancy".into(), Some(s.as_bytes().to_vec())));
    }
    c
}

fn run(route: &Route, inputs: &[Record], prod: &[Record], rush: &[Record], committed: i64) -> ServiceReport {
    let key = TenancyKey::new("event_tenancy");
    let rules = Rules { tenancy: &key, volatile_headers: &["traceparent"] };
    let committed = (0..3).map(|p| (p, committed)).collect();
    let judged = vec![true; inputs.len()];
    let pins = BTreeMap::new();
    let inputs = Inputs { records: inputs, judged: &judged, committed: &committed, window_start: None, pins: &pins };
    check_service(route, 0, &inputs, (prod, rush), &Elsewhere::default(), &rules)
}

#[test]
fn a_clean_split_has_no_violations() {
    let r = header_route();
    let inputs: Vec<Record> = (0..4).map(|i| rec(0, i, Some(if i == 1 { "U1" } else { "U2" }), "{}")).collect();
    let prod = [copy(&inputs[0], 0, None), copy(&inputs[2], 1, None), copy(&inputs[3], 2, None)];
    let mut rush_copy = copy(&inputs[1], 0, Some("U1_payment"));
    rush_copy.headers.push(("traceparent".into(), Some(b"new".to_vec())));
    let rep = run(&r, &inputs, &prod, &[rush_copy], 4);
    assert_eq!(rep.violations, vec![]);
    assert_eq!((rep.inputs, rep.prod, rep.rush, rep.pending), (4, 3, 1, 0));
}

#[test]
fn missing_is_a_violation_only_once_the_bridge_committed_past_it() {
    let r = header_route();
    let inputs: Vec<Record> = (0..3).map(|i| rec(0, i, Some("U2"), "{}")).collect();
    let prod = [copy(&inputs[0], 0, None)];
    let rep = run(&r, &inputs, &prod, &[], 2);
    assert_eq!(rep.violations, vec![Violation::Missing { input: At { partition: 0, offset: 1 } }]);
    assert_eq!(rep.pending, 1);
}

#[test]
fn a_rush_copy_waiting_in_the_outbox_is_pending_until_the_lane_commits_past_it() {
    let r = header_route();
    let inputs: Vec<Record> = (0..3).map(|i| rec(0, i, Some("U1"), "{}")).collect();
    let key = TenancyKey::new("event_tenancy");
    let rules = Rules { tenancy: &key, volatile_headers: &["traceparent"] };
    let committed = BTreeMap::from([(0, 3)]);
    let (judged, pins) = (vec![true; 3], BTreeMap::new());
    let inputs = Inputs { records: &inputs, judged: &judged, committed: &committed, window_start: None, pins: &pins };
    let rush = [copy(&inputs.records[0], 0, Some("U1_payment"))];
    // Outbox offsets 0..3 hold the copies of inputs 0..3 for payment; 3 is shipping's copy of input 1.
    let boxed = |offset: i64, input: i64, topic: &str| {
        let mut r = rec(0, offset, Some("U1"), "{}");
        r.headers =
            vec![("out".into(), Some(topic.as_bytes().to_vec())), ("in".into(), Some(input.to_string().into_bytes()))];
        r
    };
    let outbox = [
        boxed(0, 0, "orders.payment"),
        boxed(1, 1, "orders.payment"),
        boxed(2, 2, "orders.payment"),
        boxed(3, 1, "orders.shipping"),
    ];
    let h = Locators { input_topic: None, partition: None, offset: "in", output: "out" };
    let check = |lane: i64| {
        let elsewhere = Elsewhere::default().waiting(&outbox, &BTreeMap::from([(0, lane)]), &h);
        check_service(&r, 0, &inputs, (&[], &rush), &elsewhere, &rules)
    };
    let rep = check(1);
    assert_eq!((rep.rush, rep.pending, rep.violations.len()), (1, 2, 0), "{rep:?}");
    // The lane committed past input 1's copy without it reaching Rush: lost.
    let rep = check(2);
    assert_eq!(rep.violations, vec![Violation::Missing { input: At { partition: 0, offset: 1 } }]);
    assert_eq!(rep.pending, 1);
}

#[test]
fn a_dead_lettered_input_is_accounted_for_not_lost() {
    let r = header_route();
    let inputs: Vec<Record> = (0..2).map(|i| rec(1, i, Some("U2"), "{}")).collect();
    let key = TenancyKey::new("event_tenancy");
    let rules = Rules { tenancy: &key, volatile_headers: &["traceparent"] };
    let committed = BTreeMap::from([(1, 2)]);
    let (judged, pins) = (vec![true; 2], BTreeMap::new());
    let inputs = Inputs { records: &inputs, judged: &judged, committed: &committed, window_start: None, pins: &pins };
    let dead = |topic: &str, offset: &str, output: &str| {
        let mut r = rec(0, 0, None, "{}");
        r.headers = [("t", topic), ("p", "1"), ("o", offset), ("out", output)]
            .map(|(k, v)| (k.to_owned(), Some(v.as_bytes().to_vec())))
            .to_vec();
        r
    };
    // Input 1 was refused by payment's output; a record of another route or service says nothing.
    let letters = [
        dead("orders", "1", "orders.payment"),
        dead("other", "0", "orders.payment"),
        dead("orders", "0", "orders.shipping"),
    ];
    let h = Locators { input_topic: Some("t"), partition: Some("p"), offset: "o", output: "out" };
    let elsewhere = Elsewhere::default().dead_lettered(&letters, "orders", &h);
    let rep = check_service(&r, 0, &inputs, (&[], &[]), &elsewhere, &rules);
    assert_eq!(rep.dead_lettered, 1);
    assert_eq!(rep.violations, vec![Violation::Missing { input: At { partition: 1, offset: 0 } }]);
}

#[test]
fn duplicates_both_clusters_and_order_are_caught() {
    let r = header_route();
    let inputs: Vec<Record> = (0..3).map(|i| rec(0, i, Some("U1"), "{}")).collect();
    let prod =
        [copy(&inputs[0], 0, None), copy(&inputs[2], 1, None), copy(&inputs[1], 2, None), copy(&inputs[0], 3, None)];
    let rush = [copy(&inputs[2], 0, Some("U1_payment"))];
    let rep = run(&r, &inputs, &prod, &rush, 3);
    let at = |offset| At { partition: 0, offset };
    assert!(rep.violations.contains(&Violation::OutOfOrder { input: at(1), cluster: Cluster::Prod, output_offset: 2 }));
    assert!(rep.violations.contains(&Violation::Duplicated { input: at(0), cluster: Cluster::Prod, copies: 2 }));
    assert!(rep.violations.contains(&Violation::OnBoth { input: at(2) }));
    assert_eq!(rep.violations.len(), 3, "{:#?}", rep.violations);
}

#[test]
fn stamps_and_impossible_clusters_are_caught() {
    let r = header_route();
    let inputs = [rec(0, 0, Some("U1"), "{}"), rec(0, 1, None, "{}"), rec(0, 2, Some("U3"), "{}")];
    let rush =
        [copy(&inputs[0], 0, Some("U1_shipping")), copy(&inputs[1], 1, Some("_payment")), copy(&inputs[2], 2, None)];
    let rep = run(&r, &inputs, &[], &rush, 3);
    assert_eq!(rep.violations.len(), 3, "{:#?}", rep.violations);
    assert!(matches!(&rep.violations[0], Violation::Stamp { want, .. } if want == "U1_payment"));
    assert!(matches!(&rep.violations[1], Violation::WrongCluster { why, .. } if why.contains("no_user")));
    assert!(matches!(&rep.violations[2], Violation::Stamp { found, .. } if found.contains("header \"\"")));
}

#[test]
fn a_trusted_upstream_stamp_decides_where_the_event_must_be() {
    let mut r = header_route();
    r.upstream_stamps = crate::config::UpstreamStamps::Trust;
    let mut input = rec(0, 0, Some("U9"), "{}");
    input.headers.push(("event_tenancy".into(), Some(b"U9_payment".to_vec())));
    let rep = run(&r, std::slice::from_ref(&input), &[copy(&input, 0, None)], &[], 1);
    assert!(matches!(&rep.violations[..], [Violation::WrongCluster { cluster: Cluster::Prod, .. }]), "{rep:?}");
    // Verified (the default), the whitelist of the time decides: prod is right for a stamp it
    // did not hold.
    r.upstream_stamps = crate::config::UpstreamStamps::Verify;
    let rep = run(&r, std::slice::from_ref(&input), &[copy(&input, 0, None)], &[], 1);
    assert!(rep.violations.is_empty(), "{rep:?}");
}

#[test]
fn outputs_matching_nothing_are_reported() {
    let r = header_route();
    let inputs = [rec(0, 0, Some("U2"), "{}")];
    let mut changed = copy(&inputs[0], 0, None);
    changed.payload = Some(b"{\"x\":1}".to_vec());
    let rep = run(&r, &inputs, &[changed], &[], 0);
    assert_eq!(rep.violations, vec![Violation::Unknown { cluster: Cluster::Prod, partition: 0, output_offset: 0 }]);
    assert_eq!(rep.pending, 1);
}

#[test]
fn payload_stamps_are_matched_however_they_were_spliced() {
    let key = TenancyKey::new("event_tenancy");
    for (input, stamped) in [
        (r#"{"a":1}"#, r#"{"event_tenancy":"U1_payment","a":1}"#),
        (r#"{ "a": 1 }"#, r#"{"event_tenancy":"U1_payment", "a": 1 }"#),
        ("{}", r#"{"event_tenancy":"U1_payment"}"#),
        (r#"{"a":1, "event_tenancy" : "x", "b":2}"#, r#"{"a":1, "event_tenancy" : "U1_payment", "b":2}"#),
        (r#"{"a":1,"event_tenancy":"x"}"#, r#"{"a":1,"event_tenancy":"U1_payment"}"#),
    ] {
        assert_eq!(without_member(input.as_bytes(), &key), without_member(stamped.as_bytes(), &key), "{input}");
    }
    assert_eq!(without_member(br#"{"a":1}"#, &key), br#"{"a":1}"#);

    let r = route(StampMode::Payload, UserLocator::Json(JsonPointer::parse("/user_id").unwrap()));
    let inputs = [rec(1, 0, None, r#"{"user_id":"U1","n":1}"#), rec(1, 1, None, r#"{"user_id":"U2","n":2}"#)];
    let mut rush = copy(&inputs[0], 0, None);
    rush.payload = Some(br#"{"event_tenancy":"U1_payment","user_id":"U1","n":1}"#.to_vec());
    let rep = run(&r, &inputs, &[copy(&inputs[1], 0, None)], &[rush], 2);
    assert_eq!(rep.violations, vec![]);
    assert_eq!((rep.prod, rep.rush), (1, 1));
}

#[test]
fn the_return_path_is_checked_for_loss_and_duplicates() {
    let key = TenancyKey::new("event_tenancy");
    let rules = Rules { tenancy: &key, volatile_headers: &["tenancy-origin", "tenancy-origin-topic"] };
    let rush: Vec<Record> = (0..3).map(|i| rec(2, i, Some("U1"), "{}")).collect();
    let mut fwd = copy(&rush[0], 10, None);
    fwd.headers.push(("tenancy-origin".into(), Some(b"rush".to_vec())));
    let prod = [fwd.clone(), copy(&fwd, 11, None), copy(&rush[2], 12, None)];
    let committed = [(2, 3)].into_iter().collect();
    let judged = [true; 3];
    let pins = BTreeMap::new();
    let inputs = Inputs { records: &rush, judged: &judged, committed: &committed, window_start: None, pins: &pins };
    let rep = check_return("orders", &inputs, &prod, &HashSet::new(), &rules);
    assert_eq!(rep.forwarded, 2);
    assert_eq!(
        rep.violations,
        vec![
            Violation::Duplicated { input: At { partition: 2, offset: 0 }, cluster: Cluster::Prod, copies: 2 },
            Violation::Missing { input: At { partition: 2, offset: 1 } },
        ]
    );
    // The missing one was refused by prod and dead-lettered: accounted for.
    let mut letter = rec(0, 0, None, "{}");
    letter.headers = [("t", "rush:orders"), ("p", "2"), ("o", "1")]
        .map(|(k, v)| (k.to_owned(), Some(v.as_bytes().to_vec())))
        .to_vec();
    let h = Locators { input_topic: Some("t"), partition: Some("p"), offset: "o", output: "out" };
    let dead = dead_lettered_from(&[letter], "rush:orders", &h);
    let rep = check_return("orders", &inputs, &prod, &dead, &rules);
    assert_eq!((rep.dead_lettered, rep.violations.len()), (1, 1));
}

#[test]
fn a_time_window_judges_only_its_inputs_and_ignores_older_unmatched_outputs() {
    let key = TenancyKey::new("event_tenancy");
    let rules = Rules { tenancy: &key, volatile_headers: &[] };
    let r = header_route();
    // Offsets 0..4 (timestamps 1000..1003), the third one late: 900. The window starts at 1001.
    let mut inputs: Vec<Record> = (0..4).map(|i| rec(0, i, Some("U2"), "{}")).collect();
    inputs[2].timestamp = Some(900);
    let judged: Vec<bool> = inputs.iter().map(|r| r.timestamp.is_some_and(|t| t >= 1001)).collect();
    let committed = [(0, 4)].into_iter().collect();
    let pins = BTreeMap::new();
    let window =
        Inputs { records: &inputs, judged: &judged, committed: &committed, window_start: Some(1001), pins: &pins };
    // Outputs in input order, plus one old output whose input was never read.
    let mut stray = rec(0, 99, Some("U2"), "{\"old\":1}");
    stray.timestamp = Some(500);
    let prod: Vec<Record> =
        [stray].into_iter().chain(inputs.iter().enumerate().map(|(i, x)| copy(x, i as i64 + 1, None))).collect();
    let rep = check_service(&r, 1, &window, (&prod, &[]), &Elsewhere::default(), &rules);
    assert_eq!(rep.violations, vec![], "{:#?}", rep.violations);
    assert_eq!((rep.inputs, rep.prod), (2, 2));
}

#[test]
fn recorded_decisions_say_which_cluster_an_event_belongs_to() {
    use crate::pinning::{Chain, Epoch, Pin};
    use crate::whitelist::{Entry, Snapshot};
    use std::sync::Arc;
    let r = header_route();
    let key = TenancyKey::new("event_tenancy");
    let rules = Rules { tenancy: &key, volatile_headers: &[] };
    let committed = (0..3).map(|p| (p, 4)).collect();
    // U1 is whitelisted for payment from offset 2 on (version 2), not before (version 1).
    let listed = Snapshot::new(2, [("U1".into(), Entry::new(vec!["payment".into()], i64::MAX))]);
    let mut chain = Chain::default();
    chain.apply(Pin { from: 0, epoch: Arc::new(Epoch::new(Arc::new(Snapshot::new(1, [])), 0)), claim: 0 });
    chain.apply(Pin { from: 2, epoch: Arc::new(Epoch::new(Arc::new(listed), 0)), claim: 0 });
    let pins: BTreeMap<i32, Chain> = [(0, chain)].into();
    let inputs: Vec<Record> = (0..4).map(|i| rec(0, i, Some("U1"), "{}")).collect();
    let judged = vec![true; 4];
    let window = Inputs { records: &inputs, judged: &judged, committed: &committed, window_start: None, pins: &pins };
    // 0 and 2 went the right way; 1 reached Rush though unlisted then, 3 prod though listed.
    let prod = [copy(&inputs[0], 0, None), copy(&inputs[3], 1, None)];
    let rush = [copy(&inputs[1], 0, Some("U1_payment")), copy(&inputs[2], 1, Some("U1_payment"))];
    let rep = check_service(&r, 0, &window, (&prod, &rush), &Elsewhere::default(), &rules);
    let wrong: Vec<(i64, Cluster)> = rep
        .violations
        .iter()
        .filter_map(|v| match v {
            Violation::WrongCluster { input, cluster, why } => {
                assert!(why.contains("pinned for it (version"), "{why}");
                Some((input.offset, *cluster))
            }
            _ => None,
        })
        .collect();
    assert_eq!(wrong, vec![(1, Cluster::Rush), (3, Cluster::Prod)]);
    assert_eq!(rep.violations.len(), 2);
    assert_eq!(rep.pinned, 4);
    // Without the log, the same outputs are all acceptable: the whitelist could have said either.
    let none = BTreeMap::new();
    let blind = Inputs { pins: &none, ..window };
    assert_eq!(check_service(&r, 0, &blind, (&prod, &rush), &Elsewhere::default(), &rules).violations, vec![]);
}
