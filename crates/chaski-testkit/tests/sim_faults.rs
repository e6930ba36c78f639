//! Faults that a real network produces and a naive reconnection logic turns into storms: a link
//! that heals while one side still holds the old connection, simultaneous dials that lose the
//! duplicate tie-break. The simulator models the transport's table of connections, so these
//! run on virtual time, deterministically.

use std::{net::SocketAddr, time::Duration};

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

fn topic() -> Topic {
    Topic::new("t").unwrap()
}

/// Connections that came up at node `index` to any peer since `since`.
fn peer_ups_since(sim: &Sim, index: usize, since: Instant) -> usize {
    sim.events(index)
        .iter()
        .filter(|(t, e)| *t >= since && matches!(e, Event::PeerUp { .. }))
        .count()
}

/// Two subscribers; `fast` dialed `slow` and detects silence after 3 s, `slow` only after 6 s.
fn pair_with_timeouts(sim: &mut Sim) -> (usize, usize) {
    let fast = sim.add_node(|id, addr| {
        base(id, addr)
            .subscribe(topic())
            .peer_timeout(Duration::from_secs(3))
            .build()
            .unwrap()
    });
    let slow = sim.add_node(|id, addr| {
        base(id, addr)
            .subscribe(topic())
            .peer_timeout(Duration::from_secs(6))
            .build()
            .unwrap()
    });
    let addr = Sim::addr_of(slow);
    sim.with_node(fast, |m, now| m.connect(now, addr)).unwrap();
    sim.run_until_quiet(Duration::from_secs(3), at(30))
        .expect("the pair converges");
    assert_eq!(sim.node(fast).unwrap().paired_peers(&topic()).len(), 1);
    (fast, slow)
}

/// The storm of the multi-host test bed, reproduced: a link is cut for 4 s; the side with the
/// shorter timeout drops the connection and re-dials once the link is back, while the other
/// side's transport still holds the old connection, which wins every tie-break until that side
/// times out too. Each fresh dial is refused with `Goodbye(Duplicate)`. Re-dialing at once
/// made about one connection per round trip (hundreds a second); a refusal now counts as a
/// failed attempt with a growing backoff, so only a few connections are opened.
#[test]
fn a_healed_link_does_not_set_off_a_reconnection_storm() {
    let mut sim = Sim::new(SimConfig::default());
    let (fast, slow) = pair_with_timeouts(&mut sim);
    let cut = sim.now();
    sim.partition(&[&[fast], &[slow]]);
    sim.run_for(Duration::from_secs(4));
    sim.heal();
    let healed = sim.now();
    sim.run_for(Duration::from_secs(20));

    let opened = peer_ups_since(&sim, fast, cut);
    assert!(
        (1..=6).contains(&opened),
        "{opened} connections came up at the re-dialing node after the heal"
    );
    assert!(peer_ups_since(&sim, slow, cut) <= 6);
    // And the pair is whole again.
    assert_eq!(sim.node(fast).unwrap().paired_peers(&topic()).len(), 1);
    assert_eq!(sim.node(slow).unwrap().paired_peers(&topic()).len(), 1);
    let repaired = sim
        .events(fast)
        .iter()
        .find(|(t, e)| *t >= healed && matches!(e, Event::Paired { .. }))
        .map(|(t, _)| *t)
        .expect("paired again after the heal");
    // The old connection lingers at `slow` until its 6 s timeout (about 2 s after the heal);
    // the backoff then re-dials within its next step.
    assert!(
        repaired - healed <= Duration::from_secs(6),
        "re-paired {:?} after the heal",
        repaired - healed
    );
    sim.check_invariants(true).unwrap();
}

/// Two nodes dial each other at the same instant: one of the dials loses the duplicate
/// tie-break at the dialer. It is reported to the state machine as a duplicate, so the dial
/// entry is released (before, it stayed pending forever: that address was never dialed again
/// and a `max_peers` slot was used up).
#[test]
fn simultaneous_dials_leave_no_dial_pending() {
    let mut sim = Sim::new(SimConfig {
        min_latency: Duration::from_millis(5),
        max_latency: Duration::from_millis(5),
        ..SimConfig::default()
    });
    let a = sim.add_node(|id, addr| base(id, addr).subscribe(topic()).build().unwrap());
    let b = sim.add_node(|id, addr| base(id, addr).subscribe(topic()).build().unwrap());
    let (addr_a, addr_b) = (Sim::addr_of(a), Sim::addr_of(b));
    sim.with_node(a, |m, now| m.connect(now, addr_b)).unwrap();
    sim.with_node(b, |m, now| m.connect(now, addr_a)).unwrap();
    sim.run_until_quiet(Duration::from_secs(3), at(30))
        .expect("converges");
    for node in [a, b] {
        let m = sim.node(node).unwrap();
        assert_eq!(m.dial_count(), 0, "a dial stayed pending at node {node}");
        assert_eq!(m.connection_count(), 1);
        assert_eq!(m.paired_peers(&topic()).len(), 1);
    }
    let losers = sim.node(a).unwrap().counters().dial_failures
        + sim.node(b).unwrap().counters().dial_failures;
    assert!(
        losers <= 1,
        "{losers} dials counted as failed; a duplicate of a known connection is not a failure"
    );
    sim.check_invariants(true).unwrap();
}

/// A peer that refuses every connection at once (here: it is at its connection limit) is
/// re-dialed with a growing backoff, never in a loop.
#[test]
fn a_peer_that_refuses_at_once_is_redialed_with_backoff() {
    let mut sim = Sim::new(SimConfig::default());
    let full = sim.add_node(|id, addr| {
        base(id, addr)
            .subscribe(topic())
            .max_peers(1)
            .build()
            .unwrap()
    });
    let first = sim.add_node(|id, addr| base(id, addr).subscribe(topic()).build().unwrap());
    let addr = Sim::addr_of(full);
    sim.with_node(first, |m, now| m.connect(now, addr)).unwrap();
    sim.run_until_quiet(Duration::from_secs(2), at(30))
        .expect("converges");
    let late = sim.add_node(|id, addr| base(id, addr).subscribe(topic()).build().unwrap());
    let start = sim.now();
    sim.with_node(late, |m, now| m.connect(now, addr)).unwrap();
    sim.run_for(Duration::from_secs(10));
    let attempts = sim
        .dials()
        .iter()
        .filter(|d| d.from == late && d.at >= start)
        .count();
    // 100 ms doubling (with jitter) up to 5 s: at most about ten attempts in 10 s.
    assert!(
        attempts <= 12,
        "{attempts} dials to a refusing peer in 10 s"
    );
    assert!(attempts >= 2, "the refusing peer was given up at once");
}
