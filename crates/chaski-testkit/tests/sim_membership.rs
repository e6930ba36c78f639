//! Simulated networks of membership state machines: discovery, pairing, routing, failure
//! detection, reconnection and partitions, all on virtual time.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use chaski_membership::{Config, ConfigBuilder, DownReason, Event, Instant};
use chaski_testkit::sim::{Sim, SimConfig};
use chaski_wire::{NodeId, Topic};

fn at(secs: u64) -> Instant {
    Instant::from_duration(Duration::from_secs(secs))
}

fn base(id: NodeId, addr: SocketAddr) -> ConfigBuilder {
    Config::builder(id)
        .listen_addr(addr)
        .lan_discovery(false)
        .name(format!("n{}", addr.ip()))
}

fn topic(s: &str) -> Topic {
    Topic::new(s).unwrap()
}

/// The original's demo: a bootstrap node and two nodes; the two that share a topic pair
/// directly, and a message reaches only subscribers.
#[test]
fn demo_three_nodes_one_bootstrap() {
    let mut sim = Sim::new(SimConfig::default());
    let root = sim.add_node(|id, a| base(id, a).relay(true).build().unwrap());
    let seed = Sim::addr_of(root);
    let a = sim.add_node(|id, addr| {
        base(id, addr)
            .seed(seed)
            .subscribe(topic("temp"))
            .build()
            .unwrap()
    });
    let b = sim.add_node(|id, addr| {
        base(id, addr)
            .seed(seed)
            .subscribe(topic("temp"))
            .subscribe(topic("other"))
            .build()
            .unwrap()
    });
    let c = sim.add_node(|id, addr| {
        base(id, addr)
            .seed(seed)
            .subscribe(topic("humidity"))
            .build()
            .unwrap()
    });
    let quiet = sim.run_until_quiet(Duration::from_secs(5), at(60));
    assert!(quiet.is_some(), "did not converge");
    sim.check_invariants(true).unwrap();
    let id_b = sim.node(b).unwrap().node_id();
    let id_a = sim.node(a).unwrap().node_id();
    assert_eq!(
        sim.node(a).unwrap().paired_peers(&topic("temp")),
        vec![id_b]
    );
    assert_eq!(
        sim.node(b).unwrap().paired_peers(&topic("temp")),
        vec![id_a]
    );
    assert!(
        sim.node(c)
            .unwrap()
            .paired_peers(&topic("humidity"))
            .is_empty()
    );
    // c is alone on its topic: it says so.
    assert!(
        sim.events(c)
            .iter()
            .any(|(_, e)| matches!(e, Event::TopicIsolated { topic } if topic == "humidity"))
    );

    sim.publish(a, &topic("temp"), Bytes::from_static(b"21.5"));
    sim.run_for(Duration::from_secs(1));
    let got: Vec<usize> = sim.deliveries().iter().map(|d| d.node).collect();
    assert_eq!(got, vec![a, b], "only subscribers receive, each once");
    sim.check_invariants(true).unwrap();
}

fn relay(sim: &mut Sim) -> SocketAddr {
    let r = sim.add_node(|id, a| base(id, a).relay(true).max_peers(4096).build().unwrap());
    Sim::addr_of(r)
}

