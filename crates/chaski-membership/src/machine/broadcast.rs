//! Broadcast on a topic's links: Plumtree's eager and lazy push, the message cache, gap repair
//! and ordered delivery (see "How a message reaches every subscriber" in the crate docs).

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    hash::Hash,
};

use bytes::{Bytes, BytesMut};
use chaski_wire::{
    Frame, Have, Message, NodeId, Prune, StreamHead, StreamId, StreamRange, Topic, Want,
};
use hashbrown::Equivalent;

use super::{Membership, Timer};
use crate::{
    Action, ConnId, DropKind, Event, Instant,
    config::Broadcast,
    key::StreamRef,
    limits::{MAX_HEADS_PER_FRAME, MAX_RANGES_PER_FRAME},
};

/// Looked up by borrowed keys ([`StreamRef`]) on the hot path.
type FastMap<K, V> = hashbrown::HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// Streams (publisher, incarnation and topic) tracked for the cache, announcements and ordered
/// delivery. When full, the stream active least recently that holds nothing back is forgotten
/// (counted in `streams_forgotten`, reported as [`DropKind::Stream`]).
pub const MAX_STREAMS: usize = 16_384;
/// Messages sent back for one `Want` at most; the asker asks again for the rest.
pub const MAX_SERVED: usize = 16_384;
/// Bytes of cached messages sent to one peer per second at most, in answer to its `Want`s.
pub const MAX_SERVED_BYTES: usize = 16 << 20;
/// Payloads shorter than this are copied into the cache rather than kept as slices of the
/// receive buffer, so that a small cached message never keeps a large buffer alive.
const COPY_BELOW: usize = 4096;
/// The copies are cut from chunks of this size (one allocation per chunk, not per message).
/// The cache evicts in insertion order, so a chunk is freed soon after its last message goes:
/// at most about one chunk beyond what the cache charges.
const ARENA_CHUNK: usize = 64 << 10;
/// Peers remembered per stream as having its missing messages.
const MAX_CANDIDATES: usize = 4;
/// Missed ranges remembered per stream, for messages that come late after all.
const MISSED_KEPT: usize = 16;
/// Bytes a cached or held message is charged beyond its payload and headers.
const OVERHEAD: usize = 128;

/// Payloads up to this size are kept inside their cache entry: no allocation, no reference
/// count to take and release (a message of the common small sizes costs one copy).
const INLINE: usize = 64;

/// A cached payload: inline when small, else its own bytes (cut from the arena, or shared when
/// large: see [`Arena::own`]).
#[derive(Debug)]
enum Payload {
    Inline { len: u8, bytes: [u8; INLINE] },
    Bytes(Bytes),
}

impl Payload {
    fn new(b: &Bytes, arena: &mut Arena) -> Payload {
        if b.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..b.len()].copy_from_slice(b);
            Payload::Inline {
                len: b.len() as u8,
                bytes,
            }
        } else {
            Payload::Bytes(arena.own(b))
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Payload::Bytes(b) => b,
        }
    }

    /// The payload as a message carries it (a copy of an inline one: served copies are few).
    fn to_bytes(&self) -> Bytes {
        match self {
            Payload::Inline { .. } => Bytes::copy_from_slice(self.as_slice()),
            Payload::Bytes(b) => b.clone(),
        }
    }
}

/// One cached message, without what its stream names (topic, publisher, incarnation): the
/// stream has them once for all its messages.
#[derive(Debug)]
struct Cached {
    sequence: u64,
    payload: Payload,
    timestamp_micros: u64,
    hop_limit: u32,
    hops: u32,
    headers: Box<[chaski_wire::Header]>,
}

impl Cached {
    /// The message again, as `stream` published it.
    fn message(&self, stream: &StreamId) -> Message {
        Message {
            topic: stream.topic.clone(),
            payload: self.payload.to_bytes(),
            publisher: stream.publisher,
            sequence: self.sequence,
            incarnation: stream.incarnation,
            timestamp_micros: self.timestamp_micros,
            hop_limit: self.hop_limit,
            hops: self.hops,
            headers: self.headers.to_vec(),
        }
    }

    /// Bytes charged for keeping it (as [`charge`] for the message).
    fn charge(&self) -> usize {
        charge_parts(self.payload.as_slice(), &self.headers)
    }
}

/// One stream's cached messages, in sequence order. Messages come mostly in order and leave
/// oldest first: a deque (appended and popped at its ends, searched by bisection) moves no
/// message, where a B-tree shifts a node's worth of them at every eviction.
#[derive(Debug, Default)]
struct Cache(VecDeque<Cached>);

impl Cache {
    fn position(&self, seq: u64) -> Result<usize, usize> {
        self.0.binary_search_by_key(&seq, |m| m.sequence)
    }

    fn contains(&self, seq: u64) -> bool {
        match self.0.back() {
            Some(last) if last.sequence < seq => false,
            None => false,
            _ => self.position(seq).is_ok(),
        }
    }

    /// Inserts `m` (not already present) in order.
    fn insert(&mut self, m: Cached) {
        match self.0.back() {
            Some(last) if last.sequence >= m.sequence => {
                let at = self.position(m.sequence).unwrap_or_else(|at| at);
                self.0.insert(at, m);
            }
            _ => self.0.push_back(m),
        }
    }

    /// Takes out the oldest message (the lowest sequence).
    fn pop_oldest(&mut self) -> Option<Cached> {
        self.0.pop_front()
    }

    /// The messages of `first..=last`, in order.
    fn range(&self, first: u64, last: u64) -> impl Iterator<Item = &Cached> {
        let from = self.position(first).unwrap_or_else(|at| at);
        self.0.range(from..).take_while(move |m| m.sequence <= last)
    }

    fn values(&self) -> impl Iterator<Item = &Cached> {
        self.0.iter()
    }
}

/// A message held back until the gaps before it are filled (`None`: a best-effort message that
/// was delivered at once, kept only as a marker that its sequence is not missing).
#[derive(Debug)]
struct Held {
    message: Option<Message>,
    at: Instant,
    bytes: usize,
}

/// A stream's place in the table of slots: the cache's order names a stream by it, without a
/// copy of its id. A slot is reused once its stream is forgotten; `generation` tells the new
/// stream from the old.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    index: u32,
    generation: u32,
}

/// The stream table: each stream in a slot (by which the cache's order names it), found by id
/// through an index. The stream looked up last is found again without hashing: most messages
/// are of the same stream as the one before them. At most [`MAX_STREAMS`] streams; slots are
/// reused.
#[derive(Debug, Default)]
struct Streams {
    index: FastMap<StreamId, u32>,
    /// By index: the generation, and the stream that holds the slot now.
    slots: Vec<(u32, Option<(StreamId, Stream)>)>,
    free: Vec<u32>,
    /// The slot looked up last (perhaps free since).
    last: u32,
}

impl Streams {
    fn len(&self) -> usize {
        self.index.len()
    }

    fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn find<Q: Hash + Equivalent<StreamId> + ?Sized>(&self, key: &Q) -> Option<u32> {
        match self.slots.get(self.last as usize) {
            Some((_, Some((id, _)))) if key.equivalent(id) => Some(self.last),
            _ => self.index.get(key).copied(),
        }
    }

    fn contains_key<Q: Hash + Equivalent<StreamId> + ?Sized>(&self, key: &Q) -> bool {
        self.find(key).is_some()
    }

