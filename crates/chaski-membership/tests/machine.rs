//! One state machine driven by hand: handshakes, keep-alive, answers to pings and status
//! requests, routing, searches, beacons and table bounds.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use chaski_membership::{
    Action, Config, ConnId, DatagramTarget, DownReason, DropKind, Event, Instant, Membership,
};
use chaski_wire::{
    Beacon, Capabilities, Frame, GoodbyeReason, Hello, Message, NodeId, PeerExchange, PeerInfo,
    Ping, Search, StatusRequest, Topic,
};

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, n], 7447))
}

fn t(s: &str) -> Topic {
    Topic::new(s).unwrap()
}

fn ms(n: u64) -> Instant {
    Instant::from_micros(n * 1000)
}

fn hello(id: u128, n: u8, topics: &[&str]) -> Hello {
    Hello {
        node_id: NodeId::from_u128(id),
        name: format!("n{n}"),
        listen_addrs: vec![addr(n)],
        subscriptions: topics.iter().map(|s| t(s)).collect(),
        capabilities: Capabilities::NONE,
        auth: None,
        timestamp_micros: 0,
        network_id: String::new(),
        incarnation: 0,
    }
}

fn machine(
    id: u128,
    topics: &[&str],
    tweak: impl FnOnce(chaski_membership::ConfigBuilder) -> chaski_membership::ConfigBuilder,
) -> Membership {
    let mut b = Config::builder(NodeId::from_u128(id))
        .listen_addr(addr(id as u8))
        .lan_discovery(false);
    for s in topics {
        b = b.subscribe(t(s));
    }
    let mut m = Membership::new(tweak(b).build().unwrap(), Instant::ZERO);
    m.handle_timeout(Instant::ZERO);
    drain(&mut m);
    m
}

fn drain(m: &mut Membership) -> Vec<Action> {
    std::iter::from_fn(|| m.poll_action()).collect()
}

fn sends(actions: &[Action], to: ConnId) -> Vec<&Frame> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { conn, frame } if *conn == to => Some(frame),
            _ => None,
        })
        .collect()
}

#[test]
fn start_dials_seeds_and_sends_a_beacon() {
    let id = NodeId::from_u128(1);
    let config = Config::builder(id)
        .listen_addr(addr(1))
        .seed(addr(9))
        .build()
        .unwrap();
    let mut m = Membership::new(config, Instant::ZERO);
    assert_eq!(m.poll_timeout(), Some(Instant::ZERO));
    m.handle_timeout(Instant::ZERO);
    let actions = drain(&mut m);
    assert!(actions.contains(&Action::Dial {
        addr: addr(9),
        peer: None,
        confirm: false
    }));
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::SendDatagram { to: DatagramTarget::Lan, frame: Frame::Beacon(b) } if b.node_id == id
    )));
    // The next beacon comes fast (50 ms), not at the steady 5 s.
    assert_eq!(m.poll_timeout(), Some(ms(50)));
}

#[test]
fn self_connection_and_foreign_network_are_refused() {
    let mut m = machine(1, &["a"], |b| b);
    m.handle_connected(ms(1), ConnId(1), &hello(1, 1, &[]), true, Some(addr(5)));
    assert_eq!(
        drain(&mut m),
        vec![Action::Close {
            conn: ConnId(1),
            reason: GoodbyeReason::SelfConnection
        }]
    );
    // The address is remembered as our own: never dialed again.
    m.connect(ms(2), addr(5));
    assert!(drain(&mut m).is_empty());
    let mut other = hello(2, 2, &[]);
    other.network_id = "elsewhere".into();
    m.handle_connected(ms(3), ConnId(2), &other, false, None);
    assert_eq!(
        drain(&mut m),
        vec![Action::Close {
            conn: ConnId(2),
            reason: GoodbyeReason::Unauthorized
        }]
    );
    assert_eq!(m.connection_count(), 0);
}

#[test]
fn inbound_connections_beyond_max_peers_are_refused_and_reported() {
    let mut m = machine(1, &["a"], |b| b.max_peers(1));
    m.handle_connected(ms(1), ConnId(1), &hello(2, 2, &["a"]), false, None);
    drain(&mut m);
    m.handle_connected(ms(1), ConnId(2), &hello(3, 3, &["a"]), false, None);
    let actions = drain(&mut m);
    assert!(actions.contains(&Action::Close {
        conn: ConnId(2),
        reason: GoodbyeReason::Overloaded
    }));
    assert!(actions.contains(&Action::Event(Event::Dropped {
        kind: DropKind::Connection
    })));
    assert_eq!(m.connection_count(), 1);
    assert_eq!(m.counters().refused_connections, 1);
}

#[test]
fn duplicate_connections_keep_the_one_dialed_by_the_smaller_id() {
    // We are the smaller id: our outbound connection wins over the peer's.
    let mut m = machine(1, &["a"], |b| b);
    m.handle_connected(ms(1), ConnId(10), &hello(2, 2, &["a"]), false, None);
    drain(&mut m);
    m.handle_connected(ms(2), ConnId(11), &hello(2, 2, &["a"]), true, Some(addr(2)));
    let actions = drain(&mut m);
    assert!(actions.contains(&Action::Close {
        conn: ConnId(10),
        reason: GoodbyeReason::Duplicate
    }));
    assert_eq!(m.connection_to(NodeId::from_u128(2)), Some(ConnId(11)));
    // We are the larger id: the peer's dial wins, ours is closed.
    let mut m = machine(5, &["a"], |b| b);
    m.handle_connected(ms(1), ConnId(10), &hello(2, 2, &["a"]), false, None);
    drain(&mut m);
    m.handle_connected(ms(2), ConnId(11), &hello(2, 2, &["a"]), true, Some(addr(2)));
    let actions = drain(&mut m);
    assert!(actions.contains(&Action::Close {
        conn: ConnId(11),
        reason: GoodbyeReason::Duplicate
    }));
    assert_eq!(m.connection_to(NodeId::from_u128(2)), Some(ConnId(10)));
    assert_eq!(m.connection_count(), 1);
}

