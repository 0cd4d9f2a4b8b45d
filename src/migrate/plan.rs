//! Where a stopped consumer group resumes when it moves between a raw topic and its filtered
//! one (pure: no Kafka client here).
//!
//! Prod outputs are the input's bytes, unchanged, so an output is matched to its input by
//! its whole content (key, timestamp, every header, payload) in partition order, as `verify`
//! matches them. The match is an offset map per
//! partition; a move is exact only where the map proves it, and refused (with the reason)
//! everywhere else.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::verify::check::Record;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the raw topic `T` to the filtered `T.S`.
    Filtered,
    /// From `T.S` back to `T`.
    Raw,
}

/// Which output record each input became, for one partition.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OffsetMap {
    /// (input offset, output offset), both increasing.
    pub pairs: Vec<(i64, i64)>,
    /// Outputs identical to an input an earlier output already took: copies written again
    /// after a crash (at-least-once).
    pub copies: Vec<i64>,
    /// Outputs that match no input read: their input was deleted (retention, a recreated
    /// topic), is outside what was read, or someone else wrote them. A move across one of
    /// these cannot be proved.
    pub unknown: Vec<i64>,
}

impl OffsetMap {
    /// Matches `outputs` to `inputs` (one partition each, in offset order): every output takes
    /// the first input with its identity after the input the previous output took.
    pub fn build(inputs: &[Record], outputs: &[Record], identity: impl Fn(&Record) -> u64) -> Self {
        let mut by_identity: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, r) in inputs.iter().enumerate() {
            by_identity.entry(identity(r)).or_default().push(i);
        }
        let mut map = Self::default();
        let mut last: Option<usize> = None;
        for o in outputs {
            let Some(candidates) = by_identity.get(&identity(o)) else {
                map.unknown.push(o.offset);
                continue;
            };
            let k = candidates.partition_point(|&i| last.is_some_and(|l| i <= l));
            match candidates.get(k) {
                Some(&i) => {
                    last = Some(i);
                    map.pairs.push((inputs[i].offset, o.offset));
                }
                None => map.copies.push(o.offset),
            }
        }
        map
    }

    /// The output offset input `offset` became, if it did.
    pub fn output_of(&self, offset: i64) -> Option<i64> {
        let k = self.pairs.partition_point(|(i, _)| *i < offset);
        self.pairs.get(k).filter(|(i, _)| *i == offset).map(|(_, o)| *o)
    }

    /// The first output at or after `from` (and before `to`, if given) that matches nothing.
    fn unknown_in(&self, from: i64, to: Option<i64>) -> Option<i64> {
        self.unknown.iter().copied().find(|o| *o >= from && to.is_none_or(|t| *o < t))
    }
}

/// What is known of one partition when the plan is made.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub partition: i32,
    /// The group's committed offset on the topic it leaves.
    pub group_at: Option<i64>,
    /// The group's committed offset on the topic it goes to, before the move.
    pub target_at: Option<i64>,
    /// The bridge's committed offset on the raw partition: every input before it is decided
    /// and its prod output acknowledged (or dead-lettered).
    pub bridge_at: Option<i64>,
    /// The first input offset with a decision on record (the bridge's first pin); `None` when
    /// the route keeps no decision log.
    pub map_start: Option<i64>,
    /// Log start of the raw partition.
    pub input_start: i64,
    /// Where the filtered partition was read from (its log start, or later with `--since`),
    /// and its high watermark.
    pub output_start: i64,
    pub output_high: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Commit `to` on the target topic.
    Move { to: i64, how: String },
    /// Nothing committed on the source partition: left alone.
    Skip(String),
    /// No exact answer: nothing is committed anywhere.
    Refuse(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlan {
    pub partition: i32,
    pub from: Option<i64>,
    pub target_before: Option<i64>,
    pub step: Step,
}

impl PartitionPlan {
    /// Whether committing this plan changes the group's offset.
    pub fn changes(&self) -> bool {
        matches!(&self.step, Step::Move { to, .. } if self.target_before != Some(*to))
    }
}

/// Topic names, for messages.
#[derive(Debug, Clone, Copy)]
pub struct Names<'a> {
    pub raw: &'a str,
    pub filtered: &'a str,
}

pub fn plan(direction: Direction, f: &Facts, map: &OffsetMap, n: Names<'_>) -> PartitionPlan {
    let step = match direction {
        Direction::Filtered => to_filtered(f, map, n),
        Direction::Raw => to_raw(f, map, n),
    };
    PartitionPlan { partition: f.partition, from: f.group_at, target_before: f.target_at, step }
}

