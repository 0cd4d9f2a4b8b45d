//! Headers as the relay writes them: an input's headers seen through the core's [`Headers`]
//! trait, the copies each output gets, trace context, and the return path's provenance.

use rdkafka::message::{Header, Headers as KafkaHeaders, OwnedHeaders};

use crate::config::Config;
use crate::environment;
use crate::extract::Headers;
use crate::telemetry::{Propagated, TRACEPARENT, TRACESTATE};

/// The rdkafka headers of an input record, seen through the core's [`Headers`] trait.
pub struct InputHeaders<'a, H>(pub Option<&'a H>);

impl<H: KafkaHeaders> Headers for InputHeaders<'_, H> {
    fn last(&self, name: &str) -> Option<&[u8]> {
        let h = self.0?;
        (0..h.count()).rev().map(|i| h.get(i)).find(|h| h.key == name).and_then(|h| h.value)
    }
}

pub(crate) fn copy_headers<H: KafkaHeaders>(h: &H) -> OwnedHeaders {
    let mut out = OwnedHeaders::new_with_capacity(h.count());
    for x in h.iter() {
        out = out.insert(Header { key: x.key, value: x.value });
    }
    out
}

/// `h` without the headers named in `drop`, trace context kept.
pub(crate) fn copy_without<H: KafkaHeaders>(h: &H, drop: &[&str]) -> OwnedHeaders {
    let mut out = OwnedHeaders::new_with_capacity(h.count());
    for x in h.iter().filter(|x| !drop.contains(&x.key)) {
        out = out.insert(Header { key: x.key, value: x.value });
    }
    out
}

/// `input` without the headers named in `drop` (on a Rush copy: the tenancy stamp and the
/// return-path provenance) and any trace context, then `trace`'s context.
pub(crate) fn with_trace<H: KafkaHeaders>(input: Option<&H>, drop: &[&str], trace: &Propagated) -> OwnedHeaders {
    let n = input.map_or(0, |h| h.count()) + 3;
    let mut out = OwnedHeaders::new_with_capacity(n);
    if let Some(h) = input {
        for x in h.iter().filter(|x| x.key != TRACEPARENT && x.key != TRACESTATE && !drop.contains(&x.key)) {
            out = out.insert(Header { key: x.key, value: x.value });
        }
    }
    if let Some(tp) = &trace.traceparent {
        out = out.insert(Header { key: TRACEPARENT, value: Some(tp) });
    }
    if let Some(ts) = &trace.tracestate {
        out = out.insert(Header { key: TRACESTATE, value: Some(ts) });
    }
    out
}

/// On an outbox record: the Rush topic its copy goes to.
pub const OUTBOX_OUTPUT: &str = "tenancy-bridge-output";
/// On an outbox record: the input offset it was decided from (same partition as the input).
pub const OUTBOX_INPUT_OFFSET: &str = "tenancy-bridge-input-offset";
/// On an outbox record: the input's own timestamp (ms), which its Rush copy keeps. The outbox
/// itself is stamped with log-append time, so its retention counts from when a copy was
/// decided: a back-filled old event must not expire from the outbox before it is carried.
pub const OUTBOX_INPUT_TIMESTAMP: &str = "tenancy-bridge-input-timestamp";
/// On an outbox record whose copy goes to an environment other than the default one: its
/// name. The Rush lane writes the copy to that environment's topic for [`OUTBOX_OUTPUT`].
pub const OUTBOX_ENV: &str = "tenancy-bridge-env";
/// Every header the bridge puts on an outbox record for the Rush lane alone.
pub const OUTBOX_HEADERS: [&str; 4] = [OUTBOX_OUTPUT, OUTBOX_INPUT_OFFSET, OUTBOX_INPUT_TIMESTAMP, OUTBOX_ENV];

/// On a dead-letter record: where it came from, which output refused it and why.
pub mod dead_letter {
    pub const TOPIC: &str = "tenancy-bridge-dlq-topic";
    pub const PARTITION: &str = "tenancy-bridge-dlq-partition";
    pub const OFFSET: &str = "tenancy-bridge-dlq-offset";
    pub const SERVICE: &str = "tenancy-bridge-dlq-service";
    pub const OUTPUT: &str = "tenancy-bridge-dlq-output";
    pub const CLUSTER: &str = "tenancy-bridge-dlq-cluster";
    pub const REASON: &str = "tenancy-bridge-dlq-reason";
    pub const ERROR: &str = "tenancy-bridge-dlq-error";
    /// Set when the value itself was too large for the dead-letter topic: its length in bytes.
    pub const VALUE_OMITTED: &str = "tenancy-bridge-dlq-value-omitted";
}

/// Names of the two provenance headers: origin (the environment it came from, `rush` for the
/// default one) and the raw topic it came through.
#[derive(Debug, Clone)]
pub struct Provenance {
    pub origin: String,
    pub topic: String,
}

impl Provenance {
    pub fn new(config: &Config) -> Self {
        let origin = config.bridge.origin_header.clone();
        Self { topic: format!("{origin}-topic"), origin }
    }

    /// True when `headers` say the record already came through the return path of `topic`,
    /// from any environment.
    pub fn came_through<H: Headers + ?Sized>(&self, headers: &H, topic: &str) -> bool {
        let from_env =
            headers.last(&self.origin).and_then(|v| std::str::from_utf8(v).ok()).is_some_and(environment::valid);
        from_env && headers.last(&self.topic) == Some(topic.as_bytes())
    }

    /// The input headers, earlier provenance and trace context replaced by this hop's: the
    /// origin header names the environment it came from (`rush`, the default environment's
    /// name, as before environments), the topic header the route.
    pub(crate) fn stamp<H: KafkaHeaders>(
        &self,
        headers: Option<&H>,
        topic: &str,
        env: &str,
        trace: &Propagated,
    ) -> OwnedHeaders {
        with_trace(headers, &[&self.origin, &self.topic], trace)
            .insert(Header { key: &self.origin, value: Some(env) })
            .insert(Header { key: &self.topic, value: Some(topic) })
    }
}
