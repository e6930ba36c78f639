//! The message streams: what a node hands its application, one bounded queue per stream.
//!
//! Each [`MessageStream`] owns a fixed-capacity lock-free queue that the node's driver fills and
//! the application drains. When a stream is full, its [`Overflow`] policy decides: wait for room
//! (the default, so that pressure travels back to the publishers through the network), or drop the
//! oldest or the newest message. Every drop is counted on the stream ([`MessageStream::dropped`])
//! and reported as a [`NodeEvent::StreamOverflow`](crate::NodeEvent::StreamOverflow); nothing is
//! dropped silently.

use std::{
    collections::HashSet,
    fmt,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use chaski_wire::{Header, Message, NodeId, Topic};
use crossbeam_queue::ArrayQueue;
use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

/// What a stream does when a message arrives and its queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Overflow {
    /// Wait until the application makes room. The node stops taking messages from the network
    /// meanwhile, so TCP pushes back on the publishers; nothing is lost. A stream that is not read
    /// at all stalls its node: read it, close it or drop it. The default.
    #[default]
    Block,
    /// Drop the oldest queued message to make room for the new one (keep the freshest data).
    DropOldest,
    /// Drop the new message (keep what is queued).
    DropNewest,
}

/// How a message travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Delivery {
    /// Over TCP: in order per publisher and path, never lost while the connection lives. The
    /// default.
    #[default]
    Reliable,
    /// As a UDP datagram: lower latency, no head-of-line blocking, possibly lost, never
    /// duplicated.
    BestEffort,
}

/// A message received on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Received {
    /// The topic it was published on.
    pub topic: Topic,
    /// The payload, a zero-copy slice of the receive buffer.
    pub payload: Bytes,
    /// The node that published it.
    pub publisher: NodeId,
    /// The publisher's name, when this node knows it (a connected or known peer, or itself).
    pub publisher_name: Option<Arc<str>>,
    /// The publisher's sequence number for it, counted per topic from 1 (consecutive for the
    /// messages one publisher sends on one topic).
    pub sequence: u64,
    /// The publisher's wall clock when it published, microseconds since the Unix epoch.
    pub timestamp_micros: u64,
    /// How many nodes forwarded it on its way here (0: straight from the publisher).
    pub hops: u32,
    /// Application headers.
    pub headers: Vec<Header>,
    /// How it travelled.
    pub delivery: Delivery,
}

impl Received {
    pub(crate) fn new(
        message: Message,
        publisher_name: Option<Arc<str>>,
        delivery: Delivery,
    ) -> Received {
        Received {
            topic: message.topic,
            payload: message.payload,
            publisher: message.publisher,
            publisher_name,
            sequence: message.sequence,
            timestamp_micros: message.timestamp_micros,
            hops: message.hops,
            headers: message.headers,
            delivery,
        }
    }
}

/// Options of one stream: which topics, how much to queue, what to do when full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOptions {
    pub(crate) topics: Option<HashSet<Topic>>,
    pub(crate) capacity: usize,
    pub(crate) overflow: Overflow,
    pub(crate) ordered: bool,
}

/// The default queue capacity of a stream: 8192 messages.
pub const DEFAULT_STREAM_CAPACITY: usize = 8192;

impl Default for StreamOptions {
    fn default() -> StreamOptions {
        StreamOptions {
            topics: None,
            capacity: DEFAULT_STREAM_CAPACITY,
            overflow: Overflow::Block,
            ordered: true,
        }
    }
}

impl StreamOptions {
    /// Every message of every subscription, queue of [`DEFAULT_STREAM_CAPACITY`], policy
    /// [`Overflow::Block`].
    pub fn new() -> StreamOptions {
        StreamOptions::default()
    }

    /// Only messages on these topics. Default: every topic the node subscribes to. Topics the
    /// node does not subscribe to never arrive: subscribe to them on the node.
    pub fn topics(mut self, topics: impl IntoIterator<Item = Topic>) -> StreamOptions {
        self.topics = Some(topics.into_iter().collect());
        self
    }

    /// How many messages the stream queues before its overflow policy applies. Default:
    /// [`DEFAULT_STREAM_CAPACITY`] (8192). Must be at least 1 (0 is raised to 1).
    pub fn capacity(mut self, capacity: usize) -> StreamOptions {
        self.capacity = capacity.max(1);
        self
    }

    /// What to do when the queue is full. Default: [`Overflow::Block`].
    pub fn overflow(mut self, overflow: Overflow) -> StreamOptions {
        self.overflow = overflow;
        self
    }

