//! The frames of the protocol as domain types, and their conversions to and from the generated
//! protobuf types (which stay private to this crate).
//!
//! Decoding validates everything the schema cannot express (topic syntax, address lengths,
//! required ids, the handshake's magic and version) and turns a violation into a typed
//! [`DecodeError`].

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6},
    time::Duration,
};

use bytes::Bytes;

use crate::{
    Capabilities, DecodeError, GoodbyeReason, Header, MAGIC, NodeId, PROTOCOL_VERSION, Topic, proto,
};

/// The longest node name, in bytes of UTF-8. Longer names are rejected when decoding.
pub const MAX_NAME_LEN: usize = 255;

/// One unit of the protocol: every TCP frame and every UDP datagram carries exactly one.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Frame {
    /// Opens a connection; the first frame each side sends.
    Hello(Hello),
    /// Subscribe or unsubscribe at run time.
    SubscriptionUpdate(SubscriptionUpdate),
    /// A message published on a topic.
    Publish(Message),
    /// Latency probe.
    Ping(Ping),
    /// Answer to a [`Ping`].
    Pong(Pong),
    /// Flooded search for subscribers of a topic.
    Search(Search),
    /// Answer to a [`Search`]; also a pairing offer.
    SearchReply(SearchReply),
    /// Known peers, with their addresses and subscriptions.
    PeerExchange(PeerExchange),
    /// Ask the peer to keep this connection as a pairing link for some topics.
    PairRequest(PairRequest),
    /// Answer to a [`PairRequest`].
    PairResponse(PairResponse),
    /// Stop using this connection as a pairing link for some topics.
    Unpair(Unpair),
    /// Graceful close.
    Goodbye(Goodbye),
    /// Ask a node for its peer table.
    StatusRequest(StatusRequest),
    /// Answer to a [`StatusRequest`].
    StatusResponse(StatusResponse),
    /// LAN discovery announcement (UDP).
    Beacon(Beacon),
    /// Which messages the sender has, per stream (lazy push and idle summaries).
    Have(Have),
    /// Ask for cached messages (a graft or a gap repair).
    Want(Want),
    /// Stop pushing some streams eagerly.
    Prune(Prune),
}

impl Frame {
    /// The length of the frame's encoded body (without its length prefix), as
    /// [`encode_frame`](crate::encode_frame) writes it. Builds the protobuf form of a control
    /// frame to measure it: meant for deciding what fits a frame, not for the hot path.
    pub fn encoded_len(&self) -> usize {
        use prost::Message as _;
        match self {
            Frame::Publish(m) => crate::codec::publish_frame_len(m),
            other => other.to_proto().encoded_len(),
        }
    }

    /// The frame's kind as a short, stable name (`"hello"`, `"publish"`, ...), for logs and
    /// counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "hello",
            Frame::SubscriptionUpdate(_) => "subscription_update",
            Frame::Publish(_) => "publish",
            Frame::Ping(_) => "ping",
            Frame::Pong(_) => "pong",
            Frame::Search(_) => "search",
            Frame::SearchReply(_) => "search_reply",
            Frame::PeerExchange(_) => "peer_exchange",
            Frame::PairRequest(_) => "pair_request",
            Frame::PairResponse(_) => "pair_response",
            Frame::Unpair(_) => "unpair",
            Frame::Goodbye(_) => "goodbye",
            Frame::StatusRequest(_) => "status_request",
            Frame::StatusResponse(_) => "status_response",
            Frame::Beacon(_) => "beacon",
            Frame::Have(_) => "have",
            Frame::Want(_) => "want",
            Frame::Prune(_) => "prune",
        }
    }
}

