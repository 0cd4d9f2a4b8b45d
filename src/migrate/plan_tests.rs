use super::*;
use crate::verify::check::exact_identity;

fn rec(offset: i64, payload: &str) -> Record {
    Record {
        partition: 0,
        offset,
        key: Some(b"k".to_vec()),
        payload: Some(payload.as_bytes().to_vec()),
        headers: vec![("x-user-id".into(), Some(b"U7".to_vec()))],
        timestamp: Some(1_000),
    }
}

const NAMES: Names<'static> = Names { raw: "orders", filtered: "orders.payment" };

/// Inputs e0..e9; e2, e3 and e7 went to Rush, so prod holds e0 e1 e4 e5 e6 e8 e9 at 0..7.
fn scene() -> (Vec<Record>, Vec<Record>) {
    let inputs: Vec<Record> = (0..10).map(|i| rec(i, &format!("e{i}"))).collect();
    let kept = [0, 1, 4, 5, 6, 8, 9];
    let outputs = kept.iter().enumerate().map(|(o, i)| rec(o as i64, &format!("e{i}"))).collect();
    (inputs, outputs)
}

fn map_of(inputs: &[Record], outputs: &[Record]) -> OffsetMap {
    OffsetMap::build(inputs, outputs, exact_identity)
}

fn facts(group_at: i64) -> Facts {
    Facts {
        partition: 0,
        group_at: Some(group_at),
        target_at: None,
        bridge_at: Some(10),
        map_start: Some(0),
        input_start: 0,
        output_start: 0,
        output_high: 7,
    }
}

fn moved(p: &PartitionPlan) -> i64 {
    match &p.step {
        Step::Move { to, .. } => *to,
        other => panic!("expected a move, got {other:?}"),
    }
}

