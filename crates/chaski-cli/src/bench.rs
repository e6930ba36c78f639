//! `chaski bench` (and `cargo xtask bench node`, which runs it): the node benchmark. Two nodes
//! on loopback, one publisher and one subscriber reading its stream, beside the raw tokio TCP
//! baseline measured in the same run (`chaski_testkit::baseline`).
//!
//! * Messages per second for payloads of 8 B, 64 B, 1 KiB, 64 KiB and 1 MiB (or `--sizes`),
//!   with both nodes in this process, then with the subscriber in a child process (`--processes`).
//!   The publisher publishes from a spawned task, as the baseline writes from one.
//! * The publish-to-receive round trip of a lone 64 B message (p50, p99): the subscriber answers
//!   every message on a second topic, the publisher waits for the answer.
//! * Fan-out: one publisher, ten subscribers all linked to each other, 64 B messages: the
//!   messages delivered per second, all subscribers together (the node's default security).
//!
//! * With `--security both` (the default), each figure for plain TCP and for TLS side by side,
//!   the runs interleaved; then what TLS costs: the time to set up a TLS connection on loopback
//!   and the memory an idle one holds.
//!
//! Each figure is the median of `--runs` runs. Targets, as ratios to the baseline on a 2-core
//! machine (for the node's default, TLS): 64 B at least 12%, 1 KiB at least 30%, 64 KiB at
//! least 60%, round trip p50 at most 1.5x the baseline's; TLS against plain TCP: 64 B at least
//! 75%, 64 KiB at least 50%, round trip p50 at most 1.2x, a connection set up in under 3 ms, an
//! idle connection at most 64 KiB. `--quick` (or `CHASKI_BENCH_QUICK=1`) runs everything
//! briefly.

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

use crate::cli::{BenchCommand, BenchSecurity, Processes};

const TARGETS: [(usize, f64); 3] = [(64, 0.12), (1 << 10, 0.30), (64 << 10, 0.60)];
const RTT_TARGET: f64 = 1.5;
/// TLS against plain TCP: throughput ratios by payload, and the round trip's.
const TLS_TARGETS: [(usize, f64); 2] = [(64, 0.75), (64 << 10, 0.50)];
const TLS_RTT_TARGET: f64 = 1.2;
const TLS_SETUP_TARGET_MS: f64 = 3.0;
const TLS_IDLE_TARGET_BYTES: f64 = 64.0 * 1024.0;
/// How long any one step may wait for the other side before the benchmark gives up.
const STEP_LIMIT: Duration = Duration::from_secs(120);
/// How long the subscribers of the fan-out measurement may take for all their messages (a
/// second or so when all is well).
const FAN_OUT_LIMIT: Duration = Duration::from_secs(30);

/// What to measure.
#[derive(Debug, Clone)]
struct Plan {
    sizes: Vec<usize>,
    runs: usize,
    quick: bool,
}

/// A connection security the benchmark measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Plaintext,
    Tls,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Plaintext => "plain",
            Variant::Tls => "TLS",
        }
    }

    fn plaintext(self) -> bool {
        self == Variant::Plaintext
    }
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
    fn child_args(&self, publisher: &str, variant: Variant) -> Vec<String> {
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
        if variant.plaintext() {
            args.push("--child-plaintext".to_owned());
        }
        args
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    Summary::of(&mut values).map_or(f64::NAN, |s| s.median)
}

fn node(name: &str, topics: &[&str], variant: Variant) -> NodeBuilder {
    Node::builder()
        .name(name)
        .lan_discovery(false)
        .insecure_plaintext(variant.plaintext())
        .subscribe(topics.iter().copied())
}