/// The handshake: each side's first frame on a new connection.
///
/// The protocol magic and version are implicit: encoding writes [`MAGIC`] and
/// [`PROTOCOL_VERSION`], decoding rejects anything else with [`DecodeError::BadMagic`] or
/// [`DecodeError::VersionMismatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The sender's node id.
    pub node_id: NodeId,
    /// Human-readable name, at most [`MAX_NAME_LEN`] bytes.
    pub name: String,
    /// Addresses on which the sender accepts connections; empty if it does not listen.
    pub listen_addrs: Vec<SocketAddr>,
    /// Topics the sender subscribes to.
    pub subscriptions: Vec<Topic>,
    /// What the sender can do.
    pub capabilities: Capabilities,
    /// Authentication material, if the network uses any.
    pub auth: Option<Auth>,
    /// The sender's wall clock when it sent the frame, microseconds since the Unix epoch.
    pub timestamp_micros: u64,
    /// The network the sender belongs to; empty for the default network.
    pub network_id: String,
    /// Which start of the sender's identity this is (0 for a fresh key; a node restarted with
    /// the same key sends a higher one), as in its messages.
    pub incarnation: u64,
}

/// Authentication material in a [`Hello`]. Protocol version 1 defines no scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// The scheme's name.
    pub scheme: String,
    /// Scheme-specific data.
    pub data: Bytes,
}

/// Subscribe and unsubscribe at run time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubscriptionUpdate {
    /// Topics the sender now subscribes to.
    pub added: Vec<Topic>,
    /// Topics the sender no longer subscribes to.
    pub removed: Vec<Topic>,
    /// Incremented with every update by the sender.
    pub revision: u64,
}

/// A message published on a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic.
    pub topic: Topic,
    /// The application payload; a zero-copy slice of the receive buffer when decoded.
    pub payload: Bytes,
    /// The node that published the message.
    pub publisher: NodeId,
    /// Per-publisher and per-topic sequence number, from 1; with `publisher`, `incarnation` and
    /// `topic`, identifies the message.
    pub sequence: u64,
    /// Which start of the publisher: 0 for a node with a fresh key, else a value that grows
    /// from one start to the next (a node restarted with the same key numbers anew).
    pub incarnation: u64,
    /// The publisher's wall clock at publication, microseconds since the Unix epoch.
    pub timestamp_micros: u64,
    /// How many more times the message may be forwarded.
    pub hop_limit: u32,
    /// How many times it has been forwarded so far.
    pub hops: u32,
    /// Optional application headers.
    pub headers: Vec<Header>,
}

/// Latency and bandwidth probe.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ping {
    /// Chosen by the sender, echoed in the [`Pong`].
    pub id: u64,
    /// The sender's monotonic clock at sending, microseconds; echoed in the [`Pong`].
    pub sent_at_micros: u64,
    /// Padding to measure bandwidth; ignored by the receiver.
    pub padding: Bytes,
    /// Bytes of padding the sender wants back in the [`Pong`].
    pub reply_padding: u32,
}

/// Answer to a [`Ping`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pong {
    /// The [`Ping::id`] answered.
    pub id: u64,
    /// The [`Ping::sent_at_micros`] answered.
    pub sent_at_micros: u64,
    /// The padding asked for.
    pub padding: Bytes,
}

/// A known node: how to reach it and what it wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The node's id.
    pub node_id: NodeId,
    /// Its human-readable name.
    pub name: String,
    /// Addresses on which it accepts connections.
    pub listen_addrs: Vec<SocketAddr>,
    /// Topics it subscribes to.
    pub subscriptions: Vec<Topic>,
    /// What it can do.
    pub capabilities: Capabilities,
    /// How many of its topics are at their pairing limit.
    pub full_topics: u32,
}

/// A search for subscribers of a topic, flooded through current connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    /// Chosen by the origin; with `origin`, identifies the search.
    pub search_id: u64,
    /// The node that started the search.
    pub origin: PeerInfo,
    /// The topic searched for.
    pub topic: Topic,
    /// How many more times the search may be forwarded.
    pub hop_limit: u32,
    /// Nodes already visited, the origin first.
    pub visited: Vec<NodeId>,
}

/// Answer to a [`Search`] from a node that shares the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchReply {
    /// The [`Search::search_id`] answered.
    pub search_id: u64,
    /// The node the search came from.
    pub origin: NodeId,
    /// The answering node.
    pub responder: PeerInfo,
    /// The topic.
    pub topic: Topic,
    /// The responder's pairing links for the topic.
    pub paired: u32,
    /// The responder's pairing limit for the topic.
    pub capacity: u32,
    /// How many more times the reply may be forwarded towards `origin`.
    pub hop_limit: u32,
    /// The smallest node id the responder knows in its component of the topic graph.
    pub component: NodeId,
}

