//! The state machine, [`Membership`]: fed what happened, it says what to do and when to wake it.
//!
//! This file holds the state and the public interface (the driver's calls, the commands, the
//! hot path: `publish` and `route`); the internals are split by concern: `bookkeeping` (tables
//! and indexes), `timers` (liveness, pings, re-dials and where the machine may dial),
//! `frames` (what peers send, checked against `crate::limits`), `pairing` (the ring and its
//! links).

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque},
    net::SocketAddr,
    ops::Bound,
    time::Duration,
};

use bytes::Bytes;
use chaski_wire::{
    Beacon, Capabilities, Frame, GoodbyeReason, Hello, Message, NodeId, PairRequest, PairResponse,
    PeerExchange, PeerInfo, PeerStatus, Ping, Pong, Search, SearchReply, StatusRequest,
    StatusResponse, StreamId, SubscriptionUpdate, Topic, Unpair, subscription_digest,
};

use crate::{
    config::Config,
    dedup::{self, DuplicateFilter, Seen},
    event::{
        Action, ConnId, Counters, DatagramTarget, DialError, Disconnect, DiscoverySource,
        DownReason, DropKind, Event, PeerSnapshot, PingId, Publication, Route,
    },
    interest,
    limits::{self, Violation},
    rng::Rng,
    rtt::RttStats,
    time::Instant,
};

mod bookkeeping;
mod broadcast;

pub use broadcast::{MAX_SERVED, MAX_SERVED_BYTES, MAX_STREAMS};
mod frames;
mod pairing;
mod timers;

/// How long a peer that refused an *extra* (non-backbone) pairing is left alone.
pub const EXTRA_RETRY: Duration = Duration::from_secs(30);

/// How long a peer given up on (re-dial attempts exhausted) is remembered as dead, so that
/// other nodes' stale peer exchanges do not bring it back. Node ids are never reused, so this is
/// safe; a dead peer that comes back and connects to us is accepted at once. The table holds at
/// most `max_known_peers` entries, the oldest forgotten first.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(300);

/// How long after the last first-hand sign of a peer (a connection, its own search or search
/// reply) this node still tells others about it in peer exchanges. Rumours therefore travel one
/// hop from a node that has really heard from the peer, and a dead peer stops being advertised.
pub const FRESHNESS: Duration = Duration::from_secs(30);

/// Dials a second to addresses learned from the network (beacons, exchanges, searches) of nodes
/// never connected to; beyond, such dials wait for the next pairing round.
pub const LEARNED_DIAL_RATE: f64 = 20.0;

/// Burst of dials to learned addresses allowed at once (a network forming, a relay's
/// introductions).
pub const LEARNED_DIAL_BURST: f64 = 64.0;

/// Pings in flight per connection that a pong may answer; older ones are forgotten.
const MAX_PINGS_IN_FLIGHT: usize = 16;

/// Dial attempts for a peer this node has never been connected to (learnt of through peer
/// exchange, a search or a beacon) before it is given up; a peer that was connected gets
/// `reconnect_attempts`.
pub const UNVERIFIED_ATTEMPTS: u32 = 3;

/// Why [`Membership::ping`] could not send a ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PingError {
    /// No connection to that peer.
    #[error("peer {0} is not connected")]
    NotConnected(NodeId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Liveness(ConnId),
    Ping(ConnId),
    Redial(NodeId),
    Seeds,
    Beacon,
    ExchangeFlush,
    Maintenance,
    Search,
    Broadcast,
}

#[derive(Debug)]
struct Known {
    info: PeerInfo,
    source: DiscoverySource,
    last_seen: Instant,
    conn: Option<ConnId>,
    /// Lost (or never reached) and being re-dialed: not a pairing candidate meanwhile.
    down: bool,
    failures: u32,
    /// Keep the connection and re-dial it when lost: a seed, a manual connect, a relay.
    keep: bool,
    /// Was connected at least once.
    verified: bool,
    /// Last first-hand sign of life (connection, its own search or search reply).
    heard_at: Option<Instant>,
    /// No pairing request for these topics before these instants.
    cooldown: Vec<(Topic, Instant)>,
    sub_revision: u64,
}

impl Known {
    /// A peer just learned of (from `source`, at `now`): not connected, never failed.
    fn new(info: PeerInfo, source: DiscoverySource, now: Instant) -> Known {
        Known {
            info,
            source,
            last_seen: now,
            conn: None,
            down: false,
            failures: 0,
            keep: false,
            verified: false,
            heard_at: None,
            cooldown: Vec::new(),
            sub_revision: 0,
        }
    }
}

