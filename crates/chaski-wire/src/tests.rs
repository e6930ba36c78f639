//! Property tests of the codec: round trips, chunking, hostile input, and byte-for-byte agreement
//! of the hand-written `Publish` encoder with the generated one.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use bytes::{BufMut, Bytes, BytesMut};
use proptest::{collection::vec, prelude::*};
use prost::Message as _;

use crate::*;

const MAX: usize = DEFAULT_MAX_FRAME_LEN;

fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn arb_node_id() -> impl Strategy<Value = NodeId> {
    prop_oneof![
        Just(0u128),
        Just(u128::MAX),
        Just(1u128 << 64),
        Just(1u128),
        any::<u128>()
    ]
    .prop_map(NodeId::from_u128)
}

fn arb_topic() -> impl Strategy<Value = Topic> {
    prop_oneof![
        "[a-z0-9/_*-]{1,24}",
        "\\PC{1,8}",
        Just("x".repeat(MAX_TOPIC_LEN))
    ]
    .prop_map(|s: String| Topic::new(&s).unwrap())
}

fn arb_topics() -> impl Strategy<Value = Vec<Topic>> {
    vec(arb_topic(), 0..4)
}

fn arb_name() -> impl Strategy<Value = String> {
    "\\PC{0,12}".prop_filter("within MAX_NAME_LEN", |s: &String| s.len() <= MAX_NAME_LEN)
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port)),
        (any::<[u8; 16]>(), any::<u16>(), any::<u32>()).prop_map(|(ip, port, scope)| {
            SocketAddr::V6(std::net::SocketAddrV6::new(ip.into(), port, 0, scope))
        }),
    ]
}

fn arb_caps() -> impl Strategy<Value = Capabilities> {
    any::<u64>().prop_map(Capabilities::from_bits)
}

fn arb_peer_info() -> impl Strategy<Value = PeerInfo> {
    (
        arb_node_id(),
        arb_name(),
        vec(arb_addr(), 0..3),
        arb_topics(),
        arb_caps(),
        any::<u32>(),
    )
        .prop_map(
            |(node_id, name, listen_addrs, subscriptions, capabilities, full_topics)| PeerInfo {
                node_id,
                name,
                listen_addrs,
                subscriptions,
                capabilities,
                full_topics,
            },
        )
}

fn arb_duration() -> impl Strategy<Value = Duration> {
    any::<u32>().prop_map(|us| Duration::from_micros(u64::from(us)))
}

