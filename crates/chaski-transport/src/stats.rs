//! Counters: lock-free atomics updated once per read or write call (not per frame), and the plain
//! snapshots `stats()` returns.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

/// Every cause label the transport counts (decode, handshake and loss causes). A label not in
/// this list is counted as `other`.
const CAUSES: [&str; 35] = [
    "too_large",
    "malformed",
    "unknown_kind",
    "version",
    "magic",
    "invalid_field",
    "datagram_length",
    "timeout",
    "eof",
    "io",
    "unexpected_frame",
    "refused",
    "unexpected_peer",
    "plaintext_peer",
    "tls_peer",
    "tls",
    "identity_mismatch",
    "wrong_network_key",
    "unknown_ca",
    "self_signed",
    "certificate_expired",
    "certificate_revoked",
    "certificate_refused",
    "untagged",
    "bad_tag",
    "unexpected_tag",
    "unauthenticated",
    "replayed",
    "no_session",
    "truncated",
    "read",
    "write",
    "unexpected_hello",
    "empty",
    "other",
];

/// Counters keyed by a cause label, fixed size (no allocation, no lock).
#[derive(Debug)]
pub(crate) struct CauseCounters([AtomicU64; CAUSES.len()]);

impl Default for CauseCounters {
    fn default() -> CauseCounters {
        CauseCounters(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl CauseCounters {
    pub(crate) fn add(&self, cause: &str) {
        let index = CAUSES
            .iter()
            .position(|c| *c == cause)
            .unwrap_or(CAUSES.len() - 1);
        self.0[index].fetch_add(1, Relaxed);
    }

    pub(crate) fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub(crate) fn snapshot(&self) -> Causes {
        Causes(
            CAUSES
                .iter()
                .zip(&self.0)
                .filter_map(|(cause, n)| {
                    let n = n.load(Relaxed);
                    (n != 0).then_some((*cause, n))
                })
                .collect(),
        )
    }
}

/// Counts by cause label (only the non-zero ones are present).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Causes(pub BTreeMap<&'static str, u64>);

impl Causes {
    /// The count for `cause` (0 when it never happened).
    pub fn get(&self, cause: &str) -> u64 {
        self.0.get(cause).copied().unwrap_or(0)
    }

    /// The sum over every cause.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// Traffic counters shared by connections and the endpoint.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    pub(crate) frames_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) frames_out: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) read_calls: AtomicU64,
    pub(crate) write_calls: AtomicU64,
    pub(crate) queue_high_water: AtomicU64,
    pub(crate) rejected_in: CauseCounters,
    pub(crate) unsent: AtomicU64,
}

impl Traffic {
    pub(crate) fn snapshot(&self) -> TrafficStats {
        TrafficStats {
            frames_in: self.frames_in.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            frames_out: self.frames_out.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            read_calls: self.read_calls.load(Relaxed),
            write_calls: self.write_calls.load(Relaxed),
            queue_high_water: self.queue_high_water.load(Relaxed),
            rejected_in: self.rejected_in.snapshot(),
            unsent: self.unsent.load(Relaxed),
        }
    }
}

/// A snapshot of traffic counters, of one connection ([`Connection::stats`](crate::Connection::stats))
/// or summed over an endpoint's connections ([`EndpointStats::traffic`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TrafficStats {
    /// Frames received (after the handshake).
    pub frames_in: u64,
    /// Bytes received (after the handshake), length prefixes included.
    pub bytes_in: u64,
    /// Frames written to the socket.
    pub frames_out: u64,
    /// Bytes written to the socket, length prefixes included.
    pub bytes_out: u64,
    /// Read calls that returned data.
    pub read_calls: u64,
    /// Write calls issued; `frames_out / write_calls` is the coalescing factor.
    pub write_calls: u64,
    /// The most frames ever waiting in a send queue.
    pub queue_high_water: u64,
    /// Received frames rejected, by [`DecodeError::cause`](chaski_wire::DecodeError::cause) (each
    /// closes its connection).
    pub rejected_in: Causes,
    /// Frames queued but never written because the connection ended first.
    pub unsent: u64,
}

/// Endpoint-wide counters (connections, handshakes).
#[derive(Debug, Default)]
pub(crate) struct EndpointCounters {
    pub(crate) accepted: AtomicU64,
    pub(crate) inbound_refused: AtomicU64,
    pub(crate) refused_per_ip: AtomicU64,
    pub(crate) dialed: AtomicU64,
    pub(crate) dial_failures: AtomicU64,
    pub(crate) handshake_failures: CauseCounters,
    pub(crate) self_connections: AtomicU64,
    pub(crate) certificates_expired: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) established: AtomicU64,
    pub(crate) goodbyes_received: AtomicU64,
    pub(crate) goodbyes_sent: AtomicU64,
    pub(crate) lost: CauseCounters,
}

/// A snapshot of an endpoint's counters, from [`Endpoint::stats`](crate::Endpoint::stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// TCP connections accepted (including those later refused or failing their handshake).
    pub accepted: u64,
    /// Inbound connections refused because the inbound limit was reached.
    pub inbound_refused: u64,
    /// Inbound connections refused because their address had reached its limit
    /// ([`Config::max_inbound_per_ip`](crate::Config::max_inbound_per_ip) or
    /// [`Config::max_handshakes_per_ip`](crate::Config::max_handshakes_per_ip)).
    pub refused_per_ip: u64,
    /// Dials started.
    pub dialed: u64,
    /// Dials that did not produce a TCP connection (refused, timed out).
    pub dial_failures: u64,
    /// Failed handshakes, by [`HandshakeError::cause`](crate::HandshakeError::cause).
    pub handshake_failures: Causes,
    /// Connections found to go to this node itself (counted on each end of it).
    pub self_connections: u64,
    /// Connections closed because the peer's certificate expired while they were up.
    pub certificates_expired: u64,
    /// Connections closed because they duplicated another connection to the same node.
    pub duplicates: u64,
    /// Connections established since the endpoint started.
    pub established: u64,
    /// Established inbound connections open now.
    pub inbound_open: u64,
    /// Established outbound connections open now.
    pub outbound_open: u64,
    /// Connections closed by the peer's `Goodbye`.
    pub goodbyes_received: u64,
    /// Connections closed by our `Goodbye`.
    pub goodbyes_sent: u64,
    /// Connections lost, by [`LostCause::cause`](crate::LostCause::cause).
    pub lost: Causes,
    /// Traffic summed over every connection the endpoint ever had.
    pub traffic: TrafficStats,
    /// UDP counters.
    pub datagrams: DatagramStats,
}

