//! Connections over loopback: throughput without loss, large frames, backpressure, graceful and
//! abrupt ends, the inbound limit, many connections, generic streams.

mod common;

use std::{collections::HashSet, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use bytes::{Bytes, BytesMut};
use chaski_transport::{
    CloseReason, Config, Direction, EncodedFrame, Endpoint, Error, Event, HandshakeError,
    LostCause, SendError, Side,
};
use chaski_wire::{
    DecodeError, EncodeError, Frame, GoodbyeReason, NodeId, Ping, Pong, encode_message_head,
};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_small_frames_arrive_in_order() -> Result<()> {
    bounded(async {
        const N: u64 = 1_000_000;
        let (server, mut server_events) = endpoint("server", Config::default()).await?;
        let (client, _client_events) = endpoint("client", Config::default()).await?;
        let connection = client.connect(server.local_addr()).await?;
        let inbound = connected(&mut server_events).await?;
        assert_eq!(inbound.node_id(), client.node_id());
        assert_eq!(inbound.direction(), Direction::Inbound);
        assert_eq!(connection.direction(), Direction::Outbound);

        let sender = tokio::spawn(async move {
            let payload = Bytes::from_static(b"0123456789abcdef");
            for sequence in 0..N {
                connection
                    .send(Frame::Publish(message(sequence, payload.clone())))
                    .await?;
            }
            Ok::<_, SendError>(connection)
        });
        let mut expected = 0u64;
        while expected < N {
            match server_events.recv().await {
                Some(Event::Frames { frames, .. }) => {
                    for frame in frames {
                        let Frame::Publish(m) = frame else {
                            bail!("unexpected frame {frame:?}")
                        };
                        ensure!(
                            m.sequence == expected,
                            "got {} instead of {expected}",
                            m.sequence
                        );
                        ensure!(&m.payload[..] == b"0123456789abcdef");
                        expected += 1;
                    }
                }
                other => bail!("unexpected event {other:?}"),
            }
        }
        let connection = sender.await??;
        // The counters are final once the writer has stopped.
        connection.close(GoodbyeReason::NotNeeded, "").await;
        connection.closed().await;
        let (rest, _) = until_closed(&mut server_events, inbound.id()).await?;
        assert!(rest.is_empty());
        let out = connection.stats();
        assert_eq!(out.frames_out, N);
        assert_eq!(inbound.stats().frames_in, N);
        // Every byte written (the goodbye included) was read.
        assert_eq!(inbound.stats().bytes_in, out.bytes_out);
        // Coalescing: far fewer write calls than frames.
        assert!(
            out.write_calls < N / 10,
            "{} write calls for {N} frames",
            out.write_calls
        );
        assert!(out.queue_high_water >= 1);
        Ok(())
    })
    .await
}

/// A message whose frame body is exactly `len` bytes.
fn message_of_len(len: usize) -> chaski_wire::Message {
    let mut head = BytesMut::new();
    let probe = message(1, Bytes::from(vec![0u8; len]));
    encode_message_head(&probe, &mut head, usize::MAX).unwrap();
    // The head's varint length of the payload may shrink with the payload; adjust.
    let mut payload_len = len - (head.len() - 4);
    loop {
        let m = message(1, Bytes::from(vec![7u8; payload_len]));
        let mut head = BytesMut::new();
        encode_message_head(&m, &mut head, usize::MAX).unwrap();
        let body = head.len() - 4 + payload_len;
        if body == len {
            return m;
        }
        payload_len = payload_len + len - body;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_up_to_the_maximum_pass_and_one_byte_more_is_rejected() -> Result<()> {
    bounded(async {
        const MAX: usize = 1 << 20;
        let config = Config::builder().max_frame_len(MAX).build()?;
        let (server, mut server_events) = endpoint("server", config.clone()).await?;
        let (client, _client_events) = endpoint("client", config).await?;
        let connection = client.connect(server.local_addr()).await?;
        let inbound = connected(&mut server_events).await?;

        let largest = message_of_len(MAX);
        connection.send(Frame::Publish(largest.clone())).await?;
        let small = message(2, Bytes::from_static(b"after"));
        connection.send(Frame::Publish(small.clone())).await?;
        let received = frames(&mut server_events, inbound.id(), 2).await?;
        assert_eq!(
            received,
            vec![Frame::Publish(largest), Frame::Publish(small)]
        );

        // One byte over: refused when sending...
        let too_large = message_of_len(MAX + 1);
        match connection.send(Frame::Publish(too_large.clone())).await {
            Err(SendError::Encode(EncodeError::FrameTooLarge { len, max })) => {
                assert_eq!((len, max), (MAX + 1, MAX));
            }
            other => bail!("expected FrameTooLarge, got {other:?}"),
        }
        assert!(matches!(
            EncodedFrame::from_message(&too_large, MAX),
            Err(EncodeError::FrameTooLarge { .. })
        ));

        // ...and when a peer sends it anyway, the receiver closes that connection.
        let (mut raw, _) = RawPeer::handshake(server.local_addr(), NodeId::random()).await?;
        let raw_conn = connected(&mut server_events).await?;
        let mut frame = BytesMut::new();
        encode_message_head(&too_large, &mut frame, usize::MAX)?;
        frame.extend_from_slice(&too_large.payload);
        raw.send_raw(&frame).await?;
        let (_, reason) = until_closed(&mut server_events, raw_conn.id()).await?;
        match reason {
            CloseReason::Lost(LostCause::Decode(DecodeError::FrameTooLarge { len, max })) => {
                assert_eq!((len, max), (MAX + 1, MAX));
            }
            other => bail!("expected FrameTooLarge, got {other:?}"),
        }
        // The peer was told why.
        assert!(matches!(
            raw.recv().await?,
            Some(Frame::Goodbye(g)) if g.reason == GoodbyeReason::ProtocolError
        ));
        assert_eq!(server.stats().traffic.rejected_in.get("too_large"), 1);

        // The first connection is undisturbed.
        connection.send(Frame::Ping(Ping::default())).await?;
        frames(&mut server_events, inbound.id(), 1).await?;
        Ok(())
    })
    .await
}

/// Accepts one connection on `listener` as a raw peer named `name`: its hello sent, the
/// client's read.
async fn accept_raw(listener: &tokio::net::TcpListener, name: &str) -> Result<RawPeer> {
    let (stream, _) = listener.accept().await?;
    let mut peer = RawPeer {
        stream,
        buf: BytesMut::new(),
    };
    peer.send(&Frame::Hello(hello(name, NodeId::random())))
        .await?;
    let _ = peer.recv().await?;
    Ok(peer)
}

/// A server that completes the handshake and then never reads (until the task is aborted).
async fn mute_server() -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(localhost()).await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let _peer = accept_raw(&listener, "mute").await?;
        std::future::pending::<()>().await;
        Ok(())
    });
    Ok((addr, server))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_fails_fast_or_waits() -> Result<()> {
    bounded(async {
        let config = Config::builder().send_queue(8).build()?;
        let (client, _events) = endpoint("client", config).await?;
        let (addr, server) = mute_server().await?;
        let connection = client.connect(addr).await?;
        let big =
            EncodedFrame::from_message(&message(0, Bytes::from(vec![1u8; 64 << 10])), 1 << 20)?;
        // Fill the socket buffers: once a `send` cannot complete, the writer is stuck for good
        // (the peer never reads) and the queue is full.
        let mut sent = 0usize;
        while tokio::time::timeout(
            Duration::from_millis(500),
            connection.send_encoded(big.clone()),
        )
        .await
        .is_ok()
        {
            sent += 1;
            ensure!(sent < 10_000, "the connection never pushed back");
        }
        assert!(matches!(
            connection.try_send_encoded(big.clone()),
            Err(SendError::Full)
        ));
        assert!(matches!(
            connection.try_send(Frame::Ping(Ping::default())),
            Err(SendError::Full)
        ));
        assert_eq!(connection.queued(), 8);
        assert!(connection.stats().queue_high_water >= 1);
        server.abort();
        Ok(())
    })
    .await
}

/// `send_now` queues at once while there is room, and hands a frame that finds the queue full
/// back as a wait: awaited, it queues the frame once the peer reads again; dropped, it drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_now_gives_back_what_a_full_queue_cannot_take() -> Result<()> {
    bounded(async {
        let config = Config::builder().send_queue(8).build()?;
        let (client, _events) = endpoint("client", config).await?;
        // A peer that reads only once told to, and reports the id of every ping it reads.
        let listener = tokio::net::TcpListener::bind(localhost()).await?;
        let addr = listener.local_addr()?;
        let (go, start) = tokio::sync::oneshot::channel::<()>();
        // Four pings at most are ever sent.
        let (seen_tx, mut seen) = tokio::sync::mpsc::channel(4);
        let server = tokio::spawn(async move {
            let mut peer = accept_raw(&listener, "slow").await?;
            let _ = start.await;
            while let Some(frame) = peer.recv().await? {
                if let Frame::Ping(ping) = frame {
                    let _ = seen_tx.send(ping.id).await;
                }
            }
            Ok::<_, anyhow::Error>(())
        });
        let connection = client.connect(addr).await?;
        let ping = |id| {
            Frame::Ping(Ping {
                id,
                ..Ping::default()
            })
        };
        assert!(
            connection.send_now(ping(1))?.is_none(),
            "room: queued at once"
        );
        // Fill the socket buffers and the queue with large frames the peer does not read.
        let big =
            EncodedFrame::from_message(&message(0, Bytes::from(vec![1u8; 64 << 10])), 1 << 20)?;
        let mut filled = 0usize;
        let first_wait = loop {
            if let Some(wait) = connection.send_encoded_now(big.clone())? {
                break wait;
            }
            filled += 1;
            ensure!(filled < 10_000, "the connection never pushed back");
            if filled % 8 == 0 {
                tokio::task::yield_now().await;
            }
        };
        drop(first_wait);
        let dropped = connection
            .send_now(ping(2))?
            .context("a full queue gives the frame back")?;
        drop(dropped);
        let kept = connection
            .send_now(ping(3))?
            .context("a full queue gives the frame back")?;
        let queued = tokio::spawn(kept.into_future());
        go.send(())
            .map_err(|()| anyhow::anyhow!("the peer is gone"))?;
        queued.await??;
        connection.send(ping(4)).await?;
        let mut ids = Vec::new();
        while ids.last() != Some(&4) {
            ids.push(seen.recv().await.context("the peer stopped reading")?);
        }
        assert_eq!(ids, [1, 3, 4], "the dropped wait's frame is never sent");
        server.abort();
        Ok(())
    })
    .await
}