#[derive(Debug)]
struct Conn {
    peer: NodeId,
    outbound: bool,
    remote_addr: Option<SocketAddr>,
    since: Instant,
    last_rx: Instant,
    rtt: RttStats,
    paired: BTreeSet<Topic>,
    pending: BTreeSet<Topic>,
    frames_in: u64,
    frames_out: u64,
    unneeded_since: Option<Instant>,
    exchange_dirty: bool,
    next_exchange: Instant,
    /// Pings sent on this connection and not answered yet: (wire id, when), oldest first, at
    /// most `MAX_PINGS_IN_FLIGHT`. A pong counts only if it answers one of them, and its round
    /// trip is measured from our own clock, never from a time the peer echoes.
    pings_out: VecDeque<(u64, Instant)>,
    /// Padding bytes put in pongs since `padding_since` (the budget is `max_ping_padding` per
    /// `ping_interval`).
    padding_sent: u64,
    padding_since: Instant,
    /// Bytes of cached messages sent in answer to the peer's `Want`s since `served_since` (the
    /// budget is `MAX_SERVED_BYTES` per second).
    served_bytes: usize,
    served_since: Instant,
}

#[derive(Debug)]
struct TopicState {
    isolated_reported: bool,
    search_delay: Duration,
    next_search: Option<Instant>,
    /// Component search (see `after`): backoff and next time.
    leader_delay: Duration,
    next_leader_search: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Dial {
    peer: Option<NodeId>,
    source: DiscoverySource,
}

#[derive(Debug, Clone, Copy)]
struct PendingPing {
    wire_id: u64,
    id: PingId,
    peer: NodeId,
    size: u32,
}

/// The membership state machine of one node: discovery, pairing, routing, ping, keep-alive and
/// reconnection, with no I/O and no clock.
///
/// # Call order
///
/// 1. [`Membership::new`] with the [`Config`] and the current time; it owns no socket.
/// 2. Whenever something happens, call the matching `handle_*` method (or a command such as
///    [`subscribe`](Membership::subscribe)), passing the current time:
///    * a connection finished its handshake: [`handle_connected`](Membership::handle_connected)
///      (send [`local_hello`](Membership::local_hello) as the first frame of every connection);
///    * a dial failed: [`handle_dial_failed`](Membership::handle_dial_failed);
///    * a frame arrived: [`handle_frame`](Membership::handle_frame), except `Publish` frames,
///      which go to [`route`](Membership::route) (the allocation-free hot path);
///    * a connection ended: [`handle_disconnected`](Membership::handle_disconnected);
///    * a datagram arrived: [`handle_datagram`](Membership::handle_datagram);
///    * the time given by [`poll_timeout`](Membership::poll_timeout) was reached:
///      [`handle_timeout`](Membership::handle_timeout).
/// 3. After each call, drain [`poll_action`](Membership::poll_action) until it returns `None` and
///    perform the actions in order (the queue holds only what that one call produced).
/// 4. Then ask [`poll_timeout`](Membership::poll_timeout) when to call `handle_timeout` next.
///
/// `now` must never go backwards. Call `handle_timeout(now)` once right after `new` to start
/// discovery (seeds, beacons).
#[derive(Debug)]
pub struct Membership {
    config: Config,
    me: NodeId,
    started: Instant,
    now: Instant,
    rng: Rng,
    topics: BTreeMap<Topic, TopicState>,
    sub_revision: u64,
    known: HashMap<NodeId, Known, foldhash::fast::RandomState>,
    /// Live pairing candidates per topic: known peers (not down) that want the topic.
    subscribers: HashMap<Topic, BTreeSet<NodeId>>,
    /// Ordered, so that every iteration (and so the order of actions) is deterministic.
    conns: BTreeMap<ConnId, Conn>,
    dials: HashMap<SocketAddr, Dial>,
    self_addrs: HashSet<SocketAddr>,
    timers: BinaryHeap<Reverse<(Instant, u64, Timer)>>,
    timer_seq: u64,
    actions: VecDeque<Action>,
    dirty: bool,
    exchange_flush_armed: bool,
    seed_failures: u32,
    seeds_armed: bool,
    beacon_delay: Duration,
    beacon_sequence: u64,
    searches: HashMap<(NodeId, u64), Option<ConnId>>,
    search_order: VecDeque<(NodeId, u64)>,
    next_search_at: Option<Instant>,
    dedup: DuplicateFilter,
    dead: HashMap<NodeId, Instant>,
    dead_order: VecDeque<NodeId>,
    route_index: HashMap<Topic, Vec<ConnId>, foldhash::fast::RandomState>,
    relay_conns: Vec<ConnId>,
    route_dirty: bool,
    scratch: Vec<ConnId>,
    next_wire_ping: u64,
    pending_pings: VecDeque<PendingPing>,
    counters: Counters,
    /// The bucket of dials to learned addresses (see `take_dial_token`).
    dial_tokens: f64,
    dial_tokens_at: Instant,
    bcast: broadcast::Broadcaster,
}

impl Membership {
    /// A state machine for the node described by `config`, starting at `now`.
    ///
    /// Nothing happens until the first [`handle_timeout`](Membership::handle_timeout), which
    /// dials the seeds and sends the first beacon.
    pub fn new(config: Config, now: Instant) -> Membership {
        let mut m = Membership {
            me: config.node_id,
            started: now,
            now,
            rng: Rng::new(config.rng_seed),
            topics: BTreeMap::new(),
            sub_revision: 0,
            known: HashMap::default(),
            subscribers: HashMap::new(),
            conns: BTreeMap::new(),
            dials: HashMap::new(),
            self_addrs: config.listen_addrs.iter().copied().collect(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            actions: VecDeque::new(),
            dirty: true,
            exchange_flush_armed: false,
            seed_failures: 0,
            seeds_armed: false,
            beacon_delay: config.beacon_initial,
            beacon_sequence: 0,
            searches: HashMap::new(),
            search_order: VecDeque::new(),
            next_search_at: None,
            dedup: DuplicateFilter::new(config.dedup_streams),
            dead: HashMap::new(),
            dead_order: VecDeque::new(),
            route_index: HashMap::default(),
            relay_conns: Vec::new(),
            route_dirty: true,
            scratch: Vec::new(),
            next_wire_ping: 1,
            pending_pings: VecDeque::new(),
            counters: Counters::default(),
            dial_tokens: LEARNED_DIAL_BURST,
            dial_tokens_at: now,
            bcast: broadcast::Broadcaster::default(),
            config,
        };
        for topic in m.config.subscriptions.clone() {
            m.add_topic(now, topic);
        }
        if !m.config.seeds.is_empty() {
            m.arm(now, Timer::Seeds);
            m.seeds_armed = true;
        }
        if m.config.lan_discovery {
            m.arm(now, Timer::Beacon);
        }
        m.arm(now + m.config.pair_retry, Timer::Maintenance);
        m
    }

    // ----- Accessors ---------------------------------------------------------------------------

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.me
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The topics this node subscribes to, sorted.
    pub fn subscriptions(&self) -> impl Iterator<Item = &Topic> {
        self.topics.keys()
    }

    /// Whether this node subscribes to `topic` (through [`interest`]).
    pub fn wants(&self, topic: &Topic) -> bool {
        interest::wants(self.topics.keys(), topic)
    }

    /// The peers this node is paired with on `topic`.
    pub fn paired_peers(&self, topic: &Topic) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .conns
            .values()
            .filter(|c| c.paired.contains(topic))
            .map(|c| c.peer)
            .collect();
        v.sort();
        v
    }

