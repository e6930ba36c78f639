//! The endpoint's configuration: limits, timeouts and queue sizes, checked once in `build()`.

use std::time::Duration;

use chaski_wire::{DEFAULT_MAX_FRAME_LEN, LENGTH_PREFIX_LEN, MAX_FRAME_LEN_LIMIT};

use crate::ConfigError;

/// The largest UDP payload IPv4 can carry (65,535 minus the IP and UDP headers): the upper bound
/// of [`ConfigBuilder::max_datagram_len`].
pub const MAX_DATAGRAM_LEN_LIMIT: usize = 65_507;

/// The largest `Hello` frame accepted during the handshake (body bytes): 64 KiB. A peer that
/// announces more is rejected with `DecodeError::FrameTooLarge` before anything is allocated.
pub const MAX_HELLO_LEN: usize = 64 << 10;

/// The configuration of an [`Endpoint`](crate::Endpoint). Build it with [`Config::builder`];
/// [`Config::default`] is the documented defaults.
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) max_inbound: usize,
    pub(crate) max_outbound: usize,
    pub(crate) max_inbound_per_ip: usize,
    pub(crate) max_handshakes_per_ip: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) send_queue: usize,
    pub(crate) send_queue_bytes: usize,
    pub(crate) event_queue: usize,
    pub(crate) read_buffer: usize,
    pub(crate) max_write_batch: usize,
    pub(crate) max_frame_len: usize,
    pub(crate) max_control_frame_len: usize,
    pub(crate) max_datagram_len: usize,
    pub(crate) linger: Duration,
    pub(crate) udp: bool,
    pub(crate) tcp_user_timeout: Option<Duration>,
    pub(crate) tcp_keepalive: Option<Duration>,
    pub(crate) security: crate::Security,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_inbound: 1024,
            max_outbound: 256,
            max_inbound_per_ip: 256,
            max_handshakes_per_ip: 64,
            handshake_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            send_queue: 4096,
            send_queue_bytes: 32 << 20,
            event_queue: 1024,
            read_buffer: 64 << 10,
            max_write_batch: 256 << 10,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_control_frame_len: chaski_wire::DEFAULT_MAX_CONTROL_FRAME_LEN,
            max_datagram_len: 8 << 10,
            linger: Duration::from_secs(1),
            udp: true,
            tcp_user_timeout: Some(Duration::from_secs(10)),
            tcp_keepalive: Some(Duration::from_secs(5)),
            security: crate::Security::InsecurePlaintext,
        }
    }
}

impl Config {
    /// A builder starting from the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            config: Config::default(),
        }
    }

    /// Concurrent inbound connections accepted (handshaking or established).
    pub fn max_inbound(&self) -> usize {
        self.max_inbound
    }

    /// Concurrent outbound connections (dialing, handshaking or established).
    pub fn max_outbound(&self) -> usize {
        self.max_outbound
    }

    /// How long a peer has to complete the handshake.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// How long a dial may take to get a TCP connection.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Frames each connection's send queue holds.
    pub fn send_queue(&self) -> usize {
        self.send_queue
    }

    /// Events the endpoint's event queue holds.
    pub fn event_queue(&self) -> usize {
        self.event_queue
    }

    /// Bytes read per read call.
    pub fn read_buffer(&self) -> usize {
        self.read_buffer
    }

    /// Bytes the writer gathers into one write call at most.
    pub fn max_write_batch(&self) -> usize {
        self.max_write_batch
    }

    /// The maximum frame length (body bytes, without the length prefix), both directions.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// How connections are protected.
    pub fn security(&self) -> &crate::Security {
        &self.security
    }

    /// The same settings with `security` (no other setting depends on it).
    pub fn with_security(mut self, security: crate::Security) -> Config {
        self.security = security;
        self
    }

    /// The maximum control frame length (every kind but messages and status responses),
    /// received.
    pub fn max_control_frame_len(&self) -> usize {
        self.max_control_frame_len.min(self.max_frame_len)
    }

    /// The maximum UDP datagram (length prefix included), both directions.
    pub fn max_datagram_len(&self) -> usize {
        self.max_datagram_len
    }

    /// How long a closed connection waits for the peer to close its side.
    pub fn linger(&self) -> Duration {
        self.linger
    }

    /// See [`ConfigBuilder::max_inbound_per_ip`].
    pub fn max_inbound_per_ip(&self) -> usize {
        self.max_inbound_per_ip
    }

    /// See [`ConfigBuilder::max_handshakes_per_ip`].
    pub fn max_handshakes_per_ip(&self) -> usize {
        self.max_handshakes_per_ip
    }

    /// See [`ConfigBuilder::send_queue_bytes`].
    pub fn send_queue_bytes(&self) -> usize {
        self.send_queue_bytes
    }

    /// See [`ConfigBuilder::tcp_user_timeout`].
    pub fn tcp_user_timeout(&self) -> Option<Duration> {
        self.tcp_user_timeout
    }

    /// See [`ConfigBuilder::tcp_keepalive`].
    pub fn tcp_keepalive(&self) -> Option<Duration> {
        self.tcp_keepalive
    }

    /// Whether the endpoint binds a UDP socket on its TCP port.
    pub fn udp(&self) -> bool {
        self.udp
    }
}

