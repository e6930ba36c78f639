//! This node's own reliable publications on their way to the membership's message cache.
//!
//! The handles send a publication straight to the connections of the routing snapshot, without
//! the driver. The driver still needs a copy of each: the membership caches it (to serve grafts
//! and gap repair) and announces it on the links that only hear announcements. Each topic of the
//! snapshot has a bounded lock-free queue: a handle pushes a copy (small payloads copied, else a
//! reference count); the first copy after a drain tells the driver, which takes them a short
//! while later (`OWN_DRAIN`, a batch), and at once when a queue is half full. A node that
//! publishes nothing is not woken.
//! A copy holds only what differs from one publication to the next (no topic, publisher or
//! incarnation: the queue has them), so that a handle touches no reference count of the topic,
//! which its writer and the driver share.
//!
//! Limit: [`CAPACITY`] messages per topic between two drains. When full, the oldest copy is
//! dropped (counted in `NodeStats::cache_skipped`): that message is not in this node's cache,
//! though it was sent.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use bytes::BytesMut;
use chaski_wire::{Header, Message, NodeId, Topic};
use crossbeam_queue::ArrayQueue;
use tokio::sync::Notify;

/// The chunks small payloads are cut from on their way out of the queue.
const SCRATCH_CHUNK: usize = 64 << 10;

/// Copies kept per topic between two drains.
pub(crate) const CAPACITY: usize = 1024;

/// Payloads up to this size are copied into the queue: the handle takes no reference count on
/// the application's buffer (which its connection's writer releases at the same time).
const INLINE: usize = 64;

/// A payload in the queue.
enum Payload {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(bytes::Bytes),
}

/// What one publication adds to what its queue knows.
struct Copy {
    sequence: u64,
    payload: Payload,
    timestamp_micros: u64,
    hop_limit: u32,
    headers: Vec<Header>,
}

/// One topic's queue of publications for the driver.
pub(crate) struct Own {
    /// The node's id and incarnation, and the topic (a copy of the driver's own).
    stream: (NodeId, u64, Topic),
    queue: ArrayQueue<Copy>,
    /// Wakes the driver (shared by every topic).
    driver: Arc<Notify>,
    /// Copies dropped because the queue was full.
    skipped: AtomicU64,
    /// The driver was told of copies waiting (since its last drain).
    told: AtomicBool,
}

impl Own {
    pub(crate) fn new(
        driver: Arc<Notify>,
        publisher: NodeId,
        incarnation: u64,
        topic: &Topic,
    ) -> Own {
        Own {
            stream: (publisher, incarnation, topic.detached()),
            queue: ArrayQueue::new(CAPACITY),
            driver,
            skipped: AtomicU64::new(0),
            told: AtomicBool::new(false),
        }
    }

    /// Hands a copy of a publication (of this queue's topic) to the driver.
    pub(crate) fn push(&self, message: &Message) {
        let sequence = message.sequence;
        let copy = Copy {
            sequence,
            payload: if message.payload.len() <= INLINE {
                let mut bytes = [0; INLINE];
                bytes[..message.payload.len()].copy_from_slice(&message.payload);
                Payload::Inline {
                    len: message.payload.len() as u8,
                    bytes,
                }
            } else {
                Payload::Shared(message.payload.clone())
            },
            timestamp_micros: message.timestamp_micros,
            hop_limit: message.hop_limit,
            headers: message.headers.clone(),
        };
        if self.queue.force_push(copy).is_some() {
            self.skipped.fetch_add(1, Ordering::Relaxed);
        }
        // The first copy since the driver's drain tells it (a read of a flag that changes once
        // per drain, not a write per message).
        if !self.told.load(Ordering::Acquire) && !self.told.swap(true, Ordering::AcqRel) {
            self.driver.notify_one();
        }
        // Looked at every 64th message only: the length reads both ends of the queue, which
        // the driver is popping.
        if sequence % 64 == 0 && self.half_full() {
            self.driver.notify_one();
        }
    }

    /// Whether the driver should take the copies now rather than batch them.
    pub(crate) fn half_full(&self) -> bool {
        self.queue.len() >= CAPACITY / 2
    }

