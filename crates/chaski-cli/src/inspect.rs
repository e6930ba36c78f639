//! `chaski ping` (round trips to a node, printed like the system `ping`) and `chaski peers` (a
//! running node's peer table, asked with a `StatusRequest` frame over a bare transport endpoint).

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use chaski::{
    Node, NodeId,
    transport::{self, Endpoint},
    wire::{Capabilities, Frame, Hello, StatusRequest, StatusResponse},
};
use serde_json::json;

use crate::{
    cli::{PeersCommand, PeersFormat, PingCommand},
    coded,
    config::Settings,
    exit,
    run::{peer_name_soon, stop_signal},
};

/// How a tool reaches a node: its network, and the identity and security it connects with.
#[derive(Clone, Copy, Debug)]
struct Access<'a> {
    network_id: &'a str,
    me: NodeId,
    security: &'a transport::Security,
}

/// Finds the node `target` from `node`: an address is dialed; a name is looked up among the
/// connected peers, then in the peer tables of the seeds (and dialed at its listening address).
async fn find(
    node: &Node,
    target: &str,
    (seeds, access): (&[String], Access<'_>),
    wait: Duration,
) -> Result<NodeId> {
    let timed_out = || {
        coded(
            exit::TIMEOUT,
            format!("no answer from {target} within {wait:?}"),
        )
    };
    if target.contains(':') {
        return match tokio::time::timeout(wait, node.connect(target)).await {
            Ok(Err(chaski::Error::Connect {
                reason,
                handshake: Some(cause),
                ..
            })) if credentials_hint(cause).is_some() => Err(coded(
                exit::FAILURE,
                format!(
                    "cannot reach {target}: {reason}: {}",
                    credentials_hint(cause).unwrap_or_default()
                ),
            )),
            Ok(result) => result.with_context(|| format!("cannot reach {target}")),
            Err(_) => Err(timed_out()),
        };
    }
    let look = async {
        if let Some(peer) = node.peers().into_iter().find(|p| p.name == target) {
            return Ok(peer.id);
        }
        for seed in seeds {
            let Ok((status, _)) = status(seed, access, wait).await else {
                continue;
            };
            let addr = if status.node.name == target {
                Some(seed.clone())
            } else {
                status
                    .peers
                    .iter()
                    .find(|p| p.peer.name == target)
                    .and_then(|p| p.peer.listen_addrs.first())
                    .map(ToString::to_string)
            };
            if let Some(addr) = addr {
                return node.connect(&addr).await.map_err(anyhow::Error::from);
            }
        }
        // Wait for LAN discovery (or any other way) to connect it.
        let peers = node
            .wait_peers(|peers| peers.iter().any(|p| p.name == target))
            .await?;
        peers
            .into_iter()
            .find(|p| p.name == target)
            .map(|p| p.id)
            .context("the peer table lost the peer it was waited for")
    };
    match tokio::time::timeout(wait, look).await {
        Ok(result) => result,
        Err(_) => Err(coded(
            exit::TIMEOUT,
            format!(
                "no node named `{target}` found within {wait:?} (give its address, or a --seed that knows it)"
            ),
        )),
    }
}

/// Round-trip statistics in milliseconds: min, avg, max, and jitter (the mean difference between
/// consecutive samples, as RFC 3550 defines it).
pub(crate) fn rtt_stats(samples: &[Duration]) -> Option<(f64, f64, f64, f64)> {
    if samples.is_empty() {
        return None;
    }
    let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let min = ms.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ms.iter().copied().fold(0.0, f64::max);
    let avg = ms.iter().sum::<f64>() / ms.len() as f64;
    let jitter = if ms.len() < 2 {
        0.0
    } else {
        ms.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / (ms.len() - 1) as f64
    };
    Some((min, avg, max, jitter))
}

/// `chaski ping`.
pub(crate) async fn ping(cmd: PingCommand) -> Result<u8> {
    let settings = cmd.join.settings(Settings::default())?;
    let node = settings
        .builder()?
        .build()
        .await
        .context("cannot start the node")?;
    let seeds = settings.seeds.clone().unwrap_or_default();
    let network_id = settings.network_id.clone().unwrap_or_default();
    let (me, security) = settings.tool_security()?;
    let access = Access {
        network_id: &network_id,
        me,
        security: &security,
    };
    let result = ping_with(&node, &cmd, (&seeds, access)).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), node.shutdown()).await;
    result
}

