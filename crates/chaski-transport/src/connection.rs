//! An established connection: the cloneable sending handle ([`Connection`]), and the two tasks
//! that move its bytes (a reader that decodes and hands up batches of frames, a writer that
//! coalesces queued frames into few write calls). Generic over any `AsyncRead + AsyncWrite`
//! stream, so that TLS can be slotted in under it.

use std::{
    fmt,
    io::{self, IoSlice},
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use bytes::{Buf, Bytes, BytesMut};
use chaski_wire::{
    EncodeError, Frame, FrameLimits, Goodbye, GoodbyeReason, Hello, LENGTH_PREFIX_LEN,
    MAX_FRAME_LEN_LIMIT, Message, NodeId, decode_frame_limited, encode_frame, encode_message,
    encode_message_head, peek_frame,
};
use tokio::{
    io::ReadHalf,
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::{Notify, mpsc, oneshot},
    task::JoinHandle,
};
use tracing::{debug, trace};

use crate::{
    LostCause, SendError,
    endpoint::Inner,
    handshake,
    stats::{Traffic, TrafficStats, add, raise},
};

/// Payloads (and pre-encoded frames) at least this large are written straight from their
/// `Bytes` with a vectored write instead of being copied into the write buffer.
const ZERO_COPY_MIN: usize = 4 << 10;

/// A sender writes its frame itself only if the connection wrote nothing for this long; a
/// shorter gap means frames are streaming and the writer task should coalesce them.
const DIRECT_IDLE: Duration = Duration::from_micros(10);

/// Frames at least this large count against the send queue's byte bound; smaller ones are
/// bounded by its frame limit.
const COUNTED_MIN: usize = 1 << 10;

/// How long an aborted connection's writer may take to write its goodbye before it is stopped.
const ABORT_GOODBYE_WAIT: Duration = Duration::from_millis(100);

/// Queue items the writer takes per channel operation.
const RECV_BATCH: usize = 512;

/// Slices per vectored write call.
const MAX_IOVECS: usize = 64;

/// Identifies a connection within its endpoint; never reused by that endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub(crate) u64);

impl ConnectionId {
    /// The number behind the id.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Who opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The peer dialed us.
    Inbound,
    /// We dialed the peer.
    Outbound,
}

/// Which end of a connection said goodbye.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// This endpoint.
    Local,
    /// The peer.
    Remote,
}

/// How a connection ended, reported exactly once in [`Event::Closed`].
#[derive(Debug)]
#[non_exhaustive]
pub enum CloseReason {
    /// A graceful close: one side sent a `Goodbye`.
    Goodbye {
        /// Who said goodbye.
        by: Side,
        /// Why.
        reason: GoodbyeReason,
        /// The explanation given.
        message: String,
    },
    /// The connection was lost without a goodbye.
    Lost(LostCause),
}

/// What an [`Endpoint`](crate::Endpoint) reports through its [`Events`](crate::Events): the fan-in
/// of every connection.
///
/// For each connection: first [`Event::Connected`], then any number of [`Event::Frames`], then
/// exactly one [`Event::Closed`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A connection completed its handshake (inbound or outbound).
    Connected(Connection),
    /// Frames received on a connection, in order: all the frames of one read call.
    Frames {
        /// The connection.
        connection: ConnectionId,
        /// The frames; payloads are zero-copy slices of the read buffer.
        frames: Vec<Frame>,
    },
    /// A connection ended.
    Closed {
        /// The connection.
        connection: ConnectionId,
        /// The peer's node id.
        node_id: NodeId,
        /// How it ended.
        reason: CloseReason,
    },
}

/// A frame encoded once (with its length prefix), to be queued on many connections without
/// encoding it again: cloning it clones a [`Bytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedFrame(Bytes);

impl EncodedFrame {
    /// Encodes `frame`; fails when its body exceeds `max_frame_len`.
    pub fn new(frame: &Frame, max_frame_len: usize) -> Result<EncodedFrame, EncodeError> {
        let mut buf = BytesMut::new();
        encode_frame(frame, &mut buf, max_frame_len)?;
        Ok(EncodedFrame(buf.freeze()))
    }

    /// Encodes a published message (copying its payload once).
    pub fn from_message(
        message: &Message,
        max_frame_len: usize,
    ) -> Result<EncodedFrame, EncodeError> {
        let mut buf = BytesMut::new();
        encode_message(message, &mut buf, max_frame_len)?;
        Ok(EncodedFrame(buf.freeze()))
    }

    /// The encoded bytes, length prefix included.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// The encoded length, length prefix included.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a frame has at least its length prefix.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the send queue carries.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A published message, encoded by the writer straight into its buffer.
    Message(Message),
    /// An already encoded frame.
    Encoded(Bytes),
    /// Close gracefully after everything queued before.
    Close(Goodbye),
}

impl Outgoing {
    /// The bytes it counts for the send queue's byte bound: frames below [`COUNTED_MIN`] count
    /// as nothing (the frame limit bounds them: at most `send_queue` × 1 KiB), so that the small
    /// message hot path pays no shared counter.
    fn size(&self) -> usize {
        let size = match self {
            Outgoing::Message(m) => m.payload.len() + m.topic.len() + 64,
            Outgoing::Encoded(bytes) => bytes.len(),
            Outgoing::Close(_) => 0,
        };
        if size < COUNTED_MIN { 0 } else { size }
    }
}

/// What the reader asks of the writer when the connection ends on the reading side.
struct Stop {
    goodbye: Option<Goodbye>,
}

/// How the writer ended.
enum WriterExit {
    /// It sent a goodbye (asked for through the queue) and shut the stream down.
    Goodbye(Goodbye),
    /// A write failed.
    Error(io::Error),
    /// The reader stopped it.
    Stopped,
}

