//! `cargo xtask bench membership`: the membership simulator at 100, 1,000 and 10,000 nodes.
//!
//! Every node bootstraps through one relay (the seed) and subscribes to 1 to 3 of 50 topics
//! (100 nodes: 5 topics; 10,000 nodes: 500 topics, so that topics keep about 40 subscribers). Nodes join 1 ms of
//! virtual time apart. The run ends once nothing structural happened for 5 s of virtual time.
//! Reported: the virtual time to converge (last structural change after the last join), the wall
//! time of the run (joins and convergence), the control and discovery frames per node from the
//! start until the network was quiet, and the steady-state control frames per node per second,
//! measured over 10 s of virtual time once quiet. Then delivery, as it is today (flooding on each
//! topic's graph): 1% of the nodes (at least 10) publish 10 messages each on one of their topics,
//! and the run reports the relative message redundancy (message frames received per delivery,
//! minus one: 0 is one copy per node), the last delivery hop (the mean over messages of the
//! largest hop count of a delivery) and the deliveries missed (subscribers that did not get a
//! message). Each
//! configuration runs 3 times (different seeds) in normal mode, once in quick mode
//! (`CHASKI_BENCH_QUICK=1`, 100 and 1,000 nodes only).

use std::time::{Duration, Instant as WallInstant};

use chaski_membership::{Broadcast, Config};
use chaski_testkit::{
    bench::{Summary, quick},
    sim::{Sim, SimConfig},
};
use chaski_wire::Topic;

struct Run {
    converge: Duration,
    wall: Duration,
    control_per_node: f64,
    discovery_per_node: f64,
    steady_per_node_s: f64,
    rmr: f64,
    last_hop: f64,
    missed: u64,
}

fn run(nodes: usize, topics: usize, seed: u64, broadcast: Broadcast) -> Run {
    let mut sim = Sim::new(SimConfig {
        seed,
        record_events: false,
        ..SimConfig::default()
    });
    let names: Vec<Topic> = (0..topics)
        .map(|i| Topic::new(&format!("topic/{i}")).expect("topic"))
        .collect();
    let wall = WallInstant::now();
    let relay = sim.add_node(|id, addr| {
        Config::builder(id)
            .listen_addr(addr)
            .relay(true)
            .broadcast(broadcast)
            .lan_discovery(false)
            .max_peers(nodes + 16)
            .max_known_peers(nodes + 16)
            .build()
            .expect("config")
    });
    let seed_addr = Sim::addr_of(relay);
    let mut pick = seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
    let mut next = move || {
        pick ^= pick << 13;
        pick ^= pick >> 7;
        pick ^= pick << 17;
        pick
    };
    let mut subscriptions: Vec<Vec<Topic>> = vec![Vec::new()];
    for _ in 0..nodes {
        let count = 1 + (next() % 3) as usize;
        let mut mine: Vec<Topic> = Vec::new();
        while mine.len() < count {
            let t = names[(next() % topics as u64) as usize].clone();
            if !mine.contains(&t) {
                mine.push(t);
            }
        }
        subscriptions.push(mine.clone());
        sim.add_node(|id, addr| {
            let mut b = Config::builder(id)
                .listen_addr(addr)
                .seed(seed_addr)
                .broadcast(broadcast)
                .lan_discovery(false);
            for t in mine {
                b = b.subscribe(t);
            }
            b.build().expect("config")
        });
        sim.run_for(Duration::from_millis(1));
    }
    let joined = sim.now();
    let deadline = joined + Duration::from_secs(600);
    let last = sim
        .run_until_quiet(Duration::from_secs(5), deadline)
        .expect("the network did not converge within 600 s of virtual time");
    let wall = wall.elapsed();
    if let Err(e) = sim.check_topics_connected() {
        panic!("not converged: {e}");
    }
    let traffic = sim.traffic();
    let steady = Duration::from_secs(10);
    sim.run_for(steady);
    let steady_frames = sim.traffic().control_frames - traffic.control_frames;
    let (rmr, last_hop, missed) = delivery(&mut sim, &subscriptions, &mut next);
    Run {
        rmr,
        last_hop,
        missed,
        steady_per_node_s: steady_frames as f64 / nodes as f64 / steady.as_secs_f64(),
        converge: last.saturating_duration_since(joined),
        wall,
        control_per_node: traffic.control_frames as f64 / nodes as f64,
        discovery_per_node: traffic.discovery_frames as f64 / nodes as f64,
    }
}