    fn get<Q: Hash + Equivalent<StreamId> + ?Sized>(&self, key: &Q) -> Option<&Stream> {
        let i = self.find(key)?;
        self.slots[i as usize].1.as_ref().map(|(_, s)| s)
    }

    fn get_mut<Q: Hash + Equivalent<StreamId> + ?Sized>(&mut self, key: &Q) -> Option<&mut Stream> {
        let i = self.find(key)?;
        self.last = i;
        self.slots[i as usize].1.as_mut().map(|(_, s)| s)
    }

    /// The stream in `slot`, unless it was forgotten since.
    fn by_slot_mut(&mut self, slot: Slot) -> Option<&mut Stream> {
        match self.slots.get_mut(slot.index as usize) {
            Some((generation, Some((_, s)))) if *generation == slot.generation => Some(s),
            _ => None,
        }
    }

    /// Adds the stream `key` (not in the table yet), made for its slot.
    fn insert(&mut self, key: StreamId, make: impl FnOnce(Slot) -> Stream) {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push((0, None));
                (self.slots.len() - 1) as u32
            }
        };
        let (generation, entry) = &mut self.slots[index as usize];
        let stream = make(Slot {
            index,
            generation: *generation,
        });
        *entry = Some((key.clone(), stream));
        self.index.insert(key, index);
        self.last = index;
    }

    fn remove<Q: Hash + Equivalent<StreamId> + ?Sized>(&mut self, key: &Q) -> Option<Stream> {
        let index = self.index.remove(key)?;
        let (generation, entry) = &mut self.slots[index as usize];
        *generation = generation.wrapping_add(1);
        self.free.push(index);
        entry.take().map(|(_, s)| s)
    }

    fn iter(&self) -> impl Iterator<Item = (&StreamId, &Stream)> {
        self.slots
            .iter()
            .filter_map(|(_, e)| e.as_ref().map(|(k, s)| (k, s)))
    }
}

#[derive(Debug)]
struct Stream {
    /// The stream's topic, detached from any receive buffer (shared by the cached copies).
    topic: Topic,
    /// Its slot, by which the cache's order names it.
    slot: Slot,
    /// Not announced yet since the last flush: the first sequence new since, and whether a
    /// message came that was not forwarded (then every link hears of it).
    dirty: Option<(u64, bool)>,
    /// The cached messages, by sequence.
    cached: Cache,
    /// The highest sequence known to exist (received, or announced by a peer).
    latest: u64,
    /// When `latest` last grew.
    active_at: Instant,
    /// Ordered delivery (subscribed topics): the next sequence to hand out; 0 before the first.
    next: u64,
    /// Where the order started on this node (its first message heard).
    start: u64,
    /// The highest sequence handed to ordered consumers.
    handed: u64,
    /// The latest ranges reported missed (at most [`MISSED_KEPT`]): a message of one that
    /// comes late after all is handed to unordered consumers, once.
    missed: Vec<(u64, u64)>,
    held: BTreeMap<u64, Held>,
    /// When the oldest open gap was noticed.
    gap_since: Option<Instant>,
    /// When to ask (again) for the missing messages.
    ask_at: Option<Instant>,
    asks: u32,
    /// Peers that have (or announced) messages this node misses, most recent first.
    candidates: Vec<ConnId>,
    /// The connection the latest new message of the stream came from.
    last_from: Option<ConnId>,
    /// Answers to this node's requests may still come until then: their duplicates prune
    /// nothing.
    repairing_until: Instant,
    /// When a message of the stream last came first-hand (from the publisher's connection).
    first_hand_at: Option<Instant>,
    /// The publisher's connection skipped part of the open gap (it will not fill it).
    direct_gap: bool,
    /// First heard of by a message (or an announcement) that was not its first: the order may
    /// still start lower, and its messages are held meanwhile.
    settling: Option<Settling>,
}

/// A stream's order settling before it starts (see [`Stream::settled`]).
#[derive(Debug)]
struct Settling {
    /// Not over before then (`repair_delay` after the stream was first heard of).
    earliest: Instant,
    /// Over then at the latest (`gap_timeout` after), whatever is still awaited.
    latest: Instant,
    /// The links of the topic that were there when the stream was first heard of and have not
    /// shown it since (a message, an announcement or a prune of it). Each sends in order, so
    /// what it shows first is the lowest it will bring: once every one has, nothing lower is on
    /// its way. At most one entry per connection.
    waiting: Vec<ConnId>,
}

impl Stream {
    fn new(now: Instant, topic: Topic, slot: Slot) -> Stream {
        Stream {
            topic,
            slot,
            dirty: None,
            cached: Cache::default(),
            latest: 0,
            active_at: now,
            next: 0,
            start: 0,
            handed: 0,
            missed: Vec::new(),
            held: BTreeMap::new(),
            gap_since: None,
            ask_at: None,
            asks: 0,
            candidates: Vec::new(),
            last_from: None,
            repairing_until: now,
            first_hand_at: None,
            direct_gap: false,
            settling: None,
        }
    }

    /// The first gap of the delivery order: `next..=end`, if any.
    fn head_gap(&self) -> Option<(u64, u64)> {
        if self.next == 0 || self.next > self.latest {
            return None;
        }
        match self.held.first_key_value() {
            Some((&first, _)) if first == self.next => None,
            Some((&first, _)) => Some((self.next, first - 1)),
            None => Some((self.next, self.latest)),
        }
    }

    /// Every missing range of the delivery order, at most `max`.
    fn missing(&self, max: usize) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        if self.next == 0 {
            return out;
        }
        let mut from = self.next;
        for &seq in self.held.keys() {
            if out.len() >= max {
                return out;
            }
            if seq > from {
                out.push((from, seq - 1));
            }
            from = seq.saturating_add(1);
        }
        if from <= self.latest && out.len() < max {
            out.push((from, self.latest));
        }
        out
    }

    /// Whether the order may start (it is not settling, or its settling is over).
    fn settled(&self, now: Instant) -> bool {
        self.settling
            .as_ref()
            .is_none_or(|s| now >= s.latest || (s.waiting.is_empty() && now >= s.earliest))
    }

    /// `conn` showed the stream: a settling order no longer waits for it.
    fn shown_by(&mut self, conn: ConnId) {
        if let Some(s) = &mut self.settling {
            s.waiting.retain(|&c| c != conn);
        }
    }

    /// Starts the order at `seq` if it has not started yet.
    fn begin(&mut self, seq: u64) {
        if self.next == 0 {
            // A stream starts where this node first hears of it.
            self.next = seq;
            self.start = seq;
        }
    }

    /// Whether `seq`, below the order, was reported missed and has not come late since; it is
    /// taken out of its range.
    fn take_missed(&mut self, seq: u64) -> bool {
        let Some(i) = self.missed.iter().position(|&(a, b)| a <= seq && seq <= b) else {
            return false;
        };
        let (a, b) = self.missed[i];
        match (seq == a, seq == b) {
            (true, true) => {
                self.missed.remove(i);
            }
            (true, false) => self.missed[i].0 = seq + 1,
            (false, true) => self.missed[i].1 = seq - 1,
            (false, false) => {
                self.missed[i].1 = seq - 1;
                self.missed.insert(i + 1, (seq + 1, b));
                self.trim_missed();
            }
        }
        true
    }

    /// Forgets the oldest missed ranges beyond [`MISSED_KEPT`].
    fn trim_missed(&mut self) {
        if self.missed.len() > MISSED_KEPT {
            self.missed.remove(0);
        }
    }

    fn add_candidate(&mut self, conn: ConnId) {
        if self.candidates.first() == Some(&conn) {
            return;
        }
        self.candidates.retain(|&c| c != conn);
        self.candidates.insert(0, conn);
        self.candidates.truncate(MAX_CANDIDATES);
    }
}

