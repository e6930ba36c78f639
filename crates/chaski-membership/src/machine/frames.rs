//! What peers send: pongs, subscription updates, pairing frames, searches and their replies,
//! beacons, peer exchanges (what is learnt from them, within the limits of `crate::limits`), and
//! the end of a connection.

use super::*;

/// Bytes of peer infos in one peer exchange at most: what fits a control frame with room to
/// spare, so that the receiver's default limit never closes the connection.
const EXCHANGE_BYTES: usize = chaski_wire::DEFAULT_MAX_CONTROL_FRAME_LEN - (64 << 10);

impl Membership {
    pub(super) fn send_ping(&mut self, now: Instant, conn: ConnId, id: Option<PingId>, size: u32) {
        let wire_id = self.next_wire_ping;
        self.next_wire_ping += 1;
        let peer = self.conns.get(&conn).map(|c| c.peer);
        if let (Some(id), Some(peer)) = (id, peer) {
            if self.pending_pings.len() >= self.config.max_pending_pings {
                self.pending_pings.pop_front();
                self.counters.ping_evictions += 1;
                self.event(Event::Dropped {
                    kind: DropKind::Ping,
                });
            }
            self.pending_pings.push_back(PendingPing {
                wire_id,
                id,
                peer,
                size,
            });
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            if c.pings_out.len() >= MAX_PINGS_IN_FLIGHT {
                c.pings_out.pop_front();
            }
            c.pings_out.push_back((wire_id, now));
        }
        let padding = padding(size);
        self.send(
            conn,
            Frame::Ping(Ping {
                id: wire_id,
                sent_at_micros: now.as_micros(),
                padding,
                reply_padding: size,
            }),
        );
    }