/// UDP counters.
#[derive(Debug, Default)]
pub(crate) struct DatagramCounters {
    pub(crate) received: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) dropped: CauseCounters,
    pub(crate) send_errors: AtomicU64,
}

impl DatagramCounters {
    pub(crate) fn snapshot(&self) -> DatagramStats {
        DatagramStats {
            received: self.received.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            sent: self.sent.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            dropped: self.dropped.snapshot(),
            send_errors: self.send_errors.load(Relaxed),
        }
    }
}

/// A snapshot of a UDP socket's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DatagramStats {
    /// Valid datagrams received and handed up.
    pub received: u64,
    /// Bytes of the valid datagrams received.
    pub bytes_in: u64,
    /// Datagrams sent.
    pub sent: u64,
    /// Bytes of the datagrams sent.
    pub bytes_out: u64,
    /// Datagrams dropped on receipt, by cause: `too_large` (over the maximum datagram length),
    /// `datagram_length` (truncated or padded), `empty`; in a closed network `untagged` (a
    /// frame without the network's tag: an outsider's beacon) and `bad_tag`; `unexpected_tag`
    /// (a tagged frame in an open network); for sealed datagrams `unauthenticated` (it does
    /// not open with its connection's key), `replayed` (seen before, or older than the replay
    /// window) and `no_session` (from an address with no connection); or another
    /// [`DecodeError::cause`](chaski_wire::DecodeError::cause) label for garbage.
    pub dropped: Causes,
    /// Sends that failed in the operating system.
    pub send_errors: u64,
}

/// Raises `counter` to `value` if it is below.
pub(crate) fn raise(counter: &AtomicU64, value: u64) {
    counter.fetch_max(value, Relaxed);
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Relaxed);
}
