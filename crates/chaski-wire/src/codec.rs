//! Framing: a 4-byte big-endian length, then the protobuf `Frame`.
//!
//! Plain functions on [`BytesMut`] for users without tokio, and (feature `codec`, on by default)
//! the tokio-util [`FrameCodec`] built on them.
//!
//! Architecture invariant: decoding never panics and never allocates what a length prefix claims;
//! a frame is only sliced out of the buffer once all of its bytes have arrived, so memory grows
//! with the bytes actually received, never with the bytes announced.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::{
    Message as _,
    encoding::{WireType, encode_key, encode_varint, encoded_len_varint},
};

use crate::{DecodeError, EncodeError, Frame, Message, NodeId, proto};

/// Bytes of the length prefix in front of every frame.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// The default maximum frame length (of the body, without its prefix): 16 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 << 20;

/// The largest maximum frame length a configuration may set: what a 4-byte prefix can express.
pub const MAX_FRAME_LEN_LIMIT: usize = u32::MAX as usize;

/// The default maximum length of a *control* frame body: every kind but `Publish` (messages) and
/// `StatusResponse` (a node's whole table, read by tools), 1 MiB.
///
/// A control frame is decoded whole before its lists are checked, and decoded structures take
/// several times the bytes of the frame; this limit, checked on the first byte of the body
/// before the rest has arrived, keeps that cost small. Every frame a node sends fits it (peer
/// exchanges are cut to fit).
pub const DEFAULT_MAX_CONTROL_FRAME_LEN: usize = 1 << 20;

/// The field numbers of the frame kinds that may be as large as the frame maximum.
const LARGE_KINDS: [u8; 2] = [3, 14];

/// The lengths a reader accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Any frame's body at most.
    pub max_frame_len: usize,
    /// A control frame's body at most (see [`DEFAULT_MAX_CONTROL_FRAME_LEN`]).
    pub max_control_frame_len: usize,
}

impl FrameLimits {
    /// Limits of `max_frame_len` for every kind.
    pub const fn uniform(max_frame_len: usize) -> FrameLimits {
        FrameLimits {
            max_frame_len,
            max_control_frame_len: max_frame_len,
        }
    }
}

impl Default for FrameLimits {
    /// [`DEFAULT_MAX_FRAME_LEN`] and [`DEFAULT_MAX_CONTROL_FRAME_LEN`].
    fn default() -> FrameLimits {
        FrameLimits {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_control_frame_len: DEFAULT_MAX_CONTROL_FRAME_LEN,
        }
    }
}

/// Encodes `frame` with its length prefix at the end of `dst`.
///
/// Fails without writing anything when the body would exceed `max_frame_len`: the peer would
/// reject it. A published message's payload is copied exactly once, into `dst`.
pub fn encode_frame(
    frame: &Frame,
    dst: &mut BytesMut,
    max_frame_len: usize,
) -> Result<(), EncodeError> {
    if let Frame::Publish(message) = frame {
        return encode_message(message, dst, max_frame_len);
    }
    let frame = frame.to_proto();
    let len = frame.encoded_len();
    check_len(len, max_frame_len)?;
    dst.reserve(LENGTH_PREFIX_LEN + len);
    dst.put_u32(len as u32);
    // Cannot fail: `dst` has room for `len` bytes.
    frame.encode_raw(dst);
    Ok(())
}

/// Encodes a published message as a complete frame at the end of `dst`, copying the payload once.
///
/// Equivalent to `encode_frame(&Frame::Publish(message.clone()), ..)` without the clone; the
/// bytes are exactly those of the generated protobuf encoder.
pub fn encode_message(
    message: &Message,
    dst: &mut BytesMut,
    max_frame_len: usize,
) -> Result<(), EncodeError> {
    encode_message_head(message, dst, max_frame_len)?;
    dst.extend_from_slice(&message.payload);
    Ok(())
}

