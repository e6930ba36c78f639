//! The duplicate filter: a sliding window of sequence numbers per publisher, in a bounded table.
//!
//! Each publisher numbers its messages 1, 2, 3, ... The filter keeps, per publisher, the highest
//! sequence seen and a bitmap of the [`WINDOW`] sequences below it (as IPsec's anti-replay
//! window). A message is new if its sequence is above the highest, or inside the window and not
//! yet marked. A sequence older than the window is treated as a duplicate (and counted as such):
//! on a path that keeps per-publisher order it cannot be new. Checking allocates nothing; only a
//! publisher seen for the first time takes a table slot. When the table holds its limit of
//! publishers, the one heard from least recently is evicted (and counted).
//!
//! The filter cannot be poisoned by plain forgery: a sequence more than [`MAX_AHEAD`] above the
//! highest seen is *implausible* when it comes second-hand (not from the publisher's own
//! connection) and is refused without moving the window, so one forged message with sequence
//! 2^64-1 cannot make every later real message look old. A first-hand message (from the
//! publisher's own connection) is believed: it may jump ahead, and one far behind the window
//! re-bases it (the publisher itself says where it is).

use std::collections::HashMap;

use chaski_wire::NodeId;

/// How many sequences below the highest one the filter remembers per publisher.
pub const WINDOW: u64 = 8192;

/// How far above the highest sequence seen from a publisher a second-hand message may be
/// (about a million messages missed at once); beyond, it is implausible and refused.
pub const MAX_AHEAD: u64 = 1 << 20;
const WORDS: usize = (WINDOW / 64) as usize;

#[derive(Debug, Clone)]
struct Window {
    highest: u64,
    bits: [u64; WORDS],
    last_used: u64,
}

impl Window {
    fn bit(seq: u64) -> (usize, u64) {
        let slot = seq % WINDOW;
        ((slot / 64) as usize, 1 << (slot % 64))
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
        if self.highest - seq >= WINDOW {
            return false;
        }
        let (w, b) = Window::bit(seq);
        let new = self.bits[w] & b == 0;
        self.bits[w] |= b;
        new
    }
}

/// What the filter decided about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// First time: deliver and forward.
    New,
    /// Already seen (or older than the window).
    Duplicate,
    /// Second-hand and more than [`MAX_AHEAD`] above the highest sequence seen: refused, the
    /// window untouched.
    Implausible,
}

/// The bounded duplicate filter keyed by (publisher, sequence).
#[derive(Debug)]
pub(crate) struct DuplicateFilter {
    /// Seeded fast hashing (foldhash): looked up once per message.
    windows: HashMap<NodeId, Window, foldhash::fast::RandomState>,
    capacity: usize,
    clock: u64,
    /// Publishers evicted to make room.
    pub(crate) evictions: u64,
}

impl DuplicateFilter {
    pub(crate) fn new(capacity: usize) -> DuplicateFilter {
        DuplicateFilter {
            windows: HashMap::default(),
            capacity,
            clock: 0,
            evictions: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.windows.len()
    }

    /// Checks (publisher, sequence) and marks it seen. `first_hand`: the message came from the
    /// publisher's own connection.
    pub(crate) fn check(&mut self, publisher: NodeId, sequence: u64, first_hand: bool) -> Seen {
        self.clock += 1;
        if let Some(w) = self.windows.get_mut(&publisher) {
            w.last_used = self.clock;
            if sequence > w.highest.saturating_add(MAX_AHEAD) && !first_hand {
                return Seen::Implausible;
            }
            if first_hand && w.highest - sequence.min(w.highest) >= WINDOW {
                // The publisher itself is far behind what the window holds: the window was
                // poisoned (or the publisher restarted): start again from here.
                w.highest = sequence;
                w.bits = [0; WORDS];
                let (word, bit) = Window::bit(sequence);
                w.bits[word] |= bit;
                return Seen::New;
            }
            return if w.check_and_mark(sequence) {
                Seen::New
            } else {
                Seen::Duplicate
            };
        }
        if self.windows.len() >= self.capacity {
            // Evict the publisher heard from least recently. O(n), but only when a new publisher
            // arrives at a full table.
            if let Some(oldest) = self
                .windows
                .iter()
                .min_by_key(|(_, w)| w.last_used)
                .map(|(id, _)| *id)
            {
                self.windows.remove(&oldest);
                self.evictions += 1;
            }
        }
        let mut w = Window {
            highest: 0,
            bits: [0; WORDS],
            last_used: self.clock,
        };
        w.check_and_mark(sequence);
        self.windows.insert(publisher, w);
        Seen::New
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_accepts_each_sequence_once_in_any_order() {
        let p = NodeId::from_u128(1);
        let mut f = DuplicateFilter::new(4);
        for s in [5, 3, 4, 1, 2, 1000, 6] {
            assert_eq!(f.check(p, s, false), Seen::New, "seq {s}");
        }
        for s in [5, 3, 4, 1, 2, 1000, 6] {
            assert_eq!(f.check(p, s, false), Seen::Duplicate, "seq {s}");
        }
        // Far ahead: the window slides; older than the window counts as duplicate.
        let far = 5 * WINDOW;
        assert_eq!(f.check(p, far, false), Seen::New);
        assert_eq!(f.check(p, far - WINDOW, false), Seen::Duplicate);
        assert_eq!(f.check(p, far - WINDOW + 1, false), Seen::New);
        assert_eq!(f.check(p, far - 1, false), Seen::New);
    }

    #[test]
    fn a_forged_far_ahead_sequence_cannot_silence_a_publisher() {
        let p = NodeId::from_u128(1);
        let mut f = DuplicateFilter::new(4);
        assert_eq!(f.check(p, 10, false), Seen::New);
        assert_eq!(f.check(p, u64::MAX, false), Seen::Implausible);
        assert_eq!(f.check(p, 11, false), Seen::New, "the window did not move");
        // Within reach, a jump is fine.
        assert_eq!(f.check(p, 11 + MAX_AHEAD, false), Seen::New);
        // The publisher's own connection may jump anywhere, and re-bases a poisoned window.
        assert_eq!(f.check(p, u64::MAX - 1, true), Seen::New);
        assert_eq!(f.check(p, 12 + MAX_AHEAD, true), Seen::New, "re-based");
        assert_eq!(f.check(p, 13 + MAX_AHEAD, false), Seen::New);
        assert_eq!(f.check(p, 13 + MAX_AHEAD, false), Seen::Duplicate);
    }

    #[test]
    fn table_is_bounded_and_evicts_least_recent() {
        let mut f = DuplicateFilter::new(2);
        let (a, b, c) = (
            NodeId::from_u128(1),
            NodeId::from_u128(2),
            NodeId::from_u128(3),
        );
        f.check(a, 1, false);
        f.check(b, 1, false);
        f.check(a, 2, false);
        f.check(c, 1, false); // evicts b
        assert_eq!(f.len(), 2);
        assert_eq!(f.evictions, 1);
        assert_eq!(f.check(a, 1, false), Seen::Duplicate);
        assert_eq!(f.check(b, 1, false), Seen::New, "b was forgotten");
    }
}
