//! `chaski bench` (and `cargo xtask bench node`, which runs it): the node benchmark. Two nodes
//! on loopback, one publisher and one subscriber reading its stream, beside the raw tokio TCP
//! baseline measured in the same run (`chaski_testkit::baseline`).
//!
//! * Messages per second for payloads of 8 B, 64 B, 1 KiB, 64 KiB and 1 MiB (or `--sizes`),
//!   with both nodes in this process, then with the subscriber in a child process (`--processes`).
//!   The publisher publishes from a spawned task, as the baseline writes from one.
//! * The publish-to-receive round trip of a lone 64 B message (p50, p99): the subscriber answers
//!   every message on a second topic, the publisher waits for the answer.
//!
//! Each figure is the median of `--runs` runs. Targets, as ratios to the baseline on a 2-core
//! machine: 64 B at least 12%, 1 KiB at least 30%, 64 KiB at least 60%, round trip p50 at most
//! 1.5x the baseline's. `--quick` (or `CHASKI_BENCH_QUICK=1`) runs everything briefly.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use chaski::{Node, NodeBuilder, StreamOptions};
use chaski_testkit::{
    baseline,
    bench::{Summary, si, size},
};
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::Command,
};

use crate::cli::{BenchCommand, Processes};

const TARGETS: [(usize, f64); 3] = [(64, 0.12), (1 << 10, 0.30), (64 << 10, 0.60)];
const RTT_TARGET: f64 = 1.5;
/// How long any one step may wait for the other side before the benchmark gives up.
const STEP_LIMIT: Duration = Duration::from_secs(120);

/// What to measure.
#[derive(Debug, Clone)]
struct Plan {
    sizes: Vec<usize>,
    runs: usize,
    quick: bool,
}

impl Plan {
    /// Messages per run for a payload size: about 0.2-1 s of work (a fiftieth when quick).
    fn messages_for(&self, payload: usize) -> u64 {
        let n = match payload {
            0..=64 => 500_000,
            65..=1024 => 200_000,
            1025..=65536 => 10_000,
            _ => 400,
        };
        if self.quick { n / 50 } else { n }
    }

    /// The arguments that give a child process the same plan.
    fn child_args(&self, publisher: &str) -> Vec<String> {
        let sizes: Vec<String> = self.sizes.iter().map(ToString::to_string).collect();
        let mut args = vec![
            "--quiet".to_owned(),
            "bench".to_owned(),
            "--child".to_owned(),
            publisher.to_owned(),
            "--sizes".to_owned(),
            sizes.join(","),
            "--runs".to_owned(),
            self.runs.to_string(),
        ];
        if self.quick {
            args.push("--quick".to_owned());
        }
        args
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    Summary::of(&mut values).map_or(f64::NAN, |s| s.median)
}

fn node(name: &str, topics: &[&str]) -> NodeBuilder {
    Node::builder()
        .name(name)
        .lan_discovery(false)
        .subscribe(topics.iter().copied())
}

/// Waits until `node` is paired with a peer on `topic`.
async fn paired(node: &Node, topic: &str) -> Result<()> {
    let wait = node.wait_peers(|peers| {
        peers
            .iter()
            .any(|p| p.paired_topics.iter().any(|t| t == topic))
    });
    tokio::time::timeout(STEP_LIMIT, wait)
        .await
        .context("the bench nodes did not pair")??;
    Ok(())
}

/// Publishes `n` copies of `data` on "bench" from a spawned task, as the baseline writes its
/// frames from a spawned task: both then run on the runtime's two worker threads, and neither
/// pays for a third busy thread (the caller's) on a 2-core machine.
async fn publish_many(publisher: &Node, data: Bytes, n: u64) -> Result<()> {
    let publisher = publisher.clone();
    tokio::spawn(async move {
        for _ in 0..n {
            publisher.publish("bench", data.clone()).await?;
        }
        Ok::<_, chaski::Error>(())
    })
    .await
    .context("the publishing task failed")??;
    Ok(())
}

/// Publishes `n` messages of `payload` bytes and waits until the subscriber's stream has all of
/// them; returns the seconds.
async fn node_throughput(
    publisher: &Node,
    subscriber: &Node,
    payload: usize,
    n: u64,
) -> Result<f64> {
    let mut stream = subscriber.stream_with(StreamOptions::new().capacity(16 * 1024));
    let data = Bytes::from(vec![0xa5u8; payload]);
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        for _ in 0..n {
            std::hint::black_box(stream.recv().await.context("the stream ended")?);
        }
        Ok::<_, anyhow::Error>(())
    });
    publish_many(publisher, data, n).await?;
    tokio::time::timeout(STEP_LIMIT, reader)
        .await
        .context("the subscriber did not receive every message")???;
    Ok(start.elapsed().as_secs_f64())
}

