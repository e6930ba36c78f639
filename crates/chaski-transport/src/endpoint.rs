//! The endpoint: a TCP listener and a UDP socket on one port, the dialer, the handshake and the
//! bounded table of connected nodes that detects self-connections and duplicates.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::BytesMut;
use chaski_wire::{Frame, FrameLimits, GoodbyeReason, Hello, NodeId, encode_frame};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch},
};
use tracing::{debug, info, warn};

use crate::{
    Config, Connection, ConnectionId, DatagramSocket, Direction, EndpointStats, Error, Event,
    HandshakeError, MAX_HELLO_LEN,
    connection::{self, Parts, Shared, WriteSide},
    handshake,
    stats::{EndpointCounters, Traffic, add},
};

/// Refused inbound connections that may linger at once to be told `Goodbye(Overloaded)`; beyond
/// this they are closed without a word.
const MAX_REFUSING: usize = 64;

/// Two connections between the same nodes established within this time of each other are
/// simultaneous dials, settled by the dialer rule; a later one never replaces an established
/// connection.
const SIMULTANEOUS_DIALS: Duration = Duration::from_secs(2);

/// Addresses tracked for the per-address limits; beyond, inbound sockets from new addresses are
/// refused until some close (the table cannot grow without bound).
const MAX_TRACKED_IPS: usize = 4096;

/// How many times [`Endpoint::bind`] with port 0 retries when the UDP port matching the TCP port
/// is taken.
const BIND_ATTEMPTS: usize = 16;

/// The receiving side of an endpoint: every connection's events, in one bounded queue
/// ([`Config::event_queue`] events). See [`Event`] for the order of a connection's events.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the endpoint and all its connections are gone.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// Moves up to `limit` ready events into `events`, waiting only if none is ready; returns how
    /// many (0 once the endpoint and all its connections are gone).
    pub async fn recv_many(&mut self, events: &mut Vec<Event>, limit: usize) -> usize {
        self.rx.recv_many(events, limit).await
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

/// A Chaski transport endpoint: accepts and dials TCP connections that start with the `Hello`
/// handshake, and owns a UDP socket on the same port. Cheap to clone; when the last clone is
/// dropped, the endpoint shuts down as with [`Endpoint::shutdown`].
#[derive(Debug, Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
    _guard: Arc<ShutdownOnDrop>,
}

#[derive(Debug)]
struct ShutdownOnDrop(Arc<Inner>);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        self.0.begin_shutdown();
    }
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: Config,
    node_id: NodeId,
    hello: Mutex<Hello>,
    last_hello_micros: AtomicU64,
    local_addr: SocketAddr,
    next_id: AtomicU64,
    pub(crate) events: mpsc::Sender<Event>,
    /// Established connections by the peer's node id. Every entry holds an inbound or outbound
    /// slot, so the table never exceeds `max_inbound + max_outbound` entries.
    table: Mutex<HashMap<NodeId, Connection>>,
    /// Inbound sockets and handshakes per remote IP (at most `MAX_TRACKED_IPS` entries).
    per_ip: Mutex<HashMap<IpAddr, IpCount>>,
    /// The (address, cause) pairs whose refused credentials were logged (bounded by
    /// `MAX_WARNED`; forgotten all at once when full, so a cause is logged again then).
    warned: Mutex<Warned>,
    inbound: Arc<Semaphore>,
    outbound: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
    pub(crate) counters: EndpointCounters,
    pub(crate) traffic: Arc<Traffic>,
    inbound_open: AtomicU64,
    outbound_open: AtomicU64,
    datagrams: Option<DatagramSocket>,
    shutting_down: AtomicBool,
    shutdown: watch::Sender<bool>,
    /// Set once the accept loop has dropped the listener (the port is free again).
    listener_closed: watch::Sender<bool>,
}

