//! What the state machine tells its driver: [`Action`]s to perform and the [`Event`]s among them,
//! plus the small types they carry.

use std::{fmt, net::SocketAddr, time::Duration};

use chaski_wire::{Frame, GoodbyeReason, Message, NodeId, Topic};

use crate::time::Instant;

/// A connection, identified by an opaque id that the driver chooses and never reuses.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// Identifies an on-demand ping, returned by [`Membership::ping`](crate::Membership::ping) and
/// echoed in [`Event::PingResult`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PingId(pub u64);

/// How this node first learnt of a peer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum DiscoverySource {
    /// A LAN beacon.
    Lan,
    /// A configured seed address.
    Seed,
    /// Another peer's peer exchange.
    PeerExchange,
    /// A subscription search (as searcher, responder or forwarder).
    Search,
    /// The peer connected to us.
    Inbound,
    /// The user asked to connect.
    Manual,
}

impl DiscoverySource {
    /// The stable name used in `PeerStatus.discovered_via`: "lan", "seed", "peer-exchange",
    /// "search", "inbound", "manual".
    pub fn as_str(self) -> &'static str {
        match self {
            DiscoverySource::Lan => "lan",
            DiscoverySource::Seed => "seed",
            DiscoverySource::PeerExchange => "peer-exchange",
            DiscoverySource::Search => "search",
            DiscoverySource::Inbound => "inbound",
            DiscoverySource::Manual => "manual",
        }
    }
}

/// Why the transport lost a connection (as opposed to a graceful goodbye).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum LostCause {
    /// The peer reset the connection.
    Reset,
    /// The stream ended without a goodbye.
    Eof,
    /// A read or write failed.
    Io,
    /// The peer sent a frame that could not be decoded.
    Protocol,
    /// The transport gave up (write timeout, keep-alive of the OS).
    Timeout,
}

/// How a connection ended, as reported by the driver to
/// [`Membership::handle_disconnected`](crate::Membership::handle_disconnected).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum Disconnect {
    /// The peer said goodbye: not a failure, the peer is not re-dialed for it.
    Goodbye(GoodbyeReason),
    /// The connection was lost: a failure; the peer is re-dialed if still wanted.
    Lost(LostCause),
}

/// Why a peer went down, in [`Event::PeerDown`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum DownReason {
    /// Nothing was heard from the peer for `peer_timeout`.
    Timeout {
        /// How long the peer had been silent (equal to `peer_timeout`).
        silent_for: Duration,
    },
    /// The peer said goodbye.
    Goodbye(GoodbyeReason),
    /// The transport lost the connection.
    Lost(LostCause),
    /// This node closed the connection (not needed, shutdown, duplicate, ...).
    Closed(GoodbyeReason),
}

impl DownReason {
    /// Whether this is a failure (the peer is re-dialed if still wanted) rather than a graceful
    /// end. A peer's goodbye saying that it timed us out is a failure too: the path between us
    /// broke.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            DownReason::Timeout { .. }
                | DownReason::Lost(_)
                | DownReason::Goodbye(GoodbyeReason::Timeout)
        )
    }
}

/// Why a dial failed, as reported by the driver to
/// [`Membership::handle_dial_failed`](crate::Membership::handle_dial_failed).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum DialError {
    /// Nothing usable answered: the address refused the connection or was unreachable, the
    /// dial or the handshake timed out, or the handshake failed.
    Unreachable,
    /// The node there refused the connection with a goodbye (overloaded, another network, ...).
    Refused(GoodbyeReason),
    /// The node there is already connected to this one by another connection, which won the
    /// duplicate tie-break. If the state machine has not been told of that connection, the dial
    /// counts as a failed attempt (re-dialed with backoff), so that a stale connection the
    /// transport still holds cannot make the machine re-dial in a loop.
    Duplicate {
        /// The node that answered.
        peer: NodeId,
    },
    /// The address is this node's own: it is never dialed again.
    SelfConnection,
    /// A dial with `confirm` found another node than the one expected (an address that was
    /// wrong or made up); nothing was sent to it. The expected peer is forgotten for a while.
    WrongPeer {
        /// The node that answered.
        found: NodeId,
    },
}

