//! Environments: named Rush deployments that run side by side (one per pull request, feature
//! or team). A whitelist placement puts a user's services in one; the environment names the
//! Rush topics its copies go to and come back from.
//!
//! Pure: names and topic names only.

use std::sync::Arc;

/// The default environment: whatever names none (old entries, old clients, old Config
/// Mappers). It keeps the topic names the bridge had before environments.
pub const DEFAULT: &str = "rush";

/// Longest environment name.
pub const MAX_LEN: usize = 40;

/// An environment's name, shared by every placement and decision that names it.
pub type Env = Arc<str>;

/// `[a-z0-9][a-z0-9-]{0,39}`: short enough to prefix a topic name, no '.' so the prefix is
/// unambiguous, lowercase so it is one name on every system that folds case.
pub fn valid(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_LEN
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Why `name` is no environment name, for an error that names the field.
pub fn check(name: &str) -> Result<(), String> {
    if valid(name) { Ok(()) } else { Err(format!("{name:?} is not an environment name ([a-z0-9][a-z0-9-]{{0,39}})")) }
}

pub fn is_default(name: &str) -> bool {
    name == DEFAULT
}

/// The Rush topic environment `env` uses for `topic` (an output `{topic}.{service}` or a raw
/// input `{topic}`): unchanged in the default environment, `{env}.{topic}` in any other, so one
/// prefix covers an environment's topics (ACLs, deletion).
pub fn rush_topic(env: &str, topic: &str) -> String {
    if is_default(env) { topic.to_owned() } else { format!("{env}.{topic}") }
}

/// The environment a Rush topic named `name` belongs to, given the topic the default
/// environment would use: `Some(env)` when `name` is `topic` (the default) or `{env}.{topic}`.
pub fn of_rush_topic<'a>(name: &'a str, topic: &str) -> Option<&'a str> {
    if name == topic {
        return Some(DEFAULT);
    }
    let env = name.strip_suffix(topic)?.strip_suffix('.')?;
    valid(env).then_some(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["rush", "pr-42", "0", "a-b-c", &"a".repeat(40)] {
            assert!(valid(ok), "{ok}");
        }
        for bad in ["", "-a", "Pr-42", "pr.42", "pr_42", &"a".repeat(41), "pr 42"] {
            assert!(!valid(bad), "{bad}");
        }
        assert!(check("PR").unwrap_err().contains("\"PR\""));
    }

    #[test]
    fn topics_round_trip() {
        assert_eq!(rush_topic("rush", "orders.payment"), "orders.payment");
        assert_eq!(rush_topic("pr-42", "orders.payment"), "pr-42.orders.payment");
        assert_eq!(of_rush_topic("pr-42.orders", "orders"), Some("pr-42"));
        assert_eq!(of_rush_topic("orders", "orders"), Some("rush"));
        assert_eq!(of_rush_topic("x.y.orders", "orders"), None, "an environment has no '.'");
        assert_eq!(of_rush_topic("porders", "orders"), None);
        assert_eq!(of_rush_topic(".orders", "orders"), None);
    }
}
