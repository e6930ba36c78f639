//! A deterministic network simulator for [`chaski_membership::Membership`] state machines.
//!
//! [`Sim`] runs N state machines on a virtual clock. It plays the part of the node driver and of
//! the network: it executes each machine's actions (dials, frames, closes, datagrams), delivers
//! them after the link's latency, and wakes each machine at its `poll_timeout`. Everything is
//! deterministic from [`SimConfig::seed`]: the same seed and the same calls give the same run.
//!
//! The network model:
//!
//! * **Connections** behave as TCP: reliable and in order. A frame takes the link's one-way
//!   latency, fixed per pair of nodes and drawn from `[min_latency, max_latency]`. With
//!   [`SimConfig::link_loss`], a frame is lost with that probability and retransmitted after
//!   [`SimConfig::retransmit_delay`], and the frames behind it wait (head-of-line blocking, as
//!   TCP). A dial completes after one round trip (the acceptor sees the connection after one
//!   way).
//! * **Datagrams** (beacons) reach every live node on the same LAN segment, each lost with
//!   probability [`SimConfig::datagram_loss`].
//! * **Partitions** ([`Sim::partition`]) put nodes in groups. Datagrams between groups vanish;
//!   frames on a connection that crosses the partition are held (TCP keeps retransmitting them)
//!   and delivered in order when the partition heals, if neither end has closed the connection
//!   meanwhile (a peer silent for `peer_timeout` usually has). Dials across groups fail after
//!   [`SimConfig::connect_timeout`]. [`Sim::heal`] joins everything again.
//! * **The transport's table** is modelled as the real endpoint keeps it: one connection per
//!   peer node, and of two connections between the same nodes the one with the smaller
//!   *(dialer id, dial sequence)* survives. A dial that loses at the dialer fails with
//!   [`DialError::Duplicate`]; one that loses at the acceptor reaches the dialer as a connection
//!   closed at once with `Goodbye(Duplicate)`. An entry leaves the table when its machine closes
//!   the connection or the connection's end reaches it: a goodbye lost in a partition leaves the
//!   peer's entry in place until that peer's own timeout, as on a real network.
//! * **Crashes** ([`Sim::crash`]) silence a node: its connections go quiet, dials to its address
//!   are refused after a round trip. [`Sim::restart`] starts a fresh machine (with a fresh node
//!   id) at the same address.
//!
//! Runs end at a virtual deadline ([`Sim::run_until`]) or once the network is quiet
//! ([`Sim::run_until_quiet`]): no connection opened or closed, no dial, and no pairing changed
//! for a given span of virtual time (pings and periodic exchanges continue).

use std::{
    cmp::Reverse,
    collections::{BTreeSet, BinaryHeap, HashMap, VecDeque},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use bytes::Bytes;
use chaski_membership::{
    Action, Config, ConnId, DatagramTarget, DialError, Disconnect, Event, Instant, LostCause,
    Membership,
};
use chaski_wire::{Frame, GoodbyeReason, Hello, Message, NodeId, Topic};

/// The simulator's settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of every random choice (latencies, losses, node ids). Default: 1.
    pub seed: u64,
    /// Smallest one-way link latency. Default: 1 ms.
    pub min_latency: Duration,
    /// Largest one-way link latency. Default: 20 ms.
    pub max_latency: Duration,
    /// Probability that a datagram is lost. Default: 0.
    pub datagram_loss: f64,
    /// Probability that a frame on a connection is lost once (then retransmitted). Default: 0.
    pub link_loss: f64,
    /// Extra delay of a frame lost once on a connection. Default: 200 ms.
    pub retransmit_delay: Duration,
    /// How long a dial into a partition takes to fail. Default: 1 s.
    pub connect_timeout: Duration,
    /// Keep every event of every node (except latency updates) for [`Sim::events`]. Default:
    /// true; benchmarks turn it off.
    pub record_events: bool,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            seed: 1,
            min_latency: Duration::from_millis(1),
            max_latency: Duration::from_millis(20),
            datagram_loss: 0.0,
            link_loss: 0.0,
            retransmit_delay: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(1),
            record_events: true,
        }
    }
}

