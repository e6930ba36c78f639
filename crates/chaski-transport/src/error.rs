//! The errors of the transport, one enum per failure domain.

use std::{io, net::SocketAddr, time::Duration};

use chaski_wire::{DecodeError, EncodeError, GoodbyeReason, NodeId};

use crate::ConnectionId;

/// A configuration that breaks a constraint, from [`ConfigBuilder::build`](crate::ConfigBuilder::build).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value is below its minimum.
    #[error("`{name}` is {value}, below the minimum of {min}")]
    TooSmall {
        /// The setting.
        name: &'static str,
        /// The value given.
        value: usize,
        /// The minimum.
        min: usize,
    },
    /// A value is above its maximum.
    #[error("`{name}` is {value}, above the maximum of {max}")]
    TooLarge {
        /// The setting.
        name: &'static str,
        /// The value given.
        value: usize,
        /// The maximum.
        max: usize,
    },
    /// A duration that must not be zero is zero.
    #[error("`{name}` must not be zero")]
    Zero {
        /// The setting.
        name: &'static str,
    },
}

/// Why an endpoint operation (binding, dialing, establishing a connection) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The TCP listener or the UDP socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
    /// The TCP connection could not be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address dialed.
        addr: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
    /// The TCP connection was not made within the connect timeout.
    #[error("connecting to {addr} timed out after {timeout:?}")]
    ConnectTimeout {
        /// The address dialed.
        addr: SocketAddr,
        /// The timeout.
        timeout: Duration,
    },
    /// The TCP connection was made but the handshake failed.
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        /// The peer's address.
        addr: SocketAddr,
        /// Why.
        source: HandshakeError,
    },
    /// The peer is this very node (same node id): the connection was closed on both ends.
    #[error("{addr} is this node itself")]
    SelfConnection {
        /// The address dialed.
        addr: SocketAddr,
    },
    /// There already is a connection to this node, which won the tie-break; the new one was
    /// closed with `Goodbye(Duplicate)`. Use the existing one.
    #[error("already connected to node {node} (connection {existing})")]
    Duplicate {
        /// The peer's node id.
        node: NodeId,
        /// The connection that survives.
        existing: ConnectionId,
    },
    /// The limit of concurrent outbound connections is reached.
    #[error("too many outbound connections (limit {limit})")]
    TooManyConnections {
        /// The limit, [`Config::max_outbound`](crate::Config::max_outbound).
        limit: usize,
    },
    /// A new local `Hello` changes the node id, which is fixed for the endpoint's life.
    #[error("the node id of the local hello cannot change (it is {expected})")]
    NodeIdChanged {
        /// The endpoint's node id.
        expected: NodeId,
    },
    /// The endpoint was shut down.
    #[error("the endpoint is shut down")]
    Shutdown,
}

/// Why a handshake failed. [`HandshakeError::cause`] gives a label for counters.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer did not send its `Hello` within the handshake timeout.
    #[error("no hello within {0:?}")]
    Timeout(Duration),
    /// The peer closed the connection before sending its `Hello`.
    #[error("the peer closed the connection before its hello")]
    Eof,
    /// Reading or writing failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The peer's first frame is not valid: garbage, wrong magic, wrong version, too large.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The peer's first frame is valid but is not a `Hello`.
    #[error("expected a hello, got a {kind} frame")]
    UnexpectedFrame {
        /// The kind of the frame, [`Frame::kind`](chaski_wire::Frame::kind).
        kind: &'static str,
    },
    /// The peer refused the connection with a `Goodbye` instead of a `Hello`.
    #[error("refused by the peer: {reason} {message:?}")]
    Refused {
        /// The peer's reason (`Overloaded` when its inbound limit is reached).
        reason: GoodbyeReason,
        /// The peer's explanation.
        message: String,
    },
    /// The peer speaks plain TCP (it runs with insecure plaintext) and this side requires TLS.
    #[error("the peer speaks plain TCP (insecure plaintext) and this node requires TLS")]
    PlaintextPeer,
    /// The peer speaks TLS and this side runs with insecure plaintext.
    #[error("the peer speaks TLS and this node runs with insecure plaintext")]
    TlsPeer,
    /// The TLS handshake failed: a certificate that proves no node key, a signature that does
    /// not verify, a protocol error. `reason` is rustls' account of it.
    #[error("TLS handshake failed: {reason}")]
    Tls {
        /// What went wrong.
        reason: String,
    },
    /// The peer's hello names another node than the one its certificate proves.
    #[error("the peer's hello claims node {claimed}, its certificate proves {proven}")]
    IdentityMismatch {
        /// The id in the hello.
        claimed: NodeId,
        /// The id of the certificate's key.
        proven: NodeId,
    },
    /// The peer is not a member of this node's network closed by a network key: its
    /// certificate is not issued from the key (it holds another key).
    #[error("the peer is not in this network: it holds another network key")]
    WrongNetworkKey,
    /// The peer is not a member of this node's network closed by a CA: its certificate is
    /// issued by another CA.
    #[error("the peer's certificate is not issued by this network's CA (an unknown CA)")]
    UnknownCa,
    /// The peer has no credentials for this node's closed network: its certificate is
    /// self-signed (it runs an open network).
    #[error(
        "the peer has no credentials for this closed network (a self-signed certificate: it runs an open network)"
    )]
    SelfSigned,
    /// The peer's certificate is expired, or not valid yet.
    #[error("the peer's certificate is not valid now: {detail}")]
    CertificateExpired {
        /// Its validity against this node's clock.
        detail: String,
    },
    /// The peer's node is on this network's deny list.
    #[error("the peer's node is revoked (on this network's deny list)")]
    CertificateRevoked,
    /// The peer refused this node's certificate; `reason` says why, from its TLS alert.
    #[error("the peer refused this node's certificate: {reason}")]
    CertificateRefused {
        /// The peer's reason, in words.
        reason: &'static str,
    },
    /// A dial by [`Endpoint::connect_expecting`](crate::Endpoint::connect_expecting) found
    /// another node than the one expected; nothing was sent to it.
    #[error("expected node {expected}, found {found}; nothing was sent to it")]
    UnexpectedPeer {
        /// The node the dial was for.
        expected: NodeId,
        /// The node that answered.
        found: NodeId,
    },
}

