//! Writing outputs: the one [`Writer`] per direction, and the dead-letter record it writes in a
//! refused output's place.

pub mod dead_letter;
mod writer;

pub use writer::{CrossCluster, Producers, Writer, cross_cluster_producers};

use crate::tenancy::Cluster;

/// Which input record an output stands for and which output it is: what a dead-letter record's
/// headers and a write's error name.
pub struct Origin<'a> {
    /// The input as an operator finds it: topic (`rush:{topic}` for the return path),
    /// partition, offset.
    pub input: (&'a str, i32, i64),
    pub route: &'a str,
    pub service: &'a str,
    /// The output it was written for (for a Rush copy: its Rush topic, not the outbox).
    pub output_topic: &'a str,
    /// The cluster the record was decided for (a Rush copy is refused by the outbox on prod).
    pub cluster: Cluster,
}
