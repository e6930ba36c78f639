//! Chaski's wire protocol: the frames nodes exchange, their encoding, and the types they carry.
//!
//! Every TCP frame and UDP datagram is a 4-byte big-endian length followed by one protobuf
//! `Frame` (schema: `proto/chaski/v1/chaski.proto`). This crate
//!
//! * defines the frames as hand-written domain types ([`Frame`], [`Message`], [`Hello`], ...) on
//!   top of domain primitives ([`NodeId`], [`Topic`], [`Capabilities`]), so that no other crate
//!   touches generated protobuf types;
//! * encodes them ([`encode_frame`], [`encode_message`], and [`encode_message_head`] for sending a
//!   payload without copying it) and decodes them ([`decode_frame`], [`decode_datagram`]) with a
//!   configurable maximum frame length ([`DEFAULT_MAX_FRAME_LEN`] = 16 MiB);
//! * offers the same as a tokio-util codec, [`FrameCodec`] (feature `codec`, on by default; no tokio
//!   runtime is needed).
//!
//! Decoding is zero-copy: the payload of a decoded [`Message`] is a [`bytes::Bytes`] slice of the
//! receive buffer. Decoding never panics, whatever the input: a bad frame is a [`DecodeError`] and
//! the connection it came on should be closed.
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use chaski_wire::{DEFAULT_MAX_FRAME_LEN, Frame, Message, NodeId, Topic, decode_frame, encode_frame};
//!
//! let message = Message {
//!     topic: Topic::new("temperature")?,
//!     payload: Bytes::from_static(b"21.5"),
//!     publisher: NodeId::random(),
//!     sequence: 1,
//!     incarnation: 0,
//!     timestamp_micros: 0,
//!     hop_limit: 8,
//!     hops: 0,
//!     headers: Vec::new(),
//! };
//! let mut buf = BytesMut::new();
//! encode_frame(&Frame::Publish(message.clone()), &mut buf, DEFAULT_MAX_FRAME_LEN)?;
//!
//! // A partial frame decodes to `None`: wait for more bytes.
//! let mut partial = buf.split_to(5);
//! assert!(decode_frame(&mut partial, DEFAULT_MAX_FRAME_LEN)?.is_none());
//! partial.unsplit(buf);
//! let decoded = decode_frame(&mut partial, DEFAULT_MAX_FRAME_LEN)?;
//! assert_eq!(decoded, Some(Frame::Publish(message)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod codec;
mod error;
mod frame;
mod types;

#[cfg(test)]
mod tests;

/// The code generated from `proto/chaski/v1/chaski.proto` by `cargo xtask codegen`. Private: the
/// rest of Chaski uses the domain types of this crate.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
#[rustfmt::skip]
#[path = "generated/chaski.v1.rs"]
mod proto;

#[cfg(feature = "codec")]
pub use crate::{codec::FrameCodec, error::CodecError};
pub use crate::{
    codec::{
        DEFAULT_MAX_CONTROL_FRAME_LEN, DEFAULT_MAX_FRAME_LEN, FrameLimits, LENGTH_PREFIX_LEN,
        MAX_FRAME_LEN_LIMIT, decode_datagram, decode_frame, decode_frame_body,
        decode_frame_limited, encode_frame, encode_message, encode_message_head, peek_frame,
        peek_frame_len,
    },
    error::{DecodeError, EncodeError},
    frame::{
        Auth, Beacon, Frame, Goodbye, Have, Hello, MAX_NAME_LEN, Message, PairRequest,
        PairResponse, PeerExchange, PeerInfo, PeerStatus, Ping, Pong, Prune, Search, SearchReply,
        StatusRequest, StatusResponse, StreamHead, StreamId, StreamRange, SubscriptionUpdate,
        Unpair, Want,
    },
    types::{
        Capabilities, GoodbyeReason, Header, InvalidTopic, MAX_TOPIC_LEN, NodeId, ParseNodeIdError,
        Topic, subscription_digest,
    },
};

/// The protocol magic every handshake starts with: `"CHSK"` as a big-endian `u32`.
pub const MAGIC: u32 = 0x4348_534B;

/// The protocol's major version. Peers with another major version do not talk.
pub const PROTOCOL_VERSION: u32 = 1;
