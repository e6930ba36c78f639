//! Chaski: peer-to-peer publish/subscribe for Rust on tokio.
//!
//! Nodes find each other (on the LAN, through seed addresses, by asking their peers), pair up with
//! the nodes that share their subscription topics, route each message only to the nodes that want
//! it, measure latency by ping, notice a dead peer within seconds and reconnect by themselves.
//!
//! This is the facade: it re-exports the node API (feature `node`, on by default) at the top
//! level, and each layer as a module for those who build on the layers directly:
//!
//! | module | crate | what |
//! |---|---|---|
//! | [`wire`] | `chaski-wire` | the protocol: frames, codec, node ids, topics |
//! | `transport` | `chaski-transport` | framed TCP connections and UDP datagrams on tokio (feature `transport`) |
//! | `membership` | `chaski-membership` | discovery, pairing, routing, ping, keep-alive as a state machine with no I/O (feature `membership`) |
//!
//! # Example
//!
//! Two nodes on loopback: one publishes, the other streams what arrives.
//!
//! ```
//! # #[cfg(feature = "node")]
//! # #[tokio::main]
//! # async fn main() -> Result<(), chaski::Error> {
//! use chaski::Node;
//!
//! // LAN discovery is on by default; here the second node finds the first through its address.
//! let first = Node::builder().name("first").lan_discovery(false).subscribe(["greetings"]).build().await?;
//! let mut stream = first.stream();
//!
//! let second = Node::builder()
//!     .name("second")
//!     .lan_discovery(false)
//!     .subscribe(["greetings"])
//!     .seeds([first.local_addr().to_string()])
//!     .build()
//!     .await?;
//!
//! // Wait until the two are paired on the topic, then publish.
//! let mut events = second.events();
//! while !second.peers().iter().any(|p| p.paired_topics.iter().any(|t| t == "greetings")) {
//!     events.recv().await;
//! }
//! second.publish("greetings", "hello, first").await?;
//!
//! let message = stream.recv().await.expect("a message");
//! assert_eq!(message.payload, "hello, first");
//! assert_eq!(message.publisher_name.as_deref(), Some("second"));
//!
//! second.shutdown().await?;
//! first.shutdown().await?;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "node"))]
//! # fn main() {}
//! ```
//!
//! More in `examples/`: `pubsub`, `lan_discovery`, `latency_monitor` and `chat`, each run with
//! `cargo run --example NAME` and ending by itself.

pub use chaski_wire as wire;
#[doc(no_inline)]
pub use chaski_wire::{NodeId, Topic};

/// The transport layer: framed TCP connections with a handshake, and UDP datagrams, on tokio.
#[cfg(feature = "transport")]
pub mod transport {
    pub use chaski_transport::*;
}

/// The membership layer: discovery, pairing, routing, ping and keep-alive as a state machine.
#[cfg(feature = "membership")]
pub mod membership {
    pub use chaski_membership::*;
}

#[cfg(feature = "node")]
pub use chaski_streamer::{
    CertificateAuthority, DEFAULT_LAN_GROUP, DEFAULT_LAN_PORT, DEFAULT_STREAM_CAPACITY, Delivery,
    Error, EventStream, Identity, IdentityError, IntoTopic, MessageStream, Network, NetworkKey,
    Node, NodeBuilder, NodeEvent, NodeStats, Overflow, Peer, PeerWatch, PublishOptions, Received,
    StreamOptions,
};
