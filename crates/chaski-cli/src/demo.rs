//! `chaski demo`: a small network on loopback in one process. A relay and six nodes over three
//! topics find each other through the relay, pair by topic and stream messages; a live table
//! shows peers, round trips and message rates; one node is frozen for 2 s (its sockets stay
//! open, it just stops answering: a silent failure, detected by timeout), one is killed (no
//! goodbye: its sockets just close) and restarted, to show failure detection and
//! reconnection; a summary ends it.
//!
//! Each node runs on its own single-threaded runtime and thread, so that killing one is
//! dropping its runtime: every task and socket of that node ends at once, as in a crash. LAN
//! discovery is off: the demo finds only its own nodes.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use chaski::{Node, NodeEvent, NodeId, Overflow, Topic, membership::Event};
use tokio::sync::oneshot;

use crate::{cli::DemoCommand, coded, exit, run::stop_signal};

/// The nodes: name and topics. The third is the one killed and restarted.
const NODES: [(&str, &[&str]); 6] = [
    ("alpha", &["sensors"]),
    ("bravo", &["sensors", "alerts"]),
    ("charlie", &["alerts", "chat"]),
    ("delta", &["chat"]),
    ("echo", &["sensors", "chat"]),
    ("foxtrot", &["alerts"]),
];
const VICTIM: usize = 2;
/// The node frozen for a while (its thread blocked: sockets open, nothing answered), to show a
/// silent failure detected by timeout rather than by a closed socket.
const FROZEN: usize = 4;
/// How long it stays frozen: longer than the demo's `peer_timeout` (1 s).
const FREEZE_FOR: Duration = Duration::from_secs(2);
/// The demo's peer timeout.
const PEER_TIMEOUT: Duration = Duration::from_secs(1);
/// Each node publishes on each of its topics this often.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// How often the live table is printed.
const TABLE_EVERY: Duration = Duration::from_secs(3);

/// Names of every node ever started, by id (for printing events).
type Names = Arc<Mutex<HashMap<NodeId, String>>>;

/// Failures detected: who detected whose failure, and when. At most [`MAX_FAILURES`] kept.
type Failures = Arc<Mutex<Vec<(&'static str, NodeId, Instant)>>>;
const MAX_FAILURES: usize = 1024;

/// A node running on its own thread and runtime.
struct Member {
    name: &'static str,
    topics: &'static [&'static str],
    node: Node,
    /// The node's runtime (single-threaded): a task that blocks it freezes the whole node.
    runtime: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<bool>>,
    thread: Option<thread::JoinHandle<()>>,
    /// Set when the member is killed, so that its event printer says nothing more.
    dead: Arc<AtomicBool>,
    /// Counters of the previous table, for rates.
    last: (u64, u64),
}

impl Member {
    /// Starts a node on a new thread. `relay`: the relay's settings instead of a publisher's.
    fn start(
        name: &'static str,
        topics: &'static [&'static str],
        relay: bool,
        seed: Option<String>,
        (names, failures): (&Names, &Failures),
        t0: Instant,
    ) -> Result<Member> {
        let (node_tx, node_rx) = std::sync::mpsc::sync_channel(1);
        let (stop, stop_rx) = oneshot::channel::<bool>();
        let thread = thread::Builder::new()
            .name(format!("demo-{name}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = node_tx.send(Err(anyhow::Error::from(err)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let built = Node::builder()
                        .name(name)
                        .relay(relay)
                        .subscribe(topics.iter().copied())
                        .seeds(seed)
                        .lan_discovery(false)
                        .ping_interval(Duration::from_millis(250))
                        .peer_timeout(PEER_TIMEOUT)
                        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
                        .stream_overflow(Overflow::DropOldest)
                        .build()
                        .await;
                    let node = match built {
                        Ok(node) => node,
                        Err(err) => {
                            let _ = node_tx.send(Err(err.into()));
                            return;
                        }
                    };
                    // Read every message (the node counts them in its stats).
                    let mut stream = node.stream();
                    tokio::spawn(async move { while stream.recv().await.is_some() {} });
                    if !relay {
                        tokio::spawn(publish(node.clone(), topics));
                    }
                    let handle = tokio::runtime::Handle::current();
                    let _ = node_tx.send(Ok((node.clone(), handle)));
                    // `true`: a clean shutdown; `false` (or the sender dropped): a crash, the
                    // runtime is dropped with every task and socket of the node.
                    if stop_rx.await == Ok(true) {
                        let _ = tokio::time::timeout(Duration::from_secs(2), node.shutdown()).await;
                    }
                });
            })
            .context("cannot start a thread")?;
        let (node, runtime) = node_rx
            .recv()
            .context("the node's thread ended early")?
            .with_context(|| format!("cannot start node {name}"))?;
        names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node.id(), name.to_owned());
        let dead = Arc::new(AtomicBool::new(false));
        tokio::spawn(print_events(
            node.clone(),
            (names.clone(), failures.clone()),
            dead.clone(),
            t0,
        ));
        Ok(Member {
            name,
            topics,
            node,
            runtime,
            stop: Some(stop),
            thread: Some(thread),
            dead,
            last: (0, 0),
        })
    }

    /// Ends the node: cleanly (goodbyes) or as a crash. Waits for its thread.
    async fn stop(mut self, clean: bool) {
        self.dead.store(!clean, Ordering::Relaxed);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(clean);
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// Freezes the node for `span`, as SIGSTOP would freeze a process: a task blocks its only
    /// thread, so nothing of the node runs (no read, no ping, no timer) while the kernel keeps
    /// its sockets open and acknowledges what arrives. No peer sees a FIN: only silence.
    fn freeze(&self, span: Duration) {
        self.runtime.spawn(async move {
            // Blocking the runtime's thread on purpose: that is the fault being shown.
            thread::sleep(span);
        });
    }

    /// Whether the node is paired on each of its topics.
    fn paired_everywhere(&self) -> bool {
        let peers = self.node.peers();
        self.topics.iter().all(|t| {
            peers
                .iter()
                .any(|p| p.paired_topics.iter().any(|pt| pt.as_str() == *t))
        })
    }
}