impl Endpoint {
    /// Binds a TCP listener on `addr` (port 0 picks a free port; IPv4 or IPv6) and, unless
    /// [`Config::udp`] is off, a UDP socket on the same address and port number, then starts
    /// accepting. `hello` is the local handshake; its node id is the endpoint's for its whole life.
    ///
    /// Must be called within a tokio runtime.
    pub async fn bind(
        addr: SocketAddr,
        hello: Hello,
        config: Config,
    ) -> Result<(Endpoint, Events), Error> {
        if let crate::Security::Tls(tls) = &config.security {
            if tls.node_id() != hello.node_id {
                return Err(Error::NodeIdChanged {
                    expected: tls.node_id(),
                });
            }
        }
        let (listener, datagrams) = bind_sockets(addr, &config)?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        let (events_tx, events_rx) = mpsc::channel(config.event_queue);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            node_id: hello.node_id,
            hello: Mutex::new(hello),
            last_hello_micros: AtomicU64::new(0),
            local_addr,
            next_id: AtomicU64::new(1),
            events: events_tx,
            table: Mutex::new(HashMap::new()),
            per_ip: Mutex::new(HashMap::new()),
            warned: Mutex::new((std::collections::HashSet::new(), (Instant::now(), 0))),
            inbound: Arc::new(Semaphore::new(config.max_inbound)),
            outbound: Arc::new(Semaphore::new(config.max_outbound)),
            refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
            counters: EndpointCounters::default(),
            traffic: Arc::default(),
            inbound_open: AtomicU64::new(0),
            outbound_open: AtomicU64::new(0),
            datagrams,
            shutting_down: AtomicBool::new(false),
            shutdown,
            listener_closed: watch::Sender::new(false),
            config,
        });
        info!(%local_addr, node = %inner.node_id.short(), "endpoint bound");
        tokio::spawn(accept_loop(inner.clone(), listener, shutdown_rx));
        let endpoint = Endpoint {
            _guard: Arc::new(ShutdownOnDrop(inner.clone())),
            inner,
        };
        Ok((endpoint, Events { rx: events_rx }))
    }

    /// The address the TCP listener (and the UDP socket) is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The local `Hello` sent in handshakes.
    pub fn hello(&self) -> Hello {
        self.inner
            .hello
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the local `Hello` for the handshakes to come (subscriptions change, ...). Its
    /// node id must stay the same. Its `timestamp_micros` is set at each handshake.
    pub fn set_hello(&self, hello: Hello) -> Result<(), Error> {
        if hello.node_id != self.inner.node_id {
            return Err(Error::NodeIdChanged {
                expected: self.inner.node_id,
            });
        }
        *self
            .inner
            .hello
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = hello;
        Ok(())
    }

    /// The UDP socket bound on the endpoint's port, unless [`Config::udp`] is off.
    pub fn datagrams(&self) -> Option<&DatagramSocket> {
        self.inner.datagrams.as_ref()
    }

    /// The established connection to `node`, if any.
    pub fn connection(&self, node: NodeId) -> Option<Connection> {
        self.inner.table().get(&node).cloned()
    }

    /// Every established connection.
    pub fn connections(&self) -> Vec<Connection> {
        self.inner.table().values().cloned().collect()
    }

    /// Dials `addr` (within [`Config::connect_timeout`]) and runs the handshake (within
    /// [`Config::handshake_timeout`]). The connection is also announced by
    /// [`Event::Connected`] before any of its frames.
    ///
    /// Fails with [`Error::SelfConnection`] when `addr` is this node, and with
    /// [`Error::Duplicate`] when a connection to the same node already exists and wins the
    /// tie-break (see the crate docs).
    pub async fn connect(&self, addr: SocketAddr) -> Result<Connection, Error> {
        self.dial(addr, None).await
    }

    /// As [`connect`](Endpoint::connect), for an address someone else gave for `node`: this
    /// side reads first and sends its hello only once the peer's hello names `node`. Another
    /// node there fails the dial with [`HandshakeError::UnexpectedPeer`] (counted as
    /// `unexpected_peer`), having learned nothing from this one: a made-up address cannot make
    /// a node introduce itself to whatever listens there.
    ///
    /// [`HandshakeError::UnexpectedPeer`]: crate::HandshakeError::UnexpectedPeer
    pub async fn connect_expecting(
        &self,
        addr: SocketAddr,
        node: NodeId,
    ) -> Result<Connection, Error> {
        self.dial(addr, Some(node)).await
    }

    async fn dial(&self, addr: SocketAddr, expect: Option<NodeId>) -> Result<Connection, Error> {
        let inner = &self.inner;
        let permit = inner.outbound_permit()?;
        add(&inner.counters.dialed, 1);
        let timeout = inner.config.connect_timeout;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => {
                add(&inner.counters.dial_failures, 1);
                return Err(Error::Connect { addr, source });
            }
            Err(_) => {
                add(&inner.counters.dial_failures, 1);
                return Err(Error::ConnectTimeout { addr, timeout });
            }
        };
        tune_stream(&stream, &inner.config);
        secure(
            inner.clone(),
            stream,
            addr,
            Direction::Outbound,
            (permit, None),
            expect,
        )
        .await
    }

    /// Runs the hello exchange over any stream (an in-memory pipe, a stream secured some other
    /// way, ...) and makes it a connection of this endpoint, counted against the inbound or
    /// outbound limit by `direction`.
    ///
    /// Nothing binds the peer's hello to a proven key here: the peer's node id is the one its
    /// hello claims, and the connection has no datagram keys (its best-effort messages travel
    /// over the stream). The endpoint's own dials and accepts ([`connect`](Endpoint::connect))
    /// run TLS themselves and prove the id.
    pub async fn establish<S>(
        &self,
        stream: S,
        remote_addr: SocketAddr,
        direction: Direction,
    ) -> Result<Connection, Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let permit = match direction {
            Direction::Outbound => self.inner.outbound_permit()?,
            Direction::Inbound => self
                .inner
                .inbound
                .clone()
                .try_acquire_owned()
                .map_err(|_| Error::TooManyConnections {
                    limit: self.inner.config.max_inbound,
                })?,
        };
        establish(
            self.inner.clone(),
            stream,
            remote_addr,
            direction,
            (permit, None),
            None,
            None,
        )
        .await
    }

    /// A snapshot of the endpoint's counters.
    pub fn stats(&self) -> EndpointStats {
        self.inner.stats()
    }

    /// A handle that reads the endpoint's counters and does not keep the endpoint open.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(self.inner.clone())
    }

    /// Stops accepting, refuses new dials, and closes every connection with
    /// `Goodbye(Shutdown)`. Their [`Event::Closed`] follow on [`Events`]. Returns once the
    /// listening socket is closed, so that the port can be bound again.
    pub async fn shutdown(&self) {
        self.inner.begin_shutdown();
        for connection in self.connections() {
            connection
                .close(GoodbyeReason::Shutdown, "shutting down")
                .await;
        }
        let mut closed = self.inner.listener_closed.subscribe();
        let _ = closed.wait_for(|closed| *closed).await;
    }
}