#[test]
fn pings_get_pongs_and_status_requests_get_status() {
    let mut m = machine(1, &["a"], |b| b);
    m.handle_connected(ms(1), ConnId(1), &hello(2, 2, &["a"]), false, None);
    drain(&mut m);
    let ping = Ping {
        id: 77,
        sent_at_micros: 123,
        padding: Bytes::new(),
        reply_padding: 100,
    };
    m.handle_frame(ms(2), ConnId(1), Frame::Ping(ping));
    let actions = drain(&mut m);
    let frames = sends(&actions, ConnId(1));
    assert!(matches!(
        frames.as_slice(),
        [Frame::Pong(p)] if p.id == 77 && p.sent_at_micros == 123 && p.padding.len() == 100
    ));
    m.handle_frame(
        ms(3),
        ConnId(1),
        Frame::StatusRequest(StatusRequest { request_id: 9 }),
    );
    let actions = drain(&mut m);
    let frames = sends(&actions, ConnId(1));
    let [Frame::StatusResponse(s)] = frames.as_slice() else {
        panic!("expected a status response, got {frames:?}");
    };
    assert_eq!(s.request_id, 9);
    assert_eq!(s.node.node_id, NodeId::from_u128(1));
    assert_eq!(s.peers.len(), 1);
    assert_eq!(s.peers[0].peer.node_id, NodeId::from_u128(2));
    assert_eq!(s.peers[0].discovered_via, "inbound");
    assert_eq!(s.uptime, Duration::from_millis(3));
}

#[test]
fn silent_peer_is_declared_down_exactly_at_peer_timeout() {
    let mut m = machine(1, &["a"], |b| b);
    m.handle_connected(ms(0), ConnId(1), &hello(2, 2, &["a"]), false, None);
    drain(&mut m);
    m.handle_frame(
        ms(1500),
        ConnId(1),
        Frame::StatusRequest(StatusRequest { request_id: 1 }),
    );
    drain(&mut m);
    let mut down = None;
    while let Some(at) = m.poll_timeout() {
        if at > ms(10_000) {
            break;
        }
        m.handle_timeout(at);
        for a in drain(&mut m) {
            if let Action::Event(Event::PeerDown { reason, .. }) = a {
                down.get_or_insert((at, reason));
            }
        }
        if down.is_some() {
            break;
        }
    }
    assert_eq!(
        down,
        Some((
            ms(4500),
            DownReason::Timeout {
                silent_for: Duration::from_secs(3)
            }
        ))
    );
}

fn message(publisher: u128, sequence: u64, topic: &str, hop_limit: u32) -> Message {
    Message {
        topic: t(topic),
        payload: Bytes::from_static(b"p"),
        publisher: NodeId::from_u128(publisher),
        sequence,
        incarnation: 0,
        timestamp_micros: 0,
        hop_limit,
        hops: 0,
        headers: Vec::new(),
    }
}

/// A copy of `msg` as a neighbour forwards it (one hop on).
fn forwarded(msg: &Message) -> Message {
    Message {
        hops: msg.hops + 1,
        ..msg.clone()
    }
}

#[test]
fn routing_filters_at_the_sender_drops_duplicates_and_respects_the_hop_limit() {
    let mut m = machine(1, &["a"], |b| b);
    m.handle_connected(ms(0), ConnId(2), &hello(2, 2, &["a"]), false, None);
    m.handle_connected(ms(0), ConnId(3), &hello(3, 3, &["a", "b"]), false, None);
    m.handle_connected(ms(0), ConnId(4), &hello(4, 4, &["c"]), false, None);
    drain(&mut m);

    let p = m.publish(&t("a"));
    assert!(p.deliver);
    assert_eq!(
        p.forward,
        &[ConnId(2), ConnId(3)],
        "only peers that want it"
    );
    let p = m.publish(&t("b"));
    assert!(!p.deliver);
    assert_eq!(p.forward, &[ConnId(3)]);

    let msg = message(2, 1, "a", 5);
    let r = m.route(ms(1), Some(ConnId(2)), &msg);
    assert!(r.deliver && !r.duplicate);
    assert_eq!(r.forward, &[ConnId(3)], "not back to the sender");
    assert_eq!(r.hop_limit, 4);
    let r = m.route(ms(1), Some(ConnId(3)), &forwarded(&msg));
    assert!(r.duplicate && !r.deliver && r.forward.is_empty());
    // Hop limit 0: delivered, not forwarded.
    let r = m.route(ms(1), Some(ConnId(3)), &message(3, 1, "a", 0));
    assert!(r.deliver && r.forward.is_empty());
    // Our own message coming back.
    let r = m.route(ms(1), Some(ConnId(2)), &forwarded(&message(1, 1, "a", 5)));
    assert!(r.duplicate);
    assert_eq!(m.counters().messages_duplicate, 2);
    assert_eq!(m.counters().messages_new, 2);
}

#[test]
fn search_is_answered_by_a_subscriber_and_forwarded_even_when_full() {
    let mut m = machine(1, &["a"], |b| b);
    m.handle_connected(ms(0), ConnId(2), &hello(2, 2, &[]), false, None);
    m.handle_connected(ms(0), ConnId(3), &hello(3, 3, &[]), false, None);
    drain(&mut m);
    let origin = PeerInfo {
        node_id: NodeId::from_u128(9),
        name: "origin".into(),
        listen_addrs: vec![addr(9)],
        subscriptions: vec![t("a")],
        capabilities: Capabilities::NONE,
        full_topics: 0,
    };
    let search = Search {
        search_id: 5,
        origin,
        topic: t("a"),
        hop_limit: 3,
        visited: vec![NodeId::from_u128(9), NodeId::from_u128(2)],
    };
    m.handle_frame(ms(1), ConnId(2), Frame::Search(search.clone()));
    let actions = drain(&mut m);
    let back = sends(&actions, ConnId(2));
    assert!(back.iter().any(|f| matches!(
        f,
        Frame::SearchReply(r) if r.search_id == 5 && r.origin == NodeId::from_u128(9)
            && r.responder.node_id == NodeId::from_u128(1)
    )));
    let fwd = sends(&actions, ConnId(3));
    assert!(fwd.iter().any(|f| matches!(
        f,
        Frame::Search(s) if s.hop_limit == 2 && s.visited.last() == Some(&NodeId::from_u128(1))
    )));
    // The origin is now known (and wanted: it shares the topic).
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Dial { peer: Some(p), .. } if *p == NodeId::from_u128(9)
    )));
    // The same search again is ignored.
    m.handle_frame(ms(2), ConnId(3), Frame::Search(search));
    let again = drain(&mut m);
    assert!(again.iter().all(|a| !matches!(
        a,
        Action::Send {
            frame: Frame::Search(_) | Frame::SearchReply(_),
            ..
        }
    )));
}

