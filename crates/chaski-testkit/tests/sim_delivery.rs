//! Delivery under faults, in the simulator: with frames lost and retransmitted, partitions,
//! and crashes of other nodes, every message of every publisher reaches every subscriber that
//! stayed up, exactly once and in order, and nothing is reported missed (the caches hold far
//! more than the run publishes); with a cache smaller than an outage, what did not arrive is
//! reported missed with its exact range.

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use chaski_membership::{Config, Event};
use chaski_testkit::sim::{Sim, SimConfig};
use chaski_wire::{NodeId, Topic};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Fault {
    /// Crash a node that neither publishes nor is checked.
    Crash { node: usize, at_ms: u64 },
    /// Split the nodes in two for a while.
    Partition { split: u64, at_ms: u64, for_ms: u64 },
}

#[derive(Debug, Clone)]
struct Scenario {
    seed: u64,
    /// Per node: its topics (bit set over two topics, never empty).
    nodes: Vec<u8>,
    faults: Vec<Fault>,
    /// Probability that a frame is lost once on its link (then retransmitted late).
    loss: f64,
}

/// `longest`: the longest partition, in milliseconds.
fn scenario(longest: u64) -> impl Strategy<Value = Scenario> {
    (
        any::<u64>(),
        prop::collection::vec(1u8..4, 4..=16),
        prop::collection::vec(
            prop_oneof![
                (0usize..16, 0u64..4_000).prop_map(|(node, at_ms)| Fault::Crash { node, at_ms }),
                (any::<u64>(), 0u64..4_000, 100u64..longest).prop_map(|(split, at_ms, for_ms)| {
                    Fault::Partition {
                        split,
                        at_ms,
                        for_ms,
                    }
                }),
            ],
            0..4,
        ),
        prop_oneof![Just(0.0), Just(0.01), Just(0.05)],
    )
        .prop_map(|(seed, nodes, faults, loss)| Scenario {
            seed,
            nodes,
            faults,
            loss,
        })
}

fn topic(t: usize) -> Topic {
    Topic::new(&format!("topic{t}")).unwrap()
}

fn node_config(
    id: NodeId,
    addr: std::net::SocketAddr,
    relay: std::net::SocketAddr,
    bits: u8,
    cache: usize,
) -> Config {
    let mut b = Config::builder(id)
        .listen_addr(addr)
        .seed(relay)
        .lan_discovery(false)
        .cache_messages(cache);
    for t in 0..2 {
        if bits & (1 << t) != 0 {
            b = b.subscribe(topic(t));
        }
    }
    b.build().unwrap()
}

