//! Discovery on the LAN: nodes given no address at all find each other through UDP multicast
//! beacons and pair on their shared topic.
//!
//! The beacons go out on the interface of the listening address, here loopback, so nothing leaves
//! the machine. A random discovery port keeps this example apart from other Chaski nodes.
//!
//! `cargo run --example lan_discovery` — ends by itself within seconds.

use std::time::Duration;

use anyhow::{Context, Result};
use chaski::Node;

#[tokio::main]
async fn main() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(30), run())
        .await
        .context("discovery took too long")?
}

async fn run() -> Result<()> {
    let port = 20_000 + (std::process::id() % 20_000) as u16;
    let network = format!("example-{}", std::process::id());
    let mut nodes = Vec::new();
    for name in ["north", "south", "east"] {
        let node = Node::builder()
            .name(name)
            .listen("127.0.0.1:0")
            .subscribe(["telemetry"])
            .lan_port(port)
            .network_id(network.as_str())
            .build()
            .await?;
        println!(
            "{name} listens on {} and announces itself on 127.0.0.1, group port {port}",
            node.local_addr()
        );
        nodes.push(node);
    }
    // Wait until every node has found the two others.
    for node in &nodes {
        node.wait_peers(|peers| peers.len() >= 2).await?;
        let names: Vec<String> = node
            .peers()
            .iter()
            .map(|p| format!("{} (via {})", p.name, p.source.as_str()))
            .collect();
        println!("{} found {}", node.name(), names.join(", "));
    }
    for node in nodes {
        node.shutdown().await?;
    }
    Ok(())
}