pub(crate) struct Shared {
    pub(crate) id: ConnectionId,
    pub(crate) direction: Direction,
    pub(crate) remote_addr: SocketAddr,
    pub(crate) remote_hello: Hello,
    /// (dialer's node id, order of establishment at this endpoint): the smaller key wins a
    /// duplicate tie-break.
    pub(crate) dialer_key: (NodeId, u64),
    pub(crate) max_frame_len: usize,
    /// What the reader accepts, per kind.
    pub(crate) limits: FrameLimits,
    pub(crate) established_at: Instant,
    pub(crate) traffic: Traffic,
    pub(crate) closed: AtomicBool,
    pub(crate) write: WriteSide,
    /// The endpoint's totals, which the direct path adds to.
    pub(crate) endpoint_traffic: Arc<Traffic>,
    /// The endpoint whose table holds this connection (weak: a handle does not keep the endpoint
    /// alive). Closing or aborting removes the connection from that table at once.
    pub(crate) endpoint: Weak<Inner>,
    /// Bytes queued and not yet taken by the writer, bounded by `Config::send_queue_bytes`.
    pub(crate) queued_bytes: AtomicUsize,
    pub(crate) max_queued_bytes: usize,
    /// Woken by the writer when it has taken queued bytes (room for a waiting sender).
    pub(crate) room: Notify,
    /// Set by [`Connection::abort`]; the reader task takes it and ends the connection.
    pub(crate) abort: Mutex<Option<Goodbye>>,
    /// Wakes the reader task when `abort` is set.
    pub(crate) abort_signal: Notify,
    /// The keys of sealed datagrams, from the TLS session.
    pub(crate) datagram_keys: Option<crate::seal::DatagramKeys>,
    /// When the peer's certificate expires (TLS).
    pub(crate) peer_valid_until: Option<std::time::SystemTime>,
}

impl Shared {
    /// Removes the connection from its endpoint's table (if it is still the one registered for
    /// its node), so that it never wins a duplicate tie-break against a newer connection.
    fn leave_table(&self) {
        if let Some(inner) = self.endpoint.upgrade() {
            inner.leave_table(self);
        }
    }

    fn take_abort(&self) -> Option<Goodbye> {
        self.abort
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// The write half of a connection, shared by its writer task and by senders that find the
/// connection idle and write their frame themselves (saving a task wake-up per lone frame).
pub(crate) struct WriteSide {
    state: tokio::sync::Mutex<WriteState>,
    /// Frames queued, or taken by the writer task, and not yet written. A sender writes directly
    /// only when this is 0 (under the lock), which keeps each sender's frames in order.
    inflight: AtomicUsize,
    /// Tells the writer task that the direct path left bytes (or an error) for it.
    wake: Notify,
    /// The writer has taken a `Close` and is sending our goodbye.
    goodbye_sent: AtomicBool,
}

struct WriteState {
    io: Pin<Box<dyn AsyncWrite + Send>>,
    buf: BytesMut,
    /// Bytes a direct write could not write at once; the writer task writes them first.
    leftover: Vec<Bytes>,
    /// A direct write could not complete its flush.
    needs_flush: bool,
    /// A direct write failed.
    error: Option<io::Error>,
    /// The writer has stopped: nothing more may be written.
    done: bool,
    /// When the last write call was made (by either path).
    last_write: Option<Instant>,
}

impl WriteSide {
    pub(crate) fn new<W>(io: W) -> WriteSide
    where
        W: AsyncWrite + Send + 'static,
    {
        WriteSide {
            state: tokio::sync::Mutex::new(WriteState {
                io: Box::pin(io),
                buf: BytesMut::new(),
                leftover: Vec::new(),
                needs_flush: false,
                error: None,
                done: false,
                last_write: None,
            }),
            inflight: AtomicUsize::new(0),
            wake: Notify::new(),
            goodbye_sent: AtomicBool::new(false),
        }
    }
}

impl WriteSide {
    /// Says goodbye on a connection that never started (best effort, within `within`), then shuts
    /// it down.
    pub(crate) async fn refuse(&self, reason: GoodbyeReason, message: &str, within: Duration) {
        let mut state = self.state.lock().await;
        state.done = true;
        handshake::refuse(&mut state.io, reason, message, within).await;
    }
}

/// What [`Connection::queue_now`] did with an item.
enum Queued {
    /// Queued (or written), or refused for good.
    Done(Result<(), SendError>),
    /// The queue is full, in frames or in bytes: wait.
    Wait(Outgoing),
}

/// A frame that [`Connection::send_now`] could not queue at once because the send queue was
/// full: awaiting it waits for room and queues the frame (failing with [`SendError::Closed`]
/// if the connection closes first); dropping it drops the frame.
#[must_use = "the frame is queued only when this is awaited"]
pub struct SendWait {
    connection: Connection,
    item: Outgoing,
}

impl fmt::Debug for SendWait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendWait")
            .field("connection", &self.connection.shared.id)
            .finish_non_exhaustive()
    }
}

impl IntoFuture for SendWait {
    type Output = Result<(), SendError>;
    // Boxed: the wait is rare, and a future that held it inline would make every future that
    // awaits a send several hundred bytes larger, copied each time such a future is moved.
    type IntoFuture = Pin<Box<dyn Future<Output = Result<(), SendError>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.connection.queue_waiting(self.item).await })
    }
}

/// Counts a frame as in flight until it is queued (or dropped with its error).
struct InFlight<'a>(&'a AtomicUsize, bool);

