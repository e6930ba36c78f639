//! End-to-end load tests over real loopback sockets: many nodes, many messages. A binary of its
//! own, so that these do not starve the timing-sensitive tests in `node.rs` of CPU.

mod common;

use std::{collections::HashMap, time::Duration};

use anyhow::{Context, Result, ensure};
use chaski::{MessageStream, Node, NodeId, Overflow, StreamOptions};
use common::{Member, bounded, builder, next, start, until_connected, until_peers};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_through_one_relay_deliver_every_message_once_in_order() -> Result<()> {
    bounded("twenty nodes", async {
        const TOPICS: [&str; 4] = ["t0", "t1", "t2", "t3"];
        const PER_NODE: u64 = 20;
        let relay = start(builder("relay", &[]).relay(true)).await?;
        let seed = relay.local_addr().to_string();
        let mut nodes = Vec::new();
        for i in 0..20 {
            let topic = TOPICS[i % 4];
            let node = start(
                builder(&format!("n{i}"), &[topic])
                    .max_connections(5)
                    .seeds([seed.clone()]),
            )
            .await?;
            nodes.push((node, topic));
        }
        let all: Vec<Node> = nodes
            .iter()
            .map(|(n, _)| n.clone())
            .chain([relay.clone()])
            .collect();
        let members: Vec<Member> = nodes
            .iter()
            .map(|(node, topic)| Member {
                node: node.clone(),
                topics: vec![topic.to_string()],
            })
            .chain([Member {
                node: relay.clone(),
                topics: Vec::new(),
            }])
            .collect();
        until_connected(&members, &TOPICS).await?;

        let mut streams: Vec<MessageStream> = nodes.iter().map(|(n, _)| n.stream()).collect();
        for (node, topic) in &nodes {
            for seq in 0..PER_NODE {
                node.publish(*topic, seq.to_string()).await?;
            }
        }
        // Each node receives every message of the 4 others on its topic, once, in order.
        for (i, stream) in streams.iter_mut().enumerate() {
            let (me, topic) = &nodes[i];
            let mut next_expected: HashMap<NodeId, u64> = nodes
                .iter()
                .filter(|(n, t)| t == topic && n.id() != me.id())
                .map(|(n, _)| (n.id(), 0))
                .collect();
            let mut own = 0;
            let total = PER_NODE as usize * 5;
            for _ in 0..total {
                let message = next(stream).await?;
                if message.publisher == me.id() {
                    own += 1;
                    continue;
                }
                let expected = next_expected
                    .get_mut(&message.publisher)
                    .context("a message from a non-subscriber")?;
                assert_eq!(
                    message.payload,
                    expected.to_string(),
                    "out of order or duplicated at {}",
                    me.name()
                );
                *expected += 1;
            }
            assert_eq!(
                own, PER_NODE,
                "a node receives its own publications once each"
            );
            assert!(next_expected.values().all(|&n| n == PER_NODE));
            assert!(
                stream.try_recv().is_none(),
                "a message was delivered twice at {}",
                me.name()
            );
        }
        for node in &all {
            node.shutdown().await?;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_to_ten_subscribers_loses_nothing_under_block() -> Result<()> {
    bounded("fan-out", async {
        const COUNT: u64 = 100_000;
        let publisher = start(builder("publisher", &["firehose"]).max_connections(10)).await?;
        let seed = publisher.local_addr().to_string();
        let mut subscribers = Vec::new();
        for i in 0..10 {
            let node = start(
                builder(&format!("s{i}"), &["firehose"])
                    .max_connections(10)
                    .seeds([seed.clone()]),
            )
            .await?;
            subscribers.push(node);
        }
        until_peers(&publisher, |peers| {
            peers
                .iter()
                .filter(|p| p.paired_topics.iter().any(|t| t == "firehose"))
                .count()
                == 10
        })
        .await?;

        let readers: Vec<_> = subscribers
            .iter()
            .map(|node| {
                let mut stream = node.stream_with(
                    StreamOptions::new()
                        .capacity(1024)
                        .overflow(Overflow::Block),
                );
                let publisher = publisher.id();
                tokio::spawn(async move {
                    // Exactly once each and in the publisher's order: streams are ordered by
                    // default, whichever path each copy took.
                    for expected in 0..COUNT {
                        let message = next(&mut stream).await?;
                        ensure!(message.publisher == publisher);
                        let n: u64 = std::str::from_utf8(&message.payload)?.parse()?;
                        ensure!(
                            n == expected,
                            "message {n} delivered where {expected} was due"
                        );
                    }
                    ensure!(stream.dropped() == 0);
                    anyhow::Ok(())
                })
            })
            .collect();
        for n in 0..COUNT {
            publisher.publish("firehose", n.to_string()).await?;
        }
        for (reader, node) in readers.into_iter().zip(&subscribers) {
            // A lost message would leave its reader waiting: say which node, with its counters.
            tokio::time::timeout(Duration::from_secs(30), reader)
                .await
                .with_context(|| {
                    format!(
                        "{} still waits for messages: {:?}",
                        node.name(),
                        node.stats()
                    )
                })???;
        }
        for node in subscribers.iter().chain([&publisher]) {
            node.shutdown().await?;
        }
        Ok(())
    })
    .await
}
