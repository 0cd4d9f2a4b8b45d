//! The relay's state that is not a count: what readiness and the demo read. Every count lives
//! in [`crate::metrics::Metrics`] alone; the exit [`Summary`] is read from there.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

use crate::extract::Passthrough;
use crate::kafka::ErrorClass;
use crate::metrics::Metrics;
use crate::tenancy::Cluster;

/// The relay's three producers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProducerRole {
    /// Prod outputs of the forward direction.
    Prod,
    /// Rush copies, written by the Rush lane from the outbox.
    Rush,
    /// The return path's writes to prod.
    Return,
}

impl ProducerRole {
    pub const ALL: [Self; 3] = [Self::Prod, Self::Rush, Self::Return];

    pub fn name(self) -> &'static str {
        match self {
            Self::Prod => "prod producer",
            Self::Rush => "rush producer",
            Self::Return => "return-path producer",
        }
    }
}

/// Which way a consumer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Prod route topics → per-service outputs.
    Forward,
    /// Rush raw topics → the same topics on prod.
    Return,
    /// The prod outbox → Rush copies on Rush.
    RushLane,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forward => "forward",
            Self::Return => "return",
            Self::RushLane => "rush",
        }
    }

    /// The cluster this direction consumes from.
    pub fn source(self) -> Cluster {
        match self {
            Self::Forward | Self::RushLane => Cluster::Prod,
            Self::Return => Cluster::Rush,
        }
    }

    /// The consumer's name in client metrics.
    pub fn client(self) -> &'static str {
        match self {
            Self::Forward => "consumer-prod",
            Self::Return => "consumer-rush",
            Self::RushLane => "consumer-rush-lane",
        }
    }
}

#[derive(Debug, Default)]
pub struct Health {
    /// Highest number of input records seen in flight (read, not fully acknowledged).
    pub in_flight_peak: AtomicUsize,
    /// The same in bytes of input keys and payloads.
    pub in_flight_bytes_peak: AtomicUsize,
    /// Partitions each direction's consumer owns now.
    assigned: [AtomicUsize; 3],
    /// A producer reported a fatal error (e.g. lost idempotence): not ready any more.
    pub producer_fatal: AtomicBool,
    /// The input consumer has received an assignment (possibly empty: more instances than
    /// partitions is a healthy, idle member).
    pub joined: AtomicBool,
    /// Per producer: no broker up at the last statistics report.
    unreachable: [AtomicBool; 3],
    /// Why the Rush lane is not writing (it retries on its own); `None` while it is.
    rush_lane_down: std::sync::Mutex<Option<String>>,
    /// The Rush-side topics were checked (the return path waits for it); those of the routes in
    /// `rush_routes_broken` could not be made right.
    pub rush_topics_ready: AtomicBool,
    /// Moves each time the Rush lane readies the topics of an environment it had not readied
    /// before in this process: the return path then starts again to read its raw topic too.
    pub rush_envs_changed: std::sync::atomic::AtomicU64,
    /// The environments readied so far (a lane that restarts readies them again, and that
    /// must not restart the return path).
    rush_envs_seen: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Per route whose Rush topics are unusable: why. Its copies wait; other routes flow.
    rush_routes_broken: std::sync::Mutex<Vec<String>>,
    /// Environments whose Rush topics take copies on fewer or more partitions than their input.
    rush_envs_degraded: std::sync::Mutex<Vec<String>>,
    /// Why the forward direction is starting again (production outputs wait); `None` while it runs.
    forward_down: std::sync::Mutex<Option<String>>,
}

impl Health {
    pub fn assigned(&self, d: Direction) -> &AtomicUsize {
        &self.assigned[d as usize]
    }

    pub fn set_unreachable(&self, p: ProducerRole, down: bool) {
        self.unreachable[p as usize].store(down, Relaxed);
    }

    pub fn unreachable(&self, p: ProducerRole) -> bool {
        self.unreachable[p as usize].load(Relaxed)
    }

    pub fn set_forward_down(&self, why: Option<String>) {
        if let Ok(mut g) = self.forward_down.lock() {
            *g = why;
        }
    }