impl<'a> InFlight<'a> {
    fn new(counter: &'a AtomicUsize) -> InFlight<'a> {
        counter.fetch_add(1, Ordering::AcqRel);
        InFlight(counter, true)
    }

    fn queued(mut self) {
        self.1 = false;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A handle on an established connection: cheap to clone, usable from any task.
///
/// Sending queues the frame on the connection's bounded send queue
/// ([`Config::send_queue`](crate::Config::send_queue) frames): [`Connection::send`] waits for room,
/// [`Connection::try_send`] fails fast with [`SendError::Full`]. A writer task drains the queue,
/// coalescing every frame queued meanwhile into one (vectored) write call. Received frames arrive
/// through the endpoint's [`Events`](crate::Events).
#[derive(Clone)]
pub struct Connection {
    pub(crate) shared: Arc<Shared>,
    pub(crate) tx: mpsc::Sender<Outgoing>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.shared.id)
            .field("direction", &self.shared.direction)
            .field("remote_addr", &self.shared.remote_addr)
            .field("node_id", &self.shared.remote_hello.node_id)
            .finish()
    }
}

impl Connection {
    /// The connection's id, unique within its endpoint.
    pub fn id(&self) -> ConnectionId {
        self.shared.id
    }

    /// Who dialed.
    pub fn direction(&self) -> Direction {
        self.shared.direction
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.shared.remote_addr
    }

    /// The `Hello` the peer sent in the handshake.
    pub fn remote_hello(&self) -> &Hello {
        &self.shared.remote_hello
    }

    /// The peer's node id.
    pub fn node_id(&self) -> NodeId {
        self.shared.remote_hello.node_id
    }

    /// When the handshake completed.
    pub fn established_at(&self) -> Instant {
        self.shared.established_at
    }

    /// The sealer of best-effort datagrams to this peer (TLS connections only): see
    /// [`DatagramSocket::try_send_sealed_to`](crate::DatagramSocket::try_send_sealed_to).
    pub fn datagram_sealer(&self) -> Option<&crate::Sealer> {
        self.shared.datagram_keys.as_ref().map(|k| &*k.sealer)
    }

    /// The opener of the peer's sealed datagrams (TLS connections only), once: the first call
    /// takes it, later calls return `None` (one receiver, one replay window).
    pub fn take_datagram_opener(&self) -> Option<crate::Opener> {
        let keys = self.shared.datagram_keys.as_ref()?;
        keys.opener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// When the peer's certificate expires (TLS connections only); the connection is closed
    /// then.
    pub fn peer_valid_until(&self) -> Option<std::time::SystemTime> {
        self.shared.peer_valid_until
    }

    /// Whether the connection has ended (its [`Event::Closed`] is sent or about to be).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire) || self.tx.is_closed()
    }

    /// Waits until the connection's writer has stopped (the connection is closed or closing).
    pub async fn closed(&self) {
        self.tx.closed().await;
    }

    /// A snapshot of the connection's counters.
    pub fn stats(&self) -> TrafficStats {
        self.shared.traffic.snapshot()
    }

    /// Frames waiting in the send queue now.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Queues `frame`, waiting while the send queue is full (backpressure).
    ///
    /// A `Goodbye` frame closes the connection like [`Connection::close`]. Fails with
    /// [`SendError::Encode`] when the frame exceeds the maximum frame length, and with
    /// [`SendError::Closed`] when the connection is closed.
    pub fn send(&self, frame: Frame) -> impl Future<Output = Result<(), SendError>> + Send + '_ {
        // The common case, room in the queue, is done before the future is made: the frame is
        // moved once into the queue rather than through the states of two futures.
        finish(self.send_now(frame))
    }

    /// Queues `frame` if that needs no waiting, and returns `None`; when the send queue is full,
    /// returns the frame as a [`SendWait`] that queues it once there is room when awaited (or
    /// drops it if dropped). Fails like [`send`](Self::send).
    ///
    /// For callers that do the common case without making a future, such as a node publishing:
    /// a future that held the wait would be moved, whole, at every await of its callers.
    pub fn send_now(&self, frame: Frame) -> Result<Option<SendWait>, SendError> {
        let item = self.prepare(frame)?;
        self.started(self.queue_now(item))
    }

    /// Queues `frame` if the send queue has room, or fails at once with [`SendError::Full`].
    pub fn try_send(&self, frame: Frame) -> Result<(), SendError> {
        let item = self.prepare(frame)?;
        self.try_queue(item)
    }

