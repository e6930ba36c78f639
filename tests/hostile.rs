//! Hostile peers against real nodes over loopback: a client that completes the handshake (as
//! anyone can) and then sends what an attacker would. Each test asserts that the victim closes
//! that connection (or ignores that datagram), counts it, keeps its memory within a bound, and
//! that an honest publisher's messages keep reaching the victim, none lost.

mod common;

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use chaski::{Identity, MessageStream, Node, NodeId, Topic};
use chaski_testkit::hostile::{self, HostilePeer};
use chaski_wire::{
    Beacon, Capabilities, Frame, GoodbyeReason, Message, PeerExchange, PeerInfo, Ping, Search,
    SubscriptionUpdate,
};
use common::{bounded, builder, next, start, until_peers};

/// How much the process may grow while under attack (victim, publisher and attacker share it),
/// besides what decoding the attack's frame costs when it is read at all ([`DECODE_FACTOR`]
/// times its size: a control frame, at most 1 MiB, is decoded whole before its lists are
/// checked, and the allocator keeps what it freed).
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

    /// Connects an attacker with a key of its own (anyone may join an open network), claiming
    /// its own id.
    async fn attacker(&self, listen: Vec<SocketAddr>) -> Result<HostilePeer> {
        connect_as(self.addr(), "mallory", listen).await
    }

    async fn shutdown(self) -> Result<()> {
        self.publisher.shutdown().await?;
        self.victim.shutdown().await?;
        Ok(())
    }
}