/// The case the Python original fails: 20 nodes bootstrapped through one relay, 4 topics of 5
/// subscribers, `max_connections = 5`: every topic must end as one connected graph of direct
/// links, whatever the join order; messages reach every subscriber once and nobody else.
#[test]
fn twenty_nodes_through_one_relay_form_one_graph_per_topic() {
    for seed in 1..=5u64 {
        let mut sim = Sim::new(SimConfig {
            seed,
            ..SimConfig::default()
        });
        let seed_addr = relay(&mut sim);
        // Join order: a permutation of the 20 slots that depends on the seed.
        let mut order: Vec<usize> = (0..20).collect();
        let mut x = seed * 7 + 3;
        for i in (1..order.len()).rev() {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            order.swap(i, (x >> 33) as usize % (i + 1));
        }
        let mut nodes = Vec::new();
        for slot in order {
            let t = topic(&format!("topic{}", slot / 5));
            let i = sim.add_node(|id, a| {
                base(id, a)
                    .seed(seed_addr)
                    .max_connections(5)
                    .subscribe(t)
                    .build()
                    .unwrap()
            });
            nodes.push((i, slot / 5));
            sim.run_for(Duration::from_millis(u64::from(seed as u32 * 37 % 200)));
        }
        let last =
            sim.run_until_quiet(Duration::from_secs(5), sim.now() + Duration::from_secs(120));
        assert!(last.is_some(), "seed {seed}: no convergence");
        sim.check_invariants(true).unwrap();
        sim.check_topics_connected().unwrap();
        let relay_id = sim.node(0).unwrap().node_id();
        for g in 0..4 {
            let t = topic(&format!("topic{g}"));
            let comps = sim.topic_components(&t);
            assert_eq!(comps.len(), 1, "seed {seed}: {t} split: {comps:?}");
            assert_eq!(comps[0].len(), 5);
            for &(i, _) in nodes.iter().filter(|(_, tg)| *tg == g) {
                let paired = sim.node(i).unwrap().paired_peers(&t);
                assert!(!paired.contains(&relay_id), "pairs are direct");
                // 5 subscribers fit in max_connections: a full mesh.
                assert_eq!(paired.len(), 4, "seed {seed}: node {i} on {t}");
            }
        }
        // Every subscriber publishes once.
        for &(i, g) in &nodes {
            sim.publish(i, &topic(&format!("topic{g}")), Bytes::from_static(b"x"));
        }
        sim.run_for(Duration::from_secs(2));
        sim.check_invariants(true).unwrap();
        assert_eq!(sim.deliveries().len(), 20 * 5, "seed {seed}");
        for d in sim.deliveries() {
            let g = nodes.iter().find(|(i, _)| *i == d.node).unwrap().1;
            assert_eq!(
                d.topic,
                topic(&format!("topic{g}")),
                "only subscribers receive"
            );
        }
    }
}

/// 1,000 nodes with random topic sets (50 topics, 1 to 3 each) bootstrapped through one relay:
/// converges within 30 s of virtual time after the last join, with every topic connected and
/// every node within its limits.
#[test]
fn thousand_nodes_random_topics_converge() {
    let mut sim = Sim::new(SimConfig {
        seed: 42,
        record_events: false,
        ..SimConfig::default()
    });
    let seed_addr = relay(&mut sim);
    let mut x: u64 = 0x1234_5678;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..1000 {
        let n = 1 + next() % 3;
        let mut b = None;
        let mut topics = Vec::new();
        while topics.len() < n as usize {
            let t = topic(&format!("t{}", next() % 50));
            if !topics.contains(&t) {
                topics.push(t);
            }
        }
        sim.add_node(|id, a| {
            let mut c = base(id, a).seed(seed_addr);
            for t in topics {
                c = c.subscribe(t);
            }
            b = Some(());
            c.build().unwrap()
        });
        sim.run_for(Duration::from_millis(1));
    }
    let joined = sim.now();
    let last = sim
        .run_until_quiet(Duration::from_secs(5), joined + Duration::from_secs(120))
        .expect("converges");
    assert!(
        last - joined <= Duration::from_secs(30),
        "converged {:?} after the last join",
        last - joined
    );
    sim.check_invariants(true).unwrap();
    sim.check_topics_connected().unwrap();
}

fn pair_of_nodes(sim: &mut Sim, jitter: f64) -> (usize, usize) {
    let t = topic("t");
    let a = sim.add_node(|id, addr| {
        base(id, addr)
            .subscribe(t.clone())
            .reconnect_jitter(jitter)
            .build()
            .unwrap()
    });
    let b = sim.add_node(|id, addr| {
        base(id, addr)
            .subscribe(t.clone())
            .reconnect_jitter(jitter)
            .build()
            .unwrap()
    });
    let addr_b = Sim::addr_of(b);
    sim.with_node(a, |m, now| m.connect(now, addr_b)).unwrap();
    sim.run_until_quiet(Duration::from_secs(3), at(30)).unwrap();
    assert_eq!(sim.node(a).unwrap().paired_peers(&t).len(), 1);
    (a, b)
}

