//! UDP: one frame per datagram (with its length prefix), unicast, broadcast and multicast. Bad
//! datagrams are dropped and counted by cause, never handed up.
//!
//! In a closed network every frame sent is tagged with the network's key and untagged ones are
//! dropped ([`DatagramSocket::with_network_tag`]); between two connected nodes best-effort
//! frames are sealed with their connection's keys ([`DatagramSocket::try_send_sealed_to`],
//! [`DatagramSocket::open`]). The layouts are in `seal`.

use std::{
    borrow::Cow,
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
};

use bytes::{Bytes, BytesMut};
use chaski_wire::{Frame, LENGTH_PREFIX_LEN, decode_datagram, encode_frame};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::UdpSocket;
use tracing::trace;

use crate::{
    DatagramError, DatagramStats, EncodedFrame, MAX_DATAGRAM_LEN_LIMIT,
    seal::{Opener, SEAL_OVERHEAD, SEALED, Sealer, TAG_LEN, TAG_OVERHEAD, TAGGED},
    stats::{DatagramCounters, add},
    tls::NetworkTag,
};

/// A datagram received: a frame, or a sealed datagram to open with its connection's key.
#[derive(Debug)]
#[non_exhaustive]
pub enum Received {
    /// A valid frame (tagged by a member, in a closed network).
    Frame(Frame),
    /// A sealed datagram: open it with [`DatagramSocket::open`] and the key of the connection
    /// its sender has.
    Sealed(Sealed),
}

/// A sealed datagram, not opened yet.
#[derive(Debug)]
pub struct Sealed(BytesMut);

/// A UDP socket carrying Chaski frames, one per datagram. Sending and receiving take `&self`, so
/// it can be shared (for example in an `Arc`) between a receiving task and senders.
///
/// The maximum datagram length (length prefix included) bounds both directions: larger frames are
/// refused when sending ([`DatagramError::TooLarge`]) and dropped when received (counted as
/// `too_large` in [`DatagramStats::dropped`]).
#[derive(Debug)]
pub struct DatagramSocket {
    socket: UdpSocket,
    max_len: usize,
    counters: DatagramCounters,
    tag: Option<NetworkTag>,
}

impl DatagramSocket {
    /// Binds a UDP socket on `addr` for datagrams of at most `max_datagram_len` bytes (capped at
    /// [`MAX_DATAGRAM_LEN_LIMIT`]). Must be called within a tokio runtime.
    pub fn bind(addr: SocketAddr, max_datagram_len: usize) -> io::Result<DatagramSocket> {
        DatagramSocket::bind_with(addr, max_datagram_len, false)
    }

    /// Like [`DatagramSocket::bind`], with `SO_REUSEADDR` (and `SO_REUSEPORT` on Unix) so that
    /// several sockets (several nodes on one host) can bind the same multicast or broadcast port
    /// and all receive its datagrams.
    pub fn bind_shared(addr: SocketAddr, max_datagram_len: usize) -> io::Result<DatagramSocket> {
        DatagramSocket::bind_with(addr, max_datagram_len, true)
    }

    fn bind_with(addr: SocketAddr, max_len: usize, shared: bool) -> io::Result<DatagramSocket> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        if shared {
            socket.set_reuse_address(true)?;
            #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
            socket.set_reuse_port(true)?;
        }
        // Receive only the groups this socket joined, not those any socket on the host joined
        // (Linux's default).
        #[cfg(target_os = "linux")]
        if addr.is_ipv6() {
            socket.set_multicast_all_v6(false)?;
        } else {
            socket.set_multicast_all_v4(false)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        Ok(DatagramSocket {
            socket: UdpSocket::from_std(socket.into())?,
            max_len: max_len.clamp(LENGTH_PREFIX_LEN + 1, MAX_DATAGRAM_LEN_LIMIT),
            counters: DatagramCounters::default(),
            tag: None,
        })
    }

