//! The raw tokio TCP baseline: what the machine does with no Chaski at all, measured in the same
//! run as the layer under test so that the comparison survives a noisy, shared machine.
//!
//! * Throughput: length-prefixed frames written through a plain `BufWriter` on one side, a reader
//!   slicing them out of a `BytesMut` on the other.
//! * Round trip: a lone 64 B frame (plus its 4-byte prefix) through a plain TCP echo.

use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, BufWriter},
    net::{TcpListener, TcpStream},
};

/// A connected pair of loopback TCP streams with `TCP_NODELAY` on.
pub async fn pair() -> std::io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (client, server) = (client?, server?.0);
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    Ok((client, server))
}

/// Sends `n` frames of `payload` bytes from `client` to `server`; returns the seconds it took
/// until the last one was sliced out on the receiving side.
pub async fn throughput(
    client: &mut TcpStream,
    server: &mut TcpStream,
    payload: usize,
    n: u64,
) -> std::io::Result<f64> {
    let data = vec![0xa5u8; payload];
    let start = Instant::now();
    let write = async {
        let mut w = BufWriter::new(&mut *client);
        for _ in 0..n {
            w.write_all(&(payload as u32).to_be_bytes()).await?;
            w.write_all(&data).await?;
        }
        w.flush().await?;
        std::io::Result::Ok(())
    };
    let read = async {
        let mut buf = BytesMut::with_capacity(64 << 10);
        let mut received = 0u64;
        let mut sink = 0usize;
        while received < n {
            if buf.capacity() - buf.len() < 16 << 10 {
                buf.reserve(64 << 10);
            }
            if server.read_buf(&mut buf).await? == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
            while let Some(prefix) = buf.first_chunk::<4>() {
                let len = u32::from_be_bytes(*prefix) as usize;
                if buf.len() < 4 + len {
                    buf.reserve(4 + len - buf.len());
                    break;
                }
                buf.advance(4);
                let frame: Bytes = buf.split_to(len).freeze();
                sink += frame.len();
                received += 1;
            }
        }
        std::hint::black_box(sink);
        std::io::Result::Ok(())
    };
    let (w, r) = tokio::join!(write, read);
    w?;
    r?;
    Ok(start.elapsed().as_secs_f64())
}

/// `samples` round trips of a lone 64 B frame through a plain TCP echo, in microseconds each.
pub async fn round_trips(samples: usize) -> std::io::Result<Vec<f64>> {
    let (mut client, mut server) = pair().await?;
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 68];
        while server.read_exact(&mut buf).await.is_ok() {
            if server.write_all(&buf).await.is_err() {
                return;
            }
        }
    });
    let mut frame = [1u8; 68];
    frame[..4].copy_from_slice(&64u32.to_be_bytes());
    let mut back = [0u8; 68];
    let mut rtts = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        client.write_all(&frame).await?;
        client.read_exact(&mut back).await?;
        rtts.push(start.elapsed().as_nanos() as f64 / 1e3);
    }
    drop(client);
    let _ = echo.await;
    Ok(rtts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_baseline_moves_every_frame() {
        let (mut client, mut server) = pair().await.unwrap();
        let seconds = throughput(&mut client, &mut server, 100, 1000)
            .await
            .unwrap();
        assert!(seconds > 0.0);
        let rtts = round_trips(10).await.unwrap();
        assert_eq!(rtts.len(), 10);
        assert!(rtts.iter().all(|&us| us > 0.0));
    }
}
