//! Where whitelist snapshots come from and how the relay reads them.
//!
//! The relay holds a [`SharedSnapshot`] and loads it once per batch; sources swap a whole new
//! [`Snapshot`] in. A change therefore affects only events decided after the swap.

pub mod answers;
pub mod client;
mod file;
pub mod lookup;
mod poller;
mod snapshot;
pub mod source;

use std::sync::Arc;

use arc_swap::ArcSwap;

pub use file::{FileSource, WatchError, load as load_file};
pub use poller::{SnapshotPoller, SourceStatus};
pub use snapshot::{Answered, Entry, Placement, Snapshot, SnapshotError, Whitelist};
pub use source::WhitelistSource;

/// The current whitelist, swapped atomically by a source, read lock-free by the relay.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

pub fn shared(initial: Snapshot) -> SharedSnapshot {
    Arc::new(ArcSwap::from_pointee(initial))
}
