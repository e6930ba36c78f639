//! Test and benchmark support shared by the Chaski crates (`publish = false`).
//!
//! * [`bench`](mod@bench): a small, dependency-free benchmark harness that reports medians, for
//!   `cargo xtask bench`.
//! * [`sim`]: a deterministic network simulator for membership state machines (virtual clock,
//!   latency, loss, partitions, crashes, restarts).
//! * `baseline` (feature `baseline`): the raw tokio TCP baseline every layer's benchmark is
//!   compared with, measured in the same run.

#[cfg(feature = "baseline")]
pub mod baseline;
pub mod bench;
pub mod sim;