/// Encodes everything of a published message's frame except the payload bytes themselves, which
/// the caller must send right after (for example with a vectored write straight from
/// `message.payload`), so that a large payload is never copied.
///
/// `dst` then holds the length prefix, the envelope and every field before the payload, including
/// the payload's field key and length. Fails without writing anything when the frame would exceed
/// `max_frame_len`.
pub fn encode_message_head(
    message: &Message,
    dst: &mut BytesMut,
    max_frame_len: usize,
) -> Result<(), EncodeError> {
    let body = publish_body_len(message);
    // Frame { publish = 3 (length-delimited) }.
    let len = 1 + encoded_len_varint(body as u64) + body;
    check_len(len, max_frame_len)?;
    dst.reserve(LENGTH_PREFIX_LEN + len - message.payload.len());
    dst.put_u32(len as u32);
    encode_key(3, WireType::LengthDelimited, dst);
    encode_varint(body as u64, dst);

    let topic = message.topic.as_str().as_bytes();
    encode_key(1, WireType::LengthDelimited, dst);
    encode_varint(topic.len() as u64, dst);
    dst.put_slice(topic);

    let (high, low) = message.publisher.halves();
    encode_key(2, WireType::LengthDelimited, dst);
    encode_varint(node_id_len(message.publisher) as u64, dst);
    if high != 0 {
        encode_key(1, WireType::SixtyFourBit, dst);
        dst.put_u64_le(high);
    }
    if low != 0 {
        encode_key(2, WireType::SixtyFourBit, dst);
        dst.put_u64_le(low);
    }
    if message.sequence != 0 {
        encode_key(3, WireType::Varint, dst);
        encode_varint(message.sequence, dst);
    }
    if message.timestamp_micros != 0 {
        encode_key(4, WireType::SixtyFourBit, dst);
        dst.put_u64_le(message.timestamp_micros);
    }
    if message.hop_limit != 0 {
        encode_key(5, WireType::Varint, dst);
        encode_varint(u64::from(message.hop_limit), dst);
    }
    if message.hops != 0 {
        encode_key(6, WireType::Varint, dst);
        encode_varint(u64::from(message.hops), dst);
    }
    for header in &message.headers {
        encode_key(7, WireType::LengthDelimited, dst);
        encode_varint(header_len(&header.key, &header.value) as u64, dst);
        if !header.key.is_empty() {
            encode_key(1, WireType::LengthDelimited, dst);
            encode_varint(header.key.len() as u64, dst);
            dst.put_slice(header.key.as_bytes());
        }
        if !header.value.is_empty() {
            encode_key(2, WireType::LengthDelimited, dst);
            encode_varint(header.value.len() as u64, dst);
            dst.put_slice(&header.value);
        }
    }
    // Before the payload, so that the payload can follow straight from its buffer.
    if message.incarnation != 0 {
        encode_key(9, WireType::Varint, dst);
        encode_varint(message.incarnation, dst);
    }
    if !message.payload.is_empty() {
        encode_key(8, WireType::LengthDelimited, dst);
        encode_varint(message.payload.len() as u64, dst);
    }
    Ok(())
}

/// Length of a length-delimited field with a body of `len` bytes and a one-byte key.
fn delimited_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

fn node_id_len(id: NodeId) -> usize {
    let (high, low) = id.halves();
    usize::from(high != 0) * 9 + usize::from(low != 0) * 9
}

fn header_len(key: &str, value: &Bytes) -> usize {
    let key = if key.is_empty() {
        0
    } else {
        delimited_len(key.len())
    };
    let value = if value.is_empty() {
        0
    } else {
        delimited_len(value.len())
    };
    key + value
}

/// The body length of a `Publish` frame carrying `m`.
pub(crate) fn publish_frame_len(m: &Message) -> usize {
    let body = publish_body_len(m);
    1 + encoded_len_varint(body as u64) + body
}

