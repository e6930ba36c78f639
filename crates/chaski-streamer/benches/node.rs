//! `cargo xtask bench node`: two nodes on loopback, one publisher and one subscriber reading from
//! its stream, beside the raw tokio TCP baseline measured in the same run.
//!
//! * Messages per second for payloads of 8 B, 64 B, 1 KiB, 64 KiB and 1 MiB, with both nodes in
//!   this process, then with the subscriber in a second process.
//! * The publish-to-receive round trip of a lone 64 B message (p50, p99): the subscriber answers
//!   every message on a second topic, the publisher waits for the answer.
//!
//! Each figure is the median of several runs. Targets, as ratios to the baseline on a 2-core
//! machine: 64 B at least 12%, 1 KiB at least 30%, 64 KiB at least 60%, round trip p50 at most
//! 1.5x the baseline's. `CHASKI_BENCH_QUICK=1` runs everything briefly (a smoke test);
//! `CHASKI_BENCH_SIZES=64,1024` measures only those payload sizes (for profiling).

#![allow(missing_docs)]

use std::{process::Stdio, time::Instant};

use bytes::Bytes;
use chaski_streamer::{Node, StreamOptions};
use chaski_testkit::{
    baseline,
    bench::{Summary, median, quick, si, size, verdict},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::Command,
};

const SIZES: [usize; 5] = [8, 64, 1 << 10, 64 << 10, 1 << 20];
const TARGETS: [(usize, f64); 3] = [(64, 0.12), (1 << 10, 0.30), (64 << 10, 0.60)];
const RTT_TARGET: f64 = 1.5;
/// Set in the child process of the two-process variant: the publisher's address.
const CHILD_ENV: &str = "CHASKI_BENCH_NODE_CHILD";

/// The payload sizes to measure: `CHASKI_BENCH_SIZES` (comma-separated bytes) or [`SIZES`].
fn sizes() -> Vec<usize> {
    match std::env::var("CHASKI_BENCH_SIZES") {
        Ok(list) => list
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect(),
        Err(_) => SIZES.to_vec(),
    }
}

fn runs() -> usize {
    if quick() { 1 } else { 5 }
}

/// Messages per run for a payload size: about 0.2-1 s of work.
fn messages_for(payload: usize) -> u64 {
    let n = match payload {
        0..=64 => 500_000,
        65..=1024 => 200_000,
        1025..=65536 => 10_000,
        _ => 400,
    };
    if quick() { n / 50 } else { n }
}

fn node(name: &str, topics: &[&str]) -> chaski_streamer::NodeBuilder {
    Node::builder()
        .name(name)
        .lan_discovery(false)
        .subscribe(topics.iter().copied())
}

/// Waits until `node` is paired with a peer on `topic`.
async fn paired(node: &Node, topic: &str) {
    while !node
        .peers()
        .iter()
        .any(|p| p.paired_topics.iter().any(|t| t == topic))
    {
        node.peers_changed().await.expect("the node stopped");
    }
}

/// Publishes `n` messages of `payload` bytes and waits until the subscriber's stream has all of
/// them; returns the seconds.
async fn node_throughput(publisher: &Node, subscriber: &Node, payload: usize, n: u64) -> f64 {
    let mut stream = subscriber.stream_with(StreamOptions::new().capacity(16 * 1024));
    let data = Bytes::from(vec![0xa5u8; payload]);
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        for _ in 0..n {
            std::hint::black_box(stream.recv().await.expect("stream ended"));
        }
    });
    for _ in 0..n {
        publisher
            .publish("bench", data.clone())
            .await
            .expect("publish");
    }
    reader.await.expect("reader");
    start.elapsed().as_secs_f64()
}

/// `samples` publish-to-receive round trips of a lone 64 B message, in microseconds.
async fn node_round_trips(publisher: &Node, subscriber: &Node, samples: usize) -> Vec<f64> {
    let mut answers = publisher.stream_with(StreamOptions::new().topics(["pong".parse().unwrap()]));
    let mut questions =
        subscriber.stream_with(StreamOptions::new().topics(["ping".parse().unwrap()]));
    let echo_node = subscriber.clone();
    let echo = tokio::spawn(async move {
        for _ in 0..samples {
            let message = questions.recv().await.expect("stream ended");
            echo_node
                .publish("pong", message.payload)
                .await
                .expect("publish");
        }
    });
    let data = Bytes::from(vec![1u8; 64]);
    let mut rtts = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        publisher
            .publish("ping", data.clone())
            .await
            .expect("publish");
        answers.recv().await.expect("stream ended");
        rtts.push(start.elapsed().as_nanos() as f64 / 1e3);
    }
    echo.await.expect("echo");
    rtts
}