/// Builds a [`Config`]; every setter documents its default and constraints, which
/// [`ConfigBuilder::build`] checks.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    config: Config,
}

impl ConfigBuilder {
    /// The most inbound connections open at once, counting those still in their handshake. A
    /// connection accepted over the limit is sent `Goodbye(Overloaded)`, closed and counted in
    /// [`EndpointStats::inbound_refused`](crate::EndpointStats::inbound_refused); the others are
    /// untouched.
    ///
    /// Default: 1024. Must be at least 1.
    pub fn max_inbound(mut self, max: usize) -> ConfigBuilder {
        self.config.max_inbound = max;
        self
    }

    /// The most outbound connections open at once, counting dials in progress; a dial over the
    /// limit fails with [`Error::TooManyConnections`](crate::Error::TooManyConnections).
    ///
    /// Default: 256. Must be at least 1.
    pub fn max_outbound(mut self, max: usize) -> ConfigBuilder {
        self.config.max_outbound = max;
        self
    }

    /// How long a peer has to complete the handshake (send its `Hello`) once the TCP connection
    /// is up; a peer that does not is dropped.
    ///
    /// Default: 5 s. Must not be zero.
    pub fn handshake_timeout(mut self, timeout: Duration) -> ConfigBuilder {
        self.config.handshake_timeout = timeout;
        self
    }

    /// How long [`Endpoint::connect`](crate::Endpoint::connect) waits for the TCP connection
    /// (the handshake then has its own timeout).
    ///
    /// Default: 10 s. Must not be zero.
    pub fn connect_timeout(mut self, timeout: Duration) -> ConfigBuilder {
        self.config.connect_timeout = timeout;
        self
    }

    /// Frames each connection's send queue holds. When it is full, `send` waits and `try_send`
    /// fails with [`SendError::Full`](crate::SendError::Full). A larger queue lets the writer
    /// coalesce more frames per write call under load. The bound is in frames, not bytes: the
    /// memory a full queue holds is the sum of its frames' sizes (a payload queued on several
    /// connections is shared, not copied).
    ///
    /// Default: 4096. Must be at least 1.
    pub fn send_queue(mut self, frames: usize) -> ConfigBuilder {
        self.config.send_queue = frames;
        self
    }

    /// Events the endpoint's event queue (the fan-in of every connection) holds. Each event is a
    /// batch of frames from one read call. When it is full, connections stop reading from their
    /// sockets until the consumer catches up (TCP backpressure); nothing is dropped.
    ///
    /// Default: 1024. Must be at least 1.
    pub fn event_queue(mut self, events: usize) -> ConfigBuilder {
        self.config.event_queue = events;
        self
    }

    /// Bytes each connection tries to read per read call; a frame larger than this is read into a
    /// buffer grown to its size (at most [`ConfigBuilder::max_frame_len`]).
    ///
    /// Default: 64 KiB. Must be at least 1 KiB.
    pub fn read_buffer(mut self, bytes: usize) -> ConfigBuilder {
        self.config.read_buffer = bytes;
        self
    }

    /// The most bytes the writer gathers from the send queue before it issues a write call. Frames
    /// queued while a write is in progress are coalesced into the next one; a lone frame is written
    /// at once.
    ///
    /// Default: 256 KiB. Must be at least 1 KiB.
    pub fn max_write_batch(mut self, bytes: usize) -> ConfigBuilder {
        self.config.max_write_batch = bytes;
        self
    }

    /// The maximum frame length (body bytes, without the 4-byte prefix). Larger frames are refused
    /// when sending ([`SendError::Encode`](crate::SendError::Encode)) and close the connection when
    /// received (`DecodeError::FrameTooLarge`).
    ///
    /// Default: [`DEFAULT_MAX_FRAME_LEN`] (16 MiB). Must be between 1 KiB and
    /// [`MAX_FRAME_LEN_LIMIT`].
    pub fn max_frame_len(mut self, bytes: usize) -> ConfigBuilder {
        self.config.max_frame_len = bytes;
        self
    }

