//! Pairing: after every input, which peers each topic's ring wants, the requests to send, the
//! dials to start and the extra links to evict.

use super::*;

impl Membership {
    /// Runs after every input: pairing decisions for every subscribed topic.
    pub(super) fn after(&mut self, now: Instant) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let topics: Vec<Topic> = self.topics.keys().cloned().collect();
        let mut requests: BTreeMap<ConnId, Vec<Topic>> = BTreeMap::new();
        let relay_connected = !topics.is_empty()
            && self.conns.values().any(|c| {
                self.known
                    .get(&c.peer)
                    .is_some_and(|k| k.info.capabilities.contains(Capabilities::RELAY))
            });
        for t in topics {
            // Component search: without a relay, two groups of subscribers of a topic may not
            // know each other. The node with the smallest id among the subscribers it knows
            // searches now and then (backoff up to `component_search_max`), so that another
            // group's members answer and the rings merge. One such node per group, none when a
            // relay (which knows everyone) is connected.
            let leader = !relay_connected
                && self
                    .subscribers
                    .get(&t)
                    .and_then(|m| m.first())
                    .is_some_and(|&first| self.me < first);
            let initial = self.config.search_initial;
            let state = self.topics.get_mut(&t).expect("topic");
            if !leader {
                state.next_leader_search = None;
                state.leader_delay = initial;
            } else if state.next_leader_search.is_none() {
                let at = now + state.leader_delay;
                state.next_leader_search = Some(at);
                self.arm_search(at);
            }
            let desired = self.desired(&t);
            for &y in &desired {
                let Some(k) = self.known.get(&y) else {
                    continue;
                };
                match k.conn {
                    Some(conn) => {
                        let c = &self.conns[&conn];
                        if !c.paired.contains(&t)
                            && !c.pending.contains(&t)
                            && !self.cooling(y, &t, now)
                        {
                            requests.entry(conn).or_default().push(t.clone());
                        }
                    }
                    None => {
                        if !k.down {
                            if let Some(addr) = k.info.listen_addrs.first().copied() {
                                let source = k.source;
                                self.dial(addr, Some(y), source);
                            }
                        }
                    }
                }
            }
            // Extras: connected subscribers of the topic, lowest latency first, up to the cap.
            let mut used = self.degree(&t)
                + self
                    .conns
                    .values()
                    .filter(|c| c.pending.contains(&t))
                    .count()
                + requests.values().filter(|ts| ts.contains(&t)).count();
            if used < self.config.max_connections {
                let mut extras: Vec<(Duration, ConnId, NodeId)> = self
                    .conns
                    .iter()
                    .filter(|(id, c)| {
                        !c.paired.contains(&t)
                            && !c.pending.contains(&t)
                            && !requests.get(id).is_some_and(|ts| ts.contains(&t))
                            && self.known.get(&c.peer).is_some_and(|k| {
                                interest::wants(&k.info.subscriptions, &t)
                                    && !k.info.capabilities.contains(Capabilities::RELAY)
                            })
                            && !self.cooling(c.peer, &t, now)
                    })
                    .map(|(&id, c)| {
                        let srtt = if c.rtt.samples == 0 {
                            Duration::MAX
                        } else {
                            c.rtt.srtt
                        };
                        (srtt, id, c.peer)
                    })
                    .collect();
                extras.sort();
                for (_, conn, _) in extras {
                    if used >= self.config.max_connections {
                        break;
                    }
                    requests.entry(conn).or_default().push(t.clone());
                    used += 1;
                }
            }
            // Prune: never more than max_connections links; drop the slowest non-backbone ones.
            while self.degree(&t) > self.config.max_connections {
                let before = self.degree(&t);
                self.evict_extra(&t, &desired);
                if self.degree(&t) == before {
                    break;
                }
            }
            let paired = self.degree(&t);
            if paired > 0 {
                if let Some(state) = self.topics.get_mut(&t) {
                    state.isolated_reported = false;
                    state.search_delay = self.config.search_initial;
                    state.next_search = None;
                }
            } else if desired.is_empty() {
                let state = self.topics.get_mut(&t).expect("topic");
                if state.next_search.is_none() {
                    let at = now + state.search_delay;
                    state.next_search = Some(at);
                    self.arm_search(at);
                }
            }
        }
        for (conn, topics) in requests {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.pending.extend(topics.iter().cloned());
            }
            let request_id = self.rng.next_u64();
            self.send(conn, Frame::PairRequest(PairRequest { request_id, topics }));
        }
        // Handling may have changed something again (evictions): converge within this call.
        if self.dirty {
            self.dirty = false;
        }
    }

    pub(super) fn rebuild_routes(&mut self) {
        if !self.route_dirty {
            return;
        }
        self.route_dirty = false;
        for list in self.route_index.values_mut() {
            list.clear();
        }
        self.relay_conns.clear();
        let mut ids: Vec<ConnId> = self.conns.keys().copied().collect();
        ids.sort();
        for id in ids {
            let c = &self.conns[&id];
            let Some(k) = self.known.get(&c.peer) else {
                continue;
            };
            if k.info.capabilities.contains(Capabilities::RELAY) {
                self.relay_conns.push(id);
            }
            for t in k.info.subscriptions.iter().chain(c.paired.iter()) {
                let list = self.route_index.entry(t.clone()).or_default();
                if list.last() != Some(&id) {
                    list.push(id);
                }
            }
        }
        self.route_index.retain(|_, l| !l.is_empty());
    }
}