/// Peer exchange: nodes the sender knows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerExchange {
    /// The peers, most recently seen first.
    pub peers: Vec<PeerInfo>,
}

/// Ask the receiver to treat this connection as a pairing link for some topics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PairRequest {
    /// Echoed in the [`PairResponse`].
    pub request_id: u64,
    /// The topics.
    pub topics: Vec<Topic>,
}

/// Answer to a [`PairRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PairResponse {
    /// The [`PairRequest::request_id`] answered.
    pub request_id: u64,
    /// Topics accepted.
    pub accepted: Vec<Topic>,
    /// Topics refused.
    pub rejected: Vec<Topic>,
}

/// Stop using this connection as a pairing link for some topics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Unpair {
    /// The topics.
    pub topics: Vec<Topic>,
}

/// One stream of messages: who publishes, which start of it, on which topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    /// The publisher.
    pub publisher: NodeId,
    /// The publisher's incarnation ([`Message::incarnation`]).
    pub incarnation: u64,
    /// The topic.
    pub topic: Topic,
}

impl StreamId {
    /// The stream `message` belongs to.
    pub fn of(message: &Message) -> StreamId {
        StreamId {
            publisher: message.publisher,
            incarnation: message.incarnation,
            topic: message.topic.clone(),
        }
    }
}

/// The latest message the sender has of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHead {
    /// The stream.
    pub stream: StreamId,
    /// The highest sequence of it the sender has received.
    pub last: u64,
    /// The first of the messages announced as new (`last + 1` in a summary, which announces
    /// nothing new): a receiver that had not heard of the stream wants it from here.
    pub first: u64,
}

/// Which messages the sender has: lazy announcements and idle summaries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Have {
    /// One entry per stream.
    pub streams: Vec<StreamHead>,
}

/// A range of one stream's messages, `first..=last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRange {
    /// The stream.
    pub stream: StreamId,
    /// The first sequence wanted.
    pub first: u64,
    /// The last sequence wanted.
    pub last: u64,
}

/// Ask for cached messages; also grafts the ranges' topics onto the sender's eager links.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Want {
    /// The ranges wanted.
    pub ranges: Vec<StreamRange>,
}

/// The sender received these streams' messages twice: push them to it lazily from now on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Prune {
    /// The streams.
    pub streams: Vec<StreamId>,
}

/// Graceful close: the receiver does not reconnect because of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Goodbye {
    /// Why.
    pub reason: GoodbyeReason,
    /// Optional detail for logs.
    pub message: String,
}

/// Ask a node for its status and peer table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatusRequest {
    /// Echoed in the [`StatusResponse`].
    pub request_id: u64,
}

/// A peer as seen from a node answering a [`StatusRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// Who the peer is.
    pub peer: PeerInfo,
    /// The remote address of the connection, if known.
    pub remote_addr: Option<SocketAddr>,
    /// Whether the answering node dialed the connection.
    pub outbound: bool,
    /// Smoothed round-trip time (zero if not measured yet).
    pub srtt: Duration,
    /// Round-trip time variation (jitter).
    pub rttvar: Duration,
    /// Minimum round-trip time seen.
    pub min_rtt: Duration,
    /// Topics for which the connection is a pairing link.
    pub paired_topics: Vec<Topic>,
    /// How the node learnt of the peer.
    pub discovered_via: String,
    /// How long the connection has been up.
    pub connected_for: Duration,
    /// Frames received from the peer.
    pub frames_in: u64,
    /// Frames sent to the peer.
    pub frames_out: u64,
    /// Bytes received from the peer.
    pub bytes_in: u64,
    /// Bytes sent to the peer.
    pub bytes_out: u64,
}

/// Answer to a [`StatusRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusResponse {
    /// The [`StatusRequest::request_id`] answered.
    pub request_id: u64,
    /// The answering node.
    pub node: PeerInfo,
    /// Its connected peers.
    pub peers: Vec<PeerStatus>,
    /// How long it has been running.
    pub uptime: Duration,
    /// Its subscribed topics that have no pairing link.
    pub isolated_topics: Vec<Topic>,
}

