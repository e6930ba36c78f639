//! The node's builder: every setting of a node, with its default, validated once in
//! [`NodeBuilder::build`].

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use chaski_wire::{InvalidTopic, Topic};

use crate::{Error, Node, Overflow, stream::DEFAULT_STREAM_CAPACITY};

/// The UDP port of LAN discovery beacons: 7419.
pub const DEFAULT_LAN_PORT: u16 = 7419;

/// The IPv4 multicast group of LAN discovery beacons: 239.255.67.72 (organisation-local scope).
pub const DEFAULT_LAN_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 67, 72);

/// Something that names a topic: a [`Topic`], or a string validated into one.
///
/// A node looks the [`name`](IntoTopic::name) up among the topics it already knows before it
/// builds a new [`Topic`], so publishing with a `&str` on a known topic allocates nothing.
pub trait IntoTopic {
    /// The name, as given (not validated yet).
    fn name(&self) -> &str;

    /// The topic, or why the name is not valid.
    fn into_topic(self) -> Result<Topic, InvalidTopic>;
}

impl IntoTopic for Topic {
    fn name(&self) -> &str {
        self.as_str()
    }

    fn into_topic(self) -> Result<Topic, InvalidTopic> {
        Ok(self)
    }
}

impl IntoTopic for &Topic {
    fn name(&self) -> &str {
        self.as_str()
    }

    fn into_topic(self) -> Result<Topic, InvalidTopic> {
        Ok(self.clone())
    }
}

impl IntoTopic for &str {
    fn name(&self) -> &str {
        self
    }

    fn into_topic(self) -> Result<Topic, InvalidTopic> {
        Topic::new(self)
    }
}

impl IntoTopic for String {
    fn name(&self) -> &str {
        self
    }

    fn into_topic(self) -> Result<Topic, InvalidTopic> {
        Topic::try_from(self)
    }
}

impl IntoTopic for &String {
    fn name(&self) -> &str {
        self
    }

    fn into_topic(self) -> Result<Topic, InvalidTopic> {
        Topic::new(self)
    }
}

/// Builds a [`Node`]: `Node::builder().name("n").listen("127.0.0.1:0").subscribe(["t"]).build().await`.
///
/// Every setter documents its default. Values are checked once, in [`build`](NodeBuilder::build),
/// which names the setting at fault.
#[derive(Debug, Clone)]
#[must_use]
pub struct NodeBuilder {
    pub(crate) name: Option<String>,
    pub(crate) listen: String,
    pub(crate) subscriptions: Vec<Topic>,
    pub(crate) seeds: Vec<String>,
    pub(crate) relay: bool,
    pub(crate) max_connections: usize,
    pub(crate) disconnect_unneeded: bool,
    pub(crate) status_from_anywhere: bool,
    pub(crate) lan_discovery: bool,
    pub(crate) lan_port: u16,
    pub(crate) lan_group: Ipv4Addr,
    pub(crate) network_id: String,
    pub(crate) ping_interval: Duration,
    pub(crate) peer_timeout: Duration,
    pub(crate) reconnect_initial: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) reconnect_attempts: u32,
    pub(crate) best_effort: HashSet<Topic>,
    pub(crate) stream_capacity: usize,
    pub(crate) stream_overflow: Overflow,
    pub(crate) command_capacity: usize,
    pub(crate) event_capacity: usize,
    pub(crate) transport: chaski_transport::Config,
    pub(crate) identity: Option<chaski_transport::Identity>,
    pub(crate) insecure_plaintext: bool,
    pub(crate) network: Option<chaski_transport::Network>,
    pub(crate) gap_timeout: Duration,
    pub(crate) cache_messages: usize,
    pub(crate) cache_bytes: usize,
    pub(crate) cache_age: Duration,
    pub(crate) errors: Vec<String>,
}