/// `samples` publish-to-receive round trips of a lone 64 B message, in microseconds.
async fn node_round_trips(publisher: &Node, subscriber: &Node, samples: usize) -> Result<Vec<f64>> {
    let mut answers =
        publisher.stream_with(StreamOptions::new().topics([chaski::Topic::from_static("pong")]));
    let mut questions =
        subscriber.stream_with(StreamOptions::new().topics([chaski::Topic::from_static("ping")]));
    let echo_node = subscriber.clone();
    let echo = tokio::spawn(async move {
        for _ in 0..samples {
            let Some(message) = questions.recv().await else {
                return;
            };
            if echo_node.publish("pong", message.payload).await.is_err() {
                return;
            }
        }
    });
    let data = Bytes::from(vec![1u8; 64]);
    let mut rtts = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        publisher.publish("ping", data.clone()).await?;
        tokio::time::timeout(STEP_LIMIT, answers.recv())
            .await
            .context("no answer")?
            .context("the stream ended")?;
        rtts.push(start.elapsed().as_nanos() as f64 / 1e3);
    }
    echo.await?;
    Ok(rtts)
}

/// The child of the two-process variant: a subscriber that reads the messages of every run and
/// says `done` after each.
async fn child(publisher: String, plan: Plan) -> Result<u8> {
    let node = node("bench-subscriber", &["bench"])
        .seeds([publisher])
        .build()
        .await?;
    paired(&node, "bench").await?;
    let mut stream = node.stream_with(StreamOptions::new().capacity(16 * 1024));
    println!("ready");
    for &payload in &plan.sizes {
        for _ in 0..plan.runs {
            for _ in 0..plan.messages_for(payload) {
                std::hint::black_box(stream.recv().await.context("the stream ended")?);
            }
            println!("done");
        }
    }
    node.shutdown().await?;
    Ok(0)
}

/// Reads the child's next line and checks that it is `word`.
async fn expect(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    word: &str,
) -> Result<()> {
    let line = tokio::time::timeout(STEP_LIMIT, lines.next_line())
        .await
        .context("the subscriber process is silent")??;
    if line.as_deref() != Some(word) {
        bail!("the subscriber process said {line:?}, expected {word:?}");
    }
    Ok(())
}

