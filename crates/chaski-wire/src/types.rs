//! Hand-written domain types: node ids, topics, capabilities, goodbye reasons, headers.
//!
//! These are what the rest of Chaski works with; the generated protobuf types stay inside this
//! crate.

use std::{fmt, str::FromStr};

use bytes::Bytes;
use bytestring::ByteString;

/// The longest topic name, in bytes of UTF-8.
pub const MAX_TOPIC_LEN: usize = 1024;

/// A node's identity: 128 random bits, drawn when the node starts and never reused.
///
/// Displayed (and parsed) as 32 lowercase hex digits; [`NodeId::short`] gives the first 8 for logs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NodeId(u128);

impl NodeId {
    /// The id made of these 128 bits.
    pub const fn from_u128(bits: u128) -> NodeId {
        NodeId(bits)
    }

    /// The 128 bits of this id.
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// A fresh random id from the operating system's random number generator.
    ///
    /// # Panics
    ///
    /// If the operating system cannot provide random numbers at all (no `getrandom(2)` and no
    /// `/dev/urandom`), which no supported platform does.
    pub fn random() -> NodeId {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).expect("the operating system's random number generator failed");
        NodeId(u128::from_be_bytes(bytes))
    }

    /// The first 8 hex digits, enough to tell nodes apart in logs.
    pub fn short(self) -> String {
        format!("{:08x}", (self.0 >> 96) as u32)
    }

    pub(crate) fn from_halves(high: u64, low: u64) -> NodeId {
        NodeId((u128::from(high) << 64) | u128::from(low))
    }

    pub(crate) fn halves(self) -> (u64, u64) {
        ((self.0 >> 64) as u64, self.0 as u64)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({:032x})", self.0)
    }
}

/// The error of parsing a [`NodeId`] from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a node id is 32 hexadecimal digits")]
pub struct ParseNodeIdError;

impl FromStr for NodeId {
    type Err = ParseNodeIdError;

    fn from_str(s: &str) -> Result<NodeId, ParseNodeIdError> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseNodeIdError);
        }
        u128::from_str_radix(s, 16)
            .map(NodeId)
            .map_err(|_| ParseNodeIdError)
    }
}

/// A topic name: non-empty UTF-8 of at most [`MAX_TOPIC_LEN`] bytes, without NUL characters.
///
/// Cheap to clone (reference counted) and, when decoded from a frame, a zero-copy slice of the
/// receive buffer.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(ByteString);

/// Why a string is not a valid [`Topic`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidTopic {
    /// The topic is empty.
    #[error("a topic must not be empty")]
    Empty,
    /// The topic is longer than [`MAX_TOPIC_LEN`] bytes.
    #[error("a topic must be at most {MAX_TOPIC_LEN} bytes, this one is {0}")]
    TooLong(usize),
    /// The topic contains a NUL character.
    #[error("a topic must not contain NUL characters")]
    Nul,
    /// The topic is not valid UTF-8 (only possible for topics decoded from bytes).
    #[error("a topic must be valid UTF-8")]
    NotUtf8,
}

impl InvalidTopic {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            InvalidTopic::Empty => "empty topic",
            InvalidTopic::TooLong(_) => "topic too long",
            InvalidTopic::Nul => "topic contains NUL",
            InvalidTopic::NotUtf8 => "topic is not UTF-8",
        }
    }
}

fn check_topic(bytes: &[u8]) -> Result<(), InvalidTopic> {
    if bytes.is_empty() {
        return Err(InvalidTopic::Empty);
    }
    if bytes.len() > MAX_TOPIC_LEN {
        return Err(InvalidTopic::TooLong(bytes.len()));
    }
    if bytes.contains(&0) {
        return Err(InvalidTopic::Nul);
    }
    Ok(())
}

impl Topic {
    /// A topic with this name (copied).
    pub fn new(name: &str) -> Result<Topic, InvalidTopic> {
        check_topic(name.as_bytes())?;
        Ok(Topic(ByteString::from(name)))
    }

    /// A topic from a static name, without copying it.
    ///
    /// # Panics
    ///
    /// If `name` is not a valid topic (see [`Topic::new`]); meant for literals.
    pub fn from_static(name: &'static str) -> Topic {
        if let Err(err) = check_topic(name.as_bytes()) {
            panic!("invalid static topic {name:?}: {err}");
        }
        Topic(ByteString::from_static(name))
    }

    /// A topic from raw bytes, validating UTF-8 but not copying.
    pub fn from_bytes(bytes: Bytes) -> Result<Topic, InvalidTopic> {
        check_topic(&bytes)?;
        ByteString::try_from(bytes)
            .map(Topic)
            .map_err(|_| InvalidTopic::NotUtf8)
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The same topic in a buffer of its own: a topic decoded from a frame is a slice of the
    /// read buffer and keeps all of it alive; store a detached copy instead.
    pub fn detached(&self) -> Topic {
        Topic(ByteString::from(self.as_str()))
    }

    /// The name as bytes, sharing the underlying buffer.
    pub fn to_bytes(&self) -> Bytes {
        self.0.as_bytes().clone()
    }

    /// The length of the name in bytes.
    #[allow(clippy::len_without_is_empty)] // a topic is never empty
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({:?})", &*self.0)
    }
}

