//! The handshake: misbehaving peers get the right typed error without disturbing others;
//! self-connections and duplicates are resolved the same way on both ends.

mod common;

use std::{collections::HashSet, time::Duration};

use anyhow::{Result, bail, ensure};
use chaski_transport::{CloseReason, Config, Direction, Endpoint, Error, Event, Events, Side};
use chaski_wire::{Frame, GoodbyeReason, MAGIC, NodeId, Ping, Topic};
use common::*;

/// Expects the server to close the raw peer: a `Goodbye(ProtocolError)` naming `needle`, then EOF.
async fn told_protocol_error(peer: &mut RawPeer, needle: &str) -> Result<()> {
    // First the server's own hello (it speaks first), then its verdict.
    match peer.recv().await? {
        Some(Frame::Hello(_)) => {}
        other => bail!("expected the server's hello, got {other:?}"),
    }
    match peer.recv().await? {
        Some(Frame::Goodbye(g)) => {
            ensure!(g.reason == GoodbyeReason::ProtocolError, "{g:?}");
            ensure!(
                g.message.contains(needle),
                "{:?} does not name {needle}",
                g.message
            );
        }
        other => bail!("expected a goodbye, got {other:?}"),
    }
    ensure!(
        peer.recv().await?.is_none(),
        "the connection should be closed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_clients_are_closed_with_the_right_error() -> Result<()> {
    bounded(async {
        let config = Config::builder()
            .handshake_timeout(Duration::from_millis(300))
            .build()?;
        let (server, mut events) = endpoint("server", config).await?;
        let addr = server.local_addr();
        let (client, _client_events) = endpoint("client", Config::default()).await?;
        let good = client.connect(addr).await?;
        let good_in = connected(&mut events).await?;

        // A well-behaved client keeps exchanging frames during all of this.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pinger = tokio::spawn({
            let good = good.clone();
            let stop = stop.clone();
            async move {
                let mut sent = 0u64;
                // Paced, not a synchronisation: one ping per millisecond for the whole test.
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tick.tick().await;
                    good.send(Frame::Ping(Ping {
                        id: sent,
                        ..Ping::default()
                    }))
                    .await?;
                    sent += 1;
                }
                Ok::<_, anyhow::Error>(sent)
            }
        });

        // Garbage: a small length prefix and bytes that are not protobuf.
        let mut garbage = RawPeer::connect(addr).await?;
        garbage
            .send_raw(&[0, 0, 0, 6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
            .await?;
        told_protocol_error(&mut garbage, "malformed").await?;

        // Garbage from another protocol: a huge "length" announced by ASCII.
        let mut http = RawPeer::connect(addr).await?;
        http.send_raw(b"GET / HTTP/1.1\r\n\r\n").await?;
        told_protocol_error(&mut http, "exceeds the maximum").await?;

        // A wrong version.
        let mut version = RawPeer::connect(addr).await?;
        version
            .send_raw(&patched_hello(|b| {
                assert_eq!(b[VERSION_OFFSET], 1);
                b[VERSION_OFFSET] = 2;
            }))
            .await?;
        told_protocol_error(&mut version, "version").await?;

        // A wrong magic.
        let mut magic = RawPeer::connect(addr).await?;
        magic
            .send_raw(&patched_hello(|b| {
                assert_eq!(b[MAGIC_OFFSET..MAGIC_OFFSET + 4], MAGIC.to_le_bytes());
                b[MAGIC_OFFSET] ^= 0xff;
            }))
            .await?;
        told_protocol_error(&mut magic, "magic").await?;

        // Half a frame, then silence; and a client that never says hello.
        let mut half = RawPeer::connect(addr).await?;
        half.send_raw(&patched_hello(|_| {})[..10]).await?;
        let mut mute = RawPeer::connect(addr).await?;
        for peer in [&mut half, &mut mute] {
            assert!(matches!(peer.recv().await?, Some(Frame::Hello(_))));
            // Dropped at the handshake timeout, without a word.
            ensure!(peer.recv().await?.is_none());
        }

        // A first frame that is not a hello.
        let mut rude = RawPeer::connect(addr).await?;
        rude.send(&Frame::Ping(Ping::default())).await?;
        told_protocol_error(&mut rude, "expected a hello").await?;

        let failures = server.stats().handshake_failures;
        assert_eq!(failures.get("malformed"), 1, "{failures:?}");
        assert_eq!(failures.get("too_large"), 1, "{failures:?}");
        assert_eq!(failures.get("version"), 1, "{failures:?}");
        assert_eq!(failures.get("magic"), 1, "{failures:?}");
        assert_eq!(failures.get("timeout"), 2, "{failures:?}");
        assert_eq!(failures.get("unexpected_frame"), 1, "{failures:?}");
        assert_eq!(server.stats().established, 1);

        // The good connection was never disturbed and still delivers.
        ensure!(!good.is_closed());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sent = pinger.await??;
        ensure!(sent > 100, "only {sent} pings during the test");
        good.close(GoodbyeReason::NotNeeded, "").await;
        let (frames, reason) = until_closed(&mut events, good_in.id()).await?;
        ensure!(
            frames.len() as u64 == sent,
            "{} of {sent} frames",
            frames.len()
        );
        assert!(matches!(
            reason,
            CloseReason::Goodbye {
                by: Side::Remote,
                ..
            }
        ));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_a_bad_server_gives_a_typed_error() -> Result<()> {
    bounded(async {
        let config = Config::builder()
            .handshake_timeout(Duration::from_millis(300))
            .build()?;
        let (client, _events) = endpoint("client", config).await?;
        let listener = tokio::net::TcpListener::bind(localhost()).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            // First connection: a wrong version; second: silence.
            let (mut first, _) = listener.accept().await?;
            let hello = patched_hello(|b| b[VERSION_OFFSET] = 9);
            tokio::io::AsyncWriteExt::write_all(&mut first, &hello).await?;
            let (_second, _) = listener.accept().await?;
            std::future::pending::<()>().await;
            Ok::<_, anyhow::Error>(())
        });
        match client.connect(addr).await {
            Err(Error::Handshake { source, .. }) => assert_eq!(source.cause(), "version"),
            other => bail!("expected a version mismatch, got {other:?}"),
        }
        match client.connect(addr).await {
            Err(Error::Handshake { source, .. }) => assert_eq!(source.cause(), "timeout"),
            other => bail!("expected a timeout, got {other:?}"),
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_oneself_is_detected() -> Result<()> {
    bounded(async {
        let (node, mut events) = endpoint("narcissus", Config::default()).await?;
        match node.connect(node.local_addr()).await {
            Err(Error::SelfConnection { addr }) => assert_eq!(addr, node.local_addr()),
            other => bail!("expected a self-connection, got {other:?}"),
        }
        assert!(node.stats().self_connections >= 1);
        assert!(node.connections().is_empty());
        assert!(events.try_recv().is_none());
        Ok(())
    })
    .await
}

/// Reads `events` until a connection to `peer` that is `survivor_direction` is established and
/// every other connection announced has closed with `Goodbye(Duplicate)`.
async fn settle(
    events: &mut Events,
    endpoint: &Endpoint,
    survivor_direction: Direction,
) -> Result<()> {
    let mut open = HashSet::new();
    let mut survivor = None;
    loop {
        if survivor.is_some() && open.len() == 1 {
            return Ok(());
        }
        match events.recv().await {
            Some(Event::Connected(c)) => {
                if c.direction() == survivor_direction {
                    survivor = Some(c.id());
                }
                open.insert(c.id());
            }
            Some(Event::Closed {
                connection, reason, ..
            }) => {
                ensure!(
                    Some(connection) != survivor,
                    "the survivor closed: {reason:?}"
                );
                ensure!(
                    matches!(
                        reason,
                        CloseReason::Goodbye {
                            reason: GoodbyeReason::Duplicate,
                            ..
                        }
                    ),
                    "{reason:?}"
                );
                open.remove(&connection);
            }
            other => bail!("unexpected event on {}: {other:?}", endpoint.node_id()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_connections_resolve_to_the_one_dialed_by_the_smaller_id() -> Result<()> {
    bounded(async {
        let small = NodeId::from_u128(1);
        let large = NodeId::from_u128(2);

        // The smaller id dials first: the larger one's dial loses.
        let (a, mut a_events) = endpoint_with_id("a", small, Config::default()).await?;
        let (b, mut b_events) = endpoint_with_id("b", large, Config::default()).await?;
        let a_to_b = a.connect(b.local_addr()).await?;
        match b.connect(a.local_addr()).await {
            Err(Error::Duplicate { node, existing }) => {
                assert_eq!(node, small);
                assert_eq!(b.connection(small).map(|c| c.id()), Some(existing));
            }
            other => bail!("expected a duplicate, got {other:?}"),
        }
        // A second dial by the same node loses to the first.
        assert!(matches!(
            a.connect(b.local_addr()).await,
            Err(Error::Duplicate { .. })
        ));
        settle(&mut a_events, &a, Direction::Outbound).await?;
        settle(&mut b_events, &b, Direction::Inbound).await?;
        assert_eq!(a.connection(large).map(|c| c.id()), Some(a_to_b.id()));
        drop((a, b));

        // The larger id dials first: the smaller one's dial replaces it on both ends.
        let (a, mut a_events) = endpoint_with_id("a", small, Config::default()).await?;
        let (b, mut b_events) = endpoint_with_id("b", large, Config::default()).await?;
        b.connect(a.local_addr()).await?;
        let a_to_b = a.connect(b.local_addr()).await?;
        settle(&mut a_events, &a, Direction::Outbound).await?;
        settle(&mut b_events, &b, Direction::Inbound).await?;
        assert_eq!(a.connection(large).map(|c| c.id()), Some(a_to_b.id()));
        assert_eq!(
            b.connection(small).map(|c| c.direction()),
            Some(Direction::Inbound)
        );

        // Both dial at once: the same survivor on both ends.
        let (a, mut a_events) = endpoint_with_id("a", small, Config::default()).await?;
        let (b, mut b_events) = endpoint_with_id("b", large, Config::default()).await?;
        let _ = tokio::join!(a.connect(b.local_addr()), b.connect(a.local_addr()));
        settle(&mut a_events, &a, Direction::Outbound).await?;
        settle(&mut b_events, &b, Direction::Inbound).await?;
        let survivor = a.connection(large).expect("a keeps a connection");
        assert_eq!(survivor.direction(), Direction::Outbound);
        assert_eq!(
            b.connection(small).map(|c| c.direction()),
            Some(Direction::Inbound)
        );
        // And it works.
        survivor.send(Frame::Ping(Ping::default())).await?;
        let inbound = b.connection(small).expect("b keeps a connection");
        frames(&mut b_events, inbound.id(), 1).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_hello_can_change_at_run_time() -> Result<()> {
    bounded(async {
        let (server, _events) = endpoint("server", Config::default()).await?;
        let (client, _client_events) = endpoint("client", Config::default()).await?;
        let mut hello = server.hello();
        hello.subscriptions.push(Topic::from_static("news"));
        server.set_hello(hello.clone())?;
        let connection = client.connect(server.local_addr()).await?;
        assert_eq!(connection.remote_hello().subscriptions, hello.subscriptions);

        hello.node_id = NodeId::random();
        assert!(matches!(
            server.set_hello(hello),
            Err(Error::NodeIdChanged { .. })
        ));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_that_expects_a_node_says_nothing_to_another() -> Result<()> {
    bounded(async {
        let (client, _events) = endpoint("client", Config::default()).await?;
        // Something at a learned address that speaks Chaski but is not the node expected.
        let listener = tokio::net::TcpListener::bind(localhost()).await?;
        let addr = listener.local_addr()?;
        let impostor = NodeId::random();
        let heard = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut stream, _) = listener.accept().await?;
            let mut hello_bytes = bytes::BytesMut::new();
            chaski_wire::encode_frame(
                &Frame::Hello(hello("impostor", impostor)),
                &mut hello_bytes,
                1 << 16,
            )?;
            stream.write_all(&hello_bytes).await?;
            // Everything the dialer says, until it closes.
            let mut heard = Vec::new();
            stream.read_to_end(&mut heard).await?;
            Ok::<_, anyhow::Error>(heard)
        });
        let expected = NodeId::random();
        match client.connect_expecting(addr, expected).await {
            Err(Error::Handshake { source, .. }) => {
                assert_eq!(source.cause(), "unexpected_peer");
                assert!(source.to_string().contains("nothing was sent"), "{source}");
            }
            other => bail!("expected an unexpected peer, got {other:?}"),
        }
        let heard = heard.await??;
        assert!(heard.is_empty(), "the dialer sent {} bytes", heard.len());
        assert_eq!(client.stats().handshake_failures.get("unexpected_peer"), 1);

        // The node expected is there: the dial completes as any other.
        let (server, mut server_events) = endpoint("server", Config::default()).await?;
        let server_id = server.hello().node_id;
        let connection = client
            .connect_expecting(server.local_addr(), server_id)
            .await?;
        assert_eq!(connection.node_id(), server_id);
        let inbound = connected(&mut server_events).await?;
        assert_eq!(inbound.node_id(), client.hello().node_id);
        Ok(())
    })
    .await
}