/// LAN discovery announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beacon {
    /// The network; beacons from other networks are ignored. Empty for the default network.
    pub network_id: String,
    /// The announcing node.
    pub node_id: NodeId,
    /// Its name.
    pub name: String,
    /// Addresses on which it accepts connections.
    pub listen_addrs: Vec<SocketAddr>,
    /// [`subscription_digest`](crate::subscription_digest) of its subscriptions.
    pub subscription_digest: u64,
    /// Number of its subscriptions.
    pub subscription_count: u32,
    /// What it can do.
    pub capabilities: Capabilities,
    /// Incremented with every beacon the node sends.
    pub sequence: u64,
    /// Reserved, empty: in a closed network the transport tags the whole datagram instead
    /// (HMAC-SHA256 with the network's beacon key, after the frame), which covers every
    /// datagram kind.
    pub auth_tag: Bytes,
}

// ---------------------------------------------------------------------------------------------
// Conversions. `to_proto` borrows (control frames are small; the hot `Publish` path is encoded by
// hand in `codec.rs` without going through the generated types), `from_proto` consumes and
// validates.

fn node_id_to_proto(id: NodeId) -> proto::NodeId {
    let (high, low) = id.halves();
    proto::NodeId { high, low }
}

fn node_id_from_proto(
    id: Option<proto::NodeId>,
    field: &'static str,
) -> Result<NodeId, DecodeError> {
    id.map(|id| NodeId::from_halves(id.high, id.low))
        .ok_or_else(|| DecodeError::invalid(field, "missing node id"))
}

fn topic_from_proto(bytes: Bytes, field: &'static str) -> Result<Topic, DecodeError> {
    Topic::from_bytes(bytes).map_err(|e| DecodeError::invalid(field, e.reason()))
}

fn topics_to_proto(topics: &[Topic]) -> Vec<Bytes> {
    topics.iter().map(Topic::to_bytes).collect()
}

fn topics_from_proto(topics: Vec<Bytes>, field: &'static str) -> Result<Vec<Topic>, DecodeError> {
    topics
        .into_iter()
        .map(|t| topic_from_proto(t, field))
        .collect()
}

fn name_from_proto(name: String, field: &'static str) -> Result<String, DecodeError> {
    if name.len() > MAX_NAME_LEN {
        return Err(DecodeError::invalid(field, "name longer than 255 bytes"));
    }
    Ok(name)
}

fn addr_to_proto(addr: &SocketAddr) -> proto::SocketAddress {
    match addr {
        SocketAddr::V4(a) => proto::SocketAddress {
            ip: Bytes::copy_from_slice(&a.ip().octets()),
            port: u32::from(a.port()),
            scope_id: 0,
        },
        SocketAddr::V6(a) => proto::SocketAddress {
            ip: Bytes::copy_from_slice(&a.ip().octets()),
            port: u32::from(a.port()),
            scope_id: a.scope_id(),
        },
    }
}

fn addr_from_proto(
    addr: proto::SocketAddress,
    field: &'static str,
) -> Result<SocketAddr, DecodeError> {
    let port =
        u16::try_from(addr.port).map_err(|_| DecodeError::invalid(field, "port above 65535"))?;
    let ip = match addr.ip.len() {
        4 => {
            let mut octets = [0u8; 4];
            octets.copy_from_slice(&addr.ip);
            IpAddr::V4(Ipv4Addr::from(octets))
        }
        16 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&addr.ip);
            let ip = Ipv6Addr::from(octets);
            return Ok(SocketAddr::V6(SocketAddrV6::new(
                ip,
                port,
                0,
                addr.scope_id,
            )));
        }
        _ => {
            return Err(DecodeError::invalid(
                field,
                "IP address must be 4 or 16 bytes",
            ));
        }
    };
    Ok(SocketAddr::new(ip, port))
}

fn addrs_to_proto(addrs: &[SocketAddr]) -> Vec<proto::SocketAddress> {
    addrs.iter().map(addr_to_proto).collect()
}

