//! End-to-end tests of the node over real loopback sockets, through the `chaski` facade.
//!
//! Every test is bounded by [`common::LIMIT`] and waits for events, never for time, except where
//! it checks that something does *not* happen (then it waits a bounded time and says why). The
//! heavy ones (many nodes, many messages) are in `load.rs`, a separate binary, so that they do not
//! starve these of CPU: cargo runs test binaries one after the other.

mod common;

use std::{process::Stdio, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use chaski::{
    Delivery, Error, NodeEvent, NodeId, Overflow, PublishOptions, StreamOptions, Topic,
    membership::Event as MembershipEvent,
};
use common::{bounded, builder, next, start, until_paired, until_peers};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_originals_demo_pairs_sharers_and_reaches_only_subscribers() -> Result<()> {
    bounded("demo", async {
        let root = start(builder("root", &[]).relay(true)).await?;
        let seed = root.local_addr().to_string();
        let a = start(builder("a", &["news"]).seeds([seed.clone()])).await?;
        let b = start(builder("b", &["news"]).seeds([seed.clone()])).await?;
        let c = start(builder("c", &["weather"]).seeds([seed])).await?;

        // The two that share a topic pair directly.
        until_peers(&a, |peers| {
            peers
                .iter()
                .any(|p| p.id == b.id() && p.paired_topics.iter().any(|t| t == "news"))
        })
        .await?;

        let mut at_b = b.stream();
        let mut at_c = c.stream();
        a.publish("news", "extra! extra!").await?;
        let message = next(&mut at_b).await?;
        assert_eq!(message.payload, "extra! extra!");
        assert_eq!(message.publisher, a.id());
        assert_eq!(message.publisher_name.as_deref(), Some("a"));
        assert_eq!(message.delivery, Delivery::Reliable);

        // c publishes on its own topic after a's message; its own stream sees only its own topic,
        // and no "news" frame ever reached it.
        c.publish("weather", "sunny").await?;
        assert_eq!(next(&mut at_c).await?.payload, "sunny");
        assert_eq!(
            c.stats().messages_in,
            0,
            "a news message reached c, which does not subscribe"
        );
        for node in [&a, &b, &c, &root] {
            node.shutdown().await?;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_is_noticed_and_a_restarted_one_streams_again() -> Result<()> {
    bounded("kill and restart", async {
        let listener =
            start(builder("watcher", &["ticks"]).peer_timeout(Duration::from_secs(3))).await?;
        let mut events = listener.events();
        let mut stream = listener.stream();
        // A free port for the child, reused for its restart.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child_addr = format!("127.0.0.1:{port}");
        let spawn = || -> Result<tokio::process::Child> {
            Ok(Command::new(env!("CARGO_BIN_EXE_chaski-test-node"))
                .args([
                    child_addr.as_str(),
                    "ticker",
                    "ticks",
                    &listener.local_addr().to_string(),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()?)
        };
        let ready = |child: &mut tokio::process::Child| {
            let stdout = child.stdout.take().expect("piped");
            async move {
                let line = BufReader::new(stdout)
                    .lines()
                    .next_line()
                    .await?
                    .context("the child said nothing")?;
                let id: NodeId = line.split_whitespace().nth(1).context("no id")?.parse()?;
                anyhow::Ok(id)
            }
        };

        let mut child = spawn()?;
        let first_id = ready(&mut child).await?;
        let first = next(&mut stream).await?;
        assert_eq!(first.publisher, first_id);

        child.start_kill()?;
        child.wait().await?;
        // Its peer notices (EOF from the kernel, or the keep-alive timeout at worst).
        loop {
            match events.recv().await.context("events ended")? {
                NodeEvent::Membership(MembershipEvent::PeerDown { peer, reason, .. })
                    if peer == first_id =>
                {
                    assert!(
                        reason.is_failure(),
                        "a killed peer is a failure, not a goodbye: {reason:?}"
                    );
                    break;
                }
                _ => {}
            }
        }

        // Restarted on the same address (a new process, a new node id): the watcher reconnects by
        // itself and the stream resumes.
        let mut child = spawn()?;
        let second_id = ready(&mut child).await?;
        assert_ne!(second_id, first_id);
        loop {
            let message = next(&mut stream).await?;
            if message.publisher == second_id {
                break;
            }
        }
        drop(child.stdin.take());
        child.wait().await?;
        listener.shutdown().await?;
        Ok(())
    })
    .await
}

async fn slow_consumer(overflow: Overflow) -> Result<()> {
    const SENT: u64 = 1000;
    const CAPACITY: usize = 10;
    let receiver = start(builder("receiver", &["t"])).await?;
    let sender =
        start(builder("sender", &["t"]).seeds([receiver.local_addr().to_string()])).await?;
    until_paired(&receiver, "t").await?;
    let mut events = receiver.events();
    let mut stream =
        receiver.stream_with(StreamOptions::new().capacity(CAPACITY).overflow(overflow));
    for n in 0..SENT {
        sender.publish("t", n.to_string()).await?;
    }
    let received: Vec<u64> = match overflow {
        Overflow::Block => {
            let mut all = Vec::new();
            for _ in 0..SENT {
                all.push(std::str::from_utf8(&next(&mut stream).await?.payload)?.parse()?);
                // A slow consumer: yield between messages so the queue stays full.
                tokio::task::yield_now().await;
            }
            assert_eq!(all, (0..SENT).collect::<Vec<_>>());
            assert_eq!(stream.dropped(), 0);
            all
        }
        _ => {
            // The drops are reported (at most every 100 ms): wait until all of them are.
            let mut overflowed = 0;
            while overflowed < SENT - CAPACITY as u64 {
                if let NodeEvent::StreamOverflow {
                    stream: id, total, ..
                } = events.recv().await.context("events")?
                {
                    assert_eq!(id, stream.id());
                    overflowed = total;
                }
            }
            assert_eq!(stream.dropped(), SENT - CAPACITY as u64);
            std::iter::from_fn(|| stream.try_recv())
                .map(|m| std::str::from_utf8(&m.payload).unwrap().parse().unwrap())
                .collect()
        }
    };
    match overflow {
        Overflow::DropOldest => {
            assert_eq!(received, (SENT - CAPACITY as u64..SENT).collect::<Vec<_>>())
        }
        Overflow::DropNewest => assert_eq!(received, (0..CAPACITY as u64).collect::<Vec<_>>()),
        _ => {}
    }
    sender.shutdown().await?;
    receiver.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumers_follow_their_overflow_policy() -> Result<()> {
    for overflow in [Overflow::Block, Overflow::DropOldest, Overflow::DropNewest] {
        bounded(&format!("{overflow:?}"), slow_consumer(overflow)).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_change_at_run_time() -> Result<()> {
    bounded("run-time subscriptions", async {
        let a = start(builder("a", &["sync"])).await?;
        let b = start(builder("b", &["sync"]).seeds([a.local_addr().to_string()])).await?;
        until_paired(&a, "sync").await?;
        let mut at_a = a.stream();

        // a subscribes at run time: once b knows (b reroutes before its peer table shows it),
        // b's next publication on the topic reaches a, before a later one on the same connection.
        assert!(a.subscribe("late").await?);
        until_peers(&b, |peers| {
            peers
                .iter()
                .any(|p| p.id == a.id() && p.subscriptions.iter().any(|t| t == "late"))
        })
        .await?;
        b.publish("late", "hello").await?;
        b.publish("sync", "marker").await?;
        let mut got_late = false;
        loop {
            let message = next(&mut at_a).await?;
            if message.topic == "late" {
                ensure!(message.payload == "hello", "{message:?}");
                got_late = true;
            } else if message.publisher == b.id() && message.payload == "marker" {
                break;
            }
        }
        ensure!(got_late, "the run-time subscription did not take effect");

        // a unsubscribes: once b has seen a's marker (sent after the unsubscription, on the same
        // connection), nothing b publishes on the topic reaches a.
        assert!(a.unsubscribe("late").await?);
        let mut at_b = b.stream_with(StreamOptions::new().topics([Topic::new("sync")?]));
        a.publish("sync", "unsubscribed").await?;
        while next(&mut at_b).await?.payload != "unsubscribed" {}
        let seen = a.stats().messages_in;
        b.publish("late", "too late").await?;
        b.publish("sync", "done").await?;
        loop {
            let message = next(&mut at_a).await?;
            assert_ne!(
                message.topic, "late",
                "a message for a dropped subscription arrived"
            );
            if message.payload == "done" {
                break;
            }
        }
        assert_eq!(
            a.stats().messages_in,
            seen + 1,
            "only the marker arrived: {:?} {:?}",
            a.stats(),
            a.peers()
        );
        a.shutdown().await?;
        b.shutdown().await?;
        Ok(())
    })
    .await
}

/// `max_connections(2)`, documented as the minimum, starts and pairs (its ring has one
/// neighbour on each side).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smallest_documented_max_connections_works() -> Result<()> {
    bounded("max_connections 2", async {
        let a = start(builder("a", &["news"]).max_connections(2)).await?;
        let b = start(
            builder("b", &["news"])
                .max_connections(2)
                .seeds([a.local_addr().to_string()]),
        )
        .await?;
        until_paired(&b, "news").await?;
        a.shutdown().await?;
        b.shutdown().await?;
        Ok(())
    })
    .await
}

/// `transport_udp = false` is a documented setting: the node runs without a UDP socket, pub/sub
/// works, and best-effort topics travel over TCP instead (so a large one is not refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_udp_publish_and_subscribe() -> Result<()> {
    bounded("udp off", async {
        let no_udp = || {
            chaski::transport::Config::builder()
                .udp(false)
                .build()
                .expect("valid")
        };
        let a = start(builder("a", &["news", "video"]).transport(no_udp())).await?;
        let b = start(
            builder("b", &["news", "video"])
                .transport(no_udp())
                .best_effort(["video"])
                .seeds([a.local_addr().to_string()]),
        )
        .await?;
        until_peers(&b, |peers| {
            peers.iter().any(|p| {
                p.paired_topics.iter().any(|t| t == "news")
                    && p.paired_topics.iter().any(|t| t == "video")
            })
        })
        .await?;
        let mut at_a = a.stream();
        for i in 0..100u32 {
            b.publish("news", i.to_be_bytes().to_vec()).await?;
        }
        for i in 0..100u32 {
            let message = next(&mut at_a).await?;
            assert_eq!(message.topic, "news");
            assert_eq!(&message.payload[..], &i.to_be_bytes());
        }
        b.publish("video", vec![7u8; 64 * 1024]).await?;
        let frame = next(&mut at_a).await?;
        assert_eq!(frame.topic, "video");
        assert_eq!(frame.payload.len(), 64 * 1024);
        assert_eq!(frame.delivery, Delivery::Reliable, "it came over TCP");
        a.shutdown().await?;
        b.shutdown().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn best_effort_messages_arrive_marked_and_oversized_ones_are_refused() -> Result<()> {
    bounded("best effort", async {
        let a = start(builder("a", &["video"])).await?;
        let b = start(
            builder("b", &["video"])
                .best_effort(["video"])
                .seeds([a.local_addr().to_string()]),
        )
        .await?;
        until_paired(&b, "video").await?;
        let mut at_a = a.stream();
        // Datagrams may be lost (not on loopback in practice): send until one arrives.
        let mut sent = 0;
        let message = loop {
            b.publish("video", "frame").await?;
            sent += 1;
            let arrived = tokio::time::timeout(Duration::from_millis(200), at_a.recv()).await;
            if let Ok(Some(message)) = arrived {
                break message;
            }
            ensure!(sent < 50, "no best-effort message arrived");
        };
        assert_eq!(message.delivery, Delivery::BestEffort);
        assert_eq!(message.payload, "frame");
        // Reliable on request, on the same stream.
        b.publish_with("video", "keyframe", PublishOptions::reliable())
            .await?;
        loop {
            let message = next(&mut at_a).await?;
            if message.payload == "keyframe" {
                assert_eq!(message.delivery, Delivery::Reliable);
                break;
            }
        }
        // Too large for a datagram: a clear error, no silent fallback.
        match b.publish("video", vec![0u8; 64 * 1024]).await {
            Err(Error::TooLargeForDatagram { len, max }) => assert!(len > max),
            other => bail!("expected TooLargeForDatagram, got {other:?}"),
        }
        a.shutdown().await?;
        b.shutdown().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_independent_closable_and_reopenable() -> Result<()> {
    bounded("streams", async {
        let a = start(builder("a", &["t"])).await?;
        let b = start(builder("b", &["t"]).seeds([a.local_addr().to_string()])).await?;
        until_paired(&a, "t").await?;
        let mut first = a.stream();
        let mut second = a.stream();
        b.publish("t", "one").await?;
        assert_eq!(next(&mut first).await?.payload, "one");
        assert_eq!(next(&mut second).await?.payload, "one");

        // Closing one stream ends it and leaves the others alone (unlike the original, which
        // discarded everything after its first close).
        first.close();
        assert!(first.recv().await.is_none());
        b.publish("t", "two").await?;
        assert_eq!(next(&mut second).await?.payload, "two");

        // A stream opened later sees what is published from then on.
        let mut third = a.stream();
        b.publish("t", "three").await?;
        assert_eq!(next(&mut second).await?.payload, "three");
        assert_eq!(next(&mut third).await?.payload, "three");
        drop(second);
        b.publish("t", "four").await?;
        assert_eq!(next(&mut third).await?.payload, "four");
        a.shutdown().await?;
        // The node's shutdown ends its streams.
        assert!(third.recv().await.is_none());
        b.shutdown().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_ping_and_publishing_to_nobody() -> Result<()> {
    bounded("connect and ping", async {
        let a = start(builder("a", &["t"])).await?;
        let b = start(builder("b", &["u"])).await?;
        assert_eq!(b.connect(&a.local_addr().to_string()).await?, a.id());
        let rtt = b.ping(a.id()).await?;
        assert!(rtt > Duration::ZERO);
        let padded = b.ping_with_size(a.id(), 256 * 1024).await?;
        assert!(padded > Duration::ZERO);
        assert!(matches!(
            b.ping(NodeId::from_u128(7)).await,
            Err(Error::NotConnected(_))
        ));
        assert!(matches!(
            b.connect("127.0.0.1:1").await,
            Err(Error::Connect { .. })
        ));

        // Nobody subscribes to "void": not an error, counted.
        let mut events = b.events();
        b.publish("void", "hello?").await?;
        assert_eq!(b.stats().published_unrouted, 1);
        loop {
            if let NodeEvent::NoSubscribers { topic, count } =
                events.recv().await.context("events")?
            {
                assert_eq!((topic.as_str(), count), ("void", 1));
                break;
            }
        }
        a.shutdown().await?;
        b.shutdown().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_publications_reach_own_streams_and_reuse_the_nodes_topic() -> Result<()> {
    bounded("own publications", async {
        let a = start(builder("a", &["t"])).await?;
        // No stream wants it yet: published, not unrouted (the node subscribes), not received.
        a.publish("t", "zero").await?;
        let stats = a.stats();
        ensure!(
            (stats.published, stats.published_unrouted, stats.received) == (1, 0, 0),
            "{stats:?}"
        );

        let mut stream = a.stream();
        a.publish("t", "one").await?;
        a.publish(String::from("t"), "two").await?;
        a.try_publish("t", "three")?;
        let mut topics = Vec::new();
        for expected in ["one", "two", "three"] {
            let message = next(&mut stream).await?;
            ensure!(message.payload == expected, "{message:?}");
            ensure!(message.publisher == a.id() && message.hops == 0);
            topics.push(message.topic);
        }
        // Each name was looked up among the node's topics, not copied into a new one.
        ensure!(
            topics
                .iter()
                .all(|t| t.as_str().as_ptr() == topics[0].as_str().as_ptr()),
            "{topics:?}"
        );
        ensure!(a.stats().received == 3, "{:?}", a.stats());
        // An invalid name is still refused.
        ensure!(matches!(
            a.publish("", "x").await,
            Err(Error::InvalidTopic(_))
        ));
        a.shutdown().await?;
        Ok(())
    })
    .await
}

/// A node's own `Block` stream that is full holds its publisher up until the consumer makes
/// room: nothing is dropped, everything arrives in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_own_block_stream_holds_the_publisher_up() -> Result<()> {
    bounded("own block stream", async {
        const SENT: u64 = 200;
        let a = start(builder("a", &["t"])).await?;
        let mut stream = a.stream_with(StreamOptions::new().capacity(2).overflow(Overflow::Block));
        let publisher = a.clone();
        let publishing = tokio::spawn(async move {
            for n in 0..SENT {
                publisher.publish("t", n.to_string()).await?;
            }
            Ok::<_, Error>(())
        });
        let mut received: Vec<u64> = Vec::new();
        for _ in 0..SENT {
            received.push(std::str::from_utf8(&next(&mut stream).await?.payload)?.parse()?);
            tokio::task::yield_now().await;
        }
        publishing.await??;
        assert_eq!(received, (0..SENT).collect::<Vec<u64>>());
        assert_eq!(stream.dropped(), 0);
        a.shutdown().await?;
        Ok(())
    })
    .await
}

/// A key file of a test, removed when dropped (also when the test fails).
struct KeyFile(std::path::PathBuf);

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_with_its_key_file_keeps_its_id_and_is_heard_again() -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    bounded("identity file", async {
        let key = KeyFile(
            std::env::temp_dir().join(format!("chaski-node-test-{}.key", std::process::id())),
        );
        let (identity, created) = chaski::Identity::load_or_create(&key.0)?;
        ensure!(created, "the key file existed already");
        let mode = std::fs::metadata(&key.0)?.permissions().mode() & 0o777;
        ensure!(mode == 0o600, "the key file has mode {mode:o}");
        let hub = start(builder("hub", &["news"])).await?;
        let mut stream = hub.stream();
        let first = start(
            builder("keeper", &["news"])
                .identity(identity.clone())
                .seeds([hub.local_addr().to_string()]),
        )
        .await?;
        ensure!(first.id() == identity.node_id());
        let id = first.id();
        let hub_id = hub.id();
        // Paired both ways on the topic: the keeper's publications have their route.
        let paired = |peers: &[chaski::Peer], who| {
            peers
                .iter()
                .any(|p| p.id == who && p.paired_topics.iter().any(|t| t == "news"))
        };
        until_peers(&hub, |peers| paired(peers, id)).await?;
        until_peers(&first, |peers| paired(peers, hub_id)).await?;
        for i in 0..10 {
            first.publish("news", format!("before {i}")).await?;
        }
        for _ in 0..10 {
            next(&mut stream).await?;
        }
        first.shutdown().await?;
        until_peers(&hub, |peers| peers.iter().all(|p| p.id != id)).await?;

        // The same file, read again: the same id; the hub pairs with it and hears its new
        // messages (numbered from 1 again).
        let (again, created) = chaski::Identity::load_or_create(&key.0)?;
        ensure!(!created && again.node_id() == id);
        let second = start(
            builder("keeper", &["news"])
                .identity(again)
                .seeds([hub.local_addr().to_string()]),
        )
        .await?;
        ensure!(second.id() == id);
        until_peers(&hub, |peers| paired(peers, id)).await?;
        until_peers(&second, |peers| paired(peers, hub_id)).await?;
        for i in 0..10 {
            second.publish("news", format!("after {i}")).await?;
        }
        for i in 0..10 {
            let message = next(&mut stream).await?;
            ensure!(message.publisher == id);
            ensure!(
                message.payload == format!("after {i}").as_bytes(),
                "got {:?}",
                message.payload
            );
        }
        second.shutdown().await?;
        hub.shutdown().await?;

        // A key file others can read is refused, with what to do about it.
        std::fs::set_permissions(&key.0, std::fs::Permissions::from_mode(0o644))?;
        match chaski::Identity::load_or_create(&key.0) {
            Err(e) => ensure!(e.to_string().contains("chmod 600"), "{e}"),
            Ok(_) => bail!("a key file readable by others was taken"),
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_tls_nodes_do_not_pair_and_say_why() -> Result<()> {
    bounded("plaintext and TLS", async {
        let tls = start(builder("tls", &["news"])).await?;
        let plain = start(builder("plain", &["news"]).insecure_plaintext(true)).await?;
        match plain.connect(&tls.local_addr().to_string()).await {
            Err(e) => ensure!(e.to_string().contains("requires TLS"), "{e}"),
            Ok(_) => bail!("a plaintext node connected to a TLS one"),
        }
        match tls.connect(&plain.local_addr().to_string()).await {
            Err(e) => ensure!(e.to_string().contains("plain TCP"), "{e}"),
            Ok(_) => bail!("a TLS node connected to a plaintext one"),
        }
        ensure!(tls.peers().is_empty() && plain.peers().is_empty());
        plain.shutdown().await?;
        tls.shutdown().await?;
        Ok(())
    })
    .await
}

/// Publishes best effort on `topic` until one arrives on `stream` (datagrams may be lost).
async fn one_best_effort(
    from: &chaski::Node,
    stream: &mut chaski::MessageStream,
    topic: &str,
) -> Result<chaski::Received> {
    for _ in 0..50 {
        from.publish_with(topic, "sealed", PublishOptions::best_effort())
            .await?;
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(200), stream.recv()).await
        {
            return Ok(message);
        }
    }
    bail!("no best-effort message arrived")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_key_admits_its_holders_and_refuses_everyone_else() -> Result<()> {
    bounded("network key", async {
        let key = chaski::NetworkKey::generate()?;
        let a = start(builder("a", &["news"]).network_key(&key)).await?;
        let b = start(
            builder("b", &["news"])
                .network_key(&key)
                .seeds([a.local_addr().to_string()]),
        )
        .await?;
        until_paired(&a, "news").await?;
        let mut at_a = a.stream();
        b.publish("news", "for members").await?;
        assert_eq!(next(&mut at_a).await?.payload, "for members");
        // Best effort goes sealed with the connection's keys, and arrives.
        let message = one_best_effort(&b, &mut at_a, "news").await?;
        assert_eq!(message.delivery, Delivery::BestEffort);

        // Another key, and no key at all: neither connects, both ways, and each says why.
        let other_key = chaski::NetworkKey::generate()?;
        let other = start(builder("other", &["news"]).network_key(&other_key)).await?;
        let open = start(builder("open", &["news"])).await?;
        for outsider in [&other, &open] {
            let to_a = outsider.connect(&a.local_addr().to_string()).await;
            ensure!(to_a.is_err(), "{} joined", outsider.name());
            let from_a = a.connect(&outsider.local_addr().to_string()).await;
            ensure!(from_a.is_err(), "a reached {}", outsider.name());
        }
        let failures = a.transport_stats().handshake_failures;
        ensure!(
            failures.get("wrong_network_key") >= 1 && failures.get("self_signed") >= 1,
            "{failures:?}"
        );
        ensure!(a.stats().handshake_failures >= 2);
        ensure!(a.peers().len() == 1, "only b: {:?}", a.peers());

        // An outsider's datagrams to a member's UDP port are dropped and counted: a beacon
        // with no tag, and a forged sealed one.
        let mut events = a.events();
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let beacon = chaski::wire::Frame::Beacon(chaski::wire::Beacon {
            network_id: String::new(),
            node_id: open.id(),
            name: "open".to_owned(),
            listen_addrs: vec![open.local_addr()],
            subscription_digest: 0,
            subscription_count: 1,
            capabilities: chaski::wire::Capabilities::NONE,
            sequence: 1,
            auth_tag: bytes::Bytes::new(),
        });
        let mut plain = bytes::BytesMut::new();
        chaski::wire::encode_frame(&beacon, &mut plain, 1 << 16)?;
        udp.send_to(&plain, a.local_addr()).await?;
        let mut forged = vec![0xA2u8];
        forged.extend_from_slice(&[0u8; 40]);
        udp.send_to(&forged, a.local_addr()).await?;
        let before = a.stats().dials;
        // Reported as an event, and counted by cause.
        let mut reported = 0;
        while reported < 2 {
            match events.recv().await {
                Some(NodeEvent::DatagramsDropped { dropped }) => reported += dropped,
                Some(_) => {}
                None => bail!("the node stopped"),
            }
        }
        let dropped = a.transport_stats().datagrams.dropped;
        ensure!(
            dropped.get("untagged") == 1 && dropped.get("no_session") == 1,
            "{dropped:?}"
        );
        ensure!(a.stats().datagrams_dropped >= 2, "{dropped:?}");
        ensure!(a.stats().dials == before, "a beacon made a dial");
        for node in [a, b, other, open] {
            node.shutdown().await?;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_ca_admits_the_nodes_it_issued_and_not_the_revoked() -> Result<()> {
    bounded("network CA", async {
        let ca = chaski::CertificateAuthority::generate("test CA")?;
        let issue = |name: &str| -> Result<chaski::Identity> {
            Ok(ca.issue(
                &chaski::Identity::generate()?,
                name,
                Duration::from_secs(3600),
            )?)
        };
        let (a_id, b_id, revoked) = (issue("a")?, issue("b")?, issue("revoked")?);
        let network = chaski::Network::from_ca(ca.certificate().clone())?.deny([revoked.node_id()]);
        let member = |name: &str, identity: &chaski::Identity| {
            builder(name, &["news"])
                .network(network.clone())
                .identity(identity.clone())
        };
        let a = start(member("a", &a_id)).await?;
        let b = start(member("b", &b_id).seeds([a.local_addr().to_string()])).await?;
        until_paired(&a, "news").await?;
        ensure!(a.id() == a_id.node_id() && b.id() == b_id.node_id());
        let mut at_b = b.stream();
        a.publish("news", "issued").await?;
        assert_eq!(next(&mut at_b).await?.payload, "issued");

        // Validly issued but revoked: refused.
        let r = start(
            builder("revoked", &["news"])
                .network(chaski::Network::from_ca(ca.certificate().clone())?)
                .identity(revoked),
        )
        .await?;
        ensure!(r.connect(&a.local_addr().to_string()).await.is_err());
        ensure!(a.connect(&r.local_addr().to_string()).await.is_err());
        ensure!(
            a.transport_stats()
                .handshake_failures
                .get("certificate_revoked")
                >= 1
        );
        // A self-signed identity cannot even start as a member.
        match start(member("plain", &chaski::Identity::generate()?)).await {
            Err(e) => ensure!(e.to_string().contains("chaski ca issue"), "{e}"),
            Ok(_) => bail!("a node with a self-signed identity started in a CA network"),
        }
        for node in [a, b, r] {
            node.shutdown().await?;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_never_arrive_are_reported_missed_with_their_range() -> Result<()> {
    bounded("missed", async {
        let node = start(builder("sub", &["t"]).gap_timeout(Duration::from_millis(200))).await?;
        let mut events = node.events();
        let mut stream = node.stream();
        // A publisher on a lossy path: some of its messages never leave.
        let identity = chaski::Identity::generate()?;
        let hello = chaski_testkit::hostile::hello(identity.node_id(), "lossy", Vec::new(), &["t"]);
        let mut publisher =
            chaski_testkit::hostile::HostilePeer::connect(node.local_addr(), &identity, hello)
                .await?;
        let message = |sequence: u64| {
            chaski::wire::Frame::Publish(chaski::wire::Message {
                topic: Topic::new("t").unwrap(),
                payload: bytes::Bytes::from(sequence.to_string()),
                publisher: identity.node_id(),
                sequence,
                incarnation: 0,
                timestamp_micros: 0,
                hop_limit: 4,
                hops: 0,
                headers: Vec::new(),
            })
        };
        // 4 and 8..=9 never come; 5 comes late, after 6 and 7. The stream gets them in order:
        // 6 and 7 wait for 5, then for the gap timeout on 4, which nobody can repair.
        for sequence in [1, 2, 3, 6, 7, 5, 10] {
            publisher.send(&message(sequence)).await?;
        }
        for sequence in [1, 2, 3, 5, 6, 7, 10] {
            let got = next(&mut stream).await?;
            ensure!(
                got.sequence == sequence,
                "expected {sequence}, got {}",
                got.sequence
            );
        }
        let mut missed = Vec::new();
        while missed.len() < 2 {
            match events.recv().await {
                Some(NodeEvent::Missed {
                    publisher,
                    topic,
                    first,
                    last,
                }) => {
                    ensure!(publisher == identity.node_id() && topic == "t");
                    missed.push((first, last));
                }
                Some(_) => {}
                None => bail!("the node stopped"),
            }
        }
        // Reported in the stream's order.
        assert_eq!(missed, vec![(4, 4), (8, 9)]);
        assert_eq!(node.stats().messages_missed, 3);
        node.shutdown().await?;
        Ok(())
    })
    .await
}