pub(crate) fn arb_message() -> impl Strategy<Value = Message> {
    let headers = vec(
        ("\\PC{0,6}", arb_bytes(8)).prop_map(|(key, value)| Header { key, value }),
        0..3,
    );
    (
        arb_topic(),
        prop_oneof![arb_bytes(300), Just(Bytes::new())],
        arb_node_id(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        headers,
        prop_oneof![Just(0u64), any::<u64>()],
    )
        .prop_map(
            |(
                topic,
                payload,
                publisher,
                sequence,
                timestamp_micros,
                hop_limit,
                hops,
                headers,
                incarnation,
            )| {
                Message {
                    topic,
                    payload,
                    publisher,
                    sequence,
                    incarnation,
                    timestamp_micros,
                    hop_limit,
                    hops,
                    headers,
                }
            },
        )
}

fn arb_goodbye_reason() -> impl Strategy<Value = GoodbyeReason> {
    (-2i32..12).prop_map(GoodbyeReason::from_i32)
}

fn arb_peer_status() -> impl Strategy<Value = PeerStatus> {
    (
        arb_peer_info(),
        proptest::option::of(arb_addr()),
        any::<bool>(),
        (arb_duration(), arb_duration(), arb_duration()),
        arb_topics(),
        "[a-z-]{0,12}",
        arb_duration(),
        any::<[u64; 4]>(),
    )
        .prop_map(
            |(
                peer,
                remote_addr,
                outbound,
                (srtt, rttvar, min_rtt),
                paired_topics,
                via,
                up,
                counts,
            )| {
                PeerStatus {
                    peer,
                    remote_addr,
                    outbound,
                    srtt,
                    rttvar,
                    min_rtt,
                    paired_topics,
                    discovered_via: via,
                    connected_for: up,
                    frames_in: counts[0],
                    frames_out: counts[1],
                    bytes_in: counts[2],
                    bytes_out: counts[3],
                }
            },
        )
}

/// Every kind of frame, with arbitrary contents.
pub(crate) fn arb_frame() -> impl Strategy<Value = Frame> {
    let hello = (
        arb_node_id(),
        arb_name(),
        vec(arb_addr(), 0..3),
        arb_topics(),
        arb_caps(),
        proptest::option::of(
            ("[a-z-]{0,8}", arb_bytes(16)).prop_map(|(scheme, data)| Auth { scheme, data }),
        ),
        any::<u64>(),
        "[a-z]{0,8}",
    )
        .prop_map(
            |(node_id, name, listen_addrs, subscriptions, capabilities, auth, ts, network_id)| {
                Frame::Hello(Hello {
                    node_id,
                    name,
                    listen_addrs,
                    subscriptions,
                    capabilities,
                    auth,
                    timestamp_micros: ts,
                    network_id,
                    incarnation: 0,
                })
            },
        );
    let update =
        (arb_topics(), arb_topics(), any::<u64>()).prop_map(|(added, removed, revision)| {
            Frame::SubscriptionUpdate(SubscriptionUpdate {
                added,
                removed,
                revision,
            })
        });
    let ping = (any::<u64>(), any::<u64>(), arb_bytes(64), any::<u32>()).prop_map(
        |(id, sent_at_micros, padding, reply_padding)| {
            Frame::Ping(Ping {
                id,
                sent_at_micros,
                padding,
                reply_padding,
            })
        },
    );
    let pong =
        (any::<u64>(), any::<u64>(), arb_bytes(64)).prop_map(|(id, sent_at_micros, padding)| {
            Frame::Pong(Pong {
                id,
                sent_at_micros,
                padding,
            })
        });
    let search = (
        any::<u64>(),
        arb_peer_info(),
        arb_topic(),
        any::<u32>(),
        vec(arb_node_id(), 0..5),
    )
        .prop_map(|(search_id, origin, topic, hop_limit, visited)| {
            Frame::Search(Search {
                search_id,
                origin,
                topic,
                hop_limit,
                visited,
            })
        });
    let reply = (
        any::<u64>(),
        arb_node_id(),
        arb_peer_info(),
        arb_topic(),
        any::<[u32; 3]>(),
        arb_node_id(),
    )
        .prop_map(
            |(search_id, origin, responder, topic, [paired, capacity, hop_limit], component)| {
                Frame::SearchReply(SearchReply {
                    search_id,
                    origin,
                    responder,
                    topic,
                    paired,
                    capacity,
                    hop_limit,
                    component,
                })
            },
        );
    let exchange =
        vec(arb_peer_info(), 0..4).prop_map(|peers| Frame::PeerExchange(PeerExchange { peers }));
    let pair_request = (any::<u64>(), arb_topics())
        .prop_map(|(request_id, topics)| Frame::PairRequest(PairRequest { request_id, topics }));
    let pair_response =
        (any::<u64>(), arb_topics(), arb_topics()).prop_map(|(request_id, accepted, rejected)| {
            Frame::PairResponse(PairResponse {
                request_id,
                accepted,
                rejected,
            })
        });
    let unpair = arb_topics().prop_map(|topics| Frame::Unpair(Unpair { topics }));
    let goodbye = (arb_goodbye_reason(), "\\PC{0,16}")
        .prop_map(|(reason, message)| Frame::Goodbye(Goodbye { reason, message }));
    let status_request =
        any::<u64>().prop_map(|request_id| Frame::StatusRequest(StatusRequest { request_id }));
    let status_response = (
        any::<u64>(),
        arb_peer_info(),
        vec(arb_peer_status(), 0..3),
        arb_duration(),
        arb_topics(),
    )
        .prop_map(|(request_id, node, peers, uptime, isolated_topics)| {
            Frame::StatusResponse(StatusResponse {
                request_id,
                node,
                peers,
                uptime,
                isolated_topics,
            })
        });
    let beacon = (
        "[a-z]{0,8}",
        arb_node_id(),
        arb_name(),
        vec(arb_addr(), 0..3),
        any::<u64>(),
        any::<u32>(),
        arb_caps(),
        any::<u64>(),
        arb_bytes(32),
    )
        .prop_map(
            |(
                network_id,
                node_id,
                name,
                listen_addrs,
                digest,
                count,
                capabilities,
                sequence,
                auth_tag,
            )| {
                Frame::Beacon(Beacon {
                    network_id,
                    node_id,
                    name,
                    listen_addrs,
                    subscription_digest: digest,
                    subscription_count: count,
                    capabilities,
                    sequence,
                    auth_tag,
                })
            },
        );
    let stream = || {
        (arb_node_id(), any::<u64>(), arb_topic()).prop_map(|(publisher, incarnation, topic)| {
            StreamId {
                publisher,
                incarnation,
                topic,
            }
        })
    };
    let have = vec((stream(), any::<u64>(), any::<u64>()), 0..4).prop_map(|heads| {
        Frame::Have(Have {
            streams: heads
                .into_iter()
                .map(|(stream, last, first)| StreamHead {
                    stream,
                    last,
                    first,
                })
                .collect(),
        })
    });
    let want = vec((stream(), 1..u64::MAX / 2, 0..1000u64), 0..4).prop_map(|ranges| {
        Frame::Want(Want {
            ranges: ranges
                .into_iter()
                .map(|(stream, first, len)| StreamRange {
                    stream,
                    first,
                    last: first + len,
                })
                .collect(),
        })
    });
    let prune = vec(stream(), 0..4).prop_map(|streams| Frame::Prune(Prune { streams }));
    prop_oneof![
        have,
        want,
        prune,
        hello,
        update,
        arb_message().prop_map(Frame::Publish),
        ping,
        pong,
        search,
        reply,
        exchange,
        pair_request,
        pair_response,
        unpair,
        goodbye,
        status_request,
        status_response,
        beacon,
    ]
}

fn encode_all(frames: &[Frame]) -> BytesMut {
    let mut buf = BytesMut::new();
    for frame in frames {
        encode_frame(frame, &mut buf, MAX).unwrap();
    }
    buf
}

/// What decoding a byte stream yields: the frames, then the cause of the error that stopped it, if
/// any.
#[derive(Debug, PartialEq)]
struct Outcome {
    frames: Vec<Frame>,
    error: Option<&'static str>,
}

/// Feeds `chunks` one after the other into a decoder buffer, decoding as much as possible after
/// each, as a transport's read loop does.
fn decode_chunked<'a>(chunks: impl IntoIterator<Item = &'a [u8]>, max: usize) -> Outcome {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decode_frame(&mut buf, max) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(err) => {
                    return Outcome {
                        frames,
                        error: Some(err.cause()),
                    };
                }
            }
        }
    }
    Outcome {
        frames,
        error: None,
    }
}

