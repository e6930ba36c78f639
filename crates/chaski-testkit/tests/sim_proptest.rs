//! Property tests over random networks: random join orders, subscriptions, crashes, restarts and
//! partitions. Once the network is quiet: no self-connection, no duplicate connection, every
//! table within its bounds, every topic one connected graph, and no message delivered twice.

use std::time::Duration;

use bytes::Bytes;
use chaski_membership::{Config, Instant};
use chaski_testkit::sim::{Sim, SimConfig};
use chaski_wire::Topic;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Fault {
    Crash { node: usize, at_ms: u64 },
    Restart { node: usize, at_ms: u64 },
    Partition { split: u64, at_ms: u64, for_ms: u64 },
}

#[derive(Debug, Clone)]
struct Scenario {
    seed: u64,
    topics: usize,
    /// Per node: topic bit set (non-empty) and the delay before it joins.
    nodes: Vec<(u8, u64)>,
    faults: Vec<Fault>,
    max_connections: usize,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        any::<u64>(),
        1usize..=4,
        prop::collection::vec((1u8..16, 0u64..300), 3..=29),
        prop::collection::vec(
            prop_oneof![
                (0usize..29, 0u64..5_000).prop_map(|(node, at_ms)| Fault::Crash { node, at_ms }),
                (0usize..29, 0u64..5_000).prop_map(|(node, at_ms)| Fault::Restart { node, at_ms }),
                (any::<u64>(), 0u64..5_000, 100u64..8_000).prop_map(|(split, at_ms, for_ms)| {
                    Fault::Partition {
                        split,
                        at_ms,
                        for_ms,
                    }
                }),
            ],
            0..3,
        ),
        prop_oneof![Just(2usize), Just(4), Just(5)],
    )
        .prop_map(|(seed, topics, nodes, faults, max_connections)| Scenario {
            seed,
            topics,
            nodes,
            faults,
            max_connections,
        })
}

fn config(
    id: chaski_wire::NodeId,
    addr: std::net::SocketAddr,
    relay: std::net::SocketAddr,
    bits: u8,
    topics: usize,
    max_connections: usize,
) -> Config {
    let mut b = Config::builder(id)
        .listen_addr(addr)
        .seed(relay)
        .lan_discovery(false)
        .max_connections(max_connections)
        .ring_neighbours(max_connections / 2);
    for t in 0..topics {
        if bits & (1 << t) != 0 || (t == 0 && bits as usize % (1 << topics) == 0) {
            b = b.subscribe(Topic::new(&format!("topic{t}")).unwrap());
        }
    }
    b.build().unwrap()
}

fn run(s: &Scenario) -> Result<(), TestCaseError> {
    let mut sim = Sim::new(SimConfig {
        seed: s.seed,
        ..SimConfig::default()
    });
    let relay = sim.add_node(|id, a| {
        Config::builder(id)
            .listen_addr(a)
            .relay(true)
            .lan_discovery(false)
            .build()
            .unwrap()
    });
    let relay_addr = Sim::addr_of(relay);
    let mut nodes = Vec::new();
    for &(bits, delay) in &s.nodes {
        sim.run_for(Duration::from_millis(delay));
        let (topics, max) = (s.topics, s.max_connections);
        nodes.push(sim.add_node(|id, a| config(id, a, relay_addr, bits, topics, max)));
        sim.check_invariants(false).map_err(TestCaseError::fail)?;
    }
    let start = sim.now();
    let mut faults = s.faults.clone();
    faults.sort_by_key(|f| match f {
        Fault::Crash { at_ms, .. }
        | Fault::Restart { at_ms, .. }
        | Fault::Partition { at_ms, .. } => *at_ms,
    });
    let mut heal_at = None;
    for f in &faults {
        match *f {
            Fault::Crash { node, at_ms } => {
                sim.run_until(start + Duration::from_millis(at_ms));
                sim.crash(nodes[node % nodes.len()]);
            }
            Fault::Restart { node, at_ms } => {
                sim.run_until(start + Duration::from_millis(at_ms));
                let i = node % nodes.len();
                let (bits, _) = s.nodes[i];
                let (topics, max) = (s.topics, s.max_connections);
                sim.restart(nodes[i], |id, a| {
                    config(id, a, relay_addr, bits, topics, max)
                });
            }
            Fault::Partition {
                split,
                at_ms,
                for_ms,
            } => {
                sim.run_until(start + Duration::from_millis(at_ms));
                let (a, b): (Vec<usize>, Vec<usize>) =
                    (0..sim.len()).partition(|&i| split >> (i % 64) & 1 == 0);
                sim.partition(&[&a, &b]);
                let end = sim.now() + Duration::from_millis(for_ms);
                heal_at = Some(heal_at.map_or(end, |h: Instant| h.max(end)));
            }
        }
        sim.check_invariants(false).map_err(TestCaseError::fail)?;
    }
    if let Some(h) = heal_at {
        sim.run_until(h);
        sim.heal();
    }
    let quiet = sim.run_until_quiet(Duration::from_secs(5), sim.now() + Duration::from_secs(400));
    if quiet.is_none() {
        let since = sim.now() - Duration::from_secs(10);
        let mut recent = Vec::new();
        for i in 0..sim.len() {
            for (t, e) in sim.events(i) {
                if since <= *t {
                    recent.push(format!("{t:?} node {i}: {e:?}"));
                }
            }
        }
        for d in sim.dials().iter().rev().take(10) {
            recent.push(format!("dial {d:?}"));
        }
        recent.sort();
        recent.truncate(40);
        return Err(TestCaseError::fail(format!(
            "no convergence; recent events:\n{}",
            recent.join("\n")
        )));
    }
    sim.check_invariants(true).map_err(TestCaseError::fail)?;
    sim.check_topics_connected().map_err(TestCaseError::fail)?;
    // Every running subscriber publishes once; every subscriber of the topic gets it once.
    let mut expected = 0;
    for t in sim.topics() {
        let subs = sim.subscribers(&t);
        for &p in &subs {
            sim.publish(p, &t, Bytes::from_static(b"m"));
            expected += subs.len();
        }
    }
    sim.run_for(Duration::from_secs(3));
    sim.check_invariants(true).map_err(TestCaseError::fail)?;
    prop_assert_eq!(sim.deliveries().len(), expected);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_networks_converge_to_connected_topic_graphs(s in scenario()) {
        run(&s)?;
    }
}