    /// Queues an already encoded frame, waiting while the send queue is full. Large frames are
    /// written straight from their bytes, without a copy.
    pub fn send_encoded(
        &self,
        frame: EncodedFrame,
    ) -> impl Future<Output = Result<(), SendError>> + Send + '_ {
        finish(self.send_encoded_now(frame))
    }

    /// [`send_now`](Self::send_now) for a published message (`Frame::Publish`), which the
    /// writer encodes straight into its buffer.
    pub fn send_message_now(&self, message: Message) -> Result<Option<SendWait>, SendError> {
        check_message_len(&message, self.shared.max_frame_len)?;
        self.started(self.queue_now(Outgoing::Message(message)))
    }

    /// [`send_now`](Self::send_now) for an already encoded frame.
    pub fn send_encoded_now(&self, frame: EncodedFrame) -> Result<Option<SendWait>, SendError> {
        self.check_encoded(&frame)?;
        self.started(self.queue_now(Outgoing::Encoded(frame.0)))
    }

    /// Queues an already encoded frame if the send queue has room, or fails with
    /// [`SendError::Full`].
    pub fn try_send_encoded(&self, frame: EncodedFrame) -> Result<(), SendError> {
        self.check_encoded(&frame)?;
        self.try_queue(Outgoing::Encoded(frame.0))
    }

    /// Closes the connection gracefully: every frame queued before is written, then a `Goodbye`
    /// with `reason`, then the stream is shut down. Waits for room in the send queue, not for the
    /// close to complete (see [`Connection::closed`]). Does nothing if the connection is already
    /// closed.
    ///
    /// The connection leaves the endpoint's table at once: from this call on, a new connection
    /// from the same node is not a duplicate of this one. A peer that may never read again (one
    /// that timed out) should be [aborted](Connection::abort) instead, which never waits.
    pub async fn close(&self, reason: GoodbyeReason, message: impl Into<String>) {
        self.shared.leave_table();
        let goodbye = Goodbye {
            reason,
            message: message.into(),
        };
        let _ = self.queue(Outgoing::Close(goodbye)).await;
    }

    /// Ends the connection now, without waiting for anything: it leaves the endpoint's table at
    /// once, its reader stops, and a `Goodbye` with `reason` is written only if the writer can
    /// take it at once (best effort, within 100 ms); frames still queued are dropped and counted
    /// as unsent. Its [`Event::Closed`](crate::Event::Closed) follows as for a local goodbye. For
    /// a peer that stopped reading or answering, where a graceful close could wait forever for
    /// room in the send queue. Does nothing if the connection is already closed.
    pub fn abort(&self, reason: GoodbyeReason, message: impl Into<String>) {
        self.shared.leave_table();
        {
            let mut slot = self
                .shared
                .abort
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if slot.is_none() {
                *slot = Some(Goodbye {
                    reason,
                    message: message.into(),
                });
            }
        }
        self.shared.abort_signal.notify_one();
    }

    async fn queue(&self, item: Outgoing) -> Result<(), SendError> {
        finish(self.started(self.queue_now(item))).await
    }

    /// What [`queue_now`](Self::queue_now) left to do: nothing, or the wait for room. A refusal
    /// is returned at once.
    fn started(&self, queued: Queued) -> Result<Option<SendWait>, SendError> {
        match queued {
            Queued::Done(result) => result.map(|()| None),
            Queued::Wait(item) => Ok(Some(SendWait {
                connection: self.clone(),
                item,
            })),
        }
    }

    /// The rest of [`queue`](Self::queue) for an item [`queue_now`](Self::queue_now) gave
    /// back: waits for room in bytes (an item the byte bound counts) and in the queue.
    async fn queue_waiting(&self, item: Outgoing) -> Result<(), SendError> {
        let size = item.size();
        if size != 0 {
            self.wait_for_bytes(size).await?;
            self.shared.queued_bytes.fetch_add(size, Ordering::AcqRel);
        }
        let in_flight = InFlight::new(&self.shared.write.inflight);
        // Most of the time there is room: skip the machinery of waiting.
        match self.tx.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(item)) => {
                self.tx.send(item).await.map_err(|_| SendError::Closed)?;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(SendError::Closed),
        }
        in_flight.queued();
        Ok(())
    }

    /// Queues `item` if that needs no waiting: a direct write, or room in the queue (in frames
    /// and, for an item the byte bound counts, in bytes); else gives it back, for
    /// [`queue_waiting`](Self::queue_waiting).
    fn queue_now(&self, item: Outgoing) -> Queued {
        if let Some(result) = self.try_direct(&item) {
            return Queued::Done(result);
        }
        let size = item.size();
        if size != 0 && !self.bytes_fit(size) {
            return Queued::Wait(item);
        }
        let in_flight = InFlight::new(&self.shared.write.inflight);
        match self.tx.try_reserve() {
            Ok(permit) => {
                // Counted before the item is in the queue, so that the writer, which subtracts
                // it when it takes the item, never sees less than it takes.
                if size != 0 {
                    self.shared.queued_bytes.fetch_add(size, Ordering::AcqRel);
                }
                permit.send(item);
                in_flight.queued();
                Queued::Done(Ok(()))
            }
            Err(mpsc::error::TrySendError::Full(())) => Queued::Wait(item),
            Err(mpsc::error::TrySendError::Closed(())) => Queued::Done(Err(SendError::Closed)),
        }
    }

    fn try_queue(&self, item: Outgoing) -> Result<(), SendError> {
        match self.queue_now(item) {
            Queued::Done(result) => result,
            Queued::Wait(_) => Err(SendError::Full),
        }
    }

    /// Waits until `size` more bytes fit in the send queue's byte bound.
    async fn wait_for_bytes(&self, size: usize) -> Result<(), SendError> {
        loop {
            // Registered before the check, so that room made in between is not missed.
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.bytes_fit(size) {
                return Ok(());
            }
            if self.is_closed() {
                return Err(SendError::Closed);
            }
            room.await;
        }
    }

    /// Whether `size` more bytes fit in the send queue's byte bound (an empty queue takes any
    /// one frame, however large: the frame limit bounds it).
    fn bytes_fit(&self, size: usize) -> bool {
        let queued = self.shared.queued_bytes.load(Ordering::Acquire);
        queued == 0 || queued + size <= self.shared.max_queued_bytes
    }

    /// Bytes waiting in the send queue now.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Acquire)
    }

    /// The direct path: when nothing is queued or being written, write a small frame from the
    /// caller's task (one non-blocking write call) instead of waking the writer task. Whatever the
    /// socket does not take at once is left to the writer task. `None`: use the queue.
    fn try_direct(&self, item: &Outgoing) -> Option<Result<(), SendError>> {
        let side = &self.shared.write;
        if side.inflight.load(Ordering::Acquire) != 0 || self.shared.closed.load(Ordering::Acquire)
        {
            return None;
        }
        let mut state = side.state.try_lock().ok()?;
        if state.done || !state.leftover.is_empty() || side.inflight.load(Ordering::Acquire) != 0 {
            return None;
        }
        // A write moments ago means frames are streaming: leave them to the writer task, which
        // coalesces them, rather than making a write call per frame.
        let now = Instant::now();
        if state.last_write.is_some_and(|at| now - at < DIRECT_IDLE) {
            return None;
        }
        let state = &mut *state;
        state.last_write = Some(now);
        match item {
            Outgoing::Message(m) if m.payload.len() < ZERO_COPY_MIN => {
                encode_message(m, &mut state.buf, self.shared.max_frame_len).ok()?;
            }
            Outgoing::Encoded(bytes) if bytes.len() < ZERO_COPY_MIN => {
                state.buf.extend_from_slice(bytes);
            }
            _ => return None,
        }
        let bytes = state.buf.split().freeze();
        let mut cx = Context::from_waker(Waker::noop());
        for traffic in [&self.shared.traffic, &*self.shared.endpoint_traffic] {
            add(&traffic.write_calls, 1);
            add(&traffic.frames_out, 1);
            add(&traffic.bytes_out, bytes.len() as u64);
        }
        match state.io.as_mut().poll_write(&mut cx, &bytes) {
            Poll::Ready(Ok(n)) if n == bytes.len() => {
                if !matches!(state.io.as_mut().poll_flush(&mut cx), Poll::Ready(Ok(()))) {
                    state.needs_flush = true;
                    side.wake.notify_one();
                }
            }
            Poll::Ready(Ok(n)) => {
                state.leftover.push(bytes.slice(n..));
                side.wake.notify_one();
            }
            Poll::Pending => {
                state.leftover.push(bytes);
                side.wake.notify_one();
            }
            Poll::Ready(Err(error)) => {
                state.error = Some(error);
                state.done = true;
                side.wake.notify_one();
                return Some(Err(SendError::Closed));
            }
        }
        state.buf.clear();
        Some(Ok(()))
    }

    fn check_encoded(&self, frame: &EncodedFrame) -> Result<(), SendError> {
        let len = frame.0.len().saturating_sub(LENGTH_PREFIX_LEN);
        if len > self.shared.max_frame_len {
            return Err(SendError::Encode(EncodeError::FrameTooLarge {
                len,
                max: self.shared.max_frame_len,
            }));
        }
        Ok(())
    }

    fn prepare(&self, frame: Frame) -> Result<Outgoing, SendError> {
        let max = self.shared.max_frame_len;
        match frame {
            Frame::Publish(message) => {
                check_message_len(&message, max)?;
                Ok(Outgoing::Message(message))
            }
            Frame::Goodbye(goodbye) => Ok(Outgoing::Close(goodbye)),
            other => {
                let mut buf = BytesMut::new();
                encode_frame(&other, &mut buf, max)?;
                Ok(Outgoing::Encoded(buf.freeze()))
            }
        }
    }
}