/// Reads an endpoint's counters ([`Endpoint::stats`]) without keeping the endpoint open.
#[derive(Clone, Debug)]
pub struct StatsHandle(Arc<Inner>);

impl StatsHandle {
    /// A snapshot of the endpoint's counters.
    pub fn stats(&self) -> EndpointStats {
        self.0.stats()
    }
}

impl Inner {
    fn stats(&self) -> EndpointStats {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        EndpointStats {
            accepted: load(&c.accepted),
            inbound_refused: load(&c.inbound_refused),
            refused_per_ip: load(&c.refused_per_ip),
            dialed: load(&c.dialed),
            dial_failures: load(&c.dial_failures),
            handshake_failures: c.handshake_failures.snapshot(),
            self_connections: load(&c.self_connections),
            certificates_expired: load(&c.certificates_expired),
            duplicates: load(&c.duplicates),
            established: load(&c.established),
            inbound_open: load(&self.inbound_open),
            outbound_open: load(&self.outbound_open),
            goodbyes_received: load(&c.goodbyes_received),
            goodbyes_sent: load(&c.goodbyes_sent),
            lost: c.lost.snapshot(),
            traffic: self.traffic.snapshot(),
            datagrams: self
                .datagrams
                .as_ref()
                .map(DatagramSocket::stats)
                .unwrap_or_default(),
        }
    }

    /// Whether `(ip, cause)` is logged for the first time (and remembers it), and the
    /// endpoint has logged fewer than [`MAX_WARNINGS_PER_MINUTE`] such warnings in the last
    /// minute: many addresses cannot flood the log either.
    fn first_warning(&self, ip: IpAddr, cause: &'static str) -> bool {
        let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        let (pairs, window) = &mut *warned;
        if pairs.len() >= MAX_WARNED {
            pairs.clear();
        }
        if window.0.elapsed() >= Duration::from_secs(60) {
            *window = (Instant::now(), 0);
        }
        if window.1 >= MAX_WARNINGS_PER_MINUTE || !pairs.insert((ip, cause)) {
            return false;
        }
        window.1 += 1;
        true
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Connection>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn per_ip(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, IpCount>> {
        self.per_ip.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn outbound_permit(&self) -> Result<OwnedSemaphorePermit, Error> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(Error::Shutdown);
        }
        self.outbound
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::TooManyConnections {
                limit: self.config.max_outbound,
            })
    }

    fn begin_shutdown(&self) {
        if self.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shutdown.send_replace(true);
        for connection in self.table().values() {
            let _ = connection.try_send(Frame::Goodbye(chaski_wire::Goodbye {
                reason: GoodbyeReason::Shutdown,
                message: "shutting down".to_owned(),
            }));
        }
    }

    /// The local hello to send now, with a timestamp strictly greater than any sent before (for
    /// the peer's information; it decides nothing).
    fn hello_to_send(&self) -> Hello {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let previous = self
            .last_hello_micros
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or(0);
        let mut hello = self
            .hello
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        hello.timestamp_micros = now.max(previous + 1);
        hello
    }

    /// Removes a connection from the table if it is still the one registered for its node
    /// (idempotent).
    pub(crate) fn leave_table(&self, shared: &Shared) {
        let node = shared.remote_hello.node_id;
        let mut table = self.table();
        if table.get(&node).is_some_and(|c| c.id() == shared.id) {
            table.remove(&node);
        }
    }

    /// The connection has ended: removes it from the table (if still there) and from the counts
    /// of open connections. Called once per connection, by its task.
    pub(crate) fn unregister(&self, shared: &Shared) {
        self.leave_table(shared);
        let open = match shared.direction {
            Direction::Inbound => &self.inbound_open,
            Direction::Outbound => &self.outbound_open,
        };
        open.fetch_sub(1, Ordering::Relaxed);
    }
}

