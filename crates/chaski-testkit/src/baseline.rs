//! The raw tokio TCP baseline: what the machine does with no Chaski at all, measured in the same
//! run as the layer under test so that the comparison survives a noisy, shared machine.
//!
//! * Throughput: length-prefixed frames written through a plain `BufWriter` in a spawned task (as
//!   a Chaski sender's writer is), a reader slicing them out as `Bytes` in the calling task (as a
//!   Chaski receiver does).
//! * Round trip: a lone 64 B frame (plus its 4-byte prefix) through a plain TCP echo.

use std::{io, time::Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, BufWriter},
    net::{TcpListener, TcpStream},
};

/// A connected pair of loopback TCP streams with `TCP_NODELAY` on, reused across runs.
#[derive(Debug)]
pub struct Pair {
    /// Lent to the writer task during a run.
    client: Option<TcpStream>,
    server: TcpStream,
}

/// Connects a [`Pair`] on loopback.
pub async fn pair() -> io::Result<Pair> {
    let (client, server) = streams().await?;
    Ok(Pair {
        client: Some(client),
        server,
    })
}

async fn streams() -> io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (client, server) = (client?, server?.0);
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    Ok((client, server))
}

impl Pair {
    /// Sends `n` frames of `payload` bytes through the pair; returns the seconds until the last
    /// one was sliced out on the receiving side.
    pub async fn throughput(&mut self, payload: usize, n: u64) -> io::Result<f64> {
        let mut client = self
            .client
            .take()
            .ok_or_else(|| io::Error::other("a previous run failed"))?;
        let start = Instant::now();
        let write = tokio::spawn(async move {
            let data = vec![0xa5u8; payload];
            let mut w = BufWriter::new(&mut client);
            for _ in 0..n {
                w.write_all(&(payload as u32).to_be_bytes()).await?;
                w.write_all(&data).await?;
            }
            w.flush().await?;
            io::Result::Ok(client)
        });
        let mut buf = BytesMut::with_capacity(64 << 10);
        let mut received = 0u64;
        let mut sink = 0usize;
        while received < n {
            if buf.capacity() - buf.len() < 16 << 10 {
                buf.reserve(64 << 10);
            }
            if self.server.read_buf(&mut buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
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
        let elapsed = start.elapsed().as_secs_f64();
        std::hint::black_box(sink);
        self.client = Some(write.await.map_err(io::Error::other)??);
        Ok(elapsed)
    }
}

/// `samples` round trips of a lone 64 B frame through a plain TCP echo, in microseconds each.
pub async fn round_trips(samples: usize) -> io::Result<Vec<f64>> {
    let (mut client, mut server) = streams().await?;
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_baseline_moves_every_frame() {
        let mut pair = pair().await.unwrap();
        for payload in [0, 100, 70_000] {
            assert!(pair.throughput(payload, 100).await.unwrap() > 0.0);
        }
        let rtts = round_trips(10).await.unwrap();
        assert_eq!(rtts.len(), 10);
        assert!(rtts.iter().all(|&us| us > 0.0));
    }
}
