//! The node handle: a cheap, cloneable front to the driver task that does the work.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use chaski_membership::PeerSnapshot;
use chaski_transport::{Connection, EncodedFrame};
use chaski_wire::{Header, Message, NodeId, Topic};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::{
    Delivery, Error, EventStream, IntoTopic, MessageStream, NodeBuilder, StreamOptions,
    driver::{self, Command},
    stream::{Offer, Shared},
};

/// Bytes a `Publish` frame adds around its topic, payload and headers, at most (length prefix,
/// envelope, publisher id, sequence, timestamp, hop counts, field keys and lengths).
pub(crate) const PUBLISH_OVERHEAD: usize = 72;

/// A peer as seen by this node: id, name, addresses, subscriptions, round-trip statistics
/// (`rtt.srtt`, `rtt.rttvar` as jitter, `rtt.min_rtt`), paired topics and how it was found.
pub type Peer = PeerSnapshot;

/// How to publish one message: reliably or best-effort, with headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// How to send it. `None`: the node's default for the topic (see
    /// [`NodeBuilder::best_effort`]), reliable unless configured otherwise.
    pub delivery: Option<Delivery>,
    /// Application headers.
    pub headers: Vec<Header>,
}

impl PublishOptions {
    /// Reliable (TCP), whatever the topic's default.
    pub fn reliable() -> PublishOptions {
        PublishOptions {
            delivery: Some(Delivery::Reliable),
            headers: Vec::new(),
        }
    }

    /// Best-effort (one UDP datagram per peer), whatever the topic's default.
    pub fn best_effort() -> PublishOptions {
        PublishOptions {
            delivery: Some(Delivery::BestEffort),
            headers: Vec::new(),
        }
    }

    /// With this header added.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> PublishOptions {
        self.headers.push(Header {
            key: key.into(),
            value: value.into(),
        });
        self
    }
}