    /// The driver took every copy: the next one tells it again. Returns whether copies came
    /// meanwhile (their handles did not tell: the driver must take them too).
    pub(crate) fn drained(&self) -> bool {
        self.told.store(false, Ordering::Release);
        if self.queue.is_empty() {
            return false;
        }
        self.told.store(true, Ordering::Release);
        true
    }

    /// The next publication, oldest first; small payloads are cut from `scratch` (the
    /// driver's: one allocation per chunk of them).
    pub(crate) fn pop(&self, scratch: &mut BytesMut) -> Option<Message> {
        let copy = self.queue.pop()?;
        let payload = match copy.payload {
            Payload::Inline { len, bytes } => {
                if scratch.capacity() - scratch.len() < INLINE {
                    *scratch = BytesMut::with_capacity(SCRATCH_CHUNK);
                }
                scratch.extend_from_slice(&bytes[..usize::from(len)]);
                scratch.split().freeze()
            }
            Payload::Shared(bytes) => bytes,
        };
        let (publisher, incarnation, topic) = &self.stream;
        Some(Message {
            topic: topic.clone(),
            payload,
            publisher: *publisher,
            sequence: copy.sequence,
            incarnation: *incarnation,
            timestamp_micros: copy.timestamp_micros,
            hop_limit: copy.hop_limit,
            hops: 0,
            headers: copy.headers,
        })
    }

    /// Copies dropped so far, reset.
    pub(crate) fn take_skipped(&self) -> u64 {
        self.skipped.swap(0, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use chaski_wire::{NodeId, Topic};

    fn message(sequence: u64) -> Message {
        Message {
            topic: Topic::from_static("t"),
            payload: Bytes::new(),
            publisher: NodeId::from_u128(1),
            sequence,
            incarnation: 0,
            timestamp_micros: 0,
            hop_limit: 1,
            hops: 0,
            headers: Vec::new(),
        }
    }

    /// A topic's queue, the driver's wake-up it notifies, and a driver's scratch buffer.
    fn queue() -> (Arc<Notify>, Own, BytesMut) {
        let notify = Arc::new(Notify::new());
        let own = Own::new(
            notify.clone(),
            NodeId::from_u128(1),
            0,
            &Topic::from_static("t"),
        );
        (notify, own, BytesMut::new())
    }

    /// Whether the driver has a wake-up waiting (a stored permit), taken if so.
    fn woken(notify: &Notify) -> bool {
        use std::future::Future as _;
        let notified = std::pin::pin!(notify.notified());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        notified.poll(&mut cx).is_ready()
    }

    #[test]
    fn the_first_copy_after_a_drain_tells_the_driver_and_the_others_do_not() {
        let (notify, own, mut scratch) = queue();
        assert!(!woken(&notify), "nothing published, nothing to wake for");
        own.push(&message(1));
        assert!(woken(&notify));
        own.push(&message(2));
        assert!(!woken(&notify), "told once per drain");
        while own.pop(&mut scratch).is_some() {}
        assert!(!own.drained(), "nothing came meanwhile");
        own.push(&message(3));
        assert!(woken(&notify), "the first copy after the drain tells again");
        // A copy that comes while the driver drains, before it says it drained: the driver
        // sees it in `drained` (the handle did not tell).
        own.push(&message(4));
        assert!(own.drained());
        assert!(!woken(&notify));
        assert_eq!(own.pop(&mut scratch).map(|m| m.sequence), Some(3));
    }

    #[test]
    fn a_full_queue_drops_the_oldest_counts_it_and_wakes_the_driver_at_half() {
        let (notify, own, mut scratch) = queue();
        own.push(&message(1));
        assert!(woken(&notify), "the first copy tells the driver");
        for s in 2..=(CAPACITY as u64 + 3) {
            own.push(&message(s));
        }
        // Woken again at half full (looked at every 64th message): the permit is stored.
        assert!(woken(&notify));
        assert_eq!(own.take_skipped(), 3);
        assert_eq!(own.take_skipped(), 0);
        assert_eq!(own.pop(&mut scratch), Some(message(4)), "given back whole");
        let mut n = 1;
        while own.pop(&mut scratch).is_some() {
            n += 1;
        }
        assert_eq!(n, CAPACITY);
    }
}