/// The rest of a send once [`Connection::send_now`] (or a sibling) has done what needs no
/// waiting: nothing, or the wait for room.
async fn finish(now: Result<Option<SendWait>, SendError>) -> Result<(), SendError> {
    match now? {
        None => Ok(()),
        Some(wait) => wait.await,
    }
}

/// Checks that `message` encodes within `max` body bytes, cheaply: an upper bound of the
/// envelope's size first, the exact size only when the bound is over the limit.
fn check_message_len(message: &Message, max: usize) -> Result<(), EncodeError> {
    // Frame key and length, topic, publisher, sequence, timestamp, hop limit, hops and payload
    // keys and lengths take at most 80 bytes besides the topic and payload bytes; a header at most
    // 18 besides its key and value.
    let headers: usize = message
        .headers
        .iter()
        .map(|h| h.key.len() + h.value.len() + 18)
        .sum();
    let bound = 80 + message.topic.len() + message.payload.len() + headers;
    if bound <= max {
        return Ok(());
    }
    let mut head = BytesMut::new();
    encode_message_head(message, &mut head, max)
}

/// Everything a connection's task needs.
pub(crate) struct Parts<S> {
    pub(crate) reader: ReadHalf<S>,
    pub(crate) leftover: BytesMut,
    pub(crate) connection: Connection,
    pub(crate) rx: mpsc::Receiver<Outgoing>,
    pub(crate) inner: Arc<Inner>,
    /// Released when the task ends (an inbound or outbound slot).
    pub(crate) permit: (
        tokio::sync::OwnedSemaphorePermit,
        Option<crate::endpoint::IpSlot>,
    ),
}