/// Publishing 20 ms apart for 5 s from the first two nodes, with the faults; then settling.
/// Returns the simulator, the nodes that stayed up, and what each publisher sent per topic.
#[allow(clippy::type_complexity)]
fn run(s: &Scenario, cache: usize) -> (Sim, Vec<usize>, HashMap<(usize, Topic), u64>) {
    let mut sim = Sim::new(SimConfig {
        seed: s.seed,
        link_loss: s.loss,
        ..SimConfig::default()
    });
    let relay = sim.add_node(|id, a| {
        Config::builder(id)
            .listen_addr(a)
            .relay(true)
            .lan_discovery(false)
            .cache_messages(cache)
            .build()
            .unwrap()
    });
    let relay_addr = Sim::addr_of(relay);
    let nodes: Vec<usize> = s
        .nodes
        .iter()
        .map(|&bits| sim.add_node(|id, a| node_config(id, a, relay_addr, bits, cache)))
        .collect();
    assert!(
        sim.run_until_quiet(Duration::from_secs(3), sim.now() + Duration::from_secs(120))
            .is_some(),
        "no convergence"
    );
    let publishers = [nodes[0], nodes[1]];
    let mut sent: HashMap<(usize, Topic), u64> = HashMap::new();
    let publish = |sim: &mut Sim, sent: &mut HashMap<(usize, Topic), u64>| {
        for &p in &publishers {
            let topics: Vec<Topic> = sim.node(p).unwrap().subscriptions().cloned().collect();
            for t in topics {
                sim.publish(p, &t, Bytes::from_static(b"m"));
                *sent.entry((p, t)).or_default() += 1;
            }
        }
    };
    // Every stream starts before the faults: a subscriber knows where each begins.
    publish(&mut sim, &mut sent);
    sim.run_for(Duration::from_secs(1));
    let start = sim.now();
    let mut crashed = Vec::new();
    let mut faults: Vec<(u64, usize)> = s
        .faults
        .iter()
        .enumerate()
        .map(|(i, f)| match f {
            Fault::Crash { at_ms, .. } | Fault::Partition { at_ms, .. } => (*at_ms, i),
        })
        .collect();
    faults.sort_unstable();
    let mut faults = faults.into_iter().peekable();
    let mut heal_at = None;
    for round in 0..250u64 {
        let now_ms = round * 20;
        while let Some(&(at, i)) = faults.peek() {
            if at > now_ms {
                break;
            }
            faults.next();
            match s.faults[i] {
                Fault::Crash { node, .. } => {
                    // Never a publisher.
                    let victim = nodes[2 + node % (nodes.len() - 2)];
                    sim.crash(victim);
                    crashed.push(victim);
                }
                Fault::Partition { split, for_ms, .. } => {
                    // One partition at a time: a new one heals the last first.
                    sim.heal();
                    heal_at = None;
                    let (a, b): (Vec<usize>, Vec<usize>) =
                        (0..sim.len()).partition(|&i| split >> (i % 64) & 1 == 0);
                    sim.partition(&[&a, &b]);
                    let end = sim.now() + Duration::from_millis(for_ms);
                    heal_at = Some(heal_at.map_or(end, |h: chaski_membership::Instant| h.max(end)));
                }
            }
        }
        if heal_at.is_some_and(|h| h <= sim.now()) {
            sim.heal();
            heal_at = None;
        }
        publish(&mut sim, &mut sent);
        sim.run_until(start + Duration::from_millis(now_ms + 20));
    }
    if let Some(h) = heal_at {
        sim.run_until(h);
    }
    sim.heal();
    sim.run_for(Duration::from_secs(20));
    let up = nodes
        .iter()
        .copied()
        .filter(|n| !crashed.contains(n))
        .collect();
    (sim, up, sent)
}

/// For node `r`: the sequences it delivered of each (publisher, topic), in delivery order.
fn delivered(sim: &Sim, r: usize) -> HashMap<(NodeId, Topic), Vec<u64>> {
    let mut out: HashMap<(NodeId, Topic), Vec<u64>> = HashMap::new();
    for d in sim
        .deliveries()
        .iter()
        .filter(|d| d.node == r && d.hops > 0)
    {
        out.entry((d.publisher, d.topic.clone()))
            .or_default()
            .push(d.sequence);
    }
    out
}

/// The ranges node `r` reported missed, per (publisher, topic), in the order reported.
fn missed(sim: &Sim, r: usize) -> HashMap<(NodeId, Topic), Vec<(u64, u64)>> {
    let mut out: HashMap<(NodeId, Topic), Vec<(u64, u64)>> = HashMap::new();
    for (_, e) in sim.events(r) {
        if let Event::Missed {
            publisher,
            topic,
            first,
            last,
            ..
        } = e
        {
            out.entry((*publisher, topic.clone()))
                .or_default()
                .push((*first, *last));
        }
    }
    out
}

fn check_all_in_order(s: &Scenario) -> Result<(), TestCaseError> {
    let (sim, up, sent) = run(s, 65_536);
    for &r in &up {
        let got = delivered(&sim, r);
        let lost = missed(&sim, r);
        prop_assert!(lost.is_empty(), "node {r} reported missed: {lost:?}");
        for ((p, t), &count) in &sent {
            if *p == r || !sim.node(r).unwrap().wants(t) {
                continue;
            }
            let id = sim.node(*p).unwrap().node_id();
            let seqs = got.get(&(id, t.clone())).cloned().unwrap_or_default();
            let all: Vec<u64> = (1..=count).collect();
            prop_assert_eq!(
                &seqs,
                &all,
                "node {} from node {} on {}: {} of {}",
                r,
                p,
                t,
                seqs.len(),
                count
            );
        }
    }
    Ok(())
}