/// Messages per second for each size with the subscriber in a child process.
async fn two_processes(plan: &Plan, progress: &impl Fn(String)) -> Result<Vec<(usize, f64)>> {
    let publisher = node("bench-publisher", &["bench"]).build().await?;
    let exe = std::env::current_exe().context("cannot find this program")?;
    let mut child = Command::new(exe)
        .args(plan.child_args(&publisher.local_addr().to_string()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the subscriber process")?;
    let mut lines = BufReader::new(child.stdout.take().context("no child output")?).lines();
    expect(&mut lines, "ready").await?;
    paired(&publisher, "bench").await?;
    let mut rates = Vec::new();
    for &payload in &plan.sizes {
        progress(format!("two processes: {}", size(payload)));
        let n = plan.messages_for(payload);
        let data = Bytes::from(vec![0xa5u8; payload]);
        let mut times = Vec::new();
        for _ in 0..plan.runs {
            let start = Instant::now();
            publish_many(&publisher, data.clone(), n).await?;
            expect(&mut lines, "done").await?;
            times.push(start.elapsed().as_secs_f64());
        }
        rates.push((payload, n as f64 / median(times)));
    }
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.shutdown().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    publisher.shutdown().await?;
    Ok(rates)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// `chaski bench`.
pub(crate) async fn run(cmd: BenchCommand) -> Result<u8> {
    let quick = cmd.quick || std::env::var("CHASKI_BENCH_QUICK").is_ok_and(|v| v == "1");
    let plan = Plan {
        sizes: cmd.sizes.clone(),
        runs: cmd.runs.unwrap_or(if quick { 1 } else { 5 }),
        quick,
    };
    if plan.sizes.is_empty() || plan.runs == 0 {
        return Err(crate::coded(
            crate::exit::USAGE,
            "--sizes and --runs must not be empty or zero",
        ));
    }
    if let Some(publisher) = cmd.child {
        return child(publisher, plan).await;
    }
    let json = cmd.json;
    let progress = |what: String| eprintln!("bench: {what}");
    let say = |line: String| {
        if !json {
            println!("{line}");
        }
    };
    let emit = |object: serde_json::Value| {
        if json {
            println!("{object}");
        }
    };

    // The in-process baseline of every size: always measured, as the reference of both variants.
    let mut ratios = Vec::new();
    let in_process = matches!(cmd.processes, Processes::One | Processes::Both);
    let (publisher, subscriber) = if in_process {
        let publisher = node("bench-publisher", &["bench", "pong"]).build().await?;
        let subscriber = node("bench-subscriber", &["bench", "ping"])
            .seeds([publisher.local_addr().to_string()])
            .build()
            .await?;
        paired(&publisher, "bench").await?;
        paired(&subscriber, "bench").await?;
        (Some(publisher), Some(subscriber))
    } else {
        (None, None)
    };
    say(format!(
        "chaski node: one publisher, one subscriber reading its stream, loopback (median of {} runs)",
        plan.runs
    ));
    say(format!(
        "{:>8}  {:>14} {:>10}  {:>14} {:>10}  {:>7}",
        "payload", "chaski msg/s", "Gbit/s", "raw TCP msg/s", "Gbit/s", "ratio"
    ));
    let mut raw_pair = baseline::pair()
        .await
        .context("the baseline's connection")?;
    for &payload in &plan.sizes {
        progress(format!("one process: {}", size(payload)));
        let n = plan.messages_for(payload);
        let mut ours = Vec::new();
        let mut raw = Vec::new();
        for _ in 0..plan.runs {
            if let (Some(p), Some(s)) = (&publisher, &subscriber) {
                ours.push(node_throughput(p, s, payload, n).await?);
            }
            raw.push(
                raw_pair
                    .throughput(payload, n)
                    .await
                    .context("the baseline")?,
            );
        }
        let raw = n as f64 / median(raw);
        let ours = (!ours.is_empty()).then(|| n as f64 / median(ours));
        ratios.push((payload, ours, raw));
        let Some(ours) = ours else { continue };
        let gbit = |rate: f64| rate * payload as f64 * 8.0 / 1e9;
        say(format!(
            "{:>8}  {:>13}  {:>10.2}  {:>13}  {:>10.2}  {:>6.1}%",
            size(payload),
            si(ours),
            gbit(ours),
            si(raw),
            gbit(raw),
            100.0 * ours / raw
        ));
        emit(json!({
            "measurement": "throughput", "processes": 1, "payload_bytes": payload,
            "messages": n, "runs": plan.runs, "chaski_msgs_per_s": ours,
            "baseline_msgs_per_s": raw, "ratio": ours / raw,
        }));
    }

    let mut rtt_ratio = None;
    if let (Some(publisher), Some(subscriber)) = (&publisher, &subscriber) {
        progress("round trips".to_owned());
        let samples = if plan.quick { 200 } else { 5_000 };
        let mut ours = node_round_trips(publisher, subscriber, samples).await?;
        let mut raw = baseline::round_trips(samples)
            .await
            .context("the baseline's round trips")?;
        let ours = Summary::of(&mut ours).context("no samples")?;
        let raw = Summary::of(&mut raw).context("no samples")?;
        say(format!(
            "round trip of a lone 64 B message: chaski p50 {:.1} us, p99 {:.1} us; raw TCP echo p50 {:.1} us, p99 {:.1} us; ratio p50 {:.2}x",
            ours.median,
            ours.p99,
            raw.median,
            raw.p99,
            ours.median / raw.median
        ));
        emit(json!({
            "measurement": "round_trip", "processes": 1, "payload_bytes": 64, "samples": samples,
            "chaski_p50_us": ours.median, "chaski_p99_us": ours.p99,
            "baseline_p50_us": raw.median, "baseline_p99_us": raw.p99,
            "ratio": ours.median / raw.median,
        }));
        rtt_ratio = Some(ours.median / raw.median);
        publisher.shutdown().await?;
        subscriber.shutdown().await?;
    }

    if matches!(cmd.processes, Processes::Two | Processes::Both) {
        say("\ntwo processes (subscriber in a child process):".to_owned());
        for ((payload, rate), (_, _, raw)) in
            two_processes(&plan, &progress).await?.iter().zip(&ratios)
        {
            say(format!(
                "{:>8}  {:>13} msg/s  {:>6.1}% of the in-process baseline",
                size(*payload),
                si(*rate),
                100.0 * rate / raw
            ));
            emit(json!({
                "measurement": "throughput", "processes": 2, "payload_bytes": payload,
                "messages": plan.messages_for(*payload), "runs": plan.runs,
                "chaski_msgs_per_s": rate, "baseline_msgs_per_s": raw, "ratio": rate / raw,
            }));
        }
    }

    say("\ntargets (ratios to the raw TCP baseline of this run):".to_owned());
    for (payload, target) in TARGETS {
        let Some((_, Some(ours), raw)) = ratios.iter().find(|(p, ..)| *p == payload) else {
            continue;
        };
        let ratio = ours / raw;
        say(format!(
            "  {:>8} messages: {:>5.1}% (target >= {:.0}%): {}",
            size(payload),
            100.0 * ratio,
            100.0 * target,
            verdict(ratio >= target)
        ));
    }
    if let Some(ratio) = rtt_ratio {
        say(format!(
            "  round trip p50: {ratio:.2}x (target <= {RTT_TARGET}x): {}",
            verdict(ratio <= RTT_TARGET)
        ));
    }
    Ok(0)
}