/// Per stream, a few of its connections (those in one mode): looked up by the stream alone, with
/// no key to build per connection on the forwarding path. Bounded: only streams of the stream
/// table get entries (see `on_prune`), each with at most one entry per connection.
#[derive(Debug, Default)]
struct Links(FastMap<StreamId, Vec<ConnId>>);

impl Links {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn contains(&self, conn: ConnId, stream: &StreamId) -> bool {
        self.0.get(stream).is_some_and(|c| c.contains(&conn))
    }

    /// Whether it was not there yet.
    fn insert(&mut self, conn: ConnId, stream: StreamId) -> bool {
        let conns = self.0.entry(stream).or_default();
        if conns.contains(&conn) {
            return false;
        }
        conns.push(conn);
        true
    }

    /// Whether it was there.
    fn remove(&mut self, conn: ConnId, stream: &StreamId) -> bool {
        let Some(conns) = self.0.get_mut(stream) else {
            return false;
        };
        let Some(at) = conns.iter().position(|&c| c == conn) else {
            return false;
        };
        conns.swap_remove(at);
        if conns.is_empty() {
            self.0.remove(stream);
        }
        true
    }

    /// Forgets `conn` everywhere; whether it was anywhere.
    fn remove_conn(&mut self, conn: ConnId) -> bool {
        let mut changed = false;
        self.0.retain(|_, conns| {
            let before = conns.len();
            conns.retain(|&c| c != conn);
            changed |= conns.len() != before;
            !conns.is_empty()
        });
        changed
    }

    fn forget(&mut self, stream: &StreamId) {
        self.0.remove(stream);
    }

    fn of(&self, stream: StreamRef<'_>) -> &[ConnId] {
        self.0.get(&stream).map_or(&[], |c| c.as_slice())
    }
}

/// Broadcast state of one node.
#[derive(Debug, Default)]
pub(super) struct Broadcaster {
    /// (connection, stream) pairs this node announces to instead of pushing: pruned by either
    /// end, until the peer grafts. Each stream has a tree of its own, so that two publishers on
    /// a topic do not prune each other's paths.
    lazy: Links,
    /// (connection, stream) pairs this node asked not to push to it (a prune it sent), until it
    /// grafts them. Apart from `lazy`: a stream's tree is directed, from its publisher out, so
    /// that a node grafting its upstream peer does not start pushing back up to it.
    pruned: Links,
    streams: Streams,
    /// The cache in insertion order: when, and which stream (its oldest message leaves first).
    cache_order: VecDeque<(Instant, Slot)>,
    cache_bytes: usize,
    held_len: usize,
    held_bytes: usize,
    /// Streams that grew since the last announcement (their `Stream::dirty` is set).
    dirty: Vec<StreamId>,
    /// Streams with a gap in their delivery order.
    gaps: FastSet<StreamId>,
    armed: bool,
    next_summary: Option<Instant>,
    /// Grows whenever the eager links of a topic change.
    generation: u64,
    /// Where small cached payloads are copied to.
    arena: Arena,
}

impl Broadcaster {
    /// No link is lazy (flooding, or no duplicate yet): the common case costs no lookup.
    pub(super) fn all_eager(&self) -> bool {
        self.lazy.is_empty()
    }

    /// Whether `conn` pushes `stream` eagerly.
    pub(super) fn is_eager(&self, conn: ConnId, stream: &StreamId) -> bool {
        self.lazy.is_empty() || !self.lazy.contains(conn, stream)
    }

    /// The connections that only announce `stream` (one lookup for all of them).
    pub(super) fn lazy_conns(&self, stream: StreamRef<'_>) -> &[ConnId] {
        self.lazy.of(stream)
    }
}

/// Where a message [`note`](Membership::note)d comes from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Origin {
    /// This node's own publication.
    Own,
    /// From the network; `first_hand`: from its publisher's own connection, reliably.
    Received { first_hand: bool },
}

/// Bytes charged for keeping `m`.
fn charge(m: &Message) -> usize {
    charge_parts(&m.payload, &m.headers)
}

fn charge_parts(payload: &[u8], headers: &[chaski_wire::Header]) -> usize {
    payload.len()
        + headers
            .iter()
            .map(|h| h.key.len() + h.value.len())
            .sum::<usize>()
        + OVERHEAD
}

/// The settling of a stream first heard of from `from` (see [`Settling`]): it waits for the
/// topic's other links.
fn settling(
    now: Instant,
    config: &crate::config::Config,
    links: Option<&Vec<ConnId>>,
    from: Option<ConnId>,
) -> Settling {
    let waiting = links
        .into_iter()
        .flatten()
        .copied()
        .filter(|&c| Some(c) != from)
        .collect();
    Settling {
        earliest: now + config.repair_delay,
        latest: now + config.gap_timeout,
        waiting,
    }
}

/// Where the cache's copies of small payloads are cut from (see [`ARENA_CHUNK`]).
#[derive(Debug, Default)]
struct Arena(BytesMut);

impl Arena {
    /// `b`, copied if it is small (see [`COPY_BELOW`]), else shared.
    fn own(&mut self, b: &Bytes) -> Bytes {
        if b.is_empty() || b.len() >= COPY_BELOW {
            return b.clone();
        }
        if self.0.capacity() - self.0.len() < b.len() {
            self.0 = BytesMut::with_capacity(ARENA_CHUNK);
        }
        self.0.extend_from_slice(b);
        self.0.split().freeze()
    }
}

/// The cache's copy of `m`, which owns its small payloads and headers (cut from `arena`)
/// instead of pinning the buffer they are slices of: a receive buffer, or for an own
/// publication the application's, whose reference count its writer shares.
fn cacheable(m: &Message, arena: &mut Arena) -> Cached {
    Cached {
        sequence: m.sequence,
        payload: Payload::new(&m.payload, arena),
        headers: if m.headers.is_empty() {
            Box::default()
        } else {
            m.headers
                .iter()
                .map(|h| chaski_wire::Header {
                    key: h.key.clone(),
                    value: arena.own(&h.value),
                })
                .collect()
        },
        timestamp_micros: m.timestamp_micros,
        hop_limit: m.hop_limit,
        hops: m.hops,
    }
}

impl Membership {
    /// Grows whenever the connections that push a topic eagerly change (a prune, a graft, a link
    /// up or down): a driver that keeps a snapshot of [`publish`](Membership::publish)'s answer
    /// rebuilds it then.
    pub fn routes_generation(&self) -> u64 {
        self.bcast.generation
    }

    /// Whether connection `conn` pushes the messages of `stream` eagerly (else it only
    /// announces them).
    pub fn is_eager(&self, conn: ConnId, stream: &StreamId) -> bool {
        self.bcast.is_eager(conn, stream)
    }

    /// Messages in the cache now, and their bytes as charged against `cache_bytes`.
    pub fn cache_usage(&self) -> (usize, usize) {
        (self.bcast.cache_order.len(), self.bcast.cache_bytes)
    }

