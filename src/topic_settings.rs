//! Which settings of an input topic its outputs carry, and which differences make an output
//! refuse records its input accepted. Pure: the values come from DescribeConfigs elsewhere.

use std::collections::BTreeMap;
use std::fmt;

/// Topic settings by key, as DescribeConfigs reports them.
pub type Settings = BTreeMap<String, String>;

/// What an output takes from its input: what fits in it (`max.message.bytes`), how it is
/// cleaned (`cleanup.policy`: a compacted input's outputs stay compacted), how long it keeps
/// records, and whose timestamp a record keeps.
pub const COPIED: [&str; 5] =
    ["max.message.bytes", "cleanup.policy", "retention.ms", "retention.bytes", "message.timestamp.type"];

/// Room on top of the largest input record for what the bridge adds to a copy: the stamp (a
/// header, or a member spliced into the payload), trace context, provenance and outbox headers.
pub const STAMP_ROOM: usize = 64 * 1024;

/// librdkafka's own `message.max.bytes`: the bridge never sets a smaller one.
pub const CLIENT_DEFAULT_MAX_BYTES: usize = 1_000_000;

/// The copied keys of `input`, to create an output with.
pub fn copied(input: &Settings) -> Vec<(&'static str, String)> {
    COPIED.iter().filter_map(|k| input.get(*k).map(|v| (*k, v.clone()))).collect()
}

/// Raises a copied `max.message.bytes` by [`STAMP_ROOM`], for a topic of stamped copies.
pub fn with_stamp_room(settings: &mut [(&'static str, String)]) {
    for (k, v) in settings.iter_mut() {
        if *k == "max.message.bytes" {
            if let Ok(n) = v.trim().parse::<usize>() {
                *v = (n + STAMP_ROOM).to_string();
            }
        }
    }
}

/// `max.message.bytes` of a topic, if it reports one that parses.
pub fn max_message_bytes(settings: &Settings) -> Option<usize> {
    settings.get("max.message.bytes").and_then(|v| v.trim().parse().ok())
}

/// The largest record any of `inputs` accepts, if any reports a limit.
pub fn record_limit<'a>(inputs: impl IntoIterator<Item = &'a Settings>) -> Option<usize> {
    inputs.into_iter().filter_map(max_message_bytes).max()
}

/// The producers' `message.max.bytes` for inputs accepting records up to `limit` bytes.
pub fn producer_max_bytes(limit: usize) -> usize {
    (limit + STAMP_ROOM).max(CLIENT_DEFAULT_MAX_BYTES)
}

/// One copied key on which an existing output differs from its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub key: &'static str,
    pub input: String,
    pub output: String,
    /// The output refuses records the input accepted (the others change retention or
    /// timestamps, not what gets in).
    pub refuses: bool,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let effect = if self.refuses { "refuses records its input accepts" } else { "differs" };
        write!(f, "{} = {} on the output, {} on the input ({effect})", self.key, self.output, self.input)
    }
}

/// Where an existing `output` differs from its `input` on the copied keys. Keys either side
/// does not report are not compared.
pub fn compare(input: &Settings, output: &Settings) -> Vec<Mismatch> {
    let mut found = Vec::new();
    for key in COPIED {
        let (Some(i), Some(o)) = (input.get(key), output.get(key)) else { continue };
        if i.trim() == o.trim() {
            continue;
        }
        let refuses = match key {
            "max.message.bytes" => match (i.trim().parse::<u64>(), o.trim().parse::<u64>()) {
                // A larger limit takes everything the input took.
                (Ok(i), Ok(o)) if o >= i => continue,
                (Ok(_), Ok(_)) => true,
                _ => false,
            },
            // A compacted topic refuses records without a key; a deleting one takes anything.
            "cleanup.policy" => compacts(o) && !compacts(i),
            _ => false,
        };
        found.push(Mismatch { key, input: i.clone(), output: o.clone(), refuses });
    }
    found
}

fn compacts(policy: &str) -> bool {
    policy.split(',').any(|p| p.trim() == "compact")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn only_the_copied_keys_are_copied() {
        let input = settings(&[("max.message.bytes", "4194304"), ("cleanup.policy", "compact"), ("segment.ms", "1")]);
        assert_eq!(
            copied(&input),
            vec![("max.message.bytes", "4194304".to_owned()), ("cleanup.policy", "compact".to_owned())]
        );
    }

    #[test]
    fn the_producer_limit_follows_the_largest_input_with_room_for_the_stamp() {
        let inputs = [settings(&[("max.message.bytes", "4194304")]), settings(&[("max.message.bytes", "x")])];
        assert_eq!(record_limit(&inputs), Some(4_194_304));
        assert_eq!(producer_max_bytes(4_194_304), 4_194_304 + STAMP_ROOM);
        assert_eq!(producer_max_bytes(1000), CLIENT_DEFAULT_MAX_BYTES);
        assert_eq!(record_limit(&[Settings::new()]), None);
        let mut rush = copied(&inputs[0]);
        with_stamp_room(&mut rush);
        assert_eq!(rush, vec![("max.message.bytes", (4_194_304 + STAMP_ROOM).to_string())]);
    }

    #[test]
    fn a_smaller_limit_or_a_compacted_output_refuses_records() {
        let input = settings(&[("max.message.bytes", "4194304"), ("cleanup.policy", "delete"), ("retention.ms", "1")]);
        let output = settings(&[("max.message.bytes", "1048588"), ("cleanup.policy", "compact,delete")]);
        let found = compare(&input, &output);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().all(|m| m.refuses));
        assert_eq!(
            found[0].to_string(),
            "max.message.bytes = 1048588 on the output, 4194304 on the input (refuses records its input accepts)"
        );
    }

    #[test]
    fn a_larger_limit_is_fine_and_other_differences_are_reported_as_such() {
        let input = settings(&[("max.message.bytes", "1000"), ("cleanup.policy", "compact"), ("retention.ms", "1")]);
        let output = settings(&[("max.message.bytes", "2000"), ("cleanup.policy", "delete"), ("retention.ms", "2")]);
        let found = compare(&input, &output);
        assert_eq!(
            found.iter().map(|m| (m.key, m.refuses)).collect::<Vec<_>>(),
            [("cleanup.policy", false), ("retention.ms", false)]
        );
    }
}
