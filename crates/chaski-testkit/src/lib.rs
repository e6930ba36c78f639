//! Test and benchmark support shared by the Chaski crates (`publish = false`).
//!
//! * [`bench`]: a small, dependency-free benchmark harness that reports medians, for
//!   `cargo xtask bench`.

pub mod bench;
