//! tenancy-bridge: routes production Kafka events of whitelisted users to Rush test
//! environments, with no change in any producer or consumer.
//!
//! # Layout
//!
//! The pure core knows no I/O, no async and no Kafka client:
//! - [`config`]: the TOML file, typed and validated, every output topic resolved.
//! - [`extract`]: finding the user of an event (header, key, JSON pointer), with
//!   [`json_scan`], a lazy pointer lookup that reads only the path to the value.
//! - [`tenancy`]: the decision per event and service, and the stamp on Rush copies
//!   ([`splice`]: where a payload stamp goes, spliced without re-serialising).
//! - [`whitelist::Snapshot`]: the immutable whitelist a decision reads; [`clock`]: its time.
//! - [`environment`]: environment names and the Rush topics they use.
//! - [`pinning`]: which whitelist decides each input offset, so a replay decides it again alike.
//! - [`topic_settings`]: which input topic settings its outputs carry.
//!
//! The I/O shell around it:
//! - [`relay`]: the three directions (forward, Rush lane, return path). A record is decided in
//!   [`relay::forward`], written by [`relay::output`], committed by [`relay::commit`].
//! - [`decision_log`]: pins and whitelist snapshots on prod; [`topics`]: the topics the bridge
//!   creates; [`headers`]: the header names it writes and reads.
//! - [`verify`]: the invariant checked on real topics ([`verify::check`] is pure).
//! - [`demo`]: the embedded end-to-end demo; [`cleanup`]: ending a Rush session.
//! - [`whitelist`]: where snapshots come from (a local file, a Config Mapper polled in snapshot
//!   mode) and the per-user lookup cache of lookup mode.
//! - [`kafka`]: client configuration and the retry / fatal / poison classification of errors.
//! - [`config_mapper`]: the reference whitelist service (HTTP, SQLite, tokens, audit), and
//!   [`whitelist_cli`], the `whitelist` command that talks to one.
//! - [`migrate`]: moving a stopped consumer group between a raw topic and its filtered one
//!   ([`migrate::plan`] is pure); [`explain`]: where a user's or a record's events go, and why.
//! - [`report`]: what `validate` prints.
//!
//! `tests/layers.rs` checks the layering: docs/architecture.md draws it.

pub mod admin;
pub mod background;
pub mod cleanup;
pub mod clock;
pub mod config;
pub mod config_mapper;
pub mod daemon;
pub mod decision_log;
pub mod demo;
pub mod environment;
pub mod explain;
pub mod extract;
pub mod headers;
pub mod json_scan;
pub mod kafka;
pub mod metrics;
pub mod migrate;
pub mod pinning;
pub mod relay;
pub mod report;
pub mod splice;
pub mod telemetry;
pub mod tenancy;
pub mod topic_settings;
pub mod topics;
pub mod verify;
pub mod whitelist;
pub mod whitelist_cli;