#[test]
fn known_peer_table_is_bounded() {
    let mut m = machine(1, &["a"], |b| b.max_known_peers(4).max_peers(2));
    m.handle_connected(ms(0), ConnId(2), &hello(2, 2, &["a"]), false, None);
    drain(&mut m);
    let peers = (10..30)
        .map(|i| PeerInfo {
            node_id: NodeId::from_u128(i),
            name: String::new(),
            listen_addrs: vec![addr(i as u8)],
            subscriptions: vec![t("z")],
            capabilities: Capabilities::NONE,
            full_topics: 0,
        })
        .collect();
    m.handle_frame(
        ms(1),
        ConnId(2),
        Frame::PeerExchange(PeerExchange { peers }),
    );
    let actions = drain(&mut m);
    assert!(m.known_count() <= 4);
    assert!(actions.contains(&Action::Event(Event::Dropped {
        kind: DropKind::KnownPeer
    })));
    assert!(m.counters().known_evictions > 0);
}

#[test]
fn a_beacon_from_an_unknown_node_is_dialed_once() {
    let mut m = machine(1, &["a"], |b| b.lan_discovery(true));
    let beacon = Beacon {
        network_id: String::new(),
        node_id: NodeId::from_u128(7),
        name: "n7".into(),
        listen_addrs: vec![addr(7)],
        subscription_digest: 1,
        subscription_count: 1,
        capabilities: Capabilities::NONE,
        sequence: 1,
        auth_tag: Bytes::new(),
    };
    m.handle_datagram(ms(1), addr(7), Frame::Beacon(beacon.clone()));
    assert_eq!(
        drain(&mut m),
        vec![Action::Dial {
            addr: addr(7),
            peer: Some(NodeId::from_u128(7)),
            confirm: true
        }]
    );
    m.handle_datagram(ms(2), addr(7), Frame::Beacon(beacon));
    assert!(drain(&mut m).is_empty(), "dial already in flight");
}

#[test]
fn duplicate_filter_evictions_are_reported() {
    let mut m = machine(1, &["a"], |b| b.dedup_streams(2));
    m.handle_connected(ms(0), ConnId(2), &hello(2, 2, &["a"]), false, None);
    drain(&mut m);
    for publisher in 10..13 {
        let r = m.route(
            ms(1),
            Some(ConnId(2)),
            &forwarded(&message(publisher, 1, "a", 1)),
        );
        assert!(r.deliver);
    }
    let actions = drain(&mut m);
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a
                == Action::Event(Event::Dropped {
                    kind: DropKind::DedupStream
                }))
            .count(),
        1
    );
    assert_eq!(m.dedup_count(), 2);
    assert_eq!(m.counters().dedup_evictions, 1);
}

// ----- Limits on what a peer sends (`chaski_membership::limits`) -------------------------------

fn info(id: u128, topics: usize, addrs: usize) -> PeerInfo {
    PeerInfo {
        node_id: NodeId::from_u128(id),
        name: format!("p{id}"),
        listen_addrs: (0..addrs).map(|i| addr(i as u8)).collect(),
        subscriptions: (0..topics).map(|i| t(&format!("t{i}"))).collect(),
        capabilities: Capabilities::NONE,
        full_topics: 0,
    }
}

/// A machine with one connected peer (id 2 on connection 1), its actions drained.
fn with_peer() -> Membership {
    let mut m = machine(1, &["a"], |b| b.max_peer_topics(8));
    m.handle_connected(ms(1), ConnId(1), &hello(2, 2, &["a"]), false, None);
    drain(&mut m);
    m
}

/// Asserts that `frame` on connection 1 closes it as a protocol violation of `kind`, counted and
/// reported, and that the peer is not dialed again.
fn assert_violation(frame: Frame, kind: chaski_membership::Violation) {
    let mut m = with_peer();
    m.handle_frame(ms(2), ConnId(1), frame);
    let actions = drain(&mut m);
    assert!(
        actions.contains(&Action::Close {
            conn: ConnId(1),
            reason: GoodbyeReason::ProtocolError
        }),
        "{actions:?}"
    );
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Event(Event::ProtocolViolation { peer, conn: ConnId(1), kind: k })
            if *peer == NodeId::from_u128(2) && *k == kind
    )));
    assert!(!actions.iter().any(|a| matches!(a, Action::Dial { .. })));
    assert_eq!(m.counters().violations.total(), 1);
    assert_eq!(m.connection_count(), 0);
    // Nothing of the frame was learnt.
    assert!(m.known_count() <= 1);
}

#[test]
fn a_peer_exchange_with_too_many_peers_closes_the_connection() {
    let peers = (0..257).map(|i| info(100 + i, 1, 1)).collect();
    assert_violation(
        Frame::PeerExchange(PeerExchange { peers }),
        chaski_membership::Violation::TooManyPeers,
    );
    // One peer with too many topics or addresses is as bad.
    assert_violation(
        Frame::PeerExchange(PeerExchange {
            peers: vec![info(100, 9, 1)],
        }),
        chaski_membership::Violation::TooManyTopics,
    );
    assert_violation(
        Frame::PeerExchange(PeerExchange {
            peers: vec![info(100, 1, 17)],
        }),
        chaski_membership::Violation::TooManyAddrs,
    );
}

#[test]
fn subscription_updates_beyond_the_topic_limit_close_the_connection() {
    let added = (0..9).map(|i| t(&format!("x{i}"))).collect();
    assert_violation(
        Frame::SubscriptionUpdate(chaski_wire::SubscriptionUpdate {
            added,
            removed: Vec::new(),
            revision: 1,
        }),
        chaski_membership::Violation::TooManyTopics,
    );
    // Within one update's limit, but past the peer's total: two updates of 4 and 4 on top of
    // the hello's one topic.
    let mut m = with_peer();
    for (revision, base) in [(1, 0), (2, 4)] {
        let added = (base..base + 4).map(|i| t(&format!("x{i}"))).collect();
        m.handle_frame(
            ms(2),
            ConnId(1),
            Frame::SubscriptionUpdate(chaski_wire::SubscriptionUpdate {
                added,
                removed: Vec::new(),
                revision,
            }),
        );
    }
    let actions = drain(&mut m);
    assert!(actions.contains(&Action::Close {
        conn: ConnId(1),
        reason: GoodbyeReason::ProtocolError
    }));
    assert_eq!(m.counters().violations.too_many_topics, 1);
}

