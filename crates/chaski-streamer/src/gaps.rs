//! Gap detection: which reliable messages this node never received.
//!
//! Each (publisher, incarnation, topic) stream is numbered 1, 2, 3, ... by its publisher. For
//! every stream it delivers, the node remembers the next sequence it expects; a message further
//! ahead opens a *gap* (the sequences skipped). A gap that later messages fill (copies that took
//! another path arrive late) closes quietly; one still open after the *gap timeout* is reported
//! as missed, once, with its exact range, and the stream moves on.
//!
//! What this does not see: the loss of a stream's last messages (nothing later arrives to show
//! the gap) and messages published before this node first heard of the stream (its first
//! message sets where the stream starts here). Nothing is recovered: see issue 12 for repair.
//!
//! Limits: [`MAX_STREAMS`] streams (when full, an arbitrary stream is forgotten, counted in
//! `forgotten`; its next message starts it again), [`MAX_GAPS`] open gaps per stream (when
//! full, the oldest is reported at once).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use chaski_wire::{NodeId, Topic};
use tokio::time::Instant;

/// The most streams tracked.
pub(crate) const MAX_STREAMS: usize = 16_384;
/// The most open gaps per stream.
pub(crate) const MAX_GAPS: usize = 64;

/// A stream: who publishes, which start of its identity, on which topic.
pub(crate) type StreamKey = (NodeId, u64, Topic);

/// Messages that will not arrive: `first..=last` of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Missed {
    pub(crate) publisher: NodeId,
    pub(crate) topic: Topic,
    pub(crate) first: u64,
    pub(crate) last: u64,
}

impl Missed {
    pub(crate) fn count(&self) -> u64 {
        self.last - self.first + 1
    }
}

#[derive(Debug)]
struct Stream {
    /// The next sequence expected.
    next: u64,
    /// Open gaps: first sequence -> (last sequence, when it is reported).
    gaps: BTreeMap<u64, (u64, Instant)>,
}

/// The gap detector of one node.
#[derive(Debug)]
pub(crate) struct Gaps {
    timeout: Duration,
    /// Looked up once per message: seeded fast hashing (foldhash) instead of SipHash.
    streams: HashMap<StreamKey, Stream, foldhash::fast::RandomState>,
    /// The streams with open gaps.
    open: HashSet<StreamKey>,
    /// No gap is due before this (none is open when `None`); may be early once gaps close.
    due: Option<Instant>,
    /// Streams forgotten because the table was full.
    pub(crate) forgotten: u64,
}

impl Gaps {
    pub(crate) fn new(timeout: Duration) -> Gaps {
        Gaps {
            timeout,
            streams: HashMap::default(),
            open: HashSet::new(),
            due: None,
            forgotten: 0,
        }
    }

    /// A message of `key` with `sequence` was delivered at `now`; `reliable` unless it came as
    /// a best-effort datagram. Returns a gap reported at once (when the stream has too many
    /// open), if any.
    ///
    /// A best-effort message fills a gap but never opens one: the sequences it skips may be
    /// datagrams lost as best effort allows (a topic may mix both kinds), so they are not
    /// reported.
    pub(crate) fn delivered(
        &mut self,
        key: &StreamKey,
        sequence: u64,
        now: Instant,
        reliable: bool,
    ) -> Option<Missed> {
        if sequence == 0 {
            return None;
        }
        let Some(stream) = self.streams.get_mut(key) else {
            if self.streams.len() >= MAX_STREAMS {
                if let Some(victim) = self.streams.keys().next().cloned() {
                    self.streams.remove(&victim);
                    self.open.remove(&victim);
                    self.forgotten += 1;
                }
            }
            self.streams.insert(
                key.clone(),
                Stream {
                    next: sequence.saturating_add(1),
                    gaps: BTreeMap::new(),
                },
            );
            return None;
        };
        if sequence == stream.next {
            stream.next = sequence.saturating_add(1);
            return None;
        }
        if sequence > stream.next && !reliable {
            stream.next = sequence.saturating_add(1);
            return None;
        }
        if sequence > stream.next {
            let due = now + self.timeout;
            stream.gaps.insert(stream.next, (sequence - 1, due));
            // Later gaps are due later: the earliest stays the earliest.
            self.due.get_or_insert(due);
            stream.next = sequence.saturating_add(1);
            self.open.insert(key.clone());
            if stream.gaps.len() > MAX_GAPS {
                let (first, (last, _)) = stream.gaps.pop_first()?;
                return Some(missed(key, first, last));
            }
            return None;
        }
        // A late copy: it fills part of a gap, if it is in one (else it was reported missed).
        let (&first, &(last, due)) = stream.gaps.range(..=sequence).next_back()?;
        if sequence > last {
            return None;
        }
        stream.gaps.remove(&first);
        if first < sequence {
            stream.gaps.insert(first, (sequence - 1, due));
        }
        if sequence < last {
            stream.gaps.insert(sequence + 1, (last, due));
        }
        if stream.gaps.is_empty() {
            self.open.remove(key);
        }
        None
    }