/// The connection's task: announces it, spawns the writer, reads until the end, reports the end
/// once, and unregisters the connection.
pub(crate) async fn run<S>(parts: Parts<S>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Parts {
        mut reader,
        leftover,
        connection,
        rx,
        inner,
        permit,
    } = parts;
    let shared = connection.shared.clone();
    let config = inner.config.clone();
    let (stop_tx, stop_rx) = oneshot::channel();
    let mut writer: JoinHandle<WriterExit> = tokio::spawn(write_loop(
        rx,
        stop_rx,
        shared.clone(),
        inner.clone(),
        config.max_write_batch,
    ));
    let events = inner.events.clone();
    let announced = events.send(Event::Connected(connection)).await.is_ok();

    let mut buf = leftover;
    let mut writer_done = None;
    let mut aborted = false;
    let mut batch_bytes = buf.len() as u64;
    let reason = 'conn: loop {
        // Decode everything buffered, into a vector sized from the first frame's length.
        let estimate = peek_frame(&buf, shared.limits)
            .ok()
            .flatten()
            .map_or(0, |len| buf.len() / (LENGTH_PREFIX_LEN + len.max(1)) + 1);
        let mut frames = Vec::with_capacity(estimate.min(4096));
        let mut end = None;
        loop {
            match decode_frame_limited(&mut buf, shared.limits) {
                Ok(Some(Frame::Goodbye(goodbye))) => {
                    end = Some(CloseReason::Goodbye {
                        by: Side::Remote,
                        reason: goodbye.reason,
                        message: goodbye.message,
                    });
                    break;
                }
                Ok(Some(Frame::Hello(_))) => {
                    end = Some(CloseReason::Lost(LostCause::UnexpectedHello));
                    break;
                }
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(error) => {
                    shared.traffic.rejected_in.add(error.cause());
                    inner.traffic.rejected_in.add(error.cause());
                    end = Some(CloseReason::Lost(LostCause::Decode(error)));
                    break;
                }
            }
        }
        if batch_bytes != 0 {
            add(&shared.traffic.bytes_in, batch_bytes);
            add(&inner.traffic.bytes_in, batch_bytes);
        }
        if !frames.is_empty() {
            let n = frames.len() as u64;
            add(&shared.traffic.frames_in, n);
            add(&inner.traffic.frames_in, n);
            let event = Event::Frames {
                connection: shared.id,
                frames,
            };
            // Waits while the event queue is full: we stop reading, TCP pushes back on the peer.
            if events.send(event).await.is_err() {
                break 'conn local_goodbye(GoodbyeReason::Shutdown, "the endpoint is gone");
            }
        }
        if let Some(end) = end {
            break end;
        }

        // Make room: a read-buffer's worth, or what the pending frame still needs (its length is
        // already checked against the maximum).
        let pending = peek_frame(&buf, shared.limits)
            .ok()
            .flatten()
            .map_or(0, |len| (LENGTH_PREFIX_LEN + len).saturating_sub(buf.len()));
        // Never more than what has already arrived (doubling), whatever the prefix claims: a
        // peer that announces a large frame costs memory only as it sends the bytes.
        let want = pending
            .min(buf.len().max(config.read_buffer))
            .max(config.read_buffer / 4);
        if buf.capacity() - buf.len() < want {
            buf.reserve(want.max(config.read_buffer));
        }
        tokio::select! {
            // An abort first: a peer that floods us must not keep the connection alive. Then read
            // before the writer: when the peer's goodbye has arrived and our writer has meanwhile
            // failed on the reset that followed it, the goodbye is what happened.
            biased;
            () = shared.abort_signal.notified() => {
                let Some(goodbye) = shared.take_abort() else {
                    continue;
                };
                aborted = true;
                break CloseReason::Goodbye {
                    by: Side::Local,
                    reason: goodbye.reason,
                    message: goodbye.message,
                };
            }
            read = reader.read_buf(&mut buf) => {
                let lost = match read {
                    Ok(0) if buf.is_empty() => LostCause::Eof,
                    Ok(0) => LostCause::Truncated { buffered: buf.len() },
                    Ok(n) => {
                        // Counted once decoded, at the top of the loop.
                        batch_bytes = n as u64;
                        add(&shared.traffic.read_calls, 1);
                        continue;
                    }
                    Err(e) => LostCause::Read(e),
                };
                // After our goodbye, the peer closing is the expected answer: report the goodbye
                // once the writer has finished with it.
                if shared.write.goodbye_sent.load(Ordering::Acquire) {
                    let wait = config.linger.max(Duration::from_millis(100));
                    if let Ok(exit) = tokio::time::timeout(wait, &mut writer).await {
                        writer_done = Some(());
                        if let Ok(WriterExit::Goodbye(g)) = exit {
                            break CloseReason::Goodbye {
                                by: Side::Local,
                                reason: g.reason,
                                message: g.message,
                            };
                        }
                    }
                }
                break CloseReason::Lost(lost);
            }
            exit = &mut writer => {
                writer_done = Some(());
                break match exit {
                    Ok(WriterExit::Goodbye(g)) => CloseReason::Goodbye {
                        by: Side::Local,
                        reason: g.reason,
                        message: g.message,
                    },
                    Ok(WriterExit::Error(e)) => CloseReason::Lost(LostCause::Write(e)),
                    Ok(WriterExit::Stopped) | Err(_) => CloseReason::Lost(LostCause::Write(
                        io::Error::other("the writer task ended unexpectedly"),
                    )),
                };
            }
        }
    };
    shared.closed.store(true, Ordering::Release);
    // Senders waiting for room in bytes see the end.
    shared.room.notify_waiters();

    // Stop the writer (unless it ended first), telling the peer why when it broke the protocol.
    if writer_done.is_none() {
        let goodbye = match &reason {
            CloseReason::Lost(LostCause::Decode(e)) => Some(Goodbye {
                reason: GoodbyeReason::ProtocolError,
                message: e.to_string(),
            }),
            CloseReason::Lost(LostCause::UnexpectedHello) => Some(Goodbye {
                reason: GoodbyeReason::ProtocolError,
                message: "unexpected hello".to_owned(),
            }),
            CloseReason::Goodbye {
                by: Side::Local,
                reason,
                message,
            } => Some(Goodbye {
                reason: *reason,
                message: message.clone(),
            }),
            _ => None,
        };
        let _ = stop_tx.send(Stop { goodbye });
        // An aborted connection's peer may never read: give the goodbye only a moment.
        let wait = if aborted {
            ABORT_GOODBYE_WAIT
        } else {
            config.linger.max(Duration::from_millis(100))
        };
        if tokio::time::timeout(wait, &mut writer).await.is_err() {
            writer.abort();
        }
    }

    let node_id = shared.remote_hello.node_id;
    match &reason {
        CloseReason::Goodbye {
            by, reason: why, ..
        } => {
            debug!(connection = %shared.id, node = %node_id.short(), ?by, reason = %why, "connection closed");
            match by {
                Side::Local => add(&inner.counters.goodbyes_sent, 1),
                Side::Remote => add(&inner.counters.goodbyes_received, 1),
            }
        }
        CloseReason::Lost(cause) => {
            debug!(connection = %shared.id, node = %node_id.short(), %cause, "connection lost");
            inner.counters.lost.add(cause.cause());
        }
    }
    inner.unregister(&shared);
    // The slot is free once the end is reported (a lingering socket is bounded by time instead).
    drop(permit);
    let linger = !aborted
        && matches!(
            reason,
            CloseReason::Goodbye {
                by: Side::Local,
                ..
            }
        );
    if announced {
        let _ = events
            .send(Event::Closed {
                connection: shared.id,
                node_id,
                reason,
            })
            .await;
    }
    // After our goodbye, drain until the peer closes (or the linger time is up), so that the
    // goodbye is not destroyed by a reset for unread data.
    if linger && !config.linger.is_zero() {
        let drain = async {
            let mut scratch = BytesMut::with_capacity(16 << 10);
            loop {
                scratch.clear();
                match reader.read_buf(&mut scratch).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(config.linger, drain).await;
    }
}

fn local_goodbye(reason: GoodbyeReason, message: &str) -> CloseReason {
    CloseReason::Goodbye {
        by: Side::Local,
        reason,
        message: message.to_owned(),
    }
}

/// The writer task: drains the send queue in batches, encodes into one buffer (large payloads
/// stay separate slices) and writes each batch with as few (vectored) write calls as possible.
async fn write_loop(
    mut rx: mpsc::Receiver<Outgoing>,
    mut stop: oneshot::Receiver<Stop>,
    shared: Arc<Shared>,
    inner: Arc<Inner>,
    max_batch: usize,
) -> WriterExit {
    let side = &shared.write;
    let max_frame_len = shared.max_frame_len.min(MAX_FRAME_LEN_LIMIT);
    let zero_copy = side.state.lock().await.io.is_write_vectored();
    // Grown by `recv_many` as needed, so that an idle connection holds little memory.
    let mut items: Vec<Outgoing> = Vec::new();
    let mut segments: Vec<Bytes> = Vec::new();
    loop {
        let received = tokio::select! {
            biased;
            stop = &mut stop => {
                let goodbye = stop.ok().and_then(|s| s.goodbye);
                count_unsent(&mut rx, &items, &shared, &inner);
                let mut state = side.state.lock().await;
                state.done = true;
                if let Some(goodbye) = goodbye {
                    let mut out = BytesMut::new();
                    if encode_frame(&Frame::Goodbye(goodbye), &mut out, max_frame_len).is_ok() {
                        let _ = state.io.write_all(&out).await;
                    }
                }
                let _ = state.io.shutdown().await;
                return WriterExit::Stopped;
            }
            () = side.wake.notified() => None,
            n = rx.recv_many(&mut items, RECV_BATCH) => Some(n),
        };
        let mut taken = received.unwrap_or(0);
        if received == Some(0) {
            // Every handle is gone (the endpoint dropped the connection): close politely.
            items.push(Outgoing::Close(Goodbye {
                reason: GoodbyeReason::NotNeeded,
                message: String::new(),
            }));
        }
        // The queue only grows while we write, so its depth now is its peak since the last drain.
        let depth = (items.len() + rx.len()) as u64;
        raise(&shared.traffic.queue_high_water, depth);
        raise(&inner.traffic.queue_high_water, depth);

        let mut guard = side.state.lock().await;
        let state = &mut *guard;
        if let Some(error) = state.error.take() {
            count_unsent(&mut rx, &items, &shared, &inner);
            return WriterExit::Error(error);
        }
        // What a direct write left goes first (already counted as sent by the direct path).
        let leftover: u64 = state.leftover.iter().map(|s| s.len() as u64).sum();
        segments.append(&mut state.leftover);
        let needs_flush = std::mem::take(&mut state.needs_flush);
        let buf = &mut state.buf;
        let mut frames = 0u64;
        let mut pending = 0usize;
        let mut goodbye = None;
        let mut taken_bytes = 0usize;
        'gather: loop {
            let mut drained = items.drain(..);
            for item in drained.by_ref() {
                taken_bytes += item.size();
                match item {
                    Outgoing::Message(message) => {
                        let result = if zero_copy && message.payload.len() >= ZERO_COPY_MIN {
                            encode_message_head(&message, buf, max_frame_len).map(|()| {
                                segments.push(buf.split().freeze());
                                pending += message.payload.len();
                                segments.push(message.payload);
                            })
                        } else {
                            encode_message(&message, buf, max_frame_len)
                        };
                        match result {
                            Ok(()) => frames += 1,
                            Err(error) => {
                                // Checked when queued: cannot happen, but never panic on it.
                                debug!(connection = %shared.id, %error, "dropped an unencodable message");
                                add(&shared.traffic.unsent, 1);
                            }
                        }
                    }
                    Outgoing::Encoded(bytes) => {
                        if zero_copy && bytes.len() >= ZERO_COPY_MIN {
                            if !buf.is_empty() {
                                segments.push(buf.split().freeze());
                            }
                            pending += bytes.len();
                            segments.push(bytes);
                        } else {
                            buf.extend_from_slice(&bytes);
                        }
                        frames += 1;
                    }
                    Outgoing::Close(g) => {
                        side.goodbye_sent.store(true, Ordering::Release);
                        goodbye = Some(g);
                        break;
                    }
                }
            }
            let rest = drained.len() as u64;
            drop(drained);
            if goodbye.is_some() {
                add(&shared.traffic.unsent, rest);
                break 'gather;
            }
            if buf.len() + pending >= max_batch || rx.is_empty() {
                break 'gather;
            }
            // More was queued meanwhile: take it into this write without waiting.
            taken += rx.recv_many(&mut items, RECV_BATCH).await;
        }
        if let Some(g) = &goodbye {
            if encode_frame(&Frame::Goodbye(g.clone()), buf, max_frame_len).is_err() {
                // An over-long goodbye message: say goodbye without it.
                let bare = Goodbye {
                    reason: g.reason,
                    message: String::new(),
                };
                let _ = encode_frame(&Frame::Goodbye(bare), buf, max_frame_len);
            }
        }
        if !buf.is_empty() {
            segments.push(buf.split().freeze());
        }
        let bytes: u64 = segments.iter().map(|s| s.len() as u64).sum::<u64>() - leftover;
        let written = match write_segments(state.io.as_mut(), &mut segments).await {
            Ok(calls) if calls > 0 || needs_flush => state.io.flush().await.map(|()| calls),
            other => other,
        };
        match written {
            Ok(calls) => {
                add(&shared.traffic.write_calls, calls);
                add(&shared.traffic.frames_out, frames);
                add(&shared.traffic.bytes_out, bytes);
                add(&inner.traffic.write_calls, calls);
                add(&inner.traffic.frames_out, frames);
                add(&inner.traffic.bytes_out, bytes);
                trace!(connection = %shared.id, frames, bytes, calls, "wrote a batch");
            }
            Err(error) => {
                state.done = true;
                add(&shared.traffic.unsent, frames);
                count_unsent(&mut rx, &items, &shared, &inner);
                return WriterExit::Error(error);
            }
        }
        state.last_write = Some(Instant::now());
        // Reclaim the buffer (the written slices are gone) for the next batch.
        state.buf.reserve(max_batch.min(64 << 10));
        // Written: the direct path may be used again once nothing else is in flight, and the
        // bytes are out of the queue.
        side.inflight.fetch_sub(taken, Ordering::AcqRel);
        if taken_bytes != 0 {
            shared.queued_bytes.fetch_sub(taken_bytes, Ordering::AcqRel);
            shared.room.notify_waiters();
        }
        let streaming = frames > 1;
        if let Some(goodbye) = goodbye {
            state.done = true;
            count_unsent(&mut rx, &items, &shared, &inner);
            let _ = state.io.flush().await;
            let _ = state.io.shutdown().await;
            return WriterExit::Goodbye(goodbye);
        }
        drop(guard);
        // Frames are streaming: give the senders a moment to queue more rather than going to
        // sleep and being woken (a cross-thread wake-up) for the next few.
        if streaming && rx.is_empty() {
            tokio::task::yield_now().await;
        }
    }
}

