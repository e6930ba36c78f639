//! `cargo xtask bench transport`: one Chaski connection on loopback against a raw tokio TCP
//! baseline measured in the same run.
//!
//! * Throughput, for payloads of 8 B, 64 B, 1 KiB, 64 KiB and 1 MiB: frames per second and Gbit/s
//!   of payload. Chaski sends `Publish` frames with `Connection::send` from a spawned task and the
//!   receiver takes them from `Events`, decoded; the baseline writes length-prefixed frames of the
//!   same payload through a plain `BufWriter` from a spawned task and the receiver parses the
//!   prefixes, slicing each frame out as `Bytes`. In both, the receiving loop runs in the
//!   benchmark's main task.
//! * Round trip of a lone 64 B frame (p50, p99): Chaski echoes the `Publish` back through its
//!   endpoint; the baseline is a plain echo of the same bytes.
//!
//! Every figure is the median of 7 runs (0.2-1 s each); the two are measured alternately in one
//! process on one tokio runtime with 2 worker threads, every task on a worker thread. `CHASKI_BENCH_QUICK=1` runs a short smoke
//! test instead; `CHASKI_BENCH_RUNTIME=current_thread` measures on a single-threaded runtime;
//! `CHASKI_BENCH_PAYLOAD=64` measures only that payload size.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use chaski_testkit::{
    baseline,
    bench::{Summary, median, quick, si, size, verdict},
};
use chaski_transport::{Config, Connection, Endpoint, Event, Events};
use chaski_wire::{Capabilities, Frame, Hello, Message, NodeId, Topic};

const SIZES: [usize; 5] = [8, 64, 1 << 10, 64 << 10, 1 << 20];
const RUNS: usize = 7;

fn hello(name: &str) -> Hello {
    Hello {
        node_id: NodeId::random(),
        name: name.to_owned(),
        listen_addrs: Vec::new(),
        subscriptions: Vec::new(),
        capabilities: Capabilities::NONE,
        auth: None,
        timestamp_micros: 0,
        network_id: String::new(),
        incarnation: 0,
    }
}

fn message(payload: Bytes) -> Message {
    Message {
        topic: Topic::from_static("bench"),
        payload,
        publisher: NodeId::from_u128(1),
        sequence: 1,
        incarnation: 0,
        timestamp_micros: 0,
        hop_limit: 1,
        hops: 0,
        headers: Vec::new(),
    }
}

/// Frames per run for a payload size: about 0.3-1 s of work.
fn frames_for(payload: usize) -> u64 {
    let n = match payload {
        0..=64 => 2_000_000,
        65..=1024 => 500_000,
        1025..=65536 => 20_000,
        _ => 1_500,
    };
    if quick() { n / 50 } else { n }
}

struct Pair {
    sender: Connection,
    receiver: Events,
    // Kept alive for the duration of the benchmark.
    _endpoints: (Endpoint, Endpoint, Events),
}

async fn chaski_pair() -> Pair {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let config = Config::builder()
        .udp(false)
        .max_frame_len(4 << 20)
        .build()
        .unwrap();
    let (server, mut server_events) = Endpoint::bind(any, hello("server"), config.clone())
        .await
        .unwrap();
    let (client, client_events) = Endpoint::bind(any, hello("client"), config).await.unwrap();
    let sender = client.connect(server.local_addr()).await.unwrap();
    let Some(Event::Connected(_)) = server_events.recv().await else {
        panic!("no connection")
    };
    Pair {
        sender,
        receiver: server_events,
        _endpoints: (server, client, client_events),
    }
}

