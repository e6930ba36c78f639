//! Hostile peers against real nodes over loopback: a client that completes the handshake (as
//! anyone can) and then sends what an attacker would. Each test asserts that the victim closes
//! that connection (or ignores that datagram), counts it, keeps its memory within a bound, and
//! that an honest publisher's messages keep reaching the victim, none lost.

mod common;

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use chaski::{MessageStream, Node, NodeId, Topic};
use chaski_testkit::hostile::{self, HostilePeer};
use chaski_wire::{
    Beacon, Capabilities, Frame, GoodbyeReason, Message, PeerExchange, PeerInfo, Ping, Search,
    SubscriptionUpdate,
};
use common::{bounded, builder, next, start, until_peers};

/// How much the process may grow while under attack (victim, publisher and attacker share it),
/// besides what decoding the attack's frame costs ([`DECODE_FACTOR`] times its size: a frame
/// is decoded whole before its lists are checked, and the allocator keeps what it freed).
const MEMORY_BOUND: u64 = 32 << 20;
/// Memory a decoded control frame may take per byte of frame (prost's structures).
const DECODE_FACTOR: u64 = 8;

/// The attacks run one at a time, so that each measures only itself (they share a process).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// How long the victim may take to close an abusive connection.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// A victim subscribed to `t`, and an honest publisher paired with it.
struct Scene {
    victim: Node,
    publisher: Node,
    stream: MessageStream,
    sent: u64,
    _guard: tokio::sync::MutexGuard<'static, ()>,
}

impl Scene {
    async fn new() -> Result<Scene> {
        let guard = ONE_AT_A_TIME.lock().await;
        let victim = start(builder("victim", &["t"])).await?;
        let publisher =
            start(builder("publisher", &["t"]).seeds([victim.local_addr().to_string()])).await?;
        let id = publisher.id();
        until_peers(&victim, |peers| {
            peers
                .iter()
                .any(|p| p.id == id && p.paired_topics.iter().any(|t| t == "t"))
        })
        .await?;
        let stream = victim.stream();
        let mut scene = Scene {
            victim,
            publisher,
            stream,
            sent: 0,
            _guard: guard,
        };
        scene.honest_flow(100).await?;
        Ok(scene)
    }

    fn addr(&self) -> SocketAddr {
        self.victim.local_addr()
    }

    /// The publisher sends `n` more messages; the victim receives every one, in order.
    async fn honest_flow(&mut self, n: u64) -> Result<()> {
        let first = self.sent;
        for i in first..first + n {
            self.publisher.publish("t", format!("honest {i}")).await?;
        }
        self.sent += n;
        for i in first..first + n {
            let message = next(&mut self.stream).await?;
            ensure!(
                message.payload == format!("honest {i}").as_bytes(),
                "expected honest {i}, got {:?}",
                message.payload
            );
            ensure!(message.publisher == self.publisher.id());
        }
        Ok(())
    }

    /// Connects an attacker claiming a fresh id (or `as_id`).
    async fn attacker(
        &self,
        as_id: Option<NodeId>,
        listen: Vec<SocketAddr>,
    ) -> Result<HostilePeer> {
        let hello = hostile::hello(
            as_id.unwrap_or_else(NodeId::random),
            "mallory",
            listen,
            &["t"],
        );
        Ok(HostilePeer::connect(self.addr(), hello).await?)
    }

    async fn shutdown(self) -> Result<()> {
        self.publisher.shutdown().await?;
        self.victim.shutdown().await?;
        Ok(())
    }
}

/// Waits (polling the node's counters, which have no event) until `done` holds, at most 10 s.
async fn until_stats(node: &Node, done: impl Fn(&chaski::NodeStats) -> bool) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !done(&node.stats()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .context("the counters never got there")
}

fn report(attack: &str, before: u64, scene: &Scene) {
    let after = hostile::rss_bytes();
    let stats = scene.victim.stats();
    eprintln!(
        "{attack}: RSS {} -> {} MiB; violations {}, rejected {}, padding refused {}, dials {}",
        before >> 20,
        after >> 20,
        stats.protocol_violations,
        stats.messages_rejected,
        stats.padding_refused,
        stats.dials
    );
}