fn bind_sockets(
    addr: SocketAddr,
    config: &Config,
) -> Result<(TcpListener, Option<DatagramSocket>), Error> {
    let bind_error = |source| Error::Bind { addr, source };
    let attempts = if addr.port() == 0 { BIND_ATTEMPTS } else { 1 };
    let mut last_error = None;
    for _ in 0..attempts {
        let listener = tcp_listener(addr).map_err(bind_error)?;
        if !config.udp {
            return Ok((listener, None));
        }
        let port = listener.local_addr().map_err(bind_error)?.port();
        let udp_addr = SocketAddr::new(addr.ip(), port);
        match DatagramSocket::bind(udp_addr, config.max_datagram_len) {
            Ok(socket) => {
                let tag = match &config.security {
                    crate::Security::Tls(tls) => tls.network_tag().cloned(),
                    _ => None,
                };
                return Ok((listener, Some(socket.with_network_tag(tag))));
            }
            // The TCP port's UDP twin is taken: with port 0, try another port.
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last_error = Some(e),
            Err(e) => return Err(bind_error(e)),
        }
    }
    Err(bind_error(
        last_error.unwrap_or_else(|| io::ErrorKind::AddrInUse.into()),
    ))
}

/// No Nagle delay; the kernel's own dead-peer limits ([`Config::tcp_user_timeout`],
/// [`Config::tcp_keepalive`]). Best effort: a setting the system refuses is logged and skipped.
fn tune_stream(stream: &TcpStream, config: &Config) {
    let _ = stream.set_nodelay(true);
    let socket = SockRef::from(stream);
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    if let Some(timeout) = config.tcp_user_timeout {
        if let Err(error) = socket.set_tcp_user_timeout(Some(timeout)) {
            debug!(%error, "cannot set TCP_USER_TIMEOUT");
        }
    }
    if let Some(idle) = config.tcp_keepalive {
        let keepalive = socket2::TcpKeepalive::new().with_time(idle);
        #[cfg(not(any(target_os = "openbsd", target_os = "haiku")))]
        let keepalive = keepalive.with_interval(idle / 5);
        #[cfg(not(any(target_os = "openbsd", target_os = "haiku", target_os = "windows")))]
        let keepalive = keepalive.with_retries(3);
        if let Err(error) = socket.set_tcp_keepalive(&keepalive) {
            debug!(%error, "cannot set TCP keep-alive");
        }
    }
}

fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Rebinding a port with connections in TIME_WAIT (a restarted node) must work.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

async fn accept_loop(
    inner: Arc<Inner>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        add(&inner.counters.accepted, 1);
        tune_stream(&stream, &inner.config);
        // One address may hold only so many inbound sockets (and handshakes in progress): a
        // single host cannot take every slot.
        let Some(slot) = IpSlot::take(&inner, addr.ip()) else {
            add(&inner.counters.refused_per_ip, 1);
            debug!(%addr, "inbound connection refused: per-address limit reached");
            let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            continue;
        };
        match inner.inbound.clone().try_acquire_owned() {
            Ok(permit) => {
                let inner = inner.clone();
                tokio::spawn(async move {
                    let slots = (permit, Some(slot));
                    if let Err(error) =
                        secure(inner, stream, addr, Direction::Inbound, slots, None).await
                    {
                        debug!(%addr, %error, "inbound connection failed");
                    }
                });
            }
            Err(_) => refuse_overloaded(&inner, stream, addr),
        }
    }
    drop(listener);
    inner.listener_closed.send_replace(true);
    debug!("accept loop stopped");
}

/// Over the inbound limit: count, say `Goodbye(Overloaded)` if few others are being refused,
/// close. The established connections are untouched.
fn refuse_overloaded(inner: &Inner, mut stream: TcpStream, addr: SocketAddr) {
    add(&inner.counters.inbound_refused, 1);
    warn!(%addr, limit = inner.config.max_inbound, "inbound connection refused: limit reached");
    let Ok(permit) = inner.refusing.clone().try_acquire_owned() else {
        let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        return;
    };
    tokio::spawn(async move {
        let linger = Duration::from_millis(200);
        handshake::refuse(
            &mut stream,
            GoodbyeReason::Overloaded,
            "inbound connection limit reached",
            linger,
        )
        .await;
        // Read what the peer sent (its hello) so that closing does not reset the connection
        // before it reads our goodbye.
        let mut scratch = BytesMut::with_capacity(4 << 10);
        let _ = tokio::time::timeout(linger, async {
            while matches!(stream.read_buf(&mut scratch).await, Ok(n) if n > 0) {
                scratch.clear();
            }
        })
        .await;
        drop(permit);
    });
}

