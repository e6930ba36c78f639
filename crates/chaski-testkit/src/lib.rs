//! Test and benchmark support shared by the Chaski crates (`publish = false`).
//!
//! * [`bench`](mod@bench): a small, dependency-free benchmark harness that reports medians, for
//!   `cargo xtask bench`.
//! * [`sim`]: a deterministic network simulator for membership state machines (virtual clock,
//!   latency, loss, partitions, crashes, restarts).

pub mod bench;
pub mod sim;