/// Counters of a node, from [`Node::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStats {
    /// Messages this node published.
    pub published: u64,
    /// Of which, published on a topic with no subscriber anywhere this node knows of.
    pub published_unrouted: u64,
    /// Messages that arrived from peers, duplicates included (every `Publish` frame or datagram).
    pub messages_in: u64,
    /// Messages delivered to this node's streams (counted once per message, not per stream).
    pub received: u64,
    /// Messages forwarded to other peers.
    pub forwarded: u64,
    /// Duplicates discarded.
    pub duplicates: u64,
    /// Frames dropped because a peer's send queue was full.
    pub send_dropped: u64,
    /// Best-effort datagrams ignored (unknown source or undecodable).
    pub datagrams_ignored: u64,
    /// Connections this node has started to dial (seeds, discovered peers, reconnections).
    pub dials: u64,
    /// Frames from peers that broke a protocol limit (each closed its connection); by kind in
    /// `membership::Event::ProtocolViolation`.
    pub protocol_violations: u64,
    /// Messages refused as implausible (an impersonated publisher, a forged sequence).
    pub messages_rejected: u64,
    /// Connections closed because a frame could not be taken: malformed, of an unknown kind,
    /// or longer than its kind's limit (by cause in the transport's `rejected_in`).
    pub frames_rejected: u64,
    /// Pongs sent without the padding a peer asked for (its padding budget was spent).
    pub padding_refused: u64,
    /// Reliable messages reported missed ([`NodeEvent::Missed`](crate::NodeEvent::Missed)):
    /// known to exist (later ones arrived, or a neighbour announced them), neither received nor
    /// repaired within the gap timeout.
    pub messages_missed: u64,
    /// Own publications not put in the message cache because the driver fell behind (see
    /// [`NodeBuilder::message_cache`](crate::NodeBuilder::message_cache)): sent, but not
    /// available to repair a neighbour's gap.
    pub cache_skipped: u64,
    /// Handshakes that failed (by cause in [`Node::transport_stats`]): in a closed network,
    /// outsiders refused.
    pub handshake_failures: u64,
    /// Datagrams dropped on receipt, on the node's UDP socket and its LAN socket (by cause in
    /// [`Node::transport_stats`] and [`Node::lan_stats`]): garbage, outsiders' beacons in a
    /// closed network, sealed datagrams that do not open or are replayed.
    pub datagrams_dropped: u64,
    /// Reliable messages that came after their gap was reported missed (handed to unordered
    /// streams, and to ordered ones if nothing after them was handed out yet).
    pub messages_late: u64,
    /// Ranges of missing messages this node asked its neighbours for (gap repair).
    pub repairs_requested: u64,
    /// Cached messages this node sent to neighbours that asked for them.
    pub messages_served: u64,
    /// Links this node turned from announcing to pushing a stream (grafts it sent).
    pub grafts: u64,
    /// Links this node turned from pushing to announcing a stream (prunes it sent).
    pub prunes: u64,
    /// Messages held back for ordered delivery now (a gauge).
    pub held: u64,
    /// Messages in the message cache now (a gauge).
    pub cached: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) published: AtomicU64,
    pub(crate) published_unrouted: AtomicU64,
    pub(crate) messages_in: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) forwarded: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) send_dropped: AtomicU64,
    pub(crate) datagrams_ignored: AtomicU64,
    pub(crate) dials: AtomicU64,
    pub(crate) protocol_violations: AtomicU64,
    pub(crate) messages_rejected: AtomicU64,
    pub(crate) padding_refused: AtomicU64,
    pub(crate) frames_rejected: AtomicU64,
    pub(crate) messages_missed: AtomicU64,
    pub(crate) cache_skipped: AtomicU64,
    pub(crate) messages_late: AtomicU64,
    pub(crate) repairs_requested: AtomicU64,
    pub(crate) messages_served: AtomicU64,
    pub(crate) grafts: AtomicU64,
    pub(crate) prunes: AtomicU64,
    pub(crate) held: AtomicU64,
    pub(crate) cached: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> NodeStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NodeStats {
            published: get(&self.published),
            published_unrouted: get(&self.published_unrouted),
            messages_in: get(&self.messages_in),
            received: get(&self.received),
            forwarded: get(&self.forwarded),
            duplicates: get(&self.duplicates),
            send_dropped: get(&self.send_dropped),
            datagrams_ignored: get(&self.datagrams_ignored),
            dials: get(&self.dials),
            protocol_violations: get(&self.protocol_violations),
            messages_rejected: get(&self.messages_rejected),
            padding_refused: get(&self.padding_refused),
            frames_rejected: get(&self.frames_rejected),
            messages_missed: get(&self.messages_missed),
            cache_skipped: get(&self.cache_skipped),
            handshake_failures: 0,
            datagrams_dropped: 0,
            messages_late: get(&self.messages_late),
            repairs_requested: get(&self.repairs_requested),
            messages_served: get(&self.messages_served),
            grafts: get(&self.grafts),
            prunes: get(&self.prunes),
            held: get(&self.held),
            cached: get(&self.cached),
        }
    }
}

/// The streams of a node, shared between the handles (which open streams and deliver their
/// own publications) and the driver (which delivers received messages). Readers load the list
/// without a lock; opening a stream copies it (rare).
#[derive(Default)]
pub(crate) struct StreamRegistry {
    streams: ArcSwap<Vec<Arc<Shared>>>,
    /// Serialises the writers; readers never take it.
    write: Mutex<()>,
    next_id: AtomicU64,
}

impl StreamRegistry {
    fn open(&self, options: StreamOptions) -> MessageStream {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (stream, shared) = MessageStream::new(id, options);
        let _writer = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut streams: Vec<Arc<Shared>> = self
            .streams
            .load()
            .iter()
            .filter(|s| !s.is_closed())
            .cloned()
            .collect();
        streams.push(shared);
        self.streams.store(Arc::new(streams));
        stream
    }

    /// The open streams (and possibly some closed since the last pruning).
    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<Vec<Arc<Shared>>>> {
        self.streams.load()
    }

    /// The same, as an `Arc` that can be held across an `.await`.
    pub(crate) fn load_arc(&self) -> Arc<Vec<Arc<Shared>>> {
        self.streams.load_full()
    }

    /// Forgets closed streams.
    pub(crate) fn prune(&self) {
        let _writer = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.streams.load();
        if current.iter().any(|s| s.is_closed()) {
            let open: Vec<Arc<Shared>> =
                current.iter().filter(|s| !s.is_closed()).cloned().collect();
            self.streams.store(Arc::new(open));
        }
    }
}

