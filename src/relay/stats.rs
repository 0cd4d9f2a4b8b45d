//! Counters of the relay, shared by the consumer thread and the delivery callbacks.
//! Cheap atomics; the metrics endpoint and the exit summary read them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use crate::extract::Passthrough;
use crate::kafka::ErrorClass;
use crate::tenancy::Cluster;

#[derive(Debug, Default)]
pub struct Stats {
    pub records_in: AtomicU64,
    pub outputs_prod: AtomicU64,
    pub outputs_rush: AtomicU64,
    pub acked_prod: AtomicU64,
    pub acked_rush: AtomicU64,
    pub upstream_honoured: AtomicU64,
    /// Highest number of input records seen in flight (read, not fully acknowledged).
    pub in_flight_peak: AtomicUsize,
    /// Input partitions this instance owns now.
    pub assigned_partitions: AtomicUsize,
    /// Return path: records read on Rush, acknowledged on prod, dropped as loops; Rush raw
    /// partitions owned.
    pub return_in: AtomicU64,
    pub return_forwarded: AtomicU64,
    pub return_looped: AtomicU64,
    pub return_assigned_partitions: AtomicUsize,
    /// A producer reported a fatal error (e.g. lost idempotence): not ready any more.
    pub producer_fatal: std::sync::atomic::AtomicBool,
    /// The input consumer has received an assignment (possibly empty: more instances than
    /// partitions is a healthy, idle member).
    pub joined: std::sync::atomic::AtomicBool,
    /// Per producer (prod, Rush, return path): no broker up at the last statistics report.
    pub producer_unreachable: [std::sync::atomic::AtomicBool; 3],
    passthrough: [AtomicU64; Passthrough::ALL.len()],
    produce_errors: [AtomicU64; 3],
}

impl Stats {
    pub fn output(&self, cluster: Cluster) {
        match cluster {
            Cluster::Prod => self.outputs_prod.fetch_add(1, Relaxed),
            Cluster::Rush => self.outputs_rush.fetch_add(1, Relaxed),
        };
    }

    pub fn acked(&self, cluster: Cluster) {
        match cluster {
            Cluster::Prod => self.acked_prod.fetch_add(1, Relaxed),
            Cluster::Rush => self.acked_rush.fetch_add(1, Relaxed),
        };
    }

    pub fn passthrough(&self, p: Passthrough) {
        let i = Passthrough::ALL.iter().position(|x| *x == p).unwrap_or(0);
        self.passthrough[i].fetch_add(1, Relaxed);
    }

    pub fn passthrough_count(&self, p: Passthrough) -> u64 {
        let i = Passthrough::ALL.iter().position(|x| *x == p).unwrap_or(0);
        self.passthrough[i].load(Relaxed)
    }

    pub fn produce_error(&self, class: ErrorClass) {
        self.produce_errors[class as usize].fetch_add(1, Relaxed);
    }

    pub fn produce_error_count(&self, class: ErrorClass) -> u64 {
        self.produce_errors[class as usize].load(Relaxed)
    }

    pub fn summary(&self) -> Summary {
        Summary {
            records_in: self.records_in.load(Relaxed),
            outputs_prod: self.acked_prod.load(Relaxed),
            outputs_rush: self.acked_rush.load(Relaxed),
            upstream_honoured: self.upstream_honoured.load(Relaxed),
            return_forwarded: self.return_forwarded.load(Relaxed),
            return_looped: self.return_looped.load(Relaxed),
            passthrough: Passthrough::ALL.map(|p| (p.as_str(), self.passthrough_count(p))),
            produce_errors: [ErrorClass::Retry, ErrorClass::Fatal, ErrorClass::Poison]
                .map(|c| (c.as_str(), self.produce_error_count(c))),
        }
    }
}

/// What a run did, printed at exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub records_in: u64,
    pub outputs_prod: u64,
    pub outputs_rush: u64,
    pub upstream_honoured: u64,
    pub return_forwarded: u64,
    pub return_looped: u64,
    pub passthrough: [(&'static str, u64); Passthrough::ALL.len()],
    pub produce_errors: [(&'static str, u64); 3],
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "records in {}, acknowledged outputs: prod {}, rush {}; upstream stamps honoured {}; passthrough",
            self.records_in, self.outputs_prod, self.outputs_rush, self.upstream_honoured
        )?;
        for (reason, n) in self.passthrough {
            write!(f, " {reason}={n}")?;
        }
        write!(f, "; return path forwarded {}, loops dropped {}", self.return_forwarded, self.return_looped)?;
        write!(f, "; produce errors")?;
        for (class, n) in self.produce_errors {
            write!(f, " {class}={n}")?;
        }
        Ok(())
    }
}
