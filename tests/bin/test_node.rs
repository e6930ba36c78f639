//! A Chaski node in its own process, for end-to-end tests that kill and restart a node.
//!
//! `chaski-test-node LISTEN NAME TOPIC [SEED]`: listens on LISTEN, subscribes to TOPIC, dials
//! SEED if given, prints `ready <node id> <address>` on stdout, then publishes a message on TOPIC
//! every 10 ms (payload: a counter) until it is killed or its standard input closes, for at most
//! 10 minutes.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use chaski::Node;
use tokio::io::AsyncReadExt;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, name, topic, seed) = match args.as_slice() {
        [listen, name, topic] => (listen, name, topic, None),
        [listen, name, topic, seed] => (listen, name, topic, Some(seed)),
        _ => bail!("usage: chaski-test-node LISTEN NAME TOPIC [SEED]"),
    };
    let mut builder = Node::builder()
        .name(name.as_str())
        .listen(listen.as_str())
        .subscribe([topic.as_str()])
        .lan_discovery(false);
    if let Some(seed) = seed {
        builder = builder.seeds([seed.as_str()]);
    }
    let node = builder.build().await.context("starting the node")?;
    println!("ready {} {}", node.id(), node.local_addr());

    let publish = async {
        let mut ticker = tokio::time::interval(Duration::from_millis(10));
        for counter in 0u64.. {
            ticker.tick().await;
            node.publish(topic.as_str(), counter.to_string()).await?;
        }
        anyhow::Ok(())
    };
    let stdin_closed = async {
        let mut sink = [0u8; 64];
        let mut stdin = tokio::io::stdin();
        while stdin.read(&mut sink).await.map(|n| n > 0).unwrap_or(false) {}
    };
    tokio::select! {
        result = publish => result?,
        () = stdin_closed => {}
        () = tokio::time::sleep(Duration::from_secs(600)) => {}
    }
    node.shutdown().await?;
    Ok(())
}