fn addrs_from_proto(
    addrs: Vec<proto::SocketAddress>,
    field: &'static str,
) -> Result<Vec<SocketAddr>, DecodeError> {
    addrs
        .into_iter()
        .map(|a| addr_from_proto(a, field))
        .collect()
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn required<T>(value: Option<T>, field: &'static str) -> Result<T, DecodeError> {
    value.ok_or_else(|| DecodeError::invalid(field, "missing"))
}

impl Hello {
    fn to_proto(&self) -> proto::Hello {
        proto::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            node_id: Some(node_id_to_proto(self.node_id)),
            name: self.name.clone(),
            listen_addrs: addrs_to_proto(&self.listen_addrs),
            subscriptions: topics_to_proto(&self.subscriptions),
            capabilities: self.capabilities.bits(),
            auth: self.auth.as_ref().map(|a| proto::Auth {
                scheme: a.scheme.clone(),
                data: a.data.clone(),
            }),
            timestamp_micros: self.timestamp_micros,
            network_id: self.network_id.clone(),
            incarnation: self.incarnation,
        }
    }

    fn from_proto(p: proto::Hello) -> Result<Hello, DecodeError> {
        // Magic first: a peer speaking another protocol should be told so, not "wrong version".
        if p.magic != MAGIC {
            return Err(DecodeError::BadMagic { found: p.magic });
        }
        if p.version != PROTOCOL_VERSION {
            return Err(DecodeError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: p.version,
            });
        }
        Ok(Hello {
            node_id: node_id_from_proto(p.node_id, "hello.node_id")?,
            name: name_from_proto(p.name, "hello.name")?,
            listen_addrs: addrs_from_proto(p.listen_addrs, "hello.listen_addrs")?,
            subscriptions: topics_from_proto(p.subscriptions, "hello.subscriptions")?,
            capabilities: Capabilities::from_bits(p.capabilities),
            auth: p.auth.map(|a| Auth {
                scheme: a.scheme,
                data: a.data,
            }),
            timestamp_micros: p.timestamp_micros,
            network_id: p.network_id,
            incarnation: p.incarnation,
        })
    }
}

impl PeerInfo {
    fn to_proto(&self) -> proto::PeerInfo {
        proto::PeerInfo {
            node_id: Some(node_id_to_proto(self.node_id)),
            name: self.name.clone(),
            listen_addrs: addrs_to_proto(&self.listen_addrs),
            subscriptions: topics_to_proto(&self.subscriptions),
            capabilities: self.capabilities.bits(),
            full_topics: self.full_topics,
        }
    }

    fn from_proto(p: proto::PeerInfo) -> Result<PeerInfo, DecodeError> {
        Ok(PeerInfo {
            node_id: node_id_from_proto(p.node_id, "peer_info.node_id")?,
            name: name_from_proto(p.name, "peer_info.name")?,
            listen_addrs: addrs_from_proto(p.listen_addrs, "peer_info.listen_addrs")?,
            subscriptions: topics_from_proto(p.subscriptions, "peer_info.subscriptions")?,
            capabilities: Capabilities::from_bits(p.capabilities),
            full_topics: p.full_topics,
        })
    }
}

impl Message {
    pub(crate) fn from_proto(p: proto::Publish) -> Result<Message, DecodeError> {
        Ok(Message {
            topic: topic_from_proto(p.topic, "publish.topic")?,
            payload: p.payload,
            publisher: node_id_from_proto(p.publisher, "publish.publisher")?,
            sequence: p.sequence,
            incarnation: p.incarnation,
            timestamp_micros: p.timestamp_micros,
            hop_limit: p.hop_limit,
            hops: p.hops,
            headers: p
                .headers
                .into_iter()
                .map(|h| Header {
                    key: h.key,
                    value: h.value,
                })
                .collect(),
        })
    }
}

impl PeerStatus {
    fn to_proto(&self) -> proto::PeerStatus {
        proto::PeerStatus {
            peer: Some(self.peer.to_proto()),
            remote_addr: self.remote_addr.as_ref().map(addr_to_proto),
            outbound: self.outbound,
            srtt_micros: micros(self.srtt),
            rttvar_micros: micros(self.rttvar),
            min_rtt_micros: micros(self.min_rtt),
            paired_topics: topics_to_proto(&self.paired_topics),
            discovered_via: self.discovered_via.clone(),
            connected_micros: micros(self.connected_for),
            frames_in: self.frames_in,
            frames_out: self.frames_out,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
        }
    }