    /// Messages held back for ordered delivery now.
    pub fn held_count(&self) -> usize {
        self.bcast.held_len
    }

    /// Records one of this node's own publications (numbered by the driver, already sent on
    /// [`publish`](Membership::publish)'s connections): it is cached, to serve grafts and repair,
    /// and announced on the lazy links. Call it for every publication, soon after sending (the
    /// announcement goes out at the next `announce_interval`).
    pub fn published(&mut self, now: Instant, msg: &Message) {
        self.now = now;
        self.note(now, StreamRef::of(msg), msg, None, false, Origin::Own);
    }

    /// Whether `msg` (reliable, refused by the duplicate filter) is one its stream's order still
    /// waits for: at or after the next sequence to hand out, not held, and known to exist (sent
    /// first-hand by its publisher, or at most the latest sequence announced). The order is an
    /// exact record where the filter's window is only a bound: a path that lags the others by
    /// more than the window must not have its copies, never seen before, dropped as old.
    pub(super) fn still_needed(&self, msg: &Message, first_hand: bool) -> bool {
        let seq = msg.sequence;
        self.bcast
            .streams
            .get(&StreamRef::of(msg))
            .is_some_and(|s| {
                s.next != 0
                    && seq >= s.next
                    && (first_hand || seq <= s.latest)
                    && !s.held.contains_key(&seq)
            })
    }

    /// Makes sure `key` has a stream entry, evicting if needed. False if the table is full of
    /// streams that hold messages back.
    fn stream_room(&mut self, now: Instant, key: StreamRef<'_>) -> bool {
        if self.bcast.streams.contains_key(&key) {
            return true;
        }
        if self.bcast.streams.len() >= MAX_STREAMS {
            let victim = self
                .bcast
                .streams
                .iter()
                .filter(|(_, s)| s.held.is_empty())
                .min_by_key(|(_, s)| s.active_at)
                .map(|(k, _)| k.clone());
            let Some(victim) = victim else {
                return false;
            };
            self.forget_stream(&victim);
        }
        let topic = key.topic.detached();
        let key = key.with_topic(topic.clone());
        self.bcast
            .streams
            .insert(key, |slot| Stream::new(now, topic, slot));
        true
    }

    fn forget_stream(&mut self, key: &StreamId) {
        if let Some(s) = self.bcast.streams.remove(key) {
            // Its links are eager again if it comes back: the safe default.
            self.bcast.lazy.forget(key);
            self.bcast.pruned.forget(key);
            self.bcast.generation += 1;
            self.bcast.cache_bytes -= s.cached.values().map(Cached::charge).sum::<usize>();
            self.bcast.gaps.remove(key);
            self.counters.streams_forgotten += 1;
            self.event(Event::Dropped {
                kind: DropKind::Stream,
            });
        }
    }

    /// Drops the oldest cached messages beyond the limits of count, bytes and age.
    fn trim_cache(&mut self, now: Instant) {
        while let Some(&(at, _)) = self.bcast.cache_order.front() {
            let over = self.bcast.cache_order.len() > self.config.cache_messages
                || self.bcast.cache_bytes > self.config.cache_bytes
                || at + self.config.cache_age <= now;
            if !over {
                break;
            }
            let (_, slot) = self.bcast.cache_order.pop_front().expect("front");
            // Each entry of the order stands for one message of its stream: the oldest goes
            // (the one inserted then, unless a repair filled in an older one since).
            let bcast = &mut self.bcast;
            if let Some(m) = bcast
                .streams
                .by_slot_mut(slot)
                .and_then(|s| s.cached.pop_oldest())
            {
                bcast.cache_bytes -= m.charge();
                self.counters.cache_evictions += 1;
            }
        }
    }

    /// A message the duplicate filter let through: cache it, note it for the announcements and,
    /// on a subscribed topic, put it in its stream's order. Returns whether it may be handed to
    /// ordered consumers now (else it is held, or late: for unordered consumers only), `None`
    /// when it was handed out already after all (to nobody, then).
    /// `first_hand`: it came from its publisher's own connection.
    pub(super) fn accept(
        &mut self,
        now: Instant,
        from: Option<ConnId>,
        msg: &Message,
        (reliable, first_hand): (bool, bool),
        subscribed: bool,
    ) -> Option<bool> {
        let origin = Origin::Received {
            first_hand: first_hand && reliable,
        };
        match self.note(
            now,
            StreamRef::of(msg),
            msg,
            from.filter(|_| reliable),
            subscribed,
            origin,
        ) {
            Some(in_order) => Some(in_order),
            // Off the hot path: an owned key.
            None if subscribed => self.order(now, &StreamId::of(msg), from, msg, reliable),
            None => Some(true),
        }
    }

    /// Caches `msg`, records it in its stream (latest, announcement, the connection it came
    /// from) and, on a subscribed topic, takes it in order when it is simply the next one: all
    /// with one lookup, the hot path. `Some(true)` when taken in order (or when the stream table
    /// has no room); `None` when [`order`](Self::order) must decide.
    fn note(
        &mut self,
        now: Instant,
        key: StreamRef<'_>,
        msg: &Message,
        from: Option<ConnId>,
        subscribed: bool,
        origin: Origin,
    ) -> Option<bool> {
        let stream = match self.bcast.streams.get_mut(&key) {
            Some(stream) => stream,
            None => {
                if !self.stream_room(now, key) {
                    return Some(true);
                }
                // Up to date for a settling order's links (below).
                self.rebuild_routes();
                self.bcast.streams.get_mut(&key).expect("made room")
            }
        };
        let seq = msg.sequence;
        let mut charged = None;
        if !stream.cached.contains(seq) {
            let copy = cacheable(msg, &mut self.bcast.arena);
            charged = Some(copy.charge());
            stream.cached.insert(copy);
        }
        if seq > stream.latest {
            stream.latest = seq;
            stream.active_at = now;
        }
        if let Some(conn) = from {
            stream.last_from = from;
            stream.shown_by(conn);
        }
        if origin == (Origin::Received { first_hand: true }) {
            stream.first_hand_at = Some(now);
        }
        let unforwarded = msg.hop_limit == 0;
        match &mut stream.dirty {
            Some((first, everywhere)) => {
                *first = (*first).min(seq);
                *everywhere |= unforwarded;
            }
            none => {
                *none = Some((seq, unforwarded));
                self.bcast.dirty.push(key.with_topic(stream.topic.clone()));
            }
        }
        let mut taken = None;
        if subscribed {
            if stream.next == 0 && seq > 1 && origin != Origin::Own {
                // First heard of by a message that is not its first: earlier ones may still
                // be on their way by other paths (a node that just linked to the publisher
                // hears its next message before a relay's copy of the one before). The order
                // settles before it starts (see `order`).
                stream.next = seq;
                stream.start = seq;
                stream.settling = Some(settling(
                    now,
                    &self.config,
                    self.route_index.get(&stream.topic),
                    from,
                ));
            }
            stream.begin(seq);
            if seq == stream.next
                && stream.held.is_empty()
                && stream.gap_since.is_none()
                && stream.settling.is_none()
            {
                stream.next = seq.saturating_add(1);
                stream.handed = seq;
                taken = Some(true);
            }
        }
        if let Some(bytes) = charged {
            self.bcast.cache_bytes += bytes;
            self.bcast.cache_order.push_back((now, stream.slot));
            self.trim_cache(now);
        }
        self.arm_broadcast(now);
        taken
    }