fn publish_body_len(m: &Message) -> usize {
    let varint = |v: u64| if v == 0 { 0 } else { 1 + encoded_len_varint(v) };
    delimited_len(m.topic.len())
        + delimited_len(node_id_len(m.publisher))
        + varint(m.sequence)
        + varint(m.incarnation)
        + if m.timestamp_micros == 0 { 0 } else { 9 }
        + varint(u64::from(m.hop_limit))
        + varint(u64::from(m.hops))
        + m.headers
            .iter()
            .map(|h| delimited_len(header_len(&h.key, &h.value)))
            .sum::<usize>()
        + if m.payload.is_empty() {
            0
        } else {
            delimited_len(m.payload.len())
        }
}

fn check_len(len: usize, max_frame_len: usize) -> Result<(), EncodeError> {
    let max = max_frame_len.min(MAX_FRAME_LEN_LIMIT);
    if len > max {
        return Err(EncodeError::FrameTooLarge { len, max });
    }
    Ok(())
}

/// Reads the length prefix at the start of `src`: `Ok(None)` when fewer than 4 bytes are there,
/// the body length otherwise, or [`DecodeError::FrameTooLarge`] when it exceeds `max_frame_len`.
pub fn peek_frame_len(src: &[u8], max_frame_len: usize) -> Result<Option<usize>, DecodeError> {
    let Some(prefix) = src.first_chunk::<LENGTH_PREFIX_LEN>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix) as usize;
    if len > max_frame_len {
        return Err(DecodeError::FrameTooLarge {
            len,
            max: max_frame_len,
        });
    }
    Ok(Some(len))
}

/// As [`peek_frame_len`], and once the first byte of the body is there, checks the length
/// against the limit of the frame's kind: a control frame over `max_control_frame_len` is
/// [`DecodeError::ControlFrameTooLarge`] before the rest of it is read.
pub fn peek_frame(src: &[u8], limits: FrameLimits) -> Result<Option<usize>, DecodeError> {
    let Some(len) = peek_frame_len(src, limits.max_frame_len)? else {
        return Ok(None);
    };
    if len > limits.max_control_frame_len {
        if let Some(&key) = src.get(LENGTH_PREFIX_LEN) {
            // A one-byte key names a field below 16; a longer one, a kind this revision does
            // not know (which may not be large either).
            let field = if key < 0x80 { key >> 3 } else { u8::MAX };
            if !LARGE_KINDS.contains(&field) {
                return Err(DecodeError::ControlFrameTooLarge {
                    kind: u32::from(field),
                    len,
                    max: limits.max_control_frame_len,
                });
            }
        }
    }
    Ok(Some(len))
}

/// As [`decode_frame`], with a limit per kind ([`peek_frame`]).
pub fn decode_frame_limited(
    src: &mut BytesMut,
    limits: FrameLimits,
) -> Result<Option<Frame>, DecodeError> {
    let Some(len) = peek_frame(src, limits)? else {
        return Ok(None);
    };
    if src.len() < LENGTH_PREFIX_LEN + len {
        return Ok(None);
    }
    src.advance(LENGTH_PREFIX_LEN);
    let body = src.split_to(len).freeze();
    decode_frame_body(body).map(Some)
}

/// Decodes the next frame from the front of `src`.
///
/// * `Ok(Some(frame))`: a frame was removed from `src`; its payloads are zero-copy slices of it.
/// * `Ok(None)`: `src` holds only part of a frame; call again when more bytes have arrived.
///   Nothing is reserved for the missing bytes.
/// * `Err(_)`: the peer sent a bad frame and the stream cannot be trusted any further: close the
///   connection. When the error is [`DecodeError::FrameTooLarge`] the rejected bytes stay in `src`.
pub fn decode_frame(
    src: &mut BytesMut,
    max_frame_len: usize,
) -> Result<Option<Frame>, DecodeError> {
    decode_frame_limited(src, FrameLimits::uniform(max_frame_len))
}

/// Decodes a frame body (without its length prefix). Byte fields of the result are slices of
/// `body`, not copies.
pub fn decode_frame_body(body: Bytes) -> Result<Frame, DecodeError> {
    match fast::decode_publish(body) {
        Ok(frame) => frame,
        Err(body) => decode_generic(body),
    }
}