/// Splits `bytes` at the given cut points (taken modulo its length, in any order).
fn chunks_at(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points
        .windows(2)
        .map(|w| bytes[w[0]..w[1]].to_vec())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_frame_kind_round_trips(frame in arb_frame()) {
        let mut buf = encode_all(std::slice::from_ref(&frame));
        let decoded = decode_frame(&mut buf, MAX).unwrap();
        prop_assert_eq!(decoded, Some(frame));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn hand_written_publish_encoder_matches_generated(message in arb_message()) {
        let mut ours = BytesMut::new();
        encode_message(&message, &mut ours, MAX).unwrap();
        let reference = Frame::Publish(message.clone()).to_proto().encode_to_vec();
        prop_assert_eq!(&ours[..4], &(reference.len() as u32).to_be_bytes()[..]);
        if message.incarnation == 0 {
            prop_assert_eq!(&ours[4..], &reference[..]);
        } else {
            // The incarnation (field 9) comes before the payload (8) in ours, after it in
            // prost's: the same fields, in another valid order.
            let ours_decoded = proto::Frame::decode(&ours[4..]).unwrap();
            prop_assert_eq!(ours_decoded, proto::Frame::decode(&reference[..]).unwrap());
        }

        let mut head = BytesMut::new();
        encode_message_head(&message, &mut head, MAX).unwrap();
        head.extend_from_slice(&message.payload);
        prop_assert_eq!(head, ours);
    }

    #[test]
    fn arbitrary_bytes_in_arbitrary_chunks_never_panic(
        bytes in vec(any::<u8>(), 0..2048),
        cuts in vec(any::<usize>(), 0..16),
        max in prop_oneof![Just(MAX), 0usize..512],
    ) {
        let whole = decode_chunked([&bytes[..]], max);
        let chunks = chunks_at(&bytes, &cuts);
        let chunked = decode_chunked(chunks.iter().map(Vec::as_slice), max);
        prop_assert_eq!(chunked, whole);
    }

    #[test]
    fn garbage_after_valid_frames_yields_frames_then_error_or_wait(
        frames in vec(arb_frame(), 1..4),
        garbage in vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = encode_all(&frames).to_vec();
        bytes.extend_from_slice(&garbage);
        let outcome = decode_chunked([&bytes[..]], MAX);
        prop_assert_eq!(&outcome.frames[..frames.len()], &frames[..]);
    }

    #[test]
    fn frames_split_at_any_boundary_decode_as_whole(frames in vec(arb_frame(), 1..4), cut in any::<usize>()) {
        let bytes = encode_all(&frames);
        let cut = cut % (bytes.len() + 1);
        let outcome = decode_chunked([&bytes[..cut], &bytes[cut..]], MAX);
        prop_assert_eq!(outcome, Outcome { frames, error: None });
    }

    #[test]
    fn oversized_length_prefix_is_rejected_before_allocating(
        max in 0usize..(1 << 24),
        excess in 1u64..(1 << 20),
        tail in vec(any::<u8>(), 0..16),
    ) {
        let len = (max as u64 + excess).min(u64::from(u32::MAX)) as u32;
        let mut buf = BytesMut::with_capacity(64);
        buf.put_u32(len);
        buf.extend_from_slice(&tail);
        let capacity = buf.capacity();
        let err = decode_frame(&mut buf, max).unwrap_err();
        prop_assert!(
            matches!(err, DecodeError::FrameTooLarge { len: l, max: m } if l == len as usize && m == max),
            "unexpected error {err:?}"
        );
        prop_assert_eq!(buf.capacity(), capacity);
    }

    #[test]
    fn publish_fast_path_agrees_with_generic_decoder(
        message in arb_message(),
        flips in vec((any::<usize>(), any::<u8>()), 0..3),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let mut bytes = encode_all(&[Frame::Publish(message)]).split_off(LENGTH_PREFIX_LEN).to_vec();
        for (at, xor) in flips {
            let at = at % bytes.len();
            bytes[at] ^= xor;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut % (bytes.len() + 1));
        }
        let body = Bytes::from(bytes);
        let fast = decode_frame_body(body.clone()).map_err(|e| e.cause());
        let generic = codec::decode_generic(body).map_err(|e| e.cause());
        prop_assert_eq!(fast, generic);
    }

    #[test]
    fn non_canonical_publish_decodes_like_prost(message in arb_message(), reverse in any::<bool>()) {
        // Prost writes fields in ascending order; another encoder may not. Re-encode the publish
        // body with its fields reversed (or duplicated), which the fast path must hand over to
        // the generic decoder.
        let canonical = Frame::Publish(message).to_proto().encode_to_vec();
        let Some(proto::frame::Kind::Publish(p)) = proto::Frame::decode(&canonical[..]).unwrap().kind else {
            unreachable!()
        };
        let mut fields: Vec<Vec<u8>> = Vec::new();
        let mut one = |f: proto::Publish| fields.push(f.encode_to_vec());
        one(proto::Publish { topic: p.topic.clone(), ..Default::default() });
        one(proto::Publish { publisher: p.publisher, ..Default::default() });
        one(proto::Publish { sequence: p.sequence, timestamp_micros: p.timestamp_micros, ..Default::default() });
        one(proto::Publish { hop_limit: p.hop_limit, hops: p.hops, headers: p.headers.clone(), ..Default::default() });
        one(proto::Publish { incarnation: p.incarnation, ..Default::default() });
        one(proto::Publish { payload: p.payload.clone(), ..Default::default() });
        if reverse {
            fields.reverse();
        } else {
            let first = fields[0].clone();
            fields.push(first);
        }
        let inner: Vec<u8> = fields.concat();
        let mut body = Vec::new();
        prost::encoding::encode_key(3, prost::encoding::WireType::LengthDelimited, &mut body);
        prost::encoding::encode_varint(inner.len() as u64, &mut body);
        body.extend_from_slice(&inner);
        let body = Bytes::from(body);
        let ours = decode_frame_body(body.clone()).unwrap();
        prop_assert_eq!(ours, codec::decode_generic(body).unwrap());
    }

    #[test]
    fn arbitrary_datagrams_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        let _ = decode_datagram(Bytes::from(bytes), MAX);
    }

    #[test]
    fn datagrams_round_trip(frame in arb_frame()) {
        let bytes = encode_all(std::slice::from_ref(&frame)).freeze();
        prop_assert_eq!(decode_datagram(bytes, MAX).unwrap(), frame);
    }
}