    fn from_proto(p: proto::PeerStatus) -> Result<PeerStatus, DecodeError> {
        Ok(PeerStatus {
            peer: PeerInfo::from_proto(required(p.peer, "peer_status.peer")?)?,
            remote_addr: p
                .remote_addr
                .map(|a| addr_from_proto(a, "peer_status.remote_addr"))
                .transpose()?,
            outbound: p.outbound,
            srtt: Duration::from_micros(p.srtt_micros),
            rttvar: Duration::from_micros(p.rttvar_micros),
            min_rtt: Duration::from_micros(p.min_rtt_micros),
            paired_topics: topics_from_proto(p.paired_topics, "peer_status.paired_topics")?,
            discovered_via: p.discovered_via,
            connected_for: Duration::from_micros(p.connected_micros),
            frames_in: p.frames_in,
            frames_out: p.frames_out,
            bytes_in: p.bytes_in,
            bytes_out: p.bytes_out,
        })
    }
}

impl Frame {
    /// The generated form of every frame but `Publish` (which `codec.rs` encodes by hand).
    pub(crate) fn to_proto(&self) -> proto::Frame {
        use proto::frame::Kind;
        let kind = match self {
            Frame::Hello(h) => Kind::Hello(h.to_proto()),
            Frame::SubscriptionUpdate(u) => Kind::SubscriptionUpdate(proto::SubscriptionUpdate {
                added: topics_to_proto(&u.added),
                removed: topics_to_proto(&u.removed),
                revision: u.revision,
            }),
            Frame::Publish(m) => Kind::Publish(proto::Publish {
                topic: m.topic.to_bytes(),
                publisher: Some(node_id_to_proto(m.publisher)),
                sequence: m.sequence,
                timestamp_micros: m.timestamp_micros,
                hop_limit: m.hop_limit,
                hops: m.hops,
                headers: m
                    .headers
                    .iter()
                    .map(|h| proto::Header {
                        key: h.key.clone(),
                        value: h.value.clone(),
                    })
                    .collect(),
                payload: m.payload.clone(),
                incarnation: m.incarnation,
            }),
            Frame::Ping(p) => Kind::Ping(proto::Ping {
                id: p.id,
                sent_at_micros: p.sent_at_micros,
                padding: p.padding.clone(),
                reply_padding: p.reply_padding,
            }),
            Frame::Pong(p) => Kind::Pong(proto::Pong {
                id: p.id,
                sent_at_micros: p.sent_at_micros,
                padding: p.padding.clone(),
            }),
            Frame::Search(s) => Kind::Search(proto::Search {
                search_id: s.search_id,
                origin: Some(s.origin.to_proto()),
                topic: s.topic.to_bytes(),
                hop_limit: s.hop_limit,
                visited: s.visited.iter().copied().map(node_id_to_proto).collect(),
            }),
            Frame::SearchReply(r) => Kind::SearchReply(proto::SearchReply {
                search_id: r.search_id,
                origin: Some(node_id_to_proto(r.origin)),
                responder: Some(r.responder.to_proto()),
                topic: r.topic.to_bytes(),
                paired: r.paired,
                capacity: r.capacity,
                hop_limit: r.hop_limit,
                component: Some(node_id_to_proto(r.component)),
            }),
            Frame::PeerExchange(x) => Kind::PeerExchange(proto::PeerExchange {
                peers: x.peers.iter().map(PeerInfo::to_proto).collect(),
            }),
            Frame::PairRequest(r) => Kind::PairRequest(proto::PairRequest {
                request_id: r.request_id,
                topics: topics_to_proto(&r.topics),
            }),
            Frame::PairResponse(r) => Kind::PairResponse(proto::PairResponse {
                request_id: r.request_id,
                accepted: topics_to_proto(&r.accepted),
                rejected: topics_to_proto(&r.rejected),
            }),
            Frame::Unpair(u) => Kind::Unpair(proto::Unpair {
                topics: topics_to_proto(&u.topics),
            }),
            Frame::Have(h) => Kind::Have(proto::Have {
                streams: h
                    .streams
                    .iter()
                    .map(|e| proto::StreamHead {
                        topic: e.stream.topic.to_bytes(),
                        publisher: Some(node_id_to_proto(e.stream.publisher)),
                        incarnation: e.stream.incarnation,
                        last: e.last,
                        first: e.first,
                    })
                    .collect(),
            }),
            Frame::Want(w) => Kind::Want(proto::Want {
                ranges: w
                    .ranges
                    .iter()
                    .map(|r| proto::StreamRange {
                        topic: r.stream.topic.to_bytes(),
                        publisher: Some(node_id_to_proto(r.stream.publisher)),
                        incarnation: r.stream.incarnation,
                        first: r.first,
                        last: r.last,
                    })
                    .collect(),
            }),
            Frame::Prune(p) => Kind::Prune(proto::Prune {
                streams: p
                    .streams
                    .iter()
                    .map(|k| proto::StreamKey {
                        topic: k.topic.to_bytes(),
                        publisher: Some(node_id_to_proto(k.publisher)),
                        incarnation: k.incarnation,
                    })
                    .collect(),
            }),
            Frame::Goodbye(g) => Kind::Goodbye(proto::Goodbye {
                reason: g.reason.to_i32(),
                message: g.message.clone(),
            }),
            Frame::StatusRequest(r) => Kind::StatusRequest(proto::StatusRequest {
                request_id: r.request_id,
            }),
            Frame::StatusResponse(r) => Kind::StatusResponse(proto::StatusResponse {
                request_id: r.request_id,
                node: Some(r.node.to_proto()),
                peers: r.peers.iter().map(PeerStatus::to_proto).collect(),
                uptime_micros: micros(r.uptime),
                isolated_topics: topics_to_proto(&r.isolated_topics),
            }),
            Frame::Beacon(b) => Kind::Beacon(proto::Beacon {
                network_id: b.network_id.clone(),
                node_id: Some(node_id_to_proto(b.node_id)),
                name: b.name.clone(),
                listen_addrs: addrs_to_proto(&b.listen_addrs),
                subscription_digest: b.subscription_digest,
                subscription_count: b.subscription_count,
                capabilities: b.capabilities.bits(),
                sequence: b.sequence,
                auth_tag: b.auth_tag.clone(),
            }),
        };
        proto::Frame { kind: Some(kind) }
    }

