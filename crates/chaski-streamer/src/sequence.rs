//! This node's publication counters, one per topic: a message is identified by its publisher,
//! topic and sequence, and each (publisher, topic) stream is numbered 1, 2, 3, ... without gaps,
//! so that a receiver can tell a gap from another topic's traffic.
//!
//! The handles number reliable publications without a lock, through the counter the routing
//! snapshot holds for each topic; the driver numbers the rest through the same counters.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use chaski_wire::Topic;

/// Counters kept for topics this node neither subscribes to nor publishes on any more. Beyond,
/// the oldest is forgotten; a counter made again for its topic starts above every sequence this
/// node has forgotten (a receiver then sees a jump, which it confirms as for any gap).
pub(crate) const MAX_COUNTERS: usize = 16_384;

/// A topic's counter: the sequence of the last message numbered.
pub(crate) type Counter = Arc<AtomicU64>;

/// Takes the next sequence from `counter`.
pub(crate) fn next(counter: &Counter) -> u64 {
    counter.fetch_add(1, Ordering::Relaxed) + 1
}

/// The counters, bounded by [`MAX_COUNTERS`] (plus the topics in use, which are never forgotten).
#[derive(Default)]
pub(crate) struct Sequences {
    counters: HashMap<Topic, Counter, foldhash::fast::RandomState>,
    /// Topics by age of their counter, oldest first.
    order: VecDeque<Topic>,
    /// Above every sequence of a forgotten counter.
    floor: u64,
}

impl Sequences {
    /// The counter of `topic`, made if needed. `in_use` tells the topics whose counters must not
    /// be forgotten (subscribed or published on).
    pub(crate) fn counter(&mut self, topic: &Topic, in_use: impl Fn(&Topic) -> bool) -> Counter {
        if let Some(c) = self.counters.get(topic) {
            return c.clone();
        }
        // Forget the oldest unused counter if full: at most one pass over the queue.
        if self.counters.len() >= MAX_COUNTERS {
            for _ in 0..self.order.len() {
                let Some(oldest) = self.order.pop_front() else {
                    break;
                };
                if in_use(&oldest) {
                    self.order.push_back(oldest);
                    continue;
                }
                if let Some(c) = self.counters.remove(&oldest) {
                    self.floor = self.floor.max(c.load(Ordering::Relaxed));
                }
                break;
            }
        }
        let c = Arc::new(AtomicU64::new(self.floor));
        let topic = topic.detached();
        self.order.push_back(topic.clone());
        self.counters.insert(topic, c.clone());
        c
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.counters.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_topic_counts_from_one() {
        let mut s = Sequences::default();
        let (a, b) = (Topic::from_static("a"), Topic::from_static("b"));
        let ca = s.counter(&a, |_| false);
        assert_eq!(next(&ca), 1);
        assert_eq!(next(&ca), 2);
        assert_eq!(next(&s.counter(&b, |_| false)), 1);
        assert_eq!(next(&s.counter(&a, |_| false)), 3, "the same counter");
    }

    #[test]
    fn a_forgotten_counter_comes_back_above_what_it_had_issued() {
        let mut s = Sequences::default();
        let first = Topic::from_static("first");
        let c = s.counter(&first, |_| false);
        for _ in 0..10 {
            next(&c);
        }
        let keep = Topic::from_static("kept");
        next(&s.counter(&keep, |_| false));
        for i in 0..MAX_COUNTERS {
            let t = Topic::new(&format!("t{i}")).unwrap();
            s.counter(&t, |t| t.as_str() == "kept");
        }
        assert!(s.len() <= MAX_COUNTERS);
        // "kept" was in use: still there, still counting.
        assert_eq!(next(&s.counter(&keep, |_| false)), 2);
        // "first" was forgotten; its new counter starts above the 10 it had issued.
        assert!(next(&s.counter(&first, |_| false)) > 10);
    }
}
