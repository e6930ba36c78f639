//! Helpers shared by the end-to-end test binaries.
#![allow(dead_code, unreachable_pub)]

use std::{
    collections::{HashMap, HashSet, VecDeque},
    future::Future,
    time::Duration,
};

use anyhow::{Context, Result};
use chaski::{MessageStream, Node, NodeBuilder, NodeId};

/// The longest any test here may take.
pub const LIMIT: Duration = Duration::from_secs(60);

pub async fn bounded<T>(what: &str, future: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(LIMIT, future)
        .await
        .with_context(|| format!("{what}: timed out after {LIMIT:?}"))?
}

/// A node on loopback with LAN discovery off (tests in one process must not find each other).
pub fn builder(name: &str, topics: &[&str]) -> NodeBuilder {
    Node::builder()
        .name(name)
        .lan_discovery(false)
        .subscribe(topics.iter().copied())
}

/// Waits until `done` holds for the node's peer table.
pub async fn until_peers(node: &Node, done: impl FnMut(&[chaski::Peer]) -> bool) -> Result<()> {
    node.wait_peers(done).await?;
    Ok(())
}

/// Waits until `node` is paired with some peer on `topic`.
pub async fn until_paired(node: &Node, topic: &str) -> Result<()> {
    until_peers(node, |peers| {
        peers
            .iter()
            .any(|p| p.paired_topics.iter().any(|t| t == topic))
    })
    .await
}

/// A node and the topics it subscribes to (the peer table shows only the peers' side).
pub struct Member {
    pub node: Node,
    pub topics: Vec<String>,
}

/// Whether the members subscribed to `topic` form one connected graph over their pairing links.
pub fn topic_connected(members: &[Member], topic: &str) -> bool {
    let subscribers: HashSet<NodeId> = members
        .iter()
        .filter(|m| m.topics.iter().any(|t| t == topic))
        .map(|m| m.node.id())
        .collect();
    let links: HashMap<NodeId, Vec<NodeId>> = members
        .iter()
        .map(|m| {
            let paired = m
                .node
                .peers()
                .iter()
                .filter(|p| p.paired_topics.iter().any(|t| t == topic))
                .map(|p| p.id)
                .collect();
            (m.node.id(), paired)
        })
        .collect();
    let Some(&start) = subscribers.iter().next() else {
        return true;
    };
    let mut seen = HashSet::from([start]);
    let mut queue = VecDeque::from([start]);
    while let Some(id) = queue.pop_front() {
        for next in links.get(&id).into_iter().flatten() {
            if subscribers.contains(next) && seen.insert(*next) {
                queue.push_back(*next);
            }
        }
    }
    seen.len() == subscribers.len()
}

pub async fn start(builder: NodeBuilder) -> Result<Node> {
    Ok(builder.build().await?)
}

/// Waits until every topic's subscribers are connected, re-checking on every peer change of any
/// member.
pub async fn until_connected(members: &[Member], topics: &[&str]) -> Result<()> {
    // Watching from before each check, so that no change is missed.
    let mut watches: Vec<_> = members.iter().map(|m| m.node.watch_peers()).collect();
    loop {
        if topics.iter().all(|t| topic_connected(members, t)) {
            return Ok(());
        }
        let changes = watches.iter_mut().map(|w| Box::pin(w.changed()));
        futures_util::future::select_all(changes).await.0?;
    }
}

pub async fn next(stream: &mut MessageStream) -> Result<chaski::Received> {
    stream.recv().await.context("the stream ended")
}