/// What was dropped, in [`Event::Dropped`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum DropKind {
    /// A known peer evicted from the full known-peer table (or not added to it).
    KnownPeer,
    /// A stream (publisher and topic) evicted from the full duplicate filter.
    DedupStream,
    /// A search forgotten from the full search table.
    Search,
    /// An on-demand ping dropped from the full pending table.
    Ping,
    /// An inbound connection refused at `max_peers`.
    Connection,
    /// A stream forgotten from the full broadcast table ([`crate::MAX_STREAMS`]).
    Stream,
}

/// Something that happened, for the application (the stable event API).
#[derive(Clone, PartialEq, Debug)]
#[non_exhaustive]
pub enum Event {
    /// A connection to a peer is up (after the handshake).
    PeerUp {
        /// The peer.
        peer: NodeId,
        /// The connection.
        conn: ConnId,
        /// Whether this node dialed.
        outbound: bool,
        /// How this node learnt of the peer.
        source: DiscoverySource,
    },
    /// A peer's connection is down.
    PeerDown {
        /// The peer.
        peer: NodeId,
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: DownReason,
    },
    /// A peer was learnt of for the first time.
    PeerDiscovered {
        /// The peer.
        peer: NodeId,
        /// How.
        source: DiscoverySource,
    },
    /// A connection became a pairing link for a topic.
    Paired {
        /// The topic.
        topic: Topic,
        /// The peer.
        peer: NodeId,
    },
    /// A connection stopped being a pairing link for a topic.
    Unpaired {
        /// The topic.
        topic: Topic,
        /// The peer.
        peer: NodeId,
    },
    /// A new round-trip sample was folded into a peer's statistics.
    LatencyUpdated {
        /// The peer.
        peer: NodeId,
        /// Smoothed round trip.
        srtt: Duration,
        /// Round-trip variation (jitter).
        rttvar: Duration,
        /// Smallest round trip seen.
        min_rtt: Duration,
    },
    /// A subscribed topic has no pairing link and no known subscriber to pair with; the node
    /// keeps searching with backoff. Reported once per episode.
    TopicIsolated {
        /// The topic.
        topic: Topic,
    },
    /// Messages of a stream that will not be delivered: they were neither received nor
    /// repaired within `gap_timeout` (or no cache had them any more). Delivery of the stream
    /// goes on after `last`.
    Missed {
        /// The publisher.
        publisher: NodeId,
        /// Its incarnation.
        incarnation: u64,
        /// The topic.
        topic: Topic,
        /// The first sequence missed.
        first: u64,
        /// The last sequence missed (inclusive).
        last: u64,
    },
    /// An on-demand ping was answered.
    PingResult {
        /// The id [`Membership::ping`](crate::Membership::ping) returned.
        id: PingId,
        /// The peer.
        peer: NodeId,
        /// The measured round trip.
        rtt: Duration,
        /// The padding size asked for (each way).
        size: u32,
    },
    /// A lost peer was re-dialed `reconnect_attempts` times without success and is forgotten.
    ReconnectGaveUp {
        /// The peer.
        peer: NodeId,
    },
    /// Something was dropped or evicted because a table was full.
    Dropped {
        /// What.
        kind: DropKind,
    },
    /// A peer sent a frame that breaks a limit ([`crate::limits`]): its connection is closed
    /// with `Goodbye(ProtocolError)`.
    ProtocolViolation {
        /// The peer.
        peer: NodeId,
        /// The connection, now closed.
        conn: ConnId,
        /// Which limit.
        kind: crate::Violation,
    },
}

/// Where to send a datagram.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum DatagramTarget {
    /// The LAN discovery group (multicast, or broadcast as the fallback): the driver picks.
    Lan,
    /// One address.
    Unicast(SocketAddr),
}

