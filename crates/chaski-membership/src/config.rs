//! [`Config`]: every tunable of the state machine, with documented defaults, validated once.

use std::{net::SocketAddr, time::Duration};

use chaski_wire::{MAX_NAME_LEN, NodeId, Topic};

/// Why a [`ConfigBuilder`] refused to build.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `max_connections` is below 2: a topic graph needs at least two links per node to form a
    /// ring.
    #[error("max_connections must be at least 2, got {0}")]
    MaxConnectionsTooSmall(usize),
    /// `2 * ring_neighbours` exceeds `max_connections`.
    #[error(
        "2 * ring_neighbours ({ring}) must not exceed max_connections ({max}): raise max_connections or lower ring_neighbours"
    )]
    RingTooWide {
        /// `ring_neighbours`.
        ring: usize,
        /// `max_connections`.
        max: usize,
    },
    /// `ring_neighbours` is 0.
    #[error("ring_neighbours must be at least 1")]
    NoRingNeighbours,
    /// `peer_timeout` is not longer than `ping_interval`.
    #[error("peer_timeout ({timeout:?}) must be longer than ping_interval ({ping:?})")]
    TimeoutNotAbovePing {
        /// `peer_timeout`.
        timeout: Duration,
        /// `ping_interval`.
        ping: Duration,
    },
    /// A duration that must be positive is zero.
    #[error("{0} must be positive")]
    ZeroDuration(&'static str),
    /// A table limit that must be positive is zero.
    #[error("{0} must be positive")]
    ZeroLimit(&'static str),
    /// `reconnect_max` is below `reconnect_initial`.
    #[error("reconnect_max must not be below reconnect_initial")]
    BackoffInverted,
    /// `reconnect_jitter` is outside `[0, 1)`.
    #[error("reconnect_jitter must be in [0, 1), got {0}")]
    BadJitter(f64),
    /// The node name is longer than the protocol allows.
    #[error("node name is {0} bytes long, more than {MAX_NAME_LEN}")]
    NameTooLong(usize),
    /// The hop limit for messages or searches is 0.
    #[error("{0} must be at least 1")]
    ZeroHopLimit(&'static str),
}

/// The configuration of a [`Membership`](crate::Membership), built with [`Config::builder`].
///
/// Fields are read through accessors; every setter of [`ConfigBuilder`] documents its default and
/// its constraints, and cross-field rules are checked once, in [`ConfigBuilder::build`].
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) node_id: NodeId,
    pub(crate) name: String,
    pub(crate) listen_addrs: Vec<SocketAddr>,
    pub(crate) subscriptions: Vec<Topic>,
    pub(crate) seeds: Vec<SocketAddr>,
    pub(crate) relay: bool,
    pub(crate) network_id: String,
    pub(crate) incarnation: u64,
    pub(crate) rng_seed: u64,
    pub(crate) max_connections: usize,
    pub(crate) ring_neighbours: usize,
    pub(crate) disconnect_unneeded: bool,
    pub(crate) idle_grace: Duration,
    pub(crate) max_peers: usize,
    pub(crate) max_known_peers: usize,
    pub(crate) ping_interval: Duration,
    pub(crate) peer_timeout: Duration,
    pub(crate) reconnect_initial: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) reconnect_jitter: f64,
    pub(crate) reconnect_attempts: u32,
    pub(crate) lan_discovery: bool,
    pub(crate) beacon_initial: Duration,
    pub(crate) beacon_interval: Duration,
    pub(crate) exchange_interval: Duration,
    pub(crate) exchange_delay: Duration,
    pub(crate) exchange_per_topic: usize,
    pub(crate) max_exchange_peers: usize,
    pub(crate) search_hop_limit: u32,
    pub(crate) search_initial: Duration,
    pub(crate) search_max: Duration,
    pub(crate) max_pending_searches: usize,
    pub(crate) component_search_max: Duration,
    pub(crate) message_hop_limit: u32,
    pub(crate) dedup_streams: usize,
    pub(crate) pair_retry: Duration,
    pub(crate) max_pending_pings: usize,
    pub(crate) max_ping_padding: u32,
    pub(crate) max_peer_topics: usize,
    pub(crate) status_from_anywhere: bool,
    pub(crate) broadcast: Broadcast,
    pub(crate) announce_interval: Duration,
    pub(crate) repair_delay: Duration,
    pub(crate) repair_retry: Duration,
    pub(crate) gap_timeout: Duration,
    pub(crate) summary_interval: Duration,
    pub(crate) cache_messages: usize,
    pub(crate) cache_bytes: usize,
    pub(crate) cache_age: Duration,
    pub(crate) hold_messages: usize,
    pub(crate) hold_bytes: usize,
}