impl Default for NodeBuilder {
    fn default() -> NodeBuilder {
        NodeBuilder {
            name: None,
            listen: "127.0.0.1:0".to_owned(),
            subscriptions: Vec::new(),
            seeds: Vec::new(),
            relay: false,
            max_connections: 5,
            disconnect_unneeded: true,
            status_from_anywhere: false,
            lan_discovery: true,
            lan_port: DEFAULT_LAN_PORT,
            lan_group: DEFAULT_LAN_GROUP,
            network_id: String::new(),
            ping_interval: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(3),
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            reconnect_attempts: 32,
            best_effort: HashSet::new(),
            stream_capacity: DEFAULT_STREAM_CAPACITY,
            stream_overflow: Overflow::Block,
            command_capacity: 1024,
            event_capacity: 1024,
            transport: chaski_transport::Config::default(),
            identity: None,
            insecure_plaintext: false,
            network: None,
            gap_timeout: Duration::from_secs(1),
            cache_messages: 65_536,
            cache_bytes: 64 << 20,
            cache_age: Duration::from_secs(30),
            errors: Vec::new(),
        }
    }
}

impl NodeBuilder {
    /// A builder with every setting at its default.
    pub fn new() -> NodeBuilder {
        NodeBuilder::default()
    }

    /// The node's human-readable name (not unique; for logs and tools). Default: `chaski-` and
    /// the first 8 hex digits of the node id. At most 255 bytes.
    pub fn name(mut self, name: impl Into<String>) -> NodeBuilder {
        self.name = Some(name.into());
        self
    }

    /// The address to listen on for TCP connections and UDP datagrams (same port). Default:
    /// `127.0.0.1:0` (loopback, a free port). LAN discovery announces on the interface of this
    /// address; see [`lan_discovery`](NodeBuilder::lan_discovery).
    pub fn listen(mut self, addr: impl Into<String>) -> NodeBuilder {
        self.listen = addr.into();
        self
    }

    /// Topics to subscribe to from the start (more can be added at run time with
    /// [`Node::subscribe`](crate::Node::subscribe)). Default: none. Adds to earlier calls.
    pub fn subscribe<I>(mut self, topics: I) -> NodeBuilder
    where
        I: IntoIterator,
        I::Item: IntoTopic,
    {
        for topic in topics {
            match topic.into_topic() {
                Ok(topic) => self.subscriptions.push(topic),
                Err(err) => self.errors.push(format!("subscribe: {err}")),
            }
        }
        self
    }