/// Handshakes on `stream`, resolves self-connections and duplicates, registers the connection and
/// spawns its task.
/// The first byte of every TLS connection (a handshake record).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Runs TLS over a new TCP connection when the endpoint uses it (the peer's node id is then
/// the one its certificate proves), then the hello exchange ([`establish`]).
async fn secure(
    inner: Arc<Inner>,
    mut stream: TcpStream,
    addr: SocketAddr,
    direction: Direction,
    slots: (OwnedSemaphorePermit, Option<IpSlot>),
    expect: Option<NodeId>,
) -> Result<Connection, Error> {
    let crate::Security::Tls(tls) = inner.config.security.clone() else {
        return establish(inner, stream, addr, direction, slots, expect, None).await;
    };
    let within = inner.config.handshake_timeout;
    let failed = |inner: &Inner, source| Err(handshake_failed(inner, addr, direction, source));
    match direction {
        Direction::Outbound => {
            let (watched, first) = FirstByte::new(stream);
            let connecting = tls
                .connector()
                .connect(crate::tls::server_name(expect), watched);
            match tokio::time::timeout(within, connecting).await {
                Err(_) => failed(&inner, HandshakeError::Timeout(within)),
                Ok(Err(error)) => failed(&inner, tls_error(&error, first.get(), tls.network())),
                Ok(Ok(secured)) => {
                    let proven = Proven::of(secured.get_ref().1, true);
                    establish_proven(inner, secured, addr, direction, slots, proven).await
                }
            }
        }
        Direction::Inbound => {
            // A TLS client speaks first; anything else is a plaintext peer, told why in its
            // own terms.
            let mut first = [0u8; 1];
            match tokio::time::timeout(within, stream.peek(&mut first)).await {
                Err(_) => return failed(&inner, HandshakeError::Timeout(within)),
                Ok(Err(error)) => return failed(&inner, HandshakeError::Io(error)),
                Ok(Ok(0)) => return failed(&inner, HandshakeError::Eof),
                Ok(Ok(_)) if first[0] != TLS_HANDSHAKE_RECORD => {
                    handshake::refuse(
                        &mut stream,
                        GoodbyeReason::ProtocolError,
                        "this node requires TLS; the peer runs with insecure plaintext",
                        Duration::from_millis(200),
                    )
                    .await;
                    return failed(&inner, HandshakeError::PlaintextPeer);
                }
                Ok(Ok(_)) => {}
            }
            match tokio::time::timeout(within, tls.acceptor().accept(stream)).await {
                Err(_) => failed(&inner, HandshakeError::Timeout(within)),
                Ok(Err(error)) => failed(&inner, tls_error(&error, None, tls.network())),
                Ok(Ok(secured)) => {
                    let proven = Proven::of(secured.get_ref().1, false);
                    establish_proven(inner, secured, addr, direction, slots, proven).await
                }
            }
        }
    }
}

/// A stream that remembers the first byte the peer sent: when TLS fails on a reply that is no
/// TLS record, a 0 (the first byte of a Chaski length prefix) tells a plaintext Chaski node
/// from anything else. One branch per read.
struct FirstByte<S> {
    inner: S,
    first: Arc<std::sync::OnceLock<u8>>,
}

