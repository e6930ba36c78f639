//! The driver: one task per node that owns the membership state machine and joins it to the
//! transport, the timers, the LAN socket, the streams and the handles' commands (the role of
//! quinn's connection driver).
//!
//! # The loop
//!
//! Each turn: run the membership timer if due (so timers run even under a flood of traffic),
//! carry out every pending membership action, then wait for the first of: transport events (a
//! batch of frames per read call), the handles' commands (in batches), datagrams, LAN beacons,
//! finished dials, room on a blocked stream or send queue, or the next timer.
//!
//! # Never blocking on the network
//!
//! The driver never waits on a peer while it could be reading from others, which would deadlock
//! two nodes that both send faster than the other reads. Frames it originates (control frames,
//! forwarded messages) are queued with `try_send`; a full queue drops the frame, counts it and
//! reports [`NodeEvent::SendDropped`]. The node's own publications are different: a publication
//! whose send queue is full is kept aside and the driver stops taking commands until it is
//! queued, so `publish` waits (backpressure) and nothing is lost, while incoming traffic keeps
//! flowing. Likewise a message for a full [`Overflow::Block`](crate::Overflow::Block) stream is
//! kept aside and the driver stops reading from the network until the application makes room.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    pin::Pin,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use chaski_membership::{
    Action, ConnId, DatagramTarget, DialError, Disconnect, Event as MembershipEvent,
    LostCause as MLostCause, Membership, PingError, PingId,
};
use chaski_transport::{
    CloseReason, Connection, DatagramSocket, EncodedFrame, Endpoint, Event as TransportEvent,
    Events, LostCause, SendError,
};
use chaski_wire::{Frame, GoodbyeReason, Header, Message, NodeId, Topic};
use tokio::{
    sync::{broadcast, mpsc, oneshot, watch},
    task::JoinSet,
    time::Instant,
};
use tracing::{debug, info, trace, warn};

use crate::{
    Delivery, Error, NodeBuilder, NodeEvent, Received,
    node::{Counters, Inner, Node, Peer, Routes, StreamRegistry, TopicRoute},
    stream::{Offer, Shared},
};

/// Commands from the handles to the driver.
pub(crate) enum Command {
    Publish {
        topic: Topic,
        payload: Bytes,
        headers: Vec<Header>,
        delivery: Delivery,
    },
    /// Route this topic in the routing snapshot from now on; `false` if the table is full.
    Route {
        topic: Topic,
        reply: oneshot::Sender<bool>,
    },
    Flush {
        reply: oneshot::Sender<()>,
    },
    Subscribe {
        topic: Topic,
        reply: oneshot::Sender<bool>,
    },
    Unsubscribe {
        topic: Topic,
        reply: oneshot::Sender<bool>,
    },
    Connect {
        addr: SocketAddr,
        reply: oneshot::Sender<Result<NodeId, Error>>,
    },
    Ping {
        peer: NodeId,
        size: u32,
        reply: oneshot::Sender<Result<Duration, Error>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Transport events taken per turn.
const EVENT_BATCH: usize = 64;
/// Commands taken per turn.
const COMMAND_BATCH: usize = 256;
/// Pending on-demand pings and connects, each; more are refused with `Error::Busy`.
const MAX_PENDING_REQUESTS: usize = 1024;
/// Drop reports are sent at most this often per stream or peer.
const REPORT_INTERVAL: Duration = Duration::from_millis(100);
/// Topics this node publishes on without subscribing, kept in the routing snapshot; beyond this,
/// the oldest is forgotten (its publications then go through the driver once more).
const MAX_PUBLISHED_TOPICS: usize = 4096;
/// How often the routing snapshot is rebuilt even when nothing signalled a change.
const ROUTES_REFRESH: Duration = Duration::from_secs(1);
/// How often this node's own publications are handed to the membership (cache, announcements)
/// at most, besides when a topic's queue is half full.
const OWN_DRAIN: Duration = Duration::from_millis(25);
/// How long a graceful close may wait for room in the peer's send queue before it is aborted.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long shutdown waits for goodbyes to be flushed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Which of a node's streams a delivery is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Consumers {
    /// Every stream: the message is next in its stream's order (or best effort).
    All,
    /// The streams that take messages as they arrive: this one is held back for the others.
    Unordered,
    /// The streams that take each publisher's messages in order: a held message released.
    Ordered,
}

impl Consumers {
    fn includes(self, ordered: bool) -> bool {
        match self {
            Consumers::All => true,
            Consumers::Unordered => !ordered,
            Consumers::Ordered => ordered,
        }
    }
}

/// A map looked up once or more per message: seeded fast hashing (foldhash) instead of SipHash.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The LAN discovery socket: bound to the multicast group, joined on one interface.
struct Lan {
    /// Shared with the handles, which read its counters.
    socket: Arc<DatagramSocket>,
    group: SocketAddr,
}

impl Lan {
    /// Joins `group:port` on the interface of `listen` (loopback when `listen` is unspecified), so
    /// that beacons never leave through another interface.
    fn open(
        listen: IpAddr,
        group: Ipv4Addr,
        port: u16,
        max_len: usize,
        tag: Option<chaski_transport::NetworkTag>,
    ) -> io::Result<Lan> {
        let interface = match listen {
            IpAddr::V4(ip) if ip.is_unspecified() => Ipv4Addr::LOCALHOST,
            IpAddr::V4(ip) => ip,
            IpAddr::V6(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "LAN discovery needs an IPv4 listening address",
                ));
            }
        };
        let socket = DatagramSocket::bind_shared(SocketAddr::new(group.into(), port), max_len)?
            .with_network_tag(tag);
        socket.join_multicast_v4(group, interface)?;
        socket.set_multicast_if_v4(interface)?;
        socket.set_multicast_loop_v4(true)?;
        socket.set_multicast_ttl_v4(1)?;
        Ok(Lan {
            socket: Arc::new(socket),
            group: SocketAddr::new(group.into(), port),
        })
    }
}