fn to_filtered(f: &Facts, map: &OffsetMap, n: Names<'_>) -> Step {
    let p = f.partition;
    let Some(c) = f.group_at else {
        return skip(f, n.raw, n.filtered);
    };
    if c < f.input_start {
        return Step::Refuse(format!(
            "its position {c} on {}[{p}] was deleted by retention (log start {}): the group itself would reset",
            n.raw, f.input_start
        ));
    }
    let first_input = map.pairs.first().map(|(i, _)| *i);
    match f.map_start {
        Some(m) if c < m => {
            return Step::Refuse(format!(
                "its position {c} is older than anything the bridge has mapped: the first decision on record for \
                 {}[{p}] is at offset {m}, so events {c}..{m} never reached {}",
                n.raw, n.filtered
            ));
        }
        None if first_input.is_none_or(|i| i > c) => {
            return Step::Refuse(format!(
                "no decision log for {} (decided before pins existed?) and no output of {}[{p}] at or before offset {c}: where the \
                 bridge started on this partition cannot be proved",
                n.raw, n.raw
            ));
        }
        _ => {}
    }
    match f.bridge_at {
        None => return Step::Refuse(format!("the bridge has committed nothing on {}[{p}] yet", n.raw)),
        Some(b) if b < c => {
            return Step::Refuse(format!(
                "the group is ahead of the bridge ({c} against the bridge's {b}): events before {c} may still be \
                 on their way to {}; run again once the bridge has passed {c}",
                n.filtered
            ));
        }
        Some(_) => {}
    }
    // The outputs before the first pair are gone or unread; they all came from inputs below
    // `c` only if the first pair's input is at most `c`.
    if f.output_start > 0 && first_input.is_none_or(|i| i > c) {
        return Step::Refuse(format!(
            "{}[{p}] is not read before offset {} (retention, or --since): the outputs of the events just before \
             {c} are not there, so where {c} lands cannot be proved",
            n.filtered, f.output_start
        ));
    }
    // Outputs from inputs before `c` end at the last pair below `c`; an unknown output after it
    // could be one of them or a later one.
    let known_until = map.pairs.iter().take_while(|(i, _)| *i < c).last().map_or(f.output_start, |(_, o)| o + 1);
    let next = map.pairs.iter().find(|(i, _)| *i >= c);
    let (to, mut how) = match next {
        Some((i, o)) => {
            (*o, format!("the first output from an event at or after {c} is {}@{o} (input {i})", n.filtered))
        }
        None => {
            let end = [map.pairs.last().map(|(_, o)| o + 1), map.copies.last().map(|o| o + 1)];
            let to = end.into_iter().flatten().fold(f.output_start, i64::max);
            (to, format!("no output from an event at or after {c} yet: after the last output of {}", n.filtered))
        }
    };
    if let Some(u) = map.unknown_in(known_until, next.map(|_| to)) {
        return unknown_refusal(n, p, u);
    }
    let again = map.copies.iter().filter(|o| **o >= to).count();
    if again > 0 {
        let _ = write!(how, "; {again} outputs after it are copies written again (at-least-once): seen twice");
    }
    Step::Move { to, how }
}

fn unknown_refusal(n: Names<'_>, p: i32, at: i64) -> Step {
    Step::Refuse(format!(
        "{}[{p}]@{at} matches no record of {}[{p}] read (its input deleted by retention, the topic recreated, or \
         written by something else): a move across it cannot be proved",
        n.filtered, n.raw
    ))
}

/// No committed offset on the source: left alone, unless one on the target would then decide
/// where the group resumes.
fn skip(f: &Facts, source: &str, target: &str) -> Step {
    let p = f.partition;
    match f.target_at {
        None => Step::Skip(format!("no committed offset on {source}[{p}]: left alone")),
        Some(t) => Step::Refuse(format!(
            "no committed offset on {source}[{p}], but {t} on {target}[{p}]: which one the group last used cannot \
             be told"
        )),
    }
}

fn to_raw(f: &Facts, map: &OffsetMap, n: Names<'_>) -> Step {
    let p = f.partition;
    let Some(o) = f.group_at else {
        return skip(f, n.filtered, n.raw);
    };
    if o < f.output_start {
        return Step::Refuse(format!(
            "its position {o} on {}[{p}] is before what was read (log start or --since: {}): what it skipped \
             cannot be mapped",
            n.filtered, f.output_start
        ));
    }
    if o > f.output_high {
        return Step::Refuse(format!(
            "its position {o} is beyond the end of {}[{p}] ({}): not a position this topic ever had",
            n.filtered, f.output_high
        ));
    }
    if let Some((i, out)) = map.pairs.iter().find(|(_, out)| *out >= o) {
        if let Some(u) = map.unknown_in(o, Some(*out)) {
            return unknown_refusal(n, p, u);
        }
        return Step::Move { to: *i, how: format!("its next output {}@{out} is input {i}", n.filtered) };
    }
    if let Some(u) = map.unknown_in(o, None) {
        return unknown_refusal(n, p, u);
    }
    let after_last = map.pairs.last().map(|(i, _)| i + 1);
    match after_last.into_iter().chain(f.bridge_at).chain(f.map_start).max() {
        Some(to) => Step::Move {
            to,
            how: format!(
                "it has read every output; the bridge has decided {}[{p}] up to {}: the events before {to} it did \
                 not read went to Rush or the dead-letter topic",
                n.raw,
                f.bridge_at.map_or_else(|| "an unknown offset".to_owned(), |b| b.to_string())
            ),
        },
        None => Step::Refuse(format!("the bridge has mapped nothing on {}[{p}] yet", n.raw)),
    }
}

/// The plan as a table, one line per partition.
pub fn render(plans: &[PartitionPlan], source: &str, target: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{:>9}  {:>12}  {:>12}  {:>12}  how", "partition", source, format!("{target} now"), target);
    let show = |o: Option<i64>| o.map_or_else(|| "-".to_owned(), |o| o.to_string());
    for x in plans {
        let (to, how) = match &x.step {
            Step::Move { to, how } if x.target_before == Some(*to) => (to.to_string(), format!("unchanged; {how}")),
            Step::Move { to, how } => (to.to_string(), how.clone()),
            Step::Skip(why) => ("-".to_owned(), why.clone()),
            Step::Refuse(why) => ("REFUSED".to_owned(), why.clone()),
        };
        let _ =
            writeln!(s, "{:>9}  {:>12}  {:>12}  {:>12}  {how}", x.partition, show(x.from), show(x.target_before), to);
    }
    s
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