    pub(super) fn on_pong(&mut self, now: Instant, conn: ConnId, peer: NodeId, pong: &Pong) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        // Only an answer to a ping of ours counts, timed by our own clock: an unsolicited or
        // forged pong cannot claim a low round trip (and so win extra links).
        let Some(pos) = c.pings_out.iter().position(|&(id, _)| id == pong.id) else {
            self.counters.unexpected_frames += 1;
            return;
        };
        let sent = c.pings_out[pos].1;
        c.pings_out.drain(..=pos);
        let rtt = now - sent;
        c.rtt.update(rtt);
        let stats = c.rtt;
        self.event(Event::LatencyUpdated {
            peer,
            srtt: stats.srtt,
            rttvar: stats.rttvar,
            min_rtt: stats.min_rtt,
        });
        if let Some(pos) = self.pending_pings.iter().position(|p| p.wire_id == pong.id) {
            let p = self.pending_pings.remove(pos).expect("position");
            self.event(Event::PingResult {
                id: p.id,
                peer: p.peer,
                rtt,
                size: p.size,
            });
        }
    }

    /// How much of the `asked` padding a pong on `conn` may carry now: at most
    /// `max_ping_padding`, and at most that many bytes per `ping_interval` on one connection.
    pub(super) fn padding_allowed(&mut self, now: Instant, conn: ConnId, asked: u32) -> u32 {
        let max = self.config.max_ping_padding;
        let window = self.config.ping_interval;
        let Some(c) = self.conns.get_mut(&conn) else {
            return 0;
        };
        if now - c.padding_since >= window {
            c.padding_since = now;
            c.padding_sent = 0;
        }
        let asked = asked.min(max);
        if c.padding_sent + u64::from(asked) > u64::from(max) {
            self.counters.padding_refused += 1;
            return 0;
        }
        c.padding_sent += u64::from(asked);
        asked
    }

    /// Counts a violation and reports it (the caller closes the connection).
    pub(super) fn count_violation(&mut self, peer: NodeId, conn: ConnId, kind: Violation) {
        self.counters.violations.add(kind);
        self.event(Event::ProtocolViolation { peer, conn, kind });
    }

    /// `peer` broke a limit on `conn`: the connection is closed with `ProtocolError` and the
    /// peer is not dialed again for a while (it is buried as dead; if it connects to us again,
    /// it is accepted and checked again).
    pub(super) fn violation(&mut self, now: Instant, conn: ConnId, peer: NodeId, kind: Violation) {
        self.count_violation(peer, conn, kind);
        self.drop_conn(
            now,
            conn,
            DownReason::Closed(GoodbyeReason::ProtocolError),
            Some(GoodbyeReason::ProtocolError),
        );
        if self.known.get(&peer).is_some_and(|k| k.conn.is_none()) {
            self.forget(peer);
            self.bury(peer, now);
        }
    }

    pub(super) fn on_subscription_update(
        &mut self,
        now: Instant,
        conn: ConnId,
        peer: NodeId,
        u: SubscriptionUpdate,
    ) {
        let Some(k) = self.known.get(&peer) else {
            return;
        };
        if u.revision <= k.sub_revision {
            return;
        }
        // Sets, not nested loops: the lists are bounded (`limits`), and still never quadratic.
        let removed: HashSet<&Topic> = u.removed.iter().collect();
        let mut topics: BTreeSet<Topic> = k
            .info
            .subscriptions
            .iter()
            .filter(|t| !removed.contains(t))
            .cloned()
            .collect();
        // Stored topics are copied out of the read buffer, so that they pin no large buffer.
        topics.extend(u.added.iter().map(Topic::detached));
        if topics.len() > self.config.max_peer_topics {
            self.violation(now, conn, peer, Violation::TooManyTopics);
            return;
        }
        self.unindex(peer);
        let k = self.known.get_mut(&peer).expect("known");
        k.sub_revision = u.revision;
        k.last_seen = now;
        k.info.subscriptions = topics.into_iter().collect();
        self.index(peer);
        for t in &u.removed {
            self.unpair_local(conn, t);
        }
        for t in &u.added {
            self.notify_near(t, peer);
        }
        self.route_dirty = true;
        self.dirty = true;
    }

    pub(super) fn on_pair_request(
        &mut self,
        now: Instant,
        conn: ConnId,
        peer: NodeId,
        r: PairRequest,
    ) {
        let mut accepted = Vec::new();
        let mut rejected = Vec::new();
        for t in r.topics {
            let ok = self.accept_pair(now, conn, peer, &t);
            if ok {
                accepted.push(t);
            } else {
                rejected.push(t);
            }
        }
        self.send(
            conn,
            Frame::PairResponse(PairResponse {
                request_id: r.request_id,
                accepted,
                rejected,
            }),
        );
    }

    pub(super) fn accept_pair(
        &mut self,
        _now: Instant,
        conn: ConnId,
        peer: NodeId,
        t: &Topic,
    ) -> bool {
        if !self.wants(t) && !self.config.relay {
            return false;
        }
        if self
            .conns
            .get(&conn)
            .is_some_and(|c| c.paired.contains(t) || c.pending.contains(t))
        {
            // Already a link, or both sides asked at once: agree.
            self.pair_local(conn, peer, t);
            return true;
        }
        let degree = self.degree(t);
        let desired = self.desired(t);
        let ok = if self.config.relay && !self.wants(t) {
            true
        } else if desired.contains(&peer) {
            if degree >= self.config.max_connections {
                // Make room by releasing the worst link that is not part of the backbone.
                self.evict_extra(t, &desired);
            }
            self.degree(t) < self.config.max_connections
        } else {
            let pending = self
                .conns
                .values()
                .filter(|c| c.pending.contains(t))
                .count();
            degree + pending < self.config.max_connections
        };
        if ok {
            self.pair_local(conn, peer, t);
        }
        ok
    }

    pub(super) fn on_pair_response(
        &mut self,
        now: Instant,
        conn: ConnId,
        peer: NodeId,
        r: PairResponse,
    ) {
        for t in r.accepted {
            let pending = self
                .conns
                .get_mut(&conn)
                .is_some_and(|c| c.pending.remove(&t));
            if !self.wants(&t) {
                // Unsubscribed meanwhile.
                self.send(conn, Frame::Unpair(Unpair { topics: vec![t] }));
                continue;
            }
            if pending || self.conns.contains_key(&conn) {
                self.pair_local(conn, peer, &t);
            }
        }
        for t in r.rejected {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.pending.remove(&t);
            }
            // A refresh of a link the peer no longer has: drop our side too.
            self.unpair_local(conn, &t);
            let retry = if self.desired(&t).contains(&peer) {
                self.config.pair_retry
            } else {
                EXTRA_RETRY
            };
            self.set_cooldown(peer, &t, now + retry);
        }
        self.dirty = true;
    }

    /// Re-asserts the links of `conn` with a `PairRequest` for its paired topics: the peer
    /// accepts what it also has and rejects what it dropped, so both ends agree again after a
    /// connection was replaced (frames in flight lost).
    pub(super) fn refresh_pairs(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if c.paired.is_empty() {
            return;
        }
        let topics: Vec<Topic> = c.paired.iter().cloned().collect();
        let request_id = self.rng.next_u64();
        self.send(conn, Frame::PairRequest(PairRequest { request_id, topics }));
    }

    pub(super) fn pair_local(&mut self, conn: ConnId, peer: NodeId, t: &Topic) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.pending.remove(t);
        if c.paired.insert(t.clone()) {
            c.unneeded_since = None;
            self.event(Event::Paired {
                topic: t.clone(),
                peer,
            });
            self.route_dirty = true;
            self.dirty = true;
        }
    }

    pub(super) fn unpair_local(&mut self, conn: ConnId, t: &Topic) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.pending.remove(t);
        if c.paired.remove(t) {
            let peer = c.peer;
            self.event(Event::Unpaired {
                topic: t.clone(),
                peer,
            });
            self.route_dirty = true;
            self.dirty = true;
        }
    }

    pub(super) fn evict_extra(&mut self, t: &Topic, desired: &[NodeId]) {
        let victim = self
            .conns
            .iter()
            .filter(|(_, c)| c.paired.contains(t) && !desired.contains(&c.peer))
            .max_by_key(|(id, c)| (c.rtt.srtt, **id))
            .map(|(&id, c)| (id, c.peer));
        if let Some((conn, peer)) = victim {
            self.send(
                conn,
                Frame::Unpair(Unpair {
                    topics: vec![t.clone()],
                }),
            );
            self.set_cooldown(peer, t, self.now + EXTRA_RETRY);
            self.unpair_local(conn, t);
        }
    }

    pub(super) fn on_search(&mut self, now: Instant, conn: ConnId, s: Search) {
        let key = (s.origin.node_id, s.search_id);
        if self.searches.contains_key(&key) || s.origin.node_id == self.me {
            return;
        }
        self.remember_search(key, Some(conn));
        self.learn(now, s.origin.clone(), DiscoverySource::Search);
        if self.wants(&s.topic) {
            let component = self
                .subscribers
                .get(&s.topic)
                .and_then(|m| m.first().copied())
                .map_or(self.me, |first| first.min(self.me));
            let reply = SearchReply {
                search_id: s.search_id,
                origin: s.origin.node_id,
                responder: self.my_info(),
                topic: s.topic.clone(),
                paired: self.degree(&s.topic) as u32,
                capacity: self.config.max_connections as u32,
                hop_limit: self.config.search_hop_limit,
                component,
            };
            self.send(conn, Frame::SearchReply(reply));
        }
        // Forward whether or not this node is itself full or subscribed, never further than our
        // own hop limit allows.
        let hop_limit = s.hop_limit.min(self.config.search_hop_limit);
        if hop_limit > 0 {
            let mut visited = s.visited;
            if visited.len() <= self.config.search_hop_limit as usize {
                visited.push(self.me);
            }
            let next: Vec<ConnId> = self
                .conns
                .iter()
                .filter(|(id, c)| **id != conn && !visited.contains(&c.peer))
                .map(|(&id, _)| id)
                .collect();
            let fwd = Search {
                search_id: s.search_id,
                origin: s.origin,
                topic: s.topic,
                hop_limit: hop_limit - 1,
                visited,
            };
            for c in next {
                self.send(c, Frame::Search(fwd.clone()));
            }
        }
    }

    pub(super) fn on_search_reply(&mut self, now: Instant, _conn: ConnId, r: SearchReply) {
        if r.responder.node_id != self.me {
            self.learn(now, r.responder.clone(), DiscoverySource::Search);
        }
        let hop_limit = r.hop_limit.min(self.config.search_hop_limit);
        if r.origin == self.me || hop_limit == 0 {
            return;
        }
        let back = self.known.get(&r.origin).and_then(|k| k.conn).or_else(|| {
            self.searches
                .get(&(r.origin, r.search_id))
                .copied()
                .flatten()
        });
        if let Some(back) = back {
            let fwd = SearchReply {
                hop_limit: hop_limit - 1,
                ..r
            };
            self.send(back, Frame::SearchReply(fwd));
        }
    }

    pub(super) fn on_beacon(&mut self, _now: Instant, from: SocketAddr, b: Beacon) {
        if !self.config.lan_discovery {
            // A unicast beacon to the node's port, with LAN discovery off: not asked for.
            self.counters.unexpected_frames += 1;
            return;
        }
        if b.node_id == self.me || b.network_id != self.config.network_id {
            return;
        }
        if let Some(k) = self.known.get(&b.node_id) {
            let digest = subscription_digest(k.info.subscriptions.iter());
            if k.conn.is_some() || k.down || digest == b.subscription_digest {
                return;
            }
        }
        // Dialed where the beacon came from, on the port it names: a beacon cannot aim this node
        // at another host.
        let port = b.listen_addrs.first().map_or(from.port(), SocketAddr::port);
        self.dial(
            SocketAddr::new(from.ip(), port),
            Some(b.node_id),
            DiscoverySource::Lan,
        );
    }

    /// Records what another node says about a peer. Connected peers are described by their own
    /// hello and updates, which win.
    pub(super) fn learn(&mut self, now: Instant, mut info: PeerInfo, source: DiscoverySource) {
        detach_topics(&mut info.subscriptions);
        let id = info.node_id;
        if id == self.me {
            return;
        }
        // A search or search reply comes from the node itself: first-hand, it proves the node
        // is alive (even if we had given up on it). A peer exchange is hearsay.
        let first_hand = source == DiscoverySource::Search;
        if first_hand && self.dead.remove(&id).is_some() {
            self.dead_order.retain(|d| *d != id);
        }
        if let Some(k) = self.known.get_mut(&id) {
            k.last_seen = now;
            if first_hand {
                k.heard_at = Some(now);
            }
            if k.conn.is_some() || k.down || k.info.subscriptions == info.subscriptions {
                if k.conn.is_none() && !k.down {
                    k.info.listen_addrs = info.listen_addrs;
                }
                return;
            }
            self.unindex(id);
            let k = self.known.get_mut(&id).expect("known");
            let added: Vec<Topic> = info
                .subscriptions
                .iter()
                .filter(|t| !k.info.subscriptions.contains(t))
                .cloned()
                .collect();
            k.info = info;
            self.index(id);
            for t in &added {
                self.notify_near(t, id);
            }
            self.dirty = true;
            return;
        }
        if info.listen_addrs.is_empty() || self.is_dead(id, now) || !self.make_room(now) {
            return;
        }
        let topics = info.subscriptions.clone();
        self.known.insert(
            id,
            Known {
                heard_at: first_hand.then_some(now),
                ..Known::new(info, source, now)
            },
        );
        self.index(id);
        self.event(Event::PeerDiscovered { peer: id, source });
        for t in &topics {
            self.notify_near(t, id);
        }
        self.dirty = true;
    }

    /// `id` is a new subscriber of `topic` as far as this node knows: tell the connected
    /// subscribers nearest to it in the topic's ring (those for which it may be a better
    /// neighbour), with the next batched peer exchange.
    pub(super) fn notify_near(&mut self, topic: &Topic, id: NodeId) {
        if !self.config.relay && !self.topics.contains_key(topic) {
            return;
        }
        let Some(members) = self.subscribers.get(topic) else {
            return;
        };
        let near = ring_near(members, id, self.config.exchange_per_topic.div_ceil(2));
        let mut any = false;
        for n in near {
            if let Some(conn) = self.known.get(&n).and_then(|k| k.conn) {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.exchange_dirty = true;
                    any = true;
                }
            }
        }
        if any && !self.exchange_flush_armed {
            self.exchange_flush_armed = true;
            self.arm(self.now + self.config.exchange_delay, Timer::ExchangeFlush);
        }
    }

    pub(super) fn send_exchange(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.exchange_dirty = false;
        let receiver = c.peer;
        let Some(rk) = self.known.get(&receiver) else {
            return;
        };
        let mut chosen: Vec<NodeId> = Vec::new();
        let half = self.config.exchange_per_topic.div_ceil(2);
        // Every topic the receiver wants, subscribed here or not: nodes in between carry
        // knowledge across (a seed that does not share a topic still introduces its
        // subscribers to each other).
        for t in &rk.info.subscriptions {
            let Some(members) = self.subscribers.get(t) else {
                continue;
            };
            let mut candidates = ring_near(members, receiver, half);
            candidates.extend(members.first().copied());
            candidates.extend(members.last().copied());
            for n in candidates {
                if n != receiver && !chosen.contains(&n) {
                    chosen.push(n);
                }
            }
            if chosen.len() >= self.config.max_exchange_peers {
                break;
            }
        }
        let now = self.now;
        chosen.retain(|id| {
            self.known.get(id).is_some_and(|k| {
                k.conn.is_some() || k.heard_at.is_some_and(|h| now - h <= FRESHNESS)
            })
        });
        chosen.truncate(self.config.max_exchange_peers);
        if chosen.is_empty() {
            return;
        }
        // As many as fit a control frame (the receiver's limit), in order of choice.
        let mut peers = Vec::with_capacity(chosen.len());
        let mut len = 0;
        for id in chosen {
            let Some(k) = self.known.get(&id) else {
                continue;
            };
            let one = Frame::PeerExchange(PeerExchange {
                peers: vec![k.info.clone()],
            });
            len += one.encoded_len();
            if len > EXCHANGE_BYTES {
                self.counters.exchanges_cut += 1;
                break;
            }
            if let Frame::PeerExchange(mut one) = one {
                peers.append(&mut one.peers);
            }
        }
        if peers.is_empty() {
            return;
        }
        self.send(conn, Frame::PeerExchange(PeerExchange { peers }));
    }

    /// Forgets a connection: events, then the re-dial if the peer is still wanted and the end
    /// was a failure. `goodbye` is set when this node closes it.
    pub(super) fn drop_conn(
        &mut self,
        now: Instant,
        conn: ConnId,
        reason: DownReason,
        goodbye: Option<GoodbyeReason>,
    ) {
        let wanted = match self.conns.get(&conn) {
            None => return,
            Some(c) => {
                !c.paired.is_empty()
                    || self.known.get(&c.peer).is_some_and(|k| k.keep)
                    || self.is_desired_anywhere(c.peer)
            }
        };
        let c = self.conns.remove(&conn).expect("conn");
        self.broadcast_conn_closed(conn);
        if let Some(g) = goodbye {
            self.push(Action::Close { conn, reason: g });
        }
        for t in &c.paired {
            self.event(Event::Unpaired {
                topic: t.clone(),
                peer: c.peer,
            });
        }
        self.event(Event::PeerDown {
            peer: c.peer,
            conn,
            reason,
        });
        self.route_dirty = true;
        self.dirty = true;
        let peer = c.peer;
        if let Some(k) = self.known.get_mut(&peer) {
            if k.conn == Some(conn) {
                k.conn = None;
            }
            k.heard_at = Some(c.last_rx);
        }
        // A connection that ends before it is stable (refused as a duplicate, overloaded, lost
        // at once) is one more failed attempt: the re-dial backs off further each time, so that
        // no refusal, however quick, makes two nodes reconnect in a loop.
        let flapped = !matches!(reason, DownReason::Closed(_))
            && now - c.since < self.config.ping_interval
            && self.known.get(&peer).is_some_and(|k| k.conn.is_none());
        match reason {
            DownReason::Goodbye(GoodbyeReason::Shutdown) => self.forget(peer),
            _ if flapped => {
                self.counters.flaps += 1;
                self.dial_failed_for(now, peer);
            }
            r if r.is_failure() && wanted => {
                self.unindex(peer);
                if let Some(k) = self.known.get_mut(&peer) {
                    k.down = true;
                    k.failures = 0;
                }
                let delay = self.backoff(0);
                self.arm(now + delay, Timer::Redial(peer));
            }
            r if r.is_failure() => self.forget(peer),
            _ => {
                if let Some(k) = self.known.get_mut(&peer) {
                    k.failures = 0;
                }
            }
        }
        if self.conns.is_empty() && !self.config.seeds.is_empty() && !self.seeds_armed {
            self.seed_failures = 0;
            let delay = self.backoff(0);
            self.arm(now + delay, Timer::Seeds);
            self.seeds_armed = true;
        }
    }
}
