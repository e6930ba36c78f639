//! The Chaski node: the driver that joins the membership state machine to real TCP and UDP
//! connections and tokio timers, and the `Stream` API that hands messages to the application.
//!
//! This is the crate users touch (usually through the `chaski` facade). A [`Node`] is a cheap,
//! cloneable handle; [`NodeBuilder::build`] binds the listening address and spawns the driver
//! task that owns everything else.
//!
//! ```no_run
//! # async fn demo() -> Result<(), chaski_streamer::Error> {
//! use chaski_streamer::{Node, Overflow, StreamOptions};
//!
//! let node = Node::builder()
//!     .name("sensor-7")
//!     .listen("127.0.0.1:0")
//!     .subscribe(["temperature", "alerts"])
//!     .seeds(["127.0.0.1:7420"]) // optional; LAN discovery is on by default
//!     .build()
//!     .await?;
//! node.publish("temperature", "21.5").await?; // waits when the network is slower
//! node.try_publish("temperature", "21.6")?; // or fails fast with Error::Full
//!
//! // The Rust form of the original's `async with streamer as queue: async for msg in queue`.
//! let mut alerts = node.stream_with(
//!     StreamOptions::new().topics([chaski_wire::Topic::new("alerts")?]).overflow(Overflow::DropOldest),
//! );
//! while let Some(message) = alerts.recv().await {
//!     println!("{} from {:?}: {:?}", message.topic, message.publisher_name, message.payload);
//! }
//! node.shutdown().await?; // goodbye to every peer, flush, close
//! # Ok(())
//! # }
//! ```
//!
//! # Delivery: reliable or timely
//!
//! A message goes over TCP by default: in order per publisher and path, and never lost while the
//! connection lives. A publisher can ask for best-effort delivery per message
//! ([`PublishOptions::best_effort`]) or per topic ([`NodeBuilder::best_effort`]): one UDP datagram
//! per peer, lower latency and no head-of-line blocking, possibly lost, never duplicated. A
//! payload too large for a datagram is an error ([`Error::TooLargeForDatagram`]), never a silent
//! fallback to TCP. Subscribers receive both kinds on the same streams, each message marked with
//! its [`Delivery`].
//!
//! # Order, duplicates and loss
//!
//! A publisher numbers its messages on each topic 1, 2, 3, ... ([`Received::sequence`]); a
//! message is identified by its publisher, the publisher's incarnation, the topic and the
//! sequence. A subscriber never receives a message twice. Each publisher's messages on a topic
//! spread along a tree of the topic's links (eager push), and the other links carry batched
//! announcements of what was sent (lazy push); a node that hears of a message it lacks asks for
//! it (a graft), and every node keeps a bounded cache of the messages it carried to answer
//! ([`NodeBuilder::message_cache`]). See `chaski-membership` for the trees and their repair.
//!
//! Streams are **ordered** by default ([`StreamOptions::ordered`]): each publisher's reliable
//! messages on a topic come in sequence order. A message that arrives ahead of a gap is held back
//! while the gap is repaired from the neighbours' caches (after a reconnection, a frozen process,
//! a dropped forward); what cannot be repaired within [`NodeBuilder::gap_timeout`] (1 s, timed
//! afresh while the gap makes progress) is reported as [`NodeEvent::Missed`] with its exact range
//! and counted in [`NodeStats::messages_missed`], and the stream goes on. Loss of a stream's last
//! messages is noticed too: nodes tell their links the last sequence of each stream that went
//! quiet. No message is lost without the application being told which. A message that comes
//! after its range was reported missed still reaches unordered streams, and ordered ones too if
//! nothing after it was handed out yet: never out of order, never twice. An unordered stream gets
//! every message the moment it arrives, gaps still repaired and reported. Best-effort messages are
//! never held back; one lost on a topic that also carries reliable messages is repaired like them.
//!
//! # Streams
//!
//! [`Node::stream`] opens a [`MessageStream`] (a `futures::Stream` of [`Received`] messages); a
//! node can have any number, each seeing every message it wants, each closed explicitly or on
//! drop. Every stream has a bounded queue and an [`Overflow`] policy: `Block` (the default: the
//! node stops reading from the network until the application makes room, so the pressure travels
//! back to the publishers), `DropOldest` or `DropNewest`, where every drop is counted and reported
//! as a [`NodeEvent::StreamOverflow`].
//!
//! # Limits
//!
//! | what | bound | when full |
//! |---|---|---|
//! | commands from the handles | [`NodeBuilder::command_capacity`], 1024 | `publish` waits, `try_publish` fails with [`Error::Full`] |
//! | a stream's queue | [`StreamOptions::capacity`], 8192 | its [`Overflow`] policy |
//! | each event stream | [`NodeBuilder::event_capacity`], 1024 | the stream sees [`NodeEvent::Lagged`] |
//! | a peer's send queue | the transport's `send_queue`, 4096 frames | own publications wait; forwarded and control frames are dropped, counted, reported ([`NodeEvent::SendDropped`]) |
//! | pending pings and connects | 1024 each | [`Error::Busy`] |
//! | own publications waiting for the cache | 1024 per topic between drains (every 25 ms, and at half full) | the oldest is not cached, counted in [`NodeStats::cache_skipped`] |
//! | message cache, held-back messages, streams | see `chaski-membership`'s bounds (65,536 messages, 64 MiB, 30 s; 16,384 held, 32 MiB; 16,384 streams) | the oldest goes; a full hold-back reports its oldest gap missed at once |
//! | publication counters (one per topic) | 16,384 for topics no longer subscribed to or published on; those in use are kept | the oldest unused is forgotten; a new counter for its topic starts above every sequence forgotten |
//!
//! A `Block` stream that is not read makes its node stop reading from the network: its peers'
//! messages wait in TCP buffers, and after the peer timeout the node's peers are declared down
//! because their pongs wait too. Read every `Block` stream, or use a dropping policy for consumers
//! that may stall.

mod config;
mod driver;
mod error;
mod events;
mod node;
mod own;
mod sequence;
mod stream;

pub use crate::{
    config::{DEFAULT_LAN_GROUP, DEFAULT_LAN_PORT, IntoTopic, NodeBuilder},
    error::Error,
    events::{EventStream, NodeEvent},
    node::{Node, NodeStats, Peer, PeerWatch, PublishOptions},
    stream::{DEFAULT_STREAM_CAPACITY, Delivery, MessageStream, Overflow, Received, StreamOptions},
};
#[doc(no_inline)]
pub use chaski_transport::{CertificateAuthority, Identity, IdentityError, Network, NetworkKey};