async fn ping_with(node: &Node, cmd: &PingCommand, network: (&[String], Access<'_>)) -> Result<u8> {
    let id = tokio::select! {
        id = find(node, &cmd.target, network, cmd.timeout) => id?,
        () = stop_signal() => return Ok(exit::INTERRUPTED),
    };
    let name = peer_name_soon(node, id).await;
    let addr = node
        .peers()
        .into_iter()
        .find(|p| p.id == id)
        .and_then(|p| p.remote_addr.or(p.listen_addrs.first().copied()))
        .map_or_else(|| cmd.target.clone(), |a| a.to_string());
    println!(
        "PING {name} ({addr}) id {}: {} bytes of padding",
        id.short(),
        cmd.size
    );
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(cmd.interval);
    let interrupted = loop {
        if cmd.count != 0 && sent >= cmd.count {
            break false;
        }
        tokio::select! {
            _ = tick.tick() => {}
            () = stop_signal() => break true,
        }
        sent += 1;
        let answer = tokio::select! {
            answer = tokio::time::timeout(cmd.timeout, node.ping_with_size(id, cmd.size)) => answer,
            () = stop_signal() => break true,
        };
        match answer {
            Ok(Ok(rtt)) => {
                println!(
                    "reply from {name} ({addr}): seq={sent} time={:.3} ms",
                    rtt.as_secs_f64() * 1e3
                );
                samples.push(rtt);
            }
            Ok(Err(err)) => println!("seq={sent}: {err}"),
            Err(_) => println!("seq={sent}: no answer within {:?}", cmd.timeout),
        }
    };
    let received = samples.len() as u64;
    println!("\n--- {name} ping statistics ---");
    println!(
        "{sent} sent, {received} received, {:.0}% loss, time {} ms",
        if sent == 0 {
            0.0
        } else {
            100.0 * (sent - received) as f64 / sent as f64
        },
        started.elapsed().as_millis()
    );
    if let Some((min, avg, max, jitter)) = rtt_stats(&samples) {
        println!("rtt min/avg/max/jitter = {min:.3}/{avg:.3}/{max:.3}/{jitter:.3} ms");
    }
    if interrupted {
        Ok(exit::INTERRUPTED)
    } else if received == 0 {
        Err(coded(exit::TIMEOUT, format!("no answer from {name}")))
    } else {
        Ok(0)
    }
}

/// Asks the node at `addr` for its status.
async fn status(
    addr: &str,
    access: Access<'_>,
    timeout: Duration,
) -> Result<(StatusResponse, NodeId)> {
    let target: SocketAddr = match addr.parse() {
        Ok(addr) => addr,
        Err(_) => tokio::net::lookup_host(addr)
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| {
                coded(
                    exit::ADDRESS,
                    format!("cannot resolve `{addr}` (expected host:port)"),
                )
            })?,
    };
    let local = if target.is_ipv4() {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    };
    let me = access.me;
    let security = access.security.clone();
    let network_id = access.network_id;
    let hello = Hello {
        node_id: me,
        name: "chaski-peers".to_owned(),
        listen_addrs: Vec::new(),
        subscriptions: Vec::new(),
        capabilities: Capabilities::NONE,
        auth: None,
        timestamp_micros: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64),
        network_id: network_id.to_owned(),
        incarnation: 0,
    };
    let config = transport::Config::builder()
        .security(security)
        .udp(false)
        .connect_timeout(timeout)
        .handshake_timeout(timeout)
        .build()
        .context("transport settings")?;
    let (endpoint, mut events) = Endpoint::bind(local, hello, config)
        .await
        .context("cannot open a local endpoint")?;
    let ask = async {
        let connection = endpoint.connect(target).await.map_err(|err| match err {
            transport::Error::Handshake {
                source: transport::HandshakeError::PlaintextPeer,
                ..
            } => coded(
                exit::FAILURE,
                format!(
                    "{target} speaks plain TCP (it runs with insecure plaintext): add \
                     --insecure-plaintext to reach it"
                ),
            ),
            transport::Error::Handshake {
                source: transport::HandshakeError::Refused { ref message, .. },
                ..
            } if message.contains("requires TLS") => coded(
                exit::FAILURE,
                format!("{target} requires TLS: drop --insecure-plaintext"),
            ),
            transport::Error::Handshake { ref source, .. } => {
                match credentials_hint(source.cause()) {
                    Some(hint) => coded(exit::FAILURE, format!("{target}: {source}: {hint}")),
                    None => coded(
                        exit::FAILURE,
                        format!("{target} does not speak the chaski protocol ({err})"),
                    ),
                }
            }
            err => coded(exit::ADDRESS, err.to_string()),
        })?;
        // A node that refuses us (another network) may close the connection
        // before the request is written; the `Closed` event that follows
        // carries its reason, so a failed send is only the last resort.
        let send_error = connection
            .send(Frame::StatusRequest(StatusRequest { request_id: 1 }))
            .await
            .err();
        while let Some(event) = events.recv().await {
            match event {
                transport::Event::Frames { frames, .. } => {
                    for frame in frames {
                        if let Frame::StatusResponse(response) = frame {
                            if response.request_id == 1 {
                                connection
                                    .close(chaski::wire::GoodbyeReason::Shutdown, "done")
                                    .await;
                                return Ok(response);
                            }
                        }
                    }
                }
                transport::Event::Closed { reason, .. } => {
                    let hint = if matches!(
                        reason,
                        transport::CloseReason::Goodbye {
                            reason: chaski::wire::GoodbyeReason::Unauthorized,
                            ..
                        }
                    ) {
                        " (unauthorized: a node answers only tools on its own host, unless \
                         started with status_from_anywhere; or it is another network: give its \
                         --network-id)"
                    } else {
                        ""
                    };
                    return Err(coded(
                        exit::FAILURE,
                        format!(
                            "{target} closed the connection without answering{hint}: {reason:?}"
                        ),
                    ));
                }
                _ => {}
            }
        }
        Err(coded(
            exit::FAILURE,
            match send_error {
                Some(e) => format!("cannot send to {target}: {e}"),
                None => "the local endpoint stopped".to_owned(),
            },
        ))
    };
    let result = tokio::time::timeout(timeout, ask).await;
    endpoint.shutdown().await;
    match result {
        Ok(response) => Ok((response?, me)),
        Err(_) => Err(coded(
            exit::TIMEOUT,
            format!("no status from {target} within {timeout:?}"),
        )),
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

fn ms(d: Duration) -> String {
    if d.is_zero() {
        "-".to_owned()
    } else {
        format!("{:.3}", d.as_secs_f64() * 1e3)
    }
}

fn topics(list: &[chaski::Topic]) -> String {
    if list.is_empty() {
        "-".to_owned()
    } else {
        list.iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The status as JSON.
pub(crate) fn to_json(status: &StatusResponse) -> serde_json::Value {
    let info = |p: &chaski::wire::PeerInfo| {
        json!({
            "id": p.node_id.to_string(),
            "name": p.name,
            "listen_addrs": p.listen_addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "subscriptions": p.subscriptions.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
            "relay": p.capabilities.contains(Capabilities::RELAY),
        })
    };
    json!({
        "node": info(&status.node),
        "uptime_ms": status.uptime.as_millis() as u64,
        "isolated_topics": status.isolated_topics.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
        "peers": status.peers.iter().map(|p| {
            let mut peer = info(&p.peer);
            peer["remote_addr"] = json!(p.remote_addr.map(|a| a.to_string()));
            peer["outbound"] = json!(p.outbound);
            peer["srtt_us"] = json!(micros(p.srtt));
            peer["rttvar_us"] = json!(micros(p.rttvar));
            peer["min_rtt_us"] = json!(micros(p.min_rtt));
            peer["paired_topics"] = json!(p.paired_topics.iter().map(|t| t.as_str()).collect::<Vec<_>>());
            peer["discovered_via"] = json!(p.discovered_via);
            peer["connected_for_ms"] = json!(p.connected_for.as_millis() as u64);
            peer["frames_in"] = json!(p.frames_in);
            peer["frames_out"] = json!(p.frames_out);
            peer["bytes_in"] = json!(p.bytes_in);
            peer["bytes_out"] = json!(p.bytes_out);
            peer
        }).collect::<Vec<_>>(),
    })
}

/// The status as an aligned table.
pub(crate) fn to_table(status: &StatusResponse) -> String {
    let mut out = String::new();
    let node = &status.node;
    let _ = writeln!(
        out,
        "node {} ({}) on {}, up {:.1} s, subscriptions {}, {} peers",
        node.name,
        node.node_id.short(),
        node.listen_addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        status.uptime.as_secs_f64(),
        topics(&node.subscriptions),
        status.peers.len()
    );
    if !status.isolated_topics.is_empty() {
        let _ = writeln!(out, "isolated topics: {}", topics(&status.isolated_topics));
    }
    let rows: Vec<[String; 8]> = status
        .peers
        .iter()
        .map(|p| {
            [
                p.peer.name.clone(),
                p.peer.node_id.short().to_string(),
                p.peer
                    .listen_addrs
                    .first()
                    .copied()
                    .or(p.remote_addr)
                    .map_or_else(|| "-".to_owned(), |a| a.to_string()),
                topics(&p.peer.subscriptions),
                ms(p.srtt),
                ms(p.rttvar),
                topics(&p.paired_topics),
                p.discovered_via.clone(),
            ]
        })
        .collect();
    let header = [
        "NAME",
        "ID",
        "ADDRESS",
        "SUBSCRIPTIONS",
        "RTT ms",
        "JITTER ms",
        "PAIRED",
        "VIA",
    ]
    .map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

/// The status as a Graphviz graph: the node, its peers, an edge per connection labelled with
/// the paired topics and the round trip (dashed when no topic is paired).
pub(crate) fn to_dot(status: &StatusResponse) -> String {
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out = String::from("graph chaski {\n  node [shape=box, style=rounded];\n");
    let me = &status.node;
    let _ = writeln!(
        out,
        "  \"{}\" [label=\"{}\\n{}\", style=\"rounded,bold\"];",
        me.node_id,
        quote(&me.name),
        me.node_id.short()
    );
    for p in &status.peers {
        let _ = writeln!(
            out,
            "  \"{}\" [label=\"{}\\n{}\"];",
            p.peer.node_id,
            quote(&p.peer.name),
            topics(&p.peer.subscriptions)
        );
        let label = format!("{} {} ms", topics(&p.paired_topics), ms(p.srtt));
        let style = if p.paired_topics.is_empty() {
            ", style=dashed"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  \"{}\" -- \"{}\" [label=\"{}\"{style}];",
            me.node_id,
            p.peer.node_id,
            quote(&label)
        );
    }
    out.push_str("}\n");
    out
}

/// What to change when a handshake was refused for the credentials (by its
/// [`HandshakeError::cause`](transport::HandshakeError::cause) label), if it was.
pub(crate) fn credentials_hint(cause: &str) -> Option<&'static str> {
    Some(match cause {
        "wrong_network_key" => "give the network's key (--network-key-file)",
        "unknown_ca" => "give the CA certificate of the node's network (--ca)",
        "self_signed" => "the node runs an open network: drop --network-key and --ca",
        "certificate_expired" => "the node's certificate must be renewed",
        "certificate_revoked" => "the node is on the deny list (--deny)",
        "certificate_refused" => {
            "give the network's key (--network-key-file), or its CA (--ca) and an --identity it issued"
        }
        _ => return None,
    })
}

/// `chaski peers`.
pub(crate) async fn peers(cmd: PeersCommand) -> Result<u8> {
    // As for every setting, the environment overrides the flags.
    let mut settings = cmd.credentials.settings();
    settings.network_id = cmd.network_id.clone();
    settings.overlay(Settings::from_env(|name| std::env::var(name).ok())?);
    let network_id = settings.network_id.clone().unwrap_or_default();
    let (me, security) = settings.tool_security()?;
    let access = Access {
        network_id: &network_id,
        me,
        security: &security,
    };
    let (mut status, me) = status(&cmd.addr, access, cmd.timeout).await?;
    // This command's own connection is not one of the node's peers.
    status.peers.retain(|p| p.peer.node_id != me);
    let text = match cmd.format {
        PeersFormat::Table => to_table(&status),
        PeersFormat::Json => format!("{:#}\n", to_json(&status)),
        PeersFormat::Dot => to_dot(&status),
    };
    print!("{text}");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_statistics_are_min_avg_max_and_mean_consecutive_difference() {
        let samples = [1.0, 3.0, 2.0].map(|ms| Duration::from_secs_f64(ms / 1e3));
        let (min, avg, max, jitter) = rtt_stats(&samples).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(
            close(min, 1.0) && close(avg, 2.0) && close(max, 3.0),
            "{min} {avg} {max}"
        );
        assert!(close(jitter, 1.5), "{jitter}");
        assert_eq!(rtt_stats(&[]), None);
    }
}