/// Sends `n` frames of `payload` bytes over Chaski; returns the seconds until all arrived.
async fn chaski_throughput(pair: &mut Pair, payload: usize, n: u64) -> f64 {
    let payload = Bytes::from(vec![0xa5u8; payload]);
    let sender = pair.sender.clone();
    let start = Instant::now();
    let send = tokio::spawn(async move {
        let message = message(payload);
        for _ in 0..n {
            sender
                .send(Frame::Publish(message.clone()))
                .await
                .expect("send");
        }
    });
    let mut received = 0u64;
    let mut batch = Vec::with_capacity(64);
    while received < n {
        pair.receiver.recv_many(&mut batch, 64).await;
        for event in batch.drain(..) {
            match event {
                Event::Frames { frames, .. } => received += frames.len() as u64,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    send.await.unwrap();
    elapsed
}

/// Round trips of a lone 64 B frame through Chaski: the server echoes every frame.
async fn chaski_rtt(samples: usize) -> Vec<f64> {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let config = Config::builder().udp(false).build().unwrap();
    let (server, mut server_events) = Endpoint::bind(any, hello("echo"), config.clone())
        .await
        .unwrap();
    let (client, mut client_events) = Endpoint::bind(any, hello("client"), config).await.unwrap();
    let echo = tokio::spawn(async move {
        let mut connection = None;
        while let Some(event) = server_events.recv().await {
            match event {
                Event::Connected(c) => connection = Some(c),
                Event::Frames { frames, .. } => {
                    let c = connection.as_ref().expect("connected first");
                    for frame in frames {
                        if c.send(frame).await.is_err() {
                            return;
                        }
                    }
                }
                _ => return,
            }
        }
    });
    let connection = client.connect(server.local_addr()).await.unwrap();
    let Some(Event::Connected(_)) = client_events.recv().await else {
        panic!("no connection")
    };
    let frame = Frame::Publish(message(Bytes::from(vec![1u8; 64])));
    let mut rtts = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        connection.send(frame.clone()).await.unwrap();
        match client_events.recv().await {
            Some(Event::Frames { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
        rtts.push(start.elapsed().as_nanos() as f64 / 1e3);
    }
    connection
        .close(chaski_wire::GoodbyeReason::NotNeeded, "")
        .await;
    drop((server, client));
    let _ = tokio::time::timeout(Duration::from_secs(2), echo).await;
    rtts
}

fn main() {
    let runtime = if std::env::var("CHASKI_BENCH_RUNTIME").is_ok_and(|r| r == "current_thread") {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    // Everything runs on the runtime's worker threads (none on the main thread), as a node does.
    runtime.block_on(async { tokio::spawn(measure()).await.unwrap() });
}

async fn measure() {
    {
        println!(
            "transport benchmark: one connection on loopback, median of {RUNS} runs{}",
            if quick() {
                " (QUICK: smoke run, not a measurement)"
            } else {
                ""
            }
        );
        println!();
        println!(
            "{:>8} | {:>14} {:>10} | {:>14} {:>10} | {:>7}",
            "payload", "chaski fr/s", "Gbit/s", "raw fr/s", "Gbit/s", "ratio"
        );
        let mut ratios = Vec::new();
        let mut chaski = chaski_pair().await;
        let mut raw = baseline::pair().await.expect("baseline pair");
        for payload in SIZES {
            if std::env::var("CHASKI_BENCH_PAYLOAD").is_ok_and(|o| o != payload.to_string()) {
                continue;
            }
            let n = frames_for(payload);
            let mut ours = Vec::new();
            let mut theirs = Vec::new();
            for _ in 0..RUNS {
                ours.push(chaski_throughput(&mut chaski, payload, n).await);
                theirs.push(raw.throughput(payload, n).await.expect("baseline"));
            }
            let ours = n as f64 / median(ours);
            let theirs = n as f64 / median(theirs);
            let gbit = |rate: f64| rate * payload as f64 * 8.0 / 1e9;
            println!(
                "{:>8} | {:>14} {:>10.2} | {:>14} {:>10.2} | {:>6.0}%",
                size(payload),
                si(ours),
                gbit(ours),
                si(theirs),
                gbit(theirs),
                100.0 * ours / theirs
            );
            ratios.push((payload, ours / theirs));
        }

        let samples = if quick() { 200 } else { 4_000 };
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..RUNS {
            ours.extend(chaski_rtt(samples).await);
            theirs.extend(
                baseline::round_trips(samples)
                    .await
                    .expect("baseline round trips"),
            );
        }
        let ours = Summary::of(&mut ours).unwrap();
        let theirs = Summary::of(&mut theirs).unwrap();
        println!();
        println!(
            "round trip of a lone 64 B frame: chaski p50 {:.1} us, p99 {:.1} us; raw echo p50 {:.1} us, p99 {:.1} us; p50 ratio {:.2}x",
            ours.median,
            ours.p99,
            theirs.median,
            theirs.p99,
            ours.median / theirs.median
        );

        println!();
        println!("targets (ratios to the raw baseline):");
        let ratio = |p: usize| ratios.iter().find(|r| r.0 == p).map_or(f64::NAN, |r| r.1);
        let r64 = ratio(64);
        let r64k = ratio(64 << 10);
        let rtt = ours.median / theirs.median;
        println!(
            "  64 B frames   >= 30% of raw: {:>5.0}%  {}",
            100.0 * r64,
            verdict(r64 >= 0.3)
        );
        println!(
            "  64 KiB frames >= 70% of raw: {:>5.0}%  {}",
            100.0 * r64k,
            verdict(r64k >= 0.7)
        );
        println!(
            "  round trip p50 <= 1.3x raw:  {rtt:>5.2}x  {}",
            verdict(rtt <= 1.3)
        );
    }
}