fn refusal(p: &PartitionPlan) -> String {
    match &p.step {
        Step::Refuse(why) => why.clone(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn outputs_map_to_their_inputs_across_rush_gaps() {
    let (inputs, outputs) = scene();
    let map = map_of(&inputs, &outputs);
    assert_eq!(map.pairs, vec![(0, 0), (1, 1), (4, 2), (5, 3), (6, 4), (8, 5), (9, 6)]);
    assert!(map.copies.is_empty() && map.unknown.is_empty());
    assert_eq!(map.output_of(4), Some(2));
    assert_eq!(map.output_of(3), None);
}

#[test]
fn copies_written_again_match_nothing_and_identical_events_map_in_order() {
    let mut inputs: Vec<Record> = (0..4).map(|i| rec(i, "same")).collect();
    inputs.push(rec(4, "other"));
    // Outputs of 0..4, then 4 again (a rewrite after a crash): identical events map in order.
    let outputs: Vec<Record> = ["same", "same", "same", "same", "other"]
        .iter()
        .enumerate()
        .map(|(o, p)| rec(o as i64, p))
        .chain([rec(5, "other")])
        .collect();
    let map = map_of(&inputs, &outputs);
    assert_eq!(map.pairs, vec![(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]);
    assert_eq!(map.copies, vec![5]);
    assert!(map.unknown.is_empty());
}

#[test]
fn a_group_moves_to_the_first_output_of_an_event_it_has_not_processed() {
    let (inputs, outputs) = scene();
    let map = map_of(&inputs, &outputs);
    // Processed e0..e2 (committed 3): the next event for prod is e4, output 2.
    assert_eq!(moved(&plan(Direction::Filtered, &facts(3), &map, NAMES)), 2);
    // Processed e0..e3: same place, since e3 went to Rush.
    assert_eq!(moved(&plan(Direction::Filtered, &facts(4), &map, NAMES)), 2);
    assert_eq!(moved(&plan(Direction::Filtered, &facts(0), &map, NAMES)), 0);
    // Processed everything: the end of the filtered topic.
    assert_eq!(moved(&plan(Direction::Filtered, &facts(10), &map, NAMES)), 7);
}

#[test]
fn a_group_moves_back_to_the_input_of_its_next_output() {
    let (inputs, outputs) = scene();
    let map = map_of(&inputs, &outputs);
    // Read outputs 0..1 (e0, e1): the next is output 2 = e4; e2 and e3 went to Rush.
    assert_eq!(moved(&plan(Direction::Raw, &facts(2), &map, NAMES)), 4);
    // Read everything: the bridge's committed offset.
    assert_eq!(moved(&plan(Direction::Raw, &facts(7), &map, NAMES)), 10);
}

#[test]
fn a_round_trip_lands_where_it_started_or_past_rush_events_only() {
    let (inputs, outputs) = scene();
    let map = map_of(&inputs, &outputs);
    for c in 0..=10 {
        let there = moved(&plan(Direction::Filtered, &facts(c), &map, NAMES));
        let back = moved(&plan(Direction::Raw, &facts(there), &map, NAMES));
        assert!(back >= c, "{c} -> {there} -> {back}");
        for skipped in c..back {
            assert!(map.output_of(skipped).is_none(), "{c} -> {back} skips prod event {skipped}");
        }
    }
}

#[test]
fn positions_the_map_cannot_prove_are_refused_with_the_reason() {
    let (inputs, outputs) = scene();
    let map = map_of(&inputs, &outputs);
    let older = Facts { map_start: Some(5), ..facts(3) };
    assert!(
        refusal(&plan(Direction::Filtered, &older, &map, NAMES)).contains("older than anything the bridge has mapped")
    );
    let ahead = Facts { bridge_at: Some(4), ..facts(6) };
    assert!(
        refusal(&plan(Direction::Filtered, &ahead, &map, NAMES))
            .contains("ahead of the bridge (6 against the bridge's 4)")
    );
    let nothing = Facts { bridge_at: None, ..facts(3) };
    assert!(refusal(&plan(Direction::Filtered, &nothing, &map, NAMES)).contains("committed nothing"));
    // Outputs 0..2 deleted: the map starts at e4, after the position.
    let trimmed = map_of(&inputs, &outputs[2..]);
    let deleted = Facts { output_start: 2, ..facts(3) };
    assert!(refusal(&plan(Direction::Filtered, &deleted, &trimmed, NAMES)).contains("is not read before offset 2"));
    // No decision log and no output at or before the position.
    let unknown = Facts { map_start: None, ..facts(0) };
    let late = map_of(&inputs, &outputs[1..]);
    assert!(refusal(&plan(Direction::Filtered, &unknown, &late, NAMES)).contains("no decision log"));
    let beyond = plan(Direction::Raw, &facts(9), &map, NAMES);
    assert!(refusal(&beyond).contains("beyond the end"));
    let gone = Facts { output_start: 3, ..facts(1) };
    assert!(refusal(&plan(Direction::Raw, &gone, &map, NAMES)).contains("is before what was read"));
}

#[test]
fn a_partition_without_a_committed_offset_is_left_alone_and_a_repeat_changes_nothing() {
    let (inputs, outputs) = scene();
    let map = map_of(&inputs, &outputs);
    let none = Facts { group_at: None, ..facts(0) };
    assert!(matches!(plan(Direction::Filtered, &none, &map, NAMES).step, Step::Skip(_)));
    let first = plan(Direction::Filtered, &facts(3), &map, NAMES);
    assert!(first.changes());
    let again = plan(Direction::Filtered, &Facts { target_at: Some(2), ..facts(3) }, &map, NAMES);
    assert!(!again.changes());
    let table = render(&[first, again], "orders", "orders.payment");
    assert!(table.contains("unchanged;"), "{table}");
}

#[test]
fn an_output_matching_no_input_is_never_crossed() {
    let (inputs, mut outputs) = scene();
    // Output 3 (e5) is replaced by one whose input is not there.
    outputs[3] = rec(3, "from elsewhere");
    let map = map_of(&inputs, &outputs);
    assert_eq!(map.unknown, vec![3]);
    // Processed e0..e4: the next is e5, which is gone; e6's output is after the unknown one.
    assert!(refusal(&plan(Direction::Filtered, &facts(5), &map, NAMES)).contains("orders.payment[0]@3 matches no"));
    // Read outputs 0..2: the next ones are the unknown output, then e6.
    assert!(refusal(&plan(Direction::Raw, &facts(3), &map, NAMES)).contains("@3 matches no"));
    // Before it, or after it, a move is still proved.
    assert_eq!(moved(&plan(Direction::Filtered, &facts(2), &map, NAMES)), 2);
    assert_eq!(moved(&plan(Direction::Raw, &facts(4), &map, NAMES)), 6);
    // With no output after the position, an unknown one at the end is refused too.
    let mut tail = scene().1;
    tail.push(rec(7, "from elsewhere"));
    let map = map_of(&inputs, &tail);
    assert!(refusal(&plan(Direction::Filtered, &Facts { output_high: 8, ..facts(10) }, &map, NAMES)).contains("@7"));
}

#[test]
fn events_that_differ_only_in_an_upstream_stamp_are_not_confused() {
    // e@3 carries a stamp for payment (it went to Rush), e@4 is the same event without one.
    let mut inputs: Vec<Record> = (0..6).map(|i| rec(i, &format!("e{i}"))).collect();
    inputs[3] = rec(3, "twin");
    inputs[3].headers.push(("event_tenancy".into(), Some(b"U7_payment".to_vec())));
    inputs[4] = rec(4, "twin");
    let outputs: Vec<Record> = [0, 1, 2, 4, 5]
        .iter()
        .enumerate()
        .map(|(o, i)| {
            let mut r = inputs[*i].clone();
            r.offset = o as i64;
            r
        })
        .collect();
    let map = map_of(&inputs, &outputs);
    assert_eq!(map.pairs, vec![(0, 0), (1, 1), (2, 2), (4, 3), (5, 4)]);
    // Processed e0..e3: e4 is next, at output 3.
    assert_eq!(moved(&plan(Direction::Filtered, &facts(4), &map, NAMES)), 3);
}

#[test]
fn retention_up_to_the_position_itself_still_proves_the_move() {
    let (inputs, outputs) = scene();
    // Outputs 0..4 deleted; the first left is e4 at output 2: processed e0..e3, e4 is next.
    let trimmed = map_of(&inputs, &outputs[2..]);
    let f = Facts { output_start: 2, ..facts(4) };
    assert_eq!(moved(&plan(Direction::Filtered, &f, &trimmed, NAMES)), 2);
    let deleted_input = Facts { input_start: 5, ..facts(4) };
    assert!(refusal(&plan(Direction::Filtered, &deleted_input, &trimmed, NAMES)).contains("deleted by retention"));
}

#[test]
fn a_partition_left_alone_on_one_topic_but_committed_on_the_other_is_refused() {
    let (inputs, outputs) = scene();
    let map = map_of(&inputs, &outputs);
    let f = Facts { group_at: None, target_at: Some(3), ..facts(0) };
    assert!(refusal(&plan(Direction::Filtered, &f, &map, NAMES)).contains("which one the group last used"));
}
