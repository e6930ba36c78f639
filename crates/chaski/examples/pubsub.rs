//! Publish/subscribe between three nodes on loopback, bootstrapped through a relay (the
//! original's demo): the two nodes that share a topic pair directly, and messages reach only
//! subscribers.
//!
//! `cargo run --example pubsub` — ends by itself after a few seconds.

use std::time::Duration;

use anyhow::{Context, Result};
use chaski::{Node, NodeEvent, membership::Event};

#[tokio::main]
async fn main() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(30), run())
        .await
        .context("the example took too long")?
}

async fn run() -> Result<()> {
    // LAN discovery stays off so that the example finds only its own nodes.
    let root = Node::builder()
        .name("root")
        .relay(true)
        .lan_discovery(false)
        .build()
        .await?;
    let seed = root.local_addr().to_string();
    println!("relay `root` listens on {seed}");

    let alice = Node::builder()
        .name("alice")
        .subscribe(["news"])
        .seeds([&seed])
        .lan_discovery(false)
        .build()
        .await?;
    let bob = Node::builder()
        .name("bob")
        .subscribe(["news"])
        .seeds([&seed])
        .lan_discovery(false)
        .build()
        .await?;
    let carol = Node::builder()
        .name("carol")
        .subscribe(["weather"])
        .seeds([&seed])
        .lan_discovery(false)
        .build()
        .await?;

    // Watch alice's events until she is paired with bob on "news".
    let mut events = alice.events();
    while !alice
        .peers()
        .iter()
        .any(|p| p.id == bob.id() && p.paired_topics.iter().any(|t| t == "news"))
    {
        if let Some(NodeEvent::Membership(event)) = events.recv().await {
            match event {
                Event::PeerUp { peer, source, .. } => println!(
                    "alice: peer {} up (found via {})",
                    peer.short(),
                    source.as_str()
                ),
                Event::Paired { topic, peer } => {
                    println!("alice: paired with {} on {topic}", peer.short())
                }
                _ => {}
            }
        }
    }

    let mut at_bob = bob.stream();
    for i in 1..=3 {
        alice.publish("news", format!("headline {i}")).await?;
    }
    for _ in 0..3 {
        let message = at_bob.recv().await.context("bob's stream ended")?;
        println!(
            "bob received {:?} on {} from {}",
            String::from_utf8_lossy(&message.payload),
            message.topic,
            message.publisher_name.as_deref().unwrap_or("?")
        );
    }
    carol.flush().await?;
    println!(
        "carol (weather only) saw {} news messages",
        carol.stats().messages_in
    );

    for node in [alice, bob, carol, root] {
        node.shutdown().await?;
    }
    Ok(())
}