    /// The connected peers, sorted by id.
    pub fn connected_peers(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.conns.values().map(|c| c.peer).collect();
        v.sort();
        v
    }

    /// The live subscribers of `topic` this node knows of (pairing candidates), sorted.
    pub fn known_subscribers(&self, topic: &Topic) -> Vec<NodeId> {
        self.subscribers
            .get(topic)
            .map(|m| m.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The peer on connection `conn`, if it is open.
    pub fn peer_of(&self, conn: ConnId) -> Option<NodeId> {
        self.conns.get(&conn).map(|c| c.peer)
    }

    /// The connection to `peer`, if any.
    pub fn connection_to(&self, peer: NodeId) -> Option<ConnId> {
        self.known.get(&peer).and_then(|k| k.conn)
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Number of dials in flight.
    pub fn dial_count(&self) -> usize {
        self.dials.len()
    }

    /// Number of entries in the known-peer table.
    pub fn known_count(&self) -> usize {
        self.known.len()
    }

    /// Number of searches remembered.
    pub fn search_count(&self) -> usize {
        self.searches.len()
    }

    /// Number of publishers in the duplicate filter.
    pub fn dedup_count(&self) -> usize {
        self.dedup.len()
    }

    /// The counters.
    pub fn counters(&self) -> Counters {
        Counters {
            dedup_evictions: self.dedup.evictions,
            ..self.counters
        }
    }

    /// The hello to send as the first frame of every connection. `timestamp_micros` is 0: the
    /// driver sets the wall-clock time (the state machine has no clock).
    pub fn local_hello(&self) -> Hello {
        Hello {
            node_id: self.me,
            name: self.config.name.clone(),
            listen_addrs: self.config.listen_addrs.clone(),
            subscriptions: self.topics.keys().cloned().collect(),
            capabilities: self.capabilities(),
            auth: None,
            timestamp_micros: 0,
            network_id: self.config.network_id.clone(),
            incarnation: self.config.incarnation,
        }
    }

    /// The connected peers, for `node.peers()` and status tools.
    pub fn peers(&self) -> Vec<PeerSnapshot> {
        let mut v: Vec<PeerSnapshot> = self
            .conns
            .iter()
            .filter_map(|(&id, c)| {
                let k = self.known.get(&c.peer)?;
                Some(PeerSnapshot {
                    id: c.peer,
                    name: k.info.name.clone(),
                    conn: id,
                    listen_addrs: k.info.listen_addrs.clone(),
                    remote_addr: c.remote_addr,
                    outbound: c.outbound,
                    subscriptions: k.info.subscriptions.clone(),
                    relay: k.info.capabilities.contains(Capabilities::RELAY),
                    rtt: c.rtt,
                    paired_topics: c.paired.iter().cloned().collect(),
                    source: k.source,
                    connected_since: c.since,
                    frames_in: c.frames_in,
                    frames_out: c.frames_out,
                })
            })
            .collect();
        v.sort_by_key(|p| p.id);
        v
    }

    /// The answer to a `StatusRequest`.
    pub fn status(&self, now: Instant, request_id: u64) -> StatusResponse {
        let peers = self
            .peers()
            .into_iter()
            .map(|p| PeerStatus {
                peer: PeerInfo {
                    node_id: p.id,
                    name: p.name,
                    listen_addrs: p.listen_addrs,
                    subscriptions: p.subscriptions,
                    capabilities: if p.relay {
                        Capabilities::RELAY
                    } else {
                        Capabilities::NONE
                    },
                    full_topics: 0,
                },
                remote_addr: p.remote_addr,
                outbound: p.outbound,
                srtt: p.rtt.srtt,
                rttvar: p.rtt.rttvar,
                min_rtt: p.rtt.min_rtt,
                paired_topics: p.paired_topics,
                discovered_via: p.source.as_str().to_owned(),
                connected_for: now - p.connected_since,
                frames_in: p.frames_in,
                frames_out: p.frames_out,
                bytes_in: 0,
                bytes_out: 0,
            })
            .collect();
        StatusResponse {
            request_id,
            node: self.my_info(),
            peers,
            uptime: now - self.started,
            isolated_topics: self
                .topics
                .keys()
                .filter(|t| self.degree(t) == 0)
                .cloned()
                .collect(),
        }
    }

    // ----- Driver interface ---------------------------------------------------------------------

    /// The next thing to do, or `None` when the queue is empty.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to call [`handle_timeout`](Membership::handle_timeout) next (`None`: nothing is
    /// scheduled). May be early (a timer whose reason went away); never late.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        while let Some(Reverse((at, _, timer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            self.fire(now, timer);
        }
        self.after(now);
    }

    /// A connection finished its handshake: `hello` is the peer's. `outbound` says whether this
    /// node dialed it (then `remote_addr` should be the dialed address).
    pub fn handle_connected(
        &mut self,
        now: Instant,
        conn: ConnId,
        hello: &Hello,
        outbound: bool,
        remote_addr: Option<SocketAddr>,
    ) {
        self.now = now;
        let dial = if outbound {
            remote_addr.and_then(|a| self.dials.remove(&a))
        } else {
            None
        };
        let id = hello.node_id;
        if let Some(expected) = dial.and_then(|d| d.peer).filter(|&e| e != id) {
            // Another node answers at that address now (the expected one restarted with a new
            // id, or moved): the expected id is dead.
            if self.known.get(&expected).is_some_and(|k| k.conn.is_none()) {
                self.forget(expected);
                self.bury(expected, now);
            }
        }
        if id == self.me {
            if let Some(a) = remote_addr.filter(|_| outbound) {
                self.self_addrs.insert(a);
            }
            self.push(Action::Close {
                conn,
                reason: GoodbyeReason::SelfConnection,
            });
            return self.after(now);
        }
        if hello.network_id != self.config.network_id {
            self.push(Action::Close {
                conn,
                reason: GoodbyeReason::Unauthorized,
            });
            return self.after(now);
        }
        if let Err(kind) = limits::check_hello(hello, &self.config) {
            self.count_violation(id, conn, kind);
            self.push(Action::Close {
                conn,
                reason: GoodbyeReason::ProtocolError,
            });
            return self.after(now);
        }
        if !outbound && self.conns.len() >= self.config.max_peers {
            self.counters.refused_connections += 1;
            self.event(Event::Dropped {
                kind: DropKind::Connection,
            });
            self.push(Action::Close {
                conn,
                reason: GoodbyeReason::Overloaded,
            });
            return self.after(now);
        }
        // A second connection to the same peer: both sides keep the one dialed by the smaller id.
        if let Some(old) = self.known.get(&id).and_then(|k| k.conn) {
            let new_dialer = if outbound { self.me } else { id };
            if new_dialer != self.me.min(id) {
                self.push(Action::Close {
                    conn,
                    reason: GoodbyeReason::Duplicate,
                });
                return self.after(now);
            }
            if let Some(mut state) = self.conns.remove(&old) {
                state.pending.clear();
                state.outbound = outbound;
                state.remote_addr = remote_addr;
                state.last_rx = now;
                self.conns.insert(conn, state);
                self.known.get_mut(&id).expect("known").conn = Some(conn);
                self.push(Action::Close {
                    conn: old,
                    reason: GoodbyeReason::Duplicate,
                });
                // Frames in flight on the old connection are lost: re-assert the links.
                self.refresh_pairs(conn);
                self.arm(now + self.config.peer_timeout, Timer::Liveness(conn));
                self.arm(now + self.config.ping_interval, Timer::Ping(conn));
                self.route_dirty = true;
                self.dirty = true;
                return self.after(now);
            }
        }
        let source = match dial {
            Some(d) => d.source,
            None if outbound => DiscoverySource::Manual,
            None => DiscoverySource::Inbound,
        };
        let info = PeerInfo {
            node_id: id,
            name: hello.name.clone(),
            listen_addrs: hello.listen_addrs.clone(),
            subscriptions: hello.subscriptions.iter().map(Topic::detached).collect(),
            capabilities: hello.capabilities,
            full_topics: 0,
        };
        let is_relay = hello.capabilities.contains(Capabilities::RELAY);
        let keep = matches!(source, DiscoverySource::Seed | DiscoverySource::Manual)
            || (outbound && is_relay);
        if self.dead.remove(&id).is_some() {
            self.dead_order.retain(|d| *d != id);
        }
        let is_new = !self.known.contains_key(&id);
        if is_new && !self.make_room(now) {
            // Every entry is connected or being re-dialed: refuse rather than grow.
            self.push(Action::Close {
                conn,
                reason: GoodbyeReason::Overloaded,
            });
            return self.after(now);
        }
        self.unindex(id);
        // Verified and heard from just below, as an entry that existed already.
        let k = self
            .known
            .entry(id)
            .or_insert_with(|| Known::new(info.clone(), source, now));
        k.verified = true;
        k.heard_at = Some(now);
        k.info = info;
        k.last_seen = now;
        k.conn = Some(conn);
        k.down = false;
        // `failures` is kept: a connection that ends at once counts as one more failed attempt
        // (see `drop_conn`); one that lasts resets it when it ends.
        k.keep |= keep;
        k.sub_revision = 0;
        let source = k.source;
        self.index(id);
        self.conns.insert(
            conn,
            Conn {
                peer: id,
                outbound,
                remote_addr,
                since: now,
                last_rx: now,
                rtt: RttStats::default(),
                paired: BTreeSet::new(),
                pending: BTreeSet::new(),
                frames_in: 0,
                frames_out: 0,
                unneeded_since: None,
                exchange_dirty: false,
                next_exchange: now + self.config.exchange_interval,
                pings_out: VecDeque::new(),
                padding_sent: 0,
                padding_since: now,
                served_bytes: 0,
                served_since: now,
            },
        );
        if is_new {
            self.event(Event::PeerDiscovered { peer: id, source });
        }
        self.event(Event::PeerUp {
            peer: id,
            conn,
            outbound,
            source,
        });
        self.arm(now + self.config.peer_timeout, Timer::Liveness(conn));
        self.send_ping(now, conn, None, 0);
        self.arm(now + self.config.ping_interval, Timer::Ping(conn));
        self.send_exchange(conn);
        let topics = self.known[&id].info.subscriptions.clone();
        for t in &topics {
            self.notify_near(t, id);
        }
        self.route_dirty = true;
        self.dirty = true;
        self.broadcast_conn_opened(now, conn);
        self.after(now);
    }

    /// A dial started by [`Action::Dial`] to `addr` failed, for the reason `error`. Every dial
    /// ends in exactly one `handle_connected` or `handle_dial_failed`; until then the address
    /// is not dialed again and the dial holds one of the `max_peers` slots.
    ///
    /// A failed dial to a known peer is retried after the exponential backoff (with jitter) of
    /// `reconnect_initial`..`reconnect_max`, up to the attempt limit.
    pub fn handle_dial_failed(&mut self, now: Instant, addr: SocketAddr, error: DialError) {
        self.now = now;
        let Some(dial) = self.dials.remove(&addr) else {
            return self.after(now);
        };
        self.counters.dial_failures += 1;
        let peer = match error {
            DialError::SelfConnection => {
                self.self_addrs.insert(addr);
                return self.after(now);
            }
            DialError::WrongPeer { found } => {
                self.counters.misdirected_dials += 1;
                if let Some(expected) = dial.peer.filter(|&e| e != found) {
                    if self.known.get(&expected).is_some_and(|k| k.conn.is_none()) {
                        self.forget(expected);
                        self.bury(expected, now);
                    }
                }
                return self.after(now);
            }
            DialError::Duplicate { peer } => {
                if let Some(expected) = dial.peer.filter(|&e| e != peer) {
                    // Another node answers at that address now (as in `handle_connected`).
                    if self.known.get(&expected).is_some_and(|k| k.conn.is_none()) {
                        self.forget(expected);
                        self.bury(expected, now);
                    }
                }
                if self.known.get(&peer).is_some_and(|k| k.conn.is_some()) {
                    // Connected already, by the connection that won: nothing failed.
                    self.counters.dial_failures -= 1;
                    return self.after(now);
                }
                Some(peer)
            }
            _ => dial.peer,
        };
        if let Some(peer) = peer {
            self.dial_failed_for(now, peer);
        } else if dial.source == DiscoverySource::Seed && self.conns.is_empty() && !self.seeds_armed
        {
            self.seed_failures += 1;
            let delay = self.backoff(self.seed_failures);
            self.arm(now + delay, Timer::Seeds);
            self.seeds_armed = true;
        }
        self.after(now);
    }

    /// A connection ended. A [`Disconnect::Goodbye`] is graceful; a [`Disconnect::Lost`] is a
    /// failure and the peer is re-dialed if still wanted. Ignored for a connection this machine
    /// already closed.
    pub fn handle_disconnected(&mut self, now: Instant, conn: ConnId, how: Disconnect) {
        self.now = now;
        let reason = match how {
            Disconnect::Goodbye(r) => DownReason::Goodbye(r),
            Disconnect::Lost(c) => DownReason::Lost(c),
        };
        self.drop_conn(now, conn, reason, None);
        self.after(now);
    }

    /// A frame arrived on `conn` (any frame counts as a sign of life). `Publish` frames should go
    /// to [`route`](Membership::route) instead; here they only count as a sign of life.
    pub fn handle_frame(&mut self, now: Instant, conn: ConnId, frame: Frame) {
        self.now = now;
        let Some(c) = self.conns.get_mut(&conn) else {
            self.counters.unexpected_frames += 1;
            return self.after(now);
        };
        c.last_rx = now;
        c.frames_in += 1;
        let peer = c.peer;
        if let Err(kind) = limits::check_frame(&frame, &self.config) {
            self.violation(now, conn, peer, kind);
            return self.after(now);
        }
        match frame {
            Frame::Ping(p) => {
                let size = self.padding_allowed(now, conn, p.reply_padding);
                let padding = padding(size);
                self.send(
                    conn,
                    Frame::Pong(Pong {
                        id: p.id,
                        sent_at_micros: p.sent_at_micros,
                        padding,
                    }),
                );
            }
            Frame::Pong(p) => self.on_pong(now, conn, peer, &p),
            Frame::SubscriptionUpdate(u) => self.on_subscription_update(now, conn, peer, u),
            Frame::PeerExchange(x) => {
                for info in x.peers {
                    self.learn(now, info, DiscoverySource::PeerExchange);
                }
            }
            Frame::PairRequest(r) => self.on_pair_request(now, conn, peer, r),
            Frame::PairResponse(r) => self.on_pair_response(now, conn, peer, r),
            Frame::Unpair(u) => {
                for t in u.topics {
                    self.set_cooldown(peer, &t, now + self.config.pair_retry);
                    self.unpair_local(conn, &t);
                }
            }
            Frame::Goodbye(g) => {
                self.drop_conn(now, conn, DownReason::Goodbye(g.reason), None);
            }
            Frame::Search(s) => self.on_search(now, conn, s),
            Frame::SearchReply(r) => self.on_search_reply(now, conn, r),
            Frame::StatusRequest(StatusRequest { request_id }) => {
                // A connection whose address the driver did not give counts as local: the
                // driver that leaves it out answers for it. So does one from this host: from
                // loopback, or from an address this node listens on.
                let local = self
                    .conns
                    .get(&conn)
                    .and_then(|c| c.remote_addr)
                    .is_none_or(|a| {
                        a.ip().is_loopback()
                            || self.config.listen_addrs.iter().any(|l| l.ip() == a.ip())
                    });
                if !local && !self.config.status_from_anywhere {
                    self.counters.status_refused += 1;
                    self.drop_conn(
                        now,
                        conn,
                        DownReason::Closed(GoodbyeReason::Unauthorized),
                        Some(GoodbyeReason::Unauthorized),
                    );
                } else {
                    let status = self.status(now, request_id);
                    self.send(conn, Frame::StatusResponse(status));
                }
            }
            Frame::Have(h) => self.on_have(now, conn, h),
            Frame::Want(w) => self.on_want(now, conn, w),
            Frame::Prune(p) => self.on_prune(conn, p),
            Frame::Publish(_) => {}
            _ => self.counters.unexpected_frames += 1,
        }
        self.after(now);
    }

    /// A datagram arrived from `from` (beacons; best-effort messages go to
    /// [`route`](Membership::route)).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, frame: Frame) {
        self.now = now;
        if let Frame::Beacon(b) = frame {
            self.on_beacon(now, from, b);
        } else {
            self.counters.unexpected_frames += 1;
        }
        self.after(now);
    }

