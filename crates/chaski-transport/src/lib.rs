//! Chaski's transport: framed TCP connections with a handshake, and UDP datagrams, on tokio.
//!
//! This is the layer that moves [`chaski_wire`] frames between nodes. It knows nothing of
//! membership, pairing or keep-alive: the node driver (issue 5) does that on top of it.
//!
//! # The endpoint
//!
//! [`Endpoint::bind`] binds a TCP listener and a UDP socket on the same port (port 0 picks a free
//! one; IPv4 or IPv6), starts accepting, and returns the endpoint (a cheap-to-clone handle) and its
//! [`Events`]: the fan-in of every connection in one bounded queue, so that a single task (the
//! node driver) can own all the state. [`Endpoint::connect`] dials with a timeout.
//! [`Endpoint::establish`] runs the same handshake over any `AsyncRead + AsyncWrite` stream, which
//! is where TLS will slot in: nothing below the handshake knows it is TCP.
//!
//! # The handshake
//!
//! Both ends send their [`Hello`](chaski_wire::Hello) (magic, version, node id, name, listening
//! addresses, subscriptions) and read the peer's, within [`Config::handshake_timeout`] (default
//! 5 s). A wrong magic, a wrong version, garbage, a first frame that is not a hello, or silence
//! closes the connection with a typed [`HandshakeError`] naming the cause (counted in
//! [`EndpointStats::handshake_failures`]); a peer that broke the protocol is told so with
//! `Goodbye(ProtocolError)`. The local hello can be changed at run time with
//! [`Endpoint::set_hello`]; the remote one is [`Connection::remote_hello`].
//!
//! **Self-connections and duplicates.** A connection whose peer has our node id is closed with
//! `Goodbye(SelfConnection)` on both ends ([`Error::SelfConnection`] for the dialer). The endpoint
//! keeps one connection per node id: of two connections between the same two nodes, the one with
//! the smaller *(dialer's node id, order of establishment here)* survives: so the connection
//! dialed by the smaller node id, and of two dialed by the same node, the one established first.
//! Only what the endpoint knows first-hand decides, never a value the peer chooses, and the rule
//! applies only to connections established within 2 s of each other (simultaneous dials): a
//! connection up for longer is never replaced, so a newcomer claiming a connected node's id
//! cannot take over its link. Both ends
//! see who dialed and, in practice, the same order; the loser is closed with `Goodbye(Duplicate)`
//! ([`Error::Duplicate`] for a dial that loses).
//!
//! # Connections
//!
//! A [`Connection`] is a cloneable sending handle with its id, direction, remote address, remote
//! hello and [`stats`](Connection::stats). Its frames are written by a writer task from a bounded
//! send queue ([`Config::send_queue`], default 4096 frames): [`Connection::send`] waits for room,
//! [`Connection::try_send`] fails fast with [`SendError::Full`], and [`Connection::send_now`]
//! queues without making a future when there is room and otherwise hands the frame back as a
//! [`SendWait`] to await (for callers whose own futures should stay small). The writer takes
//! everything queued at once, encodes it into one buffer and writes it in one call, so a burst is
//! coalesced (the `write_calls` counter shows by how much); after a batch of several frames it
//! yields once before sleeping, so that a stream of frames does not cost a wake-up every few
//! frames.
//! Publish payloads of 4 KiB or more, and [`EncodedFrame`]s as large, are not copied but written
//! with vectored writes straight from their `Bytes`. An [`EncodedFrame`] is encoded once and can be
//! queued on any number of connections (fan-out).
//!
//! **Lone frames skip the queue.** When nothing is queued or being written and the connection
//! wrote nothing in the last 10 µs, a small frame is written by the sender itself: one
//! non-blocking write call under the write lock, with no task wake-up on the way (on a
//! multi-threaded runtime that wake-up is most of a loopback round trip). Whatever the socket does
//! not take at once is handed to the writer task, so frames of one sender stay in order and a
//! cancelled `send` never leaves half a frame behind.
//!
//! A reader task reads into a buffer, decodes every complete frame and sends them up as one
//! [`Event::Frames`] per read call; payloads are zero-copy `Bytes` slices of the read buffer. When
//! the event queue is full the reader stops reading and TCP pushes back on the peer.
//!
//! Each connection reports, in order, [`Event::Connected`], its frames, and exactly one
//! [`Event::Closed`] with a [`CloseReason`]: `Goodbye` (either side closed gracefully: the closing
//! side writes everything queued, then the goodbye, then shuts down) or `Lost` with its
//! [`LostCause`] (EOF, truncated frame, read or write error, a bad frame with its
//! [`DecodeError`](chaski_wire::DecodeError)). Keep-alive is not this layer's business.
//!
//! # Limits (everything is bounded)
//!
//! | what | bound | when full |
//! |---|---|---|
//! | inbound connections (handshaking or up) | [`Config::max_inbound`], 1024 | refused with `Goodbye(Overloaded)`, counted in `inbound_refused` |
//! | outbound connections | [`Config::max_outbound`], 256 | [`Error::TooManyConnections`] |
//! | table of connected nodes | `max_inbound + max_outbound` | cannot overflow: each entry holds a slot |
//! | send queue per connection | [`Config::send_queue`], 4096 frames | `send` waits, `try_send` fails with `Full` |
//! | event queue per endpoint | [`Config::event_queue`], 1024 batches of at most one read (64 KiB) | readers stop reading (TCP backpressure) |
//! | read buffer per connection | [`Config::read_buffer`] (64 KiB), grown up to one frame | the frame must fit `max_frame_len` |
//! | frame | [`Config::max_frame_len`], 16 MiB | `SendError::Encode` / connection closed with `FrameTooLarge` |
//! | control frame received (all kinds but `Publish` and `StatusResponse`) | [`Config::max_control_frame_len`], 1 MiB, checked on the body's first byte | connection closed with `ControlFrameTooLarge` (counted as `too_large`) |
//! | hello | [`MAX_HELLO_LEN`], 64 KiB | handshake fails with `FrameTooLarge` |
//! | datagram | [`Config::max_datagram_len`], 8 KiB | `DatagramError::TooLarge` / dropped and counted |
//!
//! # UDP
//!
//! [`DatagramSocket`] carries one frame per datagram: [`send_to`](DatagramSocket::send_to),
//! [`recv`](DatagramSocket::recv) (bad datagrams are dropped and counted by cause), multicast
//! join/leave on a chosen interface for IPv4 and IPv6, the outgoing multicast interface, and
//! broadcast. The endpoint's socket is [`Endpoint::datagrams`]; discovery can bind its own with
//! [`DatagramSocket::bind_shared`].
//!
//! # Example
//!
//! ```
//! use chaski_transport::{Config, Endpoint, Event};
//! use chaski_wire::{Capabilities, Frame, Hello, NodeId, Ping};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let hello = |name: &str| Hello {
//!     node_id: NodeId::random(),
//!     name: name.to_owned(),
//!     listen_addrs: Vec::new(),
//!     subscriptions: Vec::new(),
//!     capabilities: Capabilities::NONE,
//!     auth: None,
//!     timestamp_micros: 0,
//!     network_id: String::new(),
//!     incarnation: 0,
//! };
//! let any_port = "127.0.0.1:0".parse()?;
//! let (server, mut server_events) = Endpoint::bind(any_port, hello("server"), Config::default()).await?;
//! let (client, _client_events) = Endpoint::bind(any_port, hello("client"), Config::default()).await?;
//!
//! let connection = client.connect(server.local_addr()).await?;
//! assert_eq!(connection.remote_hello().name, "server");
//! connection.send(Frame::Ping(Ping { id: 7, ..Ping::default() })).await?;
//!
//! let Some(Event::Connected(inbound)) = server_events.recv().await else { panic!() };
//! assert_eq!(inbound.remote_hello().name, "client");
//! let Some(Event::Frames { frames, .. }) = server_events.recv().await else { panic!() };
//! assert!(matches!(&frames[0], Frame::Ping(p) if p.id == 7));
//! # Ok(())
//! # }
//! ```

mod config;
mod connection;
mod datagram;
mod endpoint;
mod error;
mod handshake;
mod seal;
mod stats;
pub mod tls;

pub use crate::{
    config::{Config, ConfigBuilder, MAX_DATAGRAM_LEN_LIMIT, MAX_HELLO_LEN},
    connection::{
        CloseReason, Connection, ConnectionId, Direction, EncodedFrame, Event, SendWait, Side,
    },
    datagram::{DatagramSocket, Received, Sealed},
    endpoint::{Endpoint, Events, StatsHandle},
    error::{ConfigError, DatagramError, Error, HandshakeError, LostCause, SendError},
    seal::{Opener, REPLAY_WINDOW, SEAL_OVERHEAD, Sealer},
    stats::{Causes, DatagramStats, EndpointStats, TrafficStats},
    tls::{
        CertificateAuthority, Identity, IdentityError, Network, NetworkKey, NetworkKind,
        NetworkTag, Security,
    },
};
