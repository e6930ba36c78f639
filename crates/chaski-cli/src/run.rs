//! `chaski node`, `chaski pub` and `chaski sub`: a node started from the merged settings, its
//! events logged, and a clean shutdown (goodbye to every peer) on Ctrl-C or SIGTERM.

use std::{
    collections::HashMap,
    io::Write,
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use bytes::Bytes;
use chaski::{Node, NodeEvent, Received, StreamOptions, Topic, membership::Event};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    sync::watch,
};
use tracing::{debug, info, warn};

use crate::{
    cli::{NodeCommand, PubCommand, SubCommand, SubFormat},
    coded,
    config::Settings,
    exit,
};

/// Set once Ctrl-C (SIGINT) or SIGTERM arrived; see [`install_signals`].
static STOPPING: OnceLock<watch::Receiver<bool>> = OnceLock::new();

/// Installs the handlers of Ctrl-C (SIGINT) and SIGTERM, before any work starts, so that a signal
/// that comes early still ends the process cleanly.
pub(crate) fn install_signals() -> std::io::Result<()> {
    let (tx, rx) = watch::channel(false);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            let _ = tx.send(true);
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = tx.send(true);
        }
    });
    let _ = STOPPING.set(rx);
    Ok(())
}

/// Resolves when the process is asked to stop: Ctrl-C (SIGINT) or SIGTERM.
pub(crate) async fn stop_signal() {
    match STOPPING.get() {
        Some(rx) => {
            let mut rx = rx.clone();
            if rx.wait_for(|stop| *stop).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Starts a node with `settings`, logs where it listens and spawns the logging of its events.
pub(crate) async fn start(settings: &Settings) -> Result<Node> {
    let node = settings
        .builder()?
        .build()
        .await
        .context("cannot start the node")?;
    info!(
        name = node.name(),
        id = %node.id().short(),
        "listening on {}",
        node.local_addr()
    );
    // Subscribe to the events before looking at the peers, so that no peer goes unlogged.
    let events = node.events();
    // What happened before the subscription is in the table: log it as the events would have.
    let mut up = HashMap::new();
    for peer in node.peers() {
        info!(peer = %peer.name, id = %peer.id.short(), via = peer.source.as_str(), "peer up");
        for topic in &peer.paired_topics {
            info!(peer = %peer.name, %topic, "paired");
        }
        up.insert(peer.id, peer.name);
    }
    tokio::spawn(log_events(node.clone(), events, up));
    Ok(node)
}

/// The name of a connected peer, or its short id.
pub(crate) fn peer_name(node: &Node, id: chaski::NodeId) -> String {
    node.peers()
        .into_iter()
        .find(|p| p.id == id)
        .map_or_else(|| id.short().to_string(), |p| p.name)
}

/// The name of a peer that just came up: its snapshot may lag its event by a moment.
pub(crate) async fn peer_name_soon(node: &Node, id: chaski::NodeId) -> String {
    let wait = node.wait_peers(|peers| peers.iter().any(|p| p.id == id));
    tokio::time::timeout(Duration::from_millis(250), wait)
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(|peers| peers.into_iter().find(|p| p.id == id))
        .map_or_else(|| id.short().to_string(), |p| p.name)
}

/// Logs the node's events until it stops. `up`: the names of the peers already up.
async fn log_events(
    node: Node,
    mut events: chaski::EventStream,
    mut up: HashMap<chaski::NodeId, String>,
) {
    // Hold no handle while waiting, so that the node can shut down when the command is done.
    let weak = node.clone();
    drop(node);
    // `up` holds the names of the peers that are up, so that `peer down` names the peer too
    // (the peer table no longer has it by then). Bounded by the node's connections.
    while let Some(event) = events.recv().await {
        let name = |id| peer_name(&weak, id);
        match event {
            NodeEvent::Membership(event) => match event {
                Event::PeerUp { peer, source, .. } => {
                    let name = peer_name_soon(&weak, peer).await;
                    info!(peer = %name, id = %peer.short(), via = source.as_str(), "peer up");
                    up.insert(peer, name);
                }
                Event::PeerDown { peer, reason, .. } => {
                    let name = up.remove(&peer).unwrap_or_else(|| peer.short().to_string());
                    info!(peer = %name, id = %peer.short(), reason = ?reason, "peer down");
                }
                Event::PeerDiscovered { peer, source } => {
                    debug!(peer = %peer.short(), via = source.as_str(), "peer discovered");
                }
                Event::Paired { topic, peer } => {
                    let name = peer_name_soon(&weak, peer).await;
                    info!(peer = %name, %topic, "paired");
                }
                Event::Unpaired { topic, peer } => {
                    let name = up.get(&peer).cloned().unwrap_or_else(|| name(peer));
                    info!(peer = %name, %topic, "unpaired");
                }
                Event::TopicIsolated { topic } => {
                    info!(%topic, "no subscriber known for the topic yet; searching");
                }
                Event::ReconnectGaveUp { peer } => {
                    warn!(peer = %peer.short(), "gave up reconnecting");
                }
                Event::LatencyUpdated { peer, srtt, .. } => {
                    tracing::trace!(peer = %name(peer), ?srtt, "latency");
                }
                other => debug!(event = ?other, "membership"),
            },
            NodeEvent::StreamOverflow { dropped, total, .. } => {
                warn!(dropped, total, "a message stream is full: messages dropped");
            }
            NodeEvent::SendDropped { peer, dropped } => {
                warn!(peer = %name(peer), dropped, "a peer reads too slowly: frames dropped");
            }
            NodeEvent::Lagged { missed } => warn!(missed, "events missed"),
            NodeEvent::Missed {
                publisher,
                topic,
                first,
                last,
            } => {
                warn!(publisher = %name(publisher), %topic, first, last, "messages missed: they will not arrive");
            }
            other => debug!(event = ?other, "node"),
        }
    }
}

/// Waits until `node` is paired with a peer on `topic`, at most `wait`.
async fn paired(node: &Node, topic: &Topic, wait: Duration) -> Result<()> {
    let check = node.wait_peers(|peers| peers.iter().any(|p| p.paired_topics.contains(topic)));
    match tokio::time::timeout(wait, check).await {
        Ok(result) => {
            result?;
            Ok(())
        }
        Err(_) => Err(coded(
            exit::TIMEOUT,
            format!(
                "no subscriber of `{topic}` found within {wait:?} (give a --seed or check the topic)"
            ),
        )),
    }
}

/// Shuts the node down (a goodbye to every peer), bounded in time.
async fn goodbye(node: &Node) {
    match tokio::time::timeout(Duration::from_secs(3), node.shutdown()).await {
        Ok(Ok(())) => info!("stopped"),
        Ok(Err(err)) => warn!("shutdown: {err}"),
        Err(_) => warn!("shutdown took more than 3 s; exiting anyway"),
    }
}

/// `chaski node`.
pub(crate) async fn node(cmd: NodeCommand) -> Result<u8> {
    let settings = cmd.join.settings(Settings {
        subscribe: (!cmd.subscribe.is_empty()).then(|| cmd.subscribe.clone()),
        relay: cmd.relay.then_some(true),
        ..Settings::default()
    })?;
    let node = start(&settings).await?;
    tokio::select! {
        () = stop_signal() => info!("asked to stop; saying goodbye to the peers"),
        () = node.stopped() => warn!("the node stopped"),
    }
    goodbye(&node).await;
    Ok(0)
}

/// The messages `pub` sends.
enum Source {
    /// This message, so many times.
    Repeat(Bytes, u64),
    /// Generated messages of a size.
    Generated { count: u64, size: usize },
    /// Each line of standard input.
    Stdin,
}

/// `chaski pub`.
pub(crate) async fn publish(cmd: PubCommand) -> Result<u8> {
    let topic = Topic::new(&cmd.topic)
        .map_err(|e| coded(exit::USAGE, format!("topic `{}`: {e}", cmd.topic)))?;
    if !(cmd.rate >= 0.0 && cmd.rate.is_finite()) {
        return Err(coded(exit::USAGE, "--rate must be a number >= 0"));
    }
    let source = match (&cmd.message, cmd.count) {
        (Some(message), count) => Source::Repeat(Bytes::from(message.clone()), count.unwrap_or(1)),
        (None, Some(count)) => Source::Generated {
            count,
            size: cmd.size,
        },
        (None, None) => Source::Stdin,
    };
    // The publisher subscribes to its topic too, so that it pairs with the subscribers directly
    // (a node that does not subscribe reaches subscribers only through a relay).
    let settings = cmd.join.settings(Settings {
        subscribe: Some(vec![cmd.topic.clone()]),
        ..Settings::default()
    })?;
    let node = start(&settings).await?;
    let work = async {
        paired(&node, &topic, cmd.wait).await?;
        let pace = (cmd.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / cmd.rate));
        let started = Instant::now();
        let mut sent = 0u64;
        let mut next = |node: &Node, payload: Bytes| {
            let topic = topic.clone();
            let node = node.clone();
            sent += 1;
            let due = pace.map(|p| started + p.mul_f64((sent - 1) as f64));
            async move {
                if let Some(due) = due {
                    tokio::time::sleep_until(due.into()).await;
                }
                node.publish(topic, payload).await
            }
        };
        match source {
            Source::Repeat(payload, count) => {
                for _ in 0..count {
                    next(&node, payload.clone()).await?;
                }
            }
            Source::Generated { count, size } => {
                for i in 0..count {
                    next(&node, generated(i, size)).await?;
                }
            }
            Source::Stdin => {
                let mut lines = BufReader::new(tokio::io::stdin()).lines();
                while let Some(line) = lines.next_line().await.context("reading standard input")? {
                    next(&node, Bytes::from(line)).await?;
                }
            }
        }
        node.flush().await?;
        Ok::<u64, anyhow::Error>(sent)
    };
    let outcome = tokio::select! {
        outcome = work => Some(outcome),
        () = stop_signal() => None,
    };
    goodbye(&node).await;
    match outcome {
        Some(Ok(sent)) => {
            info!(messages = sent, topic = %topic, "published");
            Ok(0)
        }
        Some(Err(err)) => Err(err),
        None => Ok(exit::INTERRUPTED),
    }
}

/// Message `i` of `size` bytes: its number, then dots.
fn generated(i: u64, size: usize) -> Bytes {
    let mut payload = format!("{i}").into_bytes();
    payload.resize(size.max(payload.len().min(size)), b'.');
    payload.truncate(size);
    Bytes::from(payload)
}

/// `chaski sub`.
pub(crate) async fn subscribe(cmd: SubCommand) -> Result<u8> {
    let topics = cmd
        .topics
        .iter()
        .map(|t| Topic::new(t).map_err(|e| coded(exit::USAGE, format!("topic `{t}`: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    let settings = cmd.join.settings(Settings {
        subscribe: Some(cmd.topics.clone()),
        ..Settings::default()
    })?;
    let node = start(&settings).await?;
    let mut stream = node.stream_with(StreamOptions::new().topics(topics));
    let work = async {
        let mut out = std::io::stdout().lock();
        let mut seen = 0u64;
        while cmd.count.is_none_or(|n| seen < n) {
            let Some(message) = stream.recv().await else {
                break;
            };
            print_message(&mut out, &message, cmd.format)?;
            out.flush()?;
            seen += 1;
        }
        Ok::<u64, std::io::Error>(seen)
    };
    let outcome = tokio::select! {
        outcome = work => Some(outcome),
        () = stop_signal() => None,
    };
    goodbye(&node).await;
    match outcome {
        Some(Ok(_)) => Ok(0),
        // The reader went away (`chaski sub t | head -1`): not an error.
        Some(Err(err)) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Some(Err(err)) => Err(err).context("writing to standard output"),
        None if cmd.count.is_some() => Ok(exit::INTERRUPTED),
        None => Ok(0),
    }
}

/// Prints one message in `format`.
fn print_message(
    out: &mut impl Write,
    message: &Received,
    format: SubFormat,
) -> std::io::Result<()> {
    let publisher = message
        .publisher_name
        .as_deref()
        .map_or_else(|| message.publisher.short().to_string(), str::to_owned);
    match format {
        SubFormat::Text => writeln!(
            out,
            "{} {}: {}",
            message.topic,
            publisher,
            String::from_utf8_lossy(&message.payload)
        ),
        SubFormat::Raw => out.write_all(&message.payload),
        SubFormat::Json => {
            let mut object = serde_json::json!({
                "topic": message.topic.as_str(),
                "publisher": message.publisher.to_string(),
                "publisher_name": publisher,
                "sequence": message.sequence,
                "timestamp_micros": message.timestamp_micros,
                "hops": message.hops,
                "delivery": format!("{:?}", message.delivery).to_lowercase(),
            });
            match std::str::from_utf8(&message.payload) {
                Ok(text) => object["payload"] = text.into(),
                Err(_) => {
                    let hex: String = message.payload.iter().map(|b| format!("{b:02x}")).collect();
                    object["payload_hex"] = hex.into();
                }
            }
            writeln!(out, "{object}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_messages_have_the_size_asked_for() {
        assert_eq!(&generated(42, 6)[..], b"42....");
        assert_eq!(&generated(12345, 3)[..], b"123");
        assert_eq!(generated(7, 0).len(), 0);
    }
}