/// A peer that never reads can make the node hold at most `send_queue_bytes` for it, however
/// many frames the queue's frame limit would take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_send_queue_is_bounded_in_bytes() -> Result<()> {
    bounded(async {
        const LIMIT: usize = 1 << 20;
        let config = Config::builder().send_queue_bytes(LIMIT).build()?;
        let (client, _events) = endpoint("client", config).await?;
        let (addr, server) = mute_server().await?;
        let connection = client.connect(addr).await?;
        let frame =
            EncodedFrame::from_message(&message(0, Bytes::from(vec![1u8; 64 << 10])), 1 << 20)?;
        let mut queued = 0;
        loop {
            match connection.try_send_encoded(frame.clone()) {
                Ok(()) => queued += 1,
                Err(SendError::Full) => break,
                Err(other) => bail!("unexpected {other:?}"),
            }
            ensure!(queued < 100_000, "the byte bound never held");
            // Let the writer move what the socket takes, so that the kernel buffers fill too.
            if queued % 16 == 0 {
                tokio::task::yield_now().await;
            }
        }
        assert!(
            connection.queued_bytes() <= LIMIT,
            "{} bytes queued",
            connection.queued_bytes()
        );
        assert!(
            connection.queued() < 4096,
            "the frame limit was not what stopped it"
        );
        server.abort();
        Ok(())
    })
    .await
}

