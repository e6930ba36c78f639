//! Helpers shared by the integration tests: hellos, endpoints, a raw peer that speaks the
//! protocol by hand (or breaks it on purpose), and event helpers. Everything is bounded in time.

#![allow(dead_code, unreachable_pub)]

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::{Context, Result, bail};
use bytes::{Bytes, BytesMut};
use chaski_transport::{CloseReason, Config, Connection, ConnectionId, Endpoint, Event, Events};
use chaski_wire::{
    Capabilities, DEFAULT_MAX_FRAME_LEN, Frame, Hello, Message, NodeId, Topic, decode_frame,
    encode_frame,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// The bound on every test.
pub const BOUND: Duration = Duration::from_secs(60);

/// Runs `test` within [`BOUND`].
pub async fn bounded<T>(test: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(BOUND, test)
        .await
        .context("the test did not finish in time")?
}

pub fn hello(name: &str, node_id: NodeId) -> Hello {
    Hello {
        node_id,
        name: name.to_owned(),
        listen_addrs: Vec::new(),
        subscriptions: vec![Topic::from_static("test")],
        capabilities: Capabilities::NONE,
        auth: None,
        timestamp_micros: 0,
        network_id: String::new(),
        incarnation: 0,
    }
}

pub fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub async fn endpoint(name: &str, config: Config) -> Result<(Endpoint, Events)> {
    endpoint_with_id(name, NodeId::random(), config).await
}

pub async fn endpoint_with_id(
    name: &str,
    node_id: NodeId,
    config: Config,
) -> Result<(Endpoint, Events)> {
    Ok(Endpoint::bind(localhost(), hello(name, node_id), config).await?)
}

pub fn message(sequence: u64, payload: Bytes) -> Message {
    Message {
        topic: Topic::from_static("test"),
        payload,
        publisher: NodeId::from_u128(1),
        sequence,
        incarnation: 0,
        timestamp_micros: 0,
        hop_limit: 1,
        hops: 0,
        headers: Vec::new(),
    }
}

/// The next event, which must be `Connected`.
pub async fn connected(events: &mut Events) -> Result<Connection> {
    match events.recv().await {
        Some(Event::Connected(connection)) => Ok(connection),
        other => bail!("expected a connected event, got {other:?}"),
    }
}

/// Reads events until `connection` closes; returns its frames and how it closed.
pub async fn until_closed(
    events: &mut Events,
    connection: ConnectionId,
) -> Result<(Vec<Frame>, CloseReason)> {
    let mut frames = Vec::new();
    loop {
        match events.recv().await.context("events ended")? {
            Event::Frames {
                connection: id,
                frames: batch,
            } if id == connection => frames.extend(batch),
            Event::Closed {
                connection: id,
                reason,
                ..
            } if id == connection => return Ok((frames, reason)),
            _ => {}
        }
    }
}

/// Reads events until `n` frames arrived on `connection`.
pub async fn frames(events: &mut Events, connection: ConnectionId, n: usize) -> Result<Vec<Frame>> {
    let mut frames = Vec::new();
    while frames.len() < n {
        match events.recv().await.context("events ended")? {
            Event::Frames {
                connection: id,
                frames: batch,
            } if id == connection => frames.extend(batch),
            Event::Closed {
                connection: id,
                reason,
                ..
            } if id == connection => bail!("connection closed early: {reason:?}"),
            Event::Frames { connection: id, .. } => bail!("unexpected frames from {id}"),
            _ => {}
        }
    }
    Ok(frames)
}

/// A peer speaking the protocol by hand over a plain TCP stream.
pub struct RawPeer {
    pub stream: TcpStream,
    pub buf: BytesMut,
}

impl RawPeer {
    pub async fn connect(addr: SocketAddr) -> Result<RawPeer> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(RawPeer {
            stream,
            buf: BytesMut::new(),
        })
    }

    /// Connects and completes the handshake as `node_id`; returns the peer and the server's hello.
    pub async fn handshake(addr: SocketAddr, node_id: NodeId) -> Result<(RawPeer, Hello)> {
        let mut peer = RawPeer::connect(addr).await?;
        peer.send(&Frame::Hello(hello("raw", node_id))).await?;
        match peer.recv().await? {
            Some(Frame::Hello(hello)) => Ok((peer, hello)),
            other => bail!("expected a hello, got {other:?}"),
        }
    }

    pub async fn send(&mut self, frame: &Frame) -> Result<()> {
        let mut buf = BytesMut::new();
        encode_frame(frame, &mut buf, DEFAULT_MAX_FRAME_LEN)?;
        self.stream.write_all(&buf).await?;
        Ok(())
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// The next frame, or `None` at EOF (or a reset).
    pub async fn recv(&mut self) -> Result<Option<Frame>> {
        loop {
            if let Some(frame) = decode_frame(&mut self.buf, DEFAULT_MAX_FRAME_LEN)? {
                return Ok(Some(frame));
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }
}

/// A hello frame, encoded, with `patch` applied to its bytes (to break it on purpose).
pub fn patched_hello(patch: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_frame(
        &Frame::Hello(hello("patched", NodeId::random())),
        &mut buf,
        DEFAULT_MAX_FRAME_LEN,
    )
    .unwrap();
    let mut bytes = buf.to_vec();
    patch(&mut bytes);
    bytes
}

/// Offset of the hello's `magic` (fixed32) in an encoded hello frame: prefix (4), the frame's
/// `hello` key (1), the hello's length (1 byte for a small hello), the magic's key (1).
pub const MAGIC_OFFSET: usize = 7;
/// Offset of the hello's version value (after the 4 magic bytes and the version key).
pub const VERSION_OFFSET: usize = MAGIC_OFFSET + 5;