/// Publishes from 1% of the nodes (at least 10), 10 messages each, 10 ms apart, twice: the first
/// round lets the trees form (prunes), the second is measured at steady state. Returns (relative
/// message redundancy, last delivery hop, deliveries missed) of the second round, 5 s after it.
fn delivery(
    sim: &mut Sim,
    subscriptions: &[Vec<Topic>],
    next: &mut impl FnMut() -> u64,
) -> (f64, f64, u64) {
    let nodes = subscriptions.len() - 1;
    let publishers: Vec<usize> = (0..(nodes / 100).max(10))
        .map(|_| 1 + (next() % nodes as u64) as usize)
        .collect();
    let round = |sim: &mut Sim| {
        let mut expected = 0u64;
        for _ in 0..10 {
            for &p in &publishers {
                let topic = subscriptions[p][0].clone();
                expected += subscriptions
                    .iter()
                    .enumerate()
                    .filter(|&(i, t)| i != p && t.contains(&topic))
                    .count() as u64;
                sim.publish(p, &topic, bytes::Bytes::from_static(b"m"));
            }
            sim.run_for(Duration::from_millis(10));
        }
        sim.run_for(Duration::from_secs(5));
        expected
    };
    round(sim);
    let received_before = sim.traffic().messages_received;
    let from = sim.deliveries().len();
    let expected = round(sim);
    let received = sim.traffic().messages_received - received_before;
    let mut last_hop: std::collections::HashMap<(chaski_wire::NodeId, u64, Topic), u32> =
        std::collections::HashMap::new();
    let mut delivered = 0u64;
    for d in &sim.deliveries()[from..] {
        if d.hops == 0 {
            continue;
        }
        delivered += 1;
        let hop = last_hop
            .entry((d.publisher, d.sequence, d.topic.clone()))
            .or_default();
        *hop = (*hop).max(d.hops);
    }
    let rmr = received as f64 / delivered.max(1) as f64 - 1.0;
    let mean_last =
        last_hop.values().map(|&h| f64::from(h)).sum::<f64>() / last_hop.len().max(1) as f64;
    (rmr, mean_last, expected.saturating_sub(delivered))
}

fn main() {
    let configs: &[(usize, usize)] = if quick() {
        &[(100, 5), (1_000, 50)]
    } else {
        &[(100, 5), (1_000, 50), (10_000, 500)]
    };
    let repeats = if quick() { 1 } else { 3 };
    println!(
        "{:>6} {:>7} {:>7} {:>14} {:>10} {:>14} {:>16} {:>18} {:>6} {:>9} {:>7}",
        "mode",
        "nodes",
        "topics",
        "converge (s)",
        "wall (s)",
        "control/node",
        "discovery/node",
        "steady/node/s",
        "RMR",
        "last hop",
        "missed"
    );
    for &(nodes, topics) in configs {
        for (mode, broadcast) in [("flood", Broadcast::Flood), ("tree", Broadcast::Tree)] {
            let runs: Vec<Run> = (0..repeats)
                .map(|s| run(nodes, topics, 1 + s, broadcast))
                .collect();
            let med = |f: &dyn Fn(&Run) -> f64| {
                let mut v: Vec<f64> = runs.iter().map(f).collect();
                Summary::of(&mut v).expect("runs").median
            };
            println!(
                "{:>6} {:>7} {:>7} {:>14.3} {:>10.2} {:>14.1} {:>16.1} {:>18.2} {:>6.2} {:>9.2} {:>7}",
                mode,
                nodes,
                topics,
                med(&|r| r.converge.as_secs_f64()),
                med(&|r| r.wall.as_secs_f64()),
                med(&|r| r.control_per_node),
                med(&|r| r.discovery_per_node),
                med(&|r| r.steady_per_node_s),
                med(&|r| r.rmr),
                med(&|r| r.last_hop),
                med(&|r| r.missed as f64),
            );
        }
    }
}
