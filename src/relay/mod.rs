//! The relay: consume route topics on prod, decide each record once, write one output per
//! service to prod or (through the prod outbox and the Rush lane) to Rush, commit an input
//! offset only when all its writes on prod (and those of every earlier record of its
//! partition) are acknowledged. Nothing the forward direction waits for is on Rush.
//!
//! A record's path, one module a step:
//! - polled by [`direction::poll`] (bounded in flight, one batch per whitelist load);
//! - decided and fanned out in [`forward`] ([`forward::fan_out`]), or carried by
//!   [`rush_lane`] (prod outbox → Rush) or [`return_path`] (Rush → prod);
//! - written by the one [`output::Writer`], whose dead-letter branch takes refused records;
//! - acknowledged into [`offsets::Tracker`] by the producer's delivery reports;
//! - committed by the direction's [`commit::CommitStrategy`].
//!
//! [`run`] wires the three directions, each run by [`direction::run`]: the caller's thread
//! polls the forward direction (rebalance callbacks run there too), one thread each the Rush
//! lane and the return path; each producer has its own poll thread for delivery reports.
//! Nothing here is async. One [`Stop`] asks every thread to stop, and any of them failing stops
//! the rest.
//!
//! Layers, lowest first; a module imports only from layers below it:
//! [`offsets`], [`health`], [`stop`] → [`refusals`] → [`producer`] → [`commit`] → [`error`] →
//! [`output`] → [`direction`] → [`forward`], [`rush_lane`], [`return_path`] → [`run`].

pub mod commit;
pub mod direction;
pub mod error;
pub mod forward;
pub mod health;
pub mod offsets;
pub mod output;
pub mod producer;
pub mod refusals;
pub mod return_path;
pub mod run;
pub mod rush_lane;
pub mod stop;

pub use crate::headers::{OUTBOX_INPUT_OFFSET, OUTBOX_OUTPUT, Provenance, dead_letter as dead_letter_headers};
pub use crate::whitelist::WhitelistSource;
pub use error::{ProduceError, RelayError};
pub use health::{Direction, Health, ProducerRole, Summary};
pub use offsets::Tracker;
pub use run::{Observers, run, run_observed};
pub use stop::Stop;
