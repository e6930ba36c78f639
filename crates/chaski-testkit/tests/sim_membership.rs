//! Simulated networks of membership state machines: discovery, pairing, routing, failure
//! detection, reconnection and partitions, all on virtual time.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use chaski_membership::{Config, ConfigBuilder, Event, Instant};
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