    /// The gaps due by `now`, removed.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Missed> {
        let mut out = Vec::new();
        let streams = &mut self.streams;
        self.open.retain(|key| {
            let Some(stream) = streams.get_mut(key) else {
                return false;
            };
            stream.gaps.retain(|&first, &mut (last, due)| {
                if due <= now {
                    out.push(missed(key, first, last));
                    false
                } else {
                    true
                }
            });
            !stream.gaps.is_empty()
        });
        out.sort_by_key(|m| (m.publisher, m.first));
        self.due = self
            .open
            .iter()
            .filter_map(|key| self.streams.get(key))
            .flat_map(|s| s.gaps.values().map(|&(_, due)| due))
            .min();
        out
    }

    /// When the next gap may be due (cheap: read at every turn of the driver).
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.due
    }
}

fn missed(key: &StreamKey, first: u64, last: u64) -> Missed {
    Missed {
        publisher: key.0,
        topic: key.2.clone(),
        first,
        last,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> StreamKey {
        (NodeId::from_u128(7), 0, Topic::from_static("t"))
    }

    #[test]
    fn late_copies_close_a_gap_and_what_never_comes_is_reported_once_with_its_range() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(1);
        let mut gaps = Gaps::new(timeout);
        let k = key();
        for s in [1, 2, 5, 3, 9] {
            assert_eq!(gaps.delivered(&k, s, t0, true), None);
        }
        // Open: 4, and 6..=8.
        assert_eq!(gaps.next_due(), Some(t0 + timeout));
        assert!(gaps.expire(t0).is_empty());
        assert_eq!(gaps.next_due(), Some(t0 + timeout));
        assert_eq!(gaps.delivered(&k, 7, t0, true), None);
        let missed = gaps.expire(t0 + timeout);
        let ranges: Vec<(u64, u64)> = missed.iter().map(|m| (m.first, m.last)).collect();
        assert_eq!(ranges, vec![(4, 4), (6, 6), (8, 8)]);
        assert_eq!(missed.iter().map(Missed::count).sum::<u64>(), 3);
        assert!(gaps.expire(t0 + 10 * timeout).is_empty(), "reported once");
        assert_eq!(gaps.next_due(), None);
        // A copy of a reported message changes nothing; the stream goes on.
        assert_eq!(gaps.delivered(&k, 4, t0, true), None);
        assert_eq!(gaps.delivered(&k, 10, t0, true), None);
        assert_eq!(gaps.next_due(), None);
    }

    #[test]
    fn a_stream_starts_where_this_node_first_hears_it_and_its_gaps_are_bounded() {
        let t0 = Instant::now();
        let mut gaps = Gaps::new(Duration::from_secs(1));
        let k = key();
        assert_eq!(gaps.delivered(&k, 1000, t0, true), None);
        assert_eq!(gaps.next_due(), None, "nothing before the first is a gap");
        assert!(gaps.expire(t0 + Duration::from_secs(5)).is_empty());
        let mut reported = Vec::new();
        for i in 0..=MAX_GAPS as u64 {
            reported.extend(gaps.delivered(&k, 1002 + 2 * i, t0, true));
        }
        assert_eq!(
            reported.len(),
            1,
            "the oldest gap is reported when too many are open"
        );
        assert_eq!((reported[0].first, reported[0].last), (1001, 1001));
        assert_eq!(gaps.expire(t0 + Duration::from_secs(1)).len(), MAX_GAPS);
    }

    #[test]
    fn best_effort_messages_fill_gaps_but_never_open_one() {
        let t0 = Instant::now();
        let mut gaps = Gaps::new(Duration::from_secs(1));
        let k = key();
        gaps.delivered(&k, 1, t0, true);
        gaps.delivered(&k, 5, t0, false);
        assert_eq!(gaps.next_due(), None, "2..=4 may be lost datagrams");
        gaps.delivered(&k, 8, t0, true);
        gaps.delivered(&k, 7, t0, false);
        let missed = gaps.expire(t0 + Duration::from_secs(1));
        let ranges: Vec<(u64, u64)> = missed.iter().map(|m| (m.first, m.last)).collect();
        assert_eq!(ranges, vec![(6, 6)]);
    }
}