impl<S> FirstByte<S> {
    fn new(inner: S) -> (FirstByte<S>, Arc<std::sync::OnceLock<u8>>) {
        let first = Arc::new(std::sync::OnceLock::new());
        (
            FirstByte {
                inner,
                first: first.clone(),
            },
            first,
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstByte<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some(&byte) = buf.filled().get(before) {
            let _ = self.first.set(byte);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstByte<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What a TLS handshake proved about the peer, and the keys it gave.
pub(crate) struct Proven {
    /// The node id of the peer's certificate.
    node: NodeId,
    /// The keys of the connection's sealed datagrams.
    keys: Option<crate::seal::DatagramKeys>,
    /// When the peer's certificate expires.
    valid_until: Option<SystemTime>,
}

impl Proven {
    /// What the (complete) TLS session `tls` proved; `None` if it proved no node key.
    fn of<D>(tls: &rustls::ConnectionCommon<D>, dialer: bool) -> Option<Proven> {
        let cert = tls.peer_certificates()?.first()?;
        let node = crate::tls::node_id_of_certificate(cert).ok()?;
        Some(Proven {
            node,
            keys: crate::seal::DatagramKeys::export(tls, dialer),
            valid_until: crate::tls::not_after(cert),
        })
    }
}

/// The hello exchange over a TLS stream whose peer proved `proven` (or nothing usable).
async fn establish_proven<S>(
    inner: Arc<Inner>,
    secured: S,
    addr: SocketAddr,
    direction: Direction,
    slots: (OwnedSemaphorePermit, Option<IpSlot>),
    proven: Option<Proven>,
) -> Result<Connection, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(proven) = proven else {
        let source = HandshakeError::Tls {
            reason: "the peer proved no node key".into(),
        };
        return Err(handshake_failed(&inner, addr, direction, source));
    };
    establish(inner, secured, addr, direction, slots, None, Some(proven)).await
}

/// Counts a failed handshake by cause, logs it, and makes the error.
fn handshake_failed(
    inner: &Inner,
    addr: SocketAddr,
    direction: Direction,
    source: HandshakeError,
) -> Error {
    let cause = source.cause();
    inner.counters.handshake_failures.add(cause);
    if is_refusal(&source) && inner.first_warning(addr.ip(), cause) {
        warn!(%addr, ?direction, error = %source, "handshake refused (logged once per address and cause)");
    } else {
        debug!(%addr, ?direction, error = %source, "handshake failed");
    }
    Error::Handshake { addr, source }
}

/// Whether a handshake failed on credentials or security settings: something an operator
/// must fix, worth a warning.
fn is_refusal(error: &HandshakeError) -> bool {
    matches!(
        error,
        HandshakeError::PlaintextPeer
            | HandshakeError::TlsPeer
            | HandshakeError::IdentityMismatch { .. }
            | HandshakeError::WrongNetworkKey
            | HandshakeError::UnknownCa
            | HandshakeError::SelfSigned
            | HandshakeError::CertificateExpired { .. }
            | HandshakeError::CertificateRevoked
            | HandshakeError::CertificateRefused { .. }
    )
}

/// The refused handshakes logged: the (address, cause) pairs, and the warnings of the current
/// minute (its start, how many).
type Warned = (
    std::collections::HashSet<(IpAddr, &'static str)>,
    (Instant, usize),
);

/// The most (address, cause) pairs remembered as logged.
const MAX_WARNED: usize = 1024;
/// The most refused-handshake warnings an endpoint logs per minute (the rest at debug level;
/// all are counted).
const MAX_WARNINGS_PER_MINUTE: usize = 20;

/// As [`handshake_failed`], and when `tell`, says why to the peer with a
/// `Goodbye(ProtocolError)` (best effort, at most 200 ms) before the stream is dropped.
async fn refuse_handshake<S>(
    inner: &Inner,
    stream: &mut S,
    addr: SocketAddr,
    direction: Direction,
    source: HandshakeError,
    tell: bool,
) -> Error
where
    S: AsyncWrite + Unpin,
{
    let message = source.to_string();
    let error = handshake_failed(inner, addr, direction, source);
    if tell {
        handshake::refuse(
            stream,
            GoodbyeReason::ProtocolError,
            &message,
            Duration::from_millis(200),
        )
        .await;
    }
    error
}

/// What a failed TLS handshake means, from the error tokio-rustls returns, the first byte
/// the peer sent (when this side dialed), and how this node's network is closed.
fn tls_error(
    error: &io::Error,
    first: Option<&u8>,
    network: Option<crate::tls::NetworkKind>,
) -> HandshakeError {
    let Some(tls) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return match error.kind() {
            io::ErrorKind::UnexpectedEof => HandshakeError::Eof,
            _ => HandshakeError::Io(io::Error::new(error.kind(), error.to_string())),
        };
    };
    if let Some((expected, found)) = crate::tls::unexpected_node(tls) {
        return HandshakeError::UnexpectedPeer { expected, found };
    }
    if let Some(refused) = certificate_error(tls, network) {
        return refused;
    }
    match tls {
        // A Chaski hello starts with a length prefix whose first byte is 0: no TLS record.
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)
            if first == Some(&0) =>
        {
            HandshakeError::PlaintextPeer
        }
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
            HandshakeError::Tls {
                reason: "the peer does not speak TLS (nor plaintext Chaski)".to_owned(),
            }
        }
        other => HandshakeError::Tls {
            reason: other.to_string(),
        },
    }
}

/// The handshake error of a refused certificate: refused here (why, in this node's terms), or
/// refused by the peer (from its alert).
fn certificate_error(
    tls: &rustls::Error,
    network: Option<crate::tls::NetworkKind>,
) -> Option<HandshakeError> {
    use rustls::{AlertDescription as A, CertificateError as C};
    Some(match tls {
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => match network {
            Some(crate::tls::NetworkKind::Key) => HandshakeError::WrongNetworkKey,
            _ => HandshakeError::UnknownCa,
        },
        rustls::Error::InvalidCertificate(
            e @ (C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. }),
        ) => HandshakeError::CertificateExpired {
            detail: e.to_string(),
        },
        rustls::Error::InvalidCertificate(C::Revoked) => HandshakeError::CertificateRevoked,
        rustls::Error::InvalidCertificate(other) => match crate::tls::refusal_of(tls) {
            Some(crate::tls::Refusal::SelfSigned) => HandshakeError::SelfSigned,
            _ => HandshakeError::Tls {
                reason: other.to_string(),
            },
        },
        rustls::Error::AlertReceived(alert) => HandshakeError::CertificateRefused {
            reason: match alert {
                A::UnknownCA | A::DecryptError => {
                    "it is in a closed network this node's credentials do not open (another network key or CA)"
                }
                A::CertificateExpired => {
                    "it finds this node's certificate expired or not yet valid"
                }
                A::CertificateRevoked => "it has revoked this node (its deny list names it)",
                A::CertificateUnknown | A::BadCertificate | A::UnsupportedCertificate => {
                    "it is in a closed network and this node has no credentials for it"
                }
                _ => return None,
            },
        },
        _ => return None,
    })
}

/// A handshake error for an i/o error that carries a TLS error (an alert the peer sent after
/// its side of the TLS handshake, refusing this node's certificate).
fn after_tls(error: HandshakeError, network: Option<crate::tls::NetworkKind>) -> HandshakeError {
    match &error {
        HandshakeError::Io(io)
            if io
                .get_ref()
                .is_some_and(|e| e.downcast_ref::<rustls::Error>().is_some()) =>
        {
            tls_error(io, None, network)
        }
        _ => error,
    }
}