/// Decodes any frame with prost's generated code and validates it.
pub(crate) fn decode_generic(body: Bytes) -> Result<Frame, DecodeError> {
    let first_tag = first_field_number(&body);
    match proto::Frame::decode(body)?.kind {
        Some(kind) => Frame::from_proto_kind(kind),
        None => Err(DecodeError::UnknownKind { tag: first_tag }),
    }
}

/// Decodes a UDP datagram holding exactly one frame with its length prefix.
///
/// A datagram whose prefix disagrees with its size is [`DecodeError::DatagramLength`]; one over
/// `max_frame_len` is [`DecodeError::FrameTooLarge`].
pub fn decode_datagram(mut datagram: Bytes, max_frame_len: usize) -> Result<Frame, DecodeError> {
    let Some(len) = peek_frame_len(&datagram, max_frame_len)? else {
        return Err(DecodeError::DatagramLength {
            declared: 0,
            actual: datagram.len(),
        });
    };
    let actual = datagram.len() - LENGTH_PREFIX_LEN;
    if len != actual {
        return Err(DecodeError::DatagramLength {
            declared: len,
            actual,
        });
    }
    datagram.advance(LENGTH_PREFIX_LEN);
    decode_frame_body(datagram)
}

/// The field number of the first field in `body`, 0 if there is none or it is unreadable. Names
/// the unknown kind in [`DecodeError::UnknownKind`].
fn first_field_number(mut body: &[u8]) -> u32 {
    prost::encoding::decode_varint(&mut body).map_or(0, |key| u32::try_from(key >> 3).unwrap_or(0))
}

/// The hot path: a hand-written decoder for the common shape of a `Publish` frame.
///
/// Prost's generic path builds the whole generated `Frame` and then converts it (about 180 ns for a
/// 64 B message); this one slices topic and payload straight out of the body (well under 100 ns,
/// see `cargo xtask bench wire`). It accepts exactly the canonical encoding and gives up (returns
/// `None`) on anything else: fields repeated where protobuf would merge them, unexpected wire
/// types, truncation. The generic path then decodes the frame with full protobuf semantics and
/// typed errors, so both paths always agree (checked by property tests).
mod fast {
    use bytes::{Buf, Bytes};

    use crate::{DecodeError, Frame, Header, Message, NodeId, Topic};