    /// Puts a new message of a subscribed topic in its stream's order: as
    /// [`accept`](Self::accept).
    fn order(
        &mut self,
        now: Instant,
        key: &StreamId,
        from: Option<ConnId>,
        msg: &Message,
        reliable: bool,
    ) -> Option<bool> {
        let publisher_conn = self.conn_of(key.publisher);
        let first_hand = from.is_some() && from == publisher_conn;
        let stream = self.bcast.streams.get_mut(key).expect("present");
        let seq = msg.sequence;
        stream.begin(seq);
        if stream.settling.is_some() {
            // Settling: everything is held, and the order starts at the lowest sequence heard;
            // then, if this message was the last one awaited, it starts.
            if seq < stream.next {
                stream.next = seq;
                stream.start = seq;
            }
            if stream.held.contains_key(&seq) {
                self.counters.messages_duplicate += 1;
                return None;
            }
            let taken = self.hold(now, key, msg, reliable);
            let stream = self.bcast.streams.get_mut(key).expect("present");
            if stream.settling.is_some() && stream.settled(now) {
                stream.settling = None;
                self.release(now, key, true);
            }
            return taken;
        }
        if seq < stream.next {
            if seq < stream.start || stream.take_missed(seq) {
                // Reported missed already, yet it came (or it is older than where the stream
                // started here): handed out late rather than dropped, to ordered consumers too
                // if nothing after it was handed out yet (a forged announcement far ahead must
                // not make the publisher's real messages vanish), else to unordered consumers
                // only: ordered ones were told it was missed and have moved on.
                self.counters.messages_late += 1;
                let in_order = seq > stream.handed && seq >= stream.start;
                if in_order {
                    stream.handed = seq;
                }
                return Some(in_order);
            }
            // Handed out already: a copy the duplicate filter could no longer tell (older
            // than its window, say an answer to a repair request that came late).
            self.counters.messages_duplicate += 1;
            return None;
        }
        if seq == stream.next {
            stream.next = stream.next.saturating_add(1);
            stream.handed = stream.handed.max(seq);
            self.release(now, key, true);
            return Some(true);
        }
        // Ahead of the order: a gap before it.
        if !reliable && stream.held.is_empty() {
            // A best-effort message never opens a gap: what it skips may be lost datagrams.
            stream.next = seq.saturating_add(1);
            stream.handed = seq;
            return Some(true);
        }
        if !reliable {
            stream.handed = stream.handed.max(seq);
        }
        if let (true, false, Some(conn)) = (reliable, first_hand, from)
            && self
                .bcast
                .streams
                .get(key)
                .is_some_and(|s| self.fed_directly(now, key, s))
        {
            // A relay's copy ahead of the order while the publisher itself feeds this node: the
            // direct path (reliable, in order) will bring it, only later. Holding such copies
            // would fill the hold-back buffer with what needs no repair (the direct path may
            // lag by more than it holds), so it is not taken (the publisher's copy will be: see
            // `still_needed`), counted as a duplicate, and the relay's link is pruned for the
            // stream, as its duplicates would prune it anyway once the direct path caught up.
            self.counters.messages_duplicate += 1;
            self.prune(conn, msg);
            return None;
        }
        let stream = self.bcast.streams.get_mut(key).expect("present");
        if let Some(conn) = from {
            stream.add_candidate(conn);
        }
        if reliable && first_hand {
            // The publisher's own connection skipped the gap (it is reliable and in order):
            // what is missing will not come by it.
            stream.direct_gap = true;
        }
        stream.ask_at.get_or_insert(now + self.config.repair_delay);
        self.hold(now, key, msg, reliable)
    }

    /// Holds `msg` back in its stream's order (a best-effort one only as a marker: it is
    /// handed out at once), within the hold-back limits: beyond them, the gap held longest is
    /// given up. Returns [`order`](Self::order)'s answer for it.
    fn hold(
        &mut self,
        now: Instant,
        key: &StreamId,
        msg: &Message,
        reliable: bool,
    ) -> Option<bool> {
        let bytes = if reliable { charge(msg) } else { 0 };
        let stream = self.bcast.streams.get_mut(key).expect("present");
        stream.held.insert(
            msg.sequence,
            Held {
                message: reliable.then(|| msg.clone()),
                at: now,
                bytes,
            },
        );
        stream.gap_since.get_or_insert(now);
        self.bcast.held_len += 1;
        self.bcast.held_bytes += bytes;
        self.bcast.gaps.insert(key.clone());
        if self.bcast.held_len > self.config.hold_messages
            || self.bcast.held_bytes > self.config.hold_bytes
        {
            if stream.settling.take().is_some() {
                // No room to wait longer: the order starts at the lowest sequence heard.
                self.release(now, key, true);
            } else {
                self.give_up_oldest(now);
            }
        }
        Some(!reliable)
    }

    /// Hands out the held messages that are next in order; settles the gap state.
    /// `arrived`: the next message of the stream just arrived, the order moved on by it (else
    /// a gap was given up).
    fn release(&mut self, now: Instant, key: &StreamId, arrived: bool) {
        let Some(stream) = self.bcast.streams.get_mut(key) else {
            return;
        };
        while let Some(entry) = stream.held.first_entry() {
            if *entry.key() > stream.next {
                break;
            }
            let seq = *entry.key();
            let held = entry.remove();
            self.bcast.held_len -= 1;
            self.bcast.held_bytes -= held.bytes;
            if seq == stream.next {
                stream.next = stream.next.saturating_add(1);
            }
            if let Some(m) = held.message {
                stream.handed = stream.handed.max(seq);
                self.actions.push_back(Action::Deliver(m));
            }
        }
        if stream.head_gap().is_none() && stream.held.is_empty() {
            if stream.gap_since.take().is_some() {
                self.bcast.gaps.remove(key);
            }
            stream.ask_at = None;
            stream.asks = 0;
            stream.direct_gap = false;
        } else if arrived {
            // A gap that makes progress (its first messages arrived) is timed afresh: only a
            // gap that stays put for `gap_timeout` is given up. Nor is it asked for while it
            // fills: the path it comes by lags (a deep queue on the way), and asking would only
            // add copies to the load that makes it lag.
            stream.gap_since = Some(now);
            let wait = if stream.asks == 0 {
                self.config.repair_delay
            } else {
                self.config.repair_retry
            };
            stream.ask_at = Some(now + wait);
            self.bcast.gaps.insert(key.clone());
        } else if stream.gap_since.is_none() {
            stream.gap_since = Some(now);
            stream.ask_at.get_or_insert(now + self.config.repair_delay);
            self.bcast.gaps.insert(key.clone());
        }
    }

    /// Reports the first gap of `key` missed, moves its order past it and releases what follows.
    fn give_up(&mut self, now: Instant, key: &StreamId) {
        let Some(stream) = self.bcast.streams.get_mut(key) else {
            return;
        };
        let Some((first, last)) = stream.head_gap() else {
            return;
        };
        stream.next = last.saturating_add(1);
        // The next gap, if any, counts from when the messages after it arrived.
        stream.gap_since = stream.held.values().next().map(|h| h.at);
        stream.asks = 0;
        stream.direct_gap = false;
        stream.missed.push((first, last));
        stream.trim_missed();
        let count = (last - first).saturating_add(1);
        self.counters.messages_missed = self.counters.messages_missed.saturating_add(count);
        self.event(Event::Missed {
            publisher: key.publisher,
            incarnation: key.incarnation,
            topic: key.topic.clone(),
            first,
            last,
        });
        self.release(now, key, false);
    }