async fn establish<S>(
    inner: Arc<Inner>,
    mut stream: S,
    remote_addr: SocketAddr,
    direction: Direction,
    (permit, slot): (OwnedSemaphorePermit, Option<IpSlot>),
    expect: Option<NodeId>,
    proven: Option<Proven>,
) -> Result<Connection, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = &inner.config;
    let local_hello = inner.hello_to_send();
    let mut encoded = BytesMut::new();
    // The local hello is ours: if it is too large that is a bug in the caller's hello, refuse.
    if let Err(error) = encode_frame(
        &Frame::Hello(local_hello.clone()),
        &mut encoded,
        MAX_HELLO_LEN,
    ) {
        warn!(%error, "the local hello is too large");
        return Err(Error::Handshake {
            addr: remote_addr,
            source: HandshakeError::Io(io::Error::new(io::ErrorKind::InvalidInput, error)),
        });
    }
    let exchanged = tokio::time::timeout(
        config.handshake_timeout,
        handshake::exchange(&mut stream, &encoded, expect),
    )
    .await
    .unwrap_or(Err(HandshakeError::Timeout(config.handshake_timeout)));
    // The handshake is over (well or not): the address's handshake slot is free again.
    if let Some(slot) = &slot {
        slot.handshake_done();
    }
    let network = match &config.security {
        crate::Security::Tls(tls) => tls.network(),
        _ => None,
    };
    let (remote_hello, leftover) = match exchanged {
        Ok(exchanged) => exchanged,
        Err(error) => {
            let error = after_tls(error, network);
            // A peer that sent something is told why; one that sent nothing is not.
            let tell = matches!(
                error,
                HandshakeError::Decode(_) | HandshakeError::UnexpectedFrame { .. }
            );
            return Err(
                refuse_handshake(&inner, &mut stream, remote_addr, direction, error, tell).await,
            );
        }
    };
    let node = remote_hello.node_id;
    let (keys, valid_until, proven) = match proven {
        Some(p) => (p.keys, p.valid_until, Some(p.node)),
        None => (None, None, None),
    };
    if let Some(proven) = proven.filter(|&p| p != node) {
        let error = HandshakeError::IdentityMismatch {
            claimed: node,
            proven,
        };
        return Err(
            refuse_handshake(&inner, &mut stream, remote_addr, direction, error, true).await,
        );
    }
    if node == inner.node_id {
        add(&inner.counters.self_connections, 1);
        debug!(%remote_addr, "connection to self closed");
        handshake::refuse(
            &mut stream,
            GoodbyeReason::SelfConnection,
            "connection to self",
            Duration::from_millis(200),
        )
        .await;
        return Err(Error::SelfConnection { addr: remote_addr });
    }
    // Only what this endpoint knows first-hand decides a tie-break: who dialed, and the order in
    // which the handshakes completed here. Never a value the peer chooses (its hello's timestamp
    // would let anyone claiming a node's id take over that node's live connection).
    let id = ConnectionId(inner.next_id.fetch_add(1, Ordering::Relaxed));
    let dialer_key = match direction {
        Direction::Outbound => (inner.node_id, id.0),
        Direction::Inbound => (node, id.0),
    };

    let (tx, rx) = mpsc::channel(config.send_queue);
    let (reader, writer) = tokio::io::split(stream);
    let connection = Connection {
        shared: Arc::new(Shared {
            id,
            direction,
            remote_addr,
            remote_hello,
            dialer_key,
            max_frame_len: config.max_frame_len,
            limits: FrameLimits {
                max_frame_len: config.max_frame_len,
                max_control_frame_len: config.max_control_frame_len(),
            },
            established_at: Instant::now(),
            traffic: Traffic::default(),
            closed: AtomicBool::new(false),
            write: WriteSide::new(writer),
            endpoint_traffic: inner.traffic.clone(),
            endpoint: Arc::downgrade(&inner),
            queued_bytes: AtomicUsize::new(0),
            max_queued_bytes: config.send_queue_bytes,
            room: tokio::sync::Notify::new(),
            abort: Mutex::new(None),
            abort_signal: tokio::sync::Notify::new(),
            datagram_keys: keys,
            peer_valid_until: valid_until,
        }),
        tx,
    };

    // Duplicate resolution: of two connections between the same nodes, the one with the smaller
    // (dialer id, local order) survives: the one dialed by the smaller id, and of two dialed by
    // the same node, the one established first here (a live connection is never replaced by a
    // newer one from the same dialer; a peer that lost its side re-dials with backoff until
    // this side notices, within `peer_timeout`).
    enum Decision {
        Shutdown,
        Duplicate(ConnectionId),
        Registered(Option<Connection>),
    }
    let decision = {
        let mut table = inner.table();
        if inner.shutting_down.load(Ordering::Acquire) {
            Decision::Shutdown
        } else {
            match table.get(&node) {
                // A connection that has been up for a while is kept, whoever dialed: only
                // simultaneous dials are settled by the dialer rule, so that a newcomer
                // claiming a connected node's id cannot take over its link.
                Some(existing)
                    if existing.shared.dialer_key <= dialer_key
                        || existing.shared.established_at.elapsed() > SIMULTANEOUS_DIALS =>
                {
                    Decision::Duplicate(existing.id())
                }
                _ => Decision::Registered(table.insert(node, connection.clone())),
            }
        }
    };
    let loser = match decision {
        Decision::Registered(loser) => loser,
        Decision::Shutdown => {
            connection
                .shared
                .write
                .refuse(
                    GoodbyeReason::Shutdown,
                    "shutting down",
                    Duration::from_millis(200),
                )
                .await;
            return Err(Error::Shutdown);
        }
        Decision::Duplicate(existing) => {
            add(&inner.counters.duplicates, 1);
            debug!(%remote_addr, node = %node.short(), %existing, "duplicate connection closed");
            connection
                .shared
                .write
                .refuse(
                    GoodbyeReason::Duplicate,
                    "duplicate connection",
                    Duration::from_millis(200),
                )
                .await;
            return Err(Error::Duplicate { node, existing });
        }
    };
    if let Some(loser) = loser {
        add(&inner.counters.duplicates, 1);
        debug!(node = %node.short(), loser = %loser.id(), winner = %connection.id(), "duplicate connection replaced");
        // Never wait on the loser's queue here: close it from its own task.
        tokio::spawn(async move {
            loser
                .close(GoodbyeReason::Duplicate, "duplicate connection")
                .await;
        });
    }
    add(&inner.counters.established, 1);
    match direction {
        Direction::Inbound => add(&inner.inbound_open, 1),
        Direction::Outbound => add(&inner.outbound_open, 1),
    }
    debug!(connection = %connection.id(), %remote_addr, ?direction, node = %node.short(), "connection established");
    if let Some(until) = valid_until {
        watch_expiry(&inner, connection.clone(), until);
    }
    tokio::spawn(connection::run(Parts {
        reader,
        leftover,
        connection: connection.clone(),
        rx,
        inner,
        permit: (permit, slot),
    }));
    Ok(connection)
}

