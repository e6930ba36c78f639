//! The duplicate filter: a sliding window of sequence numbers per stream (publisher, its
//! incarnation, and topic), in a bounded table. A publisher restarted with the same key has a new
//! incarnation: its messages, numbered from 1 again, are a new stream, not replays of the old.
//!
//! Each publisher numbers its messages on each topic 1, 2, 3, ... The filter keeps, per stream,
//! the highest sequence seen and a bitmap of the [`WINDOW`] sequences below it (as IPsec's
//! anti-replay window). A message is new if its sequence is above the highest, or inside the
//! window and not yet marked. A sequence older than the window is treated as a duplicate (and
//! counted as such): on a path that keeps per-publisher order it cannot be new. Checking
//! allocates nothing; only a stream seen for the first time takes a table slot (and a copy of its
//! topic, so that the slot never pins a read buffer). When the table holds its limit of
//! streams, the one heard from least recently is evicted (and counted).
//!
//! # Believed within reason
//!
//! The filter cannot be poisoned by one forged message. A message from the publisher's own
//! connection (*first-hand*) is believed: it may jump anywhere, and one far behind the window
//! re-bases it (the publisher itself says where it is). A *second-hand* message (forwarded by
//! another peer) may move the window ahead by at most [`MAX_AHEAD`] sequences, an eighth of the
//! window: whatever it claims, every message the publisher really sent after the highest one
//! seen stays inside the window and is still taken as new. A second-hand message further ahead
//! is refused (and counted as an implausible sequence) and remembered as a *claim*; the window
//! jumps to it only when the jump is confirmed:
//!
//! * by a second peer forwarding a message of the same stream within a window of the claim
//!   (with flooding, the usual case after this node missed messages: every neighbour on the
//!   topic forwards the next one), or
//! * by the publisher itself (first-hand), or
//! * by time: the same peer went on claiming for [`CONFIRM_AFTER`] while the window accepted
//!   nothing (this node's only path to the publisher after an outage). The old window is then
//!   kept beside the new one: if the claim was a forgery, the publisher's real messages still fit
//!   the old window and are still delivered, once each.
//!
//! What remains possible: two colluding peers can confirm each other's jump; and a peer on the
//! path can push the window ahead with a *sustained* stream of forged messages, each at most
//! [`MAX_AHEAD`] above the last (at least `WINDOW / MAX_AHEAD` frames before the first real
//! message falls behind the window). Such a peer could as well drop what it forwards;
//! authenticated identities (and per-message signatures) are what stop it.

use std::time::Duration;

use chaski_wire::{NodeId, Topic};

use hashbrown::Equivalent;

use crate::{key::FilterRef, time::Instant};

/// How many sequences below the highest one the filter remembers per stream.
pub const WINDOW: u64 = 8192;

/// How far above the highest sequence seen on a stream a second-hand message may move the window
/// at once. Beyond, the jump must be confirmed (see the [module docs](self)).
pub const MAX_AHEAD: u64 = WINDOW / 8;

/// How long one peer must go on claiming a jump, with nothing else accepted on the stream, for
/// the window to follow it without a second peer's or the publisher's word.
pub const CONFIRM_AFTER: Duration = Duration::from_secs(1);

const WORDS: usize = (WINDOW / 64) as usize;

/// Who handed a message over.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum From {
    /// The publisher's own connection.
    Publisher,
    /// Another peer (`None`: a datagram that names no connection).
    Relay(Option<NodeId>),
}

#[derive(Debug, Clone)]
struct Window {
    highest: u64,
    bits: [u64; WORDS],
}

impl Window {
    fn at(seq: u64) -> Window {
        let mut w = Window {
            highest: seq,
            bits: [0; WORDS],
        };
        let (word, bit) = Window::bit(seq);
        w.bits[word] |= bit;
        w
    }

    fn bit(seq: u64) -> (usize, u64) {
        let slot = seq % WINDOW;
        ((slot / 64) as usize, 1 << (slot % 64))
    }

    /// Whether `seq` is inside the window or at most `ahead` above it.
    fn fits(&self, seq: u64, ahead: u64) -> bool {
        seq <= self.highest.saturating_add(ahead) && self.highest - seq.min(self.highest) < WINDOW
    }

    fn below(&self, seq: u64) -> bool {
        self.highest - seq.min(self.highest) >= WINDOW
    }