/// A message delivered to a node's application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The receiving node (simulator index).
    pub node: usize,
    /// The topic.
    pub topic: Topic,
    /// The publisher.
    pub publisher: NodeId,
    /// The publisher's sequence number on the topic.
    pub sequence: u64,
    /// When it was delivered.
    pub at: Instant,
    /// Links the delivered copy crossed (0: the publisher's own delivery).
    pub hops: u32,
}

/// A dial, as seen by the network, for [`Sim::dials`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialRecord {
    /// The dialing node.
    pub from: usize,
    /// The address dialed.
    pub addr: SocketAddr,
    /// When the dial started.
    pub at: Instant,
    /// When it failed, if it did.
    pub failed_at: Option<Instant>,
}

/// Frames the network carried, for benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Control frames (everything but messages) sent on connections.
    pub control_frames: u64,
    /// Of which discovery frames: searches, search replies and peer exchanges.
    pub discovery_frames: u64,
    /// Datagrams sent (beacons).
    pub datagrams: u64,
    /// Message frames sent.
    pub messages: u64,
    /// Message frames received by nodes (copies included; the basis of message redundancy).
    pub messages_received: u64,
    /// Dials.
    pub dials: u64,
}

struct Node {
    machine: Option<Membership>,
    addr: SocketAddr,
    lan: u32,
    group: u32,
    incarnation: u64,
    wake_at: Option<Instant>,
    /// The transport's table: the connection kept for each peer node, with its dialer key.
    table: HashMap<NodeId, (ConnId, (NodeId, u64))>,
    events: Vec<(Instant, Event)>,
    /// When each peer (by connection) was last heard from: conn -> time.
    last_rx: HashMap<ConnId, Instant>,
}

struct SimConn {
    ends: [(usize, u64); 2],
    open: [bool; 2],
    /// Arrival time of the last frame sent from each end (keeps each direction in order).
    last_arrival: [Instant; 2],
    /// (dialer id, dial sequence): the smaller survives a duplicate tie-break.
    key: (NodeId, u64),
    /// The acceptor's transport refused it as a duplicate: the dialer sees it close at once.
    refused: bool,
}

enum Ev {
    Wake,
    Connected {
        conn: ConnId,
        hello: Box<Hello>,
        outbound: bool,
        remote: SocketAddr,
    },
    DialFailed {
        addr: SocketAddr,
        record: usize,
        error: DialError,
    },
    Frame {
        conn: ConnId,
        frame: Frame,
    },
    Disconnected {
        conn: ConnId,
        how: Disconnect,
    },
    Datagram {
        from: SocketAddr,
        frame: Frame,
    },
}

/// The simulator: N state machines, a virtual clock and a network.
pub struct Sim {
    config: SimConfig,
    now: Instant,
    rng: u64,
    nodes: Vec<Node>,
    by_addr: HashMap<SocketAddr, usize>,
    conns: HashMap<ConnId, SimConn>,
    next_conn: u64,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    pending: HashMap<u64, (usize, u64, Ev)>,
    seq: u64,
    last_change: Instant,
    deliveries: Vec<Delivery>,
    dials: Vec<DialRecord>,
    traffic: Traffic,
    actions: VecDeque<Action>,
    /// Frames waiting for a partition to heal: (sender, connection, frame), in send order.
    held: Vec<(usize, ConnId, Frame)>,
    /// Connections a transport replaced by a newer one, to close after the current step.
    transport_closes: Vec<(usize, ConnId)>,
    /// Each node's publication counter per topic, as a driver keeps (kept across restarts).
    sequences: HashMap<(usize, Topic), u64>,
}

