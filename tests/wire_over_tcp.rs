//! The wire codec over real TCP connections on loopback, through tokio-util's `Framed`: what
//! every higher layer relies on.

use std::time::Duration;

use anyhow::Result;
use bytes::{BufMut, Bytes, BytesMut};
use chaski_wire::{
    CodecError, DecodeError, Frame, FrameCodec, Goodbye, GoodbyeReason, Message, NodeId, Ping,
    StatusRequest, Topic,
};
use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
};
use tokio_util::codec::{FramedRead, FramedWrite};

/// Every test here finishes in well under a second; the timeout turns a hang into a failure.
const LIMIT: Duration = Duration::from_secs(30);

fn message(sequence: u64) -> Message {
    Message {
        topic: Topic::from_static("e2e"),
        payload: Bytes::from(sequence.to_be_bytes().to_vec()),
        publisher: NodeId::from_u128(42),
        sequence,
        incarnation: 0,
        timestamp_micros: 1,
        hop_limit: 4,
        hops: 0,
        headers: Vec::new(),
    }
}

async fn pair() -> Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let client = TcpStream::connect(listener.local_addr()?).await?;
    let (server, _) = listener.accept().await?;
    Ok((client, server))
}

#[tokio::test]
async fn frames_cross_a_tcp_connection_intact_and_in_order() -> Result<()> {
    tokio::time::timeout(LIMIT, async {
        let (client, server) = pair().await?;
        const COUNT: u64 = 20_000;
        let sender = tokio::spawn(async move {
            let mut out = FramedWrite::new(client, FrameCodec::new());
            for seq in 1..=COUNT {
                let frame = match seq % 100 {
                    0 => Frame::Ping(Ping {
                        id: seq,
                        ..Ping::default()
                    }),
                    50 => Frame::StatusRequest(StatusRequest { request_id: seq }),
                    _ => Frame::Publish(message(seq)),
                };
                out.feed(frame).await?;
            }
            out.send(Frame::Goodbye(Goodbye {
                reason: GoodbyeReason::Shutdown,
                message: "done".into(),
            }))
            .await?;
            anyhow::Ok(())
        });
        let mut input = FramedRead::new(server, FrameCodec::new());
        for seq in 1..=COUNT {
            let frame = input.next().await.expect("stream ended early")?;
            match (seq % 100, frame) {
                (0, Frame::Ping(p)) => assert_eq!(p.id, seq),
                (50, Frame::StatusRequest(r)) => assert_eq!(r.request_id, seq),
                (_, Frame::Publish(m)) => assert_eq!(m, message(seq)),
                (_, other) => panic!("frame {seq}: unexpected {other:?}"),
            }
        }
        let goodbye = input.next().await.expect("goodbye")?;
        assert!(matches!(
            goodbye,
            Frame::Goodbye(Goodbye {
                reason: GoodbyeReason::Shutdown,
                ..
            })
        ));
        assert!(input.next().await.is_none(), "the sender closed the stream");
        sender.await??;
        Ok(())
    })
    .await?
}

#[tokio::test]
async fn an_oversized_prefix_from_the_network_is_a_typed_error() -> Result<()> {
    tokio::time::timeout(LIMIT, async {
        let (mut client, server) = pair().await?;
        let mut hostile = BytesMut::new();
        hostile.put_u32(u32::MAX);
        hostile.put_slice(b"never sent in full");
        client.write_all(&hostile).await?;
        let mut input = FramedRead::new(server, FrameCodec::with_max_frame_len(1 << 20));
        match input.next().await {
            Some(Err(CodecError::Decode(DecodeError::FrameTooLarge { len, max }))) => {
                assert_eq!((len, max), (u32::MAX as usize, 1 << 20));
            }
            other => panic!("expected a frame-too-large error, got {other:?}"),
        }
        Ok(())
    })
    .await?
}
