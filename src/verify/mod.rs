//! `tenancy-bridge verify`: reads route inputs and both clusters' outputs and reports every
//! violation of the invariant. [`check`] judges; this module reads.

pub mod check;