    /// The hold-back buffer is full: give up the gap of the stream held longest.
    fn give_up_oldest(&mut self, now: Instant) {
        let oldest = self
            .bcast
            .gaps
            .iter()
            .filter_map(|k| {
                let s = self.bcast.streams.get(k)?;
                Some((s.held.values().next()?.at, k.clone()))
            })
            .min_by_key(|(at, _)| *at)
            .map(|(_, k)| k);
        if let Some(key) = oldest {
            self.counters.hold_overflows += 1;
            self.give_up(now, &key);
        }
    }

    /// A duplicate arrived on `conn`: in a tree, a link is redundant for its stream. Usually
    /// `conn`'s (the copy that came first took a faster path); but a node linked to the
    /// publisher itself takes the publisher's own copies, so a duplicate from the publisher
    /// prunes the link the first copy came from instead: the direct path is the shortest, and
    /// relaying through a neighbour only loads that neighbour's queues.
    pub(super) fn duplicate_on(&mut self, conn: ConnId, msg: &Message, first_hand: bool) {
        // A copy at the end of its hop limit was not forwarded by its sender: it tells nothing
        // about the sender's links. Other broadcast modes prune nothing.
        if self.config.broadcast != Broadcast::Tree || msg.hop_limit == 0 {
            return;
        }
        let key = StreamId::of(msg);
        if self
            .bcast
            .streams
            .get(&key)
            .is_some_and(|s| s.repairing_until > self.now)
        {
            // Likely an answer to a request sent to several peers.
            return;
        }
        let conn = if first_hand {
            match self.bcast.streams.get(&key).and_then(|s| s.last_from) {
                Some(relay) if relay != conn => relay,
                _ => return,
            }
        } else {
            conn
        };
        self.prune(conn, msg);
    }

    /// A copy of `msg` came on `conn` that this node refused as implausible (far ahead of what
    /// it has, second-hand): that link is pruned for the stream, even during a repair (an
    /// answer to a request is never ahead of what was announced).
    pub(super) fn implausible_on(&mut self, conn: ConnId, msg: &Message) {
        if self.config.broadcast == Broadcast::Tree && msg.hop_limit > 0 {
            self.prune(conn, msg);
        }
    }

    /// Prunes `conn` for `msg`'s stream, if it carries the topic and is not pruned already.
    fn prune(&mut self, conn: ConnId, msg: &Message) {
        let key = StreamId::of(msg);
        if self.bcast.pruned.contains(conn, &key) {
            return;
        }
        self.rebuild_routes();
        let carried = self
            .route_index
            .get(&msg.topic)
            .is_some_and(|c| c.contains(&conn));
        if !carried {
            return;
        }
        let key = StreamId {
            topic: key.topic.detached(),
            ..key
        };
        self.bcast.lazy.insert(conn, key.clone());
        self.bcast.pruned.insert(conn, key.clone());
        self.bcast.generation += 1;
        self.counters.prunes_sent += 1;
        self.send(conn, Frame::Prune(Prune { streams: vec![key] }));
    }

    /// The driver could not forward `msg` on one of its eager links (a full send queue): the
    /// next announcement of its stream goes to every link, so that the peer that missed it
    /// asks for it.
    pub fn forward_dropped(&mut self, now: Instant, msg: &Message) {
        let key = StreamId::of(msg);
        let Some(stream) = self.bcast.streams.get_mut(&key) else {
            return;
        };
        match &mut stream.dirty {
            Some((_, everywhere)) => *everywhere = true,
            none => {
                *none = Some((msg.sequence, true));
                self.bcast.dirty.push(key);
            }
        }
        self.arm_broadcast(now);
    }

    pub(super) fn on_prune(&mut self, conn: ConnId, prune: Prune) {
        if self.config.broadcast != Broadcast::Tree {
            return;
        }
        for key in prune.streams {
            // Only a stream this node has (it forwarded the copies the peer found redundant),
            // or one of its own on a topic it sends that peer: the table stays as bounded as
            // the stream table, whatever a peer names.
            let own = key.publisher == self.me
                && key.incarnation == self.config.incarnation
                && self
                    .route_index
                    .get(&key.topic)
                    .is_some_and(|c| c.contains(&conn));
            match self.bcast.streams.get_mut(&key) {
                Some(stream) => stream.shown_by(conn),
                None if own => {}
                None => continue,
            }
            let key = StreamId {
                topic: key.topic.detached(),
                ..key
            };
            if self.bcast.lazy.insert(conn, key) {
                self.bcast.generation += 1;
            }
        }
    }

    /// A connection is gone: forget its links' modes.
    pub(super) fn broadcast_conn_closed(&mut self, conn: ConnId) {
        // Settling streams wait no longer for it (each is held, so among the gaps).
        for key in &self.bcast.gaps {
            if let Some(stream) = self.bcast.streams.get_mut(key) {
                stream.shown_by(conn);
            }
        }
        self.bcast.lazy.remove_conn(conn);
        self.bcast.pruned.remove_conn(conn);
        self.bcast.generation += 1;
    }

    /// A new connection: tell it at once what this node has of the topics it wants, so that
    /// what it missed while away is noticed without waiting for the next message.
    pub(super) fn broadcast_conn_opened(&mut self, now: Instant, conn: ConnId) {
        self.bcast.generation += 1;
        let Some(peer) = self.conns.get(&conn).map(|c| c.peer) else {
            return;
        };
        let Some(wants) = self.known.get(&peer).map(|k| k.info.subscriptions.clone()) else {
            return;
        };
        let horizon = self.config.cache_age;
        let heads: Vec<StreamHead> = self
            .bcast
            .streams
            .iter()
            .filter(|(k, s)| {
                k.publisher != peer
                    && s.latest > 0
                    && s.active_at + horizon > now
                    && wants.contains(&k.topic)
            })
            .map(|(k, s)| StreamHead {
                stream: k.clone(),
                last: s.latest,
                first: s.latest.saturating_add(1),
            })
            .collect();
        self.send_heads(conn, heads);
    }

    fn send_heads(&mut self, conn: ConnId, mut heads: Vec<StreamHead>) {
        while !heads.is_empty() {
            let rest = heads.split_off(heads.len().min(MAX_HEADS_PER_FRAME));
            self.counters.announcements_sent += heads.len() as u64;
            self.send(conn, Frame::Have(Have { streams: heads }));
            heads = rest;
        }
    }