#[test]
fn a_search_with_a_long_visited_list_is_refused_and_hop_limits_are_clamped() {
    let search = |visited: usize, hop_limit: u32| Search {
        search_id: 1,
        origin: info(9, 1, 1),
        topic: t("zzz"),
        hop_limit,
        visited: (0..visited)
            .map(|i| NodeId::from_u128(1000 + i as u128))
            .collect(),
    };
    // The default search hop limit is 8: at most 9 visited ids.
    assert_violation(
        Frame::Search(search(10, 3)),
        chaski_membership::Violation::TooManyVisited,
    );
    // A hop limit above ours is clamped when forwarded.
    let mut m = with_peer();
    m.handle_connected(ms(1), ConnId(2), &hello(3, 3, &["b"]), false, None);
    drain(&mut m);
    m.handle_frame(ms(2), ConnId(1), Frame::Search(search(1, u32::MAX)));
    let actions = drain(&mut m);
    let forwarded = sends(&actions, ConnId(2));
    let [Frame::Search(s)] = forwarded.as_slice() else {
        panic!("expected the search forwarded, got {forwarded:?}");
    };
    assert_eq!(s.hop_limit, 7, "forwarded with our hop limit (8) minus one");
}

#[test]
fn a_hello_beyond_the_limits_is_refused() {
    let mut m = machine(1, &["a"], |b| b.max_peer_topics(8));
    let topics: Vec<String> = (0..9).map(|i| format!("t{i}")).collect();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    m.handle_connected(ms(1), ConnId(1), &hello(2, 2, &names), false, None);
    let actions = drain(&mut m);
    assert!(actions.contains(&Action::Close {
        conn: ConnId(1),
        reason: GoodbyeReason::ProtocolError
    }));
    assert_eq!(m.connection_count(), 0);
    assert_eq!(m.counters().violations.too_many_topics, 1);
}

#[test]
fn pong_padding_is_capped_and_budgeted_per_connection() {
    let mut m = machine(1, &["a"], |b| b.max_ping_padding(1000));
    m.handle_connected(ms(1), ConnId(1), &hello(2, 2, &["a"]), false, None);
    drain(&mut m);
    let mut padded = Vec::new();
    for id in 0..20 {
        let ping = Ping {
            id,
            sent_at_micros: 0,
            padding: Bytes::new(),
            reply_padding: u32::MAX,
        };
        m.handle_frame(ms(2), ConnId(1), Frame::Ping(ping));
        for frame in sends(&drain(&mut m), ConnId(1)) {
            if let Frame::Pong(p) = frame {
                padded.push(p.padding.len());
            }
        }
    }
    // Every ping is answered; only the first within one ping interval carries padding, capped.
    assert_eq!(padded.len(), 20);
    assert_eq!(padded[0], 1000);
    assert!(padded[1..].iter().all(|&n| n == 0), "{padded:?}");
    assert_eq!(m.counters().padding_refused, 19);
}

#[test]
fn only_pongs_for_our_own_pings_count() {
    let mut m = machine(1, &["a"], |b| b);
    m.handle_connected(ms(1), ConnId(1), &hello(2, 2, &["a"]), false, None);
    let actions = drain(&mut m);
    let ping_id = sends(&actions, ConnId(1))
        .into_iter()
        .find_map(|f| match f {
            Frame::Ping(p) => Some(p.id),
            _ => None,
        })
        .expect("a first ping");
    // An unsolicited pong claiming a tiny round trip is ignored.
    let forged = chaski_wire::Pong {
        id: ping_id + 1000,
        sent_at_micros: 30_000,
        padding: Bytes::new(),
    };
    m.handle_frame(ms(30), ConnId(1), Frame::Pong(forged));
    let actions = drain(&mut m);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Event(Event::LatencyUpdated { .. }))),
        "{actions:?}"
    );
    // The real answer is timed by our clock, whatever time it echoes.
    let answer = chaski_wire::Pong {
        id: ping_id,
        sent_at_micros: 29_999,
        padding: Bytes::new(),
    };
    m.handle_frame(ms(30), ConnId(1), Frame::Pong(answer));
    let actions = drain(&mut m);
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Event(Event::LatencyUpdated { srtt, .. }) if *srtt == Duration::from_millis(29)
    )));
}

#[test]
fn a_message_claiming_another_publisher_first_hand_is_a_violation() {
    let mut m = with_peer();
    // Peer 2 sends a message "straight from" publisher 7.
    let r = m.route(ms(2), Some(ConnId(1)), &message(7, 1, "a", 5));
    assert!(r.duplicate && !r.deliver && r.forward.is_empty());
    let actions = drain(&mut m);
    assert!(actions.contains(&Action::Close {
        conn: ConnId(1),
        reason: GoodbyeReason::ProtocolError
    }));
    assert_eq!(m.counters().violations.impersonated_publisher, 1);
    assert_eq!(m.counters().messages_rejected, 1);
}

#[test]
fn a_forged_far_ahead_sequence_is_refused_and_does_not_silence_the_publisher() {
    let mut m = with_two_neighbours(|b| b);
    // Publisher 9 is heard second-hand through 2.
    for seq in 1..=3 {
        let r = m.route(ms(1), Some(ConnId(2)), &forwarded(&message(9, seq, "a", 5)));
        assert!(r.deliver);
    }
    // 3 forwards a forged message from 9 with the largest sequence.
    let r = m.route(
        ms(2),
        Some(ConnId(3)),
        &forwarded(&message(9, u64::MAX, "a", 5)),
    );
    assert!(!r.deliver && r.forward.is_empty());
    // Refused and counted; the connection stays (an honest neighbour forwards such a jump too
    // after this node missed messages).
    let actions = drain(&mut m);
    assert!(actions.iter().all(|a| !matches!(a, Action::Close { .. })));
    assert_eq!(m.counters().violations.implausible_sequence, 1);
    assert_eq!(m.counters().messages_rejected, 1);
    // 9's real messages still arrive.
    for seq in 4..=6 {
        let r = m.route(ms(3), Some(ConnId(2)), &forwarded(&message(9, seq, "a", 5)));
        assert!(r.deliver, "message {seq} of the real publisher");
    }
    // As a datagram, the same forgery is dropped without closing anything.
    let r = m.route_datagram(
        ms(4),
        ConnId(2),
        &forwarded(&message(9, u64::MAX - 1, "a", 5)),
    );
    assert!(!r.deliver);
    assert!(
        drain(&mut m)
            .iter()
            .all(|a| !matches!(a, Action::Close { .. }))
    );
    assert!(
        m.route(ms(5), Some(ConnId(2)), &forwarded(&message(9, 7, "a", 5)))
            .deliver
    );
}