    /// Marks `seq`; returns whether it was new.
    fn check_and_mark(&mut self, seq: u64) -> bool {
        if seq > self.highest {
            let advance = seq - self.highest;
            if advance >= WINDOW {
                self.bits = [0; WORDS];
            } else {
                for s in self.highest + 1..=seq {
                    let (w, b) = Window::bit(s);
                    self.bits[w] &= !b;
                }
            }
            self.highest = seq;
            let (w, b) = Window::bit(seq);
            self.bits[w] |= b;
            return true;
        }
        if self.below(seq) {
            return false;
        }
        let (w, b) = Window::bit(seq);
        let new = self.bits[w] & b == 0;
        self.bits[w] |= b;
        new
    }
}

/// Unconfirmed jumps remembered per stream (one per peer).
const CLAIMS: usize = 4;

/// A jump ahead that one peer claims and nobody has confirmed yet.
#[derive(Debug, Clone)]
struct Claim {
    by: Option<NodeId>,
    seq: u64,
    since: Instant,
}

#[derive(Debug, Clone)]
struct Stream {
    window: Window,
    /// The window before a jump that only time confirmed: where the publisher's real messages
    /// still fit if the jump was a forgery.
    before: Option<Box<Window>>,
    /// Unconfirmed jumps, at most one per peer.
    claims: [Option<Claim>; CLAIMS],
    accepted_at: Instant,
    last_used: u64,
}

impl Stream {
    fn new(seq: u64, now: Instant, clock: u64) -> Stream {
        Stream {
            window: Window::at(seq),
            before: None,
            claims: Default::default(),
            accepted_at: now,
            last_used: clock,
        }
    }

    fn check(&mut self, now: Instant, seq: u64, from: From) -> Seen {
        let seen = self.decide(now, seq, from);
        if seen == Seen::New {
            self.accepted_at = now;
        }
        seen
    }

    fn decide(&mut self, now: Instant, seq: u64, from: From) -> Seen {
        let relay = match from {
            From::Publisher => {
                self.claims = Default::default();
                if let Some(mut before) = self.before.take() {
                    if self.window.below(seq) && before.fits(seq, MAX_AHEAD) {
                        // The publisher itself is where the old window was: the jump was
                        // forged. Back to the old window, which remembers what was delivered.
                        let seen = mark(&mut before, seq);
                        self.window = *before;
                        return seen;
                    }
                }
                if self.window.below(seq) {
                    // The publisher itself is far behind what the window holds: the window was
                    // pushed ahead (or the publisher restarted): start again from here.
                    self.window = Window::at(seq);
                    return Seen::New;
                }
                return mark(&mut self.window, seq);
            }
            From::Relay(relay) => relay,
        };
        if self.window.fits(seq, MAX_AHEAD) {
            return mark(&mut self.window, seq);
        }
        if let Some(before) = self.before.as_deref_mut() {
            if before.fits(seq, MAX_AHEAD) {
                return mark(before, seq);
            }
        }
        if self.window.below(seq) {
            return Seen::Duplicate;
        }
        // Far ahead of the window: a claim, confirmed or not.
        let near = |c: &Claim| c.seq.abs_diff(seq) < WINDOW;
        let confirmed_by_another = relay.is_some()
            && self
                .claims
                .iter()
                .flatten()
                .any(|c| c.by.is_some() && c.by != relay && near(c));
        let own = self
            .claims
            .iter()
            .position(|c| c.as_ref().is_some_and(|c| c.by == relay));
        let confirmed_by_time = own.and_then(|i| self.claims[i].as_ref()).is_some_and(|c| {
            near(c) && now - c.since >= CONFIRM_AFTER && self.accepted_at <= c.since
        });
        if !confirmed_by_another && !confirmed_by_time {
            match own.and_then(|i| self.claims[i].as_mut()) {
                Some(c) if near(c) => c.seq = c.seq.max(seq),
                Some(c) => {
                    *c = Claim {
                        by: relay,
                        seq,
                        since: now,
                    }
                }
                None => {
                    // A free slot, else the oldest claim's: one peer holds at most one slot.
                    let slot = self
                        .claims
                        .iter()
                        .position(Option::is_none)
                        .or_else(|| {
                            (0..CLAIMS).min_by_key(|&i| self.claims[i].as_ref().map(|c| c.since))
                        })
                        .unwrap_or(0);
                    self.claims[slot] = Some(Claim {
                        by: relay,
                        seq,
                        since: now,
                    });
                }
            }
            return Seen::Implausible;
        }
        // From the highest claimed near it, with nothing marked but this message: the claimed
        // ones were refused, their next copies are new.
        let highest = self
            .claims
            .iter()
            .flatten()
            .filter(|c| near(c))
            .map(|c| c.seq)
            .fold(seq, u64::max);
        let empty = Window {
            highest,
            bits: [0; WORDS],
        };
        let old = std::mem::replace(&mut self.window, empty);
        self.before = (!confirmed_by_another).then(|| Box::new(old));
        self.claims = Default::default();
        mark(&mut self.window, seq)
    }
}