    /// A cursor over a frame body.
    struct Cursor<'a> {
        bytes: &'a [u8],
        pos: usize,
    }

    impl Cursor<'_> {
        #[inline]
        fn done(&self) -> bool {
            self.pos >= self.bytes.len()
        }

        #[inline]
        fn varint(&mut self) -> Option<u64> {
            // Keys, lengths and small numbers fit in one byte: take that path without a loop.
            let &first = self.bytes.get(self.pos)?;
            self.pos += 1;
            if first < 0x80 {
                return Some(u64::from(first));
            }
            let mut value = u64::from(first & 0x7f);
            for shift in (7..64).step_by(7) {
                let &byte = self.bytes.get(self.pos)?;
                self.pos += 1;
                value |= u64::from(byte & 0x7f) << shift;
                if byte < 0x80 {
                    // The tenth byte may only carry the top bit of a u64.
                    return (shift < 63 || byte <= 1).then_some(value);
                }
            }
            None
        }

        fn fixed64(&mut self) -> Option<u64> {
            let bytes = self.bytes.get(self.pos..self.pos + 8)?;
            self.pos += 8;
            Some(u64::from_le_bytes(bytes.try_into().ok()?))
        }

        /// A length-delimited field: its start and end in the body.
        fn delimited(&mut self) -> Option<(usize, usize)> {
            let len = usize::try_from(self.varint()?).ok()?;
            let start = self.pos;
            let end = start
                .checked_add(len)
                .filter(|&end| end <= self.bytes.len())?;
            self.pos = end;
            Some((start, end))
        }
    }

    const VARINT: u64 = 0;
    const FIXED64: u64 = 1;
    const DELIMITED: u64 = 2;

    /// The decoded frame when `body` is a canonical `Frame { publish }`, or `body` back otherwise.
    ///
    /// Builds the `Frame` in place rather than moving a `Message` into it, and turns `body` itself
    /// into the payload (the payload is the last field), which saves a reference-count round trip.
    pub(super) fn decode_publish(body: Bytes) -> Result<Result<Frame, DecodeError>, Bytes> {
        match parse(&body) {
            Some(parts) => Ok(parts.into_frame(body)),
            None => Err(body),
        }
    }

    /// Where the fields of a `Publish` are in the body.
    struct Parts {
        topic: Option<(usize, usize)>,
        payload: Option<(usize, usize)>,
        publisher: Option<NodeId>,
        sequence: u64,
        incarnation: u64,
        timestamp_micros: u64,
        hop_limit: u32,
        hops: u32,
        headers: Vec<Header>,
    }

    impl Parts {
        fn into_frame(self, mut body: Bytes) -> Result<Frame, DecodeError> {
            let Some(publisher) = self.publisher else {
                return Err(DecodeError::invalid("publish.publisher", "missing node id"));
            };
            let topic = match self.topic {
                Some((s, e)) => body.slice(s..e),
                None => Bytes::new(),
            };
            let topic = Topic::from_bytes(topic)
                .map_err(|e| DecodeError::invalid("publish.topic", e.reason()))?;
            let payload = match self.payload {
                Some((s, e)) => {
                    body.truncate(e);
                    body.advance(s);
                    body
                }
                None => Bytes::new(),
            };
            Ok(Frame::Publish(Message {
                topic,
                payload,
                publisher,
                sequence: self.sequence,
                incarnation: self.incarnation,
                timestamp_micros: self.timestamp_micros,
                hop_limit: self.hop_limit,
                hops: self.hops,
                headers: self.headers,
            }))
        }
    }

    fn parse(body: &Bytes) -> Option<Parts> {
        let mut frame = Cursor {
            bytes: body,
            pos: 0,
        };
        if frame.varint()? != (3 << 3 | DELIMITED) {
            return None;
        }
        let (start, end) = frame.delimited()?;
        if !frame.done() {
            return None;
        }
        let mut c = Cursor {
            bytes: &body[..end],
            pos: start,
        };
        let mut parts = Parts {
            topic: None,
            payload: None,
            publisher: None,
            sequence: 0,
            incarnation: 0,
            timestamp_micros: 0,
            hop_limit: 0,
            hops: 0,
            headers: Vec::new(),
        };
        // Our encoder writes fields in ascending order but for the incarnation (9), which comes
        // before the payload (8); requiring that order also rules out repeated singular fields,
        // whose merge semantics only the generic path implements.
        let rank = |tag: u64| match tag {
            9 => 8,
            8 => 9,
            other => other,
        };
        let mut last_rank = 0;
        while !c.done() {
            let key = c.varint()?;
            let (tag, wire) = (key >> 3, key & 7);
            if rank(tag) <= last_rank && tag != 7 {
                return None;
            }
            last_rank = rank(tag);
            match (tag, wire) {
                (1, DELIMITED) => parts.topic = Some(c.delimited()?),
                (2, DELIMITED) => {
                    let (s, e) = c.delimited()?;
                    parts.publisher = Some(node_id(&body[s..e])?);
                }
                (3, VARINT) => parts.sequence = c.varint()?,
                (4, FIXED64) => parts.timestamp_micros = c.fixed64()?,
                (5, VARINT) => parts.hop_limit = u32::try_from(c.varint()?).ok()?,
                (6, VARINT) => parts.hops = u32::try_from(c.varint()?).ok()?,
                (7, DELIMITED) => {
                    let (s, e) = c.delimited()?;
                    parts.headers.push(header(body, s, e)?);
                }
                (8, DELIMITED) => parts.payload = Some(c.delimited()?),
                (9, VARINT) => parts.incarnation = c.varint()?,
                _ => return None,
            }
        }
        Some(parts)
    }

    fn node_id(bytes: &[u8]) -> Option<NodeId> {
        let mut c = Cursor { bytes, pos: 0 };
        let (mut high, mut low) = (0, 0);
        let mut last_tag = 0;
        while !c.done() {
            let key = c.varint()?;
            let tag = key >> 3;
            if tag <= last_tag || key & 7 != FIXED64 {
                return None;
            }
            last_tag = tag;
            match tag {
                1 => high = c.fixed64()?,
                2 => low = c.fixed64()?,
                _ => return None,
            }
        }
        Some(NodeId::from_halves(high, low))
    }

    fn header(body: &Bytes, start: usize, end: usize) -> Option<Header> {
        let mut c = Cursor {
            bytes: &body[..end],
            pos: start,
        };
        let mut key = String::new();
        let mut value = Bytes::new();
        let mut last_tag = 0;
        while !c.done() {
            let k = c.varint()?;
            let tag = k >> 3;
            if tag <= last_tag || k & 7 != DELIMITED {
                return None;
            }
            last_tag = tag;
            let (s, e) = c.delimited()?;
            match tag {
                1 => key = std::str::from_utf8(&body[s..e]).ok()?.to_owned(),
                2 => value = body.slice(s..e),
                _ => return None,
            }
        }
        Some(Header { key, value })
    }
}