#[test]
fn after_missing_messages_a_jump_forwarded_by_two_neighbours_is_followed() {
    let mut m = with_two_neighbours(|b| b);
    assert!(
        m.route(ms(1), Some(ConnId(2)), &forwarded(&message(9, 1, "a", 5)))
            .deliver
    );
    // This node missed 100,000 of 9's messages; both neighbours forward the next one.
    let next = 100_002;
    let first = m.route(
        ms(2),
        Some(ConnId(2)),
        &forwarded(&message(9, next, "a", 5)),
    );
    assert!(!first.deliver, "one peer's word is not enough");
    let second = m.route(
        ms(2),
        Some(ConnId(3)),
        &forwarded(&message(9, next, "a", 5)),
    );
    assert!(second.deliver, "a second peer confirms the jump");
    assert!(
        drain(&mut m)
            .iter()
            .all(|a| !matches!(a, Action::Close { .. }))
    );
    for seq in next + 1..next + 100 {
        let r = m.route(ms(3), Some(ConnId(2)), &forwarded(&message(9, seq, "a", 5)));
        assert!(r.deliver, "message {seq}");
    }
}

#[test]
fn beacons_are_dialed_at_their_source_and_ignored_with_lan_discovery_off() {
    let beacon = |listen: SocketAddr| Beacon {
        network_id: String::new(),
        node_id: NodeId::from_u128(5),
        name: "n5".into(),
        listen_addrs: vec![listen],
        subscription_digest: 0,
        subscription_count: 1,
        capabilities: Capabilities::NONE,
        sequence: 1,
        auth_tag: Bytes::new(),
    };
    let elsewhere = SocketAddr::from(([10, 9, 8, 7], 9999));
    let from = SocketAddr::from(([127, 0, 0, 5], 7000));
    // LAN discovery on: the beacon's source address with its port, not the claimed host.
    let mut m = machine(1, &["a"], |b| b.lan_discovery(true));
    m.handle_datagram(ms(1), from, Frame::Beacon(beacon(elsewhere)));
    let dials: Vec<SocketAddr> = drain(&mut m)
        .into_iter()
        .filter_map(|a| match a {
            Action::Dial { addr, .. } => Some(addr),
            _ => None,
        })
        .collect();
    assert_eq!(dials, vec![SocketAddr::from(([127, 0, 0, 5], 9999))]);
    // LAN discovery off: a unicast beacon dials nothing.
    let mut m = machine(1, &["a"], |b| b);
    m.handle_datagram(ms(1), from, Frame::Beacon(beacon(elsewhere)));
    assert!(
        !drain(&mut m)
            .iter()
            .any(|a| matches!(a, Action::Dial { .. }))
    );
}

#[test]
fn learned_addresses_are_dialed_only_if_a_peer_can_be_there_and_at_a_bounded_rate() {
    // Listening on 10.0.0.1 (not loopback): loopback, multicast, unspecified are not dialed.
    let mut m = Membership::new(
        Config::builder(NodeId::from_u128(1))
            .listen_addr(SocketAddr::from(([10, 0, 0, 1], 7447)))
            .lan_discovery(false)
            .subscribe(t("a"))
            .build()
            .unwrap(),
        Instant::ZERO,
    );
    m.handle_timeout(Instant::ZERO);
    m.handle_connected(ms(1), ConnId(1), &hello(2, 2, &["a"]), false, None);
    drain(&mut m);
    let mut peers = Vec::new();
    for (i, ip) in [
        [127, 0, 0, 9],
        [224, 0, 0, 1],
        [0, 0, 0, 0],
        [255, 255, 255, 255],
    ]
    .into_iter()
    .enumerate()
    {
        let mut p = info(100 + i as u128, 1, 0);
        p.subscriptions = vec![t("a")];
        p.listen_addrs = vec![SocketAddr::from((ip, 7447))];
        peers.push(p);
    }
    // And 200 plausible ones.
    for i in 0..200u32 {
        let mut p = info(1000 + u128::from(i), 1, 0);
        p.subscriptions = vec![t("a")];
        p.listen_addrs = vec![SocketAddr::from((
            [10, 1, (i / 250) as u8, (i % 250) as u8 + 1],
            7447,
        ))];
        peers.push(p);
    }
    for chunk in peers.chunks(200) {
        m.handle_frame(
            ms(2),
            ConnId(1),
            Frame::PeerExchange(PeerExchange {
                peers: chunk.to_vec(),
            }),
        );
    }
    let dials: Vec<SocketAddr> = drain(&mut m)
        .into_iter()
        .filter_map(|a| match a {
            Action::Dial { addr, .. } => Some(addr),
            _ => None,
        })
        .collect();
    assert!(
        dials
            .iter()
            .all(|a| a.ip().to_string().starts_with("10.1.")),
        "{dials:?}"
    );
    assert!(
        dials.len() <= chaski_membership::LEARNED_DIAL_BURST as usize,
        "{} dials at once",
        dials.len()
    );
    assert!(m.counters().undialable_addrs >= 1);
}

#[test]
fn status_requests_are_answered_only_from_loopback_unless_configured() {
    let remote = SocketAddr::from(([10, 0, 0, 5], 40000));
    let mut m = machine(1, &["a"], |b| b);
    m.handle_connected(ms(1), ConnId(1), &hello(2, 2, &["a"]), false, Some(remote));
    drain(&mut m);
    let request = Frame::StatusRequest(StatusRequest { request_id: 1 });
    m.handle_frame(ms(2), ConnId(1), request.clone());
    let actions = drain(&mut m);
    assert!(actions.contains(&Action::Close {
        conn: ConnId(1),
        reason: GoodbyeReason::Unauthorized
    }));
    assert!(
        sends(&actions, ConnId(1)).is_empty(),
        "no peer table left the node"
    );
    assert_eq!(m.counters().status_refused, 1);
    // From loopback, or with `status_from_anywhere`, it is answered.
    let mut m = machine(1, &["a"], |b| b.status_from_anywhere(true));
    m.handle_connected(ms(1), ConnId(1), &hello(2, 2, &["a"]), false, Some(remote));
    drain(&mut m);
    m.handle_frame(ms(2), ConnId(1), request);
    let actions = drain(&mut m);
    assert!(matches!(
        sends(&actions, ConnId(1)).as_slice(),
        [Frame::StatusResponse(_)]
    ));
}

