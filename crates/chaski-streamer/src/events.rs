//! The node's events: membership events plus what the node itself reports (stream overflows,
//! dropped frames), delivered to any number of [`EventStream`]s.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use chaski_membership::Event as MembershipEvent;
use chaski_wire::{NodeId, Topic};
use futures_core::Stream;
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};

use crate::Overflow;

/// Something that happened in a node.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// An event of the membership layer: peers up and down, pairing, latency, isolation.
    Membership(MembershipEvent),
    /// A stream's overflow policy dropped messages since the last report (reported at most every
    /// 100 ms per stream).
    StreamOverflow {
        /// The stream, as [`MessageStream::id`](crate::MessageStream::id).
        stream: u64,
        /// Its policy.
        policy: Overflow,
        /// Messages dropped since the last report.
        dropped: u64,
        /// Messages dropped by the stream in all.
        total: u64,
    },
    /// Messages to forward (or frames to send) were dropped because a peer's send queue was full:
    /// that peer reads slower than this node receives. Reported at most every 100 ms per peer.
    SendDropped {
        /// The peer.
        peer: NodeId,
        /// Frames dropped since the last report.
        dropped: u64,
    },
    /// Best-effort datagrams from an address that is not a connected peer were ignored.
    UnknownDatagramSource {
        /// How many since the last report.
        dropped: u64,
    },
    /// Reliable messages of a publisher's topic that this node will not deliver: they are known
    /// to exist (later ones arrived, or a neighbour announced them, also after the publisher
    /// went quiet), and neither arrived nor could be fetched from a neighbour's cache within the
    /// gap timeout ([`NodeBuilder::gap_timeout`](crate::NodeBuilder::gap_timeout)). Each is
    /// reported once, in its place in the stream's order; the stream goes on after `last` (one
    /// that still arrives later is delivered then, late).
    Missed {
        /// The publisher.
        publisher: NodeId,
        /// The topic.
        topic: Topic,
        /// The first sequence missed.
        first: u64,
        /// The last sequence missed (inclusive).
        last: u64,
    },
    /// The node's UDP sockets dropped datagrams since the last report: garbage, beacons from
    /// outside a closed network, sealed datagrams that did not open or were replayed (by cause
    /// in [`Node::transport_stats`](crate::Node::transport_stats) and
    /// [`Node::lan_stats`](crate::Node::lan_stats)). Reported at most about every ping
    /// interval.
    DatagramsDropped {
        /// How many since the last report.
        dropped: u64,
    },
    /// This event stream fell behind and missed events (its queue holds
    /// [`NodeBuilder::event_capacity`](crate::NodeBuilder::event_capacity) events).
    Lagged {
        /// How many events were missed.
        missed: u64,
    },
    /// A message was published on a topic that nobody subscribes to (counted; not an error).
    /// Reported at most every second per topic.
    NoSubscribers {
        /// The topic.
        topic: Topic,
        /// How many such publications since the last report.
        count: u64,
    },
}

/// A stream of [`NodeEvent`]s, from [`Node::events`](crate::Node::events).
///
/// Each event stream has its own bounded queue; one that falls behind sees a
/// [`NodeEvent::Lagged`] with the number of events it missed instead of those events.
pub struct EventStream {
    inner: BroadcastStream<NodeEvent>,
}

impl EventStream {
    pub(crate) fn new(receiver: tokio::sync::broadcast::Receiver<NodeEvent>) -> EventStream {
        EventStream {
            inner: BroadcastStream::new(receiver),
        }
    }

    /// The next event, or `None` once the node has shut down.
    pub async fn recv(&mut self) -> Option<NodeEvent> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for EventStream {
    type Item = NodeEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<NodeEvent>> {
        Pin::new(&mut self.inner).poll_next(cx).map(|item| {
            item.map(|result| match result {
                Ok(event) => event,
                Err(BroadcastStreamRecvError::Lagged(missed)) => NodeEvent::Lagged { missed },
            })
        })
    }
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}