/// A crashed peer is declared down exactly `peer_timeout` after it was last heard from.
#[test]
fn crashed_peer_is_declared_down_at_exactly_peer_timeout() {
    let mut sim = Sim::new(SimConfig::default());
    let (a, b) = pair_of_nodes(&mut sim, 0.2);
    let id_b = sim.node(b).unwrap().node_id();
    let conn = sim.node(a).unwrap().connection_to(id_b).unwrap();
    sim.run_for(Duration::from_millis(1234));
    sim.crash(b);
    sim.run_for(Duration::from_secs(10));
    let heard = sim.last_heard(a, conn).unwrap();
    let downs: Vec<_> = sim
        .events(a)
        .iter()
        .filter_map(|(t, e)| match e {
            Event::PeerDown { peer, reason, .. } if *peer == id_b => Some((*t, *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        downs,
        vec![(
            heard + Duration::from_secs(3),
            DownReason::Timeout {
                silent_for: Duration::from_secs(3)
            }
        )]
    );
    assert!(sim.node(a).unwrap().paired_peers(&topic("t")).is_empty());
}

/// Without jitter, the re-dial schedule of a lost peer is exactly 100 ms doubling to 5 s, 32
/// attempts, then the peer is given up.
#[test]
fn reconnect_backoff_schedule_is_exact() {
    let mut sim = Sim::new(SimConfig::default());
    let (a, b) = pair_of_nodes(&mut sim, 0.0);
    let id_b = sim.node(b).unwrap().node_id();
    let addr_b = Sim::addr_of(b);
    sim.crash(b);
    let dials_before = sim.dials().len();
    sim.run_for(Duration::from_secs(300));
    let down_at = sim
        .events(a)
        .iter()
        .find_map(|(t, e)| matches!(e, Event::PeerDown { peer, .. } if *peer == id_b).then_some(*t))
        .unwrap();
    let dials: Vec<_> = sim.dials()[dials_before..]
        .iter()
        .filter(|d| d.from == a && d.addr == addr_b)
        .collect();
    assert_eq!(dials.len(), 32, "32 attempts");
    let mut previous = down_at;
    for (n, d) in dials.iter().enumerate() {
        let expected = Duration::from_millis(100 << n.min(6)).min(Duration::from_secs(5));
        assert_eq!(d.at - previous, expected, "attempt {n}");
        previous = d.failed_at.expect("refused");
    }
    assert!(
        sim.events(a)
            .iter()
            .any(|(_, e)| matches!(e, Event::ReconnectGaveUp { peer } if *peer == id_b))
    );
    assert_eq!(sim.node(a).unwrap().known_count(), 0, "forgotten");
}

/// With jitter, each delay stays within `[(1 - jitter) * d, d]`.
#[test]
fn reconnect_backoff_jitter_stays_in_bounds() {
    let mut sim = Sim::new(SimConfig::default());
    let (a, b) = pair_of_nodes(&mut sim, 0.2);
    let addr_b = Sim::addr_of(b);
    sim.crash(b);
    let dials_before = sim.dials().len();
    sim.run_for(Duration::from_secs(30));
    let dials: Vec<_> = sim.dials()[dials_before..]
        .iter()
        .filter(|d| d.from == a && d.addr == addr_b)
        .collect();
    assert!(dials.len() >= 5);
    for (n, w) in dials.windows(2).enumerate() {
        let d = Duration::from_millis(100 << (n + 1).min(6)).min(Duration::from_secs(5));
        let gap = w[1].at - w[0].failed_at.unwrap();
        assert!(
            gap <= d && gap >= d.mul_f64(0.8),
            "attempt {n}: {gap:?} vs {d:?}"
        );
    }
}

/// A lost connection (reset) is re-dialed, and pairing is restored without the user doing
/// anything.
#[test]
fn reconnection_restores_pairing() {
    let mut sim = Sim::new(SimConfig::default());
    let (a, b) = pair_of_nodes(&mut sim, 0.2);
    let t = topic("t");
    let id_b = sim.node(b).unwrap().node_id();
    let conn = sim.node(a).unwrap().connection_to(id_b).unwrap();
    sim.reset(conn);
    sim.run_for(Duration::from_millis(1));
    assert!(sim.node(a).unwrap().paired_peers(&t).is_empty());
    sim.run_until_quiet(Duration::from_secs(3), sim.now() + Duration::from_secs(30))
        .unwrap();
    assert_eq!(sim.node(a).unwrap().paired_peers(&t), vec![id_b]);
    let new_conn = sim.node(a).unwrap().connection_to(id_b).unwrap();
    assert_ne!(new_conn, conn);
    sim.check_invariants(true).unwrap();
}

/// A graceful goodbye is not a failure: reported as such, and not re-dialed.
#[test]
fn graceful_shutdown_is_not_a_failure() {
    let mut sim = Sim::new(SimConfig::default());
    let (a, b) = pair_of_nodes(&mut sim, 0.2);
    let id_b = sim.node(b).unwrap().node_id();
    let dials_before = sim.dials().len();
    sim.shutdown(b);
    sim.run_for(Duration::from_secs(20));
    let reason = sim
        .events(a)
        .iter()
        .find_map(|(_, e)| match e {
            Event::PeerDown { peer, reason, .. } if *peer == id_b => Some(*reason),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        reason,
        DownReason::Goodbye(chaski_wire::GoodbyeReason::Shutdown)
    );
    assert!(!reason.is_failure());
    assert_eq!(sim.dials().len(), dials_before, "no re-dial");
}

/// A partition splits the network (links across it go down); after healing, every topic graph
/// is whole again.
#[test]
fn partition_splits_and_heals() {
    let mut sim = Sim::new(SimConfig {
        seed: 9,
        ..SimConfig::default()
    });
    let seed_addr = relay(&mut sim);
    let mut nodes = Vec::new();
    for i in 0..30 {
        let t = topic(&format!("p{}", i % 3));
        nodes.push(sim.add_node(|id, a| base(id, a).seed(seed_addr).subscribe(t).build().unwrap()));
        sim.run_for(Duration::from_millis(7));
    }
    sim.run_until_quiet(Duration::from_secs(5), at(120))
        .unwrap();
    sim.check_topics_connected().unwrap();
    let left: Vec<usize> = std::iter::once(0)
        .chain(nodes.iter().copied().filter(|i| i % 2 == 0))
        .collect();
    let right: Vec<usize> = nodes.iter().copied().filter(|i| i % 2 == 1).collect();
    sim.partition(&[&left, &right]);
    sim.run_for(Duration::from_secs(10));
    // Split: no connection crosses the partition any more.
    let right_ids: Vec<NodeId> = right
        .iter()
        .map(|&i| sim.node(i).unwrap().node_id())
        .collect();
    for &i in &left {
        for p in sim.node(i).unwrap().connected_peers() {
            assert!(!right_ids.contains(&p), "node {i} still connected across");
        }
    }
    sim.check_invariants(false).unwrap();
    sim.heal();
    sim.run_until_quiet(Duration::from_secs(5), sim.now() + Duration::from_secs(120))
        .expect("converges after healing");
    sim.check_invariants(true).unwrap();
    sim.check_topics_connected().unwrap();
    for g in 0..3 {
        let comps = sim.topic_components(&topic(&format!("p{g}")));
        assert_eq!(comps.len(), 1);
        assert_eq!(comps[0].len(), 10);
    }
}

/// LAN discovery: a node that joins is found by its LAN peers within 100 ms of virtual time.
#[test]
fn lan_beacons_find_new_peers_fast() {
    let mut sim = Sim::new(SimConfig::default());
    let t = topic("lan");
    let lan = |id, a| {
        Config::builder(id)
            .listen_addr(a)
            .subscribe(Topic::from_static("lan"))
            .build()
            .unwrap()
    };
    let old: Vec<usize> = (0..4).map(|_| sim.add_node(lan)).collect();
    sim.run_until_quiet(Duration::from_secs(3), at(30)).unwrap();
    sim.check_topics_connected().unwrap();
    let joined = sim.now();
    let new = sim.add_node(lan);
    sim.run_for(Duration::from_millis(100));
    let ups: Vec<_> = sim
        .events(new)
        .iter()
        .filter(|(_, e)| matches!(e, Event::PeerUp { .. }))
        .collect();
    assert_eq!(
        ups.len(),
        old.len(),
        "all LAN peers found within 100 ms of joining"
    );
    sim.run_until_quiet(Duration::from_secs(3), sim.now() + Duration::from_secs(30))
        .unwrap();
    assert_eq!(sim.topic_components(&t).len(), 1);
    assert!(joined < sim.now());
    sim.check_invariants(true).unwrap();
}

/// Without a relay, nodes seeded in a chain find the subscribers of their topics through
/// searches and peer exchange.
#[test]
fn seed_chain_without_relay_converges() {
    let mut sim = Sim::new(SimConfig {
        seed: 5,
        ..SimConfig::default()
    });
    let mut prev = None;
    for i in 0..40usize {
        let t = topic(&format!("c{}", (i * 7) % 4));
        let i2 = sim.add_node(|id, a| {
            let mut c = base(id, a).subscribe(t);
            if let Some(p) = prev {
                c = c.seed(p);
            }
            c.build().unwrap()
        });
        prev = Some(Sim::addr_of(i2));
        sim.run_for(Duration::from_millis(20));
    }
    sim.run_until_quiet(Duration::from_secs(5), at(300))
        .expect("converges");
    sim.check_invariants(true).unwrap();
    sim.check_topics_connected().unwrap();
}

/// Subscribing at run time is propagated at once and leads to pairing; unsubscribing releases
/// the links.
#[test]
fn runtime_subscribe_and_unsubscribe() {
    let mut sim = Sim::new(SimConfig::default());
    let (a, b) = pair_of_nodes(&mut sim, 0.2);
    let n = topic("new");
    let id_a = sim.node(a).unwrap().node_id();
    let id_b = sim.node(b).unwrap().node_id();
    sim.with_node(a, |m, now| assert!(m.subscribe(now, n.clone())));
    sim.with_node(b, |m, now| assert!(m.subscribe(now, n.clone())));
    sim.run_until_quiet(Duration::from_secs(3), sim.now() + Duration::from_secs(30))
        .unwrap();
    assert_eq!(sim.node(a).unwrap().paired_peers(&n), vec![id_b]);
    assert_eq!(sim.node(b).unwrap().paired_peers(&n), vec![id_a]);
    sim.with_node(b, |m, now| assert!(m.unsubscribe(now, &n)));
    sim.run_for(Duration::from_secs(1));
    assert!(sim.node(a).unwrap().paired_peers(&n).is_empty());
    assert!(sim.node(b).unwrap().paired_peers(&n).is_empty());
    // The other topic is untouched.
    assert_eq!(sim.node(a).unwrap().paired_peers(&topic("t")), vec![id_b]);
    sim.check_invariants(true).unwrap();
}

/// An on-demand ping is answered with the measured round trip, and periodic pings fill the
/// peer's RTT statistics.
#[test]
fn on_demand_ping_measures_round_trip() {
    let mut sim = Sim::new(SimConfig::default());
    let (a, b) = pair_of_nodes(&mut sim, 0.2);
    let id_b = sim.node(b).unwrap().node_id();
    let rtt = sim.latency(a, b) * 2;
    let id = sim
        .with_node(a, |m, now| m.ping(now, id_b, 1000))
        .unwrap()
        .unwrap();
    sim.run_for(Duration::from_secs(1));
    let result = sim.events(a).iter().find_map(|(_, e)| match e {
        Event::PingResult {
            id: got,
            peer,
            rtt,
            size,
        } if *got == id => Some((*peer, *rtt, *size)),
        _ => None,
    });
    assert_eq!(result, Some((id_b, rtt, 1000)));
    let snapshot = sim.node(a).unwrap().peers();
    assert_eq!(snapshot.len(), 1);
    assert_eq!(snapshot[0].rtt.min_rtt, rtt);
    assert_eq!(snapshot[0].rtt.srtt, rtt, "constant latency: srtt is exact");
    assert!(snapshot[0].rtt.samples >= 3);
}

/// A node with nobody to send to hands its message to the relay, which forwards it to the
/// subscribers connected to it.
#[test]
fn relay_forwards_for_nodes_without_a_path() {
    let mut sim = Sim::new(SimConfig::default());
    let seed_addr = relay(&mut sim);
    let publisher = sim.add_node(|id, a| {
        base(id, a)
            .seed(seed_addr)
            .subscribe(topic("mine"))
            .build()
            .unwrap()
    });
    let subscriber = sim.add_node(|id, a| {
        base(id, a)
            .seed(seed_addr)
            .subscribe(topic("news"))
            .build()
            .unwrap()
    });
    sim.run_until_quiet(Duration::from_secs(5), at(60)).unwrap();
    let id_sub = sim.node(subscriber).unwrap().node_id();
    assert!(
        !sim.node(publisher)
            .unwrap()
            .connected_peers()
            .contains(&id_sub)
    );
    sim.publish(publisher, &topic("news"), Bytes::from_static(b"hello"));
    sim.run_for(Duration::from_secs(1));
    let got: Vec<usize> = sim.deliveries().iter().map(|d| d.node).collect();
    assert_eq!(got, vec![subscriber]);
    sim.check_invariants(true).unwrap();
}

/// A connection that carries no link is closed by the node that dialed it after `idle_grace`
/// (the original's `on_pair='disconnect'`), and kept when that option is off.
#[test]
fn unneeded_connections_are_closed_unless_configured_otherwise() {
    for disconnect in [true, false] {
        let mut sim = Sim::new(SimConfig::default());
        let lan = move |name: &'static str| {
            move |id, a| {
                Config::builder(id)
                    .listen_addr(a)
                    .subscribe(Topic::from_static(name))
                    .disconnect_unneeded(disconnect)
                    .build()
                    .unwrap()
            }
        };
        let a = sim.add_node(lan("x"));
        let b = sim.add_node(lan("x"));
        let c = sim.add_node(lan("y"));
        sim.run_until_quiet(Duration::from_secs(8), at(60)).unwrap();
        let id_b = sim.node(b).unwrap().node_id();
        assert_eq!(sim.node(a).unwrap().paired_peers(&topic("x")), vec![id_b]);
        let c_peers = sim.node(c).unwrap().connection_count();
        if disconnect {
            assert_eq!(c_peers, 0, "nothing needs c's connections");
            let closed = (0..3).flat_map(|i| sim.events(i)).any(|(_, e)| {
                matches!(
                    e,
                    Event::PeerDown {
                        reason: DownReason::Closed(chaski_wire::GoodbyeReason::NotNeeded),
                        ..
                    }
                )
            });
            assert!(closed);
        } else {
            assert_eq!(c_peers, 2, "kept: found on the LAN, never closed");
        }
        sim.check_invariants(true).unwrap();
    }
}

fn ring_network(seed: u64, nodes: usize) -> (Sim, Vec<usize>) {
    let mut sim = Sim::new(SimConfig {
        seed,
        ..SimConfig::default()
    });
    let seed_addr = relay(&mut sim);
    let members = (0..nodes)
        .map(|_| {
            let i = sim.add_node(|id, a| {
                base(id, a)
                    .seed(seed_addr)
                    .subscribe(topic("ring"))
                    .build()
                    .unwrap()
            });
            sim.run_for(Duration::from_millis(13));
            i
        })
        .collect();
    sim.run_until_quiet(Duration::from_secs(5), at(120))
        .expect("converges");
    (sim, members)
}

/// A topic with more subscribers than `max_connections` forms a ring backbone: messages are
/// forwarded over several hops, reach every subscriber exactly once, and in publication order.
#[test]
fn messages_cross_the_ring_once_and_in_order() {
    let (mut sim, members) = ring_network(3, 30);
    sim.check_invariants(true).unwrap();
    sim.check_topics_connected().unwrap();
    for &i in &members {
        let links = sim.node(i).unwrap().paired_peers(&topic("ring")).len();
        assert!((4..=5).contains(&links), "node {i} has {links} links");
    }
    let publisher = members[7];
    for n in 0..20u8 {
        sim.publish(publisher, &topic("ring"), Bytes::from(vec![n]));
        sim.run_for(Duration::from_micros(300));
    }
    sim.run_for(Duration::from_secs(2));
    sim.check_invariants(true).unwrap();
    for &i in &members {
        let seqs: Vec<u64> = sim
            .deliveries()
            .iter()
            .filter(|d| d.node == i)
            .map(|d| d.sequence)
            .collect();
        assert_eq!(seqs, (1..=20).collect::<Vec<u64>>(), "node {i}");
    }
}

/// The same seed gives the same run, event for event.
#[test]
fn simulation_is_deterministic_from_its_seed() {
    let trace = |seed| {
        let (sim, members) = ring_network(seed, 12);
        let events: Vec<String> = (0..sim.len())
            .flat_map(|i| {
                sim.events(i)
                    .iter()
                    .map(move |(t, e)| format!("{i} {t:?} {e:?}"))
            })
            .collect();
        (events, sim.dials().to_vec(), sim.traffic(), members)
    };
    let a = trace(11);
    assert_eq!(a, trace(11));
    assert_ne!(a.0, trace(12).0, "another seed, another run");
}

/// LAN discovery still works when most beacons are lost.
#[test]
fn lan_discovery_survives_beacon_loss() {
    let mut sim = Sim::new(SimConfig {
        datagram_loss: 0.7,
        ..SimConfig::default()
    });
    let lan = |id, a| {
        Config::builder(id)
            .listen_addr(a)
            .subscribe(Topic::from_static("lossy"))
            .build()
            .unwrap()
    };
    for _ in 0..6 {
        sim.add_node(lan);
    }
    sim.run_until_quiet(Duration::from_secs(12), at(120))
        .expect("converges");
    sim.check_invariants(true).unwrap();
    let comps = sim.topic_components(&topic("lossy"));
    assert_eq!(comps.len(), 1, "{comps:?}");
    assert_eq!(comps[0].len(), 6);
}

/// With 10 % of frames lost once and retransmitted 200 ms later (head-of-line blocking, as
/// TCP), the ring still forms and messages still arrive once each.
#[test]
fn lossy_links_delay_but_do_not_break_anything() {
    let mut sim = Sim::new(SimConfig {
        seed: 21,
        link_loss: 0.1,
        ..SimConfig::default()
    });
    let seed_addr = relay(&mut sim);
    let members: Vec<usize> = (0..20)
        .map(|_| {
            sim.add_node(|id, a| {
                base(id, a)
                    .seed(seed_addr)
                    .subscribe(topic("lossy"))
                    .build()
                    .unwrap()
            })
        })
        .collect();
    sim.run_until_quiet(Duration::from_secs(5), at(120))
        .expect("converges");
    sim.check_invariants(true).unwrap();
    sim.check_topics_connected().unwrap();
    // Losses delay frames by at most 200 ms at a time: nobody was declared down.
    for i in 0..sim.len() {
        assert!(
            !sim.events(i).iter().any(|(_, e)| matches!(
                e,
                Event::PeerDown {
                    reason: DownReason::Timeout { .. },
                    ..
                }
            )),
            "node {i} timed a peer out"
        );
    }
    for n in 0..10u8 {
        sim.publish(members[3], &topic("lossy"), Bytes::from(vec![n]));
    }
    sim.run_for(Duration::from_secs(5));
    sim.check_invariants(true).unwrap();
    for &i in &members {
        // Each exactly once; order is kept on each path, but a retransmission on one path can
        // let a later message arrive first by another.
        let mut seqs: Vec<u64> = sim
            .deliveries()
            .iter()
            .filter(|d| d.node == i)
            .map(|d| d.sequence)
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=10).collect::<Vec<u64>>(), "node {i}");
    }
}
