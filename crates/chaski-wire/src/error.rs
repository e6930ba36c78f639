//! The errors of the wire layer: one enum for decoding, one for encoding.

/// Why a frame (or datagram) could not be decoded.
///
/// Every variant means the same thing to the caller: the bytes came from a peer that is broken or
/// hostile, the connection they arrived on must be closed (or the datagram dropped), and the
/// failure should be counted under [`DecodeError::cause`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The length prefix announces more bytes than the configured maximum. Nothing was allocated
    /// for it.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The length the prefix announced.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A control frame (any kind but `Publish` and `StatusResponse`) longer than the maximum for
    /// control frames. Nothing was allocated for it.
    #[error("control frame (kind {kind}) of {len} bytes exceeds the maximum of {max} bytes")]
    ControlFrameTooLarge {
        /// The protobuf field number of its kind (255 for a kind of 16 or more).
        kind: u32,
        /// The length the prefix announced.
        len: usize,
        /// The maximum for control frames.
        max: usize,
    },
    /// The frame body is not valid protobuf for a `Frame`.
    #[error("malformed frame: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// The frame's kind is not one this implementation knows (a newer protocol revision, or no kind
    /// at all). `tag` is the protobuf field number found, 0 when the frame was empty.
    #[error("unknown frame kind (field {tag})")]
    UnknownKind {
        /// The protobuf field number of the unknown kind; 0 for an empty frame.
        tag: u32,
    },
    /// The peer speaks another major version of the protocol.
    #[error("protocol version mismatch: we speak version {ours}, the peer speaks version {theirs}")]
    VersionMismatch {
        /// Our version, [`crate::PROTOCOL_VERSION`].
        ours: u32,
        /// The version the peer announced.
        theirs: u32,
    },
    /// The handshake does not start with Chaski's magic number: the peer speaks another protocol.
    #[error("bad protocol magic {found:#010x} (expected {expected:#010x})", expected = crate::MAGIC)]
    BadMagic {
        /// The magic the peer sent.
        found: u32,
    },
    /// A field decoded but its value is not allowed (a topic that is not UTF-8, an address of the
    /// wrong length, a missing node id, ...).
    #[error("invalid field `{field}`: {reason}")]
    InvalidField {
        /// The field, as `message.field`.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A datagram's length prefix does not match the datagram's size (truncated or padded).
    #[error(
        "datagram holds {actual} bytes after its length prefix, but the prefix says {declared}"
    )]
    DatagramLength {
        /// The body length the prefix announced.
        declared: usize,
        /// The body length actually received.
        actual: usize,
    },
}

impl DecodeError {
    /// A short, stable label for the cause, for counters and logs: `too_large`, `malformed`,
    /// `unknown_kind`, `version`, `magic`, `invalid_field` or `datagram_length`.
    pub fn cause(&self) -> &'static str {
        match self {
            DecodeError::FrameTooLarge { .. } | DecodeError::ControlFrameTooLarge { .. } => {
                "too_large"
            }
            DecodeError::Malformed(_) => "malformed",
            DecodeError::UnknownKind { .. } => "unknown_kind",
            DecodeError::VersionMismatch { .. } => "version",
            DecodeError::BadMagic { .. } => "magic",
            DecodeError::InvalidField { .. } => "invalid_field",
            DecodeError::DatagramLength { .. } => "datagram_length",
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: &'static str) -> DecodeError {
        DecodeError::InvalidField { field, reason }
    }
}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded frame would exceed the maximum frame length, so the peer would reject it.
    /// Nothing was written.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The encoded body length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
}

/// The error of the tokio-util [`FrameCodec`](crate::FrameCodec): I/O, decoding or encoding.
#[cfg(feature = "codec")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A received frame was bad.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A frame to send could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}