/// Partitions that end before a gap they open is given up, or outlast the peer timeout: each
/// sequence is delivered once, or reported missed once, never both, never neither; what is
/// delivered on time comes in order.
fn check_nothing_silent(s: &Scenario) -> Result<(), TestCaseError> {
    let (sim, up, sent) = run(s, 65_536);
    for &r in &up {
        let got = delivered(&sim, r);
        let lost = missed(&sim, r);
        for ((p, t), &count) in &sent {
            if *p == r || !sim.node(r).unwrap().wants(t) {
                continue;
            }
            let id = sim.node(*p).unwrap().node_id();
            let seqs = got.get(&(id, t.clone())).cloned().unwrap_or_default();
            let ranges = lost.get(&(id, t.clone())).cloned().unwrap_or_default();
            let mut seen = vec![0u8; count as usize + 1];
            for &q in &seqs {
                seen[q as usize] += 1;
            }
            for &(a, b) in &ranges {
                for q in a..=b {
                    // A message reported missed that still came later is delivered late.
                    seen[q as usize] = seen[q as usize].max(1);
                }
            }
            prop_assert!(
                seen[1..].iter().all(|&n| n == 1),
                "node {} from node {} on {}: delivered {:?}, missed {:?}",
                r,
                p,
                t,
                seqs,
                ranges
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, max_shrink_iters: 64, ..ProptestConfig::default() })]

    /// Partitions shorter than half the gap timeout: nothing can be missed.
    #[test]
    fn every_subscriber_that_stayed_up_gets_every_message_once_in_order(s in scenario(500)) {
        check_all_in_order(&s)?;
    }

    /// Partitions of up to 5 s (beyond the gap timeout and the peer timeout).
    #[test]
    fn through_long_partitions_every_message_is_delivered_or_reported_missed(s in scenario(5_000)) {
        check_nothing_silent(&s)?;
    }
}

/// A partition longer than a tiny cache lasts: the far side gets what the caches still hold,
/// and the rest reported missed, each sequence exactly once (delivered or in one range), in
/// order.
#[test]
fn what_the_caches_no_longer_hold_is_reported_missed_with_its_exact_range() {
    let s = Scenario {
        seed: 7,
        nodes: vec![1, 1, 1, 1, 1, 1, 1, 1],
        // Nodes 0..=4 (the relay, both publishers and two more) on one side, the rest on the
        // other, for 3 s.
        faults: vec![Fault::Partition {
            split: !0b11111,
            at_ms: 500,
            for_ms: 3_000,
        }],
        loss: 0.0,
    };
    let (sim, up, sent) = run(&s, 20);
    let mut total_missed = 0;
    for &r in &up {
        let got = delivered(&sim, r);
        let lost = missed(&sim, r);
        for ((p, t), &count) in &sent {
            if *p == r {
                continue;
            }
            let id = sim.node(*p).unwrap().node_id();
            let seqs = got.get(&(id, t.clone())).cloned().unwrap_or_default();
            let ranges = lost.get(&(id, t.clone())).cloned().unwrap_or_default();
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "node {r}: out of order"
            );
            let mut covered: Vec<(u64, u64)> = seqs.iter().map(|&q| (q, q)).collect();
            covered.extend(&ranges);
            covered.sort_unstable();
            let mut next = 1;
            for (first, last) in covered {
                assert_eq!(first, next, "node {r} from {p}: {ranges:?}");
                next = last + 1;
            }
            assert_eq!(next, count + 1, "node {r} from {p}: stopped short");
            total_missed += ranges.iter().map(|(a, b)| b - a + 1).sum::<u64>();
        }
    }
    assert!(
        total_missed > 0,
        "a 20-message cache covered a 3 s partition"
    );
}