/// Topics hash and compare as their names, so maps keyed by `Topic` can be searched with a `&str`.
impl std::borrow::Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for Topic {
    type Err = InvalidTopic;

    fn from_str(s: &str) -> Result<Topic, InvalidTopic> {
        Topic::new(s)
    }
}

impl TryFrom<&str> for Topic {
    type Error = InvalidTopic;

    fn try_from(s: &str) -> Result<Topic, InvalidTopic> {
        Topic::new(s)
    }
}

impl TryFrom<String> for Topic {
    type Error = InvalidTopic;

    fn try_from(s: String) -> Result<Topic, InvalidTopic> {
        check_topic(s.as_bytes())?;
        Ok(Topic(ByteString::from(s)))
    }
}

impl PartialEq<str> for Topic {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Topic {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

/// A 64-bit FNV-1a digest of a set of topics, as carried in [`Beacon`](crate::Beacon): the topics
/// are sorted and de-duplicated, and each is hashed followed by a 0 byte. Equal sets give equal
/// digests whatever their order.
pub fn subscription_digest<'a>(topics: impl IntoIterator<Item = &'a Topic>) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut sorted: Vec<&Topic> = topics.into_iter().collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut hash = OFFSET;
    for topic in sorted {
        for &byte in topic.as_str().as_bytes().iter().chain(&[0u8]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(PRIME);
        }
    }
    hash
}

/// What a node can do, announced in its handshake, peer records and beacons.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Capabilities(u64);

impl Capabilities {
    /// No capability.
    pub const NONE: Capabilities = Capabilities(0);
    /// The node relays: it accepts every topic and forwards messages (the original's root node).
    pub const RELAY: Capabilities = Capabilities(1 << 1);
    /// The node accepts best-effort messages as UDP datagrams.
    pub const DATAGRAMS: Capabilities = Capabilities(1 << 2);
    /// The node answers status requests.
    pub const STATUS: Capabilities = Capabilities(1 << 3);

    /// The raw bit set (unknown bits included).
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// The capabilities of this bit set; unknown bits are kept, so they survive a round trip.
    pub const fn from_bits(bits: u64) -> Capabilities {
        Capabilities(bits)
    }

    /// Whether every capability in `other` is in `self`.
    pub const fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    /// `self` with the capabilities of `other` added.
    #[must_use]
    pub const fn with(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 | other.0)
    }
}

impl fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_set();
        for (cap, name) in [
            (Capabilities::RELAY, "RELAY"),
            (Capabilities::DATAGRAMS, "DATAGRAMS"),
            (Capabilities::STATUS, "STATUS"),
        ] {
            if self.contains(cap) {
                list.entry(&format_args!("{name}"));
            }
        }
        let known = Capabilities::RELAY.0 | Capabilities::DATAGRAMS.0 | Capabilities::STATUS.0;
        if self.0 & !known != 0 {
            list.entry(&format_args!("{:#x}", self.0 & !known));
        }
        list.finish()
    }
}

/// Why a node closes a connection gracefully.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GoodbyeReason {
    /// Not given.
    Unspecified,
    /// The node is shutting down.
    Shutdown,
    /// The connection is no longer needed.
    NotNeeded,
    /// A second connection between the same two nodes; this one lost the tie-break.
    Duplicate,
    /// The node is at its connection limit.
    Overloaded,
    /// The peer broke the protocol.
    ProtocolError,
    /// The peer is on another network or failed authentication.
    Unauthorized,
    /// The connection goes to the node itself.
    SelfConnection,
    /// The peer was silent for longer than the peer timeout: the connection is dropped at once
    /// and this goodbye is only a courtesy (sent if the send queue has room).
    Timeout,
    /// A reason added by a later protocol revision, kept as its number.
    Other(i32),
}

impl GoodbyeReason {
    pub(crate) fn to_i32(self) -> i32 {
        use crate::proto::GoodbyeReason as P;
        match self {
            GoodbyeReason::Unspecified => P::Unspecified as i32,
            GoodbyeReason::Shutdown => P::Shutdown as i32,
            GoodbyeReason::NotNeeded => P::NotNeeded as i32,
            GoodbyeReason::Duplicate => P::Duplicate as i32,
            GoodbyeReason::Overloaded => P::Overloaded as i32,
            GoodbyeReason::ProtocolError => P::ProtocolError as i32,
            GoodbyeReason::Unauthorized => P::Unauthorized as i32,
            GoodbyeReason::SelfConnection => P::SelfConnection as i32,
            GoodbyeReason::Timeout => P::Timeout as i32,
            GoodbyeReason::Other(n) => n,
        }
    }

