//! A latency monitor: two nodes ping each other, with small and large pings, and watch the
//! smoothed round trip, its variation (jitter) and the minimum, as the nodes measure them.
//!
//! `cargo run --example latency_monitor` — ends by itself after about five seconds.

use std::time::Duration;

use anyhow::{Context, Result};
use chaski::Node;

#[tokio::main]
async fn main() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(30), run())
        .await
        .context("the example took too long")?
}

async fn run() -> Result<()> {
    let here = Node::builder()
        .name("here")
        .subscribe(["metrics"])
        .lan_discovery(false)
        .ping_interval(Duration::from_millis(200))
        .build()
        .await?;
    let there = Node::builder()
        .name("there")
        .subscribe(["metrics"])
        .lan_discovery(false)
        .seeds([here.local_addr().to_string()])
        .build()
        .await?;
    let peer = there.id();
    here.wait_peers(|peers| peers.iter().any(|p| p.id == peer))
        .await?;
    println!(
        "{:>6}  {:>12}  {:>12}  {:>12}  {:>12}",
        "round", "ping 0 B", "ping 64 KiB", "srtt", "jitter"
    );
    for round in 1..=10 {
        let small = here.ping(peer).await?;
        let large = here.ping_with_size(peer, 64 * 1024).await?;
        let stats = here
            .peers()
            .into_iter()
            .find(|p| p.id == peer)
            .context("peer gone")?;
        println!(
            "{round:>6}  {:>12?}  {:>12?}  {:>12?}  {:>12?}",
            small, large, stats.rtt.srtt, stats.rtt.rttvar
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    there.shutdown().await?;
    here.shutdown().await?;
    Ok(())
}