    /// Whether the stream takes each publisher's reliable messages on a topic in sequence order.
    /// Default: `true`: a message that arrives ahead of a gap is held back while the gap is
    /// repaired, for at most [`NodeBuilder::gap_timeout`](crate::NodeBuilder::gap_timeout), then
    /// what is still missing is reported ([`NodeEvent::Missed`](crate::NodeEvent::Missed)) and
    /// the stream goes on. `false`: every message as soon as it arrives (lowest latency), gaps
    /// still repaired and reported. Best-effort messages are never held back.
    pub fn ordered(mut self, ordered: bool) -> StreamOptions {
        self.ordered = ordered;
        self
    }
}

/// The state a stream shares with the driver.
pub(crate) struct Shared {
    id: u64,
    queue: ArrayQueue<Received>,
    overflow: Overflow,
    topics: Option<HashSet<Topic>>,
    ordered: bool,
    /// The application's task, waiting for a message.
    consumer: AtomicWaker,
    /// The driver, waiting for room (policy `Block`).
    room: Notify,
    /// Set by the driver before it waits for room, so that the consumer only notifies when needed.
    producer_waiting: AtomicBool,
    /// The application closed or dropped the stream.
    closed: AtomicBool,
    /// The node is gone: no more messages will come.
    finished: AtomicBool,
    dropped: AtomicU64,
    delivered: AtomicU64,
    /// The driver queued messages with [`Shared::offer_unwoken`] and has not woken the consumer
    /// since (only the driver reads and writes it).
    unwoken: AtomicBool,
}

/// What became of a message offered to a stream.
#[derive(Debug)]
pub(crate) enum Offer {
    /// Queued.
    Queued,
    /// Queued, and the oldest or the new message was dropped (counted on the stream).
    Dropped,
    /// The queue is full and the policy is `Block`: the message comes back; wait with
    /// [`Shared::wait_for_room`] and offer it again.
    Full(Received),
    /// The stream is closed: forget it.
    Closed,
}

impl Shared {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn overflow(&self) -> Overflow {
        self.overflow
    }

    /// Whether the stream takes each publisher's messages in order.
    pub(crate) fn ordered(&self) -> bool {
        self.ordered
    }

    /// Whether the stream wants messages of `topic`.
    pub(crate) fn wants(&self, topic: &Topic) -> bool {
        self.topics
            .as_ref()
            .is_none_or(|topics| topics.contains(topic))
    }

    /// Whether a message could be queued now without applying the overflow policy.
    pub(crate) fn has_room(&self) -> bool {
        !self.queue.is_full()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Offers a message, applying the overflow policy, and wakes the consumer.
    pub(crate) fn offer(&self, message: Received) -> Offer {
        let outcome = self.queue_message(message);
        self.consumer.wake();
        outcome
    }

    /// [`offer`](Self::offer) without waking the consumer: the driver wakes it with
    /// [`wake_consumer`](Self::wake_consumer) once per turn of its loop, before it waits, rather
    /// than once per message (a read-modify-write on a line the consumer's core shares).
    pub(crate) fn offer_unwoken(&self, message: Received) -> Offer {
        let outcome = self.queue_message(message);
        if !matches!(outcome, Offer::Closed) {
            self.unwoken.store(true, Ordering::Relaxed);
        }
        outcome
    }

    /// Wakes the consumer if the driver offered messages since it last woke it. Only the driver
    /// calls it (and [`offer_unwoken`](Self::offer_unwoken)): the flag has one writer.
    pub(crate) fn wake_consumer(&self) {
        if self.unwoken.load(Ordering::Relaxed) {
            self.unwoken.store(false, Ordering::Relaxed);
            self.consumer.wake();
        }
    }

    /// Queues a message by the overflow policy, counted.
    fn queue_message(&self, message: Received) -> Offer {
        if self.is_closed() {
            return Offer::Closed;
        }
        let outcome = match self.overflow {
            Overflow::Block => match self.queue.push(message) {
                Ok(()) => Offer::Queued,
                Err(message) => return Offer::Full(message),
            },
            Overflow::DropOldest => match self.queue.force_push(message) {
                None => Offer::Queued,
                Some(_oldest) => Offer::Dropped,
            },
            Overflow::DropNewest => match self.queue.push(message) {
                Ok(()) => Offer::Queued,
                Err(_newest) => Offer::Dropped,
            },
        };
        match outcome {
            Offer::Dropped => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                // The oldest was replaced by a new message: there is still something to read.
                if self.overflow == Overflow::DropOldest {
                    self.delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
        }
        outcome
    }

    /// Waits until the queue has room for `message` (policy `Block`) and queues it; returns
    /// `false` if the stream was closed meanwhile.
    pub(crate) async fn wait_for_room(&self, mut message: Received) -> bool {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            self.producer_waiting.store(true, Ordering::SeqCst);
            match self.offer(message) {
                Offer::Full(back) => message = back,
                Offer::Closed => return false,
                Offer::Queued | Offer::Dropped => {
                    self.producer_waiting.store(false, Ordering::SeqCst);
                    return true;
                }
            }
            room.await;
        }
    }

    /// The node is shutting down: wake the application so that it sees the end of the stream.
    pub(crate) fn finish(&self) {
        self.finished.store(true, Ordering::Release);
        self.consumer.wake();
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn took_one(&self) {
        if self.producer_waiting.swap(false, Ordering::SeqCst) {
            self.room.notify_one();
        }
    }
}

/// A stream of the messages a node receives on its subscriptions: the Rust form of the original's
/// `async with streamer as queue: async for msg in queue`.
///
/// Obtained from [`Node::stream`](crate::Node::stream) or
/// [`Node::stream_with`](crate::Node::stream_with). A node can have any number of streams at
/// once; each sees every message it wants. The stream ends (`None`) when it is closed or when the
/// node shuts down, after the messages already queued. Dropping it closes it.
pub struct MessageStream {
    shared: Arc<Shared>,
}

impl MessageStream {
    pub(crate) fn new(id: u64, options: StreamOptions) -> (MessageStream, Arc<Shared>) {
        let shared = Arc::new(Shared {
            id,
            queue: ArrayQueue::new(options.capacity.max(1)),
            overflow: options.overflow,
            topics: options.topics,
            ordered: options.ordered,
            consumer: AtomicWaker::new(),
            room: Notify::new(),
            producer_waiting: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            unwoken: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
        });
        (
            MessageStream {
                shared: shared.clone(),
            },
            shared,
        )
    }

    /// The next message, or `None` once the stream is closed (or the node gone) and drained.
    pub async fn recv(&mut self) -> Option<Received> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next message if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Received> {
        let message = self.shared.queue.pop()?;
        self.shared.took_one();
        Some(message)
    }

    /// Polls for the next message.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Received>> {
        if let Some(message) = self.try_recv() {
            return Poll::Ready(Some(message));
        }
        if self.ended() {
            return Poll::Ready(None);
        }
        self.shared.consumer.register(cx.waker());
        // Check again: a message may have arrived before the waker was registered.
        if let Some(message) = self.try_recv() {
            return Poll::Ready(Some(message));
        }
        if self.ended() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }

    fn ended(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire) || self.shared.finished.load(Ordering::Acquire)
    }

