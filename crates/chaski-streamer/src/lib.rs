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
//! # Order and duplicates
//!
//! A publisher numbers its messages on each topic 1, 2, 3, ... ([`Received::sequence`]). A
//! subscriber never receives a message twice (the duplicate filter is keyed by publisher, topic
//! and sequence number). Messages keep their publisher's order along each path of the topic's graph.
//! When the graph offers several paths (subscribers paired with each other as well as with the
//! publisher), a copy forwarded by a neighbour can overtake the publisher's own copy while the
//! publisher's queue to this subscriber is the fuller one: order across paths is not guaranteed,
//! as in other flooding overlays (gossipsub). Compare [`Received::sequence`] to restore it.
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
