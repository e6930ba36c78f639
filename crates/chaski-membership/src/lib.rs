//! Chaski membership: discovery, pairing, routing, ping and keep-alive as a state machine with no
//! I/O and no clock.
//!
//! [`Membership`] is the brain of a Chaski node. It owns no socket, spawns no task, never reads
//! the clock and draws its randomness from a seeded generator. The driver (one tokio task in
//! `chaski-streamer`, or the simulator in `chaski-testkit`) feeds it what happened and executes
//! what it asks for:
//!
//! ```
//! use std::net::SocketAddr;
//! use chaski_membership::{Action, Config, Instant, Membership};
//! use chaski_wire::{NodeId, Topic};
//!
//! let seed: SocketAddr = "127.0.0.1:7447".parse()?;
//! let config = Config::builder(NodeId::from_u128(1))
//!     .listen_addr("127.0.0.1:7448".parse()?)
//!     .seed(seed)
//!     .subscribe(Topic::new("sensors/temp")?)
//!     .build()?;
//! let now = Instant::ZERO; // the driver maps its monotonic clock onto `Instant`
//! let mut node = Membership::new(config, now);
//! node.handle_timeout(now); // starts discovery
//! let mut dialed = Vec::new();
//! while let Some(action) = node.poll_action() {
//!     match action {
//!         Action::Dial { addr, .. } => dialed.push(addr), // connect, send node.local_hello(), ...
//!         Action::Send { .. } | Action::Close { .. } | Action::SendDatagram { .. } => {}
//!         Action::Event(event) => println!("{event:?}"),
//!         _ => {}
//!     }
//! }
//! assert_eq!(dialed, [seed]);
//! let _wake_at = node.poll_timeout(); // call handle_timeout then
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The exact call order is documented on [`Membership`]. Connections are named by an opaque
//! [`ConnId`] the driver chooses, peers by their [`NodeId`](chaski_wire::NodeId), time by
//! [`Instant`] (a duration since an epoch the driver picks).
//!
//! # What it does
//!
//! * **Identity and interest.** Node id, name, listening addresses, subscribed topics;
//!   [`Membership::subscribe`] and [`Membership::unsubscribe`] at run time send a
//!   `SubscriptionUpdate` to every connected peer at once. Whether a subscription wants a topic
//!   and whether two nodes share interest is decided only in [`interest`], so that wildcards can
//!   be added there later.
//! * **Discovery**, four routes that feed one known-peer table: LAN beacons
//!   ([`Action::SendDatagram`] to [`DatagramTarget::Lan`]; 50 ms after start, doubling up to
//!   every 5 s; a beacon from an unknown node, or one whose subscription digest changed, is
//!   dialed at once, so a new node is found within one round trip of its first beacon); seeds
//!   (dialed at start and re-dialed with backoff while no peer is connected; kept connected);
//!   peer exchange (on connection, every 10 s, and 100 ms after this node learns a subscriber
//!   that is near a connected peer in a topic ring); and subscription searches (flooded through
//!   every connection with a hop limit and a visited list while a topic has no known
//!   subscriber, with backoff from 500 ms to 30 s; **every** subscriber answers, and every node
//!   forwards, full or not).
//! * **Pairing** per topic: up to `max_connections` (default 5) direct links to subscribers of
//!   the same topic; see "Why every topic ends as one connected graph" below. A node that dialed
//!   a connection that no longer carries a link closes it after `idle_grace` (the original's
//!   `on_pair='disconnect'`, on by default). A relay ([`ConfigBuilder::relay`]) accepts every
//!   connection and every topic, tells each node about the subscribers of its topics, and
//!   forwards messages of nodes that have nobody else to send to.
//! * **Routing**: [`Membership::publish`] lists the connections that push the node's own
//!   messages of a topic eagerly (filtering at the sender) and [`Membership::published`] caches
//!   and announces each of them; [`Membership::route`] applies the duplicate filter (per stream:
//!   the highest sequence and an 8,192-wide window, as IPsec's anti-replay) and the hop limit,
//!   says where to forward, and puts the message in its stream's order (held messages come out
//!   as [`Action::Deliver`], gaps given up as [`Event::Missed`]). Both return borrowed slices.
//!   See "How a message reaches every subscriber" below.
//! * **Ping and latency**: a ping per peer every `ping_interval` (1 s); each pong is a sample
//!   folded into [`RttStats`] as RFC 6298 does (smoothed RTT, RTT variation, minimum) and
//!   reported as [`Event::LatencyUpdated`]. [`Membership::ping`] sends an on-demand ping with a
//!   padding size and reports [`Event::PingResult`].
//! * **Keep-alive**: any frame is a sign of life; a peer silent for `peer_timeout` (3 s) is
//!   declared down at exactly that instant ([`DownReason::Timeout`]). A goodbye is not a
//!   failure.
//! * **Reconnection**: a lost peer that is still wanted (a link, a seed, a relay, a manual
//!   connect, or a ring neighbour) is re-dialed after 100 ms, doubling up to 5 s, each delay
//!   shortened by a random jitter of up to 20 %, for up to 32 attempts
//!   ([`Event::ReconnectGaveUp`] then). On reconnection the hello carries the subscriptions and
//!   the pairing logic restores the links by itself.
//! * **Events**: the stable [`Event`] enum.
//! * **Answers**: `Ping` gets a `Pong`, `StatusRequest` gets a `StatusResponse`
//!   ([`Membership::status`]); [`Membership::peers`] is the peer table snapshot.
//!
//! # Why every topic ends as one connected graph
//!
//! A random or latency-greedy choice of neighbours under a degree cap can split a topic into
//! islands; that is how the Python original failed with 20 nodes. Here each topic has a
//! deterministic backbone:
//!
//! 1. *The ring.* Each node sorts the live subscribers it knows of topic `T` (itself included)
//!    by node id, in a ring, and wants links to its `ring_neighbours` (`k`, default 2) nearest
//!    on each side. When the subscribers fit (`n - 1 <= max_connections`), it wants all of them
//!    (a full mesh). If all subscribers know the same set, these wants are *symmetric* (`Y` is
//!    `X`'s `i`-th successor exactly when `X` is `Y`'s `i`-th predecessor) and the links contain
//!    the cycle through all subscribers: one connected graph.
//! 2. *Wanted links are always established.* A node asks for a wanted link (dialing first if
//!    needed) and a peer always accepts a link it wants too, evicting if necessary its slowest
//!    link that is not on its ring; `2k <= max_connections` (checked by
//!    [`ConfigBuilder::build`]) leaves room. Any other link (an *extra*: connected subscribers,
//!    lowest RTT first) is accepted only below the cap, and is the only kind ever evicted or
//!    pruned, so extras never cut the ring and the cap always holds.
//! 3. *Everyone learns its true ring neighbours.* Through a relay this takes one exchange: the
//!    relay knows every subscriber (from the hellos), sends each new node the subscribers
//!    nearest to it in each of its rings, and tells the ring neighbours of a newcomer about it.
//!    Without a relay, searches find subscribers through the connection graph, and every node
//!    tells each connected peer about the subscribers nearest to *that peer* (plus the smallest
//!    and largest ids, which closes the ring) whenever it learns a new one, for every topic the
//!    peer wants, whether or not the node itself subscribes (so nodes in between, such as seeds,
//!    introduce subscribers to each other). Two groups of subscribers that know nobody in
//!    common are merged by the *component search*: in each group, the node with the smallest id
//!    it knows of searches from time to time (backoff up to `component_search_max`, 5 min),
//!    every subscriber within the hop limit answers, and the groups learn of each other. This is the
//!    linearization of self-stabilizing overlays: a node that knows someone nearer to a peer
//!    than the peer's current neighbours tells it; knowledge only grows (for live nodes) and is
//!    finite, so it stops, and at that point no node knows anyone nearer to a neighbour than
//!    that neighbour's own choice, which (with the extremes exchanged) means each node has its
//!    true ring neighbours.
//! 4. *Failures.* A lost peer is not a ring candidate while it is re-dialed, so its neighbours
//!    link around it, and the ring re-forms over the live nodes. A node only advertises peers it
//!    has heard from first-hand within [`FRESHNESS`] (connected, or its own search or search
//!    reply), so rumours of a dead peer die out; a peer re-dialed in vain for minutes is buried
//!    for [`TOMBSTONE_TTL`] (until first-hand news of it); a peer that was never reached is
//!    forgotten after [`UNVERIFIED_ATTEMPTS`] dials. After a partition heals,
//!    re-dials of the lost neighbours reconnect the two sides and the rings merge.
//!
//! The simulator tests and property tests check this by breadth-first search over the links
//! that both ends agree on, for every topic, after random join orders, crashes, restarts and
//! partitions. Links are re-asserted (`PairRequest` for the topics already paired) after a
//! duplicate connection replaced another and with every periodic exchange, so that a link lost
//! in flight cannot stay one-sided. The diameter of a topic graph is at most about
//! `n / (2k)`; `message_hop_limit` (default 64) must exceed it.
//!
//! # How a message reaches every subscriber
//!
//! Broadcast is Plumtree (Leitão, Pereira and Rodrigues, *Epidemic Broadcast Trees*, SRDS 2007)
//! over the links pairing builds, with **one tree per stream** (publisher, incarnation and
//! topic), so that two publishers on a topic never prune each other's paths.
//!
//! * *Eager and lazy push.* Every link of a topic starts eager: a node forwards a new message to
//!   every eager link but the one it came on. A duplicate shows a cycle: the receiver marks the
//!   link it came on lazy for that stream and sends `Prune`; the peer does the same. A
//!   duplicate from the publisher itself prunes the link the first copy came from instead: a node
//!   linked to the publisher takes its copies directly. So does a relay's copy that comes ahead
//!   of the order while the publisher's own connection is delivering the stream (it is not held
//!   back, the relay's link is pruned, the publisher's copy is taken when it comes), and a copy
//!   refused as implausibly far ahead. Lazy links carry `Have` announcements, batched every
//!   `announce_interval` (25 ms): per stream, the first and last sequence new since the last
//!   one.
//! * *Repair.* A node learns that messages exist from later messages, from announcements, from
//!   the heads a new connection is told at once, and from a summary sent on every link once per
//!   `summary_interval` (1 s) for the streams that went quiet within `cache_age` (so the loss of a
//!   stream's last messages is seen). What it misses it asks for with `Want` after
//!   `repair_delay` (50 ms, time for a copy on another path): first from the peer that last
//!   showed it has them, then, every `repair_retry` (250 ms), from every link of the topic and the
//!   publisher at once. The peer answers from its cache and from then on pushes that stream
//!   eagerly on that link (a graft); a stream's tree is directed, from its publisher out, so the
//!   asker does not push the stream back up that link. The asker forwards what it receives like
//!   any new message, so the part of the tree behind it is repaired too. A node does not ask
//!   while the gap fills (each message that moves the order on postpones the request), nor while
//!   the publisher's own connection delivers the stream and has skipped nothing: that
//!   connection is reliable and in order, so such a gap is a queue on the way, not a loss, and
//!   asking would only add copies to the load that makes it lag.
//! * *Order.* A subscriber hands out each stream in sequence order: a message ahead of a gap is
//!   held until the gap is filled, or until `gap_timeout` (1 s, timed afresh while the gap makes
//!   progress) passes, when the gap is reported [`Event::Missed`] with its exact range and the
//!   stream moves on. A stream starts where this node first hears of it; first heard of by a
//!   message (or an announcement) that is not its first, the order settles first (messages
//!   held, unordered consumers served at once), so that earlier messages still on their way by
//!   another path are not left behind. It starts at the lowest sequence shown meanwhile, by a
//!   message or an announcement, once every link of the topic that was there when the stream
//!   was first heard of has shown it (a message, an announcement or a prune of it: each link is
//!   in order, so what it shows first is the lowest it brings) and `repair_delay` passed; at the
//!   latest after `gap_timeout`, or at once when the hold-back buffer is full. A late joiner
//!   thus gets no history, and a node that linked to a joining publisher after its first
//!   message gets that message from the relay that had it, however slow the relay.
//!
//! **Why the eager links end as a tree.** A duplicate arrives only over a cycle of eager links,
//! and each duplicate turns one link of that cycle lazy; no message ever makes a lazy link eager
//! except a `Want`, which happens only when the eager links failed to deliver. So while the
//! links stay up the eager links of a stream lose cycles until none is left: a spanning forest
//! whose links carried first copies, so its paths are the quickest ones the messages found. Each
//! node keeps at least the link its first copies come on.
//!
//! **Why every message arrives (or is reported).** Let a subscriber stay connected to the
//! topic's graph (one connected graph, see below) and a message sit in the cache of at least one
//! node of it. Every node that has the message announces it on its lazy links (and on every link
//! when it could not forward it); a node that lacks it therefore hears of it from some
//! neighbour, or learns of it from a later message or from a summary within `summary_interval`.
//! It then asks, first one peer and then all its links, every `repair_retry`, and any node that
//! has it answers; by induction along a path from a holder, the message reaches the subscriber
//! within about `(repair_delay + repair_retry + RTT)` per hop. A gap that cannot be filled within
//! `gap_timeout` (the message is in no reachable cache: evicted, or the holders are cut off) is
//! reported with its exact range, so nothing is lost silently. `tests/sim_delivery.rs` checks
//! both halves under loss, partitions and crashes, over random seeds, and the namespace tests do
//! across real processes (a 4 s pulled cable and a 5 s frozen process at 300 msg/s: nothing
//! missed, order kept; with a 150-message cache the ranges reported are exactly what did not
//! arrive).
//!
//! **Believed within reason.** Announcements are checked as messages are: a second-hand `Have`
//! moves a stream ahead by at most [`DEDUP_MAX_AHEAD`] at a time, so one forged number cannot
//! make a node give up the publisher's real messages; a message that arrives after its range
//! was reported missed is still handed out (late), once, never silently dropped: to ordered
//! consumers if nothing after it was handed out yet (order is kept), else to unordered ones
//! only. Below the duplicate filter's window, the order itself tells a copy handed out already
//! (say, an answer to a repair request that came very late) from a late one; and a message the
//! order still waits for (at or after the next sequence, not held, sent first-hand or at most
//! the latest announced) is taken even where the filter's window has moved past it or not yet
//! followed a jump to it: a path that lags the others by more than the window loses nothing.
//!
//! `cargo xtask bench membership` measures flooding and the trees in the same run: at 100 and
//! 1,000 nodes on random topics, the relative message redundancy at steady state falls from
//! 3.25 and 2.79 to 0.00, with the same last delivery hop (8.2 and 8.6) and no delivery missed.
//!
//! # Bounds
//!
//! | Table | Limit (default) | When full |
//! |---|---|---|
//! | connections | `max_peers` (256) | inbound refused with `Overloaded` ([`Event::Dropped`]); a dial this node wants closes the oldest idle inbound connection (no link, wanted by no topic, not kept) to make room, else is not started |
//! | known peers | `max_known_peers` (4,096) | evict the least recently seen entry that is neither connected nor being re-dialed; if none, the new one is not added (counted either way) |
//! | dead peers (tombstones) | `max_known_peers` | oldest forgotten |
//! | duplicate filter | `dedup_streams` (4,096) streams (publisher and topic) x 8,192 sequences (1 KiB each, 2 KiB after a jump only time confirmed) | evict the stream heard from least recently (counted) |
//! | searches remembered | `max_pending_searches` (1,024) | forget the oldest (counted) |
//! | on-demand pings | `max_pending_pings` (64) | drop the oldest (counted) |
//! | links per topic | `max_connections` (5) | refuse extras; evict the slowest extra for a ring link |
//! | peer exchange frame | `max_exchange_peers` (128) peers, `exchange_per_topic` (8) per topic | truncated |
//! | pings in flight per connection | 16 | the oldest forgotten (its pong is then ignored) |
//! | dials to learned addresses | [`LEARNED_DIAL_RATE`] (20/s), bursts of [`LEARNED_DIAL_BURST`] (64) | put off to a later pairing round (counted) |
//! | peer exchange bytes | what fits a 1 MiB control frame, less 64 KiB | cut (counted in `exchanges_cut`) |
//! | unconfirmed sequence jumps | 4 per stream, one per peer | the oldest claim replaced |
//! | action queue | what one call produced | the driver drains it after every call |
//! | message cache | `cache_messages` (65,536), `cache_bytes` (64 MiB: payloads and headers plus 128 bytes each; payloads up to 64 B kept inside their entry, others up to 4 KiB copied: never pinning a receive buffer), `cache_age` (30 s) | the oldest message goes (counted; of the stream whose entry is oldest) |
//! | held-back messages | `hold_messages` (16,384), `hold_bytes` (32 MiB), all streams | the oldest gap is reported missed at once (counted) |
//! | broadcast streams | [`MAX_STREAMS`] (16,384) | the one active least recently that holds nothing back is forgotten (counted, [`DropKind::Stream`]) |
//! | lazy links | links x streams (within the two above) | forgotten with the connection |
//! | repair candidates | 4 per stream | the oldest replaced |
//! | answers to one peer's `Want`s | [`MAX_SERVED`] messages per request, [`MAX_SERVED_BYTES`] per second | answered in part (counted); the asker asks again |
//!
//! # What a peer may send
//!
//! Every list and number a remote controls is checked on receipt, before any work proportional
//! to it ([`limits`] has the table: peers per frame, addresses per peer, topics per peer and per
//! frame (`max_peer_topics`, 1,024), streams per `Have` and `Prune` (1,024) and ranges per `Want`
//! (256), visited ids per search, hop limits clamped to ours, the
//! publisher and sequence of a message, pong padding). A frame that breaks a limit closes that
//! connection with `Goodbye(ProtocolError)`, is counted by kind ([`Counters::violations`]) and
//! reported ([`Event::ProtocolViolation`]); the machine goes on serving everyone else. Pongs
//! count only as answers to our own pings, timed by our clock. Addresses learned from the
//! network are dialed only if a peer can be there (unicast, not unspecified; loopback only when
//! this node listens on loopback), beacons at their source address, at a bounded rate, and with
//! [`Action::Dial`]'s `confirm` set: the driver says nothing there until the peer's hello names
//! the node expected ([`DialError::WrongPeer`] otherwise). A second-hand message far ahead of its
//! stream's sequence is believed only once confirmed ([`dedup`]). Status requests are answered
//! only to loopback unless `status_from_anywhere` is set.
//!
//! # Control traffic at steady state
//!
//! Per connected peer and direction: one `Ping` and one `Pong` per `ping_interval` (1 s); one
//! `PeerExchange` (at most `max_exchange_peers` entries) and, if the connection carries links,
//! one `PairRequest`/`PairResponse` pair per `exchange_interval` (10 s). Per node: one beacon per
//! `beacon_interval` (5 s) when LAN discovery is on. Searches run while a topic has no known
//! subscriber (at most one flood per topic per `search_max`, 30 s) and, without a connected
//! relay, from one node per group of subscribers (at most one flood per topic per
//! `component_search_max`, 5 min). While messages flow: per lazy link, at most one `Have` per
//! `announce_interval` (25 ms); per link, one summary `Have` per `summary_interval` (1 s) for 30 s
//! after a stream goes quiet; a `Prune` per redundant link and stream, once. A refused extra link is
//! asked again at most every [`EXTRA_RETRY`] (30 s). Nothing else is sent while the network is
//! quiet.

mod config;
pub mod dedup;
mod event;
pub mod interest;
mod key;
pub mod limits;
mod machine;
mod rng;
mod rtt;
mod time;

pub use crate::{
    config::{Broadcast, Config, ConfigBuilder, ConfigError},
    dedup::{MAX_AHEAD as DEDUP_MAX_AHEAD, WINDOW as DEDUP_WINDOW},
    event::{
        Action, ConnId, Counters, DatagramTarget, DialError, Disconnect, DiscoverySource,
        DownReason, DropKind, Event, LostCause, PeerSnapshot, PingId, Publication, Route,
    },
    limits::{Violation, Violations},
    machine::{
        EXTRA_RETRY, FRESHNESS, LEARNED_DIAL_BURST, LEARNED_DIAL_RATE, MAX_SERVED,
        MAX_SERVED_BYTES, MAX_STREAMS, Membership, PingError, TOMBSTONE_TTL, UNVERIFIED_ATTEMPTS,
    },
    rtt::RttStats,
    time::Instant,
};