    pub(super) fn on_have(&mut self, now: Instant, conn: ConnId, have: Have) {
        let peer = self.conns.get(&conn).map(|c| c.peer);
        for mut head in have.streams {
            let key = head.stream;
            // Believed within reason, as messages are (see `crate::dedup`): a second-hand
            // announcement moves a stream ahead by at most `MAX_AHEAD` at a time, so that one
            // forged number cannot make this node give up the publisher's real messages.
            if peer != Some(key.publisher) {
                if let Some(s) = self.bcast.streams.get(&key).filter(|s| s.latest > 0) {
                    head.last = head
                        .last
                        .min(s.latest.saturating_add(crate::dedup::MAX_AHEAD));
                }
            }
            if key.publisher == self.me || head.last == 0 || !self.wants(&key.topic) {
                continue;
            }
            if !self.stream_room(now, StreamRef::to(&key)) {
                continue;
            }
            self.rebuild_routes();
            let stream = self.bcast.streams.get_mut(&key).expect("present");
            stream.shown_by(conn);
            // Believed within reason: at most `MAX_AHEAD` messages before the head, unless the
            // publisher itself says so.
            let mut first = head.first;
            if peer != Some(key.publisher) {
                first = first.max(head.last.saturating_sub(crate::dedup::MAX_AHEAD));
            }
            let first = first.clamp(1, head.last.saturating_add(1));
            if stream.next == 0 {
                // First heard of by an announcement: the stream starts at the first message
                // announced as new (after the head, for a summary), once it settled if that
                // is not its first (earlier ones may still come by links that had them).
                stream.begin(first);
                if first > 1 {
                    stream.settling = Some(settling(
                        now,
                        &self.config,
                        self.route_index.get(&key.topic),
                        Some(conn),
                    ));
                    self.bcast.gaps.insert(key.clone());
                }
            } else if stream.settling.is_some() && first < stream.next {
                // Settling: the order starts at the lowest message shown, announced too.
                stream.next = first;
                stream.start = first;
            }
            let stream = self.bcast.streams.get_mut(&key).expect("present");
            if head.last > stream.latest {
                stream.latest = head.last;
                stream.active_at = now;
            }
            if stream.head_gap().is_some() || !stream.held.is_empty() {
                stream.add_candidate(conn);
                stream.gap_since.get_or_insert(now);
                stream.ask_at.get_or_insert(now + self.config.repair_delay);
                self.bcast.gaps.insert(key);
            }
        }
        self.arm_broadcast(now);
    }