/// Counts (and drops) the frames that will never be written.
fn count_unsent(
    rx: &mut mpsc::Receiver<Outgoing>,
    items: &[Outgoing],
    shared: &Shared,
    inner: &Inner,
) {
    rx.close();
    let mut n = items.len() as u64;
    while rx.try_recv().is_ok() {
        n += 1;
    }
    add(&shared.traffic.unsent, n);
    add(&inner.traffic.unsent, n);
}

/// Writes every segment, with vectored writes of up to [`MAX_IOVECS`] slices; returns the number
/// of write calls. Empties `segments`.
async fn write_segments(
    mut writer: Pin<&mut (dyn AsyncWrite + Send)>,
    segments: &mut Vec<Bytes>,
) -> io::Result<u64> {
    let mut calls = 0;
    let mut first = 0;
    while first < segments.len() {
        let n = if segments.len() - first == 1 {
            writer.write(&segments[first]).await?
        } else {
            let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (slot, segment) in iov.iter_mut().zip(&segments[first..]) {
                *slot = IoSlice::new(segment);
                count += 1;
            }
            writer.write_vectored(&iov[..count]).await?
        };
        calls += 1;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut n = n;
        while n > 0 {
            let len = segments[first].len();
            if n >= len {
                n -= len;
                first += 1;
            } else {
                segments[first].advance(n);
                n = 0;
            }
        }
    }
    segments.clear();
    Ok(calls)
}