    /// Why production outputs are not being written now, if they are not.
    pub fn forward_down(&self) -> Option<String> {
        self.forward_down.lock().ok().and_then(|g| g.clone())
    }

    pub fn set_rush_lane_down(&self, why: Option<String>) {
        if let Ok(mut g) = self.rush_lane_down.lock() {
            *g = why;
        }
    }

    pub fn set_rush_routes_broken(&self, why: Vec<String>) {
        if let Ok(mut g) = self.rush_routes_broken.lock() {
            *g = why;
        }
    }

    /// The Rush lane readied environment `env`'s topics; the first time, the return path is
    /// told.
    pub fn rush_env_ready(&self, env: &str) {
        let new = self.rush_envs_seen.lock().is_ok_and(|mut seen| seen.insert(env.to_owned()));
        if new {
            self.rush_envs_changed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn set_rush_envs_degraded(&self, why: Vec<String>) {
        if let Ok(mut g) = self.rush_envs_degraded.lock() {
            *g = why;
        }
    }

    /// Why the Rush side is degraded: production is unaffected, Rush copies wait in the outbox.
    pub fn rush_degraded(&self) -> Vec<String> {
        let mut why = self.rush_routes_broken.lock().map(|g| g.clone()).unwrap_or_default();
        why.extend(self.rush_envs_degraded.lock().map(|g| g.clone()).unwrap_or_default());
        if self.unreachable(ProducerRole::Rush) {
            why.push("rush producer: no broker up".to_owned());
        }
        if let Some(w) = self.rush_lane_down.lock().ok().and_then(|g| g.clone()) {
            why.push(format!("rush lane: {w}"));
        }
        why
    }
}

/// What a run did, printed at exit; read from the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub records_in: u64,
    pub outputs_prod: u64,
    pub outputs_rush: u64,
    pub upstream_honoured: u64,
    /// Copies kept on prod because the whitelist did not hold the stamp's (user, service).
    pub upstream_rejected: u64,
    pub return_forwarded: u64,
    pub return_looped: u64,
    pub lookup_unanswered: u64,
    pub passthrough: [(&'static str, u64); Passthrough::ALL.len()],
    pub produce_errors: [(&'static str, u64); 3],
}

impl Summary {
    pub fn read(m: &Metrics) -> Self {
        Self {
            records_in: m.sum(&m.records_in, &[]),
            outputs_prod: m.sum(&m.records_out, &[("cluster", "prod")]),
            outputs_rush: m.sum(&m.records_out, &[("cluster", "rush")]),
            upstream_honoured: m.sum(&m.upstream_honoured, &[]),
            upstream_rejected: m.sum(&m.upstream_rejected, &[]),
            return_forwarded: m.sum(&m.return_records, &[("outcome", "forwarded")]),
            return_looped: m.sum(&m.return_records, &[("outcome", "looped")]),
            lookup_unanswered: m.lookup_unanswered.get(),
            passthrough: Passthrough::ALL.map(|p| (p.as_str(), m.sum(&m.passthrough, &[("reason", p.as_str())]))),
            produce_errors: [ErrorClass::Retry, ErrorClass::Fatal, ErrorClass::Poison]
                .map(|c| (c.as_str(), m.sum(&m.produce_errors, &[("class", c.as_str())]))),
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "records in {}, acknowledged outputs: prod {}, rush {}; upstream stamps honoured {}, rejected {}; passthrough",
            self.records_in, self.outputs_prod, self.outputs_rush, self.upstream_honoured, self.upstream_rejected
        )?;
        for (reason, n) in self.passthrough {
            write!(f, " {reason}={n}")?;
        }
        if self.lookup_unanswered > 0 {
            write!(f, "; production for want of a whitelist answer {}", self.lookup_unanswered)?;
        }
        write!(f, "; return path forwarded {}, loops dropped {}", self.return_forwarded, self.return_looped)?;
        write!(f, "; produce errors")?;
        for (class, n) in self.produce_errors {
            write!(f, " {class}={n}")?;
        }
        Ok(())
    }
}