    /// Serves a `Want` from the cache. What one peer gets is bounded by [`MAX_SERVED_BYTES`]
    /// per second (a small request must not buy unbounded work); a request beyond it is
    /// answered in part (counted in `repairs_throttled`), and the asker asks again.
    pub(super) fn on_want(&mut self, now: Instant, conn: ConnId, want: Want) {
        let me = self.me;
        let mut sent = 0usize;
        let budget = match self.conns.get_mut(&conn) {
            Some(c) => {
                if now - c.served_since >= std::time::Duration::from_secs(1) {
                    c.served_since = now;
                    c.served_bytes = 0;
                }
                MAX_SERVED_BYTES.saturating_sub(c.served_bytes)
            }
            None => return,
        };
        let mut bytes = 0usize;
        let mut frames = Vec::new();
        for range in &want.ranges {
            // A graft: the asker wants this stream pushed from now on.
            if self.bcast.lazy.remove(conn, &range.stream) {
                self.bcast.generation += 1;
                self.counters.grafts_received += 1;
            }
            let Some(stream) = self.bcast.streams.get(&range.stream) else {
                continue;
            };
            // The stream's detached topic, not the asker's slice of its frame.
            let key = StreamRef::to(&range.stream).with_topic(stream.topic.clone());
            for m in stream.cached.range(range.first, range.last) {
                if sent >= MAX_SERVED || bytes >= budget {
                    self.counters.repairs_throttled += 1;
                    break;
                }
                sent += 1;
                bytes += m.charge();
                let mut copy = m.message(&key);
                // As Plumtree's graft answers: the asker takes the copy as it would a pushed
                // one, and pushes it on along its own eager links, to the part of the tree that
                // missed it too.
                // A copy out of the cache counts one hop more, also the publisher's own (whose
                // hop limit stays whole): an old message, not the publisher's latest word, for
                // the asker's duplicate filter.
                copy.hops = copy.hops.saturating_add(1);
                if copy.publisher != me {
                    copy.hop_limit = copy.hop_limit.saturating_sub(1);
                }
                frames.push(Frame::Publish(copy));
            }
        }
        self.counters.messages_served += sent as u64;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.served_bytes += bytes;
        }
        for frame in frames {
            self.push(Action::Send { conn, frame });
        }
    }

    /// Arms the broadcast timer if there is anything for it to do.
    fn arm_broadcast(&mut self, now: Instant) {
        if self.bcast.armed {
            return;
        }
        self.bcast.armed = true;
        self.arm(now + self.config.announce_interval, Timer::Broadcast);
    }

    /// The broadcast timer: announcements, repair requests, gaps given up, cache ageing and idle
    /// summaries.
    pub(super) fn on_broadcast_timer(&mut self, now: Instant) {
        self.bcast.armed = false;
        self.rebuild_routes();
        self.flush_announcements();
        self.run_repairs(now);
        self.trim_cache(now);
        if self.bcast.next_summary.is_none_or(|t| t <= now) {
            self.bcast.next_summary = Some(now + self.config.summary_interval);
            self.send_summaries(now);
        }
        if !self.bcast.streams.is_empty() || !self.bcast.dirty.is_empty() {
            self.arm_broadcast(now);
        }
    }

    /// Whether the publisher itself is pushing `key` to this node right now: linked directly,
    /// eagerly, a message of it came first-hand within `repair_delay`, and that connection has
    /// skipped nothing. It is reliable and in order, so a gap that announcements from faster
    /// paths reveal meanwhile is a queue on the way that will drain, not a loss: asking relays
    /// for it would only add copies to the load that makes the direct path lag.
    fn fed_directly(&self, now: Instant, key: &StreamId, stream: &Stream) -> bool {
        !stream.direct_gap
            && stream
                .first_hand_at
                .is_some_and(|t| t + self.config.repair_delay > now)
            && self
                .conn_of(key.publisher)
                .is_some_and(|conn| self.bcast.is_eager(conn, key))
    }

    /// The connection on which `publisher` is connected, if any.
    fn conn_of(&self, publisher: NodeId) -> Option<ConnId> {
        self.known.get(&publisher).and_then(|k| k.conn)
    }

    fn flush_announcements(&mut self) {
        if self.bcast.dirty.is_empty() {
            return;
        }
        let dirty = std::mem::take(&mut self.bcast.dirty);
        let mut out: BTreeMap<ConnId, Vec<StreamHead>> = BTreeMap::new();
        for key in dirty {
            let Some(stream) = self.bcast.streams.get_mut(&key) else {
                continue;
            };
            let Some((first, everywhere)) = stream.dirty.take() else {
                continue;
            };
            let latest = stream.latest;
            let Some(conns) = self.route_index.get(&key.topic) else {
                continue;
            };
            let publisher_conn = self.conn_of(key.publisher);
            for &conn in conns {
                if Some(conn) == publisher_conn
                    || !(everywhere || self.bcast.lazy.contains(conn, &key))
                {
                    continue;
                }
                out.entry(conn).or_default().push(StreamHead {
                    stream: key.clone(),
                    last: latest,
                    first,
                });
            }
        }
        for (conn, heads) in out {
            self.send_heads(conn, heads);
        }
    }

    /// Once per `summary_interval`: the streams that went quiet within `cache_age`, to every
    /// link of their topics, so that a lost tail is noticed.
    fn send_summaries(&mut self, now: Instant) {
        let quiet = self.config.summary_interval;
        let horizon = self.config.cache_age;
        let mut out: BTreeMap<ConnId, Vec<StreamHead>> = BTreeMap::new();
        for (key, stream) in self.bcast.streams.iter() {
            if stream.latest == 0
                || stream.active_at + quiet > now
                || stream.active_at + horizon <= now
            {
                continue;
            }
            let Some(conns) = self.route_index.get(&key.topic) else {
                continue;
            };
            let publisher_conn = self.conn_of(key.publisher);
            for &conn in conns.iter().filter(|&&c| Some(c) != publisher_conn) {
                out.entry(conn).or_default().push(StreamHead {
                    stream: key.clone(),
                    last: stream.latest,
                    first: stream.latest.saturating_add(1),
                });
            }
        }
        for (conn, heads) in out {
            self.send_heads(conn, heads);
        }
    }

    /// Asks for what is missing where due, and gives up gaps held too long.
    fn run_repairs(&mut self, now: Instant) {
        if self.bcast.gaps.is_empty() {
            return;
        }
        let keys: Vec<StreamId> = self.bcast.gaps.iter().cloned().collect();
        let mut asks: BTreeMap<ConnId, Vec<StreamRange>> = BTreeMap::new();
        for key in keys {
            if let Some(stream) = self.bcast.streams.get_mut(&key) {
                if stream.settling.is_some() && stream.settled(now) {
                    stream.settling = None;
                    self.release(now, &key, true);
                }
            }
            // Gaps held for `gap_timeout` are missed.
            while let Some(since) = self.bcast.streams.get(&key).and_then(|s| {
                s.head_gap()?;
                s.gap_since
            }) {
                if since + self.config.gap_timeout > now {
                    break;
                }
                self.give_up(now, &key);
            }
            let Some(stream) = self.bcast.streams.get(&key) else {
                continue;
            };
            if stream.ask_at.is_none_or(|t| t > now) || self.fed_directly(now, &key, stream) {
                continue;
            }
            let missing = stream.missing(MAX_RANGES_PER_FRAME);
            if missing.is_empty() {
                continue;
            }
            let sources = self.repair_sources(&key);
            if sources.is_empty() {
                continue;
            }
            let stream = self.bcast.streams.get_mut(&key).expect("present");
            stream.asks += 1;
            stream.ask_at = Some(now + self.config.repair_retry);
            stream.repairing_until = now + 2 * self.config.repair_retry;
            for conn in sources {
                let ranges = asks.entry(conn).or_default();
                for &(first, last) in &missing {
                    ranges.push(StreamRange {
                        stream: key.clone(),
                        first,
                        last,
                    });
                }
                // Grafting: the link that has what this node missed pushes eagerly again (the
                // `Want` tells it); its duplicates may prune it anew.
                if self.bcast.pruned.remove(conn, &key) {
                    self.counters.grafts_sent += 1;
                }
            }
        }
        for (conn, mut ranges) in asks {
            while !ranges.is_empty() {
                let rest = ranges.split_off(ranges.len().min(MAX_RANGES_PER_FRAME));
                self.counters.repairs_requested += ranges.len() as u64;
                self.send(conn, Frame::Want(Want { ranges }));
                ranges = rest;
            }
        }
    }

    /// Whom to ask for a stream's missing messages. The first time, the peer that showed last
    /// it has them (or the publisher, or a link of the topic): one copy comes back. If that
    /// went unanswered (the peer may have died unnoticed, or missed them too), every link of
    /// the topic and the publisher at once (at most `max_connections` + 1 peers).
    fn repair_sources(&self, key: &StreamId) -> Vec<ConnId> {
        let Some(stream) = self.bcast.streams.get(key) else {
            return Vec::new();
        };
        let live = |c: &ConnId| self.conns.contains_key(c);
        let mut options: Vec<ConnId> = stream.candidates.iter().copied().filter(live).collect();
        if let Some(p) = self.conn_of(key.publisher) {
            if !options.contains(&p) {
                options.push(p);
            }
        }
        for &c in self.route_index.get(&key.topic).into_iter().flatten() {
            if !options.contains(&c) {
                options.push(c);
            }
        }
        if stream.asks == 0 {
            options.truncate(1);
        }
        options
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_cache_keeps_sequence_order_whatever_the_arrival_order() {
        let mut cache = Cache::default();
        for s in [1, 2, 5, 3, 9, 4] {
            assert!(!cache.contains(s));
            cache.insert(cacheable(&message(s), &mut Arena::default()));
            assert!(cache.contains(s));
        }
        let seqs = |c: &Cache| c.values().map(|m| m.sequence).collect::<Vec<_>>();
        assert_eq!(seqs(&cache), [1, 2, 3, 4, 5, 9]);
        let range: Vec<u64> = cache.range(3, 8).map(|m| m.sequence).collect();
        assert_eq!(range, [3, 4, 5]);
        assert_eq!(cache.range(10, 20).count(), 0);
        assert_eq!(cache.pop_oldest().map(|m| m.sequence), Some(1));
        assert_eq!(seqs(&cache), [2, 3, 4, 5, 9]);
    }

    #[test]
    fn a_cached_message_is_given_back_whole_with_its_streams_names() {
        let mut arena = Arena::default();
        let original = Message {
            timestamp_micros: 77,
            hop_limit: 5,
            hops: 2,
            headers: vec![chaski_wire::Header {
                key: "k".into(),
                value: Bytes::from_static(b"v"),
            }],
            incarnation: 3,
            ..message(12)
        };
        // Inline, cut from the arena, shared.
        for len in [7, INLINE, INLINE + 1, COPY_BELOW + 1] {
            let original = Message {
                payload: Bytes::from(vec![0xa5; len]),
                ..original.clone()
            };
            let cached = cacheable(&original, &mut arena);
            assert_eq!(cached.charge(), charge(&original), "{len} B");
            assert_eq!(
                cached.message(&StreamId::of(&original)),
                original,
                "{len} B"
            );
        }
    }

    #[test]
    fn a_slot_reused_by_another_stream_no_longer_names_the_old_one() {
        let now = Instant::ZERO;
        let mut streams = Streams::default();
        let a = StreamId::of(&message(1));
        let b = StreamId {
            incarnation: 9,
            ..a.clone()
        };
        let topic = a.topic.clone();
        streams.insert(a.clone(), |slot| Stream::new(now, topic.clone(), slot));
        let first = streams.get(&a).expect("a").slot;
        assert!(streams.by_slot_mut(first).is_some());
        assert!(streams.remove(&a).is_some());
        assert!(streams.by_slot_mut(first).is_none());
        assert!(
            !streams.contains_key(&a),
            "not found by the last lookup either"
        );
        streams.insert(b.clone(), |slot| Stream::new(now, topic.clone(), slot));
        let second = streams.get(&b).expect("b").slot;
        assert_eq!(second.index, first.index, "the slot is reused");
        assert!(
            streams.by_slot_mut(first).is_none(),
            "an old entry names nothing"
        );
        assert!(streams.by_slot_mut(second).is_some());
        assert!(streams.get(&a).is_none());
        assert_eq!(streams.len(), 1);
        // Found by the index as well as by the last lookup.
        streams.insert(a.clone(), |slot| Stream::new(now, topic.clone(), slot));
        assert!(streams.get_mut(&StreamRef::to(&b)).is_some());
        assert!(streams.get_mut(&StreamRef::to(&a)).is_some());
        assert_eq!(streams.iter().count(), 2);
    }
}
