//! Limits on what a peer may send. Every list and number a remote controls is checked here, on
//! receipt, before any work proportional to it; a frame that breaks a limit is a
//! [`Violation`]: the state machine closes that one connection with `Goodbye(ProtocolError)`,
//! counts the violation by kind ([`Violations`]) and reports [`Event::ProtocolViolation`].
//!
//! | what | limit |
//! |---|---|
//! | peers in a `PeerExchange` | [`MAX_PEERS_PER_FRAME`] |
//! | addresses of one peer (hello, peer info) | [`MAX_ADDRS_PER_PEER`] |
//! | topics of one peer (hello, peer info, after an update) | `Config::max_peer_topics` |
//! | topics in one `SubscriptionUpdate`, `PairRequest`, `PairResponse`, `Unpair` | `Config::max_peer_topics` |
//! | node ids in a `Search`'s visited list | `Config::search_hop_limit` + 1 |
//! | hop limit of a `Search` or `SearchReply` | clamped to `Config::search_hop_limit` |
//! | a message's publisher | must be the sending peer when the hop count is 0 |
//! | a message's sequence | second-hand, at most [`MAX_AHEAD`](crate::dedup::MAX_AHEAD) above the highest seen on its stream (publisher and topic) unless confirmed by a second peer, the publisher or time ([`crate::dedup`]); refused and counted, the connection kept |
//! | padding asked for by a `Ping` | replies carry at most `Config::max_ping_padding`, and at most that many padding bytes per connection per `ping_interval`; beyond, the pong has none |
//!
//! [`Event::ProtocolViolation`]: crate::Event::ProtocolViolation

use chaski_wire::{Frame, Hello, PeerInfo};

use crate::config::Config;

/// Most peers in one `PeerExchange` frame (a node sends at most `max_exchange_peers`, 128 by
/// default).
pub const MAX_PEERS_PER_FRAME: usize = 256;

/// Most listening addresses of one peer, in its hello or in a peer info about it.
pub const MAX_ADDRS_PER_PEER: usize = 16;

/// Streams per `Have` frame.
pub const MAX_HEADS_PER_FRAME: usize = 1024;

/// Ranges per `Want` frame.
pub const MAX_RANGES_PER_FRAME: usize = 256;

/// Which limit a frame broke.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum Violation {
    /// A list of peers longer than [`MAX_PEERS_PER_FRAME`].
    TooManyPeers,
    /// A peer with more than [`MAX_ADDRS_PER_PEER`] addresses.
    TooManyAddrs,
    /// A list of topics longer than `max_peer_topics`, or a peer that would subscribe to more.
    TooManyTopics,
    /// A search whose visited list is longer than the hop limit allows.
    TooManyVisited,
    /// A message that claims to come straight from its publisher (hop count 0) from a peer that
    /// is not that publisher.
    ImpersonatedPublisher,
    /// A second-hand message whose sequence is implausibly far ahead of what this node has seen
    /// on its stream ([`crate::dedup::MAX_AHEAD`]), not confirmed: a forgery that would silence
    /// the publisher, or the first copy after this node missed messages. Refused; the
    /// connection is not closed for it.
    ImplausibleSequence,
    /// A `Have` or a `Prune` with more than [`MAX_HEADS_PER_FRAME`] streams, or a `Want` with
    /// more than [`MAX_RANGES_PER_FRAME`] ranges.
    TooManyStreams,
}

impl Violation {
    /// A short, stable label for counters: `too_many_peers`, `too_many_addrs`,
    /// `too_many_topics`, `too_many_visited`.
    pub fn as_str(self) -> &'static str {
        match self {
            Violation::TooManyPeers => "too_many_peers",
            Violation::TooManyAddrs => "too_many_addrs",
            Violation::TooManyTopics => "too_many_topics",
            Violation::TooManyVisited => "too_many_visited",
            Violation::ImpersonatedPublisher => "impersonated_publisher",
            Violation::ImplausibleSequence => "implausible_sequence",
            Violation::TooManyStreams => "too_many_streams",
        }
    }
}