/// One stream of frames (one of each kind, from a fixed seed), split at every byte boundary in
/// turn, and also fed one byte at a time: always the same frames as the whole.
#[test]
fn every_split_point_decodes_as_whole() {
    use proptest::{strategy::ValueTree, test_runner::TestRunner};
    let mut runner = TestRunner::deterministic();
    let strategy = arb_frame();
    let mut frames = Vec::new();
    let mut kinds = std::collections::BTreeSet::new();
    while kinds.len() < 15 {
        let frame = strategy.new_tree(&mut runner).unwrap().current();
        if kinds.insert(frame.kind()) {
            frames.push(frame);
        }
    }
    let bytes = encode_all(&frames);
    let whole = Outcome {
        frames: frames.clone(),
        error: None,
    };
    for cut in 0..=bytes.len() {
        assert_eq!(
            decode_chunked([&bytes[..cut], &bytes[cut..]], MAX),
            whole,
            "split at {cut}"
        );
    }
    assert_eq!(decode_chunked(bytes.chunks(1), MAX), whole, "byte by byte");
}

/// Every frame kind has an arm in `arb_frame` (the list above is exhaustive).
#[test]
fn round_trip_covers_every_kind() {
    use proptest::{strategy::ValueTree, test_runner::TestRunner};
    let mut runner = TestRunner::deterministic();
    let strategy = arb_frame();
    let mut kinds = std::collections::BTreeSet::new();
    for _ in 0..2000 {
        kinds.insert(strategy.new_tree(&mut runner).unwrap().current().kind());
    }
    assert_eq!(kinds.len(), 18, "kinds seen: {kinds:?}");
}