    // ----- Commands -----------------------------------------------------------------------------

    /// Subscribes to `topic`, telling every connected peer at once. Returns false if already
    /// subscribed.
    pub fn subscribe(&mut self, now: Instant, topic: Topic) -> bool {
        self.now = now;
        if self.topics.contains_key(&topic) {
            return false;
        }
        self.add_topic(now, topic.clone());
        self.sub_revision += 1;
        let update = SubscriptionUpdate {
            added: vec![topic],
            removed: Vec::new(),
            revision: self.sub_revision,
        };
        self.broadcast(Frame::SubscriptionUpdate(update));
        self.after(now);
        true
    }

    /// Unsubscribes from `topic`: its pairing links are released (`Unpair`) and every connected
    /// peer is told. Returns false if not subscribed.
    pub fn unsubscribe(&mut self, now: Instant, topic: &Topic) -> bool {
        self.now = now;
        if self.topics.remove(topic).is_none() {
            return false;
        }
        let conns: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.paired.contains(topic) || c.pending.contains(topic))
            .map(|(&id, _)| id)
            .collect();
        for conn in conns {
            self.send(
                conn,
                Frame::Unpair(Unpair {
                    topics: vec![topic.clone()],
                }),
            );
            if let Some(c) = self.conns.get_mut(&conn) {
                c.pending.remove(topic);
            }
            self.unpair_local(conn, topic);
        }
        self.sub_revision += 1;
        let update = SubscriptionUpdate {
            added: Vec::new(),
            removed: vec![topic.clone()],
            revision: self.sub_revision,
        };
        self.broadcast(Frame::SubscriptionUpdate(update));
        self.route_dirty = true;
        self.dirty = true;
        self.after(now);
        true
    }

