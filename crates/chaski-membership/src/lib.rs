//! Chaski membership: discovery, pairing, routing, ping and keep-alive as a state machine with no
//! I/O and no clock.
//!
//! (Crate documentation is completed below.)

mod config;
mod dedup;
mod event;
pub mod interest;
mod machine;
mod rng;
mod rtt;
mod time;

pub use crate::{
    config::{Config, ConfigBuilder, ConfigError},
    dedup::WINDOW as DEDUP_WINDOW,
    event::{
        Action, ConnId, Counters, DatagramTarget, Disconnect, DiscoverySource, DownReason,
        DropKind, Event, LostCause, PeerSnapshot, PingId, Publication, Route,
    },
    machine::{EXTRA_RETRY, Membership, PingError, TOMBSTONE_TTL, UNVERIFIED_ATTEMPTS},
    rtt::RttStats,
    time::Instant,
};