/// Protocol violations seen, by kind.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct Violations {
    /// [`Violation::TooManyPeers`].
    pub too_many_peers: u64,
    /// [`Violation::TooManyAddrs`].
    pub too_many_addrs: u64,
    /// [`Violation::TooManyTopics`].
    pub too_many_topics: u64,
    /// [`Violation::TooManyVisited`].
    pub too_many_visited: u64,
    /// [`Violation::ImpersonatedPublisher`].
    pub impersonated_publisher: u64,
    /// [`Violation::ImplausibleSequence`].
    pub implausible_sequence: u64,
    /// [`Violation::TooManyStreams`].
    pub too_many_streams: u64,
}

impl Violations {
    pub(crate) fn add(&mut self, kind: Violation) {
        let slot = match kind {
            Violation::TooManyPeers => &mut self.too_many_peers,
            Violation::TooManyAddrs => &mut self.too_many_addrs,
            Violation::TooManyTopics => &mut self.too_many_topics,
            Violation::TooManyVisited => &mut self.too_many_visited,
            Violation::ImpersonatedPublisher => &mut self.impersonated_publisher,
            Violation::ImplausibleSequence => &mut self.implausible_sequence,
            Violation::TooManyStreams => &mut self.too_many_streams,
        };
        *slot += 1;
    }

    /// All violations, whatever their kind.
    pub fn total(&self) -> u64 {
        self.too_many_peers
            + self.too_many_addrs
            + self.too_many_topics
            + self.too_many_visited
            + self.impersonated_publisher
            + self.implausible_sequence
            + self.too_many_streams
    }
}

fn check_len(len: usize, max: usize, kind: Violation) -> Result<(), Violation> {
    if len > max { Err(kind) } else { Ok(()) }
}

fn check_peer(info: &PeerInfo, config: &Config) -> Result<(), Violation> {
    check_len(
        info.listen_addrs.len(),
        MAX_ADDRS_PER_PEER,
        Violation::TooManyAddrs,
    )?;
    check_len(
        info.subscriptions.len(),
        config.max_peer_topics,
        Violation::TooManyTopics,
    )
}

/// Checks a peer's hello.
pub(crate) fn check_hello(hello: &Hello, config: &Config) -> Result<(), Violation> {
    check_len(
        hello.listen_addrs.len(),
        MAX_ADDRS_PER_PEER,
        Violation::TooManyAddrs,
    )?;
    check_len(
        hello.subscriptions.len(),
        config.max_peer_topics,
        Violation::TooManyTopics,
    )
}

/// Checks every list of a frame received on a connection against its limit. Costs at most one
/// pass over the frame's peers (each check is a length comparison).
pub(crate) fn check_frame(frame: &Frame, config: &Config) -> Result<(), Violation> {
    let topics = config.max_peer_topics;
    match frame {
        Frame::PeerExchange(x) => {
            check_len(x.peers.len(), MAX_PEERS_PER_FRAME, Violation::TooManyPeers)?;
            x.peers.iter().try_for_each(|p| check_peer(p, config))
        }
        Frame::SubscriptionUpdate(u) => check_len(
            u.added.len().saturating_add(u.removed.len()),
            topics,
            Violation::TooManyTopics,
        ),
        Frame::PairRequest(r) => check_len(r.topics.len(), topics, Violation::TooManyTopics),
        Frame::PairResponse(r) => check_len(
            r.accepted.len().saturating_add(r.rejected.len()),
            topics,
            Violation::TooManyTopics,
        ),
        Frame::Unpair(u) => check_len(u.topics.len(), topics, Violation::TooManyTopics),
        Frame::Search(s) => {
            check_len(
                s.visited.len(),
                config.search_hop_limit as usize + 1,
                Violation::TooManyVisited,
            )?;
            check_peer(&s.origin, config)
        }
        Frame::SearchReply(r) => check_peer(&r.responder, config),
        Frame::Have(h) => check_len(
            h.streams.len(),
            MAX_HEADS_PER_FRAME,
            Violation::TooManyStreams,
        ),
        Frame::Want(w) => check_len(
            w.ranges.len(),
            MAX_RANGES_PER_FRAME,
            Violation::TooManyStreams,
        ),
        Frame::Prune(p) => check_len(
            p.streams.len(),
            MAX_HEADS_PER_FRAME,
            Violation::TooManyStreams,
        ),
        _ => Ok(()),
    }
}