/// Connects to `victim` with a fresh key, as `name`, claiming the key's id.
async fn connect_as(
    victim: SocketAddr,
    name: &str,
    listen: Vec<SocketAddr>,
) -> Result<HostilePeer> {
    let identity = Identity::generate()?;
    let hello = hostile::hello(identity.node_id(), name, listen, &["t"]);
    Ok(HostilePeer::connect(victim, &identity, hello).await?)
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
        "{attack}: RSS {} -> {} MiB; frames rejected {}, violations {}, messages rejected {}, \
         padding refused {}, dials {}",
        before >> 20,
        after >> 20,
        stats.frames_rejected,
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
        let mut attacker = scene.attacker(Vec::new()).await?;
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

/// Which counter a refused frame moves.
#[derive(Clone, Copy, Debug)]
enum Counted {
    /// A frame too long for its kind: closed by the transport before it is decoded.
    Unread,
    /// A frame that breaks a list limit: decoded (it is small), then refused by membership.
    Violation,
}

impl Counted {
    fn get(self, node: &Node) -> u64 {
        let stats = node.stats();
        match self {
            Counted::Unread => stats.frames_rejected,
            Counted::Violation => stats.protocol_violations,
        }
    }
}

/// Sends `frame` (encoded before measuring, so that the attacker's own structures do not count)
/// from a fresh attacker and checks that the victim closes that connection with
/// `ProtocolError`, counts it, keeps delivering the honest publisher's messages and stays
/// within the memory bound.
async fn refused(scene: &mut Scene, what: &str, frame: Frame, counted: Counted) -> Result<()> {
    let mut attacker = scene.attacker(Vec::new()).await?;
    let count = counted.get(&scene.victim);
    let bytes = hostile::encode(&frame)?;
    drop(frame);
    let before = hostile::rss_bytes();
    let len = bytes.len();
    // The victim may close the connection before the whole frame is written.
    let _ = attacker.send_raw(&bytes).await;
    drop(bytes);
    let reason = attacker.closed_by_victim(CLOSE_WITHIN).await?;
    assert_eq!(reason, Some(GoodbyeReason::ProtocolError), "{what}");
    until_stats(&scene.victim, |_| counted.get(&scene.victim) > count).await?;
    scene.honest_flow(1000).await?;
    report(what, before, scene);
    match counted {
        // Never read whole: costs nothing beyond the bound.
        Counted::Unread => assert_memory(before, 0),
        Counted::Violation => assert_memory(before, len),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_peer_exchange_closes_that_connection_and_dials_nothing() -> Result<()> {
    bounded("peer exchange", async {
        let mut scene = Scene::new().await?;
        let dials = scene.victim.stats().dials;
        let made_up = |n: u32| {
            let peers = (0..n)
                .map(|i| peer(1 << 64 | u128::from(i), 1 + (i % 60_000) as u16))
                .collect();
            Frame::PeerExchange(PeerExchange { peers })
        };
        // 209,715 made-up peers: about 8 MiB in one frame, over the control frame limit.
        let what = "peer exchange of 209,715 peers";
        refused(&mut scene, what, made_up(209_715), Counted::Unread).await?;
        // 300 made-up peers: a small frame, over the list limit.
        let what = "peer exchange of 300 peers";
        refused(&mut scene, what, made_up(300), Counted::Violation).await?;
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
        let update = |n: usize| {
            let added = (0..n)
                .map(|i| Topic::new(&format!("topic-{i}")).unwrap())
                .collect();
            Frame::SubscriptionUpdate(SubscriptionUpdate {
                added,
                removed: Vec::new(),
                revision: 1,
            })
        };
        let what = "subscription update of 100,000 topics";
        refused(&mut scene, what, update(100_000), Counted::Unread).await?;
        let what = "subscription update of 2,000 topics";
        refused(&mut scene, what, update(2_000), Counted::Violation).await?;
        scene.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_with_a_million_visited_ids_is_refused() -> Result<()> {
    bounded("search", async {
        let mut scene = Scene::new().await?;
        let search = |n: u128| {
            Frame::Search(Search {
                search_id: 1,
                origin: peer(77, 9),
                topic: Topic::new("elsewhere").unwrap(),
                hop_limit: u32::MAX,
                visited: (0..n).map(NodeId::from_u128).collect(),
            })
        };
        let what = "search with 1,000,000 visited ids";
        refused(&mut scene, what, search(1_000_000), Counted::Unread).await?;
        let what = "search with 100 visited ids";
        refused(&mut scene, what, search(100), Counted::Violation).await?;
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
        incarnation: 0,
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
        // Over TCP, as if forwarded (hop 1), with the largest sequence: refused and counted.
        let mut attacker = scene.attacker(Vec::new()).await?;
        attacker
            .send(&Frame::Publish(forged(victim_publisher, u64::MAX, 1)))
            .await?;
        until_stats(&scene.victim, |s| s.messages_rejected >= 1).await?;
        // As if straight from the publisher (hop 0), from someone else: that connection closed.
        let mut impostor = scene.attacker(Vec::new()).await?;
        impostor
            .send(&Frame::Publish(forged(victim_publisher, 1_000_000, 0)))
            .await?;
        let reason = impostor.closed_by_victim(CLOSE_WITHIN).await?;
        assert_eq!(reason, Some(GoodbyeReason::ProtocolError));
        // As a plain datagram from the address an attacker's hello gave: a TLS peer's
        // datagrams come sealed with its connection's keys, so a plain one is not even read.
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let udp_addr = udp.local_addr()?;
        drop(udp);
        let _connected = scene.attacker(vec![udp_addr]).await?;
        hostile::send_datagram(
            udp_addr,
            scene.addr(),
            &Frame::Publish(forged(victim_publisher, u64::MAX - 1, 1)),
        )
        .await?;
        until_stats(&scene.victim, |s| {
            s.messages_rejected >= 2 && s.datagrams_ignored >= 1
        })
        .await?;
        // The publisher is not silenced; the forged payload never reached the application.
        scene.honest_flow(3000).await?;
        report("forged publishes (TCP, impostor, datagram)", before, &scene);
        assert_memory(before, 0);
        scene.shutdown().await
    })
    .await
}

/// Publisher `p`'s message `sequence` on `t`, forwarded by a relay.
fn relayed(p: NodeId, sequence: u64) -> Frame {
    Frame::Publish(Message {
        payload: Bytes::from(format!("{sequence}")),
        ..forged(p, sequence, 1)
    })
}

/// The next `n` messages on `stream` carry sequences `from..from + n`, in order.
async fn expect_sequences(stream: &mut MessageStream, from: u64, n: u64) -> Result<()> {
    for sequence in from..from + n {
        let message = next(stream).await?;
        ensure!(
            message.sequence == sequence,
            "expected {sequence}, got {} ({:?})",
            message.sequence,
            message.payload
        );
        ensure!(message.payload == format!("{sequence}").as_bytes());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_sequence_cannot_silence_a_publisher_heard_second_hand() -> Result<()> {
    bounded("forged sequence, second-hand", async {
        let _guard = ONE_AT_A_TIME.lock().await;
        // The relays never answer pings: a peer timeout longer than the test keeps them.
        let victim = start(
            builder("victim", &["t"])
                .ping_interval(Duration::from_secs(20))
                .peer_timeout(Duration::from_secs(60)),
        )
        .await?;
        let mut stream = victim.stream();
        let before = hostile::rss_bytes();
        // Publisher p never connects to the victim: two relays forward its messages.
        let p = NodeId::random();
        let connect = |name: &'static str| connect_as(victim.local_addr(), name, Vec::new());
        let mut relay = connect("relay").await?;
        let mut other_relay = connect("other-relay").await?;
        let mut mallory = connect("mallory").await?;
        for sequence in 1..=100 {
            relay.send(&relayed(p, sequence)).await?;
        }
        expect_sequences(&mut stream, 1, 100).await?;
        // The forgeries: the largest sequence, and the largest the filter once let through.
        mallory
            .send(&Frame::Publish(forged(p, u64::MAX, 1)))
            .await?;
        mallory
            .send(&Frame::Publish(forged(p, 100 + (1 << 20) - 1, 1)))
            .await?;
        until_stats(&victim, |s| s.messages_rejected >= 2).await?;
        // p's real messages go on arriving, every one.
        for sequence in 101..=3100 {
            relay.send(&relayed(p, sequence)).await?;
        }
        expect_sequences(&mut stream, 101, 3000).await?;
        // An honest gap: the victim missed 100,000 messages. Both relays forward what follows
        // (as flooding does); the first relay's word alone is refused, the second's confirms
        // it: every message arrives, once (across two connections, in any order).
        let resume = 103_101;
        for sequence in resume..resume + 100 {
            relay.send(&relayed(p, sequence)).await?;
        }
        for sequence in resume..resume + 100 {
            other_relay.send(&relayed(p, sequence)).await?;
        }
        let mut got = Vec::new();
        for _ in 0..100 {
            got.push(next(&mut stream).await?.sequence);
        }
        got.sort_unstable();
        ensure!(got == (resume..resume + 100).collect::<Vec<_>>(), "{got:?}");
        // No copy comes after them: the next message is the next one.
        relay.send(&relayed(p, resume + 100)).await?;
        expect_sequences(&mut stream, resume + 100, 1).await?;
        let stats = victim.stats();
        eprintln!(
            "forged sequences, second-hand: RSS {} -> {} MiB; violations {}, rejected {}",
            before >> 20,
            hostile::rss_bytes() >> 20,
            stats.protocol_violations,
            stats.messages_rejected
        );
        ensure!(stats.protocol_violations >= 2, "{stats:?}");
        assert_memory(before, 0);
        drop((relay, other_relay, mallory));
        victim.shutdown().await?;
        Ok(())
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
        // Over TLS the impostor's certificate proves its own key, not the publisher's: refused
        // at the handshake.
        let hello = hostile::hello(real, "publisher", Vec::new(), &["t"]);
        let key = Identity::generate()?;
        let mut impostor = HostilePeer::connect(scene.addr(), &key, hello.clone()).await?;
        let reason = impostor.closed_by_victim(CLOSE_WITHIN).await?;
        assert_eq!(reason, Some(GoodbyeReason::ProtocolError));
        // Over plain TCP (a victim that runs with insecure plaintext), the duplicate rule keeps
        // the live link.
        let plain = start(builder("plain-victim", &["t"]).insecure_plaintext(true)).await?;
        let plain_publisher = start(
            builder("plain-publisher", &["t"])
                .insecure_plaintext(true)
                .seeds([plain.local_addr().to_string()]),
        )
        .await?;
        let real_plain = plain_publisher.id();
        until_peers(&plain, |peers| peers.iter().any(|p| p.id == real_plain)).await?;
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let hello = hostile::hello(real_plain, "publisher", Vec::new(), &["t"]);
        let mut impostor = HostilePeer::connect_plain(plain.local_addr(), hello).await?;
        let reason = impostor.closed_by_victim(CLOSE_WITHIN).await?;
        assert_eq!(reason, Some(GoodbyeReason::Duplicate));
        assert!(plain.peers().iter().any(|p| p.id == real_plain));
        plain_publisher.shutdown().await?;
        plain.shutdown().await?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_made_up_address_in_a_peer_exchange_learns_nothing_from_the_victim() -> Result<()> {
    bounded("made-up address", async {
        let mut scene = Scene::new().await?;
        // A listener that answers as some other node: the address the attacker gives for a
        // peer that does not exist.
        let bait = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = bait.local_addr()?.port();
        let mut attacker = scene.attacker(Vec::new()).await?;
        let made_up = peer(0xbad, port);
        attacker
            .send(&Frame::PeerExchange(PeerExchange {
                peers: vec![made_up],
            }))
            .await?;
        // The victim wants a neighbour on "t" and dials it (an address on loopback, where the
        // victim listens too, is allowed); what answers is not that node, and the victim must
        // not tell it who it is.
        let (mut stream, _) = tokio::time::timeout(Duration::from_secs(10), bait.accept())
            .await
            .context("the victim never dialed the learned address")??;
        let hello = hostile::encode(&Frame::Hello(hostile::hello(
            NodeId::random(),
            "someone-else",
            Vec::new(),
            &["t"],
        )))?;
        tokio::io::AsyncWriteExt::write_all(&mut stream, &hello).await?;
        let mut heard = Vec::new();
        tokio::time::timeout(
            CLOSE_WITHIN,
            tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut heard),
        )
        .await
        .context("the victim kept the connection")??;
        // At most a TLS client hello (which names the node expected, not the victim).
        assert!(
            heard.is_empty() || heard[0] == 0x16,
            "the victim said {heard:?}"
        );
        let id = scene.victim.id().as_u128();
        for secret in [
            &b"victim"[..],
            &id.to_be_bytes()[..8],
            &id.to_le_bytes()[..8],
        ] {
            assert!(
                !heard.windows(secret.len()).any(|w| w == secret),
                "the victim said who it is"
            );
        }
        scene.honest_flow(100).await?;
        scene.shutdown().await
    })
    .await
}