/// Closes `connection` when its peer's certificate expires (if it is still up then), so that
/// a member whose certificate lapses does not stay in the network on an old connection.
fn watch_expiry(inner: &Arc<Inner>, connection: Connection, until: SystemTime) {
    let inner = Arc::downgrade(inner);
    let left = move || {
        until
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    };
    // Certificates valid for centuries (self-signed ones) need no watch.
    if left() > Duration::from_secs(10 * 365 * 24 * 3600) {
        return;
    }
    tokio::spawn(async move {
        // The wall clock is read again at least hourly: tokio's clock does not count the time
        // a machine spends suspended, the certificate's validity does.
        let expired = async {
            while !left().is_zero() {
                tokio::time::sleep(left().min(Duration::from_secs(3600))).await;
            }
        };
        tokio::select! {
            () = expired => {
                if let Some(inner) = inner.upgrade() {
                    add(&inner.counters.certificates_expired, 1);
                }
                info!(peer = %connection.node_id().short(), addr = %connection.remote_addr(), "closing a connection: the peer's certificate expired");
                connection.abort(GoodbyeReason::Unauthorized, "your certificate expired");
            }
            () = connection.closed() => {}
        }
    });
}

/// Inbound sockets and handshakes in progress from one IP address, counted while held.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IpCount {
    sockets: usize,
    handshakes: usize,
}

/// One inbound socket's place in the per-address counts; released when dropped (when the
/// handshake fails or the connection ends).
#[derive(Debug)]
pub(crate) struct IpSlot {
    inner: Arc<Inner>,
    ip: IpAddr,
    handshaking: AtomicBool,
}

impl IpSlot {
    /// A slot for a socket from `ip`, or `None` at the per-address limits
    /// ([`Config::max_inbound_per_ip`], [`Config::max_handshakes_per_ip`]).
    fn take(inner: &Arc<Inner>, ip: IpAddr) -> Option<IpSlot> {
        let mut per_ip = inner.per_ip();
        let full = per_ip.len() >= MAX_TRACKED_IPS && !per_ip.contains_key(&ip);
        let count = per_ip.entry(ip).or_default();
        if full
            || count.sockets >= inner.config.max_inbound_per_ip
            || count.handshakes >= inner.config.max_handshakes_per_ip
        {
            if count.sockets == 0 {
                per_ip.remove(&ip);
            }
            return None;
        }
        count.sockets += 1;
        count.handshakes += 1;
        Some(IpSlot {
            inner: inner.clone(),
            ip,
            handshaking: AtomicBool::new(true),
        })
    }

    fn handshake_done(&self) {
        if self.handshaking.swap(false, Ordering::AcqRel) {
            let mut per_ip = self.inner.per_ip();
            if let Some(count) = per_ip.get_mut(&self.ip) {
                count.handshakes = count.handshakes.saturating_sub(1);
            }
        }
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        self.handshake_done();
        let mut per_ip = self.inner.per_ip();
        if let Some(count) = per_ip.get_mut(&self.ip) {
            count.sockets = count.sockets.saturating_sub(1);
            if count.sockets == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}
