//! A hostile node in a simulated network: once the honest network has formed, one node sends
//! arbitrary well-formed frames (forged peers, topics, searches, pairings, pongs, publishes
//! claiming honest publishers) on all its connections, then crashes. The honest nodes must
//! still form one connected graph per topic and deliver every honest message exactly once.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use chaski_membership::{Config, Instant};
use chaski_testkit::sim::{Sim, SimConfig};
use chaski_wire::{
    Capabilities, Frame, Have, Message, NodeId, PairRequest, PairResponse, PeerExchange, PeerInfo,
    Pong, Prune, Search, SearchReply, StreamHead, StreamId, StreamRange, SubscriptionUpdate, Topic,
    Unpair, Want,
};
use proptest::prelude::*;

fn topic(n: u8) -> Topic {
    Topic::new(&format!("topic{}", n % 4)).unwrap()
}

fn peer_info(id: u128, port: u16, topics: &[u8]) -> PeerInfo {
    PeerInfo {
        node_id: NodeId::from_u128(id),
        name: String::new(),
        listen_addrs: vec![SocketAddr::from(([127, 0, 0, (id % 250) as u8 + 1], port))],
        subscriptions: topics.iter().map(|&t| topic(t)).collect(),
        capabilities: Capabilities::NONE,
        full_topics: 0,
    }
}

/// A frame the hostile node sends; `honest` lists the honest node ids it may claim.
#[derive(Debug, Clone)]
enum Attack {
    Exchange(Vec<(u128, u16, Vec<u8>)>),
    Update(Vec<u8>, Vec<u8>, u64),
    Search(u128, u8, u32, usize),
    Reply(u128, u8, u32),
    Pair(Vec<u8>),
    PairAnswer(Vec<u8>, Vec<u8>),
    Unpair(Vec<u8>),
    Pong(u64, u64),
    /// A publish claiming honest node `index % n`, with this sequence and hop count.
    Forge(usize, u64, u32),
    /// An announcement that honest node `index % n` is at this sequence on topic0.
    Have(usize, u64),
    /// A request for this range of honest node `index % n`'s messages on topic0.
    Want(usize, u64, u64),
    /// A prune of honest node `index % n`'s stream on topic0.
    Prune(usize),
}

fn attack() -> impl Strategy<Value = Attack> {
    prop_oneof![
        prop::collection::vec(
            (
                any::<u128>(),
                any::<u16>(),
                prop::collection::vec(any::<u8>(), 0..4)
            ),
            0..300
        )
        .prop_map(Attack::Exchange),
        (
            prop::collection::vec(any::<u8>(), 0..40),
            prop::collection::vec(any::<u8>(), 0..40),
            any::<u64>()
        )
            .prop_map(|(a, r, v)| Attack::Update(a, r, v)),
        (any::<u128>(), any::<u8>(), any::<u32>(), 0usize..20)
            .prop_map(|(o, t, h, v)| Attack::Search(o, t, h, v)),
        (any::<u128>(), any::<u8>(), any::<u32>()).prop_map(|(o, t, h)| Attack::Reply(o, t, h)),
        prop::collection::vec(any::<u8>(), 0..20).prop_map(Attack::Pair),
        (
            prop::collection::vec(any::<u8>(), 0..10),
            prop::collection::vec(any::<u8>(), 0..10)
        )
            .prop_map(|(a, r)| Attack::PairAnswer(a, r)),
        prop::collection::vec(any::<u8>(), 0..10).prop_map(Attack::Unpair),
        (any::<u64>(), any::<u64>()).prop_map(|(i, t)| Attack::Pong(i, t)),
        (any::<usize>(), any::<u64>(), 0u32..3).prop_map(|(i, s, h)| Attack::Forge(i, s, h)),
        (any::<usize>(), any::<u64>()).prop_map(|(i, s)| Attack::Have(i, s)),
        (any::<usize>(), 1u64..10, any::<u64>()).prop_map(|(i, f, l)| Attack::Want(i, f, l)),
        any::<usize>().prop_map(Attack::Prune),
    ]
}