#[test]
fn idle_inbound_connections_give_way_to_links_the_node_wants() {
    let mut m = machine(1, &["a"], |b| b.max_peers(2));
    // Two peers that share nothing with us fill the slots (they only ping).
    m.handle_connected(ms(1), ConnId(1), &hello(2, 2, &["z"]), false, Some(addr(2)));
    m.handle_connected(ms(2), ConnId(2), &hello(3, 3, &["z"]), false, Some(addr(3)));
    drain(&mut m);
    // A subscriber of our topic is heard of: the oldest idle inbound makes room for it.
    let mut p = PeerInfo {
        node_id: NodeId::from_u128(9),
        name: "n9".into(),
        listen_addrs: vec![addr(9)],
        subscriptions: vec![t("a")],
        capabilities: Capabilities::NONE,
        full_topics: 0,
    };
    p.subscriptions = vec![t("a")];
    m.handle_frame(
        ms(3),
        ConnId(2),
        Frame::PeerExchange(PeerExchange { peers: vec![p] }),
    );
    let actions = drain(&mut m);
    assert!(actions.contains(&Action::Close {
        conn: ConnId(1),
        reason: GoodbyeReason::NotNeeded
    }));
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Dial { addr: a9, peer: Some(p), .. } if *a9 == addr(9) && *p == NodeId::from_u128(9)
    )));
    assert_eq!(m.counters().idle_evictions, 1);
}

#[test]
fn peer_exchanges_are_cut_to_fit_a_control_frame() {
    let mut m = machine(1, &["a"], |b| b.max_peers(200));
    // 60 connected peers, each with 1,000 topics of 30 bytes or so (overlapping sets, so that
    // each has many different neighbours): about 32 KiB of peer info each, 1.9 MiB in all.
    let long = |i: usize| format!("a-rather-long-topic-name-{i:05}");
    for p in 0..60u8 {
        let mut h = hello(100 + u128::from(p), p + 10, &["a"]);
        let first = usize::from(p) * 17;
        h.subscriptions
            .extend((first..first + 999).map(|i| Topic::new(&long(i)).unwrap()));
        m.handle_connected(ms(1), ConnId(u64::from(p) + 1), &h, false, None);
    }
    let mut exchanges = Vec::new();
    for step in 0..100 {
        let now = ms(10 + step * 100);
        m.handle_timeout(now);
        for action in drain(&mut m) {
            if let Action::Send {
                frame: frame @ Frame::PeerExchange(_),
                ..
            } = action
            {
                exchanges.push(frame.encoded_len());
            }
        }
    }
    assert!(!exchanges.is_empty(), "no exchange sent");
    assert!(
        exchanges
            .iter()
            .all(|&len| len <= chaski_wire::DEFAULT_MAX_CONTROL_FRAME_LEN),
        "{exchanges:?}"
    );
    assert!(m.counters().exchanges_cut > 0, "{exchanges:?}");
}

/// Drives `m`'s timers up to `until`, returning what it did on the way.
fn run_until(m: &mut Membership, until: Instant) -> Vec<Action> {
    let mut actions = drain(m);
    for _ in 0..10_000 {
        match m.poll_timeout() {
            Some(at) if at <= until => {
                m.handle_timeout(at);
                actions.extend(drain(m));
            }
            _ => break,
        }
    }
    actions
}

#[test]
fn an_old_copy_the_duplicate_filter_can_no_longer_tell_is_not_handed_out_twice() {
    let mut m = machine(1, &["a"], |b| b);
    // Publisher 2 on its own connection.
    m.handle_connected(ms(0), ConnId(2), &hello(2, 2, &["a"]), false, None);
    drain(&mut m);
    let last = 3 * chaski_membership::dedup::WINDOW;
    for seq in 1..=last {
        let r = m.route(ms(1), Some(ConnId(2)), &message(2, seq, "a", 5));
        assert!(r.deliver && r.in_order, "message {seq}");
    }
    // An answer to a repair request, served by the publisher out of its cache long after:
    // one hop, so old news, far behind the filter's window.
    let served = forwarded(&message(2, 5, "a", 5));
    let r = m.route(ms(2), Some(ConnId(2)), &served);
    assert!(r.duplicate && !r.deliver);
    // Even a copy that moves the filter (the publisher's own word, far behind: the filter
    // starts again from it) is not handed out again: the stream's order is past it.
    let r = m.route(ms(2), Some(ConnId(2)), &message(2, 7, "a", 5));
    assert!(r.duplicate && !r.deliver, "delivered already");
    let r = m.route(ms(3), Some(ConnId(2)), &message(2, last + 1, "a", 5));
    assert!(r.deliver && r.in_order);
    assert_eq!(m.counters().messages_duplicate, 2);
}

#[test]
fn a_message_that_comes_after_its_gap_was_reported_goes_to_unordered_consumers_once() {
    let mut m = machine(1, &["a"], |b| b.gap_timeout(Duration::from_millis(500)));
    m.handle_connected(ms(0), ConnId(2), &hello(2, 2, &["a"]), false, None);
    drain(&mut m);
    for seq in [1, 2] {
        assert!(
            m.route(ms(1), Some(ConnId(2)), &message(2, seq, "a", 5))
                .in_order
        );
    }
    let r = m.route(ms(1), Some(ConnId(2)), &message(2, 6, "a", 5));
    assert!(r.deliver && !r.in_order, "held back behind the gap");
    let actions = run_until(&mut m, ms(1000));
    let missed: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Event(Event::Missed { first, last, .. }) => Some((*first, *last)),
            _ => None,
        })
        .collect();
    assert_eq!(missed, [(3, 5)]);
    let delivered: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Deliver(msg) => Some(msg.sequence),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, [6], "released after the gap was given up");
    // 4 comes after all: for unordered consumers, once.
    let late = forwarded(&message(2, 4, "a", 5));
    let r = m.route(ms(1001), Some(ConnId(2)), &late);
    assert!(r.deliver && !r.in_order);
    let r = m.route(ms(1001), Some(ConnId(2)), &late);
    assert!(r.duplicate && !r.deliver);
    assert_eq!(m.counters().messages_late, 1);
    assert_eq!(m.counters().messages_missed, 3);
    let r = m.route(ms(1002), Some(ConnId(2)), &message(2, 7, "a", 5));
    assert!(r.deliver && r.in_order);
}