/// What the driver must do, from [`Membership::poll_action`](crate::Membership::poll_action).
#[derive(Clone, PartialEq, Debug)]
#[non_exhaustive]
pub enum Action {
    /// Send this frame on this connection.
    Send {
        /// The connection.
        conn: ConnId,
        /// The frame.
        frame: Frame,
    },
    /// Dial this address, then exchange hellos ([`Membership::local_hello`]) and report
    /// [`Membership::handle_connected`] or [`Membership::handle_dial_failed`].
    ///
    /// [`Membership::local_hello`]: crate::Membership::local_hello
    /// [`Membership::handle_connected`]: crate::Membership::handle_connected
    /// [`Membership::handle_dial_failed`]: crate::Membership::handle_dial_failed
    Dial {
        /// The address.
        addr: SocketAddr,
        /// The node expected there, if known.
        peer: Option<NodeId>,
        /// The address was learned from the network (a search, an exchange, a beacon) and the
        /// node has not been connected at it: the driver reads the peer's hello first, sends
        /// this node's only if it names `peer`, and otherwise reports
        /// [`DialError::WrongPeer`] (`chaski_transport::Endpoint::connect_expecting` does
        /// exactly this).
        confirm: bool,
    },
    /// Send a `Goodbye` with this reason on the connection, then close it. The state machine has
    /// already forgotten the connection; a later `handle_disconnected` for it is ignored.
    Close {
        /// The connection.
        conn: ConnId,
        /// The goodbye reason.
        reason: GoodbyeReason,
    },
    /// Send this frame as a UDP datagram.
    SendDatagram {
        /// Where.
        to: DatagramTarget,
        /// The frame (a beacon).
        frame: Frame,
    },
    /// Report this event to the application.
    Event(Event),
    /// Hand this message, held back until the messages before it arrived (or were reported
    /// missed), to the consumers that want each stream in order. It was already counted,
    /// forwarded and given to unordered consumers when it arrived ([`Route::in_order`] was false).
    Deliver(Message),
}

/// The routing decision for one received message, from
/// [`Membership::route`](crate::Membership::route).
#[derive(Debug, PartialEq, Eq)]
pub struct Route<'a> {
    /// Deliver to the local application: subscribed and not a duplicate.
    pub deliver: bool,
    /// The message is the next of its stream (or best-effort): hand it to ordered consumers now.
    /// Otherwise it is held back and comes out later as [`Action::Deliver`], in order, once the
    /// gap before it is filled or reported ([`Event::Missed`]); or, already reported missed, it
    /// is too late for ordered consumers.
    pub in_order: bool,
    /// The message was seen before (or is this node's own): neither deliver nor forward.
    pub duplicate: bool,
    /// Connections to forward the message on (encoded once, with `hop_limit` and `hops + 1`).
    pub forward: &'a [ConnId],
    /// The hop limit to put in the forwarded copies.
    pub hop_limit: u32,
}

impl Route<'_> {
    /// A message neither delivered nor forwarded (a duplicate, refused, or handed out already).
    pub(crate) fn refused() -> Route<'static> {
        Route {
            in_order: false,
            deliver: false,
            duplicate: true,
            forward: &[],
            hop_limit: 0,
        }
    }
}

/// What to do with a message this node publishes, from
/// [`Membership::publish`](crate::Membership::publish).
#[derive(Debug, PartialEq, Eq)]
pub struct Publication<'a> {
    /// The hop limit to put in the message.
    pub hop_limit: u32,
    /// Whether this node itself subscribes to the topic (local delivery).
    pub deliver: bool,
    /// Connections to send the message on (the links that push the node's own messages of the
    /// topic eagerly).
    pub forward: &'a [ConnId],
    /// Some connection carries the topic (eagerly or lazily): the message has somewhere to go,
    /// even when `forward` is empty (every link announces). Pass it to
    /// [`Membership::published`](crate::Membership::published) either way.
    pub links: bool,
}

/// One connected peer, as in [`Membership::peers`](crate::Membership::peers).
#[derive(Clone, Debug, PartialEq)]
pub struct PeerSnapshot {
    /// The peer's id.
    pub id: NodeId,
    /// Its name.
    pub name: String,
    /// The connection.
    pub conn: ConnId,
    /// Its listening addresses.
    pub listen_addrs: Vec<SocketAddr>,
    /// The address of the connection, as the driver reported it.
    pub remote_addr: Option<SocketAddr>,
    /// Whether this node dialed.
    pub outbound: bool,
    /// Its subscriptions.
    pub subscriptions: Vec<Topic>,
    /// Whether it is a relay.
    pub relay: bool,
    /// Round-trip statistics.
    pub rtt: crate::RttStats,
    /// Topics for which the connection is a pairing link.
    pub paired_topics: Vec<Topic>,
    /// How this node learnt of it.
    pub source: DiscoverySource,
    /// When the connection came up.
    pub connected_since: Instant,
    /// Frames received on the connection that the state machine saw (control frames and
    /// messages routed through it).
    pub frames_in: u64,
    /// Frames the state machine sent on the connection (control frames; a driver that sends
    /// messages itself knows the full count, as `chaski-streamer`'s status answers show).
    pub frames_out: u64,
}