/// A publisher and a subscriber in this process, paired.
async fn pair(variant: Variant) -> Result<(Node, Node)> {
    let publisher = node("bench-publisher", &["bench", "pong"], variant)
        .build()
        .await?;
    let subscriber = node("bench-subscriber", &["bench", "ping"], variant)
        .seeds([publisher.local_addr().to_string()])
        .build()
        .await?;
    paired(&publisher, "bench").await?;
    paired(&subscriber, "bench").await?;
    Ok((publisher, subscriber))
}

/// What TLS costs beyond the bytes: the median time to set up a connection on loopback (TCP,
/// TLS and the hello), in milliseconds, and the memory an idle connection holds (both ends,
/// the process's resident memory over `idle` connections), in bytes.
async fn tls_costs(quick: bool) -> Result<(f64, f64)> {
    use chaski::{
        transport::{Config, Endpoint, Security},
        wire::{Capabilities, Hello},
    };
    let endpoint = |name: &str| {
        let name = name.to_owned();
        async move {
            let identity = chaski::Identity::generate()?;
            let config = Config::builder()
                .udp(false)
                .max_outbound(4096)
                .max_inbound(4096)
                .max_inbound_per_ip(4096)
                .security(Security::tls(&identity)?)
                .build()?;
            let hello = Hello {
                node_id: identity.node_id(),
                name,
                listen_addrs: Vec::new(),
                subscriptions: Vec::new(),
                capabilities: Capabilities::NONE,
                auth: None,
                timestamp_micros: 0,
                network_id: String::new(),
                incarnation: 0,
            };
            let bound = Endpoint::bind("127.0.0.1:0".parse()?, hello, config).await?;
            Ok::<_, anyhow::Error>(bound)
        }
    };
    let (server, mut server_events) = endpoint("bench-server").await?;
    // Accepted connections are announced on the server's events: keep reading them.
    let drain = tokio::spawn(async move { while server_events.recv().await.is_some() {} });
    let setups = if quick { 20 } else { 200 };
    let mut times = Vec::with_capacity(setups);
    for _ in 0..setups {
        let (client, _events) = endpoint("bench-client").await?;
        let start = Instant::now();
        let connection = client.connect(server.local_addr()).await?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        connection
            .close(chaski::wire::GoodbyeReason::Shutdown, "done")
            .await;
    }
    let idle = if quick { 50 } else { 500 };
    let before = chaski_testkit::bench::rss_bytes();
    let mut connections = Vec::with_capacity(idle);
    for _ in 0..idle {
        // One connection per node (the endpoint keeps one per peer): each from a node of its
        // own, whose endpoint is counted too, so the figure is an upper bound.
        let (other, events) = endpoint("bench-idle").await?;
        connections.push((other.connect(server.local_addr()).await?, other, events));
    }
    let after = chaski_testkit::bench::rss_bytes();
    drop(connections);
    drain.abort();
    let per_connection = after.saturating_sub(before) as f64 / idle as f64;
    Ok((median(times), per_connection))
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

/// Fan-out: one publisher and `subscribers` subscribers, every pair linked (the nodes' links
/// allow it), each subscriber reading its stream; `n` messages of 64 B. Returns the messages
/// delivered per second, all subscribers together, from the first publication to the last
/// delivery.
async fn fan_out(variant: Variant, subscribers: usize, n: u64) -> Result<f64> {
    let publisher = node("fan-pub", &["bench"], variant)
        .max_connections(subscribers)
        .build()
        .await?;
    let seed = publisher.local_addr().to_string();
    let mut nodes = Vec::new();
    for i in 0..subscribers {
        nodes.push(
            node(&format!("fan-sub{i}"), &["bench"], variant)
                .max_connections(subscribers)
                .seeds([seed.clone()])
                .build()
                .await?,
        );
    }
    let wait = publisher.wait_peers(|peers| {
        peers
            .iter()
            .filter(|p| p.paired_topics.iter().any(|t| t == "bench"))
            .count()
            == subscribers
    });
    tokio::time::timeout(STEP_LIMIT, wait)
        .await
        .context("the fan-out nodes did not pair")??;
    let counts: Vec<_> = (0..subscribers)
        .map(|_| std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)))
        .collect();
    let readers: Vec<_> = nodes
        .iter()
        .zip(&counts)
        .map(|(node, count)| {
            let mut stream = node.stream_with(StreamOptions::new().capacity(16 * 1024));
            let count = count.clone();
            tokio::spawn(async move {
                for _ in 0..n {
                    std::hint::black_box(stream.recv().await.context("the stream ended")?);
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    let start = Instant::now();
    publish_many(&publisher, Bytes::from(vec![0x5au8; 64]), n).await?;
    for reader in readers {
        let Ok(joined) = tokio::time::timeout(FAN_OUT_LIMIT, reader).await else {
            // What each node saw, to tell a stall from a loss.
            let mut report = String::new();
            for (i, node) in nodes.iter().enumerate() {
                let got = counts[i].load(std::sync::atomic::Ordering::Relaxed);
                report += &format!("\n  subscriber {i}: {got} of {n}; {:?}", node.stats());
            }
            report += &format!("\n  publisher: {:?}", publisher.stats());
            anyhow::bail!("a fan-out subscriber did not receive every message in time:{report}");
        };
        joined??;
    }
    let rate = (n * subscribers as u64) as f64 / start.elapsed().as_secs_f64();
    for node in nodes.iter().chain([&publisher]) {
        node.shutdown().await?;
    }
    Ok(rate)
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
async fn child(publisher: String, plan: Plan, variant: Variant) -> Result<u8> {
    let node = node("bench-subscriber", &["bench"], variant)
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
async fn two_processes(
    plan: &Plan,
    variant: Variant,
    progress: &impl Fn(String),
) -> Result<Vec<(usize, f64)>> {
    let publisher = node("bench-publisher", &["bench"], variant).build().await?;
    let exe = std::env::current_exe().context("cannot find this program")?;
    let mut child = Command::new(exe)
        .args(plan.child_args(&publisher.local_addr().to_string(), variant))
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
        progress(format!(
            "two processes, {}: {}",
            variant.name(),
            size(payload)
        ));
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
        let variant = if cmd.child_plaintext {
            Variant::Plaintext
        } else {
            Variant::Tls
        };
        return child(publisher, plan, variant).await;
    }
    let variants: &[Variant] = match cmd.security {
        BenchSecurity::Plaintext => &[Variant::Plaintext],
        BenchSecurity::Tls => &[Variant::Tls],
        BenchSecurity::Both => &[Variant::Plaintext, Variant::Tls],
    };
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

    // The in-process baseline of every size: always measured, as the reference of every
    // variant; the variants' runs interleaved with it.
    let in_process = matches!(cmd.processes, Processes::One | Processes::Both);
    let mut pairs = Vec::new();
    if in_process {
        for &variant in variants {
            pairs.push((variant, pair(variant).await?));
        }
    }
    say(format!(
        "chaski node: one publisher, one subscriber reading its stream, loopback (median of {} runs)",
        plan.runs
    ));
    say(format!(
        "{:>8}  {:>5}  {:>14} {:>10}  {:>14} {:>10}  {:>7}",
        "payload", "", "chaski msg/s", "Gbit/s", "raw TCP msg/s", "Gbit/s", "ratio"
    ));
    let mut raw_pair = baseline::pair()
        .await
        .context("the baseline's connection")?;
    // (variant, payload, chaski rate); (payload, raw rate).
    let mut rates: Vec<(Variant, usize, f64)> = Vec::new();
    let mut raws: Vec<(usize, f64)> = Vec::new();
    for &payload in &plan.sizes {
        progress(format!("one process: {}", size(payload)));
        let n = plan.messages_for(payload);
        let mut ours: Vec<Vec<f64>> = vec![Vec::new(); pairs.len()];
        let mut raw = Vec::new();
        for _ in 0..plan.runs {
            for (i, (_, (p, s))) in pairs.iter().enumerate() {
                ours[i].push(node_throughput(p, s, payload, n).await?);
            }
            raw.push(
                raw_pair
                    .throughput(payload, n)
                    .await
                    .context("the baseline")?,
            );
        }
        let raw = n as f64 / median(raw);
        raws.push((payload, raw));
        let gbit = |rate: f64| rate * payload as f64 * 8.0 / 1e9;
        for ((variant, _), times) in pairs.iter().zip(ours) {
            let rate = n as f64 / median(times);
            rates.push((*variant, payload, rate));
            say(format!(
                "{:>8}  {:>5}  {:>13}  {:>10.2}  {:>13}  {:>10.2}  {:>6.1}%",
                size(payload),
                variant.name(),
                si(rate),
                gbit(rate),
                si(raw),
                gbit(raw),
                100.0 * rate / raw
            ));
            emit(json!({
                "measurement": "throughput", "processes": 1, "payload_bytes": payload,
                "security": variant.name(), "messages": n, "runs": plan.runs,
                "chaski_msgs_per_s": rate, "baseline_msgs_per_s": raw, "ratio": rate / raw,
            }));
        }
    }

    let mut rtts: Vec<(Variant, f64, f64)> = Vec::new();
    if !pairs.is_empty() {
        progress("round trips".to_owned());
        let samples = if plan.quick { 200 } else { 5_000 };
        let mut raw = baseline::round_trips(samples)
            .await
            .context("the baseline's round trips")?;
        let raw = Summary::of(&mut raw).context("no samples")?;
        for (variant, (publisher, subscriber)) in &pairs {
            let mut ours = node_round_trips(publisher, subscriber, samples).await?;
            let ours = Summary::of(&mut ours).context("no samples")?;
            say(format!(
                "round trip of a lone 64 B message, {}: chaski p50 {:.1} us, p99 {:.1} us; raw TCP echo p50 {:.1} us, p99 {:.1} us; ratio p50 {:.2}x",
                variant.name(),
                ours.median,
                ours.p99,
                raw.median,
                raw.p99,
                ours.median / raw.median
            ));
            emit(json!({
                "measurement": "round_trip", "processes": 1, "payload_bytes": 64,
                "security": variant.name(), "samples": samples,
                "chaski_p50_us": ours.median, "chaski_p99_us": ours.p99,
                "baseline_p50_us": raw.median, "baseline_p99_us": raw.p99,
                "ratio": ours.median / raw.median,
            }));
            rtts.push((*variant, ours.median, raw.median));
        }
        for (_, (publisher, subscriber)) in pairs {
            publisher.shutdown().await?;
            subscriber.shutdown().await?;
        }
    }

    if in_process {
        let variant = *variants.last().unwrap_or(&Variant::Tls);
        progress("fan-out to 10 subscribers".to_owned());
        let n = if plan.quick { 5_000 } else { 50_000 };
        let mut runs = Vec::new();
        for _ in 0..plan.runs {
            runs.push(fan_out(variant, 10, n).await?);
        }
        let rate = median(runs);
        say(format!(
            "\nfan-out, {}: one publisher, 10 subscribers (all linked), 64 B: {} messages delivered per second in all",
            variant.name(),
            si(rate)
        ));
        emit(json!({
            "measurement": "fan_out", "subscribers": 10, "payload_bytes": 64,
            "security": variant.name(), "messages": n, "runs": plan.runs,
            "delivered_msgs_per_s": rate,
        }));
    }

    if matches!(cmd.processes, Processes::Two | Processes::Both) {
        say("\ntwo processes (subscriber in a child process):".to_owned());
        for &variant in variants {
            for (payload, rate) in two_processes(&plan, variant, &progress).await? {
                let raw = raws.iter().find(|(p, _)| *p == payload).map(|(_, r)| *r);
                let share = raw.map_or(String::new(), |raw| {
                    format!("  {:>6.1}% of the in-process baseline", 100.0 * rate / raw)
                });
                say(format!(
                    "{:>8}  {:>5}  {:>13} msg/s{share}",
                    size(payload),
                    variant.name(),
                    si(rate),
                ));
                emit(json!({
                    "measurement": "throughput", "processes": 2, "payload_bytes": payload,
                    "security": variant.name(), "messages": plan.messages_for(payload),
                    "runs": plan.runs, "chaski_msgs_per_s": rate, "baseline_msgs_per_s": raw,
                }));
            }
        }
    }

    let mut tls_costs_measured = None;
    if variants.contains(&Variant::Tls) {
        progress("TLS connection set-up and idle memory".to_owned());
        let (setup_ms, idle_bytes) = tls_costs(plan.quick).await?;
        say(format!(
            "\nTLS connection on loopback: set up (TCP, TLS 1.3, hello) in {setup_ms:.2} ms (median); an idle one holds {:.1} KiB (both ends)",
            idle_bytes / 1024.0
        ));
        emit(json!({
            "measurement": "tls_connection", "setup_ms_p50": setup_ms,
            "idle_bytes_per_connection": idle_bytes,
        }));
        tls_costs_measured = Some((setup_ms, idle_bytes));
    }

    // The node's default is TLS: the raw-ratio targets are its (or plain's, if alone).
    let default = *variants.last().unwrap_or(&Variant::Tls);
    say(format!(
        "\ntargets ({}; ratios to the raw TCP baseline of this run):",
        default.name()
    ));
    let rate_of = |variant: Variant, payload: usize| {
        rates
            .iter()
            .find(|(v, p, _)| *v == variant && *p == payload)
            .map(|(_, _, r)| *r)
    };
    for (payload, target) in TARGETS {
        let (Some(ours), Some((_, raw))) = (
            rate_of(default, payload),
            raws.iter().find(|(p, _)| *p == payload),
        ) else {
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
    if let Some((_, ours, raw)) = rtts.iter().find(|(v, ..)| *v == default) {
        let ratio = ours / raw;
        say(format!(
            "  round trip p50: {ratio:.2}x (target <= {RTT_TARGET}x): {}",
            verdict(ratio <= RTT_TARGET)
        ));
    }
    if variants.len() == 2 {
        say("targets (TLS against plain TCP, this run):".to_owned());
        for (payload, target) in TLS_TARGETS {
            let (Some(tls), Some(plain)) = (
                rate_of(Variant::Tls, payload),
                rate_of(Variant::Plaintext, payload),
            ) else {
                continue;
            };
            let ratio = tls / plain;
            say(format!(
                "  {:>8} messages: {:>5.1}% of plain (target >= {:.0}%): {}",
                size(payload),
                100.0 * ratio,
                100.0 * target,
                verdict(ratio >= target)
            ));
        }
        let p50 = |variant: Variant| rtts.iter().find(|(v, ..)| *v == variant).map(|r| r.1);
        if let (Some(tls), Some(plain)) = (p50(Variant::Tls), p50(Variant::Plaintext)) {
            let ratio = tls / plain;
            say(format!(
                "  round trip p50: {ratio:.2}x plain (target <= {TLS_RTT_TARGET}x): {}",
                verdict(ratio <= TLS_RTT_TARGET)
            ));
        }
    }
    if let Some((setup_ms, idle_bytes)) = tls_costs_measured {
        say(format!(
            "  TLS set-up: {setup_ms:.2} ms (target < {TLS_SETUP_TARGET_MS} ms): {}",
            verdict(setup_ms < TLS_SETUP_TARGET_MS)
        ));
        say(format!(
            "  idle TLS connection: {:.1} KiB (target <= 64 KiB): {}",
            idle_bytes / 1024.0,
            verdict(idle_bytes <= TLS_IDLE_TARGET_BYTES)
        ));
    }
    Ok(0)
}