/// Node 1 on topic "a", linked to nodes 2 and 3 (connections 2 and 3), both on "a".
fn with_two_neighbours(
    tweak: impl FnOnce(chaski_membership::ConfigBuilder) -> chaski_membership::ConfigBuilder,
) -> Membership {
    let mut m = machine(1, &["a"], tweak);
    m.handle_connected(ms(0), ConnId(2), &hello(2, 2, &["a"]), false, None);
    m.handle_connected(ms(0), ConnId(3), &hello(3, 3, &["a"]), false, None);
    drain(&mut m);
    m
}

fn missed_ranges(actions: &[Action]) -> Vec<(u64, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event(Event::Missed { first, last, .. }) => Some((*first, *last)),
            _ => None,
        })
        .collect()
}

fn prunes_to(actions: &[Action], to: ConnId) -> usize {
    sends(actions, to)
        .iter()
        .filter(|f| matches!(f, Frame::Prune(_)))
        .count()
}

fn have(publisher: u128, topic: &str, first: u64, last: u64) -> Frame {
    Frame::Have(chaski_wire::Have {
        streams: vec![chaski_wire::StreamHead {
            stream: chaski_wire::StreamId {
                publisher: NodeId::from_u128(publisher),
                incarnation: 0,
                topic: t(topic),
            },
            first,
            last,
        }],
    })
}

#[test]
fn a_gap_that_a_lagging_path_fills_in_order_is_never_given_up() {
    let gap_timeout = Duration::from_millis(500);
    let mut m = with_two_neighbours(|b| b.gap_timeout(gap_timeout));
    assert!(
        m.route(ms(1), Some(ConnId(2)), &message(2, 1, "a", 5))
            .in_order
    );
    // A faster neighbour announces 2..=10: a gap, which the publisher's own (lagging)
    // connection fills one message at a time, each well within the gap timeout of the last,
    // though all of it takes several gap timeouts.
    m.handle_frame(ms(2), ConnId(3), have(2, "a", 2, 10));
    let mut actions = drain(&mut m);
    for seq in 2..=10 {
        let at = ms(2 + (seq - 1) * 300);
        actions.extend(run_until(&mut m, at));
        let r = m.route(at, Some(ConnId(2)), &message(2, seq, "a", 5));
        assert!(r.deliver && r.in_order, "message {seq}");
    }
    actions.extend(run_until(&mut m, ms(10_000)));
    assert_eq!(missed_ranges(&actions), [], "progress times a gap afresh");
    assert_eq!(m.counters().messages_missed, 0);
}

#[test]
fn a_relay_copy_ahead_of_a_publisher_feeding_directly_is_left_to_the_publisher() {
    let mut m = with_two_neighbours(|b| b);
    for seq in 1..=2 {
        assert!(
            m.route(ms(1), Some(ConnId(2)), &message(2, seq, "a", 5))
                .in_order
        );
    }
    // Relay 3 is ahead of the publisher's connection (which lags, a deep queue on the way):
    // its copy is not held back (the hold-back buffer would fill with what needs no repair)
    // and its link is pruned for the stream.
    let r = m.route(ms(2), Some(ConnId(3)), &forwarded(&message(2, 5, "a", 5)));
    assert!(!r.deliver);
    assert_eq!(m.held_count(), 0);
    assert_eq!(prunes_to(&drain(&mut m), ConnId(3)), 1);
    // The publisher's own copies come, 5 included, though the duplicate filter has seen it.
    for seq in 3..=6 {
        let r = m.route(ms(3), Some(ConnId(2)), &message(2, seq, "a", 5));
        assert!(r.deliver && r.in_order, "message {seq}");
    }
    assert_eq!(missed_ranges(&run_until(&mut m, ms(5_000))), []);
}

#[test]
fn copies_refused_as_implausible_prune_their_link() {
    let mut m = with_two_neighbours(|b| b);
    // Publisher 9, heard through 2.
    assert!(
        m.route(ms(1), Some(ConnId(2)), &forwarded(&message(9, 1, "a", 5)))
            .deliver
    );
    let far = 2 + chaski_membership::dedup::MAX_AHEAD;
    for _ in 0..3 {
        let r = m.route(ms(2), Some(ConnId(3)), &forwarded(&message(9, far, "a", 5)));
        assert!(!r.deliver);
    }
    // Pruned once: 3 announces from now on, and its announcements drive repair if this node
    // really is behind.
    assert_eq!(prunes_to(&drain(&mut m), ConnId(3)), 1);
    let stream = chaski_wire::StreamId {
        publisher: NodeId::from_u128(9),
        incarnation: 0,
        topic: t("a"),
    };
    assert!(!m.is_eager(ConnId(3), &stream));
    assert!(m.is_eager(ConnId(2), &stream));
}

#[test]
fn a_graft_asks_the_upstream_peer_to_push_without_pushing_back_to_it() {
    let mut m = with_two_neighbours(|b| b);
    let stream = chaski_wire::StreamId {
        publisher: NodeId::from_u128(9),
        incarnation: 0,
        topic: t("a"),
    };
    // Publisher 9 through 2 first, then the same copy through 3: 3 is pruned.
    let first = forwarded(&message(9, 1, "a", 5));
    assert!(m.route(ms(1), Some(ConnId(2)), &first).deliver);
    assert!(m.route(ms(1), Some(ConnId(3)), &first).duplicate);
    assert_eq!(prunes_to(&drain(&mut m), ConnId(3)), 1);
    assert!(!m.is_eager(ConnId(3), &stream));
    // 2 falls silent; 3 announces 2..=4. The request to 3 grafts it (3 will push to this
    // node), but this node does not push the stream back up to 3.
    m.handle_frame(ms(10), ConnId(3), have(9, "a", 2, 4));
    let actions = run_until(&mut m, ms(200));
    let wants = sends(&actions, ConnId(3))
        .into_iter()
        .filter(|f| matches!(f, Frame::Want(_)))
        .count();
    assert_eq!(wants, 1);
    assert_eq!(m.counters().grafts_sent, 1);
    assert!(!m.is_eager(ConnId(3), &stream));
    // 3's copies come; one that then comes through 3 again prunes it anew.
    for seq in 2..=4 {
        let r = m.route(
            ms(210),
            Some(ConnId(3)),
            &forwarded(&message(9, seq, "a", 5)),
        );
        assert!(r.deliver && r.in_order, "message {seq}");
    }
    drain(&mut m);
    let again = forwarded(&message(9, 5, "a", 5));
    assert!(m.route(ms(2_000), Some(ConnId(2)), &again).deliver);
    assert!(m.route(ms(2_000), Some(ConnId(3)), &again).duplicate);
    assert_eq!(prunes_to(&drain(&mut m), ConnId(3)), 1);
}