impl Sim {
    /// An empty network at virtual time zero.
    pub fn new(config: SimConfig) -> Sim {
        Sim {
            rng: config.seed ^ 0x5eed_5eed_5eed_5eed,
            config,
            now: Instant::ZERO,
            nodes: Vec::new(),
            by_addr: HashMap::new(),
            conns: HashMap::new(),
            next_conn: 1,
            queue: BinaryHeap::new(),
            pending: HashMap::new(),
            seq: 0,
            last_change: Instant::ZERO,
            deliveries: Vec::new(),
            dials: Vec::new(),
            traffic: Traffic::default(),
            actions: VecDeque::new(),
            held: Vec::new(),
            transport_closes: Vec::new(),
            sequences: HashMap::new(),
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The address of node `index`: `127.a.b.c:7447`, distinct per index.
    pub fn addr_of(index: usize) -> SocketAddr {
        let n = index as u32 + 1;
        SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::new(127, (n >> 16) as u8, (n >> 8) as u8, n as u8),
            7447,
        ))
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Adds a node, started now, on LAN segment 0. `make` builds its configuration from the
    /// fresh node id and its address. Returns the node's index.
    pub fn add_node(&mut self, make: impl FnOnce(NodeId, SocketAddr) -> Config) -> usize {
        self.add_node_on_lan(0, make)
    }

    /// Adds a node on LAN segment `lan` (beacons reach only the same segment).
    pub fn add_node_on_lan(
        &mut self,
        lan: u32,
        make: impl FnOnce(NodeId, SocketAddr) -> Config,
    ) -> usize {
        let index = self.nodes.len();
        let addr = Sim::addr_of(index);
        self.by_addr.insert(addr, index);
        self.nodes.push(Node {
            machine: None,
            addr,
            lan,
            group: 0,
            incarnation: 0,
            wake_at: None,
            table: HashMap::new(),
            events: Vec::new(),
            last_rx: HashMap::new(),
        });
        self.start(index, make);
        index
    }

    fn start(&mut self, index: usize, make: impl FnOnce(NodeId, SocketAddr) -> Config) {
        let id =
            NodeId::from_u128((u128::from(self.next_u64()) << 64) | u128::from(self.next_u64()));
        let config = make(id, self.nodes[index].addr);
        let node = &mut self.nodes[index];
        node.incarnation += 1;
        node.machine = Some(Membership::new(config, self.now));
        node.wake_at = None;
        node.last_rx.clear();
        node.table.clear();
        self.last_change = self.now;
        let inc = node.incarnation;
        self.schedule_at(self.now, index, inc, Ev::Wake);
        self.nodes[index].wake_at = Some(self.now);
    }

    /// Crashes node `index`: it stops at once, without a goodbye.
    pub fn crash(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        node.machine = None;
        node.incarnation += 1;
        node.wake_at = None;
        node.table.clear();
        self.last_change = self.now;
    }

    /// Restarts node `index` (crashed or not) as a fresh machine with a fresh node id.
    pub fn restart(&mut self, index: usize, make: impl FnOnce(NodeId, SocketAddr) -> Config) {
        self.crash(index);
        self.start(index, make);
    }

    /// Shuts node `index` down gracefully: goodbyes to every peer, then it stops.
    pub fn shutdown(&mut self, index: usize) {
        let now = self.now;
        if let Some(m) = self.nodes[index].machine.as_mut() {
            m.shutdown(now);
        }
        self.drain(index);
        self.crash(index);
    }

    /// Splits the network: each listed group can only reach itself; unlisted nodes form one more
    /// group.
    pub fn partition(&mut self, groups: &[&[usize]]) {
        for node in &mut self.nodes {
            node.group = 0;
        }
        for (g, members) in groups.iter().enumerate() {
            for &i in *members {
                self.nodes[i].group = g as u32 + 1;
            }
        }
        self.last_change = self.now;
        self.release_held();
    }

    /// Ends every partition.
    pub fn heal(&mut self) {
        for node in &mut self.nodes {
            node.group = 0;
        }
        self.last_change = self.now;
        self.release_held();
    }

    /// Delivers the held frames whose connection no longer crosses a partition.
    fn release_held(&mut self) {
        let held = std::mem::take(&mut self.held);
        for (from, conn, frame) in held {
            self.send_frame(from, conn, frame);
        }
    }

    /// The machine of node `index`, if it runs.
    pub fn node(&self, index: usize) -> Option<&Membership> {
        self.nodes[index].machine.as_ref()
    }

    /// Calls `f` on the running machine of node `index` (a command such as `subscribe`), then
    /// executes what it asked for.
    pub fn with_node<R>(
        &mut self,
        index: usize,
        f: impl FnOnce(&mut Membership, Instant) -> R,
    ) -> Option<R> {
        let now = self.now;
        let r = f(self.nodes[index].machine.as_mut()?, now);
        // A command is a change: a quiet period starts again from here.
        self.last_change = now;
        self.drain(index);
        Some(r)
    }

    /// The number of nodes ever added (crashed ones included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node was added.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The events node `index` reported, with their time (latency updates are not kept).
    pub fn events(&self, index: usize) -> &[(Instant, Event)] {
        &self.nodes[index].events
    }

    /// When node `index` last received anything on `conn`.
    pub fn last_heard(&self, index: usize, conn: ConnId) -> Option<Instant> {
        self.nodes[index].last_rx.get(&conn).copied()
    }

    /// Messages delivered to applications so far.
    pub fn deliveries(&self) -> &[Delivery] {
        &self.deliveries
    }

    /// Every dial so far.
    pub fn dials(&self) -> &[DialRecord] {
        &self.dials
    }

    /// Frames carried so far.
    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// When the network last changed (connection, dial, pairing, crash, partition).
    pub fn last_change(&self) -> Instant {
        self.last_change
    }

    /// Publishes `payload` on `topic` from node `index`, as a driver would: local delivery if
    /// subscribed, and one copy of the message on each connection the machine names.
    pub fn publish(&mut self, index: usize, topic: &Topic, payload: Bytes) {
        let now = self.now;
        let Some(m) = self.nodes[index].machine.as_mut() else {
            return;
        };
        let publisher = m.node_id();
        let p = m.publish(topic);
        let sequence = self.sequences.entry((index, topic.clone())).or_default();
        *sequence += 1;
        let msg = Message {
            topic: topic.clone(),
            payload,
            publisher,
            sequence: *sequence,
            incarnation: 0,
            timestamp_micros: now.as_micros(),
            hop_limit: p.hop_limit,
            hops: 0,
            headers: Vec::new(),
        };
        let forward: Vec<ConnId> = p.forward.to_vec();
        let deliver = p.deliver;
        m.published(now, &msg);
        if deliver {
            self.deliveries.push(Delivery {
                node: index,
                topic: topic.clone(),
                publisher,
                sequence: msg.sequence,
                at: now,
                hops: 0,
            });
        }
        for conn in forward {
            self.traffic.messages += 1;
            self.send_frame(index, conn, Frame::Publish(msg.clone()));
        }
        self.drain(index);
    }

    /// Runs until virtual time `deadline` (inclusive).
    pub fn run_until(&mut self, deadline: Instant) {
        while let Some(&Reverse((at, _))) = self.queue.peek() {
            if at > deadline {
                break;
            }
            self.step();
        }
        self.now = self.now.max(deadline);
    }

    /// Runs for `span` of virtual time.
    pub fn run_for(&mut self, span: Duration) {
        self.run_until(self.now + span);
    }

    /// Runs until nothing structural happened for `quiet` (see the module docs), or until
    /// `deadline`. Returns the time of the last change if the network became quiet, `None` at
    /// the deadline.
    pub fn run_until_quiet(&mut self, quiet: Duration, deadline: Instant) -> Option<Instant> {
        loop {
            let next = self.queue.peek().map(|Reverse((at, _))| *at);
            let quiet_at = self.last_change + quiet;
            match next {
                Some(at) if at <= deadline => {
                    if at > quiet_at && quiet_at <= deadline {
                        self.now = quiet_at;
                        return Some(self.last_change);
                    }
                    self.step();
                }
                _ => {
                    if quiet_at <= deadline {
                        self.now = self.now.max(quiet_at);
                        return Some(self.last_change);
                    }
                    self.now = deadline;
                    return None;
                }
            }
        }
    }

    fn schedule_at(&mut self, at: Instant, node: usize, inc: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.pending.insert(self.seq, (node, inc, ev));
    }

    /// The one-way latency between nodes `a` and `b` (fixed per pair).
    pub fn latency(&self, a: usize, b: usize) -> Duration {
        let (lo, hi) = (a.min(b) as u64, a.max(b) as u64);
        let mut z = self.config.seed ^ lo.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ hi.rotate_left(32);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let min = self.config.min_latency.as_micros() as u64;
        let max = self.config.max_latency.as_micros() as u64;
        let span = max.saturating_sub(min) + 1;
        Duration::from_micros(min + z % span)
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        self.nodes[a].group == self.nodes[b].group
    }

    fn step(&mut self) {
        let Some(Reverse((at, seq))) = self.queue.pop() else {
            return;
        };
        self.now = at;
        let Some((index, inc, ev)) = self.pending.remove(&seq) else {
            return;
        };
        let node = &mut self.nodes[index];
        if node.incarnation != inc {
            return;
        }
        let now = self.now;
        let Some(m) = node.machine.as_mut() else {
            return;
        };
        match ev {
            Ev::Wake => {
                if node.wake_at != Some(at) {
                    return;
                }
                node.wake_at = None;
                m.handle_timeout(now);
            }
            Ev::Connected {
                conn,
                hello,
                outbound,
                remote,
            } => {
                let peer = hello.node_id;
                let Some(c) = self.conns.get(&conn) else {
                    return;
                };
                let (key, refused) = (c.key, c.refused);
                match node.table.get(&peer).copied() {
                    Some((old, old_key)) if old != conn && old_key <= key => {
                        // This end's transport keeps the older connection.
                        if outbound {
                            m.handle_dial_failed(now, remote, DialError::Duplicate { peer });
                        } else if let Some(c) = self.conns.get_mut(&conn) {
                            c.refused = true;
                            for (end, open) in c.ends.iter().zip(c.open.iter_mut()) {
                                if end.0 == index {
                                    *open = false;
                                }
                            }
                        }
                        self.drain(index);
                        return;
                    }
                    Some((old, _)) if old != conn => {
                        // The new connection wins: the transport closes the old one.
                        node.table.insert(peer, (conn, key));
                        self.transport_closes.push((index, old));
                    }
                    _ => {
                        node.table.insert(peer, (conn, key));
                    }
                }
                node.last_rx.insert(conn, now);
                m.handle_connected(now, conn, &hello, outbound, Some(remote));
                if outbound && refused {
                    // The acceptor said goodbye right after its hello.
                    node.table.remove(&peer);
                    m.handle_disconnected(now, conn, Disconnect::Goodbye(GoodbyeReason::Duplicate));
                }
            }
            Ev::DialFailed {
                addr,
                record,
                error,
            } => {
                self.dials[record].failed_at = Some(now);
                m.handle_dial_failed(now, addr, error);
            }
            Ev::Frame { conn, frame } => {
                node.last_rx.insert(conn, now);
                if let Frame::Publish(msg) = frame {
                    self.traffic.messages_received += 1;
                    let route = m.route(now, Some(conn), &msg);
                    let deliver = route.deliver && route.in_order;
                    let forward: Vec<ConnId> = route.forward.to_vec();
                    let hop_limit = route.hop_limit;
                    if deliver {
                        self.deliveries.push(Delivery {
                            node: index,
                            topic: msg.topic.clone(),
                            publisher: msg.publisher,
                            sequence: msg.sequence,
                            at: now,
                            hops: msg.hops.saturating_add(1),
                        });
                    }
                    if !forward.is_empty() {
                        let fwd = Message {
                            hop_limit,
                            hops: msg.hops + 1,
                            ..msg
                        };
                        for c in forward {
                            self.traffic.messages += 1;
                            self.send_frame(index, c, Frame::Publish(fwd.clone()));
                        }
                    }
                } else {
                    m.handle_frame(now, conn, frame);
                }
            }
            Ev::Disconnected { conn, how } => {
                node.table.retain(|_, (c, _)| *c != conn);
                if let Some(c) = self.conns.get_mut(&conn) {
                    for (end, open) in c.ends.iter().zip(c.open.iter_mut()) {
                        if end.0 == index {
                            *open = false;
                        }
                    }
                }
                m.handle_disconnected(now, conn, how);
            }
            Ev::Datagram { from, frame } => m.handle_datagram(now, from, frame),
        }
        self.drain(index);
        for (node, conn) in std::mem::take(&mut self.transport_closes) {
            self.close(node, conn, GoodbyeReason::Duplicate);
            let inc = self.nodes[node].incarnation;
            self.schedule_at(
                self.now,
                node,
                inc,
                Ev::Disconnected {
                    conn,
                    how: Disconnect::Goodbye(GoodbyeReason::Duplicate),
                },
            );
        }
    }

    /// Executes the actions of node `index` and reschedules its wake-up.
    fn drain(&mut self, index: usize) {
        let now = self.now;
        let record = self.config.record_events;
        {
            let node = &mut self.nodes[index];
            let Some(m) = node.machine.as_mut() else {
                return;
            };
            while let Some(a) = m.poll_action() {
                self.actions.push_back(a);
            }
        }
        while let Some(action) = self.actions.pop_front() {
            match action {
                Action::Send { conn, frame } => {
                    if matches!(frame, Frame::Publish(_)) {
                        self.traffic.messages += 1;
                        self.send_frame(index, conn, frame);
                        continue;
                    }
                    self.traffic.control_frames += 1;
                    if matches!(
                        frame,
                        Frame::Search(_) | Frame::SearchReply(_) | Frame::PeerExchange(_)
                    ) {
                        self.traffic.discovery_frames += 1;
                    }
                    self.send_frame(index, conn, frame);
                }
                Action::Dial {
                    addr,
                    peer,
                    confirm,
                } => self.dial(index, addr, peer.filter(|_| confirm)),
                Action::Close { conn, reason } => self.close(index, conn, reason),
                Action::Deliver(msg) => self.deliveries.push(Delivery {
                    node: index,
                    topic: msg.topic.clone(),
                    publisher: msg.publisher,
                    sequence: msg.sequence,
                    at: now,
                    hops: msg.hops.saturating_add(1),
                }),
                Action::SendDatagram { to, frame } => {
                    self.traffic.datagrams += 1;
                    self.datagram(index, to, frame);
                }
                Action::Event(event) => {
                    if matches!(
                        event,
                        Event::PeerUp { .. }
                            | Event::PeerDown { .. }
                            | Event::Paired { .. }
                            | Event::Unpaired { .. }
                    ) {
                        self.last_change = now;
                    }
                    if record && !matches!(event, Event::LatencyUpdated { .. }) {
                        self.nodes[index].events.push((now, event));
                    }
                }
                _ => {}
            }
        }
        let node = &mut self.nodes[index];
        let Some(m) = node.machine.as_ref() else {
            return;
        };
        if let Some(t) = m.poll_timeout() {
            let t = t.max(now);
            if node.wake_at.is_none_or(|w| t < w || w < now) {
                node.wake_at = Some(t);
                let inc = node.incarnation;
                self.schedule_at(t, index, inc, Ev::Wake);
            }
        }
    }

    fn other_end(&self, index: usize, conn: ConnId) -> Option<(usize, u64)> {
        let c = self.conns.get(&conn)?;
        let me = c.ends.iter().position(|e| e.0 == index)?;
        if !c.open[me] || c.ends[me].1 != self.nodes[index].incarnation {
            return None;
        }
        let other = c.ends[1 - me];
        Some(other)
    }

    fn send_frame(&mut self, index: usize, conn: ConnId, frame: Frame) {
        let Some((peer, inc)) = self.other_end(index, conn) else {
            return;
        };
        if self.nodes[peer].incarnation != inc {
            return;
        }
        if !self.reachable(index, peer) {
            self.held.push((index, conn, frame));
            return;
        }
        let mut at = self.now + self.latency(index, peer);
        if self.config.link_loss > 0.0 {
            let r = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            if r < self.config.link_loss {
                at = at + self.config.retransmit_delay;
            }
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            let side = usize::from(c.ends[0].0 != index);
            at = at.max(c.last_arrival[side]);
            c.last_arrival[side] = at;
        }
        self.schedule_at(at, peer, inc, Ev::Frame { conn, frame });
    }

    /// Node `index` dials `addr`; with `expect`, as a driver does for a learned address: the
    /// node there must be `expect`, else the dial fails with `WrongPeer` after a round trip.
    fn dial(&mut self, index: usize, addr: SocketAddr, expect: Option<NodeId>) {
        self.traffic.dials += 1;
        self.last_change = self.now;
        let record = self.dials.len();
        self.dials.push(DialRecord {
            from: index,
            addr,
            at: self.now,
            failed_at: None,
        });
        let my_inc = self.nodes[index].incarnation;
        let target = self.by_addr.get(&addr).copied();
        let Some(peer) = target.filter(|&p| self.nodes[p].machine.is_some() && p != index) else {
            // Nobody listens there: refused after a round trip (a fixed 2 ms if unknown).
            let rtt = target.map_or(Duration::from_millis(2), |p| self.latency(index, p) * 2);
            let error = DialError::Unreachable;
            let failed = Ev::DialFailed {
                addr,
                record,
                error,
            };
            self.schedule_at(self.now + rtt, index, my_inc, failed);
            return;
        };
        if !self.reachable(index, peer) {
            let at = self.now + self.config.connect_timeout;
            let error = DialError::Unreachable;
            let failed = Ev::DialFailed {
                addr,
                record,
                error,
            };
            self.schedule_at(at, index, my_inc, failed);
            return;
        }
        let lat = self.latency(index, peer);
        let found = self.nodes[peer].machine.as_ref().map(Membership::node_id);
        if let (Some(expected), Some(found)) = (expect, found) {
            if expected != found {
                let error = DialError::WrongPeer { found };
                let failed = Ev::DialFailed {
                    addr,
                    record,
                    error,
                };
                self.schedule_at(self.now + lat * 2, index, my_inc, failed);
                return;
            }
        }
        let my_id = self.nodes[index]
            .machine
            .as_ref()
            .map(Membership::node_id)
            .expect("running");
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let peer_inc = self.nodes[peer].incarnation;
        self.conns.insert(
            conn,
            SimConn {
                ends: [(index, my_inc), (peer, peer_inc)],
                open: [true, true],
                last_arrival: [Instant::ZERO; 2],
                key: (my_id, record as u64),
                refused: false,
            },
        );
        let my_hello = self.nodes[index]
            .machine
            .as_ref()
            .map(|m| m.local_hello())
            .expect("running");
        let peer_hello = self.nodes[peer]
            .machine
            .as_ref()
            .map(|m| m.local_hello())
            .expect("running");
        let my_addr = self.nodes[index].addr;
        self.schedule_at(
            self.now + lat,
            peer,
            peer_inc,
            Ev::Connected {
                conn,
                hello: Box::new(my_hello),
                outbound: false,
                remote: my_addr,
            },
        );
        self.schedule_at(
            self.now + lat * 2,
            index,
            my_inc,
            Ev::Connected {
                conn,
                hello: Box::new(peer_hello),
                outbound: true,
                remote: addr,
            },
        );
    }

    fn close(&mut self, index: usize, conn: ConnId, reason: GoodbyeReason) {
        // The fixed driver removes a closed connection from its endpoint's table at once.
        self.nodes[index].table.retain(|_, (c, _)| *c != conn);
        let Some((peer, inc)) = self.other_end(index, conn) else {
            return;
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.open = [false, false];
        }
        if self.nodes[peer].incarnation == inc && self.reachable(index, peer) {
            let at = self.now + self.latency(index, peer);
            self.schedule_at(
                at,
                peer,
                inc,
                Ev::Disconnected {
                    conn,
                    how: Disconnect::Goodbye(reason),
                },
            );
        }
    }

    fn datagram(&mut self, index: usize, to: DatagramTarget, frame: Frame) {
        let from = self.nodes[index].addr;
        let targets: Vec<usize> = match to {
            DatagramTarget::Unicast(addr) => self.by_addr.get(&addr).copied().into_iter().collect(),
            _ => (0..self.nodes.len())
                .filter(|&i| i != index && self.nodes[i].lan == self.nodes[index].lan)
                .collect(),
        };
        for t in targets {
            if self.nodes[t].machine.is_none() || !self.reachable(index, t) {
                continue;
            }
            if self.config.datagram_loss > 0.0 {
                let r = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                if r < self.config.datagram_loss {
                    continue;
                }
            }
            let at = self.now + self.latency(index, t);
            let inc = self.nodes[t].incarnation;
            self.schedule_at(
                at,
                t,
                inc,
                Ev::Datagram {
                    from,
                    frame: frame.clone(),
                },
            );
        }
    }

    /// Sends `frame` on `conn` as if node `from` had sent it (for hostile-node tests: any
    /// well-formed frame, whatever `from`'s machine would say). Delivered like any frame.
    pub fn inject(&mut self, from: usize, conn: ConnId, frame: Frame) {
        self.send_frame(from, conn, frame);
    }

    /// The connections node `index` has now, by peer.
    pub fn connections_of(&self, index: usize) -> Vec<ConnId> {
        let Some(m) = self.node(index) else {
            return Vec::new();
        };
        m.connected_peers()
            .into_iter()
            .filter_map(|p| m.connection_to(p))
            .collect()
    }

    /// Lost connections the transport would report: for tests that want a reset rather than a
    /// silence, closes `conn` at both ends with [`LostCause::Reset`].
    pub fn reset(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let ends = c.ends;
        c.open = [false, false];
        for (node, inc) in ends {
            self.schedule_at(
                self.now,
                node,
                inc,
                Ev::Disconnected {
                    conn,
                    how: Disconnect::Lost(LostCause::Reset),
                },
            );
        }
    }

    // ----- Checks ---------------------------------------------------------------------------

    /// The running nodes subscribed to `topic`.
    pub fn subscribers(&self, topic: &Topic) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.node(i).is_some_and(|m| m.wants(topic)))
            .collect()
    }

    /// The connected components of `topic`'s graph: running subscribers linked by pairing links
    /// that both ends agree on. Each component is a sorted list of node indexes.
    pub fn topic_components(&self, topic: &Topic) -> Vec<Vec<usize>> {
        let subs = self.subscribers(topic);
        let index_of: HashMap<NodeId, usize> = subs
            .iter()
            .map(|&i| (self.node(i).expect("running").node_id(), i))
            .collect();
        let mut seen = BTreeSet::new();
        let mut components = Vec::new();
        for &start in &subs {
            if !seen.insert(start) {
                continue;
            }
            let mut component = vec![start];
            let mut stack = vec![start];
            while let Some(i) = stack.pop() {
                let m = self.node(i).expect("running");
                for peer in m.paired_peers(topic) {
                    let Some(&j) = index_of.get(&peer) else {
                        continue;
                    };
                    let mutual = self
                        .node(j)
                        .is_some_and(|o| o.paired_peers(topic).contains(&m.node_id()));
                    if mutual && seen.insert(j) {
                        component.push(j);
                        stack.push(j);
                    }
                }
            }
            component.sort_unstable();
            components.push(component);
        }
        components
    }

    /// Every topic some running node subscribes to.
    pub fn topics(&self) -> BTreeSet<Topic> {
        self.nodes
            .iter()
            .filter_map(|n| n.machine.as_ref())
            .flat_map(|m| m.subscriptions().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Checks the invariants that hold at every moment: no connection to oneself, at most one
    /// connection per pair of nodes, every table within its configured bound, at most
    /// `max_connections` pairing links per topic, pairing links agreed on by both ends (checked
    /// only when `quiet`), and no message delivered twice to a node.
    pub fn check_invariants(&self, quiet: bool) -> Result<(), String> {
        let ids: HashMap<NodeId, usize> = (0..self.nodes.len())
            .filter_map(|i| self.node(i).map(|m| (m.node_id(), i)))
            .collect();
        for i in 0..self.nodes.len() {
            let Some(m) = self.node(i) else { continue };
            let c = m.config();
            let peers = m.connected_peers();
            if peers.contains(&m.node_id()) {
                return Err(format!("node {i} is connected to itself"));
            }
            let unique: BTreeSet<_> = peers.iter().collect();
            if unique.len() != peers.len() {
                return Err(format!("node {i} has two connections to one peer"));
            }
            if m.connection_count() > c.max_peers() {
                return Err(format!("node {i} has {} connections", m.connection_count()));
            }
            if m.known_count() > c.max_known_peers() {
                return Err(format!("node {i} knows {} peers", m.known_count()));
            }
            for t in m.subscriptions() {
                let paired = m.paired_peers(t);
                if paired.len() > c.max_connections() {
                    return Err(format!("node {i} has {} links on {t}", paired.len()));
                }
                if quiet {
                    for p in paired {
                        let Some(&j) = ids.get(&p) else {
                            return Err(format!("node {i} is paired on {t} with a dead peer"));
                        };
                        let back = self.node(j).expect("running").paired_peers(t);
                        if !back.contains(&m.node_id()) {
                            return Err(format!("link {i}-{j} on {t} is one-sided"));
                        }
                    }
                }
            }
        }
        let mut seen = BTreeSet::new();
        for d in &self.deliveries {
            if !seen.insert((d.node, d.publisher, d.topic.clone(), d.sequence)) {
                return Err(format!(
                    "node {} got message {} of {} on {} twice",
                    d.node, d.sequence, d.publisher, d.topic
                ));
            }
        }
        Ok(())
    }

    /// Checks that every topic's graph is one connected component.
    pub fn check_topics_connected(&self) -> Result<(), String> {
        for t in self.topics() {
            let components = self.topic_components(&t);
            if components.len() > 1 {
                let sizes: Vec<usize> = components.iter().map(Vec::len).collect();
                return Err(format!(
                    "topic {t} is split into components of sizes {sizes:?}"
                ));
            }
        }
        Ok(())
    }
}