    /// Validates a decoded frame. `kind == None` is handled by the caller (it knows the bytes and
    /// can name the unknown field).
    pub(crate) fn from_proto_kind(kind: proto::frame::Kind) -> Result<Frame, DecodeError> {
        use proto::frame::Kind;
        Ok(match kind {
            Kind::Hello(h) => Frame::Hello(Hello::from_proto(h)?),
            Kind::SubscriptionUpdate(u) => Frame::SubscriptionUpdate(SubscriptionUpdate {
                added: topics_from_proto(u.added, "subscription_update.added")?,
                removed: topics_from_proto(u.removed, "subscription_update.removed")?,
                revision: u.revision,
            }),
            Kind::Publish(p) => Frame::Publish(Message::from_proto(p)?),
            Kind::Ping(p) => Frame::Ping(Ping {
                id: p.id,
                sent_at_micros: p.sent_at_micros,
                padding: p.padding,
                reply_padding: p.reply_padding,
            }),
            Kind::Pong(p) => Frame::Pong(Pong {
                id: p.id,
                sent_at_micros: p.sent_at_micros,
                padding: p.padding,
            }),
            Kind::Search(s) => Frame::Search(Search {
                search_id: s.search_id,
                origin: PeerInfo::from_proto(required(s.origin, "search.origin")?)?,
                topic: topic_from_proto(s.topic, "search.topic")?,
                hop_limit: s.hop_limit,
                visited: s
                    .visited
                    .into_iter()
                    .map(|id| NodeId::from_halves(id.high, id.low))
                    .collect(),
            }),
            Kind::SearchReply(r) => Frame::SearchReply(SearchReply {
                search_id: r.search_id,
                origin: node_id_from_proto(r.origin, "search_reply.origin")?,
                responder: PeerInfo::from_proto(required(r.responder, "search_reply.responder")?)?,
                topic: topic_from_proto(r.topic, "search_reply.topic")?,
                paired: r.paired,
                capacity: r.capacity,
                hop_limit: r.hop_limit,
                component: node_id_from_proto(r.component, "search_reply.component")?,
            }),
            Kind::PeerExchange(x) => Frame::PeerExchange(PeerExchange {
                peers: x
                    .peers
                    .into_iter()
                    .map(PeerInfo::from_proto)
                    .collect::<Result<_, _>>()?,
            }),
            Kind::PairRequest(r) => Frame::PairRequest(PairRequest {
                request_id: r.request_id,
                topics: topics_from_proto(r.topics, "pair_request.topics")?,
            }),
            Kind::PairResponse(r) => Frame::PairResponse(PairResponse {
                request_id: r.request_id,
                accepted: topics_from_proto(r.accepted, "pair_response.accepted")?,
                rejected: topics_from_proto(r.rejected, "pair_response.rejected")?,
            }),
            Kind::Unpair(u) => Frame::Unpair(Unpair {
                topics: topics_from_proto(u.topics, "unpair.topics")?,
            }),
            Kind::Have(h) => Frame::Have(Have {
                streams: h
                    .streams
                    .into_iter()
                    .map(|e| {
                        Ok(StreamHead {
                            stream: StreamId {
                                publisher: node_id_from_proto(e.publisher, "have.publisher")?,
                                incarnation: e.incarnation,
                                topic: topic_from_proto(e.topic, "have.topic")?,
                            },
                            last: e.last,
                            first: e.first,
                        })
                    })
                    .collect::<Result<_, DecodeError>>()?,
            }),
            Kind::Want(w) => Frame::Want(Want {
                ranges: w
                    .ranges
                    .into_iter()
                    .map(|r| {
                        if r.first == 0 || r.last < r.first {
                            return Err(DecodeError::invalid(
                                "want.ranges",
                                "a range must run from 1 or more up to at least its start",
                            ));
                        }
                        Ok(StreamRange {
                            stream: StreamId {
                                publisher: node_id_from_proto(r.publisher, "want.publisher")?,
                                incarnation: r.incarnation,
                                topic: topic_from_proto(r.topic, "want.topic")?,
                            },
                            first: r.first,
                            last: r.last,
                        })
                    })
                    .collect::<Result<_, DecodeError>>()?,
            }),
            Kind::Prune(p) => Frame::Prune(Prune {
                streams: p
                    .streams
                    .into_iter()
                    .map(|k| {
                        Ok(StreamId {
                            publisher: node_id_from_proto(k.publisher, "prune.publisher")?,
                            incarnation: k.incarnation,
                            topic: topic_from_proto(k.topic, "prune.topic")?,
                        })
                    })
                    .collect::<Result<_, DecodeError>>()?,
            }),
            Kind::Goodbye(g) => Frame::Goodbye(Goodbye {
                reason: GoodbyeReason::from_i32(g.reason),
                message: g.message,
            }),
            Kind::StatusRequest(r) => Frame::StatusRequest(StatusRequest {
                request_id: r.request_id,
            }),
            Kind::StatusResponse(r) => Frame::StatusResponse(StatusResponse {
                request_id: r.request_id,
                node: PeerInfo::from_proto(required(r.node, "status_response.node")?)?,
                peers: r
                    .peers
                    .into_iter()
                    .map(PeerStatus::from_proto)
                    .collect::<Result<_, _>>()?,
                uptime: Duration::from_micros(r.uptime_micros),
                isolated_topics: topics_from_proto(
                    r.isolated_topics,
                    "status_response.isolated_topics",
                )?,
            }),
            Kind::Beacon(b) => Frame::Beacon(Beacon {
                network_id: b.network_id,
                node_id: node_id_from_proto(b.node_id, "beacon.node_id")?,
                name: name_from_proto(b.name, "beacon.name")?,
                listen_addrs: addrs_from_proto(b.listen_addrs, "beacon.listen_addrs")?,
                subscription_digest: b.subscription_digest,
                subscription_count: b.subscription_count,
                capabilities: Capabilities::from_bits(b.capabilities),
                sequence: b.sequence,
                auth_tag: b.auth_tag,
            }),
        })
    }
}
