//! A hostile peer: a client that speaks the Chaski protocol (TLS with a key of its own, as
//! anyone may in an open network, or plain TCP; then a hello, then whatever frames it likes:
//! crafted domain frames or raw bytes) and never behaves, for tests that attack real nodes over
//! loopback.

use std::{io, net::SocketAddr, time::Duration};

use bytes::BytesMut;
use chaski_transport::{Identity, tls::Tls};
use chaski_wire::{
    Capabilities, DEFAULT_MAX_FRAME_LEN, Frame, GoodbyeReason, Hello, NodeId, Topic, decode_frame,
    encode_frame,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
};

/// A stream the hostile peer speaks over: TLS or plain TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug> Io for T {}

/// The largest frame the hostile peer writes (it may write anything up to the protocol's limit).
const MAX_LEN: usize = chaski_wire::MAX_FRAME_LEN_LIMIT;

/// A hello claiming `node_id`, listening on `listen` (the address it claims, true or not),
/// subscribed to `topics`.
pub fn hello(node_id: NodeId, name: &str, listen: Vec<SocketAddr>, topics: &[&str]) -> Hello {
    Hello {
        node_id,
        name: name.to_owned(),
        listen_addrs: listen,
        subscriptions: topics
            .iter()
            .map(|t| Topic::new(t).expect("valid topic"))
            .collect(),
        capabilities: Capabilities::NONE,
        auth: None,
        timestamp_micros: 0,
        network_id: String::new(),
        incarnation: 0,
    }
}

/// A connection that completed the handshake and now does as the test says.
#[derive(Debug)]
pub struct HostilePeer {
    stream: Box<dyn Io>,
    local_addr: SocketAddr,
    buf: BytesMut,
    /// The victim's hello.
    pub victim: Hello,
}

impl HostilePeer {
    /// Connects to `addr` over TLS with `identity` (a key of its own: an outsider in an open
    /// network) and completes the handshake with `hello`, which may claim any id (the victim
    /// then refuses it for not being the certificate's).
    pub async fn connect(
        addr: SocketAddr,
        identity: &Identity,
        hello: Hello,
    ) -> io::Result<HostilePeer> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let local_addr = tcp.local_addr()?;
        let tls = Tls::new(identity).map_err(io::Error::other)?;
        let name = rustls::pki_types::ServerName::try_from("chaski").map_err(io::Error::other)?;
        let stream = tls.connector().connect(name, tcp).await?;
        HostilePeer::handshake(Box::new(stream), local_addr, hello).await
    }

    /// As [`connect`](HostilePeer::connect) over plain TCP, for victims that run with insecure
    /// plaintext.
    pub async fn connect_plain(addr: SocketAddr, hello: Hello) -> io::Result<HostilePeer> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let local_addr = stream.local_addr()?;
        HostilePeer::handshake(Box::new(stream), local_addr, hello).await
    }

    async fn handshake(
        stream: Box<dyn Io>,
        local_addr: SocketAddr,
        hello: Hello,
    ) -> io::Result<HostilePeer> {
        let mut peer = HostilePeer {
            stream,
            local_addr,
            buf: BytesMut::new(),
            victim: hello.clone(),
        };
        peer.send(&Frame::Hello(hello)).await?;
        match peer.recv().await? {
            Some(Frame::Hello(victim)) => {
                peer.victim = victim;
                Ok(peer)
            }
            other => Err(io::Error::other(format!(
                "expected the victim's hello, got {other:?}"
            ))),
        }
    }

    /// The local address of the connection (where the victim sees it come from).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local_addr)
    }

    /// Writes one frame.
    pub async fn send(&mut self, frame: &Frame) -> io::Result<()> {
        let mut out = BytesMut::new();
        encode_frame(frame, &mut out, MAX_LEN).map_err(io::Error::other)?;
        self.send_raw(&out).await
    }

    /// Writes raw bytes (and flushes them: TLS buffers what it encrypts).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// The next frame, or `None` at the end of the stream (or a reset).
    pub async fn recv(&mut self) -> io::Result<Option<Frame>> {
        loop {
            match decode_frame(&mut self.buf, DEFAULT_MAX_FRAME_LEN) {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(e) => return Err(io::Error::other(e)),
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }

    /// Reads until the victim closes the connection (at most `within`); returns the reason of
    /// the goodbye it said on the way, if any, or `Err(TimedOut)` if it kept the connection
    /// open.
    pub async fn closed_by_victim(
        &mut self,
        within: Duration,
    ) -> io::Result<Option<GoodbyeReason>> {
        let read = async {
            let mut reason = None;
            while let Some(frame) = self.recv().await? {
                if let Frame::Goodbye(g) = frame {
                    reason = Some(g.reason);
                }
            }
            Ok(reason)
        };
        tokio::time::timeout(within, read).await.map_err(|_| {
            io::Error::new(io::ErrorKind::TimedOut, "the victim kept the connection")
        })?
    }
}

/// `frame` encoded with its length prefix, up to the protocol's largest frame.
pub fn encode(frame: &Frame) -> io::Result<Vec<u8>> {
    let mut out = BytesMut::new();
    encode_frame(frame, &mut out, MAX_LEN).map_err(io::Error::other)?;
    Ok(out.to_vec())
}

/// Sends one datagram carrying `frame` from `from` to `to` (spoofing is a matter of choosing
/// `from` among the test's own loopback addresses).
pub async fn send_datagram(from: SocketAddr, to: SocketAddr, frame: &Frame) -> io::Result<()> {
    let socket = UdpSocket::bind(from).await?;
    let mut out = BytesMut::new();
    encode_frame(frame, &mut out, 64 << 10).map_err(io::Error::other)?;
    socket.send_to(&out, to).await?;
    Ok(())
}

pub use crate::bench::rss_bytes;
