//! Test and benchmark support shared by the Chaski crates (`publish = false`).
//!
//! * [`bench`](mod@bench): a small, dependency-free benchmark harness that reports medians, for
//!   `cargo xtask bench`.
//! * [`sim`]: a deterministic network simulator for membership state machines (virtual clock,
//!   latency, loss, partitions, crashes, restarts).
//! * `hostile` (feature `hostile`): a peer that completes the handshake and then sends whatever
//!   the test says, for attack tests against real nodes.
//! * `netns` (feature `netns`, Linux): a test bed of hosts in network namespaces joined by a
//!   bridge, with faults (pulled cables, splits, frozen and killed processes).
//! * `baseline` (feature `baseline`): the raw tokio TCP baseline every layer's benchmark is
//!   compared with, measured in the same run.

#[cfg(feature = "baseline")]
pub mod baseline;
pub mod bench;
#[cfg(feature = "hostile")]
pub mod hostile;
#[cfg(all(feature = "netns", target_os = "linux"))]
pub mod netns;
pub mod sim;