    pub(crate) fn from_i32(n: i32) -> GoodbyeReason {
        use crate::proto::GoodbyeReason as P;
        match P::try_from(n) {
            Ok(P::Unspecified) => GoodbyeReason::Unspecified,
            Ok(P::Shutdown) => GoodbyeReason::Shutdown,
            Ok(P::NotNeeded) => GoodbyeReason::NotNeeded,
            Ok(P::Duplicate) => GoodbyeReason::Duplicate,
            Ok(P::Overloaded) => GoodbyeReason::Overloaded,
            Ok(P::ProtocolError) => GoodbyeReason::ProtocolError,
            Ok(P::Unauthorized) => GoodbyeReason::Unauthorized,
            Ok(P::SelfConnection) => GoodbyeReason::SelfConnection,
            Ok(P::Timeout) => GoodbyeReason::Timeout,
            Err(_) => GoodbyeReason::Other(n),
        }
    }
}

impl fmt::Display for GoodbyeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GoodbyeReason::Unspecified => f.write_str("unspecified"),
            GoodbyeReason::Shutdown => f.write_str("shutdown"),
            GoodbyeReason::NotNeeded => f.write_str("not needed"),
            GoodbyeReason::Duplicate => f.write_str("duplicate connection"),
            GoodbyeReason::Overloaded => f.write_str("overloaded"),
            GoodbyeReason::ProtocolError => f.write_str("protocol error"),
            GoodbyeReason::Unauthorized => f.write_str("unauthorized"),
            GoodbyeReason::SelfConnection => f.write_str("self connection"),
            GoodbyeReason::Timeout => f.write_str("peer timed out"),
            GoodbyeReason::Other(n) => write!(f, "reason {n}"),
        }
    }
}

/// An application-defined header on a published message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Header {
    /// The header's name.
    pub key: String,
    /// The header's value.
    pub value: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_text_round_trip() {
        let id = NodeId::from_u128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210);
        assert_eq!(id.to_string(), "0123456789abcdeffedcba9876543210");
        assert_eq!(id.short(), "01234567");
        assert_eq!(id.to_string().parse::<NodeId>(), Ok(id));
        assert_eq!("xyz".parse::<NodeId>(), Err(ParseNodeIdError));
        assert_eq!(
            "+123456789abcdeffedcba987654321".parse::<NodeId>(),
            Err(ParseNodeIdError)
        );
        let (h, l) = id.halves();
        assert_eq!(NodeId::from_halves(h, l), id);
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(NodeId::random(), NodeId::random());
    }

    #[test]
    fn topic_validation() {
        assert_eq!(Topic::new(""), Err(InvalidTopic::Empty));
        assert_eq!(Topic::new("a\0b"), Err(InvalidTopic::Nul));
        let long = "x".repeat(MAX_TOPIC_LEN + 1);
        assert_eq!(
            Topic::new(&long),
            Err(InvalidTopic::TooLong(MAX_TOPIC_LEN + 1))
        );
        assert!(Topic::new(&long[1..]).is_ok());
        assert_eq!(
            Topic::from_bytes(Bytes::from_static(b"\xff")),
            Err(InvalidTopic::NotUtf8)
        );
        let t = Topic::from_bytes(Bytes::from_static("température".as_bytes())).unwrap();
        assert_eq!(t, "température");
        assert_eq!(t.as_str(), "température");
        assert_eq!(
            Topic::from_static("a"),
            Topic::try_from(String::from("a")).unwrap()
        );
    }

    #[test]
    fn digest_ignores_order_and_duplicates() {
        let a = Topic::from_static("a");
        let b = Topic::from_static("b");
        let ab = Topic::from_static("ab");
        assert_eq!(
            subscription_digest([&a, &b]),
            subscription_digest([&b, &a, &b])
        );
        // The separator keeps {"ab"} and {"a", "b"} apart.
        assert_ne!(subscription_digest([&ab]), subscription_digest([&a, &b]));
        assert_eq!(subscription_digest([]), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn capabilities_keep_unknown_bits() {
        let caps = Capabilities::RELAY.with(Capabilities::from_bits(1 << 40));
        assert!(caps.contains(Capabilities::RELAY));
        assert!(!caps.contains(Capabilities::STATUS));
        assert_eq!(Capabilities::from_bits(caps.bits()), caps);
        assert_eq!(format!("{caps:?}"), "{RELAY, 0x10000000000}");
    }

    #[test]
    fn goodbye_reasons_round_trip() {
        for n in -1..12 {
            assert_eq!(GoodbyeReason::from_i32(n).to_i32(), n);
        }
        assert_eq!(GoodbyeReason::from_i32(1), GoodbyeReason::Shutdown);
    }
}