/// The child of the two-process variant: a subscriber that reads `n` messages per size and says
/// `done` after each batch.
async fn child(publisher: String) {
    let node = node("bench-subscriber", &["bench"])
        .seeds([publisher])
        .build()
        .await
        .expect("child node");
    paired(&node, "bench").await;
    let mut stream = node.stream_with(StreamOptions::new().capacity(16 * 1024));
    println!("ready");
    for payload in sizes() {
        for _ in 0..runs() {
            for _ in 0..messages_for(payload) {
                std::hint::black_box(stream.recv().await.expect("stream ended"));
            }
            println!("done");
        }
    }
    node.shutdown().await.expect("shutdown");
}

async fn two_processes() -> Vec<(usize, f64)> {
    let publisher = node("bench-publisher", &["bench"])
        .build()
        .await
        .expect("publisher");
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .env(CHILD_ENV, publisher.local_addr().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the subscriber process");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    assert_eq!(
        lines.next_line().await.expect("child output").as_deref(),
        Some("ready")
    );
    paired(&publisher, "bench").await;
    let mut rates = Vec::new();
    for payload in sizes() {
        let n = messages_for(payload);
        let data = Bytes::from(vec![0xa5u8; payload]);
        let mut times = Vec::new();
        for _ in 0..runs() {
            let start = Instant::now();
            for _ in 0..n {
                publisher
                    .publish("bench", data.clone())
                    .await
                    .expect("publish");
            }
            assert_eq!(
                lines.next_line().await.expect("child output").as_deref(),
                Some("done")
            );
            times.push(start.elapsed().as_secs_f64());
        }
        rates.push((payload, n as f64 / median(times)));
    }
    let _ = child.stdin.take().expect("piped").shutdown().await;
    let _ = child.wait().await;
    publisher.shutdown().await.expect("shutdown");
    rates
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if let Ok(publisher) = std::env::var(CHILD_ENV) {
        runtime.block_on(child(publisher));
        return;
    }
    runtime.block_on(async {
        let publisher = node("bench-publisher", &["bench", "pong"]).build().await.expect("publisher");
        let subscriber = node("bench-subscriber", &["bench", "ping"])
            .seeds([publisher.local_addr().to_string()])
            .build()
            .await
            .expect("subscriber");
        paired(&publisher, "bench").await;
        paired(&subscriber, "bench").await;

        println!("chaski node: one publisher, one subscriber reading its stream, loopback (median of {} runs)", runs());
        println!("{:>8}  {:>14} {:>10}  {:>14} {:>10}  {:>7}", "payload", "chaski msg/s", "Gbit/s", "raw TCP msg/s", "Gbit/s", "ratio");
        let mut ratios = Vec::new();
        let mut raw_pair = baseline::pair().await.expect("baseline pair");
        for payload in sizes() {
            let n = messages_for(payload);
            let mut ours = Vec::new();
            let mut raw = Vec::new();
            for _ in 0..runs() {
                ours.push(node_throughput(&publisher, &subscriber, payload, n).await);
                raw.push(raw_pair.throughput(payload, n).await.expect("baseline"));
            }
            let (ours, raw) = (n as f64 / median(ours), n as f64 / median(raw));
            let gbit = |rate: f64| rate * payload as f64 * 8.0 / 1e9;
            println!(
                "{:>8}  {:>13}  {:>10.2}  {:>13}  {:>10.2}  {:>6.1}%",
                size(payload),
                si(ours),
                gbit(ours),
                si(raw),
                gbit(raw),
                100.0 * ours / raw
            );
            ratios.push((payload, ours, raw));
        }

        let samples = if quick() { 200 } else { 5_000 };
        let mut ours = node_round_trips(&publisher, &subscriber, samples).await;
        let mut raw = baseline::round_trips(samples).await.expect("baseline round trips");
        let ours = Summary::of(&mut ours).expect("samples");
        let raw = Summary::of(&mut raw).expect("samples");
        println!(
            "round trip of a lone 64 B message: chaski p50 {:.1} us, p99 {:.1} us; raw TCP echo p50 {:.1} us, p99 {:.1} us; ratio p50 {:.2}x",
            ours.median,
            ours.p99,
            raw.median,
            raw.p99,
            ours.median / raw.median
        );
        publisher.shutdown().await.expect("shutdown");
        subscriber.shutdown().await.expect("shutdown");

        println!("\ntwo processes (subscriber in a child process):");
        let rates = two_processes().await;
        for ((payload, rate), (_, _, raw)) in rates.iter().zip(&ratios) {
            println!("{:>8}  {:>13} msg/s  {:>6.1}% of the in-process baseline", size(*payload), si(*rate), 100.0 * rate / raw);
        }

        println!("\ntargets (ratios to the raw TCP baseline of this run):");
        for (payload, target) in TARGETS {
            let Some((_, ours, raw)) = ratios.iter().find(|(p, ..)| *p == payload) else { continue };
            let ratio = ours / raw;
            println!("  {:>8} messages: {:>5.1}% (target >= {:.0}%): {}", size(payload), 100.0 * ratio, 100.0 * target, verdict(ratio >= target));
        }
        let ratio = ours.median / raw.median;
        println!("  round trip p50: {ratio:.2}x (target <= {RTT_TARGET}x): {}", verdict(ratio <= RTT_TARGET));
    });
}