/// A watch on a node's peer table, from [`Node::watch_peers`]: each change of the table after the
/// watch was made is seen once, whether or not someone was waiting when it happened.
///
/// ```no_run
/// # async fn demo(node: chaski_streamer::Node) -> Result<(), chaski_streamer::Error> {
/// let mut watch = node.watch_peers();
/// loop {
///     let peers = watch.changed().await?;
///     println!("{} peers", peers.len());
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PeerWatch {
    peers: watch::Receiver<Arc<Vec<Peer>>>,
}

impl PeerWatch {
    /// The peer table now; later changes are measured from it.
    pub fn current(&mut self) -> Vec<Peer> {
        self.peers.borrow_and_update().as_ref().clone()
    }

    /// Waits until the table changed since the watch last saw it (when it was made, or returned
    /// it from [`current`](PeerWatch::current) or here), and returns it. Fails with
    /// [`Error::Shutdown`] once the node has stopped.
    pub async fn changed(&mut self) -> Result<Vec<Peer>, Error> {
        self.peers.changed().await.map_err(|_| Error::Shutdown)?;
        Ok(self.current())
    }
}

/// Where a node's own publications on a topic go, as the driver last computed it from the
/// membership state: the handles read it without a lock and queue messages on the connections
/// themselves, so that publishing costs no hop through the driver.
#[derive(Default)]
pub(crate) struct Routes {
    pub(crate) topics: HashMap<Topic, TopicRoute, foldhash::fast::RandomState>,
    pub(crate) hop_limit: u32,
    /// The node has shut down: publishing fails with `Error::Shutdown`.
    pub(crate) closed: bool,
}

/// The route of one topic.
pub(crate) struct TopicRoute {
    /// The connections to queue the message on.
    pub(crate) conns: Vec<Connection>,
    /// Whether this node subscribes to the topic itself.
    pub(crate) deliver: bool,
    /// The topic's publication counter.
    pub(crate) sequence: crate::sequence::Counter,
    /// Some connection carries the topic, eagerly or not: a publication has somewhere to go
    /// even when `conns` is empty.
    pub(crate) links: bool,
    /// Copies of the publications, for the driver (the message cache and announcements).
    pub(crate) own: Arc<crate::own::Own>,
}

/// What a publication has left to wait for once the part that needs no waiting is done.
type Rest<'a> = Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>;

/// The rest of a publication once the part that needs no waiting is done: nothing, or its wait.
async fn finish(now: Result<Option<Rest<'_>>, Error>) -> Result<(), Error> {
    match now? {
        None => Ok(()),
        Some(rest) => rest.await,
    }
}

/// A publication validated by `Node::prepare`, with its route when the snapshot has one and it
/// is sent reliably.
struct Prepared<'r> {
    topic: Topic,
    payload: Bytes,
    delivery: Delivery,
    headers: Vec<Header>,
    route: Option<&'r TopicRoute>,
}

pub(crate) struct Inner {
    pub(crate) id: NodeId,
    /// Which start of this node's identity (0 for a fresh key), in every message it publishes.
    pub(crate) incarnation: u64,
    pub(crate) name: Arc<str>,
    pub(crate) local_addr: SocketAddr,
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) events: broadcast::Sender<crate::NodeEvent>,
    pub(crate) peers: watch::Receiver<Arc<Vec<Peer>>>,
    pub(crate) streams: Arc<StreamRegistry>,
    pub(crate) routes: Arc<ArcSwap<Routes>>,
    /// When the last `NoSubscribers` event was sent (microseconds since the node started), and
    /// how many unrouted publications since.
    pub(crate) unrouted: (AtomicU64, AtomicU64),
    pub(crate) started: std::time::Instant,
    /// The transport's counters (handshake failures, datagrams dropped).
    pub(crate) transport_stats: chaski_transport::StatsHandle,
    /// The LAN discovery socket, for its counters.
    pub(crate) lan_socket: Option<Arc<chaski_transport::DatagramSocket>>,
    pub(crate) best_effort: HashSet<Topic>,
    pub(crate) stream_defaults: StreamOptions,
    pub(crate) max_frame_len: usize,
    pub(crate) max_datagram_len: usize,
    /// The capacity of each connection's send queue.
    pub(crate) send_queue: usize,
    pub(crate) peer_timeout: Duration,
    pub(crate) counters: Arc<Counters>,
    pub(crate) stopped: watch::Receiver<bool>,
}