fn hello() -> Hello {
    Hello {
        node_id: NodeId::from_u128(7),
        name: "n".into(),
        listen_addrs: vec![
            "127.0.0.1:7420".parse().unwrap(),
            "[::1]:7420".parse().unwrap(),
        ],
        subscriptions: vec![Topic::from_static("a")],
        capabilities: Capabilities::RELAY,
        auth: None,
        timestamp_micros: 1,
        network_id: String::new(),
        incarnation: 7,
    }
}

fn framed(body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u32(body.len() as u32);
    buf.extend_from_slice(body);
    buf
}

fn decode_err(body: &[u8]) -> DecodeError {
    decode_frame(&mut framed(body), MAX).unwrap_err()
}

#[test]
fn bad_magic_and_version_are_typed_errors() {
    let mut p = Frame::Hello(hello()).to_proto();
    if let Some(proto::frame::Kind::Hello(h)) = &mut p.kind {
        h.magic = 0x4745_5420; // "GET "
    }
    assert!(matches!(
        decode_err(&p.encode_to_vec()),
        DecodeError::BadMagic { found: 0x4745_5420 }
    ));

    let mut p = Frame::Hello(hello()).to_proto();
    if let Some(proto::frame::Kind::Hello(h)) = &mut p.kind {
        h.version = 2;
    }
    let err = decode_err(&p.encode_to_vec());
    assert!(
        matches!(err, DecodeError::VersionMismatch { ours: 1, theirs: 2 }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "protocol version mismatch: we speak version 1, the peer speaks version 2"
    );
}

#[test]
fn unknown_and_missing_kinds_are_typed_errors() {
    // Field 40, length-delimited, empty: a kind from a later revision.
    assert!(matches!(
        decode_err(&[0xc2, 0x02, 0x00]),
        DecodeError::UnknownKind { tag: 40 }
    ));
    assert!(matches!(
        decode_err(&[]),
        DecodeError::UnknownKind { tag: 0 }
    ));
}

#[test]
fn unknown_fields_are_ignored() {
    // A Ping followed by an unknown varint field 99 inside the frame.
    let mut body = Frame::Ping(Ping {
        id: 5,
        ..Ping::default()
    })
    .to_proto()
    .encode_to_vec();
    body.extend_from_slice(&[0x98, 0x06, 0x01]);
    let frame = decode_frame(&mut framed(&body), MAX).unwrap().unwrap();
    assert_eq!(
        frame,
        Frame::Ping(Ping {
            id: 5,
            ..Ping::default()
        })
    );
}

#[test]
fn invalid_fields_are_typed_errors() {
    let publish = |topic: &'static [u8], publisher: Option<proto::NodeId>| proto::Frame {
        kind: Some(proto::frame::Kind::Publish(proto::Publish {
            topic: Bytes::from_static(topic),
            publisher,
            ..Default::default()
        })),
    };
    let id = Some(proto::NodeId { high: 1, low: 2 });
    let cases: [(proto::Frame, &str); 4] = [
        (publish(b"\xff\xfe", id), "publish.topic"),
        (publish(b"", id), "publish.topic"),
        (publish(b"t", None), "publish.publisher"),
        (
            proto::Frame {
                kind: Some(proto::frame::Kind::Beacon(proto::Beacon {
                    node_id: id,
                    listen_addrs: vec![proto::SocketAddress {
                        ip: Bytes::from_static(&[1, 2, 3]),
                        port: 1,
                        scope_id: 0,
                    }],
                    ..Default::default()
                })),
            },
            "beacon.listen_addrs",
        ),
    ];
    for (frame, field) in cases {
        match decode_err(&frame.encode_to_vec()) {
            DecodeError::InvalidField { field: f, .. } => assert_eq!(f, field),
            other => panic!("expected an invalid {field}, got {other:?}"),
        }
    }
}