/// How messages spread over a topic's links ([`ConfigBuilder::broadcast`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Broadcast {
    /// Plumtree: eager push along a spanning tree of the topic's links, lazy announcements on
    /// the others, grafts and gap repair from caches (the default; see the crate docs).
    #[default]
    Tree,
    /// Every message crosses every link of the topic (the first wave's behaviour), with the same
    /// caches and repair. Kept as a baseline for `cargo xtask bench membership`.
    Flood,
}

impl Config {
    /// A builder for the node `node_id`, with every other setting at its default.
    ///
    /// The node id must be fresh for every start of the node (draw it with
    /// [`NodeId::random`] in the driver): peers tell restarts apart by it.
    pub fn builder(node_id: NodeId) -> ConfigBuilder {
        ConfigBuilder {
            config: Config {
                node_id,
                name: String::new(),
                listen_addrs: Vec::new(),
                subscriptions: Vec::new(),
                seeds: Vec::new(),
                relay: false,
                network_id: String::new(),
                incarnation: 0,
                rng_seed: (node_id.as_u128() as u64) ^ ((node_id.as_u128() >> 64) as u64),
                max_connections: 5,
                ring_neighbours: 2,
                disconnect_unneeded: true,
                idle_grace: Duration::from_secs(5),
                max_peers: 256,
                max_known_peers: 4096,
                ping_interval: Duration::from_secs(1),
                peer_timeout: Duration::from_secs(3),
                reconnect_initial: Duration::from_millis(100),
                reconnect_max: Duration::from_secs(5),
                reconnect_jitter: 0.2,
                reconnect_attempts: 32,
                lan_discovery: true,
                beacon_initial: Duration::from_millis(50),
                beacon_interval: Duration::from_secs(5),
                exchange_interval: Duration::from_secs(10),
                exchange_delay: Duration::from_millis(100),
                exchange_per_topic: 8,
                max_exchange_peers: 128,
                search_hop_limit: 8,
                search_initial: Duration::from_millis(500),
                search_max: Duration::from_secs(30),
                max_pending_searches: 1024,
                component_search_max: Duration::from_secs(300),
                message_hop_limit: 64,
                dedup_streams: 4096,
                pair_retry: Duration::from_secs(1),
                max_pending_pings: 64,
                max_ping_padding: 64 << 10,
                max_peer_topics: 1024,
                status_from_anywhere: false,
                broadcast: Broadcast::Tree,
                announce_interval: Duration::from_millis(25),
                repair_delay: Duration::from_millis(50),
                repair_retry: Duration::from_millis(250),
                gap_timeout: Duration::from_secs(1),
                summary_interval: Duration::from_secs(1),
                cache_messages: 65_536,
                cache_bytes: 64 << 20,
                cache_age: Duration::from_secs(30),
                hold_messages: 16_384,
                hold_bytes: 32 << 20,
            },
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }
    /// This node's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The addresses this node listens on.
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen_addrs
    }
    /// The topics subscribed at start.
    pub fn subscriptions(&self) -> &[Topic] {
        &self.subscriptions
    }
    /// The seed addresses.
    pub fn seeds(&self) -> &[SocketAddr] {
        &self.seeds
    }
    /// Whether the node is a relay.
    pub fn relay(&self) -> bool {
        self.relay
    }
    /// Pairing links per topic.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }
    /// Connections in all.
    pub fn max_peers(&self) -> usize {
        self.max_peers
    }
    /// Known-peer table size.
    pub fn max_known_peers(&self) -> usize {
        self.max_known_peers
    }
    /// Ping period.
    pub fn ping_interval(&self) -> Duration {
        self.ping_interval
    }
    /// Silence after which a peer is declared down.
    pub fn peer_timeout(&self) -> Duration {
        self.peer_timeout
    }
    /// Whether LAN beacons are on.
    pub fn lan_discovery(&self) -> bool {
        self.lan_discovery
    }
    /// The hop limit given to published messages.
    pub fn message_hop_limit(&self) -> u32 {
        self.message_hop_limit
    }
    /// Backoff schedule: first delay, cap, jitter fraction and attempts.
    pub fn reconnect_backoff(&self) -> (Duration, Duration, f64, u32) {
        (
            self.reconnect_initial,
            self.reconnect_max,
            self.reconnect_jitter,
            self.reconnect_attempts,
        )
    }
}