/// Publishes `name #n` on each topic every [`PUBLISH_EVERY`] until the node stops.
async fn publish(node: Node, topics: &'static [&'static str]) {
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    let topics: Vec<Topic> = topics.iter().map(|t| Topic::from_static(t)).collect();
    for n in 0u64.. {
        tick.tick().await;
        for topic in &topics {
            if node
                .publish(topic.clone(), format!("{} #{n}", node.name()))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Seconds since the start, for event lines.
fn stamp(t0: Instant) -> String {
    format!("[{:>5.2}s]", t0.elapsed().as_secs_f64())
}

/// Prints discovery, pairing and failures as they happen (each link once, from one side).
async fn print_events(
    node: Node,
    (names, failures): (Names, Failures),
    dead: Arc<AtomicBool>,
    t0: Instant,
) {
    let me = node.name().to_owned();
    let me_static = NODES
        .iter()
        .map(|(n, _)| *n)
        .find(|n| *n == me)
        .unwrap_or("relay");
    let mut events = node.events();
    drop(node);
    let name_of = |id: NodeId| {
        names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
            .unwrap_or_else(|| id.short().to_string())
    };
    while let Some(event) = events.recv().await {
        if dead.load(Ordering::Relaxed) {
            return;
        }
        let NodeEvent::Membership(event) = event else {
            continue;
        };
        match event {
            Event::PeerUp {
                peer,
                outbound: true,
                source,
                ..
            } => println!(
                "{} {me} connected to {} (found via {})",
                stamp(t0),
                name_of(peer),
                source.as_str()
            ),
            Event::PeerDown { peer, reason, .. } if reason.is_failure() => {
                let mut failures = failures.lock().unwrap_or_else(|e| e.into_inner());
                if failures.len() < MAX_FAILURES {
                    failures.push((me_static, peer, Instant::now()));
                }
                drop(failures);
                println!(
                    "{} {me} detected the failure of {}: {reason:?}",
                    stamp(t0),
                    name_of(peer)
                );
            }
            Event::Paired { topic, peer } if me < name_of(peer) => println!(
                "{} {me} and {} paired on `{topic}`",
                stamp(t0),
                name_of(peer)
            ),
            Event::ReconnectGaveUp { peer } => println!(
                "{} {me} gave up reconnecting to {}",
                stamp(t0),
                name_of(peer)
            ),
            _ => {}
        }
    }
}

/// Prints the live table: one row per node.
fn print_table(members: &mut [Member], since_last: Duration, t0: Instant) {
    println!(
        "\n{} {:<8} {:<15} {:>5} {:>9} {:>9} {:>9} {:>9}",
        stamp(t0),
        "node",
        "topics",
        "peers",
        "rtt",
        "jitter",
        "pub/s",
        "recv/s"
    );
    for member in members.iter_mut() {
        let peers = member.node.peers();
        let measured: Vec<_> = peers.iter().filter(|p| p.rtt.samples > 0).collect();
        let mean = |f: &dyn Fn(&chaski::Peer) -> Duration| {
            if measured.is_empty() {
                "-".to_owned()
            } else {
                let total: Duration = measured.iter().map(|p| f(p)).sum();
                format!(
                    "{:.0} us",
                    (total / measured.len() as u32).as_secs_f64() * 1e6
                )
            }
        };
        let stats = member.node.stats();
        let secs = since_last.as_secs_f64().max(1e-3);
        let rate =
            |now: u64, before: u64| format!("{:.0}", (now.saturating_sub(before)) as f64 / secs);
        println!(
            "          {:<8} {:<15} {:>5} {:>9} {:>9} {:>9} {:>9}",
            member.name,
            if member.topics.is_empty() {
                "(relay)".to_owned()
            } else {
                member.topics.join(",")
            },
            peers.len(),
            mean(&|p| p.rtt.srtt),
            mean(&|p| p.rtt.rttvar),
            rate(stats.published, member.last.0),
            rate(stats.received, member.last.1),
        );
        member.last = (stats.published, stats.received);
    }
    println!();
}

/// Waits until every member is paired on each of its topics; false after `limit`.
async fn all_paired(members: &[Member], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    // Watching from before each check, so that no change is missed.
    let mut watches: Vec<_> = members.iter().map(|m| m.node.watch_peers()).collect();
    loop {
        if members.iter().all(Member::paired_everywhere) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        // Any member's change of peers may complete the picture.
        let changes = watches.iter_mut().map(|w| Box::pin(w.changed()));
        let _ = tokio::time::timeout(left, futures_select(changes.collect())).await;
    }
}

/// Resolves when any of the futures does.
async fn futures_select<F: Future + Unpin>(futures: Vec<F>) {
    let mut futures = futures;
    std::future::poll_fn(|cx| {
        for f in &mut futures {
            if std::pin::Pin::new(f).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await;
}

/// `chaski demo`.
pub(crate) async fn run(cmd: DemoCommand) -> Result<u8> {
    if cmd.duration < Duration::from_secs(8) {
        return Err(coded(exit::USAGE, "--duration must be at least 8s"));
    }
    tokio::select! {
        result = demo(cmd.duration) => result,
        () = stop_signal() => Ok(exit::INTERRUPTED),
    }
}

async fn demo(duration: Duration) -> Result<u8> {
    let t0 = Instant::now();
    let names: Names = Arc::default();
    let failures: Failures = Arc::default();
    let shared = (&names, &failures);
    println!(
        "chaski demo: a relay and {} nodes over 3 topics on loopback; {} s; Ctrl-C to stop early\n",
        NODES.len(),
        duration.as_secs()
    );
    let relay = Member::start("relay", &[], true, None, shared, t0)?;
    let seed = relay.node.local_addr().to_string();
    println!("{} relay listening on {seed}", stamp(t0));
    let mut members = vec![relay];
    for (name, topics) in NODES {
        members.push(Member::start(
            name,
            topics,
            false,
            Some(seed.clone()),
            shared,
            t0,
        )?);
    }
    let formed = all_paired(&members, Duration::from_secs(5)).await;
    let formed_in = t0.elapsed();
    if formed {
        println!(
            "{} every node is paired on each of its topics ({} ms after the start)",
            stamp(t0),
            formed_in.as_millis()
        );
    } else {
        println!("{} the network is still forming after 5 s", stamp(t0));
    }

    let freeze_at = duration
        .mul_f64(0.15)
        .max(formed_in + Duration::from_millis(500));
    let kill_at = duration
        .mul_f64(0.5)
        .max(freeze_at + FREEZE_FOR + Duration::from_secs(1));
    let restart_at = duration.mul_f64(0.7).max(kill_at + Duration::from_secs(2));
    let mut frozen: Option<(Instant, NodeId)> = None;
    let mut thawed_paired_in = None;
    let mut next_table = Instant::now() + Duration::from_millis(500);
    let mut last_table = Instant::now();
    let mut killed: Option<(Instant, NodeId)> = None;
    let mut rejoined_in = None;
    let mut restarted: Option<Instant> = None;
    let (mut published, mut received) = (0u64, 0u64);
    let victim = VICTIM + 1;

    while t0.elapsed() < duration {
        let now = Instant::now();
        if now >= next_table {
            print_table(&mut members, now - last_table, t0);
            last_table = now;
            next_table = now + TABLE_EVERY;
        }
        if frozen.is_none() && t0.elapsed() >= freeze_at {
            let member = &members[FROZEN + 1];
            println!(
                "\n{} freezing {} for {} s (its sockets stay open: no FIN, only silence)",
                stamp(t0),
                member.name,
                FREEZE_FOR.as_secs()
            );
            frozen = Some((Instant::now(), member.node.id()));
            member.freeze(FREEZE_FOR);
        }
        if let (Some((at, _)), None) = (frozen, thawed_paired_in) {
            // Paired everywhere again after it resumed (the peer table is the node's own).
            if at.elapsed() > FREEZE_FOR + PEER_TIMEOUT && members[FROZEN + 1].paired_everywhere() {
                let resumed_for = at.elapsed().saturating_sub(FREEZE_FOR);
                thawed_paired_in = Some(resumed_for);
                println!(
                    "{} {} resumed and is paired again on every topic",
                    stamp(t0),
                    NODES[FROZEN].0,
                );
            }
        }
        if killed.is_none() && t0.elapsed() >= kill_at {
            let member = members.remove(victim);
            let stats = member.node.stats();
            published += stats.published;
            received += stats.received;
            println!(
                "\n{} killing {} (no goodbye: its sockets just close)",
                stamp(t0),
                member.name
            );
            killed = Some((Instant::now(), member.node.id()));
            member.stop(false).await;
        }
        if killed.is_some() && restarted.is_none() && t0.elapsed() >= restart_at {
            let (name, topics) = NODES[VICTIM];
            println!("\n{} restarting {name}", stamp(t0));
            let member = Member::start(name, topics, false, Some(seed.clone()), shared, t0)?;
            restarted = Some(Instant::now());
            members.insert(victim, member);
        }
        if let (Some(at), None) = (restarted, rejoined_in) {
            if members[victim].paired_everywhere() {
                rejoined_in = Some(at.elapsed());
                println!(
                    "{} {} is paired again on every topic, {} ms after its restart",
                    stamp(t0),
                    NODES[VICTIM].0,
                    at.elapsed().as_millis()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    println!("\n{} stopping every node (goodbyes)", stamp(t0));
    print_table(&mut members, last_table.elapsed(), t0);
    for member in members {
        let stats = member.node.stats();
        published += stats.published;
        received += stats.received;
        member.stop(true).await;
    }

    let detections = |fault: Option<(Instant, NodeId)>| -> Vec<(&str, Duration)> {
        match fault {
            Some((at, victim_id)) => failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|(_, peer, when)| *peer == victim_id && *when >= at)
                .map(|(by, _, when)| (*by, when.saturating_duration_since(at)))
                .collect(),
            None => Vec::new(),
        }
    };
    let detected_by = detections(killed);
    let silent_detected_by = detections(frozen);
    println!("summary");
    println!(
        "  network: a relay and {} nodes over 3 topics, {}",
        NODES.len(),
        if formed {
            format!("all paired {} ms after the start", formed_in.as_millis())
        } else {
            "not all paired within 5 s".to_owned()
        }
    );
    println!(
        "  security: every connection TLS 1.3, each node's id proven by its key (fresh per start)"
    );
    println!("  messages: {published} published, {received} delivered to subscribers");
    match detected_by.iter().map(|(_, d)| *d).max() {
        Some(slowest) => println!(
            "  failure of {}: detected by {} peers ({}), the last {} ms after the kill",
            NODES[VICTIM].0,
            detected_by.len(),
            detected_by
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
            slowest.as_millis()
        ),
        None => println!("  failure of {}: not detected", NODES[VICTIM].0),
    }
    match silent_detected_by.iter().map(|(_, d)| *d).max() {
        Some(slowest) => println!(
            "  silent failure of {} (frozen {} s): detected by {} peers by timeout, the last {} ms after it froze (peer timeout {} ms){}",
            NODES[FROZEN].0,
            FREEZE_FOR.as_secs(),
            silent_detected_by.len(),
            slowest.as_millis(),
            PEER_TIMEOUT.as_millis(),
            if thawed_paired_in.is_some() {
                "; paired again after it resumed"
            } else {
                "; not paired again in time"
            }
        ),
        None => println!("  silent failure of {}: not detected", NODES[FROZEN].0),
    }
    match rejoined_in {
        Some(d) => println!(
            "  reconnection: {} rejoined and paired on every topic {} ms after its restart",
            NODES[VICTIM].0,
            d.as_millis()
        ),
        None => println!(
            "  reconnection: {} did not pair again in time",
            NODES[VICTIM].0
        ),
    }
    println!("  ran for {:.1} s", t0.elapsed().as_secs_f64());
    Ok(0)
}