#[test]
fn malformed_protobuf_is_a_typed_error() {
    // Field 3 (publish), length-delimited, claiming 100 bytes that are not there.
    let err = decode_err(&[0x1a, 100, 1, 2]);
    assert!(matches!(err, DecodeError::Malformed(_)), "{err:?}");
    assert_eq!(err.cause(), "malformed");
}

#[test]
fn decoded_payload_is_a_slice_of_the_receive_buffer() {
    let message = Message {
        topic: Topic::from_static("t"),
        payload: Bytes::from(vec![7u8; 64]),
        publisher: NodeId::from_u128(1),
        sequence: 1,
        incarnation: 0,
        timestamp_micros: 2,
        hop_limit: 3,
        hops: 0,
        headers: Vec::new(),
    };
    let mut buf = BytesMut::new();
    encode_message(&message, &mut buf, MAX).unwrap();
    let range = buf.as_ptr_range();
    let Some(Frame::Publish(decoded)) = decode_frame(&mut buf, MAX).unwrap() else {
        panic!("expected a publish frame");
    };
    assert!(
        range.contains(&decoded.payload.as_ptr()),
        "payload was copied"
    );
    assert!(
        range.contains(&decoded.topic.as_str().as_ptr()),
        "topic was copied"
    );
    assert_eq!(decoded, message);
}

#[test]
fn encoding_over_the_maximum_writes_nothing() {
    let message = Message {
        topic: Topic::from_static("t"),
        payload: Bytes::from(vec![0u8; 100]),
        publisher: NodeId::from_u128(1),
        sequence: 1,
        incarnation: 0,
        timestamp_micros: 0,
        hop_limit: 0,
        hops: 0,
        headers: Vec::new(),
    };
    let mut buf = BytesMut::new();
    encode_message(&message, &mut buf, 100).unwrap_err();
    let err = encode_frame(&Frame::Hello(hello()), &mut buf, 10).unwrap_err();
    assert!(matches!(err, EncodeError::FrameTooLarge { max: 10, .. }));
    assert!(buf.is_empty());
    // Exactly at the maximum is fine, one byte less is not.
    encode_message(&message, &mut buf, MAX).unwrap();
    let len = buf.len() - LENGTH_PREFIX_LEN;
    buf.clear();
    encode_message(&message, &mut buf, len).unwrap();
    let mut copy = buf.clone();
    assert!(decode_frame(&mut copy, len).unwrap().is_some());
    let mut copy = buf.clone();
    assert!(matches!(
        decode_frame(&mut copy, len - 1),
        Err(DecodeError::FrameTooLarge { .. })
    ));
    encode_message(&message, &mut BytesMut::new(), len - 1).unwrap_err();
}