    /// Dials `addr` on the user's request; the connection is kept and re-dialed when lost.
    pub fn connect(&mut self, now: Instant, addr: SocketAddr) {
        self.now = now;
        self.dial(addr, None, DiscoverySource::Manual);
        self.after(now);
    }

    /// Sends an on-demand ping of `size` bytes of padding each way to `peer`; the answer is an
    /// [`Event::PingResult`] with the returned id.
    pub fn ping(&mut self, now: Instant, peer: NodeId, size: u32) -> Result<PingId, PingError> {
        self.now = now;
        let conn = self
            .connection_to(peer)
            .ok_or(PingError::NotConnected(peer))?;
        let size = size.min(self.config.max_ping_padding);
        let id = PingId(self.rng.next_u64());
        self.send_ping(now, conn, Some(id), size);
        self.after(now);
        Ok(id)
    }

    /// Closes every connection with a `Shutdown` goodbye.
    pub fn shutdown(&mut self, now: Instant) {
        self.now = now;
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            self.drop_conn(
                now,
                conn,
                DownReason::Closed(GoodbyeReason::Shutdown),
                Some(GoodbyeReason::Shutdown),
            );
        }
        self.timers.clear();
    }

    /// Publishes on `topic`: says which connections need the message (filtering at the
    /// sender). Allocation-free once warm. Numbering is the driver's: 1, 2, 3, ... per topic, as
    /// the duplicate filter expects ([`crate::dedup`]).
    pub fn publish(&mut self, topic: &Topic) -> Publication<'_> {
        self.rebuild_routes();
        self.scratch.clear();
        match self.route_index.get(topic) {
            Some(conns) if !conns.is_empty() => {
                let own = StreamId {
                    publisher: self.me,
                    incarnation: self.config.incarnation,
                    topic: topic.clone(),
                };
                let lazy = &self.bcast;
                self.scratch
                    .extend(conns.iter().copied().filter(|&c| lazy.is_eager(c, &own)));
            }
            // Nobody to send to directly: hand the message to the relays.
            _ => self.scratch.extend_from_slice(&self.relay_conns),
        }
        let links = !self.relay_conns.is_empty()
            || self.route_index.get(topic).is_some_and(|c| !c.is_empty());
        Publication {
            links,
            hop_limit: self.config.message_hop_limit,
            deliver: self.wants(topic),
            forward: &self.scratch,
        }
    }

    /// Routes a message received on connection `from` (`None` for a best-effort datagram the
    /// driver could not attribute to a connection): whether to deliver it locally and where to
    /// forward it, after the duplicate filter and the hop limit. Counts as a sign of life of
    /// `from`. Allocation-free once warm (except for a stream, publisher and topic, seen for the
    /// first time).
    ///
    /// A message is believed only within reason ([`crate::limits`]). One that claims to come
    /// straight from its publisher (hop count 0) from a peer that is not that publisher is a
    /// protocol violation: it is neither delivered nor forwarded, and `from` is closed. A
    /// second-hand one implausibly far ahead of its stream's sequence (see [`crate::dedup`]) is
    /// refused and counted as a violation too, but `from` stays open: an honest neighbour
    /// forwards such a jump as well when this node has missed messages, until a second peer (or
    /// the publisher, or time) confirms it.
    pub fn route(&mut self, now: Instant, from: Option<ConnId>, msg: &Message) -> Route<'_> {
        self.route_checked(now, from, msg, true)
    }

    /// As [`route`](Membership::route), for a best-effort datagram attributed to `from` by its
    /// source address. A datagram's source can be spoofed: an implausible one is dropped (and
    /// counted in `messages_rejected`), never held against the connection.
    pub fn route_datagram(&mut self, now: Instant, from: ConnId, msg: &Message) -> Route<'_> {
        self.route_checked(now, Some(from), msg, false)
    }

    fn route_checked(
        &mut self,
        now: Instant,
        from: Option<ConnId>,
        msg: &Message,
        reliable: bool,
    ) -> Route<'_> {
        self.now = now;
        let mut sender = None;
        if let Some(c) = from.and_then(|f| self.conns.get_mut(&f)) {
            if reliable {
                c.last_rx = now;
                c.frames_in += 1;
            }
            sender = Some(c.peer);
        }
        self.scratch.clear();
        let first_hand = sender == Some(msg.publisher);
        let mut verdict = None;
        if msg.hops == 0 && sender.is_some() && !first_hand {
            verdict = Some(Violation::ImpersonatedPublisher);
        }
        let evictions = self.dedup.evictions;
        let seen = if verdict.is_some() || msg.publisher == self.me {
            Seen::Duplicate
        } else {
            // A copy the publisher served from its cache (one hop: see `on_want`) is old news
            // of the publisher, not where it is now: it moves the filter as a relay's would.
            let by = if first_hand && msg.hops == 0 {
                dedup::From::Publisher
            } else {
                // A datagram's source can be spoofed: it never counts as a second peer's word.
                dedup::From::Relay(sender.filter(|_| reliable))
            };
            self.dedup.check(
                now,
                (msg.publisher, msg.incarnation),
                &msg.topic,
                msg.sequence,
                by,
            )
        };
        let seen = if seen != Seen::New
            && verdict.is_none()
            && reliable
            && msg.publisher != self.me
            && self.still_needed(msg, first_hand)
        {
            // The stream's own order knows better than the window: a message it still waits
            // for is new, however far the window moved (a path lagging the others by more than
            // the window, or a jump the window has not followed yet).
            Seen::New
        } else {
            seen
        };
        if self.dedup.evictions != evictions {
            self.event(Event::Dropped {
                kind: DropKind::DedupStream,
            });
        }
        if seen == Seen::Implausible {
            // Refused and counted, but the connection stays: an honest neighbour forwards such a
            // jump too, after this node missed messages (until a second peer confirms it).
            self.counters.messages_rejected += 1;
            if let (true, Some(conn), Some(peer)) = (reliable, from, sender) {
                self.count_violation(peer, conn, Violation::ImplausibleSequence);
                // Refused copies are no use on this link either: an honest neighbour far ahead
                // (this node's own path lags) announces instead, and its announcements, believed
                // within reason, drive repair if this node really missed messages.
                self.implausible_on(conn, msg);
            }
            return Route::refused();
        }
        if let Some(kind) = verdict {
            self.counters.messages_rejected += 1;
            if let (true, Some(conn), Some(peer)) = (reliable, from, sender) {
                self.violation(now, conn, peer, kind);
            }
            return Route::refused();
        }
        if seen == Seen::Duplicate {
            self.counters.messages_duplicate += 1;
            if let (true, Some(conn)) = (reliable, from) {
                self.duplicate_on(conn, msg, first_hand);
            }
            return Route::refused();
        }
        let deliver = self.wants(&msg.topic);
        let Some(in_order) = self.accept(now, from, msg, (reliable, first_hand), deliver) else {
            return Route::refused();
        };
        self.counters.messages_new += 1;
        if msg.hop_limit > 0 {
            self.rebuild_routes();
            let publisher_conn = self.known.get(&msg.publisher).and_then(|k| k.conn);
            if let Some(conns) = self.route_index.get(&msg.topic) {
                let bcast = &self.bcast;
                let lazy = if bcast.all_eager() {
                    &[][..]
                } else {
                    bcast.lazy_conns(crate::key::StreamRef::of(msg))
                };
                self.scratch.extend(conns.iter().copied().filter(|&c| {
                    Some(c) != from && Some(c) != publisher_conn && !lazy.contains(&c)
                }));
            }
        }
        Route {
            in_order,
            deliver,
            duplicate: false,
            forward: &self.scratch,
            hop_limit: msg.hop_limit.saturating_sub(1),
        }
    }
}