    /// Closes the stream: the node stops queueing messages for it; those already queued can still
    /// be read, then the stream ends. Other streams of the node are not affected.
    pub fn close(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        // A driver blocked on this stream must not wait for room that will never come.
        self.shared.room.notify_one();
    }

    /// Messages dropped by the overflow policy so far.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped()
    }

    /// Messages queued on this stream so far (read or not, and not counting dropped ones).
    pub fn delivered(&self) -> u64 {
        self.shared.delivered.load(Ordering::Relaxed)
    }

    /// Messages waiting in the queue.
    pub fn len(&self) -> usize {
        self.shared.queue.len()
    }

    /// Whether no message is waiting.
    pub fn is_empty(&self) -> bool {
        self.shared.queue.is_empty()
    }

    /// The queue's capacity.
    pub fn capacity(&self) -> usize {
        self.shared.queue.capacity()
    }

    /// The stream's id, as in [`NodeEvent::StreamOverflow`](crate::NodeEvent::StreamOverflow).
    pub fn id(&self) -> u64 {
        self.shared.id
    }
}

impl futures_core::Stream for MessageStream {
    type Item = Received;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Received>> {
        self.get_mut().poll_recv(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.shared.queue.len(), None)
    }
}

impl Drop for MessageStream {
    fn drop(&mut self) {
        self.close();
    }
}