#[test]
fn a_prune_naming_a_stream_this_node_does_not_have_is_ignored() {
    let mut m = with_two_neighbours(|b| b);
    let stream = |publisher: u128| chaski_wire::StreamId {
        publisher: NodeId::from_u128(publisher),
        incarnation: 0,
        topic: t("a"),
    };
    // A thousand streams nobody published: nothing is kept for them.
    let streams: Vec<_> = (100..1100).map(stream).collect();
    m.handle_frame(
        ms(1),
        ConnId(2),
        Frame::Prune(chaski_wire::Prune { streams }),
    );
    assert!(m.is_eager(ConnId(2), &stream(100)));
    // The first message of one of them is forwarded to 2 as to any eager link.
    let r = m.route(ms(2), Some(ConnId(3)), &forwarded(&message(100, 1, "a", 5)));
    assert_eq!(r.forward, &[ConnId(2)]);
    // Once this node has the stream, a prune is taken.
    m.handle_frame(
        ms(3),
        ConnId(2),
        Frame::Prune(chaski_wire::Prune {
            streams: vec![stream(100)],
        }),
    );
    assert!(!m.is_eager(ConnId(2), &stream(100)));
}

fn delivered_in_order(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Deliver(msg) => Some(msg.sequence),
            _ => None,
        })
        .collect()
}

#[test]
fn a_stream_first_heard_after_its_start_settles_before_its_order_begins() {
    let mut m = with_two_neighbours(|b| b);
    // Just linked to publisher 2, this node hears its message 2 first-hand before relay 3's
    // copy of message 1, which comes long after `repair_delay` (a loaded relay): both reach
    // ordered consumers, in order, for relay 3's link was there before the stream began.
    let r = m.route(ms(1), Some(ConnId(2)), &message(2, 2, "a", 5));
    assert!(r.deliver && !r.in_order, "held while the order settles");
    let early = run_until(&mut m, ms(400));
    assert_eq!(delivered_in_order(&early), [], "still waiting for relay 3");
    let r = m.route(ms(400), Some(ConnId(3)), &forwarded(&message(2, 1, "a", 5)));
    assert!(r.deliver && !r.in_order);
    let actions = run_until(&mut m, ms(500));
    assert_eq!(delivered_in_order(&actions), [1, 2]);
    assert_eq!(missed_ranges(&actions), []);
    let r = m.route(ms(501), Some(ConnId(2)), &message(2, 3, "a", 5));
    assert!(r.deliver && r.in_order);
    // A stream joined late (nothing earlier comes): it starts where it was first heard, once
    // the other link showed it (here by its next message) and `repair_delay` passed.
    let r = m.route(
        ms(600),
        Some(ConnId(2)),
        &forwarded(&message(7, 500, "a", 5)),
    );
    assert!(r.deliver && !r.in_order);
    let r = m.route(
        ms(601),
        Some(ConnId(3)),
        &forwarded(&message(7, 501, "a", 5)),
    );
    assert!(r.deliver && !r.in_order);
    let actions = run_until(&mut m, ms(700));
    assert_eq!(delivered_in_order(&actions), [500, 501]);
    // A link that never shows the stream delays its start by `gap_timeout` at most.
    let r = m.route(
        ms(800),
        Some(ConnId(2)),
        &forwarded(&message(8, 40, "a", 5)),
    );
    assert!(r.deliver && !r.in_order);
    let waiting = run_until(&mut m, ms(1_700));
    assert_eq!(delivered_in_order(&waiting), []);
    let actions = run_until(&mut m, ms(1_830));
    assert_eq!(delivered_in_order(&actions), [40]);
    assert_eq!(missed_ranges(&actions), []);
    assert_eq!(m.counters().messages_missed, 0);
}

#[test]
fn a_stream_announced_by_its_publisher_on_a_new_link_waits_for_the_older_links() {
    let mut m = with_two_neighbours(|b| b);
    // Publisher 2, newly linked, says it sent message 1 already (as on every new link); relay
    // 3, linked before, announces message 1 while its copy is on its way; message 2 comes
    // first-hand; the relay's copy of 1 long after.
    m.handle_frame(ms(1), ConnId(2), have(2, "a", 2, 1));
    let r = m.route(ms(2), Some(ConnId(2)), &message(2, 2, "a", 5));
    assert!(r.deliver && !r.in_order);
    m.handle_frame(ms(3), ConnId(3), have(2, "a", 1, 1));
    let r = m.route(ms(300), Some(ConnId(3)), &forwarded(&message(2, 1, "a", 5)));
    assert!(r.deliver && !r.in_order);
    let actions = run_until(&mut m, ms(500));
    assert_eq!(delivered_in_order(&actions), [1, 2]);
    assert_eq!(missed_ranges(&actions), []);
    // Had the relay's copy not come, the announcement names what is missing: asked for once
    // the order settled, then reported missed if nobody has it.
    m.handle_frame(ms(600), ConnId(2), have(9, "a", 5, 4));
    let r = m.route(ms(601), Some(ConnId(2)), &forwarded(&message(9, 5, "a", 5)));
    assert!(r.deliver && !r.in_order);
    m.handle_frame(ms(602), ConnId(3), have(9, "a", 3, 4));
    let actions = run_until(&mut m, ms(3_000));
    let wants = sends(&actions, ConnId(3))
        .into_iter()
        .filter(|f| matches!(f, Frame::Want(_)))
        .count();
    assert!(wants > 0, "the relay was asked for 3..=4: {actions:?}");
    assert_eq!(delivered_in_order(&actions), [5]);
    assert_eq!(missed_ranges(&actions), [(3, 4)]);
}