#[cfg(feature = "codec")]
pub use self::tokio_codec::FrameCodec;

#[cfg(feature = "codec")]
mod tokio_codec {
    use bytes::BytesMut;
    use tokio_util::codec::{Decoder, Encoder};

    use super::{
        DEFAULT_MAX_FRAME_LEN, MAX_FRAME_LEN_LIMIT, decode_frame, encode_frame, encode_message,
    };
    use crate::{CodecError, Frame, Message};

    /// The tokio-util codec for Chaski frames, for `FramedRead`/`FramedWrite`/`Framed`.
    ///
    /// Decoding and encoding both enforce the maximum frame length (default
    /// [`DEFAULT_MAX_FRAME_LEN`], 16 MiB). After a decode error the stream must be dropped.
    #[derive(Debug, Clone, Copy)]
    pub struct FrameCodec {
        max_frame_len: usize,
    }

    impl FrameCodec {
        /// A codec with the default maximum frame length.
        pub fn new() -> FrameCodec {
            FrameCodec {
                max_frame_len: DEFAULT_MAX_FRAME_LEN,
            }
        }

        /// A codec with this maximum frame length (body bytes, without the prefix), capped at
        /// [`MAX_FRAME_LEN_LIMIT`].
        pub fn with_max_frame_len(max_frame_len: usize) -> FrameCodec {
            FrameCodec {
                max_frame_len: max_frame_len.min(MAX_FRAME_LEN_LIMIT),
            }
        }

        /// The maximum frame length.
        pub fn max_frame_len(&self) -> usize {
            self.max_frame_len
        }
    }

    impl Default for FrameCodec {
        fn default() -> FrameCodec {
            FrameCodec::new()
        }
    }

    impl Decoder for FrameCodec {
        type Item = Frame;
        type Error = CodecError;

        fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
            Ok(decode_frame(src, self.max_frame_len)?)
        }
    }

    impl Encoder<&Frame> for FrameCodec {
        type Error = CodecError;

        fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
            Ok(encode_frame(frame, dst, self.max_frame_len)?)
        }
    }

    impl Encoder<Frame> for FrameCodec {
        type Error = CodecError;

        fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
            self.encode(&frame, dst)
        }
    }

    impl Encoder<&Message> for FrameCodec {
        type Error = CodecError;

        fn encode(&mut self, message: &Message, dst: &mut BytesMut) -> Result<(), CodecError> {
            Ok(encode_message(message, dst, self.max_frame_len)?)
        }
    }
}