fn frame(a: &Attack, honest: &[NodeId]) -> Frame {
    match a {
        Attack::Exchange(peers) => Frame::PeerExchange(PeerExchange {
            peers: peers
                .iter()
                .map(|(id, port, t)| peer_info(*id, *port, t))
                .collect(),
        }),
        Attack::Update(added, removed, revision) => Frame::SubscriptionUpdate(SubscriptionUpdate {
            added: added.iter().map(|&t| topic(t)).collect(),
            removed: removed.iter().map(|&t| topic(t)).collect(),
            revision: *revision,
        }),
        Attack::Search(origin, t, hop_limit, visited) => Frame::Search(Search {
            search_id: 1,
            origin: peer_info(*origin, 7447, &[*t]),
            topic: topic(*t),
            hop_limit: *hop_limit,
            visited: (0..*visited)
                .map(|i| NodeId::from_u128(i as u128 + 1))
                .collect(),
        }),
        Attack::Reply(origin, t, hop_limit) => Frame::SearchReply(SearchReply {
            search_id: 1,
            origin: NodeId::from_u128(*origin),
            responder: peer_info(origin.wrapping_add(1), 7447, &[*t]),
            topic: topic(*t),
            paired: 0,
            capacity: 5,
            hop_limit: *hop_limit,
            component: NodeId::from_u128(*origin),
        }),
        Attack::Pair(t) => Frame::PairRequest(PairRequest {
            request_id: 1,
            topics: t.iter().map(|&t| topic(t)).collect(),
        }),
        Attack::PairAnswer(a, r) => Frame::PairResponse(PairResponse {
            request_id: 1,
            accepted: a.iter().map(|&t| topic(t)).collect(),
            rejected: r.iter().map(|&t| topic(t)).collect(),
        }),
        Attack::Unpair(t) => Frame::Unpair(Unpair {
            topics: t.iter().map(|&t| topic(t)).collect(),
        }),
        Attack::Pong(id, at) => Frame::Pong(Pong {
            id: *id,
            sent_at_micros: *at,
            padding: Bytes::new(),
        }),
        Attack::Forge(i, sequence, hops) => Frame::Publish(Message {
            topic: topic(0),
            payload: Bytes::from_static(b"forged"),
            publisher: honest[i % honest.len()],
            sequence: *sequence,
            incarnation: 0,
            timestamp_micros: 0,
            hop_limit: 8,
            hops: *hops,
            headers: Vec::new(),
        }),
        Attack::Have(i, last) => Frame::Have(Have {
            streams: vec![StreamHead {
                stream: stream(honest[i % honest.len()]),
                last: *last,
                first: 1,
            }],
        }),
        Attack::Want(i, first, last) => Frame::Want(Want {
            ranges: vec![StreamRange {
                stream: stream(honest[i % honest.len()]),
                first: *first,
                last: (*last).max(*first),
            }],
        }),
        Attack::Prune(i) => Frame::Prune(Prune {
            streams: vec![stream(honest[i % honest.len()])],
        }),
    }
}

fn stream(publisher: NodeId) -> StreamId {
    StreamId {
        publisher,
        incarnation: 0,
        topic: topic(0),
    }
}

fn run(seed: u64, subscriptions: &[u8], attacks: &[Attack]) -> Result<(), TestCaseError> {
    let mut sim = Sim::new(SimConfig {
        seed,
        ..SimConfig::default()
    });
    let relay = sim.add_node(|id, a| {
        Config::builder(id)
            .listen_addr(a)
            .relay(true)
            .lan_discovery(false)
            .build()
            .unwrap()
    });
    let relay_addr = Sim::addr_of(relay);
    // The hostile node joins like any other, subscribed to topic0.
    for &bits in std::iter::once(&1u8).chain(subscriptions) {
        sim.add_node(|id, a| {
            let mut b = Config::builder(id)
                .listen_addr(a)
                .seed(relay_addr)
                .lan_discovery(false);
            for t in 0..4u8 {
                if bits & (1 << t) != 0 || (t == 0 && bits % 16 == 0) {
                    b = b.subscribe(topic(t));
                }
            }
            b.build().unwrap()
        });
    }
    let hostile = 1;
    prop_assert!(
        sim.run_until_quiet(Duration::from_secs(3), sim.now() + Duration::from_secs(120))
            .is_some()
    );
    // Honest publishers have been heard by everyone before the forgeries.
    for p in 2..sim.len() {
        for t in sim
            .node(p)
            .unwrap()
            .subscriptions()
            .cloned()
            .collect::<Vec<_>>()
        {
            sim.publish(p, &t, Bytes::from_static(b"before"));
        }
    }
    sim.run_for(Duration::from_secs(1));
    let honest: Vec<NodeId> = (2..sim.len())
        .filter_map(|i| sim.node(i).map(|m| m.node_id()))
        .collect();
    let conns = sim.connections_of(hostile);
    for (k, a) in attacks.iter().enumerate() {
        if conns.is_empty() {
            break;
        }
        let conn = conns[k % conns.len()];
        sim.inject(hostile, conn, frame(a, &honest));
    }
    sim.run_for(Duration::from_secs(1));
    sim.crash(hostile);
    let quiet = sim.run_until_quiet(Duration::from_secs(5), sim.now() + Duration::from_secs(400));
    prop_assert!(quiet.is_some(), "the honest nodes did not settle");
    sim.check_invariants(true).map_err(TestCaseError::fail)?;
    sim.check_topics_connected().map_err(TestCaseError::fail)?;
    // Every honest subscriber publishes once more; every honest subscriber of the topic gets
    // it exactly once (no forged sequence silenced anyone).
    let delivered_before = sim.deliveries().len();
    let start: Instant = sim.now();
    let mut expected = 0;
    for t in sim.topics() {
        let subs = sim.subscribers(&t);
        for &p in &subs {
            sim.publish(p, &t, Bytes::from_static(b"after"));
            expected += subs.len();
        }
    }
    sim.run_for(Duration::from_secs(3));
    let after: Vec<_> = sim.deliveries()[delivered_before..]
        .iter()
        .filter(|d| d.at >= start)
        .collect();
    prop_assert_eq!(after.len(), expected);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 64, ..ProptestConfig::default() })]

    #[test]
    fn a_hostile_node_cannot_split_honest_topics_or_silence_honest_publishers(
        seed in any::<u64>(),
        subscriptions in prop::collection::vec(1u8..16, 3..12),
        attacks in prop::collection::vec(attack(), 1..40),
    ) {
        run(seed, &subscriptions, &attacks)?;
    }
}