#[cfg(test)]
mod tests {
    use chaski_wire::{Header, Topic};

    use super::*;

    fn message(topic: &str, payload: usize, headers: Vec<Header>) -> Message {
        Message {
            topic: Topic::new(topic).unwrap(),
            payload: Bytes::from(vec![1u8; payload]),
            publisher: NodeId::from_u128(u128::MAX),
            sequence: u64::MAX,
            incarnation: 0,
            timestamp_micros: u64::MAX,
            hop_limit: u32::MAX,
            hops: u32::MAX,
            headers,
        }
    }

    /// The cheap bound must never let through a message that does not encode, and must accept
    /// every message that does.
    #[test]
    fn the_length_check_agrees_with_the_encoder() {
        let header = |k: &str, v: usize| Header {
            key: k.to_owned(),
            value: Bytes::from(vec![2u8; v]),
        };
        let long_topic = "t".repeat(1000);
        let cases = [
            message("a", 0, vec![]),
            message("a", 100, vec![]),
            message(&long_topic, 300, vec![]),
            message(
                "a",
                10,
                vec![header("k", 0), header("", 5), header("key", 200)],
            ),
        ];
        for m in cases {
            let mut exact = BytesMut::new();
            encode_message(&m, &mut exact, usize::MAX).unwrap();
            let len = exact.len() - LENGTH_PREFIX_LEN;
            for max in [len - 1, len, len + 1, len + 100] {
                let checked = check_message_len(&m, max).is_ok();
                let encodes = encode_message(&m, &mut BytesMut::new(), max).is_ok();
                assert_eq!(checked, encodes, "len {len}, max {max}");
            }
        }
    }
}
