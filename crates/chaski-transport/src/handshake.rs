//! The handshake: each side writes its `Hello`, then reads the peer's; the peer's first frame must
//! be a `Hello` (or a `Goodbye` refusing the connection) of at most [`MAX_HELLO_LEN`] bytes.
//!
//! A dial that expects a given node (an address learned from the network, not yet confirmed)
//! reads first and writes its own hello only once the peer's names that node: an address
//! someone made up learns nothing from us.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chaski_wire::{
    DEFAULT_MAX_FRAME_LEN, Frame, Goodbye, GoodbyeReason, Hello, NodeId, decode_frame, encode_frame,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{HandshakeError, MAX_HELLO_LEN};

/// Sends `hello` (already encoded) and reads the peer's. Returns the peer's `Hello` and whatever
/// the peer sent after it (frames that belong to the connection).
///
/// With `expect`, reads first, and sends `hello` only if the peer's names that node
/// ([`HandshakeError::UnexpectedPeer`] otherwise).
pub(crate) async fn exchange<S>(
    stream: &mut S,
    hello: &[u8],
    expect: Option<NodeId>,
) -> Result<(Hello, BytesMut), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if expect.is_none() {
        stream.write_all(hello).await?;
        stream.flush().await?;
    }
    let mut buf = BytesMut::with_capacity(4 << 10);
    loop {
        let decoded = decode_frame(&mut buf, MAX_HELLO_LEN).map_err(|error| {
            // A TLS record (handshake, version 3.x) where a length prefix should be.
            if buf.starts_with(&[0x16, 0x03]) {
                HandshakeError::TlsPeer
            } else {
                HandshakeError::Decode(error)
            }
        });
        match decoded? {
            Some(Frame::Hello(theirs)) => {
                if let Some(expected) = expect {
                    if theirs.node_id != expected {
                        return Err(HandshakeError::UnexpectedPeer {
                            expected,
                            found: theirs.node_id,
                        });
                    }
                    stream.write_all(hello).await?;
                    stream.flush().await?;
                }
                return Ok((theirs, buf));
            }
            Some(Frame::Goodbye(goodbye)) => {
                return Err(HandshakeError::Refused {
                    reason: goodbye.reason,
                    message: goodbye.message,
                });
            }
            Some(other) => {
                return Err(HandshakeError::UnexpectedFrame { kind: other.kind() });
            }
            None => {}
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4 << 10);
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(HandshakeError::Eof);
        }
    }
}

/// Encodes a goodbye frame (with its length prefix).
pub(crate) fn encode_goodbye(reason: GoodbyeReason, message: &str) -> Bytes {
    let mut buf = BytesMut::new();
    let mut end = message.len().min(1024);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let message = message[..end].to_owned();
    let frame = Frame::Goodbye(Goodbye { reason, message });
    // A goodbye of at most ~1 KiB always fits.
    let _ = encode_frame(&frame, &mut buf, DEFAULT_MAX_FRAME_LEN);
    buf.freeze()
}

/// Tells the peer why we close (best effort, bounded by `within`), then shuts the stream down.
pub(crate) async fn refuse<S>(
    stream: &mut S,
    reason: GoodbyeReason,
    message: &str,
    within: Duration,
) where
    S: AsyncWrite + Unpin,
{
    let goodbye = encode_goodbye(reason, message);
    let _ = tokio::time::timeout(within, async {
        stream.write_all(&goodbye).await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await;
}
