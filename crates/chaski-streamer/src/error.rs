//! The node's errors: one enum for everything a node operation can fail with.

use std::{io, net::SocketAddr, time::Duration};

use chaski_wire::{InvalidTopic, NodeId};

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A topic name is not valid.
    #[error("invalid topic: {0}")]
    InvalidTopic(#[from] InvalidTopic),
    /// An address could not be parsed or resolved.
    #[error("invalid address `{input}`: {reason}")]
    InvalidAddress {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration is inconsistent; the message names the setting.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The node could not listen on its address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// `try_publish` found the node's queue full: the network is slower than the publisher.
    #[error("the publish queue is full")]
    Full,
    /// A best-effort message does not fit in one datagram.
    #[error(
        "a best-effort message of {len} bytes does not fit in a datagram of at most {max} bytes"
    )]
    TooLargeForDatagram {
        /// The encoded message length.
        len: usize,
        /// The largest datagram the node sends.
        max: usize,
    },
    /// A message does not fit in one frame.
    #[error("a message of {len} bytes exceeds the maximum frame of {max} bytes")]
    TooLarge {
        /// The encoded message length.
        len: usize,
        /// The maximum frame length.
        max: usize,
    },
    /// The peer is not connected to this node.
    #[error("peer {0} is not connected")]
    NotConnected(NodeId),
    /// No answer came in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Dialing failed.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address dialed.
        addr: SocketAddr,
        /// Why it failed.
        reason: String,
        /// When the handshake failed: its cause, as
        /// [`HandshakeError::cause`](chaski_transport::HandshakeError::cause) labels it
        /// (`wrong_network_key`, `certificate_refused`, ...).
        handshake: Option<&'static str>,
    },
    /// Too many requests of this kind are pending; try again later.
    #[error("too many pending {0}")]
    Busy(&'static str),
    /// The node has shut down.
    #[error("the node has shut down")]
    Shutdown,
}