/// Builds a [`Config`]; see each setter for its default and constraints.
#[derive(Debug, Clone)]
#[must_use]
pub struct ConfigBuilder {
    config: Config,
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> ConfigBuilder {
            self.config.$name = value;
            self
        }
    };
}

impl ConfigBuilder {
    /// Human-readable name, for logs and tools. Default: empty. At most 255 bytes.
    pub fn name(mut self, name: impl Into<String>) -> ConfigBuilder {
        self.config.name = name.into();
        self
    }

    /// Adds an address this node accepts connections on (announced in hellos, beacons and peer
    /// records). Default: none (a node that only dials).
    pub fn listen_addr(mut self, addr: SocketAddr) -> ConfigBuilder {
        self.config.listen_addrs.push(addr);
        self
    }

    /// Adds a topic subscribed from the start. Default: none.
    pub fn subscribe(mut self, topic: Topic) -> ConfigBuilder {
        if !self.config.subscriptions.contains(&topic) {
            self.config.subscriptions.push(topic);
        }
        self
    }

    /// Adds a seed address: dialed at start and re-dialed (with backoff) while no peer is
    /// connected. A connection to a seed is kept even when it carries no pairing. Default: none.
    pub fn seed(mut self, addr: SocketAddr) -> ConfigBuilder {
        if !self.config.seeds.contains(&addr) {
            self.config.seeds.push(addr);
        }
        self
    }