fn assert_memory(before: u64, frame_len: usize) {
    let after = hostile::rss_bytes();
    let bound = MEMORY_BOUND + DECODE_FACTOR * frame_len as u64;
    assert!(
        after.saturating_sub(before) < bound,
        "the process grew from {} to {} MiB",
        before >> 20,
        after >> 20
    );
}

fn peer(id: u128, port: u16) -> PeerInfo {
    PeerInfo {
        node_id: NodeId::from_u128(id),
        name: String::new(),
        listen_addrs: vec![SocketAddr::from(([127, 0, 0, 1], port))],
        subscriptions: vec![Topic::new("t").unwrap()],
        capabilities: Capabilities::NONE,
        full_topics: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_asking_for_maximum_padding_costs_bounded_memory() -> Result<()> {
    bounded("ping flood", async {
        let mut scene = Scene::new().await?;
        let before = hostile::rss_bytes();
        let mut attacker = scene.attacker(None, Vec::new()).await?;
        // 2,000 pings of a few bytes each, each asking for the largest padding; never read.
        for id in 0..2000 {
            attacker
                .send(&Frame::Ping(Ping {
                    id,
                    sent_at_micros: 0,
                    padding: Bytes::new(),
                    reply_padding: u32::MAX,
                }))
                .await?;
        }
        until_stats(&scene.victim, |s| s.padding_refused >= 1900).await?;
        scene.honest_flow(1000).await?;
        report("ping flood", before, &scene);
        assert_memory(before, 0);
        drop(attacker);
        scene.shutdown().await
    })
    .await
}

/// Sends `frame` (encoded before measuring, so that the attacker's own structures do not count)
/// and checks that the victim closes that connection with `ProtocolError`, counts it, keeps
/// delivering the honest publisher's messages and stays within the memory bound.
async fn refused(scene: &mut Scene, what: &str, frame: Frame) -> Result<()> {
    let mut attacker = scene.attacker(None, Vec::new()).await?;
    let violations = scene.victim.stats().protocol_violations;
    let bytes = hostile::encode(&frame)?;
    drop(frame);
    let before = hostile::rss_bytes();
    let len = bytes.len();
    attacker.send_raw(&bytes).await?;
    drop(bytes);
    let reason = attacker.closed_by_victim(CLOSE_WITHIN).await?;
    assert_eq!(reason, Some(GoodbyeReason::ProtocolError), "{what}");
    until_stats(&scene.victim, |s| s.protocol_violations > violations).await?;
    scene.honest_flow(1000).await?;
    report(what, before, scene);
    assert_memory(before, len);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_peer_exchange_closes_that_connection_and_dials_nothing() -> Result<()> {
    bounded("peer exchange", async {
        let mut scene = Scene::new().await?;
        let dials = scene.victim.stats().dials;
        // 209,715 made-up peers: about 8 MiB in one frame.
        let peers = (0..209_715u32)
            .map(|i| peer(1 << 64 | u128::from(i), 1 + (i % 60_000) as u16))
            .collect();
        let frame = Frame::PeerExchange(PeerExchange { peers });
        refused(&mut scene, "peer exchange of 209,715 peers", frame).await?;
        assert_eq!(
            scene.victim.stats().dials,
            dials,
            "a made-up peer was dialed"
        );
        scene.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_update_of_100000_topics_closes_that_connection() -> Result<()> {
    bounded("subscription update", async {
        let mut scene = Scene::new().await?;
        let added = (0..100_000)
            .map(|i| Topic::new(&format!("topic-{i}")).unwrap())
            .collect();
        let frame = Frame::SubscriptionUpdate(SubscriptionUpdate {
            added,
            removed: Vec::new(),
            revision: 1,
        });
        refused(&mut scene, "subscription update of 100,000 topics", frame).await?;
        scene.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_with_a_million_visited_ids_is_refused() -> Result<()> {
    bounded("search", async {
        let mut scene = Scene::new().await?;
        let frame = Frame::Search(Search {
            search_id: 1,
            origin: peer(77, 9),
            topic: Topic::new("elsewhere").unwrap(),
            hop_limit: u32::MAX,
            visited: (0..1_000_000u128).map(NodeId::from_u128).collect(),
        });
        refused(&mut scene, "search with 1,000,000 visited ids", frame).await?;
        scene.shutdown().await
    })
    .await
}

fn forged(publisher: NodeId, sequence: u64, hops: u32) -> Message {
    Message {
        topic: Topic::new("t").unwrap(),
        payload: Bytes::from_static(b"forged"),
        publisher,
        sequence,
        timestamp_micros: 0,
        hop_limit: 8,
        hops,
        headers: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_publish_cannot_silence_a_publisher() -> Result<()> {
    bounded("forged publish", async {
        let mut scene = Scene::new().await?;
        let before = hostile::rss_bytes();
        let victim_publisher = scene.publisher.id();
        // Over TCP, as if forwarded (hop 1), with the largest sequence.
        let mut attacker = scene.attacker(None, Vec::new()).await?;
        attacker
            .send(&Frame::Publish(forged(victim_publisher, u64::MAX, 1)))
            .await?;
        let reason = attacker.closed_by_victim(CLOSE_WITHIN).await?;
        assert_eq!(reason, Some(GoodbyeReason::ProtocolError));
        // As if straight from the publisher (hop 0), from someone else.
        let mut impostor = scene.attacker(None, Vec::new()).await?;
        impostor
            .send(&Frame::Publish(forged(victim_publisher, 1_000_000, 0)))
            .await?;
        let reason = impostor.closed_by_victim(CLOSE_WITHIN).await?;
        assert_eq!(reason, Some(GoodbyeReason::ProtocolError));
        // As a datagram from the address an attacker's hello gave.
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let udp_addr = udp.local_addr()?;
        drop(udp);
        let _connected = scene.attacker(None, vec![udp_addr]).await?;
        hostile::send_datagram(
            udp_addr,
            scene.addr(),
            &Frame::Publish(forged(victim_publisher, u64::MAX - 1, 1)),
        )
        .await?;
        until_stats(&scene.victim, |s| s.messages_rejected >= 3).await?;
        // The publisher is not silenced; the forged payload never reached the application.
        scene.honest_flow(3000).await?;
        report("forged publishes (TCP, impostor, datagram)", before, &scene);
        assert_memory(before, 0);
        scene.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_claiming_a_connected_nodes_id_does_not_take_its_link() -> Result<()> {
    bounded("impostor hello", async {
        let mut scene = Scene::new().await?;
        // The real link is older than the window of simultaneous dials (2 s).
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let real = scene.publisher.id();
        let hello = hostile::hello(real, "publisher", Vec::new(), &["t"]);
        let mut impostor = HostilePeer::connect(scene.addr(), hello).await?;
        let reason = impostor.closed_by_victim(CLOSE_WITHIN).await?;
        assert_eq!(reason, Some(GoodbyeReason::Duplicate));
        // The real publisher keeps its link and its messages arrive.
        scene.honest_flow(1000).await?;
        assert!(scene.victim.peers().iter().any(|p| p.id == real));
        scene.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unicast_beacon_makes_a_node_without_lan_discovery_dial_nothing() -> Result<()> {
    bounded("beacon", async {
        let mut scene = Scene::new().await?;
        let dials = scene.victim.stats().dials;
        // Where the beacon would send the victim.
        let bait = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let beacon = Beacon {
            network_id: String::new(),
            node_id: NodeId::random(),
            name: "bait".into(),
            listen_addrs: vec![bait.local_addr()?],
            subscription_digest: 1,
            subscription_count: 1,
            capabilities: Capabilities::NONE,
            sequence: 1,
            auth_tag: Bytes::new(),
        };
        for _ in 0..20 {
            hostile::send_datagram(
                "127.0.0.1:0".parse()?,
                scene.addr(),
                &Frame::Beacon(beacon.clone()),
            )
            .await?;
        }
        // The honest flow after the beacons: by then the victim has handled them.
        scene.honest_flow(100).await?;
        // Checking that something does not happen: nobody dials the bait within a generous
        // half second after the beacons were handled.
        let dialed = tokio::time::timeout(Duration::from_millis(500), bait.accept()).await;
        assert!(dialed.is_err(), "the victim dialed the beacon's address");
        assert_eq!(scene.victim.stats().dials, dials);
        scene.shutdown().await
    })
    .await
}
