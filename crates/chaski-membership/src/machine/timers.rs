//! Timers: liveness (a silent peer is dropped at `peer_timeout`), keep-alive pings, re-dials
//! with backoff and the rules on where the machine dials, seeds, beacons, maintenance and
//! searches.

use super::*;

impl Membership {
    pub(super) fn fire(&mut self, now: Instant, timer: Timer) {
        match timer {
            Timer::Liveness(conn) => {
                let Some(c) = self.conns.get(&conn) else {
                    return;
                };
                let deadline = c.last_rx + self.config.peer_timeout;
                if now >= deadline {
                    let silent_for = now - c.last_rx;
                    self.drop_conn(
                        now,
                        conn,
                        DownReason::Timeout { silent_for },
                        Some(GoodbyeReason::Timeout),
                    );
                } else {
                    self.arm(deadline, Timer::Liveness(conn));
                }
            }
            Timer::Ping(conn) => {
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
                let exchange = now >= c.next_exchange;
                if exchange {
                    c.next_exchange = now + self.config.exchange_interval;
                }
                self.send_ping(now, conn, None, 0);
                if exchange {
                    self.send_exchange(conn);
                    self.refresh_pairs(conn);
                }
                self.arm(now + self.config.ping_interval, Timer::Ping(conn));
            }
            Timer::Redial(peer) => {
                let Some(k) = self.known.get(&peer) else {
                    return;
                };
                if k.conn.is_none() && k.down {
                    match k.info.listen_addrs.first().copied() {
                        Some(addr) => {
                            if !self.dial(addr, Some(peer), k.source) {
                                // Could not start (limit reached): count as a failure.
                                self.dial_failed_for(now, peer);
                            }
                        }
                        None => self.forget(peer),
                    }
                }
            }
            Timer::Seeds => {
                self.seeds_armed = false;
                if self.conns.is_empty() {
                    let mut started = false;
                    for addr in self.config.seeds.clone() {
                        started |= self.dial(addr, None, DiscoverySource::Seed);
                    }
                    if !started && self.dials.is_empty() {
                        self.seed_failures += 1;
                        let delay = self.backoff(self.seed_failures);
                        self.arm(now + delay, Timer::Seeds);
                        self.seeds_armed = true;
                    }
                } else {
                    self.seed_failures = 0;
                }
            }
            Timer::Beacon => {
                self.beacon_sequence += 1;
                let beacon = Beacon {
                    network_id: self.config.network_id.clone(),
                    node_id: self.me,
                    name: self.config.name.clone(),
                    listen_addrs: self.config.listen_addrs.clone(),
                    subscription_digest: subscription_digest(self.topics.keys()),
                    subscription_count: self.topics.len() as u32,
                    capabilities: self.capabilities(),
                    sequence: self.beacon_sequence,
                    auth_tag: Bytes::new(),
                };
                self.counters.control_frames_sent += 1;
                self.counters.discovery_frames_sent += 1;
                self.push(Action::SendDatagram {
                    to: DatagramTarget::Lan,
                    frame: Frame::Beacon(beacon),
                });
                let delay = self.beacon_delay;
                self.beacon_delay = (self.beacon_delay * 2).min(self.config.beacon_interval);
                self.arm(now + delay, Timer::Beacon);
            }
            Timer::ExchangeFlush => {
                self.exchange_flush_armed = false;
                let dirty: Vec<ConnId> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.exchange_dirty)
                    .map(|(&id, _)| id)
                    .collect();
                for conn in dirty {
                    self.send_exchange(conn);
                }
            }
            Timer::Broadcast => self.on_broadcast_timer(now),
            Timer::Maintenance => {
                self.maintain(now);
                self.arm(now + self.config.pair_retry, Timer::Maintenance);
            }
            Timer::Search => {
                if self.next_search_at.is_some_and(|t| t <= now) {
                    self.next_search_at = None;
                }
                self.run_searches(now);
                // Make sure the earliest pending search of any topic has a timer.
                let next = self
                    .topics
                    .values()
                    .flat_map(|s| [s.next_search, s.next_leader_search])
                    .flatten()
                    .filter(|&t| t > now)
                    .min();
                if let Some(at) = next {
                    self.arm_search(at);
                }
            }
        }
    }

    pub(super) fn dial(
        &mut self,
        addr: SocketAddr,
        peer: Option<NodeId>,
        source: DiscoverySource,
    ) -> bool {
        if self.self_addrs.contains(&addr) || self.dials.contains_key(&addr) {
            return false;
        }
        if self.conns.len() + self.dials.len() >= self.config.max_peers
            && !self.evict_idle_inbound()
        {
            return false;
        }
        // An address the network told us about (not one the user gave, nor a peer we have been
        // connected to) is dialed only if it can be a peer's, and at a bounded rate: nothing a
        // peer says can make this node dial at will.
        let learned = !matches!(source, DiscoverySource::Seed | DiscoverySource::Manual)
            && !peer.is_some_and(|p| self.known.get(&p).is_some_and(|k| k.verified));
        if learned {
            if !self.dialable(addr) {
                self.counters.undialable_addrs += 1;
                return false;
            }
            if !self.take_dial_token() {
                self.counters.dials_deferred += 1;
                return false;
            }
        }
        self.dials.insert(addr, Dial { peer, source });
        self.counters.dials += 1;
        self.push(Action::Dial {
            addr,
            peer,
            confirm: learned && peer.is_some(),
        });
        true
    }

    /// At `max_peers`, makes room for a link this node wants: closes the oldest inbound
    /// connection that carries no link, is wanted by no topic and is not kept (a peer that only
    /// pings holds a slot; it must not keep the node from its own links). Returns whether one
    /// was closed.
    pub(super) fn evict_idle_inbound(&mut self) -> bool {
        let victim = self
            .conns
            .iter()
            .filter(|(_, c)| {
                !c.outbound
                    && c.paired.is_empty()
                    && c.pending.is_empty()
                    && !self.known.get(&c.peer).is_some_and(|k| k.keep)
                    && !self.is_desired_anywhere(c.peer)
            })
            .min_by_key(|(_, c)| c.since)
            .map(|(&id, _)| id);
        let Some(conn) = victim else {
            return false;
        };
        self.counters.idle_evictions += 1;
        let now = self.now;
        self.drop_conn(
            now,
            conn,
            DownReason::Closed(GoodbyeReason::NotNeeded),
            Some(GoodbyeReason::NotNeeded),
        );
        true
    }

    /// Whether an address learned from the network may be dialed: a unicast address with a
    /// port, and a loopback one only if this node itself listens on loopback.
    pub(super) fn dialable(&self, addr: SocketAddr) -> bool {
        let ip = addr.ip();
        let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
        let loopback_ok = self
            .config
            .listen_addrs
            .iter()
            .any(|a| a.ip().is_loopback());
        addr.port() != 0
            && !ip.is_unspecified()
            && !ip.is_multicast()
            && !broadcast
            && (!ip.is_loopback() || loopback_ok)
    }

    /// Takes one token of the bucket that bounds dials to learned addresses
    /// ([`LEARNED_DIAL_RATE`] a second, bursts of [`LEARNED_DIAL_BURST`]).
    pub(super) fn take_dial_token(&mut self) -> bool {
        let elapsed = (self.now - self.dial_tokens_at).as_secs_f64();
        self.dial_tokens_at = self.now;
        self.dial_tokens = (self.dial_tokens + elapsed * LEARNED_DIAL_RATE).min(LEARNED_DIAL_BURST);
        if self.dial_tokens >= 1.0 {
            self.dial_tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub(super) fn dial_failed_for(&mut self, now: Instant, peer: NodeId) {
        let Some(k) = self.known.get_mut(&peer) else {
            return;
        };
        if k.conn.is_some() {
            return;
        }
        k.failures += 1;
        let failures = k.failures;
        let was_down = k.down;
        let limit = if k.verified {
            self.config.reconnect_attempts
        } else {
            UNVERIFIED_ATTEMPTS.min(self.config.reconnect_attempts)
        };
        if failures >= limit {
            let verified = k.verified;
            self.forget(peer);
            if verified {
                // Re-dialed for minutes: dead. A peer never reached is only forgotten (it may
                // have been behind a partition); freshness keeps rumours of it short-lived.
                self.event(Event::ReconnectGaveUp { peer });
                self.bury(peer, now);
            }
            return;
        }
        if !was_down {
            self.unindex(peer);
            self.known.get_mut(&peer).expect("known").down = true;
            self.dirty = true;
        }
        let delay = self.backoff(failures);
        self.arm(now + delay, Timer::Redial(peer));
    }

    pub(super) fn maintain(&mut self, now: Instant) {
        self.dirty = true;
        // Close the connections this node dialed that nothing needs any more.
        if !self.config.disconnect_unneeded {
            return;
        }
        let mut close = Vec::new();
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            let c = &self.conns[&id];
            let keep = self.known.get(&c.peer).is_none_or(|k| k.keep);
            let unneeded = c.outbound
                && !keep
                && c.paired.is_empty()
                && c.pending.is_empty()
                && !self.is_desired_anywhere(c.peer);
            let c = self.conns.get_mut(&id).expect("conn");
            if !unneeded {
                c.unneeded_since = None;
            } else {
                let since = *c.unneeded_since.get_or_insert(now);
                if now - since >= self.config.idle_grace {
                    close.push(id);
                }
            }
        }
        for conn in close {
            self.drop_conn(
                now,
                conn,
                DownReason::Closed(GoodbyeReason::NotNeeded),
                Some(GoodbyeReason::NotNeeded),
            );
        }
    }

    /// The topics whose timer, as `when` reads it from their state, is due at `now`.
    pub(super) fn topics_due(
        &self,
        now: Instant,
        when: impl Fn(&TopicState) -> Option<Instant>,
    ) -> Vec<Topic> {
        self.topics
            .iter()
            .filter(|(_, s)| when(s).is_some_and(|t| t <= now))
            .map(|(t, _)| t.clone())
            .collect()
    }

    pub(super) fn run_searches(&mut self, now: Instant) {
        let leaders: Vec<Topic> = self.topics_due(now, |s| s.next_leader_search);
        for topic in leaders {
            let state = self.topics.get_mut(&topic).expect("topic");
            let delay = state.leader_delay;
            state.leader_delay = (delay * 2).min(self.config.component_search_max);
            state.next_leader_search = Some(now + delay);
            self.arm_search(now + delay);
            self.start_search(topic);
        }
        let due: Vec<Topic> = self.topics_due(now, |s| s.next_search);
        for topic in due {
            let isolated = self.degree(&topic) == 0 && self.desired(&topic).is_empty();
            let state = self.topics.get_mut(&topic).expect("topic");
            if !isolated {
                state.next_search = None;
                state.search_delay = self.config.search_initial;
                continue;
            }
            let delay = state.search_delay;
            state.search_delay = (delay * 2).min(self.config.search_max);
            state.next_search = Some(now + delay);
            if !state.isolated_reported {
                state.isolated_reported = true;
                self.event(Event::TopicIsolated {
                    topic: topic.clone(),
                });
            }
            self.arm_search(now + delay);
            self.start_search(topic);
        }
    }

    pub(super) fn start_search(&mut self, topic: Topic) {
        if self.conns.is_empty() {
            return;
        }
        let search_id = self.rng.next_u64();
        self.remember_search((self.me, search_id), None);
        let search = Search {
            search_id,
            origin: self.my_info(),
            topic,
            hop_limit: self.config.search_hop_limit,
            visited: vec![self.me],
        };
        self.broadcast(Frame::Search(search));
    }

    pub(super) fn remember_search(&mut self, key: (NodeId, u64), from: Option<ConnId>) {
        if self.searches.len() >= self.config.max_pending_searches {
            if let Some(old) = self.search_order.pop_front() {
                self.searches.remove(&old);
                self.counters.search_evictions += 1;
                self.event(Event::Dropped {
                    kind: DropKind::Search,
                });
            }
        }
        self.searches.insert(key, from);
        self.search_order.push_back(key);
    }
}