    /// Addresses of nodes to dial at start, and to re-dial while no peer is known (`host:port`).
    /// Default: none. Adds to earlier calls.
    pub fn seeds<I>(mut self, seeds: I) -> NodeBuilder
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.seeds.extend(seeds.into_iter().map(Into::into));
        self
    }

    /// Be a relay: accept every topic and forward messages between nodes that are not paired
    /// directly, so that a network can bootstrap through one well-known address (the original's
    /// root node). Default: false.
    pub fn relay(mut self, relay: bool) -> NodeBuilder {
        self.relay = relay;
        self
    }

    /// Direct connections to keep per subscribed topic, preferring low latency. Default: 5 (as the
    /// original). Must be at least 2 (a topic's backbone needs two neighbours); with 2 or 3, the
    /// backbone ring has one neighbour on each side, from 4 on two.
    pub fn max_connections(mut self, max: usize) -> NodeBuilder {
        self.max_connections = max;
        self
    }

    /// Close connections that no topic needs any longer (the original's `on_pair='disconnect'`),
    /// after a grace period; connections to seeds are kept. Default: true.
    pub fn disconnect_unneeded(mut self, yes: bool) -> NodeBuilder {
        self.disconnect_unneeded = yes;
        self
    }

    /// Answer status requests (`chaski peers`: the peer table with ids, addresses, topics,
    /// round trips and traffic) from any address. Default: false: only requesters on this host
    /// (connected from a loopback address, or from the address the node listens on) are
    /// answered; others are closed with `Goodbye(Unauthorized)`.
    pub fn status_from_anywhere(mut self, yes: bool) -> NodeBuilder {
        self.status_from_anywhere = yes;
        self
    }

    /// Find peers on the LAN with UDP multicast beacons, announced on the interface of the
    /// listening address only (loopback by default, so nothing leaves the machine unless the node
    /// listens on a real interface). Default: true.
    pub fn lan_discovery(mut self, on: bool) -> NodeBuilder {
        self.lan_discovery = on;
        self
    }

    /// The UDP port of LAN discovery. Default: [`DEFAULT_LAN_PORT`] (7419). Nodes discover each
    /// other only on the same port and group.
    pub fn lan_port(mut self, port: u16) -> NodeBuilder {
        self.lan_port = port;
        self
    }

    /// The IPv4 multicast group of LAN discovery. Default: [`DEFAULT_LAN_GROUP`]. Must be a
    /// multicast address.
    pub fn lan_group(mut self, group: Ipv4Addr) -> NodeBuilder {
        self.lan_group = group;
        self
    }

    /// The network this node belongs to: nodes of other networks are ignored (beacons) or refused
    /// (connections). Default: empty, the default network.
    pub fn network_id(mut self, id: impl Into<String>) -> NodeBuilder {
        self.network_id = id.into();
        self
    }

    /// How often to ping each peer. Default: 1 s. Must be less than the peer timeout.
    pub fn ping_interval(mut self, interval: Duration) -> NodeBuilder {
        self.ping_interval = interval;
        self
    }

    /// How long a silent peer is kept before it is declared down. Default: 3 s. Must be more than
    /// the ping interval.
    pub fn peer_timeout(mut self, timeout: Duration) -> NodeBuilder {
        self.peer_timeout = timeout;
        self
    }

    /// Reconnection backoff: the first delay and the cap; the delay doubles, with jitter. Default:
    /// 100 ms doubling to 5 s. The first must not exceed the cap.
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> NodeBuilder {
        self.reconnect_initial = initial;
        self.reconnect_max = max;
        self
    }

    /// How many times a lost peer that is still wanted is re-dialed before it is forgotten.
    /// Default: 32 (as the original).
    pub fn reconnect_attempts(mut self, attempts: u32) -> NodeBuilder {
        self.reconnect_attempts = attempts;
        self
    }

    /// Topics whose messages this node publishes best-effort, as UDP datagrams, by default (a
    /// single publish can still choose with [`PublishOptions`](crate::PublishOptions)). Default:
    /// none (everything reliable, over TCP). With the transport's UDP socket turned off
    /// (`transport::ConfigBuilder::udp(false)`), best-effort messages travel over TCP.
    pub fn best_effort<I>(mut self, topics: I) -> NodeBuilder
    where
        I: IntoIterator,
        I::Item: IntoTopic,
    {
        for topic in topics {
            match topic.into_topic() {
                Ok(topic) => {
                    self.best_effort.insert(topic);
                }
                Err(err) => self.errors.push(format!("best_effort: {err}")),
            }
        }
        self
    }

    /// The queue capacity of streams opened with [`Node::stream`](crate::Node::stream). Default:
    /// 8192 messages. Must be at least 1.
    pub fn stream_capacity(mut self, capacity: usize) -> NodeBuilder {
        self.stream_capacity = capacity;
        self
    }

    /// The overflow policy of streams opened with [`Node::stream`](crate::Node::stream). Default:
    /// [`Overflow::Block`].
    pub fn stream_overflow(mut self, overflow: Overflow) -> NodeBuilder {
        self.stream_overflow = overflow;
        self
    }

    /// The queue of operations from the node's handles to its driver (publishes, subscriptions,
    /// pings). When full, `publish` waits and `try_publish` fails with
    /// [`Error::Full`](crate::Error::Full). Default: 1024. Must be at least 1.
    pub fn command_capacity(mut self, capacity: usize) -> NodeBuilder {
        self.command_capacity = capacity;
        self
    }

    /// The queue of each [`EventStream`](crate::EventStream); a stream that falls further behind
    /// sees [`NodeEvent::Lagged`](crate::NodeEvent::Lagged). Default: 1024. Must be at least 1.
    pub fn event_capacity(mut self, capacity: usize) -> NodeBuilder {
        self.event_capacity = capacity;
        self
    }

    /// The node's identity: its key pair, from which its id is derived and which it proves to
    /// every peer. Default: a fresh one at every start (a new id each time). To keep the id
    /// across restarts, load one with
    /// [`Identity::load_or_create`](chaski_transport::Identity::load_or_create) (a key file
    /// of mode 0600).
    pub fn identity(mut self, identity: chaski_transport::Identity) -> NodeBuilder {
        self.identity = Some(identity);
        self
    }

    /// How long a gap in a publisher's reliable messages on a topic may stay open while it is
    /// repaired from the neighbours' caches (later messages held back for ordered streams) before
    /// what is still missing is reported ([`NodeEvent::Missed`](crate::NodeEvent::Missed),
    /// `NodeStats::messages_missed`) and the stream moves on. A gap that makes progress is timed
    /// afresh. Default: 1 s. Must not be zero.
    pub fn gap_timeout(mut self, timeout: Duration) -> NodeBuilder {
        self.gap_timeout = timeout;
        self
    }

    /// Limits of the message cache, which keeps the messages of every topic this node carries
    /// (its own publications included) to serve its neighbours' grafts and gap repairs: at most
    /// `messages` messages, `bytes` bytes of payload and headers (plus 128 bytes each), each for
    /// at most `age`; the oldest goes first. Default: 65,536 messages, 64 MiB, 30 s (a 10 s outage
    /// at 6,500 msg/s). A neighbour that was away longer than the cache reaches gets the rest
    /// reported missed. Each must be more than zero.
    pub fn message_cache(mut self, messages: usize, bytes: usize, age: Duration) -> NodeBuilder {
        self.cache_messages = messages;
        self.cache_bytes = bytes;
        self.cache_age = age;
        self
    }

    /// Closes the network: only members connect to this node, and it to them. A member holds
    /// the same network key ([`network_key`](NodeBuilder::network_key)), or has an
    /// [`identity`](NodeBuilder::identity) issued by the network's CA
    /// ([`Network::load_ca`](chaski_transport::Network::load_ca)); a deny list
    /// ([`Network::deny`](chaski_transport::Network::deny)) refuses revoked nodes. In a closed
    /// network beacons are tagged (others' are dropped before any dial) and status requests are
    /// answered to any member (they are members' business). Default: an open network (anyone
    /// who proves a key may connect).
    pub fn network(mut self, network: chaski_transport::Network) -> NodeBuilder {
        self.network = Some(network);
        self
    }

    /// Closes the network to the holders of `key` (see [`network`](NodeBuilder::network)).
    pub fn network_key(self, key: &chaski_transport::NetworkKey) -> NodeBuilder {
        match chaski_transport::Network::from_key(key) {
            Ok(network) => self.network(network),
            Err(e) => {
                let mut builder = self;
                builder.errors.push(format!("network key: {e}"));
                builder
            }
        }
    }

    /// **Insecure**: plain TCP instead of TLS. Nothing is encrypted, nothing authenticated:
    /// anyone on the path reads and alters every message, and any peer may claim any node id.
    /// For benchmarks and fully trusted links only; nodes that use TLS (the default) refuse
    /// this one with a reason, and it refuses them. Default: false.
    pub fn insecure_plaintext(mut self, yes: bool) -> NodeBuilder {
        self.insecure_plaintext = yes;
        self
    }

    /// The transport's settings (connection limits, queue sizes, frame and datagram maxima,
    /// timeouts). Default: [`chaski_transport::Config::default`]. Its security is the node's:
    /// TLS with [`identity`](NodeBuilder::identity), unless
    /// [`insecure_plaintext`](NodeBuilder::insecure_plaintext).
    pub fn transport(mut self, config: chaski_transport::Config) -> NodeBuilder {
        self.transport = config;
        self
    }

    /// Checks the settings, binds the listening address, and starts the node.
    pub async fn build(self) -> Result<Node, Error> {
        Node::start(self).await
    }

    pub(crate) fn check(&self) -> Result<(), Error> {
        if let Some(err) = self.errors.first() {
            return Err(Error::Config(err.clone()));
        }
        let rules: [(bool, &str); 9] = [
            (
                self.gap_timeout > Duration::ZERO,
                "gap_timeout must be more than zero",
            ),
            (
                self.cache_messages > 0 && self.cache_bytes > 0 && self.cache_age > Duration::ZERO,
                "the message cache limits must be more than zero",
            ),
            (
                self.max_connections >= 2,
                "max_connections must be at least 2",
            ),
            (
                self.ping_interval > Duration::ZERO,
                "ping_interval must be more than zero",
            ),
            (
                self.peer_timeout > self.ping_interval,
                "peer_timeout must be more than ping_interval",
            ),
            (
                self.reconnect_initial <= self.reconnect_max,
                "reconnect_backoff: initial must not exceed max",
            ),
            (
                self.stream_capacity >= 1,
                "stream_capacity must be at least 1",
            ),
            (
                self.command_capacity >= 1,
                "command_capacity must be at least 1",
            ),
            (
                self.event_capacity >= 1,
                "event_capacity must be at least 1",
            ),
        ];
        if let Some((_, rule)) = rules.iter().find(|(ok, _)| !ok) {
            return Err(Error::Config((*rule).to_owned()));
        }
        if self.insecure_plaintext && self.network.is_some() {
            return Err(Error::Config(
                "a closed network needs TLS: insecure_plaintext cannot be combined with a network key or CA"
                    .to_owned(),
            ));
        }
        if !self.lan_group.is_multicast() {
            return Err(Error::Config(format!(
                "lan_group {} is not a multicast address",
                self.lan_group
            )));
        }
        if self
            .name
            .as_ref()
            .is_some_and(|n| n.len() > chaski_wire::MAX_NAME_LEN)
        {
            return Err(Error::Config("name must be at most 255 bytes".to_owned()));
        }
        Ok(())
    }
}