/// The `k` members nearest to `center` on each side in the ring of ids (wrapping), without
/// `center` itself and without repeats.
/// Replaces topics decoded from a frame (slices of its read buffer) by copies of their own, so
/// that a stored topic never keeps a large read buffer alive.
fn detach_topics(topics: &mut [Topic]) {
    for t in topics {
        *t = t.detached();
    }
}

fn ring_near(members: &BTreeSet<NodeId>, center: NodeId, k: usize) -> Vec<NodeId> {
    let mut out = Vec::with_capacity(2 * k);
    let after = members
        .range((Bound::Excluded(center), Bound::Unbounded))
        .chain(members.range(..center))
        .filter(|&&n| n != center)
        .take(k);
    out.extend(after.copied());
    let before = members
        .range(..center)
        .rev()
        .chain(
            members
                .range((Bound::Excluded(center), Bound::Unbounded))
                .rev(),
        )
        .filter(|&&n| n != center)
        .take(k);
    for n in before {
        if !out.contains(n) {
            out.push(*n);
        }
    }
    out
}

/// `size` bytes of ping or pong padding (none for 0).
fn padding(size: u32) -> Bytes {
    if size == 0 {
        Bytes::new()
    } else {
        Bytes::from(vec![0u8; size as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u128]) -> BTreeSet<NodeId> {
        ids.iter().map(|&i| NodeId::from_u128(i)).collect()
    }

    #[test]
    fn ring_near_wraps_and_excludes_center() {
        let m = set(&[10, 20, 30, 40, 50, 60]);
        let near = ring_near(&m, NodeId::from_u128(10), 2);
        let ids: Vec<u128> = near.iter().map(|n| n.as_u128()).collect();
        assert_eq!(ids, vec![20, 30, 60, 50]);
        // A center that is not a member.
        let ids: Vec<u128> = ring_near(&m, NodeId::from_u128(35), 1)
            .iter()
            .map(|n| n.as_u128())
            .collect();
        assert_eq!(ids, vec![40, 30]);
        // Fewer members than 2k: each once.
        let ids: Vec<u128> = ring_near(&set(&[1, 2, 3]), NodeId::from_u128(1), 2)
            .iter()
            .map(|n| n.as_u128())
            .collect();
        assert_eq!(ids, vec![2, 3]);
    }
}