#[derive(Debug, Clone)]
struct Chain {
    seed: u64,
    topics: usize,
    /// Per node: topic bit set, which earlier node it uses as its seed, and its join delay.
    nodes: Vec<(u8, usize, u64)>,
    partitions: Vec<(u64, u64, u64)>,
}

fn chain() -> impl Strategy<Value = Chain> {
    (
        any::<u64>(),
        1usize..=4,
        prop::collection::vec((1u8..16, any::<usize>(), 0u64..300), 2..=25),
        prop::collection::vec((any::<u64>(), 0u64..5_000, 100u64..8_000), 0..2),
    )
        .prop_map(|(seed, topics, nodes, partitions)| Chain {
            seed,
            topics,
            nodes,
            partitions,
        })
}

/// Without a relay: each node's only seed is a random earlier node, so subscribers find each
/// other through searches and peer exchange alone; partitions come and go.
fn run_chain(c: &Chain) -> Result<(), TestCaseError> {
    let mut sim = Sim::new(SimConfig {
        seed: c.seed,
        ..SimConfig::default()
    });
    for (i, &(bits, seed_of, delay)) in c.nodes.iter().enumerate() {
        sim.run_for(Duration::from_millis(delay));
        let seed_addr = (i > 0).then(|| Sim::addr_of(seed_of % i));
        let topics = c.topics;
        sim.add_node(|id, a| {
            // The quiet window (5 s) must exceed the component search's longest backoff.
            let mut b = Config::builder(id)
                .listen_addr(a)
                .lan_discovery(false)
                .component_search_max(Duration::from_secs(2));
            if let Some(s) = seed_addr {
                b = b.seed(s);
            }
            for t in 0..topics {
                if bits & (1 << t) != 0 || (t == 0 && bits as usize % (1 << topics) == 0) {
                    b = b.subscribe(Topic::new(&format!("topic{t}")).unwrap());
                }
            }
            b.build().unwrap()
        });
    }
    let start = sim.now();
    let mut parts = c.partitions.clone();
    parts.sort_by_key(|p| p.1);
    for (split, at_ms, for_ms) in parts {
        sim.run_until(start + Duration::from_millis(at_ms));
        let (a, b): (Vec<usize>, Vec<usize>) =
            (0..sim.len()).partition(|&i| split >> (i % 64) & 1 == 0);
        sim.partition(&[&a, &b]);
        sim.run_for(Duration::from_millis(for_ms));
        sim.heal();
        sim.check_invariants(false).map_err(TestCaseError::fail)?;
    }
    let quiet = sim.run_until_quiet(Duration::from_secs(5), sim.now() + Duration::from_secs(400));
    prop_assert!(quiet.is_some(), "no convergence");
    if let Err(e) = sim.check_invariants(true) {
        let mut lines = vec![e.clone()];
        if let Some(pair) = e.strip_prefix("link ").and_then(|r| r.split(' ').next()) {
            for n in pair.split('-').filter_map(|x| x.parse::<usize>().ok()) {
                let id = sim.node(n).map(|m| m.node_id().short()).unwrap_or_default();
                for (t, ev) in sim.events(n) {
                    lines.push(format!("node {n} ({id}) {t:?} {ev:?}"));
                }
            }
        }
        return Err(TestCaseError::fail(lines.join("\n")));
    }
    if let Err(e) = sim.check_topics_connected() {
        let mut lines = vec![e];
        for i in 0..sim.len() {
            let m = sim.node(i).unwrap();
            let subs: Vec<String> = m.subscriptions().map(|t| t.to_string()).collect();
            let known: Vec<String> = m
                .subscriptions()
                .map(|t| {
                    format!(
                        "{t}: {:?}",
                        m.known_subscribers(t)
                            .iter()
                            .map(|n| n.short())
                            .collect::<Vec<_>>()
                    )
                })
                .collect();
            let conns: Vec<String> = m.connected_peers().iter().map(|n| n.short()).collect();
            lines.push(format!(
                "node {i} {} subs {subs:?} conns {conns:?} known {known:?}",
                m.node_id().short()
            ));
        }
        return Err(TestCaseError::fail(lines.join("\n")));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, max_shrink_iters: 64, ..ProptestConfig::default() })]

    #[test]
    fn relay_less_seed_chains_converge(c in chain()) {
        run_chain(&c)?;
    }
}