fn mark(window: &mut Window, seq: u64) -> Seen {
    if window.check_and_mark(seq) {
        Seen::New
    } else {
        Seen::Duplicate
    }
}

/// What the filter decided about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// First time: deliver and forward.
    New,
    /// Already seen (or older than the window).
    Duplicate,
    /// Second-hand and more than [`MAX_AHEAD`] above the highest sequence seen, not (yet)
    /// confirmed: refused, the window untouched.
    Implausible,
}

type Key = (NodeId, u64, Topic);

/// The bounded duplicate filter keyed by (publisher, topic, sequence).
#[derive(Debug)]
pub(crate) struct DuplicateFilter {
    /// The streams, keyed by (publisher, incarnation, topic).
    streams: Vec<(Key, Stream)>,
    /// Where each stream is in `streams`. Seeded fast hashing (foldhash), by a borrowed key:
    /// no reference count on the topic's receive buffer.
    index: hashbrown::HashMap<Key, usize, foldhash::fast::RandomState>,
    /// The stream checked last: most messages are of the same stream as the one before them,
    /// found again without hashing.
    last: usize,
    capacity: usize,
    clock: u64,
    /// Streams evicted to make room.
    pub(crate) evictions: u64,
}

impl DuplicateFilter {
    pub(crate) fn new(capacity: usize) -> DuplicateFilter {
        DuplicateFilter {
            streams: Vec::new(),
            index: hashbrown::HashMap::default(),
            last: 0,
            capacity,
            clock: 0,
            evictions: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.streams.len()
    }

    /// Checks (publisher, incarnation, topic, sequence) and marks it seen.
    pub(crate) fn check(
        &mut self,
        now: Instant,
        (publisher, incarnation): (NodeId, u64),
        topic: &Topic,
        sequence: u64,
        from: From,
    ) -> Seen {
        self.clock += 1;
        let key = FilterRef(publisher, incarnation, topic);
        let found = match self.streams.get(self.last) {
            Some((k, _)) if key.equivalent(k) => Some(self.last),
            _ => self.index.get(&key).copied(),
        };
        if let Some(i) = found {
            self.last = i;
            let s = &mut self.streams[i].1;
            s.last_used = self.clock;
            return s.check(now, sequence, from);
        }
        if self.streams.len() >= self.capacity {
            // Evict the stream heard from least recently. O(n), but only when a new stream
            // arrives at a full table.
            if let Some(oldest) =
                (0..self.streams.len()).min_by_key(|&i| self.streams[i].1.last_used)
            {
                let (gone, _) = self.streams.swap_remove(oldest);
                self.index.remove(&gone);
                if let Some((moved, _)) = self.streams.get(oldest)
                    && let Some(at) = self.index.get_mut(moved)
                {
                    *at = oldest;
                }
                self.evictions += 1;
            }
        }
        let key = (publisher, incarnation, topic.detached());
        self.last = self.streams.len();
        self.index.insert(key.clone(), self.last);
        self.streams
            .push((key, Stream::new(sequence, now, self.clock)));
        Seen::New
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Instant = Instant::ZERO;

    fn at(ms: u64) -> Instant {
        Instant::from_duration(Duration::from_millis(ms))
    }

    fn relay(n: u128) -> From {
        From::Relay(Some(NodeId::from_u128(n)))
    }

    struct One {
        f: DuplicateFilter,
        p: NodeId,
        t: Topic,
    }

    impl One {
        fn new() -> One {
            One {
                f: DuplicateFilter::new(4),
                p: NodeId::from_u128(1),
                t: Topic::from_static("t"),
            }
        }

        fn check(&mut self, now: Instant, seq: u64, from: From) -> Seen {
            self.f.check(now, (self.p, 0), &self.t, seq, from)
        }
    }

    #[test]
    fn window_accepts_each_sequence_once_in_any_order() {
        let mut one = One::new();
        for s in [5, 3, 4, 1, 2, 1000, 6] {
            assert_eq!(one.check(T0, s, relay(2)), Seen::New, "seq {s}");
        }
        for s in [5, 3, 4, 1, 2, 1000, 6] {
            assert_eq!(one.check(T0, s, relay(2)), Seen::Duplicate, "seq {s}");
        }
        // Step by step to well past the window; older than the window counts as duplicate.
        let far = 5 * WINDOW;
        for s in (1000..far).step_by(MAX_AHEAD as usize) {
            one.check(T0, s, relay(2));
        }
        assert_eq!(one.check(T0, far, relay(2)), Seen::New);
        assert_eq!(one.check(T0, far - WINDOW, relay(2)), Seen::Duplicate);
        assert_eq!(one.check(T0, far - WINDOW + 1, relay(2)), Seen::New);
        assert_eq!(one.check(T0, far - 1, relay(2)), Seen::New);
    }

    #[test]
    fn a_new_incarnation_is_a_new_stream_not_a_replay() {
        let mut f = DuplicateFilter::new(4);
        let (p, t) = (NodeId::from_u128(1), Topic::from_static("t"));
        for s in 1..=100 {
            assert_eq!(f.check(T0, (p, 0), &t, s, relay(2)), Seen::New);
        }
        // Restarted with the same key: numbered from 1 again, second-hand, all new.
        for s in 1..=100 {
            assert_eq!(f.check(T0, (p, 7), &t, s, relay(2)), Seen::New, "seq {s}");
        }
        assert_eq!(f.check(T0, (p, 0), &t, 50, relay(2)), Seen::Duplicate);
    }

    #[test]
    fn topics_are_separate_streams() {
        let mut f = DuplicateFilter::new(4);
        let p = NodeId::from_u128(1);
        let (a, b) = (Topic::from_static("a"), Topic::from_static("b"));
        assert_eq!(f.check(T0, (p, 0), &a, 1, relay(2)), Seen::New);
        assert_eq!(f.check(T0, (p, 0), &b, 1, relay(2)), Seen::New);
        assert_eq!(f.check(T0, (p, 0), &a, 1, relay(2)), Seen::Duplicate);
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn a_forged_far_ahead_sequence_cannot_silence_a_publisher() {
        let mut one = One::new();
        assert_eq!(one.check(T0, 10, relay(2)), Seen::New);
        assert_eq!(one.check(T0, u64::MAX, relay(9)), Seen::Implausible);
        assert_eq!(
            one.check(T0, 11, relay(2)),
            Seen::New,
            "the window did not move"
        );
        // The largest jump allowed at once leaves every later real message inside the window.
        assert_eq!(one.check(T0, 11 + MAX_AHEAD, relay(9)), Seen::New);
        for s in 12..100 {
            assert_eq!(one.check(T0, s, relay(2)), Seen::New, "seq {s}");
        }
    }

    #[test]
    fn a_jump_is_confirmed_by_a_second_peer() {
        let mut one = One::new();
        assert_eq!(one.check(T0, 10, relay(2)), Seen::New);
        let gap = 10 + 5 * WINDOW;
        assert_eq!(one.check(T0, gap, relay(2)), Seen::Implausible);
        assert_eq!(
            one.check(T0, gap + 1, relay(2)),
            Seen::Implausible,
            "same peer"
        );
        // Another neighbour forwards the same message: confirmed; its copy is the one delivered.
        assert_eq!(one.check(T0, gap, relay(3)), Seen::New);
        assert_eq!(one.check(T0, gap + 1, relay(3)), Seen::New);
        assert_eq!(one.check(T0, gap + 1, relay(2)), Seen::Duplicate);
        assert_eq!(
            one.check(T0, 11, relay(2)),
            Seen::Duplicate,
            "behind the new window"
        );
    }

    #[test]
    fn a_jump_is_confirmed_by_the_publisher_or_by_time() {
        let mut one = One::new();
        assert_eq!(one.check(T0, 10, relay(2)), Seen::New);
        let gap = 10 + 5 * WINDOW;
        assert_eq!(one.check(T0, gap, relay(2)), Seen::Implausible);
        assert_eq!(one.check(at(1), gap + 1, From::Publisher), Seen::New);
        assert_eq!(one.check(at(1), gap, relay(2)), Seen::New);

        // Only one path: the same peer claims for CONFIRM_AFTER with nothing else accepted.
        let mut one = One::new();
        assert_eq!(one.check(T0, 10, relay(2)), Seen::New);
        assert_eq!(one.check(at(100), gap, relay(2)), Seen::Implausible);
        assert_eq!(one.check(at(600), gap + 5, relay(2)), Seen::Implausible);
        assert_eq!(one.check(at(1100), gap + 9, relay(2)), Seen::New);
        assert_eq!(one.check(at(1100), gap + 10, relay(2)), Seen::New);
        // Had it been a forgery, the real messages still fit the old window, once each.
        assert_eq!(one.check(at(1200), 11, relay(3)), Seen::New);
        assert_eq!(one.check(at(1200), 11, relay(2)), Seen::Duplicate);
        assert_eq!(one.check(at(1200), 10, relay(3)), Seen::Duplicate);
    }

    #[test]
    fn time_does_not_confirm_a_claim_while_real_messages_flow() {
        let mut one = One::new();
        assert_eq!(one.check(T0, 10, relay(2)), Seen::New);
        let forged = 10 + 5 * WINDOW;
        for i in 0..30 {
            let now = at(100 * i);
            assert_eq!(one.check(now, forged + i, relay(9)), Seen::Implausible);
            assert_eq!(one.check(now, 11 + i, relay(2)), Seen::New);
        }
    }

    #[test]
    fn the_publishers_own_word_re_bases_the_window() {
        let mut one = One::new();
        for s in (0..=4 * WINDOW).step_by(MAX_AHEAD as usize) {
            one.check(T0, s, relay(9));
        }
        assert_eq!(one.check(T0, 5, relay(2)), Seen::Duplicate, "pushed ahead");
        assert_eq!(one.check(T0, 6, From::Publisher), Seen::New, "re-based");
        assert_eq!(one.check(T0, 7, relay(2)), Seen::New);
        assert_eq!(one.check(T0, 7, relay(2)), Seen::Duplicate);
    }

    #[test]
    fn a_stream_moved_by_an_eviction_keeps_its_window() {
        let mut f = DuplicateFilter::new(3);
        let t = Topic::from_static("t");
        let p = |n| (NodeId::from_u128(n), 0);
        for n in 1..=3 {
            assert_eq!(f.check(T0, p(n), &t, 10, relay(9)), Seen::New);
        }
        // 2 and 3 are heard again; 1 is the least recent, the last in the table moves to its
        // place when it goes.
        assert_eq!(f.check(T0, p(2), &t, 10, relay(9)), Seen::Duplicate);
        assert_eq!(f.check(T0, p(3), &t, 10, relay(9)), Seen::Duplicate);
        assert_eq!(f.check(T0, p(4), &t, 10, relay(9)), Seen::New);
        assert_eq!(f.len(), 3);
        assert_eq!(f.evictions, 1);
        for n in [2, 3, 4] {
            assert_eq!(f.check(T0, p(n), &t, 10, relay(9)), Seen::Duplicate, "{n}");
            assert_eq!(f.check(T0, p(n), &t, 11, relay(9)), Seen::New, "{n}");
        }
        // Forgotten: its next message starts it again.
        assert_eq!(f.check(T0, p(1), &t, 10, relay(9)), Seen::New);
    }

    #[test]
    fn table_is_bounded_and_evicts_least_recent() {
        let mut f = DuplicateFilter::new(2);
        let t = Topic::from_static("t");
        let (a, b, c) = (
            NodeId::from_u128(1),
            NodeId::from_u128(2),
            NodeId::from_u128(3),
        );
        f.check(T0, (a, 0), &t, 1, relay(9));
        f.check(T0, (b, 0), &t, 1, relay(9));
        f.check(T0, (a, 0), &t, 2, relay(9));
        f.check(T0, (c, 0), &t, 1, relay(9)); // evicts b
        assert_eq!(f.len(), 2);
        assert_eq!(f.evictions, 1);
        assert_eq!(f.check(T0, (a, 0), &t, 1, relay(9)), Seen::Duplicate);
        assert_eq!(
            f.check(T0, (b, 0), &t, 1, relay(9)),
            Seen::New,
            "b was forgotten"
        );
    }
}