    setter! {
        /// Relay role (the original's root node): accepts every pairing request, keeps every
        /// inbound connection, tells every peer about the subscribers of its topics and forwards
        /// messages of every topic to connected subscribers. Default: false.
        relay: bool
    }
    setter! {
        /// Network identifier; nodes and beacons of another network are refused. Default: empty
        /// (the default network).
        network_id: String
    }
    setter! {
        /// Which start of the node's identity this is, sent in its hello (the node numbers its
        /// messages with it too). Default: 0 (a fresh identity).
        incarnation: u64
    }
    setter! {
        /// Seed of the state machine's pseudo-random generator (jitter, request ids). Default:
        /// derived from the node id.
        rng_seed: u64
    }
    setter! {
        /// Most pairing links per topic (the original's `max_connections`). Default: 5. At least
        /// 2, and at least `2 * ring_neighbours`.
        max_connections: usize
    }
    setter! {
        /// Ring neighbours on each side that every subscriber links to in each topic's backbone
        /// (see the crate docs). Default: 2 (so 4 backbone links, leaving 1 of the default 5 for
        /// a low-latency extra). At least 1; `2 * ring_neighbours <= max_connections`.
        ring_neighbours: usize
    }
    setter! {
        /// Close connections this node dialed once they carry no pairing link, are not to a
        /// seed, a relay or a manual `connect`, and have stayed so for `idle_grace` (the
        /// original's `on_pair='disconnect'`). Default: true.
        disconnect_unneeded: bool
    }
    setter! {
        /// How long an unneeded connection is kept before it is closed. Default: 5 s. Positive.
        idle_grace: Duration
    }
    setter! {
        /// Most connections at once; inbound connections beyond it are refused with
        /// `Overloaded`, and no dial is started at the limit. Default: 256 (give a relay more).
        /// Positive.
        max_peers: usize
    }
    setter! {
        /// Most entries in the known-peer table; when full, the entry seen least recently that
        /// is neither connected nor being re-dialed is evicted (and counted). Default: 4,096.
        /// Positive.
        max_known_peers: usize
    }
    setter! {
        /// Period of the keep-alive ping to each peer. Default: 1 s. Positive, below
        /// `peer_timeout`.
        ping_interval: Duration
    }
    setter! {
        /// Silence after which a peer is declared down; any frame counts as a sign of life.
        /// Default: 3 s. Longer than `ping_interval`.
        peer_timeout: Duration
    }
    setter! {
        /// First re-dial delay after a wanted peer is lost; doubled after each failure. Default:
        /// 100 ms. Positive.
        reconnect_initial: Duration
    }
    setter! {
        /// Cap of the re-dial delay. Default: 5 s. At least `reconnect_initial`.
        reconnect_max: Duration
    }
    setter! {
        /// Jitter: each delay is multiplied by a random factor in `[1 - jitter, 1]`. Default: 0.2.
        /// In `[0, 1)`; 0 gives an exact schedule.
        reconnect_jitter: f64
    }
    setter! {
        /// Re-dial attempts before a lost peer is forgotten (the original: 32). Default: 32.
        reconnect_attempts: u32
    }
    setter! {
        /// LAN discovery by UDP multicast beacons. Default: true.
        lan_discovery: bool
    }
    setter! {
        /// Delay between the first and second beacon; doubled after each until
        /// `beacon_interval`. Default: 50 ms. Positive.
        beacon_initial: Duration
    }
    setter! {
        /// Steady-state beacon period. Default: 5 s. Positive.
        beacon_interval: Duration
    }
    setter! {
        /// Period of the peer exchange with each connected peer, besides the exchanges sent on
        /// connection and when this node learns something new. Default: 10 s. Positive.
        exchange_interval: Duration
    }
    setter! {
        /// Batching delay of a triggered peer exchange. Default: 100 ms. Positive.
        exchange_delay: Duration
    }
    setter! {
        /// Subscribers sent per shared topic in a peer exchange: the nearest to the receiver in
        /// the topic's ring, plus the smallest and largest id. Default: 8. Positive.
        exchange_per_topic: usize
    }
    setter! {
        /// Most peers in one peer exchange frame. Default: 128. Positive.
        max_exchange_peers: usize
    }
    setter! {
        /// Hop limit of a subscription search. Default: 8. At least 1.
        search_hop_limit: u32
    }
    setter! {
        /// First search delay for a topic with no known subscriber; doubled up to `search_max`.
        /// Default: 500 ms. Positive.
        search_initial: Duration
    }
    setter! {
        /// Cap of the search backoff. Default: 30 s. Positive.
        search_max: Duration
    }
    setter! {
        /// Searches remembered (to forward each once and route replies back); the oldest is
        /// forgotten when full. Default: 1,024. Positive.
        max_pending_searches: usize
    }
    setter! {
        /// Cap of the backoff of the component search: without a connected relay, the node with
        /// the smallest id among the known subscribers of a topic searches for other
        /// subscribers from time to time (from `search_initial`, doubling), so that groups that
        /// do not know each other merge. Default: 5 min. Positive.
        component_search_max: Duration
    }
    setter! {
        /// Hop limit given to published messages; must exceed the diameter of the topic graph
        /// (about `subscribers / (2 * ring_neighbours)` in the worst case). Default: 64. At least 1.
        message_hop_limit: u32
    }
    setter! {
        /// Streams (publisher and topic) tracked by the duplicate filter, each with a window of
        /// 8,192 sequences (1 KiB, and another 1 KiB after a jump that only time confirmed); the
        /// one heard from least recently is evicted when full. Default: 4,096. Positive.
        dedup_streams: usize
    }
    setter! {
        /// How messages spread over a topic's links. Default: [`Broadcast::Tree`].
        broadcast: Broadcast
    }
    setter! {
        /// How often lazy announcements ([`Have`](chaski_wire::Have)) are flushed on the links
        /// that do not push a topic eagerly. Default: 25 ms. Positive.
        announce_interval: Duration
    }
    setter! {
        /// How long a detected gap (a later message, or an announcement of one) waits for the
        /// missing messages to arrive by another path before they are asked for (a graft).
        /// Default: 50 ms. Positive.
        repair_delay: Duration
    }
    setter! {
        /// How long an unanswered request for missing messages waits before it is sent again, to
        /// the next peer that has them. Default: 250 ms. Positive.
        repair_retry: Duration
    }
    setter! {
        /// How long a gap is held open (later messages held back, repair running) before what is
        /// still missing is reported as [`Event::Missed`](crate::Event::Missed) and the stream
        /// moves on. Default: 1 s. Positive.
        gap_timeout: Duration
    }
    setter! {
        /// How often a node tells every link of a topic the last sequence of each stream that went
        /// idle within `cache_age`, so that the loss of a stream's last messages is noticed.
        /// Default: 1 s. Positive.
        summary_interval: Duration
    }
    setter! {
        /// Messages kept in the message cache (for every topic this node carries), which serves
        /// grafts and gap repair; the oldest goes first. Default: 65,536 (10 s at 6,500 msg/s).
        /// Positive.
        cache_messages: usize
    }
    setter! {
        /// Bytes (payloads, topics and headers) kept in the message cache; the oldest message goes
        /// first. Default: 64 MiB. Positive.
        cache_bytes: usize
    }
    setter! {
        /// How long a message stays in the cache at most. Default: 30 s. Positive.
        cache_age: Duration
    }
    setter! {
        /// Messages held back, out of order, while their streams' gaps are repaired (all streams
        /// together); when full, the oldest gap is reported missed at once. Default: 16,384.
        /// Positive.
        hold_messages: usize
    }
    setter! {
        /// Bytes held back (as `hold_messages`). Default: 32 MiB. Positive.
        hold_bytes: usize
    }
    setter! {
        /// Wait before asking again a peer that refused (or dropped) a pairing. Default: 1 s.
        /// Positive.
        pair_retry: Duration
    }
    setter! {
        /// On-demand pings awaiting their answer; the oldest is dropped (and counted) when full.
        /// Default: 64. Positive.
        max_pending_pings: usize
    }
    setter! {
        /// Largest padding this node sends in a ping or asks for, or puts in a pong; a peer also
        /// gets at most this many padding bytes per `ping_interval` in pongs (beyond, pongs carry
        /// none), so that a small ping cannot make the node send much more. Default: 64 KiB.
        max_ping_padding: u32
    }
    setter! {
        /// Most topics one peer may subscribe to (in its hello, a peer info, or after a
        /// subscription update), and most topics in one update or pairing frame. A peer that
        /// sends more breaks the protocol: its connection is closed. Default: 1,024. Positive.
        max_peer_topics: usize
    }

