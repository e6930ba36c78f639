//! Bookkeeping of the state machine: the tables of known peers, tombstones, the subscriber
//! index, cooldowns, the routing index, and the small helpers every other part uses.

use super::*;

impl Membership {
    pub(super) fn capabilities(&self) -> Capabilities {
        let caps = Capabilities::STATUS;
        if self.config.relay {
            caps.with(Capabilities::RELAY)
        } else {
            caps
        }
    }

    pub(super) fn my_info(&self) -> PeerInfo {
        PeerInfo {
            node_id: self.me,
            name: self.config.name.clone(),
            listen_addrs: self.config.listen_addrs.clone(),
            subscriptions: self.topics.keys().cloned().collect(),
            capabilities: self.capabilities(),
            full_topics: self
                .topics
                .keys()
                .filter(|t| self.degree(t) >= self.config.max_connections)
                .count() as u32,
        }
    }

    pub(super) fn add_topic(&mut self, now: Instant, topic: Topic) {
        self.topics.insert(
            topic,
            TopicState {
                isolated_reported: false,
                search_delay: self.config.search_initial,
                next_search: Some(now + self.config.search_initial),
                leader_delay: self.config.search_initial,
                next_leader_search: None,
            },
        );
        self.arm_search(now + self.config.search_initial);
        self.route_dirty = true;
        self.dirty = true;
    }

    pub(super) fn arm(&mut self, at: Instant, timer: Timer) {
        self.timer_seq += 1;
        self.timers.push(Reverse((at, self.timer_seq, timer)));
    }

    pub(super) fn arm_search(&mut self, at: Instant) {
        if self.next_search_at.is_none_or(|t| at < t) {
            self.next_search_at = Some(at);
            self.arm(at, Timer::Search);
        }
    }

    pub(super) fn push(&mut self, action: Action) {
        self.actions.push_back(action);
    }

    pub(super) fn event(&mut self, event: Event) {
        self.actions.push_back(Action::Event(event));
    }

    pub(super) fn send(&mut self, conn: ConnId, frame: Frame) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.frames_out += 1;
        }
        self.counters.control_frames_sent += 1;
        if matches!(
            frame,
            Frame::Search(_) | Frame::SearchReply(_) | Frame::PeerExchange(_)
        ) {
            self.counters.discovery_frames_sent += 1;
        }
        self.actions.push_back(Action::Send { conn, frame });
    }

    pub(super) fn broadcast(&mut self, frame: Frame) {
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            self.send(conn, frame.clone());
        }
    }

    pub(super) fn backoff(&mut self, failures: u32) -> Duration {
        let base = self
            .config
            .reconnect_initial
            .saturating_mul(1u32 << failures.min(20))
            .min(self.config.reconnect_max);
        if self.config.reconnect_jitter == 0.0 {
            base
        } else {
            base.mul_f64(1.0 - self.config.reconnect_jitter * self.rng.next_f64())
        }
    }

    pub(super) fn degree(&self, topic: &Topic) -> usize {
        self.conns
            .values()
            .filter(|c| c.paired.contains(topic))
            .count()
    }

    pub(super) fn index(&mut self, id: NodeId) {
        let Some(k) = self.known.get(&id) else { return };
        if k.down {
            return;
        }
        for t in &k.info.subscriptions {
            self.subscribers.entry(t.clone()).or_default().insert(id);
        }
    }

    pub(super) fn unindex(&mut self, id: NodeId) {
        let Some(k) = self.known.get(&id) else { return };
        for t in &k.info.subscriptions {
            if let Some(set) = self.subscribers.get_mut(t) {
                set.remove(&id);
                if set.is_empty() {
                    self.subscribers.remove(t);
                }
            }
        }
    }

    pub(super) fn is_dead(&self, id: NodeId, now: Instant) -> bool {
        self.dead.get(&id).is_some_and(|&until| until > now)
    }

    pub(super) fn bury(&mut self, id: NodeId, now: Instant) {
        if self.dead.len() >= self.config.max_known_peers {
            while let Some(old) = self.dead_order.pop_front() {
                if self.dead.remove(&old).is_some() {
                    break;
                }
            }
        }
        if self.dead.insert(id, now + TOMBSTONE_TTL).is_none() {
            self.dead_order.push_back(id);
        }
    }

    pub(super) fn forget(&mut self, id: NodeId) {
        self.unindex(id);
        self.known.remove(&id);
        self.dirty = true;
    }

    /// Makes room for one more known peer; false if nothing can be evicted.
    pub(super) fn make_room(&mut self, _now: Instant) -> bool {
        if self.known.len() < self.config.max_known_peers {
            return true;
        }
        let victim = self
            .known
            .iter()
            .filter(|(_, k)| k.conn.is_none() && !k.down && !k.keep)
            .min_by_key(|(id, k)| (k.last_seen, **id))
            .map(|(id, _)| *id);
        self.counters.known_evictions += 1;
        self.event(Event::Dropped {
            kind: DropKind::KnownPeer,
        });
        match victim {
            Some(id) => {
                self.forget(id);
                true
            }
            None => false,
        }
    }

    pub(super) fn cooling(&self, peer: NodeId, topic: &Topic, now: Instant) -> bool {
        self.known.get(&peer).is_some_and(|k| {
            k.cooldown
                .iter()
                .any(|(t, until)| t == topic && *until > now)
        })
    }

    pub(super) fn set_cooldown(&mut self, peer: NodeId, topic: &Topic, until: Instant) {
        let now = self.now;
        if let Some(k) = self.known.get_mut(&peer) {
            k.cooldown.retain(|(t, u)| t != topic && *u > now);
            k.cooldown.push((topic.clone(), until));
        }
    }

    /// The backbone of `topic` as this node sees it: every known live subscriber if they fit in
    /// `max_connections`, otherwise the `ring_neighbours` nearest on each side in the ring of
    /// subscriber ids.
    pub(super) fn desired(&self, topic: &Topic) -> Vec<NodeId> {
        let Some(members) = self.subscribers.get(topic) else {
            return Vec::new();
        };
        if members.len() <= self.config.max_connections {
            return members.iter().copied().collect();
        }
        ring_near(members, self.me, self.config.ring_neighbours)
    }

    pub(super) fn is_desired_anywhere(&self, peer: NodeId) -> bool {
        let Some(k) = self.known.get(&peer) else {
            return false;
        };
        k.info
            .subscriptions
            .iter()
            .filter(|t| self.topics.contains_key(*t))
            .any(|t| self.desired(t).contains(&peer))
    }
}