struct Driver {
    id: NodeId,
    /// As `Inner::incarnation`.
    incarnation: u64,
    name: Arc<str>,
    membership: Membership,
    endpoint: Endpoint,
    events_in: Events,
    commands: mpsc::Receiver<Command>,
    lan: Option<Lan>,
    epoch: Instant,
    conns: HashMap<ConnId, Connection>,
    /// Peers' UDP addresses (their listening addresses) to their connection, for best-effort
    /// messages.
    udp_peers: HashMap<SocketAddr, ConnId>,
    /// The openers of connected peers' sealed datagrams (TLS).
    openers: HashMap<ConnId, chaski_transport::Opener>,
    /// Whether connections use TLS: best-effort datagrams are then sealed, and plain ones
    /// (which anyone could send with a peer's source address) are refused.
    tls: bool,
    names: FastMap<NodeId, Arc<str>>,
    /// The connection of each directly connected peer.
    peer_conns: FastMap<NodeId, ConnId>,
    registry: Arc<StreamRegistry>,
    routes: Arc<ArcSwap<Routes>>,
    routes_dirty: bool,
    routes_built: Instant,
    /// Topics published on without subscribing, oldest first (bounded).
    published: VecDeque<Topic>,
    /// This node's publication counters, one per topic.
    sequences: crate::sequence::Sequences,
    stream_reports: HashMap<u64, (u64, Instant)>,
    send_drops: HashMap<NodeId, (u64, Instant)>,
    unknown_datagrams: (u64, Instant),
    /// The datagrams dropped by the sockets when last reported.
    datagrams_dropped: u64,
    /// Copies of this node's publications on their way to the membership, per routed topic.
    own: FastMap<Topic, Arc<crate::own::Own>>,
    /// Woken by a handle when a topic's queue is half full.
    own_notify: Arc<tokio::sync::Notify>,
    /// When the queues are drained next.
    /// When to take the own publications waiting (none waiting: `None`).
    own_due: Option<Instant>,
    /// Where small payloads of own publications are cut from (see `Own::pop`).
    own_scratch: bytes::BytesMut,
    /// The membership's routes generation the snapshot was built from.
    routes_generation: u64,
    unrouted: HashMap<Topic, (u64, Instant)>,
    /// When drops seen but not yet reported (rate limit) are due to be reported.
    reports_due: Option<Instant>,
    events_out: broadcast::Sender<NodeEvent>,
    peers_out: watch::Sender<Arc<Vec<Peer>>>,
    peers_dirty: bool,
    counters: Arc<Counters>,
    pings: HashMap<PingId, oneshot::Sender<Result<Duration, Error>>>,
    connects: HashMap<SocketAddr, Vec<oneshot::Sender<Result<NodeId, Error>>>>,
    dials: JoinSet<(SocketAddr, Result<Connection, chaski_transport::Error>)>,
    closing: JoinSet<()>,
    /// A publication waiting for room in a send queue; commands wait meanwhile.
    blocked_publish: Option<BoxFuture>,
    /// Commands taken from the queue and not handled yet (behind a blocked publication).
    deferred: VecDeque<Command>,
    /// Messages waiting for room in `Block` streams; the network waits meanwhile.
    blocked_deliveries: VecDeque<(Arc<Shared>, Received)>,
    max_frame_len: usize,
    event_batch: Vec<TransportEvent>,
    command_batch: Vec<Command>,
    stopped: watch::Sender<bool>,
}

/// Binds, builds the membership state machine, spawns the driver and returns the first handle.
pub(crate) async fn start(builder: NodeBuilder) -> Result<Node, Error> {
    let identity = match builder.identity.clone() {
        Some(identity) => identity,
        None => chaski_transport::Identity::generate().map_err(|e| Error::Config(e.to_string()))?,
    };
    let id = identity.node_id();
    let security = match (&builder.network, builder.insecure_plaintext) {
        (_, true) => chaski_transport::Security::InsecurePlaintext,
        (Some(network), false) => chaski_transport::Security::closed(&identity, network)
            .map_err(|e| Error::Config(e.to_string()))?,
        (None, false) => {
            chaski_transport::Security::tls(&identity).map_err(|e| Error::Config(e.to_string()))?
        }
    };
    let network_tag = match &security {
        chaski_transport::Security::Tls(tls) => tls.network_tag().cloned(),
        _ => None,
    };
    let tls = security.is_tls();
    let transport = builder.transport.clone().with_security(security);
    // A key given by the caller may have been used before: number this start's messages as a new
    // incarnation (the start time, which grows from one start to the next). A fresh key is a new
    // id: incarnation 0, which costs no bytes on the wire.
    let incarnation = if builder.identity.is_some() {
        wall_micros().max(1)
    } else {
        0
    };
    let name: Arc<str> = builder
        .name
        .clone()
        .unwrap_or_else(|| format!("chaski-{}", id.short()))
        .into();
    let listen = crate::config::resolve(&builder.listen).await?;
    let mut seeds = Vec::with_capacity(builder.seeds.len());
    for seed in &builder.seeds {
        seeds.push(crate::config::resolve(seed).await?);
    }

    // The transport needs a hello before the membership knows its final listening address (the
    // port may be 0): bind with a provisional one, then replace it.
    let provisional = chaski_wire::Hello {
        node_id: id,
        name: name.to_string(),
        listen_addrs: Vec::new(),
        subscriptions: builder.subscriptions.clone(),
        capabilities: chaski_wire::Capabilities::NONE,
        auth: None,
        timestamp_micros: 0,
        network_id: builder.network_id.clone(),
        incarnation,
    };
    let (endpoint, events_in) = Endpoint::bind(listen, provisional, transport)
        .await
        .map_err(|e| match e {
            chaski_transport::Error::Bind { addr, source } => Error::Bind { addr, source },
            other => Error::Config(other.to_string()),
        })?;
    let local_addr = endpoint.local_addr();

    let mut config = chaski_membership::Config::builder(id)
        .name(name.to_string())
        .listen_addr(local_addr)
        .relay(builder.relay)
        .network_id(builder.network_id.clone())
        .incarnation(incarnation)
        // From the operating system, not from the public node id: a peer must not be able to
        // predict the node's random choices (jitter, which extra links it tries).
        .rng_seed(os_random_u64())
        .max_connections(builder.max_connections)
        // The ring needs two links per neighbour pair: with fewer than 4 connections a topic's
        // ring keeps one neighbour on each side (the documented minimum is 2 connections).
        .ring_neighbours((builder.max_connections / 2).clamp(1, 2))
        .disconnect_unneeded(builder.disconnect_unneeded)
        // In a closed network every peer is a member: members may see the peer table.
        .status_from_anywhere(builder.status_from_anywhere || builder.network.is_some())
        .lan_discovery(builder.lan_discovery)
        .ping_interval(builder.ping_interval)
        .peer_timeout(builder.peer_timeout)
        .reconnect_initial(builder.reconnect_initial)
        .reconnect_max(builder.reconnect_max)
        .reconnect_attempts(builder.reconnect_attempts)
        .gap_timeout(builder.gap_timeout)
        .cache_messages(builder.cache_messages)
        .cache_bytes(builder.cache_bytes)
        .cache_age(builder.cache_age);
    for topic in &builder.subscriptions {
        config = config.subscribe(topic.clone());
    }
    for seed in seeds {
        config = config.seed(seed);
    }
    let config = config.build().map_err(|e| Error::Config(e.to_string()))?;
    let membership = Membership::new(config, chaski_membership::Instant::ZERO);
    endpoint
        .set_hello(membership.local_hello())
        .map_err(|e| Error::Config(e.to_string()))?;

    let max_datagram_len = builder.transport.max_datagram_len();
    let lan = if builder.lan_discovery {
        match Lan::open(
            local_addr.ip(),
            builder.lan_group,
            builder.lan_port,
            max_datagram_len,
            network_tag,
        ) {
            Ok(lan) => Some(lan),
            Err(err) => {
                warn!(%err, "LAN discovery is off: cannot open its socket");
                None
            }
        }
    } else {
        None
    };

    let (commands_tx, commands) = mpsc::channel(builder.command_capacity);
    let (events_out, _) = broadcast::channel(builder.event_capacity);
    let (peers_out, peers) = watch::channel(Arc::new(Vec::new()));
    let (stopped, stopped_rx) = watch::channel(false);
    let registry = Arc::new(StreamRegistry::default());
    let routes = Arc::new(ArcSwap::from_pointee(Routes::default()));
    let counters = Arc::new(Counters::default());
    let now = Instant::now();
    let max_frame_len = builder.transport.max_frame_len();

    let inner = Inner {
        id,
        incarnation,
        name: name.clone(),
        local_addr,
        commands: commands_tx,
        events: events_out.clone(),
        peers,
        streams: registry.clone(),
        routes: routes.clone(),
        unrouted: (
            std::sync::atomic::AtomicU64::new(0),
            std::sync::atomic::AtomicU64::new(0),
        ),
        started: std::time::Instant::now(),
        best_effort: builder.best_effort.clone(),
        stream_defaults: crate::StreamOptions::new()
            .capacity(builder.stream_capacity)
            .overflow(builder.stream_overflow),
        max_frame_len,
        // Without UDP, best-effort messages travel over TCP: only the frame limit applies.
        max_datagram_len: if builder.transport.udp() {
            max_datagram_len
        } else {
            usize::MAX
        },
        send_queue: builder.transport.send_queue(),
        peer_timeout: builder.peer_timeout,
        counters: counters.clone(),
        transport_stats: endpoint.stats_handle(),
        lan_socket: lan.as_ref().map(|l| l.socket.clone()),
        stopped: stopped_rx,
    };
    let mut names = FastMap::default();
    names.insert(id, name.clone());
    let driver = Driver {
        id,
        incarnation,
        name,
        membership,
        endpoint,
        events_in,
        commands,
        lan,
        epoch: now,
        conns: HashMap::new(),
        udp_peers: HashMap::new(),
        openers: HashMap::new(),
        tls,
        names,
        peer_conns: FastMap::default(),
        registry,
        routes,
        routes_dirty: true,
        routes_built: now,
        published: VecDeque::new(),
        sequences: Default::default(),
        stream_reports: HashMap::new(),
        send_drops: HashMap::new(),
        unknown_datagrams: (0, now),
        datagrams_dropped: 0,
        own: FastMap::default(),
        own_notify: Arc::new(tokio::sync::Notify::new()),
        own_due: None,
        own_scratch: bytes::BytesMut::new(),
        routes_generation: 0,
        unrouted: HashMap::new(),
        reports_due: None,
        events_out,
        peers_out,
        peers_dirty: false,
        counters,
        pings: HashMap::new(),
        connects: HashMap::new(),
        dials: JoinSet::new(),
        closing: JoinSet::new(),
        blocked_publish: None,
        deferred: VecDeque::new(),
        blocked_deliveries: VecDeque::new(),
        max_frame_len,
        event_batch: Vec::with_capacity(EVENT_BATCH),
        command_batch: Vec::with_capacity(COMMAND_BATCH),
        stopped,
    };
    info!(node = %id.short(), %local_addr, "node started");
    tokio::spawn(driver.run());
    Ok(Node {
        inner: Arc::new(inner),
    })
}