    /// How connections are protected: [`Security::Tls`](crate::Security::Tls) (TLS 1.3, both
    /// sides proving their node keys; the hello's node id must then be the identity's) or
    /// [`Security::InsecurePlaintext`](crate::Security::InsecurePlaintext).
    ///
    /// Default: insecure plaintext, as the transport alone has no identity; a Chaski node
    /// (`chaski-streamer`) sets TLS unless told otherwise. A TLS endpoint refuses plaintext
    /// peers and the reverse, each with [`HandshakeError::PlaintextPeer`] or
    /// [`HandshakeError::TlsPeer`](crate::HandshakeError::TlsPeer) on the side that can tell.
    ///
    /// [`HandshakeError::PlaintextPeer`]: crate::HandshakeError::PlaintextPeer
    pub fn security(mut self, security: crate::Security) -> ConfigBuilder {
        self.config.security = security;
        self
    }

    /// The maximum length of a received control frame: any kind but `Publish` (messages) and
    /// `StatusResponse`. A longer one closes the connection
    /// (`DecodeError::ControlFrameTooLarge`, counted as `too_large`) as soon as its first bytes
    /// arrive: a control frame is decoded whole before its lists are checked, so this bounds
    /// what decoding one can cost. Capped by `max_frame_len`.
    ///
    /// Default: [`DEFAULT_MAX_CONTROL_FRAME_LEN`](chaski_wire::DEFAULT_MAX_CONTROL_FRAME_LEN)
    /// (1 MiB), which every frame a Chaski node sends fits. Must be at least 1 KiB.
    pub fn max_control_frame_len(mut self, bytes: usize) -> ConfigBuilder {
        self.config.max_control_frame_len = bytes;
        self
    }

    /// The maximum UDP datagram, length prefix included. Larger datagrams are refused when sending
    /// and dropped (and counted) when received.
    ///
    /// Default: 8 KiB. Must be at least 64 and at most [`MAX_DATAGRAM_LEN_LIMIT`], and at most
    /// `max_frame_len + 4`.
    pub fn max_datagram_len(mut self, bytes: usize) -> ConfigBuilder {
        self.config.max_datagram_len = bytes;
        self
    }

    /// After a graceful close, how long the connection keeps reading (and discarding) until the
    /// peer closes its side, so that our `Goodbye` is not destroyed by a reset.
    ///
    /// Default: 1 s. May be zero.
    pub fn linger(mut self, linger: Duration) -> ConfigBuilder {
        self.config.linger = linger;
        self
    }

    /// Whether [`Endpoint::bind`](crate::Endpoint::bind) also binds a UDP socket on the TCP
    /// port.
    ///
    /// Default: true.
    pub fn udp(mut self, udp: bool) -> ConfigBuilder {
        self.config.udp = udp;
        self
    }

    /// Most inbound sockets (handshaking or established) from one IP address; more are closed
    /// at once and counted (`EndpointStats::refused_per_ip`), so that one host cannot take every
    /// inbound slot.
    ///
    /// Default: 256. Must be at least 1.
    pub fn max_inbound_per_ip(mut self, max: usize) -> ConfigBuilder {
        self.config.max_inbound_per_ip = max;
        self
    }

    /// Most handshakes in progress from one IP address (idle sockets that never send a hello
    /// hold a handshake slot for up to `handshake_timeout`); more are closed at once and counted.
    ///
    /// Default: 64. Must be at least 1.
    pub fn max_handshakes_per_ip(mut self, max: usize) -> ConfigBuilder {
        self.config.max_handshakes_per_ip = max;
        self
    }

    /// Bytes each connection's send queue may hold in frames of 1 KiB or more, besides its limit
    /// in frames ([`send_queue`](Self::send_queue)): when full, `try_send` fails with `Full` and
    /// `send` waits, as for the frame limit. An empty queue takes any one frame, however large.
    /// Smaller frames are bounded by the frame limit alone (`send_queue` × 1 KiB, 4 MiB by
    /// default), so that small messages pay no shared counter. A peer that stops reading can thus
    /// make the node hold at most about this much plus 4 MiB for it.
    ///
    /// Default: 32 MiB. Must be at least 64 KiB.
    pub fn send_queue_bytes(mut self, bytes: usize) -> ConfigBuilder {
        self.config.send_queue_bytes = bytes;
        self
    }