#[test]
fn datagram_length_must_match() {
    let bytes = encode_all(&[Frame::StatusRequest(StatusRequest { request_id: 9 })]);
    let mut padded = bytes.clone();
    padded.put_u8(0);
    let err = decode_datagram(padded.freeze(), MAX).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::DatagramLength {
                declared: 4,
                actual: 5
            }
        ),
        "{err:?}"
    );
    let truncated = bytes.clone().freeze().slice(..bytes.len() - 1);
    assert!(matches!(
        decode_datagram(truncated, MAX),
        Err(DecodeError::DatagramLength { .. })
    ));
    assert!(matches!(
        decode_datagram(Bytes::from_static(&[0, 0]), MAX),
        Err(DecodeError::DatagramLength { .. })
    ));
}

#[cfg(feature = "codec")]
#[test]
fn tokio_codec_round_trips_and_enforces_the_maximum() {
    use tokio_util::codec::{Decoder, Encoder};
    let mut codec = FrameCodec::with_max_frame_len(64);
    let mut buf = BytesMut::new();
    let ping = Frame::Ping(Ping {
        id: 1,
        ..Ping::default()
    });
    codec.encode(&ping, &mut buf).unwrap();
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(ping));
    assert_eq!(codec.decode(&mut buf).unwrap(), None);
    let big = Frame::Ping(Ping {
        padding: Bytes::from(vec![0; 100]),
        ..Ping::default()
    });
    assert!(matches!(
        codec.encode(big, &mut buf),
        Err(CodecError::Encode(_))
    ));
    buf.put_u32(65);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(CodecError::Decode(DecodeError::FrameTooLarge { .. }))
    ));
    assert_eq!(FrameCodec::default().max_frame_len(), DEFAULT_MAX_FRAME_LEN);
}

#[test]
fn a_long_control_frame_is_refused_on_its_first_byte() {
    let limits = FrameLimits {
        max_frame_len: 4 << 20,
        max_control_frame_len: 1 << 20,
    };
    // Only the prefix and the kind's key have arrived: 2 MiB announced.
    let head = |key: u8| {
        let mut b = BytesMut::new();
        b.put_u32(2 << 20);
        b.put_u8(key);
        b
    };
    // PeerExchange is field 8, length-delimited: key 8 << 3 | 2.
    let mut exchange = head(8 << 3 | 2);
    match decode_frame_limited(&mut exchange, limits) {
        Err(DecodeError::ControlFrameTooLarge { kind: 8, len, max }) => {
            assert_eq!((len, max), (2 << 20, 1 << 20));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(exchange.len(), 5, "nothing consumed, nothing reserved");
    // A kind of field 16 or more (a two-byte key) is not let through either.
    assert!(matches!(
        peek_frame(&[0, 0x20, 0, 0, 0x82, 0x01], limits),
        Err(DecodeError::ControlFrameTooLarge { kind: 255, .. })
    ));
    // Messages (3) and status responses (14) may be as long as any frame; they wait for more.
    for key in [3 << 3 | 2, 14 << 3 | 2] {
        let mut b = head(key);
        assert!(matches!(decode_frame_limited(&mut b, limits), Ok(None)));
    }
    // Before the first body byte nothing is known: wait.
    assert!(matches!(peek_frame(&[0, 0x20, 0, 0], limits), Ok(Some(_))));
    // Within the control limit, a control frame decodes as usual.
    let ping = Frame::Ping(Ping {
        id: 7,
        ..Ping::default()
    });
    let mut b = BytesMut::new();
    encode_frame(&ping, &mut b, DEFAULT_MAX_FRAME_LEN).unwrap();
    assert_eq!(ping.encoded_len() + LENGTH_PREFIX_LEN, b.len());
    assert_eq!(decode_frame_limited(&mut b, limits).unwrap(), Some(ping));
    assert_eq!(
        FrameLimits::default().max_control_frame_len,
        DEFAULT_MAX_CONTROL_FRAME_LEN
    );
}

#[test]
fn encoded_len_matches_the_encoder_for_messages() {
    let message = Message {
        topic: Topic::new("t").unwrap(),
        payload: Bytes::from_static(b"hello"),
        publisher: NodeId::from_u128(9),
        sequence: 300,
        incarnation: 0,
        timestamp_micros: 1,
        hop_limit: 8,
        hops: 1,
        headers: Vec::new(),
    };
    let frame = Frame::Publish(message);
    let mut b = BytesMut::new();
    encode_frame(&frame, &mut b, DEFAULT_MAX_FRAME_LEN).unwrap();
    assert_eq!(frame.encoded_len() + LENGTH_PREFIX_LEN, b.len());
}