/// A Chaski node (the original's `ChaskiNode`): connects to peers, discovers and pairs with the
/// subscribers of its topics, routes messages, measures latency and keeps connections alive.
///
/// `Node` is a handle: cheap to clone, usable from any task. The work is done by a driver task
/// spawned by [`NodeBuilder::build`]. Dropping the last handle shuts the node down cleanly (a
/// goodbye to every peer), as [`Node::shutdown`] does explicitly.
///
/// ```no_run
/// # async fn demo() -> Result<(), chaski_streamer::Error> {
/// use chaski_streamer::Node;
///
/// let node = Node::builder().name("sensor-7").subscribe(["temperature"]).build().await?;
/// node.publish("temperature", "21.5").await?;
/// let mut stream = node.stream();
/// while let Some(message) = stream.recv().await {
///     println!("{}: {:?}", message.topic, message.payload);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

impl Node {
    /// A builder with every setting at its default.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::new()
    }

    pub(crate) async fn start(builder: NodeBuilder) -> Result<Node, Error> {
        builder.check()?;
        driver::start(builder).await
    }

    /// This node's id (random, new at every start).
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The address the node listens on (TCP and UDP), with the port it actually got.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    fn delivery(&self, topic: &Topic, options: &PublishOptions) -> Delivery {
        options.delivery.unwrap_or(
            if !self.inner.best_effort.is_empty() && self.inner.best_effort.contains(topic) {
                Delivery::BestEffort
            } else {
                Delivery::Reliable
            },
        )
    }

    /// Validates a publication (the topic, its delivery, its size against the frame or datagram
    /// maximum) against the routing snapshot `routes`.
    ///
    /// A name the snapshot already routes reuses the snapshot's [`Topic`]: publishing with a
    /// `&str` costs no allocation.
    fn prepare<'r>(
        &self,
        routes: &'r Routes,
        topic: impl IntoTopic,
        payload: impl Into<Bytes>,
        options: PublishOptions,
    ) -> Result<Prepared<'r>, Error> {
        if routes.closed {
            return Err(Error::Shutdown);
        }
        let (topic, route) = match routes.topics.get_key_value(topic.name()) {
            Some((topic, route)) => (topic.clone(), Some(route)),
            None => (topic.into_topic()?, None),
        };
        let payload = payload.into();
        let delivery = self.delivery(&topic, &options);
        let headers: usize = options
            .headers
            .iter()
            .map(|h| h.key.len() + h.value.len() + 8)
            .sum();
        let len = topic.len() + payload.len() + headers + PUBLISH_OVERHEAD;
        match delivery {
            Delivery::BestEffort if len > self.inner.max_datagram_len => {
                return Err(Error::TooLargeForDatagram {
                    len,
                    max: self.inner.max_datagram_len,
                });
            }
            _ if len > self.inner.max_frame_len => {
                return Err(Error::TooLarge {
                    len,
                    max: self.inner.max_frame_len,
                });
            }
            _ => {}
        }
        Ok(Prepared {
            // Best-effort messages go through the driver, which owns the UDP socket.
            route: route.filter(|_| delivery == Delivery::Reliable),
            topic,
            payload,
            delivery,
            headers: options.headers,
        })
    }

    /// A publication for the driver to route (best-effort, or a topic the snapshot lacks).
    fn driver_publish(&self, publication: Prepared<'_>) -> Command {
        // The driver numbers it, from the topic's counter.
        Command::Publish {
            topic: publication.topic,
            payload: publication.payload,
            headers: publication.headers,
            delivery: publication.delivery,
        }
    }

    /// Stamps a publication the snapshot routes (sequence number, clock, hop limit) and counts
    /// it; `None` when nobody, not even this node, wants it (counted and reported as unrouted).
    fn stamp(&self, publication: Prepared<'_>, hop_limit: u32) -> Option<Message> {
        let Prepared {
            topic,
            payload,
            headers,
            route,
            ..
        } = publication;
        let route = route?;
        Counters::add(&self.inner.counters.published, 1);
        let message = Message {
            topic,
            payload,
            publisher: self.inner.id,
            sequence: crate::sequence::next(&route.sequence),
            incarnation: self.inner.incarnation,
            timestamp_micros: driver::wall_micros(),
            hop_limit,
            hops: 0,
            headers,
        };
        if !route.links && !route.deliver {
            self.unrouted(&message.topic);
            return None;
        }
        if route.links {
            route.own.push(&message);
        }
        Some(message)
    }

    /// This node's streams that want its own publication on a topic it subscribes to, or `None`
    /// when no stream does (then no copy is made).
    fn local_streams(&self, route: &TopicRoute, topic: &Topic) -> Option<Arc<Vec<Arc<Shared>>>> {
        if !route.deliver {
            return None;
        }
        let streams = self.inner.streams.load();
        streams
            .iter()
            .any(|s| s.wants(topic))
            .then(|| Arc::clone(&streams))
    }

    fn too_large(&self) -> Error {
        Error::TooLarge {
            len: 0,
            max: self.inner.max_frame_len,
        }
    }

    /// Publishes `payload` on `topic`, reliably unless the topic is configured best-effort.
    ///
    /// Returns once the message is queued on every connection that needs it; waits while a send
    /// queue is full (the network is slower than the publisher: backpressure). Publishing on a
    /// topic that nobody subscribes to is not an error: it is counted
    /// ([`NodeStats::published_unrouted`]) and reported ([`NodeEvent::NoSubscribers`](crate::NodeEvent::NoSubscribers)).
    ///
    /// Any [`IntoTopic`] names the topic; a `&str` naming a topic the node already routes costs
    /// no allocation.
    pub fn publish(
        &self,
        topic: impl IntoTopic,
        payload: impl Into<Bytes>,
    ) -> impl Future<Output = Result<(), Error>> {
        // `publish_with`'s future itself, not one that awaits it: a publication is one future,
        // moved once.
        self.publish_with(topic, payload, PublishOptions::default())
    }

    /// Publishes with options: best-effort or reliable, headers.
    pub fn publish_with(
        &self,
        topic: impl IntoTopic,
        payload: impl Into<Bytes>,
        options: PublishOptions,
    ) -> impl Future<Output = Result<(), Error>> {
        // Everything that needs no waiting is done before the future is made, so that the future
        // holds only the rare rest, boxed: a few words, not the kilobyte or two an `async fn`
        // doing it all would hold and every caller's future would copy at each await.
        finish(self.publish_now(topic, payload, options))
    }

    /// The part of a publication that needs no waiting; what is left to wait for (the route of
    /// a topic published for the first time, room in a full queue) comes back as a future.
    fn publish_now(
        &self,
        topic: impl IntoTopic,
        payload: impl Into<Bytes>,
        options: PublishOptions,
    ) -> Result<Option<Rest<'_>>, Error> {
        // A guard, not a counted reference: nothing here outlives the call.
        let routes = self.inner.routes.load();
        let publication = self.prepare(&routes, topic, payload, options)?;
        if publication.route.is_none() && publication.delivery == Delivery::Reliable {
            // A topic the driver has not routed yet: ask it to, then look again.
            let Prepared {
                topic,
                payload,
                headers,
                ..
            } = publication;
            return Ok(Some(Box::pin(
                self.publish_routing(topic, payload, headers),
            )));
        }
        match publication.route {
            Some(route) => self.publish_routed(&routes, route, publication),
            // Best-effort, or a topic the driver cannot route (its table is full).
            None => self.publish_by_driver(publication),
        }
    }

    /// A publication the driver sends (and numbers) itself: handed over as a command, waiting
    /// for room in the command queue only when it is full.
    fn publish_by_driver(&self, publication: Prepared<'_>) -> Result<Option<Rest<'_>>, Error> {
        let command = self.driver_publish(publication);
        match self.inner.commands.try_send(command) {
            Ok(()) => Ok(None),
            Err(mpsc::error::TrySendError::Full(command)) => Ok(Some(Box::pin(async move {
                self.inner
                    .commands
                    .send(command)
                    .await
                    .map_err(|_| Error::Shutdown)
            }))),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Error::Shutdown),
        }
    }

    /// A publication on a topic the driver had not routed: waits for the route, then publishes.
    async fn publish_routing(
        &self,
        topic: Topic,
        payload: Bytes,
        headers: Vec<Header>,
    ) -> Result<(), Error> {
        let routed = self
            .request(|reply| Command::Route {
                topic: topic.clone(),
                reply,
            })
            .await?;
        let routes = self.inner.routes.load_full();
        if routes.closed {
            return Err(Error::Shutdown);
        }
        let publication = Prepared {
            route: routes.topics.get(&topic).filter(|_| routed),
            topic,
            payload,
            delivery: Delivery::Reliable,
            headers,
        };
        let now = match publication.route {
            Some(route) => self.publish_routed(&routes, route, publication),
            // The driver cannot route it (its table is full): it publishes it itself.
            None => self.publish_by_driver(publication),
        };
        finish(now).await
    }

    /// A publication on a topic the snapshot routes: queued on each of the topic's connections
    /// and offered to this node's streams that want it. A full queue or stream does not hold up
    /// the others: its wait is part of the future returned.
    fn publish_routed(
        &self,
        routes: &Routes,
        route: &TopicRoute,
        publication: Prepared<'_>,
    ) -> Result<Option<Rest<'_>>, Error> {
        let local = self.local_streams(route, &publication.topic);
        let Some(message) = self.stamp(publication, routes.hop_limit) else {
            return Ok(None);
        };
        let local = local.map(|streams| (streams, message.clone()));
        let mut sends = Vec::new();
        match route.conns.as_slice() {
            [] => {}
            // One peer: its writer encodes the message straight into its buffer.
            [connection] => match connection.send_message_now(message) {
                Ok(wait) => sends.extend(wait),
                Err(chaski_transport::SendError::Encode(_)) => return Err(self.too_large()),
                // A closed connection is the driver's business.
                Err(_) => {}
            },
            // Several: encode once, queue the same bytes on each.
            connections => {
                let frame = EncodedFrame::from_message(&message, self.inner.max_frame_len)
                    .map_err(|_| self.too_large())?;
                for connection in connections {
                    // A closed connection is the driver's business; the others still get it.
                    if let Ok(wait) = connection.send_encoded_now(frame.clone()) {
                        sends.extend(wait);
                    }
                }
            }
        }
        let mut full = Vec::new();
        if let Some((streams, message)) = local {
            let received = self.received(message);
            for stream in streams.iter().filter(|s| s.wants(&received.topic)) {
                if let Offer::Full(message) = stream.offer(received.clone()) {
                    full.push((Arc::clone(stream), message));
                }
            }
        }
        if sends.is_empty() && full.is_empty() {
            return Ok(None);
        }
        Ok(Some(Box::pin(async move {
            for send in sends {
                // Only a close can fail it now; that is the driver's business.
                let _ = send.await;
            }
            for (stream, message) in full {
                stream.wait_for_room(message).await;
            }
            Ok(())
        })))
    }

    /// One of this node's own publications as its streams see it (and counted as received).
    fn received(&self, message: Message) -> crate::Received {
        Counters::add(&self.inner.counters.received, 1);
        crate::Received::new(message, Some(self.inner.name.clone()), Delivery::Reliable)
    }

    /// Counts a publication nobody wants, and reports the count at most once a second.
    fn unrouted(&self, topic: &Topic) {
        Counters::add(&self.inner.counters.published_unrouted, 1);
        let (last, count) = &self.inner.unrouted;
        let pending = count.fetch_add(1, Ordering::Relaxed) + 1;
        // `last` holds the time of the last report plus one microsecond; 0 means never.
        let now = self.inner.started.elapsed().as_micros() as u64 + 1;
        let previous = last.load(Ordering::Relaxed);
        let due = previous == 0 || now.saturating_sub(previous) >= 1_000_000;
        if due
            && last
                .compare_exchange(previous, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            count.fetch_sub(pending, Ordering::Relaxed);
            let _ = self.inner.events.send(crate::NodeEvent::NoSubscribers {
                topic: topic.clone(),
                count: pending,
            });
        }
    }

    /// Publishes without waiting: fails with [`Error::Full`] when a send queue (or a `Block`
    /// stream of this node that wants the topic) is full, or the node's command queue is.
    pub fn try_publish(
        &self,
        topic: impl IntoTopic,
        payload: impl Into<Bytes>,
    ) -> Result<(), Error> {
        self.try_publish_with(topic, payload, PublishOptions::default())
    }

    /// [`try_publish`](Node::try_publish) with options.
    pub fn try_publish_with(
        &self,
        topic: impl IntoTopic,
        payload: impl Into<Bytes>,
        options: PublishOptions,
    ) -> Result<(), Error> {
        let routes = self.inner.routes.load();
        let publication = self.prepare(&routes, topic, payload, options)?;
        let Some(route) = publication.route else {
            // Best-effort, or a topic not routed yet: through the driver.
            let command = self.driver_publish(publication);
            return self.inner.commands.try_send(command).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Error::Full,
                mpsc::error::TrySendError::Closed(_) => Error::Shutdown,
            });
        };
        let local = self.local_streams(route, &publication.topic);
        let full = route
            .conns
            .iter()
            .any(|c| c.queued() >= self.inner.send_queue)
            || local.as_ref().is_some_and(|streams| {
                streams
                    .iter()
                    .any(|s| s.wants(&publication.topic) && !s.has_room())
            });
        if full {
            return Err(Error::Full);
        }
        let Some(message) = self.stamp(publication, routes.hop_limit) else {
            return Ok(());
        };
        if !route.conns.is_empty() {
            let frame = EncodedFrame::from_message(&message, self.inner.max_frame_len)
                .map_err(|_| self.too_large())?;
            for connection in &route.conns {
                if let Err(chaski_transport::SendError::Full) =
                    connection.try_send_encoded(frame.clone())
                {
                    // Another publisher filled the queue since the check above.
                    Counters::add(&self.inner.counters.send_dropped, 1);
                }
            }
        }
        if let Some(streams) = local {
            let received = self.received(message);
            for stream in streams.iter().filter(|s| s.wants(&received.topic)) {
                let _ = stream.offer(received.clone());
            }
        }
        Ok(())
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .send(make(tx))
            .await
            .map_err(|_| Error::Shutdown)?;
        rx.await.map_err(|_| Error::Shutdown)
    }

    /// Waits until every message published through this node before the call has been handed to
    /// the connections' send queues (not necessarily received yet).
    pub async fn flush(&self) -> Result<(), Error> {
        self.request(|reply| Command::Flush { reply }).await
    }

    /// Subscribes to `topic` at run time: peers are told at once, and the node searches for the
    /// topic's subscribers and pairs with them. Returns `false` if already subscribed.
    pub async fn subscribe(&self, topic: impl IntoTopic) -> Result<bool, Error> {
        let topic = topic.into_topic()?;
        self.request(|reply| Command::Subscribe { topic, reply })
            .await
    }

    /// Unsubscribes from `topic`: peers are told at once and stop sending it. Returns `false` if
    /// not subscribed.
    pub async fn unsubscribe(&self, topic: impl IntoTopic) -> Result<bool, Error> {
        let topic = topic.into_topic()?;
        self.request(|reply| Command::Unsubscribe { topic, reply })
            .await
    }

    /// Connects to the node at `addr` (`host:port`) and returns its id once the handshake is done.
    /// The connection is kept as long as membership wants it (shared topics, relay).
    pub async fn connect(&self, addr: &str) -> Result<NodeId, Error> {
        let addr = crate::config::resolve(addr).await?;
        self.request(|reply| Command::Connect { addr, reply })
            .await?
    }

    /// Measures the round trip to a connected peer with an empty ping.
    pub async fn ping(&self, peer: NodeId) -> Result<Duration, Error> {
        self.ping_with_size(peer, 0).await
    }

    /// Measures the round trip to a connected peer with `size` bytes of padding each way (the
    /// original's `ping(size=...)`, to see bandwidth as well as latency). Fails with
    /// [`Error::Timeout`] after the peer timeout.
    pub async fn ping_with_size(&self, peer: NodeId, size: u32) -> Result<Duration, Error> {
        let timeout = self.inner.peer_timeout;
        let answer = self.request(|reply| Command::Ping { peer, size, reply });
        match tokio::time::timeout(timeout, answer).await {
            Ok(result) => result?,
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }

    /// The connected peers: id, name, addresses, subscriptions, round-trip statistics, paired
    /// topics. A snapshot, refreshed by the driver whenever something changes.
    pub fn peers(&self) -> Vec<Peer> {
        self.inner.peers.borrow().as_ref().clone()
    }

    /// Waits for the next change of the peer table after this call, and returns the new table.
    ///
    /// To wait for a condition, use [`wait_peers`](Node::wait_peers): a change between a look at
    /// [`peers`](Node::peers) and this call would be missed. To follow every change, use
    /// [`watch_peers`](Node::watch_peers).
    pub async fn peers_changed(&self) -> Result<Vec<Peer>, Error> {
        self.watch_peers().changed().await
    }

    /// A watch on the peer table that sees every change after it was made, none twice.
    pub fn watch_peers(&self) -> PeerWatch {
        let mut peers = self.inner.peers.clone();
        peers.borrow_and_update();
        PeerWatch { peers }
    }

    /// Waits until `done` holds for the peer table, and returns that table. Checks the table as
    /// it is first, then after each change; fails with [`Error::Shutdown`] if the node stops
    /// first. Bound it with a timeout where the condition may never hold.
    ///
    /// ```no_run
    /// # async fn demo(node: chaski_streamer::Node) -> Result<(), chaski_streamer::Error> {
    /// // Wait until some peer is paired with this node on "temperature".
    /// node.wait_peers(|peers| {
    ///     peers.iter().any(|p| p.paired_topics.iter().any(|t| t == "temperature"))
    /// })
    /// .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait_peers(
        &self,
        mut done: impl FnMut(&[Peer]) -> bool,
    ) -> Result<Vec<Peer>, Error> {
        let mut watch = self.watch_peers();
        let mut peers = watch.current();
        while !done(&peers) {
            peers = watch.changed().await?;
        }
        Ok(peers)
    }

    /// A stream of the node's events (peers up and down, pairing, latency, drops).
    ///
    /// The peer table ([`peers`](Node::peers)) shows a peer going up or down, or a pairing
    /// change, before the event reports it: take the stream first, then read the table, and no
    /// change goes unseen.
    pub fn events(&self) -> EventStream {
        EventStream::new(self.inner.events.subscribe())
    }

    /// A new stream of every message the node receives on its subscriptions, with the node's
    /// default capacity and overflow policy. Streams are independent: each sees every message.
    pub fn stream(&self) -> MessageStream {
        self.inner.streams.open(self.inner.stream_defaults.clone())
    }

    /// A new stream with its own topic filter, capacity and overflow policy.
    pub fn stream_with(&self, options: StreamOptions) -> MessageStream {
        self.inner.streams.open(options)
    }

    /// The node's counters.
    pub fn stats(&self) -> NodeStats {
        let mut stats = self.inner.counters.snapshot();
        let transport = self.inner.transport_stats.stats();
        stats.handshake_failures = transport.handshake_failures.total();
        stats.datagrams_dropped = transport.datagrams.dropped.total()
            + self
                .inner
                .lan_socket
                .as_ref()
                .map_or(0, |lan| lan.dropped_total());
        stats
    }

    /// The transport's counters: connections, handshake failures by cause (a wrong network
    /// key, an unknown CA, ...), traffic, and the node's UDP socket (datagrams dropped by
    /// cause).
    pub fn transport_stats(&self) -> chaski_transport::EndpointStats {
        self.inner.transport_stats.stats()
    }

    /// The LAN discovery socket's counters (beacons received, dropped by cause: `untagged`
    /// ones from outside a closed network, say), if LAN discovery is on.
    pub fn lan_stats(&self) -> Option<chaski_transport::DatagramStats> {
        self.inner.lan_socket.as_ref().map(|lan| lan.stats())
    }

    /// Shuts the node down: a goodbye to every peer (who will not try to reconnect), everything
    /// queued flushed, connections closed, streams ended. Idempotent; other handles see
    /// [`Error::Shutdown`] afterwards.
    pub async fn shutdown(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        // If the driver is already gone, the node is already shut down.
        if self
            .inner
            .commands
            .send(Command::Shutdown { reply: tx })
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
        self.stopped().await;
        Ok(())
    }

    /// Waits until the node has stopped (after [`Node::shutdown`] from any handle).
    pub async fn stopped(&self) {
        let mut stopped = self.inner.stopped.clone();
        let _ = stopped.wait_for(|s| *s).await;
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.id)
            .field("name", &self.inner.name)
            .field("local_addr", &self.inner.local_addr)
            .finish()
    }
}