/// Counters of the state machine, for metrics and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Control frames sent (everything but messages).
    pub control_frames_sent: u64,
    /// Of which discovery frames: beacons, searches, search replies and peer exchanges.
    pub discovery_frames_sent: u64,
    /// Dials started.
    pub dials: u64,
    /// Dials that failed (any [`DialError`] but a duplicate of a connection already known).
    pub dial_failures: u64,
    /// Connections that ended before they were stable (within `ping_interval`) and so counted
    /// as failed attempts, re-dialed with a growing backoff.
    pub flaps: u64,
    /// Messages accepted by the duplicate filter.
    pub messages_new: u64,
    /// Messages dropped as duplicates.
    pub messages_duplicate: u64,
    /// Messages refused as implausible: an impersonated publisher, or a sequence far ahead of
    /// its stream's, not confirmed (see [`crate::limits`] and [`crate::dedup`]).
    pub messages_rejected: u64,
    /// Known peers evicted or not added because the table was full.
    pub known_evictions: u64,
    /// Streams (publisher and topic) evicted from the duplicate filter.
    pub dedup_evictions: u64,
    /// Peer exchanges sent with fewer peers than chosen, to fit a control frame.
    pub exchanges_cut: u64,
    /// Dials to learned addresses where another node than the one expected answered
    /// ([`DialError::WrongPeer`]): nothing was sent to it.
    pub misdirected_dials: u64,
    /// Searches forgotten because the table was full.
    pub search_evictions: u64,
    /// On-demand pings dropped because the pending table was full.
    pub ping_evictions: u64,
    /// Inbound connections refused at `max_peers`.
    pub refused_connections: u64,
    /// Frames that made no sense in their context (e.g. a second hello, a pong for no ping
    /// of ours), ignored.
    pub unexpected_frames: u64,
    /// Frames that broke a limit, by kind (each closed its connection, but for implausible
    /// sequences).
    pub violations: crate::Violations,
    /// Pongs sent without the padding asked for: the peer's padding budget was spent.
    pub padding_refused: u64,
    /// Learned addresses not dialed because no peer can be there (unspecified, multicast,
    /// broadcast, port 0, or loopback while this node does not listen on loopback).
    pub undialable_addrs: u64,
    /// Dials to learned addresses put off by the rate limit (`LEARNED_DIAL_RATE`).
    pub dials_deferred: u64,
    /// Status requests refused: not from a loopback address, and `status_from_anywhere` off.
    pub status_refused: u64,
    /// Idle inbound connections closed at `max_peers` to make room for a link this node wants.
    pub idle_evictions: u64,
    /// Messages reported missed ([`Event::Missed`]).
    pub messages_missed: u64,
    /// Messages that arrived after their sequence was reported missed (or older than where
    /// the stream started on this node): handed out late, to ordered consumers too only if
    /// nothing after them was handed out yet, else to unordered consumers only.
    pub messages_late: u64,
    /// Gaps given up early because the hold-back buffer was full (`hold_messages`, `hold_bytes`).
    pub hold_overflows: u64,
    /// Messages dropped from the cache by its limits (count, bytes, age).
    pub cache_evictions: u64,
    /// Streams forgotten from the full broadcast table.
    pub streams_forgotten: u64,
    /// `Prune`s sent: a duplicate arrived on an eager link.
    pub prunes_sent: u64,
    /// Links made eager again because this node asked them for messages it missed.
    pub grafts_sent: u64,
    /// Links made eager again because the peer asked for messages.
    pub grafts_received: u64,
    /// Stream heads announced (`Have` entries sent).
    pub announcements_sent: u64,
    /// Ranges of missing messages asked for (`Want` entries sent).
    pub repairs_requested: u64,
    /// Cached messages sent in answer to a `Want`.
    pub messages_served: u64,
    /// `Want`s answered in part: one peer's serving budget (`MAX_SERVED_BYTES` a second) or the
    /// per-request cap (`MAX_SERVED` messages) was reached.
    pub repairs_throttled: u64,
}