    /// How long the kernel may hold unacknowledged data on a TCP socket before it gives up on
    /// the connection (`TCP_USER_TIMEOUT`, Linux only; ignored elsewhere). It bounds what a dead
    /// peer costs after the connection is dropped: an aborted socket with data still queued is
    /// released by the kernel within this time, not after the default retransmission timeout of
    /// about 15 minutes. `None` leaves the system default.
    ///
    /// Default: 10 s. Must not be zero.
    pub fn tcp_user_timeout(mut self, timeout: Option<Duration>) -> ConfigBuilder {
        self.config.tcp_user_timeout = timeout;
        self
    }

    /// TCP keep-alive: after this long without traffic the kernel probes the peer (every fifth
    /// of this time, three times) and ends the connection if nobody answers, so that an idle
    /// connection to a vanished host is noticed by the kernel too. `None` turns keep-alive off.
    ///
    /// Default: 5 s. Must be at least 1 s.
    pub fn tcp_keepalive(mut self, idle: Option<Duration>) -> ConfigBuilder {
        self.config.tcp_keepalive = idle;
        self
    }

    /// Checks the constraints and returns the configuration.
    pub fn build(self) -> Result<Config, ConfigError> {
        let c = self.config;
        let at_least = |name: &'static str, value: usize, min: usize| {
            if value < min {
                Err(ConfigError::TooSmall { name, value, min })
            } else {
                Ok(())
            }
        };
        at_least("max_inbound", c.max_inbound, 1)?;
        at_least("max_outbound", c.max_outbound, 1)?;
        at_least("max_inbound_per_ip", c.max_inbound_per_ip, 1)?;
        at_least("max_handshakes_per_ip", c.max_handshakes_per_ip, 1)?;
        at_least("send_queue", c.send_queue, 1)?;
        at_least("event_queue", c.event_queue, 1)?;
        at_least("send_queue_bytes", c.send_queue_bytes, 64 << 10)?;
        at_least("read_buffer", c.read_buffer, 1 << 10)?;
        at_least("max_write_batch", c.max_write_batch, 1 << 10)?;
        at_least("max_frame_len", c.max_frame_len, 1 << 10)?;
        at_least("max_control_frame_len", c.max_control_frame_len, 1 << 10)?;
        at_least("max_datagram_len", c.max_datagram_len, 64)?;
        if c.max_frame_len > MAX_FRAME_LEN_LIMIT {
            return Err(ConfigError::TooLarge {
                name: "max_frame_len",
                value: c.max_frame_len,
                max: MAX_FRAME_LEN_LIMIT,
            });
        }
        let datagram_max = MAX_DATAGRAM_LEN_LIMIT.min(c.max_frame_len + LENGTH_PREFIX_LEN);
        if c.max_datagram_len > datagram_max {
            return Err(ConfigError::TooLarge {
                name: "max_datagram_len",
                value: c.max_datagram_len,
                max: datagram_max,
            });
        }
        if c.handshake_timeout.is_zero() {
            return Err(ConfigError::Zero {
                name: "handshake_timeout",
            });
        }
        if c.connect_timeout.is_zero() {
            return Err(ConfigError::Zero {
                name: "connect_timeout",
            });
        }
        if c.tcp_user_timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::Zero {
                name: "tcp_user_timeout",
            });
        }
        if c.tcp_keepalive.is_some_and(|t| t < Duration::from_secs(1)) {
            return Err(ConfigError::TooSmall {
                name: "tcp_keepalive (ms)",
                value: c.tcp_keepalive.map_or(0, |t| t.as_millis() as usize),
                min: 1000,
            });
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::builder().build().unwrap();
        assert_eq!(c.max_inbound(), 1024);
        assert_eq!(c.handshake_timeout(), Duration::from_secs(5));
        assert_eq!(c.max_frame_len(), DEFAULT_MAX_FRAME_LEN);
    }

    #[test]
    fn constraints_are_checked() {
        assert!(matches!(
            Config::builder().max_inbound(0).build(),
            Err(ConfigError::TooSmall {
                name: "max_inbound",
                ..
            })
        ));
        assert!(matches!(
            Config::builder()
                .max_frame_len(2048)
                .max_datagram_len(4096)
                .build(),
            Err(ConfigError::TooLarge {
                name: "max_datagram_len",
                max: 2052,
                ..
            })
        ));
        assert!(matches!(
            Config::builder().handshake_timeout(Duration::ZERO).build(),
            Err(ConfigError::Zero {
                name: "handshake_timeout"
            })
        ));
    }
}