/// 64 random bits from the operating system.
fn os_random_u64() -> u64 {
    // A fresh random node id is 128 bits from the operating system's generator.
    NodeId::random().as_u128() as u64
}

/// The wall clock in microseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn wall_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn lost_cause(cause: &LostCause) -> MLostCause {
    match cause {
        LostCause::Eof | LostCause::Truncated { .. } => MLostCause::Eof,
        LostCause::Read(e) | LostCause::Write(e) if e.kind() == io::ErrorKind::ConnectionReset => {
            MLostCause::Reset
        }
        LostCause::Read(_) | LostCause::Write(_) => MLostCause::Io,
        _ => MLostCause::Protocol,
    }
}

/// An instant `by` before now, for "last reported" stamps that should be due at once; now itself
/// when the clock is younger than `by` (an `Instant` cannot go before the clock's start).
fn long_ago(by: Duration) -> Instant {
    let now = Instant::now();
    now.checked_sub(by).unwrap_or(now)
}

/// Waits for the first blocked stream to have room; `None` when nothing is blocked.
async fn room(blocked: Option<&(Arc<Shared>, Received)>) -> bool {
    match blocked {
        Some((shared, message)) => shared.wait_for_room(message.clone()).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    fn now(&self) -> chaski_membership::Instant {
        chaski_membership::Instant::from_duration(self.epoch.elapsed())
    }

    fn deadline(&self, at: chaski_membership::Instant) -> Instant {
        self.epoch + at.since_epoch()
    }

    async fn run(mut self) {
        let mut shutdown_reply = None;
        loop {
            // Timers first, so that a flood of traffic cannot starve pings and timeouts.
            let now = self.now();
            if self.membership.poll_timeout().is_some_and(|at| at <= now) {
                self.membership.handle_timeout(now);
                self.report_datagram_drops();
            }
            self.run_actions();
            self.publish_peers();
            if self.own_due.is_some_and(|due| due <= Instant::now()) {
                self.drain_own();
            }
            if self.routes_dirty
                || self.routes_generation != self.membership.routes_generation()
                || self.routes_built.elapsed() >= ROUTES_REFRESH
            {
                self.rebuild_routes();
            }

            let timer = [
                self.membership.poll_timeout().map(|at| self.deadline(at)),
                self.reports_due,
                self.own_due,
            ]
            .into_iter()
            .flatten()
            .min();
            // Every delivery of this turn is made: wake the streams that got one, before waiting.
            self.wake_consumers();
            let blocked_network = !self.blocked_deliveries.is_empty();
            let blocked_commands = self.blocked_publish.is_some();
            tokio::select! {
                biased;
                n = self.events_in.recv_many(&mut self.event_batch, EVENT_BATCH), if !blocked_network => {
                    if n == 0 {
                        debug!("the endpoint closed");
                        break;
                    }
                    self.handle_transport_events();
                }
                n = self.commands.recv_many(&mut self.command_batch, COMMAND_BATCH), if !blocked_commands => {
                    if n == 0 {
                        debug!("every handle was dropped");
                        break;
                    }
                    self.deferred.extend(self.command_batch.drain(..));
                    if let Some(reply) = self.drain_commands() {
                        shutdown_reply = Some(reply);
                        break;
                    }
                }
                () = async { self.blocked_publish.as_mut().expect("guarded").await }, if blocked_commands => {
                    self.blocked_publish = None;
                    if let Some(reply) = self.drain_commands() {
                        shutdown_reply = Some(reply);
                        break;
                    }
                }
                queued = room(self.blocked_deliveries.front()), if blocked_network => {
                    let _ = queued;
                    self.blocked_deliveries.pop_front();
                    self.retry_blocked_deliveries();
                }
                received = async { self.endpoint.datagrams().expect("guarded").recv_any().await }, if self.endpoint.datagrams().is_some() => {
                    match received {
                        Ok((frame, from)) => self.handle_datagram(frame, from),
                        Err(err) => warn!(%err, "UDP receive failed"),
                    }
                }
                received = async { self.lan.as_ref().expect("guarded").socket.recv().await }, if self.lan.is_some() => {
                    match received {
                        Ok((frame, from)) => {
                            let now = self.now();
                            self.membership.handle_datagram(now, from, frame);
                        }
                        Err(err) => warn!(%err, "LAN receive failed"),
                    }
                }
                Some(done) = self.dials.join_next(), if !self.dials.is_empty() => {
                    if let Ok((addr, result)) = done {
                        self.dial_finished(addr, result);
                    }
                }
                Some(_) = self.closing.join_next(), if !self.closing.is_empty() => {}
                () = self.own_notify.notified() => self.own_waiting(),
                () = async {
                    match timer {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if self.reports_due.is_some_and(|at| at <= Instant::now()) {
                        self.reports_due = None;
                        self.report_stream_drops();
                        self.report_send_drops();
                    }
                }
            }
        }
        self.shutdown(shutdown_reply).await;
    }

    // ---------------------------------------------------------------------------------------
    // Transport events.

    fn handle_transport_events(&mut self) {
        let mut batch = std::mem::take(&mut self.event_batch);
        for event in batch.drain(..) {
            match event {
                TransportEvent::Connected(connection) => self.connected(connection),
                TransportEvent::Frames { connection, frames } => {
                    let conn = ConnId(connection.as_u64());
                    // One clock reading per read call, not per message.
                    let now = self.now();
                    for frame in frames {
                        match frame {
                            Frame::Publish(message) => {
                                self.received(now, conn, message, Delivery::Reliable)
                            }
                            other => {
                                let reroute = !matches!(other, Frame::Ping(_) | Frame::Pong(_));
                                // The peer table shows each peer's subscriptions.
                                self.peers_dirty |= matches!(other, Frame::SubscriptionUpdate(_));
                                self.membership.handle_frame(now, conn, other);
                                // Before any later message of this batch reaches the application:
                                // what it publishes in answer must already use the new routes
                                // (an unsubscription, say).
                                if reroute {
                                    self.rebuild_routes();
                                }
                            }
                        }
                    }
                }
                TransportEvent::Closed {
                    connection,
                    node_id,
                    reason,
                } => {
                    let conn = ConnId(connection.as_u64());
                    self.disconnected(conn, node_id, reason);
                }
                _ => {}
            }
        }
        self.event_batch = batch;
        self.report_stream_drops();
    }

    fn connected(&mut self, connection: Connection) {
        let conn = ConnId(connection.id().as_u64());
        let hello = connection.remote_hello().clone();
        debug!(peer = %hello.node_id.short(), name = %hello.name, addr = %connection.remote_addr(), "connected");
        // Best-effort datagrams are accepted from, and sent to, the peer's connected address
        // (with the port it listens on), never an address its hello merely claims.
        if let Some(addr) = udp_target(&connection) {
            self.udp_peers.insert(addr, conn);
        }
        if let Some(opener) = connection.take_datagram_opener() {
            self.openers.insert(conn, opener);
        }
        self.names.insert(hello.node_id, hello.name.as_str().into());
        self.peer_conns.insert(hello.node_id, conn);
        let outbound = connection.direction() == chaski_transport::Direction::Outbound;
        let remote = connection.remote_addr();
        self.conns.insert(conn, connection);
        let now = self.now();
        self.membership
            .handle_connected(now, conn, &hello, outbound, Some(remote));
        self.peers_dirty = true;
        self.routes_dirty = true;
        // `connect` is answered once the connection is known here, so that what the caller does
        // next (a ping, say) finds it.
        if outbound {
            for reply in self.connects.remove(&remote).unwrap_or_default() {
                let _ = reply.send(Ok(hello.node_id));
            }
        }
    }

    fn disconnected(&mut self, conn: ConnId, node: NodeId, reason: CloseReason) {
        let Some(connection) = self.conns.remove(&conn) else {
            return;
        };
        self.openers.remove(&conn);
        if let Some(addr) = udp_target(&connection) {
            if self.udp_peers.get(&addr) == Some(&conn) {
                self.udp_peers.remove(&addr);
            }
        }
        // A duplicate connection that closes must not take the state of the node's current
        // connection with it (its name, shown on every message, above all).
        if self.peer_conns.get(&node) == Some(&conn) {
            self.peer_conns.remove(&node);
            self.names.remove(&node);
            self.send_drops.remove(&node);
        }
        if let CloseReason::Lost(LostCause::Decode(error)) = &reason {
            Counters::add(&self.counters.frames_rejected, 1);
            debug!(peer = %node.short(), %error, "closed on a bad frame");
        }
        let how = match &reason {
            CloseReason::Goodbye { reason, .. } => Disconnect::Goodbye(*reason),
            CloseReason::Lost(cause) => Disconnect::Lost(lost_cause(cause)),
            _ => Disconnect::Lost(MLostCause::Io),
        };
        debug!(peer = %node.short(), ?reason, "disconnected");
        let now = self.now();
        self.membership.handle_disconnected(now, conn, how);
        self.peers_dirty = true;
        self.routes_dirty = true;
    }

    fn handle_datagram(&mut self, received: chaski_transport::Received, from: SocketAddr) {
        let frame = match received {
            chaski_transport::Received::Sealed(sealed) => {
                let socket = self.endpoint.datagrams().expect("a datagram came from it");
                let opener = self
                    .udp_peers
                    .get(&from)
                    .and_then(|conn| self.openers.get_mut(conn));
                let Some(opener) = opener else {
                    socket.drop_unknown(sealed);
                    return self.ignored_datagram();
                };
                // Dropped and counted by the socket when it does not open.
                match socket.open(sealed, opener) {
                    Some(frame) => frame,
                    None => return,
                }
            }
            chaski_transport::Received::Frame(Frame::Publish(_)) if self.tls => {
                // With TLS, a peer's best-effort messages come sealed: a plain one could come
                // from anyone who writes the peer's address as its source.
                return self.ignored_datagram();
            }
            chaski_transport::Received::Frame(frame) => frame,
            _ => return,
        };
        match frame {
            Frame::Publish(message) => match self.udp_peers.get(&from).copied() {
                Some(conn) => {
                    let now = self.now();
                    self.received(now, conn, message, Delivery::BestEffort);
                }
                None => self.ignored_datagram(),
            },
            other => {
                let now = self.now();
                self.membership.handle_datagram(now, from, other);
            }
        }
    }

    /// Reports the datagrams the node's sockets dropped (garbage, outsiders' beacons, sealed
    /// datagrams that did not open) since the last report; checked with the membership's
    /// timers, so at most about every ping interval.
    fn report_datagram_drops(&mut self) {
        let total = self.endpoint.datagrams().map_or(0, |s| s.dropped_total())
            + self.lan.as_ref().map_or(0, |l| l.socket.dropped_total());
        if total > self.datagrams_dropped {
            let dropped = total - self.datagrams_dropped;
            self.datagrams_dropped = total;
            self.emit(NodeEvent::DatagramsDropped { dropped });
        }
    }

    /// Counts a best-effort datagram from no connected peer, reported at most every
    /// `REPORT_INTERVAL`.
    fn ignored_datagram(&mut self) {
        Counters::add(&self.counters.datagrams_ignored, 1);
        self.unknown_datagrams.0 += 1;
        if self.unknown_datagrams.1.elapsed() >= REPORT_INTERVAL {
            let dropped = std::mem::take(&mut self.unknown_datagrams.0);
            self.unknown_datagrams.1 = Instant::now();
            self.emit(NodeEvent::UnknownDatagramSource { dropped });
        }
    }

    // ---------------------------------------------------------------------------------------
    // Messages: the hot path.

    /// A message arrived from a peer: deduplicate, forward along the topic's graph, deliver.
    fn received(
        &mut self,
        now: chaski_membership::Instant,
        from: ConnId,
        message: Message,
        delivery: Delivery,
    ) {
        Counters::add(&self.counters.messages_in, 1);
        let route = match delivery {
            Delivery::BestEffort => self.membership.route_datagram(now, from, &message),
            _ => self.membership.route(now, Some(from), &message),
        };
        if route.duplicate {
            Counters::add(&self.counters.duplicates, 1);
            return;
        }
        let (deliver, in_order) = (route.deliver, route.in_order);
        let mut dropped = false;
        if !route.forward.is_empty() {
            let mut copy = message.clone();
            copy.hop_limit = route.hop_limit;
            copy.hops = copy.hops.saturating_add(1);
            let targets = route.forward.len() as u64;
            let forwarded = Self::send_message(
                &self.conns,
                &self.endpoint,
                &copy,
                route.forward,
                delivery,
                self.max_frame_len,
                &mut self.send_drops,
                &self.counters,
            );
            Counters::add(&self.counters.forwarded, forwarded);
            dropped = forwarded < targets && delivery == Delivery::Reliable;
        }
        if dropped {
            self.membership.forward_dropped(now, &message);
        }
        if deliver {
            let to = if in_order {
                Consumers::All
            } else {
                Consumers::Unordered
            };
            self.deliver(message, delivery, to);
        }
        // Held messages this one released go out before anything that arrives after it.
        self.run_actions();
    }

    /// Counts and reports messages that will not arrive.
    fn report_missed(&mut self, publisher: NodeId, topic: Topic, first: u64, last: u64) {
        Counters::add(
            &self.counters.messages_missed,
            (last - first).saturating_add(1),
        );
        debug!(publisher = %publisher.short(), %topic, first, last, "messages missed");
        self.emit(NodeEvent::Missed {
            publisher,
            topic,
            first,
            last,
        });
    }

    /// Hands this node's own publications, sent by the handles, to the membership: it caches
    /// them and announces them on the links that only hear announcements.
    fn drain_own(&mut self) {
        self.own_due = None;
        let now = self.now();
        let mut skipped = 0;
        let mut more = false;
        for own in self.own.values() {
            skipped += own.take_skipped();
            while let Some(message) = own.pop(&mut self.own_scratch) {
                self.membership.published(now, &message);
            }
            more |= own.drained();
        }
        if more {
            self.own_due = Some(Instant::now() + OWN_DRAIN);
        }
        Counters::add(&self.counters.cache_skipped, skipped);
        self.run_actions();
    }

    /// A handle told of own publications waiting: taken at once if a queue is half full, else
    /// within [`OWN_DRAIN`] (a batch).
    fn own_waiting(&mut self) {
        if self.own.values().any(|own| own.half_full()) {
            self.drain_own();
        } else {
            self.own_due
                .get_or_insert_with(|| Instant::now() + OWN_DRAIN);
        }
    }

    /// Queues `message` on each of `targets` (encoded once); a full queue drops it for that peer
    /// (counted). Returns how many peers it was queued for.
    #[allow(clippy::too_many_arguments)]
    fn send_message(
        conns: &HashMap<ConnId, Connection>,
        endpoint: &Endpoint,
        message: &Message,
        targets: &[ConnId],
        delivery: Delivery,
        max_frame_len: usize,
        drops: &mut HashMap<NodeId, (u64, Instant)>,
        counters: &Counters,
    ) -> u64 {
        let Ok(frame) = EncodedFrame::from_message(message, max_frame_len) else {
            return 0;
        };
        // Without a UDP socket (`transport_udp = false`) best effort travels over TCP; so it
        // does, with TLS, to a connection without datagram keys (never in clear over UDP).
        let udp = match delivery {
            Delivery::BestEffort => endpoint.datagrams(),
            _ => None,
        };
        let tls = endpoint.config().security().is_tls();
        let mut sent = 0;
        for conn in targets {
            let Some(connection) = conns.get(conn) else {
                continue;
            };
            let socket = udp.filter(|_| !tls || connection.datagram_sealer().is_some());
            let ok = match socket {
                Some(socket) => {
                    udp_target(connection).is_some_and(|to| match connection.datagram_sealer() {
                        Some(sealer) => socket.try_send_sealed_to(&frame, sealer, to).is_ok(),
                        None => socket.try_send_encoded_to(&frame, to).is_ok(),
                    })
                }
                None => match connection.try_send_encoded(frame.clone()) {
                    Ok(()) => true,
                    Err(SendError::Full) => false,
                    // Closed: the transport reports it; membership will forget the connection.
                    Err(_) => continue,
                },
            };
            if ok {
                sent += 1;
            } else {
                Counters::add(&counters.send_dropped, 1);
                drops
                    .entry(connection.node_id())
                    .or_insert((0, Instant::now()))
                    .0 += 1;
            }
        }
        sent
    }

    /// Hands a message to every stream of `to` that wants it (and counts it, when it arrives).
    fn deliver(&mut self, message: Message, delivery: Delivery, to: Consumers) {
        // A guard, not a reference count on the list (which handles and consumers share).
        let streams = self.registry.load();
        // The topic is borrowed, not cloned: a clone is a reference count on the receive
        // buffer, which the reading task on the other core touches too.
        let wanted = |s: &Arc<Shared>, topic: &Topic| s.wants(topic) && to.includes(s.ordered());
        if to != Consumers::Ordered && streams.iter().any(|s| s.wants(&message.topic)) {
            Counters::add(&self.counters.received, 1);
        }
        let Some(first) = streams.iter().position(|s| wanted(s, &message.topic)) else {
            return;
        };
        let name = self.names.get(&message.publisher).cloned();
        let received = Received::new(message, name, delivery);
        let mut stream = &streams[first];
        let mut closed = false;
        // Every stream but the last gets a copy; the last takes the message itself.
        for next in streams[first + 1..]
            .iter()
            .filter(|s| wanted(s, &received.topic))
        {
            closed |= Self::offer(&mut self.blocked_deliveries, stream, received.clone());
            stream = next;
        }
        closed |= Self::offer(&mut self.blocked_deliveries, stream, received);
        drop(streams);
        if closed {
            self.registry.prune();
        }
    }

    /// Offers to a stream; returns whether the stream turned out closed.
    fn offer(
        blocked: &mut VecDeque<(Arc<Shared>, Received)>,
        stream: &Arc<Shared>,
        message: Received,
    ) -> bool {
        // Keep per-stream order: once a message waits for a stream, later ones wait behind it.
        if !blocked.is_empty() && blocked.iter().any(|(s, _)| Arc::ptr_eq(s, stream)) {
            blocked.push_back((stream.clone(), message));
            return false;
        }
        // Woken once per turn of the loop (`wake_consumers`), not once per message.
        match stream.offer_unwoken(message) {
            Offer::Queued | Offer::Dropped => false,
            Offer::Full(message) => {
                blocked.push_back((stream.clone(), message));
                false
            }
            Offer::Closed => true,
        }
    }

    /// Wakes the consumers of the streams that [`offer`](Self::offer) queued messages on since
    /// the last call.
    fn wake_consumers(&self) {
        for stream in self.registry.load().iter() {
            stream.wake_consumer();
        }
    }

    /// After room was made (the front message was queued by `room`): queue what can be queued.
    fn retry_blocked_deliveries(&mut self) {
        while let Some((stream, message)) = self.blocked_deliveries.pop_front() {
            match stream.offer(message) {
                Offer::Queued | Offer::Dropped | Offer::Closed => {}
                Offer::Full(message) => {
                    self.blocked_deliveries.push_front((stream, message));
                    break;
                }
            }
        }
    }

    fn report_stream_drops(&mut self) {
        let streams = self.registry.load_arc();
        for stream in streams.iter() {
            let total = stream.dropped();
            if total == 0 {
                continue;
            }
            let (reported, at) = self
                .stream_reports
                .entry(stream.id())
                .or_insert((0, long_ago(REPORT_INTERVAL)));
            if total > *reported && at.elapsed() < REPORT_INTERVAL {
                let due = *at + REPORT_INTERVAL;
                self.reports_due = Some(self.reports_due.map_or(due, |d| d.min(due)));
            }
            if total > *reported && at.elapsed() >= REPORT_INTERVAL {
                let event = NodeEvent::StreamOverflow {
                    stream: stream.id(),
                    policy: stream.overflow(),
                    dropped: total - *reported,
                    total,
                };
                *reported = total;
                *at = Instant::now();
                let _ = self.events_out.send(event);
            }
        }
    }

    fn report_send_drops(&mut self) {
        if self.send_drops.is_empty() {
            return;
        }
        let mut events = Vec::new();
        for (peer, (dropped, at)) in &mut self.send_drops {
            if *dropped > 0 && at.elapsed() < REPORT_INTERVAL {
                let due = *at + REPORT_INTERVAL;
                self.reports_due = Some(self.reports_due.map_or(due, |d| d.min(due)));
            }
            if *dropped > 0 && at.elapsed() >= REPORT_INTERVAL {
                events.push(NodeEvent::SendDropped {
                    peer: *peer,
                    dropped: std::mem::take(dropped),
                });
                *at = Instant::now();
            }
        }
        for event in events {
            self.emit(event);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Commands from the handles.

    /// Handles the commands taken from the queue, in order, until one must wait (a publication
    /// whose send queue is full); returns the reply channel of a shutdown command.
    fn drain_commands(&mut self) -> Option<oneshot::Sender<()>> {
        while self.blocked_publish.is_none() {
            let Some(command) = self.deferred.pop_front() else {
                break;
            };
            match command {
                Command::Publish {
                    topic,
                    payload,
                    headers,
                    delivery,
                } => {
                    self.publish(topic, payload, headers, delivery);
                }
                Command::Route { topic, reply } => {
                    let _ = reply.send(self.route_topic(topic));
                }
                Command::Flush { reply } => {
                    let _ = reply.send(());
                }
                Command::Subscribe { topic, reply } => {
                    let now = self.now();
                    let added = self.membership.subscribe(now, topic);
                    self.update_hello();
                    self.routes_dirty = true;
                    // The peers' update is queued before the caller learns it is done: what
                    // the caller publishes next cannot overtake it on a connection.
                    self.run_actions();
                    let _ = reply.send(added);
                }
                Command::Unsubscribe { topic, reply } => {
                    let now = self.now();
                    let removed = self.membership.unsubscribe(now, &topic);
                    self.update_hello();
                    self.routes_dirty = true;
                    self.run_actions();
                    let _ = reply.send(removed);
                }
                Command::Connect { addr, reply } => self.connect(addr, reply),
                Command::Ping { peer, size, reply } => self.ping(peer, size, reply),
                Command::Shutdown { reply } => return Some(reply),
            }
        }
        None
    }

    /// The publication counter of `topic`.
    fn counter(&mut self, topic: &Topic) -> crate::sequence::Counter {
        let (membership, published) = (&self.membership, &self.published);
        self.sequences
            .counter(topic, |t| membership.wants(t) || published.contains(t))
    }

    /// Adds `topic` to the routing snapshot (for handles publishing on a topic this node does not
    /// subscribe to). Returns `false` only if it cannot.
    fn route_topic(&mut self, topic: Topic) -> bool {
        if !self.published.contains(&topic) && !self.membership.wants(&topic) {
            if self.published.len() >= MAX_PUBLISHED_TOPICS {
                self.published.pop_front();
            }
            self.published.push_back(topic);
        }
        self.rebuild_routes();
        true
    }

    /// Recomputes where this node's own publications go, for every topic it subscribes to or
    /// publishes on, and hands the result to the handles.
    fn rebuild_routes(&mut self) {
        let mut topics: Vec<Topic> = self.membership.subscriptions().cloned().collect();
        topics.extend(self.published.iter().cloned());
        let mut routes = Routes {
            topics: HashMap::with_capacity_and_hasher(topics.len(), Default::default()),
            hop_limit: 0,
            closed: false,
        };
        for topic in topics {
            if routes.topics.contains_key(&topic) {
                continue;
            }
            let sequence = self.counter(&topic);
            let own = self
                .own
                .entry(topic.clone())
                .or_insert_with(|| {
                    Arc::new(crate::own::Own::new(
                        self.own_notify.clone(),
                        self.id,
                        self.incarnation,
                        &topic,
                    ))
                })
                .clone();
            // `publish` also advances the membership's own counter, which nothing uses: the
            // handles number the node's messages.
            let publication = self.membership.publish(&topic);
            routes.hop_limit = publication.hop_limit;
            let conns = publication
                .forward
                .iter()
                .filter_map(|c| self.conns.get(c).cloned())
                .collect();
            routes.topics.insert(
                topic,
                TopicRoute {
                    conns,
                    deliver: publication.deliver,
                    sequence,
                    links: publication.links,
                    own,
                },
            );
        }
        // Queues of topics no longer routed go, once drained.
        let now = self.now();
        self.own.retain(|topic, own| {
            if routes.topics.contains_key(topic) {
                return true;
            }
            while let Some(message) = own.pop(&mut self.own_scratch) {
                self.membership.published(now, &message);
            }
            false
        });
        self.routes_generation = self.membership.routes_generation();
        self.routes.store(Arc::new(routes));
        self.routes_dirty = false;
        self.routes_built = Instant::now();
    }

    fn publish(&mut self, topic: Topic, payload: Bytes, headers: Vec<Header>, delivery: Delivery) {
        Counters::add(&self.counters.published, 1);
        let sequence = crate::sequence::next(&self.counter(&topic));
        let publication = self.membership.publish(&topic);
        let message = Message {
            topic,
            payload,
            publisher: self.id,
            sequence,
            incarnation: self.incarnation,
            timestamp_micros: wall_micros(),
            hop_limit: publication.hop_limit,
            hops: 0,
            headers,
        };
        let deliver = publication.deliver;
        let links = publication.links;
        if !links && !deliver {
            Counters::add(&self.counters.published_unrouted, 1);
            let entry = self
                .unrouted
                .entry(message.topic.clone())
                .or_insert((0, long_ago(Duration::from_secs(1))));
            entry.0 += 1;
            if entry.1.elapsed() >= Duration::from_secs(1) {
                let count = std::mem::take(&mut entry.0);
                entry.1 = Instant::now();
                if self.unrouted.len() > 1024 {
                    self.unrouted.clear();
                }
                self.emit(NodeEvent::NoSubscribers {
                    topic: message.topic.clone(),
                    count,
                });
            }
            return;
        }
        if !publication.forward.is_empty() {
            match delivery {
                Delivery::BestEffort => {
                    Self::send_message(
                        &self.conns,
                        &self.endpoint,
                        &message,
                        publication.forward,
                        delivery,
                        self.max_frame_len,
                        &mut self.send_drops,
                        &self.counters,
                    );
                }
                _ => {
                    if let Ok(frame) = EncodedFrame::from_message(&message, self.max_frame_len) {
                        let mut waiting = Vec::new();
                        for conn in publication.forward {
                            let Some(connection) = self.conns.get(conn) else {
                                continue;
                            };
                            if let Err(SendError::Full) = connection.try_send_encoded(frame.clone())
                            {
                                waiting.push(connection.clone());
                            }
                        }
                        if !waiting.is_empty() {
                            trace!(peers = waiting.len(), "send queues full: publishing waits");
                            self.blocked_publish = Some(Box::pin(async move {
                                for connection in waiting {
                                    let _ = connection.send_encoded(frame.clone()).await;
                                }
                            }));
                        }
                    }
                }
            }
        }
        if links {
            let now = self.now();
            self.membership.published(now, &message);
            self.run_actions();
        }
        if deliver {
            self.deliver(message, Delivery::Reliable, Consumers::All);
        }
    }

    fn update_hello(&mut self) {
        if let Err(err) = self.endpoint.set_hello(self.membership.local_hello()) {
            warn!(%err, "cannot update the hello");
        }
    }

    fn connect(&mut self, addr: SocketAddr, reply: oneshot::Sender<Result<NodeId, Error>>) {
        if let Some(connection) = self
            .conns
            .values()
            .find(|c| c.remote_addr() == addr || c.remote_hello().listen_addrs.contains(&addr))
        {
            let _ = reply.send(Ok(connection.node_id()));
            return;
        }
        if self.connects.len() >= MAX_PENDING_REQUESTS {
            let _ = reply.send(Err(Error::Busy("connects")));
            return;
        }
        self.connects.entry(addr).or_default().push(reply);
        let now = self.now();
        self.membership.connect(now, addr);
    }

    fn ping(&mut self, peer: NodeId, size: u32, reply: oneshot::Sender<Result<Duration, Error>>) {
        if self.pings.len() >= MAX_PENDING_REQUESTS {
            self.pings.retain(|_, reply| !reply.is_closed());
            if self.pings.len() >= MAX_PENDING_REQUESTS {
                let _ = reply.send(Err(Error::Busy("pings")));
                return;
            }
        }
        let now = self.now();
        match self.membership.ping(now, peer, size) {
            Ok(id) => {
                self.pings.insert(id, reply);
            }
            Err(PingError::NotConnected(peer)) => {
                let _ = reply.send(Err(Error::NotConnected(peer)));
            }
            Err(_) => {
                let _ = reply.send(Err(Error::NotConnected(peer)));
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Membership actions.

    fn run_actions(&mut self) {
        while let Some(action) = self.membership.poll_action() {
            match action {
                Action::Send { conn, mut frame } => {
                    let Some(connection) = self.conns.get(&conn) else {
                        continue;
                    };
                    if let Frame::StatusResponse(status) = &mut frame {
                        self.add_traffic(status);
                    }
                    match connection.try_send(frame) {
                        Ok(()) => {}
                        Err(SendError::Full) => {
                            Counters::add(&self.counters.send_dropped, 1);
                            self.send_drops
                                .entry(connection.node_id())
                                .or_insert((0, Instant::now()))
                                .0 += 1;
                        }
                        Err(_) => {}
                    }
                }
                Action::Dial {
                    addr,
                    peer,
                    confirm,
                } => {
                    let endpoint = self.endpoint.clone();
                    // A learned address: the node there speaks first and must be `peer`.
                    let expect = peer.filter(|_| confirm);
                    self.dials.spawn(async move {
                        let result = match expect {
                            Some(node) => endpoint.connect_expecting(addr, node).await,
                            None => endpoint.connect(addr).await,
                        };
                        (addr, result)
                    });
                }
                Action::Close { conn, reason } => {
                    self.routes_dirty = true;
                    if let Some(connection) = self.conns.remove(&conn) {
                        self.close(connection, reason);
                    }
                    self.peers_dirty = true;
                }
                Action::SendDatagram { to, frame } => self.send_datagram(to, frame),
                Action::Deliver(message) => {
                    self.deliver(message, Delivery::Reliable, Consumers::Ordered)
                }
                Action::Event(event) => self.membership_event(event),
                _ => {}
            }
        }
        self.report_send_drops();
    }

    /// Closes a connection the membership has let go of. It leaves the endpoint's table at once
    /// (so it never wins a duplicate tie-break against the peer's next connection). A peer that
    /// timed out may never read again: it is aborted, its goodbye sent only if there is room. Any
    /// other close is graceful (queued frames, then the goodbye) but bounded: a peer that does
    /// not make room within `CLOSE_GRACE` is aborted.
    fn close(&mut self, connection: Connection, reason: GoodbyeReason) {
        if reason == GoodbyeReason::Timeout {
            debug!(peer = %connection.node_id().short(), "aborting a timed-out connection");
            connection.abort(reason, "no answer within the peer timeout");
            return;
        }
        self.closing.spawn(async move {
            let graceful = connection.close(reason, String::new());
            if tokio::time::timeout(CLOSE_GRACE, graceful).await.is_err() {
                connection.abort(reason, String::new());
            }
        });
    }

    fn send_datagram(&mut self, to: DatagramTarget, frame: Frame) {
        let (socket, target) = match to {
            DatagramTarget::Lan => match &self.lan {
                Some(lan) => (&*lan.socket, lan.group),
                None => return,
            },
            DatagramTarget::Unicast(addr) => match self.endpoint.datagrams() {
                Some(socket) => (socket, addr),
                None => return,
            },
            _ => return,
        };
        match EncodedFrame::new(&frame, socket.max_datagram_len()) {
            Ok(encoded) => {
                if let Err(err) = socket.try_send_encoded_to(&encoded, target) {
                    debug!(%err, %target, "datagram not sent");
                }
            }
            Err(err) => debug!(%err, "datagram too large"),
        }
    }

    /// Fills a status answer's traffic figures from the connections' counters: the membership
    /// sees only its own frames, the transport every frame and byte.
    fn add_traffic(&self, status: &mut chaski_wire::StatusResponse) {
        for peer in &mut status.peers {
            let Some(connection) = self
                .peer_conns
                .get(&peer.peer.node_id)
                .and_then(|conn| self.conns.get(conn))
            else {
                continue;
            };
            let traffic = connection.stats();
            peer.frames_in = traffic.frames_in;
            peer.frames_out = traffic.frames_out;
            peer.bytes_in = traffic.bytes_in;
            peer.bytes_out = traffic.bytes_out;
        }
    }

    fn membership_event(&mut self, event: MembershipEvent) {
        match &event {
            MembershipEvent::PingResult { id, rtt, .. } => {
                if let Some(reply) = self.pings.remove(id) {
                    let _ = reply.send(Ok(*rtt));
                }
            }
            MembershipEvent::PeerUp { peer, .. } => {
                info!(peer = %peer.short(), "peer up");
                self.peers_dirty = true;
                self.routes_dirty = true;
            }
            MembershipEvent::PeerDown { peer, reason, .. } => {
                info!(peer = %peer.short(), ?reason, "peer down");
                self.peers_dirty = true;
                self.routes_dirty = true;
            }
            MembershipEvent::Paired { .. } => {
                self.peers_dirty = true;
                self.routes_dirty = true;
            }
            MembershipEvent::Unpaired { .. } => {
                self.peers_dirty = true;
                self.routes_dirty = true;
            }
            MembershipEvent::LatencyUpdated { .. } => self.peers_dirty = true,
            MembershipEvent::Missed {
                publisher,
                topic,
                first,
                last,
                ..
            } => {
                let (publisher, topic, first, last) = (*publisher, topic.clone(), *first, *last);
                self.report_missed(publisher, topic, first, last);
                return;
            }
            _ => {}
        }
        // The peer table shows a change before its event goes out: whoever subscribes to the
        // events and then reads the table misses neither.
        if matches!(
            event,
            MembershipEvent::PeerUp { .. }
                | MembershipEvent::PeerDown { .. }
                | MembershipEvent::Paired { .. }
                | MembershipEvent::Unpaired { .. }
        ) {
            self.publish_peers();
        }
        self.emit(NodeEvent::Membership(event));
    }

    fn dial_finished(
        &mut self,
        addr: SocketAddr,
        result: Result<Connection, chaski_transport::Error>,
    ) {
        let answer = match result {
            // Answered by `connected` (now, if its event came first, or when it comes).
            Ok(connection) if !self.conns.contains_key(&ConnId(connection.id().as_u64())) => return,
            Ok(connection) => Ok(connection.node_id()),
            Err(err) => {
                debug!(%addr, %err, "dial failed");
                let error = match &err {
                    chaski_transport::Error::Duplicate { node, .. } => {
                        DialError::Duplicate { peer: *node }
                    }
                    chaski_transport::Error::SelfConnection { .. } => DialError::SelfConnection,
                    chaski_transport::Error::Handshake {
                        source: chaski_transport::HandshakeError::Refused { reason, .. },
                        ..
                    } => DialError::Refused(*reason),
                    chaski_transport::Error::Handshake {
                        source: chaski_transport::HandshakeError::UnexpectedPeer { found, .. },
                        ..
                    } => DialError::WrongPeer { found: *found },
                    _ => DialError::Unreachable,
                };
                let now = self.now();
                self.membership.handle_dial_failed(now, addr, error);
                match err {
                    // Already connected to that node: the existing connection answers.
                    chaski_transport::Error::Duplicate { node, .. } => Ok(node),
                    chaski_transport::Error::Handshake { ref source, .. } => {
                        Err((err.to_string(), Some(source.cause())))
                    }
                    err => Err((err.to_string(), None)),
                }
            }
        };
        for reply in self.connects.remove(&addr).unwrap_or_default() {
            let _ = reply.send(match &answer {
                Ok(id) => Ok(*id),
                Err((reason, handshake)) => Err(Error::Connect {
                    addr,
                    reason: reason.clone(),
                    handshake: *handshake,
                }),
            });
        }
    }

    fn emit(&self, event: NodeEvent) {
        // No receiver is not an error: events are for whoever listens.
        let _ = self.events_out.send(event);
    }

    fn publish_peers(&mut self) {
        let m = self.membership.counters();
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        self.counters.dials.store(m.dials, relaxed);
        self.counters
            .protocol_violations
            .store(m.violations.total(), relaxed);
        self.counters
            .messages_rejected
            .store(m.messages_rejected, relaxed);
        self.counters
            .padding_refused
            .store(m.padding_refused, relaxed);
        let c = &self.counters;
        c.messages_late.store(m.messages_late, relaxed);
        c.repairs_requested.store(m.repairs_requested, relaxed);
        c.messages_served.store(m.messages_served, relaxed);
        c.grafts.store(m.grafts_sent, relaxed);
        c.prunes.store(m.prunes_sent, relaxed);
        c.held.store(self.membership.held_count() as u64, relaxed);
        c.cached
            .store(self.membership.cache_usage().0 as u64, relaxed);
        if self.peers_dirty {
            self.peers_dirty = false;
            self.peers_out
                .send_replace(Arc::new(self.membership.peers()));
        }
    }

    // ---------------------------------------------------------------------------------------
    // Shutdown.

    async fn shutdown(mut self, reply: Option<oneshot::Sender<()>>) {
        info!(node = %self.id.short(), name = %self.name, "node shutting down");
        // From now on the handles' publications fail with `Error::Shutdown`.
        self.routes.store(Arc::new(Routes {
            closed: true,
            ..Routes::default()
        }));
        let now = self.now();
        self.membership.shutdown(now);
        self.run_actions();
        // Everything the membership did not close itself gets a goodbye too.
        for (_, connection) in self.conns.drain() {
            self.closing.spawn(async move {
                connection
                    .close(GoodbyeReason::Shutdown, String::new())
                    .await
            });
        }
        // Returns once the listening socket is closed: the port is free when `shutdown` returns.
        // From now on a handshake that completes is refused with a goodbye.
        self.endpoint.shutdown().await;
        // Wait for the goodbyes to be queued and for dials in flight to end. A dial is never
        // aborted: its socket may already be established on the other side, and dropping it
        // mid-handshake with the peer's hello unread resets the connection instead of saying
        // goodbye (the peer would count it as a failure and re-dial).
        let closing = async {
            while self.closing.join_next().await.is_some() {}
            while self.dials.join_next().await.is_some() {}
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, closing).await.is_err() {
            warn!("some connections did not close in time");
            self.dials.abort_all();
        }
        for stream in self.registry.load().iter() {
            stream.finish();
        }
        for (_, reply) in self.pings.drain() {
            let _ = reply.send(Err(Error::Shutdown));
        }
        let _ = self.stopped.send(true);
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
    }
}

/// Where a peer's best-effort datagrams come from and go to: the address it is connected from,
/// with the port it says it listens on (its UDP socket shares its TCP port). Only the port is
/// the peer's word, so its hello cannot aim our datagrams at another host.
fn udp_target(connection: &Connection) -> Option<SocketAddr> {
    let remote = connection.remote_addr();
    let addrs = &connection.remote_hello().listen_addrs;
    addrs
        .iter()
        .find(|a| a.ip() == remote.ip())
        .or_else(|| addrs.iter().find(|a| a.is_ipv4() == remote.is_ipv4()))
        .map(|a| SocketAddr::new(remote.ip(), a.port()))
}
