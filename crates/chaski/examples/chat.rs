//! A small chat: three participants on loopback exchange lines on the `chat` topic; each prints
//! what the others say. With `--interactive`, lines typed on standard input are sent as a fourth
//! participant until end of input.
//!
//! `cargo run --example chat` — a scripted conversation that ends by itself.

use std::time::Duration;

use anyhow::{Context, Result};
use chaski::{MessageStream, Node};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> Result<()> {
    let interactive = std::env::args().any(|a| a == "--interactive");
    let limit = if interactive {
        Duration::from_secs(3600)
    } else {
        Duration::from_secs(30)
    };
    tokio::time::timeout(limit, run(interactive))
        .await
        .context("the chat took too long")?
}

fn print_incoming(who: &'static str, mut stream: MessageStream) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(message) = stream.recv().await {
            let from = message.publisher_name.as_deref().unwrap_or("?");
            if from != who {
                println!(
                    "  [{who} sees] {from}: {}",
                    String::from_utf8_lossy(&message.payload)
                );
            }
        }
    })
}

async fn run(interactive: bool) -> Result<()> {
    let ana = Node::builder()
        .name("ana")
        .subscribe(["chat"])
        .lan_discovery(false)
        .build()
        .await?;
    let seed = ana.local_addr().to_string();
    let ben = Node::builder()
        .name("ben")
        .subscribe(["chat"])
        .seeds([&seed])
        .lan_discovery(false)
        .build()
        .await?;
    let cai = Node::builder()
        .name("cai")
        .subscribe(["chat"])
        .seeds([&seed])
        .lan_discovery(false)
        .build()
        .await?;
    for node in [&ana, &ben, &cai] {
        node.wait_peers(|peers| {
            peers
                .iter()
                .any(|p| p.paired_topics.iter().any(|t| t == "chat"))
        })
        .await?;
    }
    let printers = vec![
        print_incoming("ana", ana.stream()),
        print_incoming("ben", ben.stream()),
        print_incoming("cai", cai.stream()),
    ];

    let script = [
        (&ana, "hi all"),
        (&ben, "hello ana"),
        (&cai, "hey! what's new?"),
        (&ana, "chaski works"),
    ];
    for (node, line) in script {
        node.publish("chat", line).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if interactive {
        let me = Node::builder()
            .name("you")
            .subscribe(["chat"])
            .seeds([&seed])
            .lan_discovery(false)
            .build()
            .await?;
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = lines.next_line().await? {
            me.publish("chat", line).await?;
        }
        me.shutdown().await?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for node in [ana, ben, cai] {
        node.shutdown().await?;
    }
    for printer in printers {
        printer.await?;
    }
    Ok(())
}