/// Idle sockets from one address hold at most `max_handshakes_per_ip` handshake slots; the
/// excess is closed at once and counted, and another address still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_handshake_slot() -> Result<()> {
    bounded(async {
        let config = Config::builder().max_handshakes_per_ip(4).build()?;
        let (server, mut events) = endpoint("server", config).await?;
        let addr = server.local_addr();
        // Ten silent sockets from 127.0.0.1.
        let mut silent = Vec::new();
        // The excess sockets are closed by the server at once (a reset, which may already
        // fail the connect), the others wait for their hello.
        let mut closed = 0;
        for _ in 0..10 {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(stream) => silent.push(stream),
                Err(_) => closed += 1,
            }
        }
        for stream in &mut silent {
            let mut byte = [0u8; 1];
            use tokio::io::AsyncReadExt;
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(500), stream.read(&mut byte)).await
            {
                closed += 1;
            }
        }
        assert_eq!(
            closed, 6,
            "the sockets beyond the limit are closed, the others wait"
        );
        assert_eq!(server.stats().refused_per_ip, 6);
        // An honest node from another loopback address completes its handshake meanwhile.
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind("127.0.0.2:0".parse()?)?;
        let stream = socket.connect(addr).await?;
        let mut peer = RawPeer {
            stream,
            buf: BytesMut::new(),
        };
        peer.send(&Frame::Hello(hello("honest", NodeId::random())))
            .await
            .context("honest hello")?;
        let answer = peer.recv().await.context("honest answer")?;
        assert!(matches!(answer, Some(Frame::Hello(_))), "{answer:?}");
        let inbound = connected(&mut events).await?;
        assert_eq!(inbound.remote_addr().ip().to_string(), "127.0.0.2");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_close_is_a_goodbye_on_both_sides() -> Result<()> {
    bounded(async {
        let (server, mut server_events) = endpoint("server", Config::default()).await?;
        let (client, mut client_events) = endpoint("client", Config::default()).await?;
        let connection = client.connect(server.local_addr()).await?;
        assert_eq!(connected(&mut client_events).await?.id(), connection.id());
        let inbound = connected(&mut server_events).await?;
        for id in 0..100 {
            connection
                .send(Frame::Ping(Ping {
                    id,
                    ..Ping::default()
                }))
                .await?;
        }
        connection.close(GoodbyeReason::NotNeeded, "done").await;

        let (frames, reason) = until_closed(&mut server_events, inbound.id()).await?;
        assert_eq!(
            frames.len(),
            100,
            "every frame queued before the goodbye arrives"
        );
        match reason {
            CloseReason::Goodbye {
                by: Side::Remote,
                reason: GoodbyeReason::NotNeeded,
                message,
            } => assert_eq!(message, "done"),
            other => bail!("expected a remote goodbye, got {other:?}"),
        }
        let (_, reason) = until_closed(&mut client_events, connection.id()).await?;
        assert!(matches!(
            reason,
            CloseReason::Goodbye {
                by: Side::Local,
                reason: GoodbyeReason::NotNeeded,
                ..
            }
        ));
        assert!(matches!(
            connection.send(Frame::Ping(Ping::default())).await,
            Err(SendError::Closed)
        ));
        assert!(connection.is_closed());
        assert_eq!(server.stats().goodbyes_received, 1);
        assert_eq!(client.stats().goodbyes_sent, 1);
        assert!(server.connection(client.node_id()).is_none());
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_killed_mid_stream_is_reported_lost_once() -> Result<()> {
    bounded(async {
        let (server, mut events) = endpoint("server", Config::default()).await?;

        // Killed in the middle of a frame.
        let (mut raw, _) = RawPeer::handshake(server.local_addr(), NodeId::random()).await?;
        let first = connected(&mut events).await?;
        raw.send(&Frame::Ping(Ping::default())).await?;
        raw.send_raw(&[0, 0, 0, 100, 1, 2, 3]).await?;
        drop(raw);
        let (frames, reason) = until_closed(&mut events, first.id()).await?;
        assert_eq!(frames.len(), 1);
        assert!(
            matches!(
                reason,
                CloseReason::Lost(LostCause::Truncated { buffered: 7 })
            ),
            "{reason:?}"
        );

        // Killed between frames.
        let (mut raw, _) = RawPeer::handshake(server.local_addr(), NodeId::random()).await?;
        let second = connected(&mut events).await?;
        raw.send(&Frame::Ping(Ping::default())).await?;
        drop(raw);
        let (_, reason) = until_closed(&mut events, second.id()).await?;
        assert!(
            matches!(reason, CloseReason::Lost(LostCause::Eof)),
            "{reason:?}"
        );

        // Reset.
        let (raw, _) = RawPeer::handshake(server.local_addr(), NodeId::random()).await?;
        let third = connected(&mut events).await?;
        raw.stream.set_zero_linger()?;
        drop(raw);
        let (_, reason) = until_closed(&mut events, third.id()).await?;
        assert!(
            matches!(
                reason,
                CloseReason::Lost(LostCause::Read(_) | LostCause::Eof)
            ),
            "{reason:?}"
        );

        // Reported once: the next events belong to a new connection.
        let (_raw, _) = RawPeer::handshake(server.local_addr(), NodeId::random()).await?;
        let fourth = connected(&mut events).await?;
        assert!(fourth.id() > third.id());
        assert!(events.try_recv().is_none());
        let stats = server.stats();
        assert_eq!(stats.lost.total(), 3);
        assert_eq!(stats.lost.get("truncated"), 1);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_the_handshake_closes_only_that_connection() -> Result<()> {
    bounded(async {
        let (server, mut events) = endpoint("server", Config::default()).await?;
        let (client, _client_events) = endpoint("client", Config::default()).await?;
        let good = client.connect(server.local_addr()).await?;
        let good_in = connected(&mut events).await?;

        let (mut raw, _) = RawPeer::handshake(server.local_addr(), NodeId::random()).await?;
        let bad = connected(&mut events).await?;
        raw.send_raw(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]).await?;
        let (_, reason) = until_closed(&mut events, bad.id()).await?;
        match reason {
            CloseReason::Lost(ref cause @ LostCause::Decode(_)) => {
                assert_eq!(cause.cause(), "malformed");
            }
            other => bail!("expected a decode error, got {other:?}"),
        }
        good.send(Frame::Ping(Ping::default())).await?;
        frames(&mut events, good_in.id(), 1).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbound_limit_refuses_and_counts_only_the_excess() -> Result<()> {
    bounded(async {
        let config = Config::builder().max_inbound(2).build()?;
        let (server, mut events) = endpoint("server", config).await?;
        let (a, _a_events) = endpoint("a", Config::default()).await?;
        let (b, _b_events) = endpoint("b", Config::default()).await?;
        let (c, _c_events) = endpoint("c", Config::default()).await?;
        let to_a = a.connect(server.local_addr()).await?;
        let to_b = b.connect(server.local_addr()).await?;
        let first = connected(&mut events).await?;
        let second = connected(&mut events).await?;
        let (a_in, b_in) = if first.node_id() == a.node_id() {
            (first, second)
        } else {
            (second, first)
        };
        assert_eq!(b_in.node_id(), b.node_id());

        match c.connect(server.local_addr()).await {
            Err(Error::Handshake {
                source:
                    HandshakeError::Refused {
                        reason: GoodbyeReason::Overloaded,
                        ..
                    },
                ..
            }) => {}
            other => bail!("expected a refusal, got {other:?}"),
        }
        assert_eq!(server.stats().inbound_refused, 1);

        // The others are untouched.
        to_a.send(Frame::Ping(Ping::default())).await?;
        to_b.send(Frame::Ping(Ping::default())).await?;
        let mut pinged = HashSet::new();
        while pinged.len() < 2 {
            match events.recv().await {
                Some(Event::Frames { connection, .. }) => {
                    ensure!(connection == a_in.id() || connection == b_in.id());
                    pinged.insert(connection);
                }
                other => bail!("unexpected {other:?}"),
            }
        }

        // A slot freed by a close can be taken again.
        to_a.close(GoodbyeReason::NotNeeded, "").await;
        until_closed(&mut events, a_in.id()).await?;
        c.connect(server.local_addr()).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_connections_to_one_listener() -> Result<()> {
    // 1,000 client sockets plus 1,000 accepted ones: raise the soft descriptor limit if needed.
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    if soft < 4096 {
        rlimit::Resource::NOFILE.set(hard.min(8192), hard)?;
    }
    bounded(async {
        const N: u64 = 1000;
        let config = Config::builder()
            .max_inbound(N as usize)
            .max_inbound_per_ip(N as usize)
            .max_handshakes_per_ip(N as usize)
            .build()?;
        let (server, mut events) = endpoint("server", config).await?;
        let addr = server.local_addr();
        let mut clients = Vec::new();
        for id in 0..N {
            clients.push(tokio::spawn(async move {
                let (mut peer, _) =
                    RawPeer::handshake(addr, NodeId::from_u128(1000 + u128::from(id))).await?;
                peer.send(&Frame::Ping(Ping {
                    id,
                    ..Ping::default()
                }))
                .await?;
                match peer.recv().await? {
                    Some(Frame::Pong(pong)) if pong.id == id => Ok(peer),
                    other => bail!("expected pong {id}, got {other:?}"),
                }
            }));
        }
        // Answer every ping on its own connection.
        let mut connections = std::collections::HashMap::new();
        let mut answered = 0;
        while answered < N {
            match events.recv().await {
                Some(Event::Connected(c)) => {
                    connections.insert(c.id(), c);
                }
                Some(Event::Frames { connection, frames }) => {
                    for frame in frames {
                        let Frame::Ping(ping) = frame else {
                            bail!("unexpected {frame:?}")
                        };
                        let c = &connections[&connection];
                        ensure!(c.node_id() == NodeId::from_u128(1000 + u128::from(ping.id)));
                        c.send(Frame::Pong(Pong {
                            id: ping.id,
                            ..Pong::default()
                        }))
                        .await?;
                        answered += 1;
                    }
                }
                other => bail!("unexpected event {other:?}"),
            }
        }
        let mut peers = Vec::new();
        for client in clients {
            peers.push(client.await??);
        }
        let stats = server.stats();
        assert_eq!(stats.inbound_open, N);
        assert_eq!(stats.established, N);
        assert_eq!(stats.inbound_refused, 0);
        assert_eq!(server.connections().len(), N as usize);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_async_stream_can_carry_a_connection() -> Result<()> {
    bounded(async {
        let config = Config::builder().udp(false).build()?;
        let (a, mut a_events) = endpoint("a", config.clone()).await?;
        let (b, mut b_events) = endpoint("b", config).await?;
        let (left, right) = tokio::io::duplex(64 << 10);
        let fake: std::net::SocketAddr = "127.0.0.1:9".parse()?;
        let (to_b, to_a) = tokio::join!(
            a.establish(left, fake, Direction::Outbound),
            b.establish(right, fake, Direction::Inbound)
        );
        let (to_b, to_a) = (to_b?, to_a?);
        assert_eq!(to_b.node_id(), b.node_id());
        assert_eq!(to_a.remote_hello().name, "a");
        assert_eq!(connected(&mut a_events).await?.id(), to_b.id());
        assert_eq!(connected(&mut b_events).await?.id(), to_a.id());

        // Large payloads go through the vectored (or copying) path too.
        let big = message(9, Bytes::from(vec![3u8; 200 << 10]));
        to_b.send(Frame::Publish(big.clone())).await?;
        to_a.send(Frame::Ping(Ping {
            id: 5,
            ..Ping::default()
        }))
        .await?;
        assert_eq!(
            frames(&mut b_events, to_a.id(), 1).await?,
            vec![Frame::Publish(big)]
        );
        let got = frames(&mut a_events, to_b.id(), 1).await?;
        assert!(matches!(&got[0], Frame::Ping(p) if p.id == 5));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoded_frame_fans_out_to_many_connections() -> Result<()> {
    bounded(async {
        let (hub, _hub_events) = endpoint("hub", Config::default()).await?;
        let mut subscribers = Vec::new();
        let mut links = Vec::new();
        for i in 0..3 {
            let (sub, mut events) = endpoint(&format!("sub{i}"), Config::default()).await?;
            links.push(hub.connect(sub.local_addr()).await?);
            let inbound = connected(&mut events).await?;
            subscribers.push((sub, events, inbound));
        }
        let message = message(42, Bytes::from(vec![5u8; 10 << 10]));
        let encoded = EncodedFrame::from_message(&message, 1 << 20)?;
        for link in &links {
            link.send_encoded(encoded.clone()).await?;
        }
        for (_sub, events, inbound) in &mut subscribers {
            let got = frames(events, inbound.id(), 1).await?;
            assert_eq!(got, vec![Frame::Publish(message.clone())]);
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_endpoints_bind_tcp_and_udp_on_one_port() -> Result<()> {
    bounded(async {
        let any6: std::net::SocketAddr = "[::1]:0".parse()?;
        let (server, mut events) =
            match Endpoint::bind(any6, hello("server6", NodeId::random()), Config::default()).await
            {
                Ok(bound) => bound,
                Err(Error::Bind { source, .. })
                    if source.kind() == std::io::ErrorKind::AddrNotAvailable =>
                {
                    eprintln!("skipped: IPv6 loopback is not available here ({source})");
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
        let udp = server.datagrams().expect("udp is on by default");
        assert_eq!(udp.local_addr()?.port(), server.local_addr().port());
        assert!(server.local_addr().is_ipv6());
        let (client, _client_events) =
            Endpoint::bind(any6, hello("client6", NodeId::random()), Config::default()).await?;
        let connection = client.connect(server.local_addr()).await?;
        connection.send(Frame::Ping(Ping::default())).await?;
        let inbound = connected(&mut events).await?;
        frames(&mut events, inbound.id(), 1).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_says_goodbye_to_every_peer() -> Result<()> {
    bounded(async {
        let (hub, mut hub_events) = endpoint("hub", Config::default()).await?;
        let mut peers = Vec::new();
        for i in 0..3 {
            let (peer, mut events) = endpoint(&format!("peer{i}"), Config::default()).await?;
            let link = peer.connect(hub.local_addr()).await?;
            assert_eq!(connected(&mut events).await?.id(), link.id());
            peers.push((peer, events, link));
        }
        for _ in 0..3 {
            connected(&mut hub_events).await?;
        }
        hub.shutdown().await;
        for (_peer, events, link) in &mut peers {
            let (_, reason) = until_closed(events, link.id()).await?;
            assert!(
                matches!(
                    reason,
                    CloseReason::Goodbye {
                        by: Side::Remote,
                        reason: GoodbyeReason::Shutdown,
                        ..
                    }
                ),
                "{reason:?}"
            );
        }
        // No new connections once shut down.
        assert!(matches!(
            hub.connect(peers[0].0.local_addr()).await,
            Err(Error::Shutdown)
        ));
        Ok(())
    })
    .await
}
