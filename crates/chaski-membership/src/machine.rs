//! The state machine, [`Membership`]: fed what happened, it says what to do and when to wake it.

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
    StatusResponse, SubscriptionUpdate, Topic, Unpair, subscription_digest,
};

use crate::{
    config::Config,
    dedup::{DuplicateFilter, Seen},
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
    sequence: u64,
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
            dedup: DuplicateFilter::new(config.dedup_publishers),
            dead: HashMap::new(),
            dead_order: VecDeque::new(),
            sequence: 0,
            route_index: HashMap::default(),
            relay_conns: Vec::new(),
            route_dirty: true,
            scratch: Vec::new(),
            next_wire_ping: 1,
            pending_pings: VecDeque::new(),
            counters: Counters::default(),
            dial_tokens: LEARNED_DIAL_BURST,
            dial_tokens_at: now,
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
        let k = self.known.entry(id).or_insert_with(|| Known {
            info: info.clone(),
            source,
            last_seen: now,
            conn: None,
            down: false,
            failures: 0,
            keep: false,
            verified: true,
            heard_at: Some(now),
            cooldown: Vec::new(),
            sub_revision: 0,
        });
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
                // driver that leaves it out answers for it.
                let local = self
                    .conns
                    .get(&conn)
                    .and_then(|c| c.remote_addr)
                    .is_none_or(|a| a.ip().is_loopback());
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

    /// Publishes on `topic`: assigns the next sequence number and says which connections need
    /// the message (filtering at the sender). Allocation-free once warm.
    pub fn publish(&mut self, topic: &Topic) -> Publication<'_> {
        self.sequence += 1;
        self.rebuild_routes();
        self.scratch.clear();
        match self.route_index.get(topic) {
            Some(conns) if !conns.is_empty() => self.scratch.extend_from_slice(conns),
            // Nobody to send to directly: hand the message to the relays.
            _ => self.scratch.extend_from_slice(&self.relay_conns),
        }
        Publication {
            sequence: self.sequence,
            hop_limit: self.config.message_hop_limit,
            deliver: self.wants(topic),
            forward: &self.scratch,
        }
    }

    /// Routes a message received on connection `from` (`None` for a best-effort datagram the
    /// driver could not attribute to a connection): whether to deliver it locally and where to
    /// forward it, after the duplicate filter and the hop limit. Counts as a sign of life of
    /// `from`. Allocation-free once warm (except for a publisher seen for the first time).
    ///
    /// A message is believed only within reason ([`crate::limits`]): one that claims to come
    /// straight from its publisher (hop count 0) from a peer that is not that publisher, or a
    /// second-hand one implausibly far ahead of the publisher's sequence, is a protocol
    /// violation: it is neither delivered nor forwarded, and `from` is closed.
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
            self.dedup.check(msg.publisher, msg.sequence, first_hand)
        };
        if seen == Seen::Implausible {
            verdict = Some(Violation::ImplausibleSequence);
        }
        if self.dedup.evictions != evictions {
            self.event(Event::Dropped {
                kind: DropKind::DedupPublisher,
            });
        }
        if let Some(kind) = verdict {
            self.counters.messages_rejected += 1;
            if let (true, Some(conn), Some(peer)) = (reliable, from, sender) {
                self.violation(now, conn, peer, kind);
            }
            self.scratch.clear();
            return Route {
                deliver: false,
                duplicate: true,
                forward: &self.scratch,
                hop_limit: 0,
            };
        }
        if seen == Seen::Duplicate {
            self.counters.messages_duplicate += 1;
            return Route {
                deliver: false,
                duplicate: true,
                forward: &self.scratch,
                hop_limit: 0,
            };
        }
        self.counters.messages_new += 1;
        let deliver = self.wants(&msg.topic);
        if msg.hop_limit > 0 {
            self.rebuild_routes();
            let publisher_conn = self.known.get(&msg.publisher).and_then(|k| k.conn);
            if let Some(conns) = self.route_index.get(&msg.topic) {
                self.scratch.extend(
                    conns
                        .iter()
                        .copied()
                        .filter(|&c| Some(c) != from && Some(c) != publisher_conn),
                );
            }
        }
        Route {
            deliver,
            duplicate: false,
            forward: &self.scratch,
            hop_limit: msg.hop_limit.saturating_sub(1),
        }
    }

    // ----- Internals: bookkeeping -------------------------------------------------------------

    fn capabilities(&self) -> Capabilities {
        let caps = Capabilities::STATUS;
        if self.config.relay {
            caps.with(Capabilities::RELAY)
        } else {
            caps
        }
    }

    fn my_info(&self) -> PeerInfo {
        PeerInfo {
            node_id: self.me,
            name: self.config.name.clone(),
            listen_addrs: self.config.listen_addrs.clone(),
            subscriptions: self.topics.keys().cloned().collect(),
            capabilities: self.capabilities(),
            full_topics: self
                .topics
                .keys()
                .filter(|t| self.degree(t) >= self.config.max_connections)
                .count() as u32,
        }
    }

    fn add_topic(&mut self, now: Instant, topic: Topic) {
        self.topics.insert(
            topic,
            TopicState {
                isolated_reported: false,
                search_delay: self.config.search_initial,
                next_search: Some(now + self.config.search_initial),
                leader_delay: self.config.search_initial,
                next_leader_search: None,
            },
        );
        self.arm_search(now + self.config.search_initial);
        self.route_dirty = true;
        self.dirty = true;
    }

    fn arm(&mut self, at: Instant, timer: Timer) {
        self.timer_seq += 1;
        self.timers.push(Reverse((at, self.timer_seq, timer)));
    }

    fn arm_search(&mut self, at: Instant) {
        if self.next_search_at.is_none_or(|t| at < t) {
            self.next_search_at = Some(at);
            self.arm(at, Timer::Search);
        }
    }

    fn push(&mut self, action: Action) {
        self.actions.push_back(action);
    }

    fn event(&mut self, event: Event) {
        self.actions.push_back(Action::Event(event));
    }

    fn send(&mut self, conn: ConnId, frame: Frame) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.frames_out += 1;
        }
        self.counters.control_frames_sent += 1;
        if matches!(
            frame,
            Frame::Search(_) | Frame::SearchReply(_) | Frame::PeerExchange(_)
        ) {
            self.counters.discovery_frames_sent += 1;
        }
        self.actions.push_back(Action::Send { conn, frame });
    }

    fn broadcast(&mut self, frame: Frame) {
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            self.send(conn, frame.clone());
        }
    }

    fn backoff(&mut self, failures: u32) -> Duration {
        let base = self
            .config
            .reconnect_initial
            .saturating_mul(1u32 << failures.min(20))
            .min(self.config.reconnect_max);
        if self.config.reconnect_jitter == 0.0 {
            base
        } else {
            base.mul_f64(1.0 - self.config.reconnect_jitter * self.rng.next_f64())
        }
    }

    fn degree(&self, topic: &Topic) -> usize {
        self.conns
            .values()
            .filter(|c| c.paired.contains(topic))
            .count()
    }

    fn index(&mut self, id: NodeId) {
        let Some(k) = self.known.get(&id) else { return };
        if k.down {
            return;
        }
        for t in &k.info.subscriptions {
            self.subscribers.entry(t.clone()).or_default().insert(id);
        }
    }

    fn unindex(&mut self, id: NodeId) {
        let Some(k) = self.known.get(&id) else { return };
        for t in &k.info.subscriptions {
            if let Some(set) = self.subscribers.get_mut(t) {
                set.remove(&id);
                if set.is_empty() {
                    self.subscribers.remove(t);
                }
            }
        }
    }

    fn is_dead(&self, id: NodeId, now: Instant) -> bool {
        self.dead.get(&id).is_some_and(|&until| until > now)
    }

    fn bury(&mut self, id: NodeId, now: Instant) {
        if self.dead.len() >= self.config.max_known_peers {
            while let Some(old) = self.dead_order.pop_front() {
                if self.dead.remove(&old).is_some() {
                    break;
                }
            }
        }
        if self.dead.insert(id, now + TOMBSTONE_TTL).is_none() {
            self.dead_order.push_back(id);
        }
    }

    fn forget(&mut self, id: NodeId) {
        self.unindex(id);
        self.known.remove(&id);
        self.dirty = true;
    }

    /// Makes room for one more known peer; false if nothing can be evicted.
    fn make_room(&mut self, _now: Instant) -> bool {
        if self.known.len() < self.config.max_known_peers {
            return true;
        }
        let victim = self
            .known
            .iter()
            .filter(|(_, k)| k.conn.is_none() && !k.down && !k.keep)
            .min_by_key(|(id, k)| (k.last_seen, **id))
            .map(|(id, _)| *id);
        self.counters.known_evictions += 1;
        self.event(Event::Dropped {
            kind: DropKind::KnownPeer,
        });
        match victim {
            Some(id) => {
                self.forget(id);
                true
            }
            None => false,
        }
    }

    fn cooling(&self, peer: NodeId, topic: &Topic, now: Instant) -> bool {
        self.known.get(&peer).is_some_and(|k| {
            k.cooldown
                .iter()
                .any(|(t, until)| t == topic && *until > now)
        })
    }

    fn set_cooldown(&mut self, peer: NodeId, topic: &Topic, until: Instant) {
        let now = self.now;
        if let Some(k) = self.known.get_mut(&peer) {
            k.cooldown.retain(|(t, u)| t != topic && *u > now);
            k.cooldown.push((topic.clone(), until));
        }
    }

    /// The backbone of `topic` as this node sees it: every known live subscriber if they fit in
    /// `max_connections`, otherwise the `ring_neighbours` nearest on each side in the ring of
    /// subscriber ids.
    fn desired(&self, topic: &Topic) -> Vec<NodeId> {
        let Some(members) = self.subscribers.get(topic) else {
            return Vec::new();
        };
        if members.len() <= self.config.max_connections {
            return members.iter().copied().collect();
        }
        ring_near(members, self.me, self.config.ring_neighbours)
    }

    fn is_desired_anywhere(&self, peer: NodeId) -> bool {
        let Some(k) = self.known.get(&peer) else {
            return false;
        };
        k.info
            .subscriptions
            .iter()
            .filter(|t| self.topics.contains_key(*t))
            .any(|t| self.desired(t).contains(&peer))
    }

    // ----- Internals: timers ------------------------------------------------------------------

    fn fire(&mut self, now: Instant, timer: Timer) {
        match timer {
            Timer::Liveness(conn) => {
                let Some(c) = self.conns.get(&conn) else {
                    return;
                };
                let deadline = c.last_rx + self.config.peer_timeout;
                if now >= deadline {
                    let silent_for = now - c.last_rx;
                    self.drop_conn(
                        now,
                        conn,
                        DownReason::Timeout { silent_for },
                        Some(GoodbyeReason::Timeout),
                    );
                } else {
                    self.arm(deadline, Timer::Liveness(conn));
                }
            }
            Timer::Ping(conn) => {
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
                let exchange = now >= c.next_exchange;
                if exchange {
                    c.next_exchange = now + self.config.exchange_interval;
                }
                self.send_ping(now, conn, None, 0);
                if exchange {
                    self.send_exchange(conn);
                    self.refresh_pairs(conn);
                }
                self.arm(now + self.config.ping_interval, Timer::Ping(conn));
            }
            Timer::Redial(peer) => {
                let Some(k) = self.known.get(&peer) else {
                    return;
                };
                if k.conn.is_none() && k.down {
                    match k.info.listen_addrs.first().copied() {
                        Some(addr) => {
                            if !self.dial(addr, Some(peer), k.source) {
                                // Could not start (limit reached): count as a failure.
                                self.dial_failed_for(now, peer);
                            }
                        }
                        None => self.forget(peer),
                    }
                }
            }
            Timer::Seeds => {
                self.seeds_armed = false;
                if self.conns.is_empty() {
                    let mut started = false;
                    for addr in self.config.seeds.clone() {
                        started |= self.dial(addr, None, DiscoverySource::Seed);
                    }
                    if !started && self.dials.is_empty() {
                        self.seed_failures += 1;
                        let delay = self.backoff(self.seed_failures);
                        self.arm(now + delay, Timer::Seeds);
                        self.seeds_armed = true;
                    }
                } else {
                    self.seed_failures = 0;
                }
            }
            Timer::Beacon => {
                self.beacon_sequence += 1;
                let beacon = Beacon {
                    network_id: self.config.network_id.clone(),
                    node_id: self.me,
                    name: self.config.name.clone(),
                    listen_addrs: self.config.listen_addrs.clone(),
                    subscription_digest: subscription_digest(self.topics.keys()),
                    subscription_count: self.topics.len() as u32,
                    capabilities: self.capabilities(),
                    sequence: self.beacon_sequence,
                    auth_tag: Bytes::new(),
                };
                self.counters.control_frames_sent += 1;
                self.counters.discovery_frames_sent += 1;
                self.push(Action::SendDatagram {
                    to: DatagramTarget::Lan,
                    frame: Frame::Beacon(beacon),
                });
                let delay = self.beacon_delay;
                self.beacon_delay = (self.beacon_delay * 2).min(self.config.beacon_interval);
                self.arm(now + delay, Timer::Beacon);
            }
            Timer::ExchangeFlush => {
                self.exchange_flush_armed = false;
                let dirty: Vec<ConnId> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.exchange_dirty)
                    .map(|(&id, _)| id)
                    .collect();
                for conn in dirty {
                    self.send_exchange(conn);
                }
            }
            Timer::Maintenance => {
                self.maintain(now);
                self.arm(now + self.config.pair_retry, Timer::Maintenance);
            }
            Timer::Search => {
                if self.next_search_at.is_some_and(|t| t <= now) {
                    self.next_search_at = None;
                }
                self.run_searches(now);
                // Make sure the earliest pending search of any topic has a timer.
                let next = self
                    .topics
                    .values()
                    .flat_map(|s| [s.next_search, s.next_leader_search])
                    .flatten()
                    .filter(|&t| t > now)
                    .min();
                if let Some(at) = next {
                    self.arm_search(at);
                }
            }
        }
    }

    fn dial(&mut self, addr: SocketAddr, peer: Option<NodeId>, source: DiscoverySource) -> bool {
        if self.self_addrs.contains(&addr) || self.dials.contains_key(&addr) {
            return false;
        }
        if self.conns.len() + self.dials.len() >= self.config.max_peers
            && !self.evict_idle_inbound()
        {
            return false;
        }
        // An address the network told us about (not one the user gave, nor a peer we have been
        // connected to) is dialed only if it can be a peer's, and at a bounded rate: nothing a
        // peer says can make this node dial at will.
        let learned = !matches!(source, DiscoverySource::Seed | DiscoverySource::Manual)
            && !peer.is_some_and(|p| self.known.get(&p).is_some_and(|k| k.verified));
        if learned {
            if !self.dialable(addr) {
                self.counters.undialable_addrs += 1;
                return false;
            }
            if !self.take_dial_token() {
                self.counters.dials_deferred += 1;
                return false;
            }
        }
        self.dials.insert(addr, Dial { peer, source });
        self.counters.dials += 1;
        self.push(Action::Dial { addr, peer });
        true
    }

    /// At `max_peers`, makes room for a link this node wants: closes the oldest inbound
    /// connection that carries no link, is wanted by no topic and is not kept (a peer that only
    /// pings holds a slot; it must not keep the node from its own links). Returns whether one
    /// was closed.
    fn evict_idle_inbound(&mut self) -> bool {
        let victim = self
            .conns
            .iter()
            .filter(|(_, c)| {
                !c.outbound
                    && c.paired.is_empty()
                    && c.pending.is_empty()
                    && !self.known.get(&c.peer).is_some_and(|k| k.keep)
                    && !self.is_desired_anywhere(c.peer)
            })
            .min_by_key(|(_, c)| c.since)
            .map(|(&id, _)| id);
        let Some(conn) = victim else {
            return false;
        };
        self.counters.idle_evictions += 1;
        let now = self.now;
        self.drop_conn(
            now,
            conn,
            DownReason::Closed(GoodbyeReason::NotNeeded),
            Some(GoodbyeReason::NotNeeded),
        );
        true
    }

    /// Whether an address learned from the network may be dialed: a unicast address with a
    /// port, and a loopback one only if this node itself listens on loopback.
    fn dialable(&self, addr: SocketAddr) -> bool {
        let ip = addr.ip();
        let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
        let loopback_ok = self
            .config
            .listen_addrs
            .iter()
            .any(|a| a.ip().is_loopback());
        addr.port() != 0
            && !ip.is_unspecified()
            && !ip.is_multicast()
            && !broadcast
            && (!ip.is_loopback() || loopback_ok)
    }

    /// Takes one token of the bucket that bounds dials to learned addresses
    /// ([`LEARNED_DIAL_RATE`] a second, bursts of [`LEARNED_DIAL_BURST`]).
    fn take_dial_token(&mut self) -> bool {
        let elapsed = (self.now - self.dial_tokens_at).as_secs_f64();
        self.dial_tokens_at = self.now;
        self.dial_tokens = (self.dial_tokens + elapsed * LEARNED_DIAL_RATE).min(LEARNED_DIAL_BURST);
        if self.dial_tokens >= 1.0 {
            self.dial_tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn dial_failed_for(&mut self, now: Instant, peer: NodeId) {
        let Some(k) = self.known.get_mut(&peer) else {
            return;
        };
        if k.conn.is_some() {
            return;
        }
        k.failures += 1;
        let failures = k.failures;
        let was_down = k.down;
        let limit = if k.verified {
            self.config.reconnect_attempts
        } else {
            UNVERIFIED_ATTEMPTS.min(self.config.reconnect_attempts)
        };
        if failures >= limit {
            let verified = k.verified;
            self.forget(peer);
            if verified {
                // Re-dialed for minutes: dead. A peer never reached is only forgotten (it may
                // have been behind a partition); freshness keeps rumours of it short-lived.
                self.event(Event::ReconnectGaveUp { peer });
                self.bury(peer, now);
            }
            return;
        }
        if !was_down {
            self.unindex(peer);
            self.known.get_mut(&peer).expect("known").down = true;
            self.dirty = true;
        }
        let delay = self.backoff(failures);
        self.arm(now + delay, Timer::Redial(peer));
    }

    fn maintain(&mut self, now: Instant) {
        self.dirty = true;
        // Close the connections this node dialed that nothing needs any more.
        if !self.config.disconnect_unneeded {
            return;
        }
        let mut close = Vec::new();
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            let c = &self.conns[&id];
            let keep = self.known.get(&c.peer).is_none_or(|k| k.keep);
            let unneeded = c.outbound
                && !keep
                && c.paired.is_empty()
                && c.pending.is_empty()
                && !self.is_desired_anywhere(c.peer);
            let c = self.conns.get_mut(&id).expect("conn");
            if !unneeded {
                c.unneeded_since = None;
            } else {
                let since = *c.unneeded_since.get_or_insert(now);
                if now - since >= self.config.idle_grace {
                    close.push(id);
                }
            }
        }
        for conn in close {
            self.drop_conn(
                now,
                conn,
                DownReason::Closed(GoodbyeReason::NotNeeded),
                Some(GoodbyeReason::NotNeeded),
            );
        }
    }

    /// The topics whose timer, as `when` reads it from their state, is due at `now`.
    fn topics_due(
        &self,
        now: Instant,
        when: impl Fn(&TopicState) -> Option<Instant>,
    ) -> Vec<Topic> {
        self.topics
            .iter()
            .filter(|(_, s)| when(s).is_some_and(|t| t <= now))
            .map(|(t, _)| t.clone())
            .collect()
    }

    fn run_searches(&mut self, now: Instant) {
        let leaders: Vec<Topic> = self.topics_due(now, |s| s.next_leader_search);
        for topic in leaders {
            let state = self.topics.get_mut(&topic).expect("topic");
            let delay = state.leader_delay;
            state.leader_delay = (delay * 2).min(self.config.component_search_max);
            state.next_leader_search = Some(now + delay);
            self.arm_search(now + delay);
            self.start_search(topic);
        }
        let due: Vec<Topic> = self.topics_due(now, |s| s.next_search);
        for topic in due {
            let isolated = self.degree(&topic) == 0 && self.desired(&topic).is_empty();
            let state = self.topics.get_mut(&topic).expect("topic");
            if !isolated {
                state.next_search = None;
                state.search_delay = self.config.search_initial;
                continue;
            }
            let delay = state.search_delay;
            state.search_delay = (delay * 2).min(self.config.search_max);
            state.next_search = Some(now + delay);
            if !state.isolated_reported {
                state.isolated_reported = true;
                self.event(Event::TopicIsolated {
                    topic: topic.clone(),
                });
            }
            self.arm_search(now + delay);
            self.start_search(topic);
        }
    }

    fn start_search(&mut self, topic: Topic) {
        if self.conns.is_empty() {
            return;
        }
        let search_id = self.rng.next_u64();
        self.remember_search((self.me, search_id), None);
        let search = Search {
            search_id,
            origin: self.my_info(),
            topic,
            hop_limit: self.config.search_hop_limit,
            visited: vec![self.me],
        };
        self.broadcast(Frame::Search(search));
    }

    fn remember_search(&mut self, key: (NodeId, u64), from: Option<ConnId>) {
        if self.searches.len() >= self.config.max_pending_searches {
            if let Some(old) = self.search_order.pop_front() {
                self.searches.remove(&old);
                self.counters.search_evictions += 1;
                self.event(Event::Dropped {
                    kind: DropKind::Search,
                });
            }
        }
        self.searches.insert(key, from);
        self.search_order.push_back(key);
    }

    // ----- Internals: frames ------------------------------------------------------------------

    fn send_ping(&mut self, now: Instant, conn: ConnId, id: Option<PingId>, size: u32) {
        let wire_id = self.next_wire_ping;
        self.next_wire_ping += 1;
        let peer = self.conns.get(&conn).map(|c| c.peer);
        if let (Some(id), Some(peer)) = (id, peer) {
            if self.pending_pings.len() >= self.config.max_pending_pings {
                self.pending_pings.pop_front();
                self.counters.ping_evictions += 1;
                self.event(Event::Dropped {
                    kind: DropKind::Ping,
                });
            }
            self.pending_pings.push_back(PendingPing {
                wire_id,
                id,
                peer,
                size,
            });
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            if c.pings_out.len() >= MAX_PINGS_IN_FLIGHT {
                c.pings_out.pop_front();
            }
            c.pings_out.push_back((wire_id, now));
        }
        let padding = padding(size);
        self.send(
            conn,
            Frame::Ping(Ping {
                id: wire_id,
                sent_at_micros: now.as_micros(),
                padding,
                reply_padding: size,
            }),
        );
    }

    fn on_pong(&mut self, now: Instant, conn: ConnId, peer: NodeId, pong: &Pong) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        // Only an answer to a ping of ours counts, timed by our own clock: an unsolicited or
        // forged pong cannot claim a low round trip (and so win extra links).
        let Some(pos) = c.pings_out.iter().position(|&(id, _)| id == pong.id) else {
            self.counters.unexpected_frames += 1;
            return;
        };
        let sent = c.pings_out[pos].1;
        c.pings_out.drain(..=pos);
        let rtt = now - sent;
        c.rtt.update(rtt);
        let stats = c.rtt;
        self.event(Event::LatencyUpdated {
            peer,
            srtt: stats.srtt,
            rttvar: stats.rttvar,
            min_rtt: stats.min_rtt,
        });
        if let Some(pos) = self.pending_pings.iter().position(|p| p.wire_id == pong.id) {
            let p = self.pending_pings.remove(pos).expect("position");
            self.event(Event::PingResult {
                id: p.id,
                peer: p.peer,
                rtt,
                size: p.size,
            });
        }
    }

    /// How much of the `asked` padding a pong on `conn` may carry now: at most
    /// `max_ping_padding`, and at most that many bytes per `ping_interval` on one connection.
    fn padding_allowed(&mut self, now: Instant, conn: ConnId, asked: u32) -> u32 {
        let max = self.config.max_ping_padding;
        let window = self.config.ping_interval;
        let Some(c) = self.conns.get_mut(&conn) else {
            return 0;
        };
        if now - c.padding_since >= window {
            c.padding_since = now;
            c.padding_sent = 0;
        }
        let asked = asked.min(max);
        if c.padding_sent + u64::from(asked) > u64::from(max) {
            self.counters.padding_refused += 1;
            return 0;
        }
        c.padding_sent += u64::from(asked);
        asked
    }

    /// Counts a violation and reports it (the caller closes the connection).
    fn count_violation(&mut self, peer: NodeId, conn: ConnId, kind: Violation) {
        self.counters.violations.add(kind);
        self.event(Event::ProtocolViolation { peer, conn, kind });
    }

    /// `peer` broke a limit on `conn`: the connection is closed with `ProtocolError` and the
    /// peer is not dialed again for a while (it is buried as dead; if it connects to us again,
    /// it is accepted and checked again).
    fn violation(&mut self, now: Instant, conn: ConnId, peer: NodeId, kind: Violation) {
        self.count_violation(peer, conn, kind);
        self.drop_conn(
            now,
            conn,
            DownReason::Closed(GoodbyeReason::ProtocolError),
            Some(GoodbyeReason::ProtocolError),
        );
        if self.known.get(&peer).is_some_and(|k| k.conn.is_none()) {
            self.forget(peer);
            self.bury(peer, now);
        }
    }

    fn on_subscription_update(
        &mut self,
        now: Instant,
        conn: ConnId,
        peer: NodeId,
        u: SubscriptionUpdate,
    ) {
        let Some(k) = self.known.get(&peer) else {
            return;
        };
        if u.revision <= k.sub_revision {
            return;
        }
        // Sets, not nested loops: the lists are bounded (`limits`), and still never quadratic.
        let removed: HashSet<&Topic> = u.removed.iter().collect();
        let mut topics: BTreeSet<Topic> = k
            .info
            .subscriptions
            .iter()
            .filter(|t| !removed.contains(t))
            .cloned()
            .collect();
        // Stored topics are copied out of the read buffer, so that they pin no large buffer.
        topics.extend(u.added.iter().map(Topic::detached));
        if topics.len() > self.config.max_peer_topics {
            self.violation(now, conn, peer, Violation::TooManyTopics);
            return;
        }
        self.unindex(peer);
        let k = self.known.get_mut(&peer).expect("known");
        k.sub_revision = u.revision;
        k.last_seen = now;
        k.info.subscriptions = topics.into_iter().collect();
        self.index(peer);
        for t in &u.removed {
            self.unpair_local(conn, t);
        }
        for t in &u.added {
            self.notify_near(t, peer);
        }
        self.route_dirty = true;
        self.dirty = true;
    }

    fn on_pair_request(&mut self, now: Instant, conn: ConnId, peer: NodeId, r: PairRequest) {
        let mut accepted = Vec::new();
        let mut rejected = Vec::new();
        for t in r.topics {
            let ok = self.accept_pair(now, conn, peer, &t);
            if ok {
                accepted.push(t);
            } else {
                rejected.push(t);
            }
        }
        self.send(
            conn,
            Frame::PairResponse(PairResponse {
                request_id: r.request_id,
                accepted,
                rejected,
            }),
        );
    }

    fn accept_pair(&mut self, _now: Instant, conn: ConnId, peer: NodeId, t: &Topic) -> bool {
        if !self.wants(t) && !self.config.relay {
            return false;
        }
        if self
            .conns
            .get(&conn)
            .is_some_and(|c| c.paired.contains(t) || c.pending.contains(t))
        {
            // Already a link, or both sides asked at once: agree.
            self.pair_local(conn, peer, t);
            return true;
        }
        let degree = self.degree(t);
        let desired = self.desired(t);
        let ok = if self.config.relay && !self.wants(t) {
            true
        } else if desired.contains(&peer) {
            if degree >= self.config.max_connections {
                // Make room by releasing the worst link that is not part of the backbone.
                self.evict_extra(t, &desired);
            }
            self.degree(t) < self.config.max_connections
        } else {
            let pending = self
                .conns
                .values()
                .filter(|c| c.pending.contains(t))
                .count();
            degree + pending < self.config.max_connections
        };
        if ok {
            self.pair_local(conn, peer, t);
        }
        ok
    }

    fn on_pair_response(&mut self, now: Instant, conn: ConnId, peer: NodeId, r: PairResponse) {
        for t in r.accepted {
            let pending = self
                .conns
                .get_mut(&conn)
                .is_some_and(|c| c.pending.remove(&t));
            if !self.wants(&t) {
                // Unsubscribed meanwhile.
                self.send(conn, Frame::Unpair(Unpair { topics: vec![t] }));
                continue;
            }
            if pending || self.conns.contains_key(&conn) {
                self.pair_local(conn, peer, &t);
            }
        }
        for t in r.rejected {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.pending.remove(&t);
            }
            // A refresh of a link the peer no longer has: drop our side too.
            self.unpair_local(conn, &t);
            let retry = if self.desired(&t).contains(&peer) {
                self.config.pair_retry
            } else {
                EXTRA_RETRY
            };
            self.set_cooldown(peer, &t, now + retry);
        }
        self.dirty = true;
    }

    /// Re-asserts the links of `conn` with a `PairRequest` for its paired topics: the peer
    /// accepts what it also has and rejects what it dropped, so both ends agree again after a
    /// connection was replaced (frames in flight lost).
    fn refresh_pairs(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if c.paired.is_empty() {
            return;
        }
        let topics: Vec<Topic> = c.paired.iter().cloned().collect();
        let request_id = self.rng.next_u64();
        self.send(conn, Frame::PairRequest(PairRequest { request_id, topics }));
    }

    fn pair_local(&mut self, conn: ConnId, peer: NodeId, t: &Topic) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.pending.remove(t);
        if c.paired.insert(t.clone()) {
            c.unneeded_since = None;
            self.event(Event::Paired {
                topic: t.clone(),
                peer,
            });
            self.route_dirty = true;
            self.dirty = true;
        }
    }

    fn unpair_local(&mut self, conn: ConnId, t: &Topic) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.pending.remove(t);
        if c.paired.remove(t) {
            let peer = c.peer;
            self.event(Event::Unpaired {
                topic: t.clone(),
                peer,
            });
            self.route_dirty = true;
            self.dirty = true;
        }
    }

    fn evict_extra(&mut self, t: &Topic, desired: &[NodeId]) {
        let victim = self
            .conns
            .iter()
            .filter(|(_, c)| c.paired.contains(t) && !desired.contains(&c.peer))
            .max_by_key(|(id, c)| (c.rtt.srtt, **id))
            .map(|(&id, c)| (id, c.peer));
        if let Some((conn, peer)) = victim {
            self.send(
                conn,
                Frame::Unpair(Unpair {
                    topics: vec![t.clone()],
                }),
            );
            self.set_cooldown(peer, t, self.now + EXTRA_RETRY);
            self.unpair_local(conn, t);
        }
    }

    fn on_search(&mut self, now: Instant, conn: ConnId, s: Search) {
        let key = (s.origin.node_id, s.search_id);
        if self.searches.contains_key(&key) || s.origin.node_id == self.me {
            return;
        }
        self.remember_search(key, Some(conn));
        self.learn(now, s.origin.clone(), DiscoverySource::Search);
        if self.wants(&s.topic) {
            let component = self
                .subscribers
                .get(&s.topic)
                .and_then(|m| m.first().copied())
                .map_or(self.me, |first| first.min(self.me));
            let reply = SearchReply {
                search_id: s.search_id,
                origin: s.origin.node_id,
                responder: self.my_info(),
                topic: s.topic.clone(),
                paired: self.degree(&s.topic) as u32,
                capacity: self.config.max_connections as u32,
                hop_limit: self.config.search_hop_limit,
                component,
            };
            self.send(conn, Frame::SearchReply(reply));
        }
        // Forward whether or not this node is itself full or subscribed, never further than our
        // own hop limit allows.
        let hop_limit = s.hop_limit.min(self.config.search_hop_limit);
        if hop_limit > 0 {
            let mut visited = s.visited;
            if visited.len() <= self.config.search_hop_limit as usize {
                visited.push(self.me);
            }
            let next: Vec<ConnId> = self
                .conns
                .iter()
                .filter(|(id, c)| **id != conn && !visited.contains(&c.peer))
                .map(|(&id, _)| id)
                .collect();
            let fwd = Search {
                search_id: s.search_id,
                origin: s.origin,
                topic: s.topic,
                hop_limit: hop_limit - 1,
                visited,
            };
            for c in next {
                self.send(c, Frame::Search(fwd.clone()));
            }
        }
    }

    fn on_search_reply(&mut self, now: Instant, _conn: ConnId, r: SearchReply) {
        if r.responder.node_id != self.me {
            self.learn(now, r.responder.clone(), DiscoverySource::Search);
        }
        let hop_limit = r.hop_limit.min(self.config.search_hop_limit);
        if r.origin == self.me || hop_limit == 0 {
            return;
        }
        let back = self.known.get(&r.origin).and_then(|k| k.conn).or_else(|| {
            self.searches
                .get(&(r.origin, r.search_id))
                .copied()
                .flatten()
        });
        if let Some(back) = back {
            let fwd = SearchReply {
                hop_limit: hop_limit - 1,
                ..r
            };
            self.send(back, Frame::SearchReply(fwd));
        }
    }

    fn on_beacon(&mut self, _now: Instant, from: SocketAddr, b: Beacon) {
        if !self.config.lan_discovery {
            // A unicast beacon to the node's port, with LAN discovery off: not asked for.
            self.counters.unexpected_frames += 1;
            return;
        }
        if b.node_id == self.me || b.network_id != self.config.network_id {
            return;
        }
        if let Some(k) = self.known.get(&b.node_id) {
            let digest = subscription_digest(k.info.subscriptions.iter());
            if k.conn.is_some() || k.down || digest == b.subscription_digest {
                return;
            }
        }
        // Dialed where the beacon came from, on the port it names: a beacon cannot aim this node
        // at another host.
        let port = b.listen_addrs.first().map_or(from.port(), SocketAddr::port);
        self.dial(
            SocketAddr::new(from.ip(), port),
            Some(b.node_id),
            DiscoverySource::Lan,
        );
    }

    /// Records what another node says about a peer. Connected peers are described by their own
    /// hello and updates, which win.
    fn learn(&mut self, now: Instant, mut info: PeerInfo, source: DiscoverySource) {
        detach_topics(&mut info.subscriptions);
        let id = info.node_id;
        if id == self.me {
            return;
        }
        // A search or search reply comes from the node itself: first-hand, it proves the node
        // is alive (even if we had given up on it). A peer exchange is hearsay.
        let first_hand = source == DiscoverySource::Search;
        if first_hand && self.dead.remove(&id).is_some() {
            self.dead_order.retain(|d| *d != id);
        }
        if let Some(k) = self.known.get_mut(&id) {
            k.last_seen = now;
            if first_hand {
                k.heard_at = Some(now);
            }
            if k.conn.is_some() || k.down || k.info.subscriptions == info.subscriptions {
                if k.conn.is_none() && !k.down {
                    k.info.listen_addrs = info.listen_addrs;
                }
                return;
            }
            self.unindex(id);
            let k = self.known.get_mut(&id).expect("known");
            let added: Vec<Topic> = info
                .subscriptions
                .iter()
                .filter(|t| !k.info.subscriptions.contains(t))
                .cloned()
                .collect();
            k.info = info;
            self.index(id);
            for t in &added {
                self.notify_near(t, id);
            }
            self.dirty = true;
            return;
        }
        if info.listen_addrs.is_empty() || self.is_dead(id, now) || !self.make_room(now) {
            return;
        }
        let topics = info.subscriptions.clone();
        self.known.insert(
            id,
            Known {
                info,
                source,
                last_seen: now,
                conn: None,
                down: false,
                failures: 0,
                keep: false,
                verified: false,
                heard_at: first_hand.then_some(now),
                cooldown: Vec::new(),
                sub_revision: 0,
            },
        );
        self.index(id);
        self.event(Event::PeerDiscovered { peer: id, source });
        for t in &topics {
            self.notify_near(t, id);
        }
        self.dirty = true;
    }

    /// `id` is a new subscriber of `topic` as far as this node knows: tell the connected
    /// subscribers nearest to it in the topic's ring (those for which it may be a better
    /// neighbour), with the next batched peer exchange.
    fn notify_near(&mut self, topic: &Topic, id: NodeId) {
        if !self.config.relay && !self.topics.contains_key(topic) {
            return;
        }
        let Some(members) = self.subscribers.get(topic) else {
            return;
        };
        let near = ring_near(members, id, self.config.exchange_per_topic.div_ceil(2));
        let mut any = false;
        for n in near {
            if let Some(conn) = self.known.get(&n).and_then(|k| k.conn) {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.exchange_dirty = true;
                    any = true;
                }
            }
        }
        if any && !self.exchange_flush_armed {
            self.exchange_flush_armed = true;
            self.arm(self.now + self.config.exchange_delay, Timer::ExchangeFlush);
        }
    }

    fn send_exchange(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.exchange_dirty = false;
        let receiver = c.peer;
        let Some(rk) = self.known.get(&receiver) else {
            return;
        };
        let mut chosen: Vec<NodeId> = Vec::new();
        let half = self.config.exchange_per_topic.div_ceil(2);
        // Every topic the receiver wants, subscribed here or not: nodes in between carry
        // knowledge across (a seed that does not share a topic still introduces its
        // subscribers to each other).
        for t in &rk.info.subscriptions {
            let Some(members) = self.subscribers.get(t) else {
                continue;
            };
            let mut candidates = ring_near(members, receiver, half);
            candidates.extend(members.first().copied());
            candidates.extend(members.last().copied());
            for n in candidates {
                if n != receiver && !chosen.contains(&n) {
                    chosen.push(n);
                }
            }
            if chosen.len() >= self.config.max_exchange_peers {
                break;
            }
        }
        let now = self.now;
        chosen.retain(|id| {
            self.known.get(id).is_some_and(|k| {
                k.conn.is_some() || k.heard_at.is_some_and(|h| now - h <= FRESHNESS)
            })
        });
        chosen.truncate(self.config.max_exchange_peers);
        if chosen.is_empty() {
            return;
        }
        let peers = chosen
            .into_iter()
            .filter_map(|id| self.known.get(&id).map(|k| k.info.clone()))
            .collect();
        self.send(conn, Frame::PeerExchange(PeerExchange { peers }));
    }

    /// Forgets a connection: events, then the re-dial if the peer is still wanted and the end
    /// was a failure. `goodbye` is set when this node closes it.
    fn drop_conn(
        &mut self,
        now: Instant,
        conn: ConnId,
        reason: DownReason,
        goodbye: Option<GoodbyeReason>,
    ) {
        let wanted = match self.conns.get(&conn) {
            None => return,
            Some(c) => {
                !c.paired.is_empty()
                    || self.known.get(&c.peer).is_some_and(|k| k.keep)
                    || self.is_desired_anywhere(c.peer)
            }
        };
        let c = self.conns.remove(&conn).expect("conn");
        if let Some(g) = goodbye {
            self.push(Action::Close { conn, reason: g });
        }
        for t in &c.paired {
            self.event(Event::Unpaired {
                topic: t.clone(),
                peer: c.peer,
            });
        }
        self.event(Event::PeerDown {
            peer: c.peer,
            conn,
            reason,
        });
        self.route_dirty = true;
        self.dirty = true;
        let peer = c.peer;
        if let Some(k) = self.known.get_mut(&peer) {
            if k.conn == Some(conn) {
                k.conn = None;
            }
            k.heard_at = Some(c.last_rx);
        }
        // A connection that ends before it is stable (refused as a duplicate, overloaded, lost
        // at once) is one more failed attempt: the re-dial backs off further each time, so that
        // no refusal, however quick, makes two nodes reconnect in a loop.
        let flapped = !matches!(reason, DownReason::Closed(_))
            && now - c.since < self.config.ping_interval
            && self.known.get(&peer).is_some_and(|k| k.conn.is_none());
        match reason {
            DownReason::Goodbye(GoodbyeReason::Shutdown) => self.forget(peer),
            _ if flapped => {
                self.counters.flaps += 1;
                self.dial_failed_for(now, peer);
            }
            r if r.is_failure() && wanted => {
                self.unindex(peer);
                if let Some(k) = self.known.get_mut(&peer) {
                    k.down = true;
                    k.failures = 0;
                }
                let delay = self.backoff(0);
                self.arm(now + delay, Timer::Redial(peer));
            }
            r if r.is_failure() => self.forget(peer),
            _ => {
                if let Some(k) = self.known.get_mut(&peer) {
                    k.failures = 0;
                }
            }
        }
        if self.conns.is_empty() && !self.config.seeds.is_empty() && !self.seeds_armed {
            self.seed_failures = 0;
            let delay = self.backoff(0);
            self.arm(now + delay, Timer::Seeds);
            self.seeds_armed = true;
        }
    }

    // ----- Internals: pairing -----------------------------------------------------------------

    /// Runs after every input: pairing decisions for every subscribed topic.
    fn after(&mut self, now: Instant) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let topics: Vec<Topic> = self.topics.keys().cloned().collect();
        let mut requests: BTreeMap<ConnId, Vec<Topic>> = BTreeMap::new();
        let relay_connected = !topics.is_empty()
            && self.conns.values().any(|c| {
                self.known
                    .get(&c.peer)
                    .is_some_and(|k| k.info.capabilities.contains(Capabilities::RELAY))
            });
        for t in topics {
            // Component search: without a relay, two groups of subscribers of a topic may not
            // know each other. The node with the smallest id among the subscribers it knows
            // searches now and then (backoff up to `component_search_max`), so that another
            // group's members answer and the rings merge. One such node per group, none when a
            // relay (which knows everyone) is connected.
            let leader = !relay_connected
                && self
                    .subscribers
                    .get(&t)
                    .and_then(|m| m.first())
                    .is_some_and(|&first| self.me < first);
            let initial = self.config.search_initial;
            let state = self.topics.get_mut(&t).expect("topic");
            if !leader {
                state.next_leader_search = None;
                state.leader_delay = initial;
            } else if state.next_leader_search.is_none() {
                let at = now + state.leader_delay;
                state.next_leader_search = Some(at);
                self.arm_search(at);
            }
            let desired = self.desired(&t);
            for &y in &desired {
                let Some(k) = self.known.get(&y) else {
                    continue;
                };
                match k.conn {
                    Some(conn) => {
                        let c = &self.conns[&conn];
                        if !c.paired.contains(&t)
                            && !c.pending.contains(&t)
                            && !self.cooling(y, &t, now)
                        {
                            requests.entry(conn).or_default().push(t.clone());
                        }
                    }
                    None => {
                        if !k.down {
                            if let Some(addr) = k.info.listen_addrs.first().copied() {
                                let source = k.source;
                                self.dial(addr, Some(y), source);
                            }
                        }
                    }
                }
            }
            // Extras: connected subscribers of the topic, lowest latency first, up to the cap.
            let mut used = self.degree(&t)
                + self
                    .conns
                    .values()
                    .filter(|c| c.pending.contains(&t))
                    .count()
                + requests.values().filter(|ts| ts.contains(&t)).count();
            if used < self.config.max_connections {
                let mut extras: Vec<(Duration, ConnId, NodeId)> = self
                    .conns
                    .iter()
                    .filter(|(id, c)| {
                        !c.paired.contains(&t)
                            && !c.pending.contains(&t)
                            && !requests.get(id).is_some_and(|ts| ts.contains(&t))
                            && self.known.get(&c.peer).is_some_and(|k| {
                                interest::wants(&k.info.subscriptions, &t)
                                    && !k.info.capabilities.contains(Capabilities::RELAY)
                            })
                            && !self.cooling(c.peer, &t, now)
                    })
                    .map(|(&id, c)| {
                        let srtt = if c.rtt.samples == 0 {
                            Duration::MAX
                        } else {
                            c.rtt.srtt
                        };
                        (srtt, id, c.peer)
                    })
                    .collect();
                extras.sort();
                for (_, conn, _) in extras {
                    if used >= self.config.max_connections {
                        break;
                    }
                    requests.entry(conn).or_default().push(t.clone());
                    used += 1;
                }
            }
            // Prune: never more than max_connections links; drop the slowest non-backbone ones.
            while self.degree(&t) > self.config.max_connections {
                let before = self.degree(&t);
                self.evict_extra(&t, &desired);
                if self.degree(&t) == before {
                    break;
                }
            }
            let paired = self.degree(&t);
            if paired > 0 {
                if let Some(state) = self.topics.get_mut(&t) {
                    state.isolated_reported = false;
                    state.search_delay = self.config.search_initial;
                    state.next_search = None;
                }
            } else if desired.is_empty() {
                let state = self.topics.get_mut(&t).expect("topic");
                if state.next_search.is_none() {
                    let at = now + state.search_delay;
                    state.next_search = Some(at);
                    self.arm_search(at);
                }
            }
        }
        for (conn, topics) in requests {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.pending.extend(topics.iter().cloned());
            }
            let request_id = self.rng.next_u64();
            self.send(conn, Frame::PairRequest(PairRequest { request_id, topics }));
        }
        // Handling may have changed something again (evictions): converge within this call.
        if self.dirty {
            self.dirty = false;
        }
    }

    fn rebuild_routes(&mut self) {
        if !self.route_dirty {
            return;
        }
        self.route_dirty = false;
        for list in self.route_index.values_mut() {
            list.clear();
        }
        self.relay_conns.clear();
        let mut ids: Vec<ConnId> = self.conns.keys().copied().collect();
        ids.sort();
        for id in ids {
            let c = &self.conns[&id];
            let Some(k) = self.known.get(&c.peer) else {
                continue;
            };
            if k.info.capabilities.contains(Capabilities::RELAY) {
                self.relay_conns.push(id);
            }
            for t in k.info.subscriptions.iter().chain(c.paired.iter()) {
                let list = self.route_index.entry(t.clone()).or_default();
                if list.last() != Some(&id) {
                    list.push(id);
                }
            }
        }
        self.route_index.retain(|_, l| !l.is_empty());
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