    /// Tags every frame sent with `tag` and drops every frame received without a valid tag
    /// (counted as `untagged` or `bad_tag`): a closed network's beacons. With `None` (an open
    /// network) frames go untagged and tagged ones are dropped (`unexpected_tag`).
    pub fn with_network_tag(mut self, tag: Option<NetworkTag>) -> DatagramSocket {
        self.tag = tag;
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The maximum datagram length, length prefix included.
    pub fn max_datagram_len(&self) -> usize {
        self.max_len
    }

    /// Encodes `frame` and sends it to `target` (unicast, broadcast or multicast address).
    /// Returns the bytes sent.
    pub async fn send_to(&self, frame: &Frame, target: SocketAddr) -> Result<usize, DatagramError> {
        let mut buf = BytesMut::new();
        encode_frame(frame, &mut buf, self.max_len - LENGTH_PREFIX_LEN).map_err(|e| match e {
            chaski_wire::EncodeError::FrameTooLarge { len, .. } => DatagramError::TooLarge {
                len: len + LENGTH_PREFIX_LEN,
                max: self.max_len,
            },
            other => DatagramError::Encode(other),
        })?;
        let datagram = self.tagged(&buf)?;
        self.send_bytes(&datagram, target).await
    }

    /// Sends an already encoded frame to `target` (for example the same beacon to several
    /// addresses).
    pub async fn send_encoded_to(
        &self,
        frame: &EncodedFrame,
        target: SocketAddr,
    ) -> Result<usize, DatagramError> {
        let datagram = self.tagged(frame.as_bytes())?;
        self.send_bytes(&datagram, target).await
    }

    fn check_len(&self, len: usize) -> Result<(), DatagramError> {
        if len > self.max_len {
            return Err(DatagramError::TooLarge {
                len,
                max: self.max_len,
            });
        }
        Ok(())
    }

    /// The datagram that carries `frame`: tagged in a closed network, else the frame itself.
    fn tagged<'a>(&self, frame: &'a [u8]) -> Result<Cow<'a, [u8]>, DatagramError> {
        let Some(tag) = &self.tag else {
            self.check_len(frame.len())?;
            return Ok(Cow::Borrowed(frame));
        };
        self.check_len(frame.len() + TAG_OVERHEAD)?;
        let mut datagram = Vec::with_capacity(frame.len() + TAG_OVERHEAD);
        datagram.push(TAGGED);
        datagram.extend_from_slice(frame);
        let mac = tag.sign(&datagram);
        datagram.extend_from_slice(mac.as_ref());
        Ok(Cow::Owned(datagram))
    }

    /// Counts the outcome of a send.
    fn counted(&self, sent: io::Result<usize>) -> Result<usize, DatagramError> {
        match sent {
            Ok(n) => {
                add(&self.counters.sent, 1);
                add(&self.counters.bytes_out, n as u64);
                Ok(n)
            }
            Err(e) => {
                add(&self.counters.send_errors, 1);
                Err(DatagramError::Io(e))
            }
        }
    }

    /// Sends an already encoded frame to `target` without waiting: when the socket's send buffer
    /// is full the datagram is not sent and the error is `Io` with kind `WouldBlock` (counted in
    /// `send_errors`). For callers that must never wait on the network, such as a node's driver
    /// sending best-effort messages.
    pub fn try_send_encoded_to(
        &self,
        frame: &EncodedFrame,
        target: SocketAddr,
    ) -> Result<usize, DatagramError> {
        let datagram = self.tagged(frame.as_bytes())?;
        self.counted(self.socket.try_send_to(&datagram, target))
    }

    /// Seals `frame` with a connection's `sealer` and sends it to `target` without waiting
    /// (as [`try_send_encoded_to`](DatagramSocket::try_send_encoded_to)): a best-effort
    /// message to a connected peer, readable only by it. The datagram is
    /// [`SEAL_OVERHEAD`](crate::SEAL_OVERHEAD) bytes longer than the frame.
    pub fn try_send_sealed_to(
        &self,
        frame: &EncodedFrame,
        sealer: &Sealer,
        target: SocketAddr,
    ) -> Result<usize, DatagramError> {
        self.check_len(frame.len() + SEAL_OVERHEAD)?;
        let sealed = sealer.seal(frame.as_bytes()).ok_or_else(|| {
            DatagramError::Io(io::Error::other(
                "the connection's datagram counter is exhausted",
            ))
        })?;
        self.counted(self.socket.try_send_to(&sealed, target))
    }

    /// Opens a sealed datagram with the `opener` of its sender's connection. One that does
    /// not open, or opens a second time, is dropped and counted (`unauthenticated`,
    /// `replayed`); `None` then.
    pub fn open(&self, sealed: Sealed, opener: &mut Opener) -> Option<Frame> {
        let mut bytes = sealed.0;
        let n = bytes.len();
        let frame = match opener.open(&mut bytes) {
            Ok(range) => self.decoded(bytes.freeze().slice(range), n),
            Err(e) => Err(e.cause()),
        };
        frame.map_err(|cause| self.counters.dropped.add(cause)).ok()
    }

    /// Decodes the frame of a datagram of `n` bytes and counts it received; the cause of its
    /// drop if it is not a valid frame.
    fn decoded(&self, frame: Bytes, n: usize) -> Result<Frame, &'static str> {
        let frame =
            decode_datagram(frame, self.max_len - LENGTH_PREFIX_LEN).map_err(|e| e.cause())?;
        add(&self.counters.received, 1);
        add(&self.counters.bytes_in, n as u64);
        Ok(frame)
    }

    /// Drops a sealed datagram from an address with no connection (counted as `no_session`).
    pub fn drop_unknown(&self, sealed: Sealed) {
        drop(sealed);
        self.counters.dropped.add("no_session");
    }

    async fn send_bytes(
        &self,
        datagram: &[u8],
        target: SocketAddr,
    ) -> Result<usize, DatagramError> {
        self.counted(self.socket.send_to(datagram, target).await)
    }

    /// Receives the next valid frame and its sender's address. Garbage, truncated, padded or
    /// oversized datagrams are dropped, counted by cause and skipped; so are sealed ones
    /// (`no_session`: use [`recv_any`](DatagramSocket::recv_any) to receive those).
    pub async fn recv(&self) -> io::Result<(Frame, SocketAddr)> {
        loop {
            match self.recv_any().await? {
                (Received::Frame(frame), from) => return Ok((frame, from)),
                (Received::Sealed(sealed), _) => self.drop_unknown(sealed),
            }
        }
    }

    /// Receives the next valid frame or sealed datagram, and its sender's address.
    pub async fn recv_any(&self) -> io::Result<(Received, SocketAddr)> {
        loop {
            // One byte more than the maximum, so that an oversized datagram is detectable.
            let mut buf = BytesMut::with_capacity(self.max_len + 1);
            let (n, from) = self.socket.recv_buf_from(&mut buf).await?;
            if let Some(received) = self.check(buf, n, from) {
                return Ok((received, from));
            }
        }
    }

    /// Receives a datagram if one is ready now, without waiting; invalid ones are dropped, counted
    /// and skipped. `Ok(None)` when none is ready.
    pub fn try_recv(&self) -> io::Result<Option<(Frame, SocketAddr)>> {
        loop {
            match self.try_recv_any()? {
                Some((Received::Frame(frame), from)) => return Ok(Some((frame, from))),
                Some((Received::Sealed(sealed), _)) => self.drop_unknown(sealed),
                None => return Ok(None),
            }
        }
    }

    /// As [`try_recv`](DatagramSocket::try_recv), sealed datagrams included.
    pub fn try_recv_any(&self) -> io::Result<Option<(Received, SocketAddr)>> {
        loop {
            let mut buf = BytesMut::with_capacity(self.max_len + 1);
            let (n, from) = match self.socket.try_recv_buf_from(&mut buf) {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            };
            if let Some(received) = self.check(buf, n, from) {
                return Ok(Some((received, from)));
            }
        }
    }

    fn check(&self, mut buf: BytesMut, n: usize, from: SocketAddr) -> Option<Received> {
        let cause = if n == 0 {
            "empty"
        } else if n > self.max_len {
            "too_large"
        } else if buf[0] == SEALED {
            buf.truncate(n);
            return Some(Received::Sealed(Sealed(buf)));
        } else {
            // Small datagrams do not keep a whole receive buffer alive.
            let datagram = if buf.capacity() > 4 * n {
                Bytes::copy_from_slice(&buf[..n])
            } else {
                buf.freeze()
            };
            let frame = match (&self.tag, datagram[0] == TAGGED) {
                (None, false) => Ok(datagram),
                (None, true) => Err("unexpected_tag"),
                (Some(_), false) => Err("untagged"),
                (Some(tag), true) => {
                    // `[TAGGED][frame][mac]`, the mac over everything before it.
                    let body = n.checked_sub(TAG_LEN).filter(|&end| end > 1);
                    match body {
                        Some(end) if tag.verify(&datagram[..end], &datagram[end..]) => {
                            Ok(datagram.slice(1..end))
                        }
                        _ => Err("bad_tag"),
                    }
                }
            };
            match frame.and_then(|frame| self.decoded(frame, n)) {
                Ok(frame) => return Some(Received::Frame(frame)),
                Err(cause) => cause,
            }
        };
        trace!(%from, len = n, cause, "dropped a datagram");
        self.counters.dropped.add(cause);
        None
    }

    /// Joins the IPv4 multicast `group` on the interface with address `interface`
    /// (`127.0.0.1` for loopback; `0.0.0.0` lets the system choose).
    pub fn join_multicast_v4(&self, group: Ipv4Addr, interface: Ipv4Addr) -> io::Result<()> {
        self.socket.join_multicast_v4(group, interface)
    }

    /// Leaves an IPv4 multicast group joined with [`DatagramSocket::join_multicast_v4`].
    pub fn leave_multicast_v4(&self, group: Ipv4Addr, interface: Ipv4Addr) -> io::Result<()> {
        self.socket.leave_multicast_v4(group, interface)
    }

    /// Joins the IPv6 multicast `group` on the interface with index `interface` (0 lets the
    /// system choose).
    pub fn join_multicast_v6(&self, group: &Ipv6Addr, interface: u32) -> io::Result<()> {
        self.socket.join_multicast_v6(group, interface)
    }

    /// Leaves an IPv6 multicast group joined with [`DatagramSocket::join_multicast_v6`].
    pub fn leave_multicast_v6(&self, group: &Ipv6Addr, interface: u32) -> io::Result<()> {
        self.socket.leave_multicast_v6(group, interface)
    }

    /// Sends IPv4 multicast through the interface with address `interface`.
    pub fn set_multicast_if_v4(&self, interface: Ipv4Addr) -> io::Result<()> {
        SockRef::from(&self.socket).set_multicast_if_v4(&interface)
    }

    /// Sends IPv6 multicast through the interface with index `interface`.
    pub fn set_multicast_if_v6(&self, interface: u32) -> io::Result<()> {
        SockRef::from(&self.socket).set_multicast_if_v6(interface)
    }

    /// Whether IPv4 multicast sent is looped back to the sending host (default: on).
    pub fn set_multicast_loop_v4(&self, on: bool) -> io::Result<()> {
        self.socket.set_multicast_loop_v4(on)
    }

    /// Whether IPv6 multicast sent is looped back to the sending host (default: on).
    pub fn set_multicast_loop_v6(&self, on: bool) -> io::Result<()> {
        self.socket.set_multicast_loop_v6(on)
    }

    /// The time-to-live of IPv4 multicast sent (default: 1, the local network).
    pub fn set_multicast_ttl_v4(&self, ttl: u32) -> io::Result<()> {
        self.socket.set_multicast_ttl_v4(ttl)
    }

    /// Whether sending to broadcast addresses is allowed (default: off).
    pub fn set_broadcast(&self, on: bool) -> io::Result<()> {
        self.socket.set_broadcast(on)
    }

    /// The datagrams dropped on receipt so far, all causes (cheap: no allocation).
    pub fn dropped_total(&self) -> u64 {
        self.counters.dropped.total()
    }

    /// A snapshot of the socket's counters.
    pub fn stats(&self) -> DatagramStats {
        self.counters.snapshot()
    }
}