impl fmt::Debug for MessageStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageStream")
            .field("id", &self.shared.id)
            .field("queued", &self.shared.queue.len())
            .field("capacity", &self.shared.queue.capacity())
            .field("overflow", &self.shared.overflow)
            .field("dropped", &self.shared.dropped())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn received(sequence: u64) -> Received {
        Received {
            topic: Topic::from_static("t"),
            payload: Bytes::new(),
            publisher: NodeId::from_u128(1),
            publisher_name: None,
            sequence,
            timestamp_micros: 0,
            hops: 0,
            headers: Vec::new(),
            delivery: Delivery::Reliable,
        }
    }

    fn stream(overflow: Overflow, capacity: usize) -> (MessageStream, Arc<Shared>) {
        MessageStream::new(
            1,
            StreamOptions::new().capacity(capacity).overflow(overflow),
        )
    }

    fn drain(stream: &mut MessageStream) -> Vec<u64> {
        std::iter::from_fn(|| stream.try_recv())
            .map(|m| m.sequence)
            .collect()
    }

    #[test]
    fn drop_oldest_keeps_the_freshest() {
        let (mut s, shared) = stream(Overflow::DropOldest, 3);
        for seq in 1..=5 {
            shared.offer(received(seq));
        }
        assert_eq!(drain(&mut s), vec![3, 4, 5]);
        assert_eq!(s.dropped(), 2);
    }

    #[test]
    fn drop_newest_keeps_the_queue() {
        let (mut s, shared) = stream(Overflow::DropNewest, 3);
        for seq in 1..=5 {
            shared.offer(received(seq));
        }
        assert_eq!(drain(&mut s), vec![1, 2, 3]);
        assert_eq!(s.dropped(), 2);
        assert_eq!(s.delivered(), 3);
    }

    #[test]
    fn block_hands_the_message_back() {
        let (mut s, shared) = stream(Overflow::Block, 1);
        assert!(matches!(shared.offer(received(1)), Offer::Queued));
        assert!(matches!(shared.offer(received(2)), Offer::Full(m) if m.sequence == 2));
        assert_eq!(s.dropped(), 0);
        assert_eq!(drain(&mut s), vec![1]);
    }

    #[tokio::test]
    async fn a_blocked_producer_resumes_when_the_consumer_reads() {
        let (mut s, shared) = stream(Overflow::Block, 2);
        let producer = tokio::spawn(async move {
            for seq in 1..=100 {
                let message = received(seq);
                if let Offer::Full(message) = shared.offer(message) {
                    assert!(shared.wait_for_room(message).await);
                }
            }
        });
        let mut seen = Vec::new();
        while seen.len() < 100 {
            seen.push(
                tokio::time::timeout(Duration::from_secs(10), s.recv())
                    .await
                    .unwrap()
                    .unwrap()
                    .sequence,
            );
        }
        assert_eq!(seen, (1..=100).collect::<Vec<_>>());
        producer.await.unwrap();
        assert_eq!(s.dropped(), 0);
    }

    #[tokio::test]
    async fn closing_releases_a_blocked_producer_and_ends_the_stream() {
        let (mut s, shared) = stream(Overflow::Block, 1);
        assert!(matches!(shared.offer(received(1)), Offer::Queued));
        let blocked = tokio::spawn({
            let shared = shared.clone();
            async move { shared.wait_for_room(received(2)).await }
        });
        tokio::task::yield_now().await;
        s.close();
        assert!(
            !tokio::time::timeout(Duration::from_secs(10), blocked)
                .await
                .unwrap()
                .unwrap()
        );
        // What was queued before the close is still delivered, then the stream ends.
        assert_eq!(s.recv().await.map(|m| m.sequence), Some(1));
        assert_eq!(s.recv().await, None);
        assert!(matches!(shared.offer(received(3)), Offer::Closed));
    }

    #[tokio::test]
    async fn finishing_ends_the_stream_after_the_queue() {
        let (mut s, shared) = stream(Overflow::Block, 4);
        shared.offer(received(1));
        shared.finish();
        assert_eq!(s.recv().await.map(|m| m.sequence), Some(1));
        assert_eq!(s.recv().await, None);
    }

    /// The driver's offers wake a waiting consumer once, when the driver flushes, not per
    /// message; the handles' offers wake it at once.
    #[test]
    fn offers_without_waking_wake_the_consumer_once_at_the_flush() {
        struct Count(AtomicU64);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let count = Arc::new(Count(AtomicU64::new(0)));
        let waker = std::task::Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let wakes = || count.0.load(Ordering::Relaxed);
        let (mut s, shared) = stream(Overflow::Block, 4);
        assert!(s.poll_recv(&mut cx).is_pending());
        shared.offer_unwoken(received(1));
        shared.offer_unwoken(received(2));
        assert_eq!(wakes(), 0, "not woken per message");
        shared.wake_consumer();
        shared.wake_consumer();
        assert_eq!(wakes(), 1, "woken once, at the flush");
        assert!(matches!(s.poll_recv(&mut cx), Poll::Ready(Some(m)) if m.sequence == 1));
        assert!(matches!(s.poll_recv(&mut cx), Poll::Ready(Some(m)) if m.sequence == 2));
        assert!(s.poll_recv(&mut cx).is_pending());
        shared.offer(received(3));
        assert_eq!(wakes(), 2, "a handle's offer wakes at once");
    }

    #[test]
    fn topic_filter() {
        let (_s, shared) =
            MessageStream::new(1, StreamOptions::new().topics([Topic::from_static("a")]));
        assert!(shared.wants(&Topic::from_static("a")));
        assert!(!shared.wants(&Topic::from_static("b")));
        let (_s, all) = MessageStream::new(2, StreamOptions::new());
        assert!(all.wants(&Topic::from_static("b")));
    }
}