impl HandshakeError {
    /// A short, stable label: `timeout`, `eof`, `io`, `unexpected_frame`, `refused`,
    /// `unexpected_peer`, `plaintext_peer`, `tls_peer`, `tls`, `identity_mismatch`,
    /// `wrong_network_key`, `unknown_ca`, `self_signed`, `certificate_expired`,
    /// `certificate_revoked`, `certificate_refused`, or the
    /// [`DecodeError::cause`] label (`magic`, `version`, `malformed`, `too_large`, ...).
    pub fn cause(&self) -> &'static str {
        match self {
            HandshakeError::Timeout(_) => "timeout",
            HandshakeError::Eof => "eof",
            HandshakeError::Io(_) => "io",
            HandshakeError::Decode(e) => e.cause(),
            HandshakeError::UnexpectedFrame { .. } => "unexpected_frame",
            HandshakeError::Refused { .. } => "refused",
            HandshakeError::UnexpectedPeer { .. } => "unexpected_peer",
            HandshakeError::PlaintextPeer => "plaintext_peer",
            HandshakeError::TlsPeer => "tls_peer",
            HandshakeError::Tls { .. } => "tls",
            HandshakeError::IdentityMismatch { .. } => "identity_mismatch",
            HandshakeError::WrongNetworkKey => "wrong_network_key",
            HandshakeError::UnknownCa => "unknown_ca",
            HandshakeError::SelfSigned => "self_signed",
            HandshakeError::CertificateExpired { .. } => "certificate_expired",
            HandshakeError::CertificateRevoked => "certificate_revoked",
            HandshakeError::CertificateRefused { .. } => "certificate_refused",
        }
    }
}

/// Why a frame could not be queued on a connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The send queue is full (only from the `try_send` methods; `send` waits instead).
    #[error("the send queue is full")]
    Full,
    /// The connection is closed or closing.
    #[error("the connection is closed")]
    Closed,
    /// The frame cannot be encoded: it exceeds the maximum frame length.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// Why an established connection was lost (ended without a graceful `Goodbye`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LostCause {
    /// The peer closed the connection without a `Goodbye`.
    #[error("the peer closed the connection")]
    Eof,
    /// The peer closed the connection in the middle of a frame.
    #[error("the peer closed the connection in the middle of a frame ({buffered} bytes pending)")]
    Truncated {
        /// Bytes of the incomplete frame received.
        buffered: usize,
    },
    /// Reading failed (connection reset, ...).
    #[error("read error: {0}")]
    Read(io::Error),
    /// Writing failed (broken pipe, reset, ...).
    #[error("write error: {0}")]
    Write(io::Error),
    /// The peer sent a frame that cannot be decoded; the connection was closed after sending it a
    /// `Goodbye(ProtocolError)`.
    #[error("bad frame from the peer: {0}")]
    Decode(DecodeError),
    /// The peer sent a second `Hello`, which the protocol forbids.
    #[error("the peer sent a hello on an established connection")]
    UnexpectedHello,
}

impl LostCause {
    /// A short, stable label: `eof`, `truncated`, `read`, `write`, `unexpected_hello`, or the
    /// [`DecodeError::cause`] label.
    pub fn cause(&self) -> &'static str {
        match self {
            LostCause::Eof => "eof",
            LostCause::Truncated { .. } => "truncated",
            LostCause::Read(_) => "read",
            LostCause::Write(_) => "write",
            LostCause::Decode(e) => e.cause(),
            LostCause::UnexpectedHello => "unexpected_hello",
        }
    }
}

/// Why a datagram could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatagramError {
    /// The encoded datagram exceeds the maximum datagram length.
    #[error("datagram of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The encoded length, prefix included.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The frame cannot be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}