/// Resolves `host:port` (a literal address, or a name looked up with the system resolver).
pub(crate) async fn resolve(input: &str) -> Result<SocketAddr, Error> {
    if let Ok(addr) = input.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let invalid = |reason: String| Error::InvalidAddress {
        input: input.to_owned(),
        reason,
    };
    if !input.contains(':') {
        return Err(invalid("expected host:port".to_owned()));
    }
    let mut addrs = tokio::net::lookup_host(input)
        .await
        .map_err(|e| invalid(e.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| invalid("the name resolves to no address".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        NodeBuilder::new().check().unwrap();
    }

    #[test]
    fn bad_settings_name_the_setting() {
        let cases = [
            (NodeBuilder::new().max_connections(1), "max_connections"),
            (
                NodeBuilder::new().peer_timeout(Duration::from_millis(500)),
                "peer_timeout",
            ),
            (NodeBuilder::new().subscribe([""]), "subscribe"),
            (
                NodeBuilder::new().lan_group(Ipv4Addr::LOCALHOST),
                "lan_group",
            ),
            (NodeBuilder::new().stream_capacity(0), "stream_capacity"),
            (
                NodeBuilder::new()
                    .reconnect_backoff(Duration::from_secs(9), Duration::from_secs(1)),
                "reconnect_backoff",
            ),
        ];
        for (builder, setting) in cases {
            let err = builder.check().unwrap_err().to_string();
            assert!(err.contains(setting), "{err:?} does not name {setting}");
        }
    }

    #[tokio::test]
    async fn addresses_resolve_or_say_why_not() {
        assert_eq!(
            resolve("127.0.0.1:7").await.unwrap(),
            "127.0.0.1:7".parse().unwrap()
        );
        assert_eq!(
            resolve("[::1]:7").await.unwrap(),
            "[::1]:7".parse().unwrap()
        );
        assert!(matches!(
            resolve("nonsense").await,
            Err(Error::InvalidAddress { .. })
        ));
    }
}