    setter! {
        /// Whether status requests (the peer table: ids, names, addresses, topics, round trips,
        /// traffic) are answered on connections from any address. Off by default: only a
        /// requester on this host (connected from a loopback address or from one of
        /// `listen_addrs`' addresses, or one whose address the driver did not give to
        /// `handle_connected`) is answered; any other is closed with
        /// `Goodbye(Unauthorized)`. Default: false.
        status_from_anywhere: bool
    }

    /// Checks every rule and returns the configuration.
    pub fn build(self) -> Result<Config, ConfigError> {
        let c = self.config;
        if c.name.len() > MAX_NAME_LEN {
            return Err(ConfigError::NameTooLong(c.name.len()));
        }
        if c.max_connections < 2 {
            return Err(ConfigError::MaxConnectionsTooSmall(c.max_connections));
        }
        if c.ring_neighbours == 0 {
            return Err(ConfigError::NoRingNeighbours);
        }
        if 2 * c.ring_neighbours > c.max_connections {
            return Err(ConfigError::RingTooWide {
                ring: c.ring_neighbours,
                max: c.max_connections,
            });
        }
        for (d, name) in [
            (c.idle_grace, "idle_grace"),
            (c.ping_interval, "ping_interval"),
            (c.reconnect_initial, "reconnect_initial"),
            (c.beacon_initial, "beacon_initial"),
            (c.beacon_interval, "beacon_interval"),
            (c.exchange_interval, "exchange_interval"),
            (c.exchange_delay, "exchange_delay"),
            (c.search_initial, "search_initial"),
            (c.search_max, "search_max"),
            (c.component_search_max, "component_search_max"),
            (c.pair_retry, "pair_retry"),
            (c.announce_interval, "announce_interval"),
            (c.repair_delay, "repair_delay"),
            (c.repair_retry, "repair_retry"),
            (c.gap_timeout, "gap_timeout"),
            (c.summary_interval, "summary_interval"),
            (c.cache_age, "cache_age"),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        if c.peer_timeout <= c.ping_interval {
            return Err(ConfigError::TimeoutNotAbovePing {
                timeout: c.peer_timeout,
                ping: c.ping_interval,
            });
        }
        if c.reconnect_max < c.reconnect_initial {
            return Err(ConfigError::BackoffInverted);
        }
        if !(0.0..1.0).contains(&c.reconnect_jitter) {
            return Err(ConfigError::BadJitter(c.reconnect_jitter));
        }
        for (n, name) in [
            (c.max_peers, "max_peers"),
            (c.max_known_peers, "max_known_peers"),
            (c.exchange_per_topic, "exchange_per_topic"),
            (c.max_exchange_peers, "max_exchange_peers"),
            (c.max_pending_searches, "max_pending_searches"),
            (c.dedup_streams, "dedup_streams"),
            (c.max_pending_pings, "max_pending_pings"),
            (c.max_peer_topics, "max_peer_topics"),
            (c.cache_messages, "cache_messages"),
            (c.cache_bytes, "cache_bytes"),
            (c.hold_messages, "hold_messages"),
            (c.hold_bytes, "hold_bytes"),
        ] {
            if n == 0 {
                return Err(ConfigError::ZeroLimit(name));
            }
        }
        if c.search_hop_limit == 0 {
            return Err(ConfigError::ZeroHopLimit("search_hop_limit"));
        }
        if c.message_hop_limit == 0 {
            return Err(ConfigError::ZeroHopLimit("message_hop_limit"));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_build_and_rules_are_checked() {
        let id = NodeId::from_u128(1);
        let c = Config::builder(id).build().unwrap();
        assert_eq!(c.max_connections(), 5);
        assert_eq!(c.peer_timeout(), Duration::from_secs(3));
        assert_eq!(
            Config::builder(id).max_connections(1).build().unwrap_err(),
            ConfigError::MaxConnectionsTooSmall(1)
        );
        assert!(matches!(
            Config::builder(id).max_connections(3).build().unwrap_err(),
            ConfigError::RingTooWide { ring: 2, max: 3 }
        ));
        assert!(matches!(
            Config::builder(id)
                .peer_timeout(Duration::from_secs(1))
                .build()
                .unwrap_err(),
            ConfigError::TimeoutNotAbovePing { .. }
        ));
        assert_eq!(
            Config::builder(id)
                .reconnect_jitter(1.0)
                .build()
                .unwrap_err(),
            ConfigError::BadJitter(1.0)
        );
        assert_eq!(
            Config::builder(id).max_peers(0).build().unwrap_err(),
            ConfigError::ZeroLimit("max_peers")
        );
        assert_eq!(
            Config::builder(id)
                .reconnect_max(Duration::from_millis(1))
                .build()
                .unwrap_err(),
            ConfigError::BackoffInverted
        );
    }
}
