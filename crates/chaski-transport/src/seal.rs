//! Protected datagrams.
//!
//! * **Sealed**: best-effort messages between two connected nodes, encrypted and authenticated
//!   with AES-256-GCM (ring, the crypto provider rustls uses) under keys exported from the
//!   connection's TLS session (RFC 8446 §7.5, one key per direction), each with an explicit
//!   64-bit counter as nonce and a replay window of [`REPLAY_WINDOW`] counters.
//!   Layout: `[0xA2][counter: 8 bytes, big-endian][ciphertext][16-byte tag]`, the first nine
//!   bytes authenticated as associated data.
//! * **Tagged**: a frame anyone may read but only members can make (beacons in a closed
//!   network): `[0xA1][frame][32-byte HMAC-SHA256 of everything before it]`.
//!
//! A plain Chaski datagram starts with its length prefix, whose first byte is 0: the three
//! forms cannot be confused.

use std::sync::{
    Mutex,
    atomic::{AtomicU64, Ordering},
};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

/// The first byte of a tagged datagram.
pub(crate) const TAGGED: u8 = 0xA1;
/// The first byte of a sealed datagram.
pub(crate) const SEALED: u8 = 0xA2;
/// The length of a tagged datagram's mac (HMAC-SHA256).
pub(crate) const TAG_LEN: usize = 32;
/// The bytes a tagged datagram adds to its frame.
pub(crate) const TAG_OVERHEAD: usize = 1 + TAG_LEN;
/// The header of a sealed datagram (kind and counter).
const SEAL_HEADER: usize = 1 + 8;
/// The bytes a sealed datagram adds to its frame.
pub const SEAL_OVERHEAD: usize = SEAL_HEADER + 16;
/// How many counters behind the highest one received a sealed datagram may still arrive (out
/// of order) and be accepted once.
pub const REPLAY_WINDOW: u64 = 1024;
/// The TLS exporter label of the datagram keys.
const EXPORTER_LABEL: &[u8] = b"EXPORTER-chaski-datagram-v1";

/// Seals one direction's datagrams. Shared by every sender on the connection: the counter is
/// atomic.
#[derive(Debug)]
pub struct Sealer {
    key: LessSafeKey,
    next: AtomicU64,
}

impl Sealer {
    /// Seals `frame` (an encoded frame) into a new datagram, or `None` once the counter is
    /// exhausted (after 2^64 - 1 datagrams: never in practice).
    pub(crate) fn seal(&self, frame: &[u8]) -> Option<Vec<u8>> {
        // Never wraps: a counter (a nonce) is used once, or the sealer stops.
        let counter = self
            .next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1))
            .ok()?;
        let mut datagram = Vec::with_capacity(SEAL_OVERHEAD + frame.len());
        datagram.push(SEALED);
        datagram.extend_from_slice(&counter.to_be_bytes());
        datagram.extend_from_slice(frame);
        let (header, body) = datagram.split_at_mut(SEAL_HEADER);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(counter), Aad::from(&*header), body)
            .ok()?;
        datagram.extend_from_slice(tag.as_ref());
        Some(datagram)
    }
}

/// Opens the other direction's datagrams, each counter at most once.
#[derive(Debug)]
pub struct Opener {
    key: LessSafeKey,
    window: ReplayWindow,
}

/// Why a sealed datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// It does not open under the key: forged, altered, or for another connection.
    Unauthenticated,
    /// Its counter was seen before or is older than the window.
    Replayed,
}

impl OpenError {
    pub(crate) fn cause(self) -> &'static str {
        match self {
            OpenError::Unauthenticated => "unauthenticated",
            OpenError::Replayed => "replayed",
        }
    }
}

impl Opener {
    /// Opens `datagram` in place and returns the range of the frame within it.
    pub(crate) fn open(
        &mut self,
        datagram: &mut [u8],
    ) -> Result<std::ops::Range<usize>, OpenError> {
        if datagram.len() < SEAL_OVERHEAD || datagram[0] != SEALED {
            return Err(OpenError::Unauthenticated);
        }
        let mut counter = [0u8; 8];
        counter.copy_from_slice(&datagram[1..SEAL_HEADER]);
        let counter = u64::from_be_bytes(counter);
        // The cheap check first; the window moves only once the datagram is authentic.
        if !self.window.fresh(counter) {
            return Err(OpenError::Replayed);
        }
        let (header, body) = datagram.split_at_mut(SEAL_HEADER);
        let plain = self
            .key
            .open_in_place(nonce(counter), Aad::from(&*header), body)
            .map_err(|_| OpenError::Unauthenticated)?;
        let len = plain.len();
        self.window.mark(counter);
        Ok(SEAL_HEADER..SEAL_HEADER + len)
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// The counters seen: the highest, and a bitmap of the [`REPLAY_WINDOW`] before it.
#[derive(Debug)]
struct ReplayWindow {
    top: u64,
    bits: [u64; (REPLAY_WINDOW / 64) as usize],
}

impl ReplayWindow {
    fn new() -> ReplayWindow {
        ReplayWindow {
            top: 0,
            bits: [0; (REPLAY_WINDOW / 64) as usize],
        }
    }

    fn bit(n: u64) -> (usize, u64) {
        let i = n % REPLAY_WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    /// Whether `n` may be accepted: new, and not below the window. Counters start at 1.
    fn fresh(&self, n: u64) -> bool {
        if n == 0 {
            return false;
        }
        if n > self.top {
            return true;
        }
        if self.top - n >= REPLAY_WINDOW {
            return false;
        }
        let (word, mask) = ReplayWindow::bit(n);
        self.bits[word] & mask == 0
    }

    fn mark(&mut self, n: u64) {
        if n > self.top {
            if n - self.top >= REPLAY_WINDOW {
                self.bits = [0; (REPLAY_WINDOW / 64) as usize];
            } else {
                // Forget the counters the window slides past (at most REPLAY_WINDOW).
                for old in self.top + 1..=n {
                    let (word, mask) = ReplayWindow::bit(old);
                    self.bits[word] &= !mask;
                }
            }
            self.top = n;
        }
        let (word, mask) = ReplayWindow::bit(n);
        self.bits[word] |= mask;
    }
}

/// A connection's datagram keys: the sealer of what it sends, and the opener of what it
/// receives (taken once, by whoever receives the datagrams).
#[derive(Debug)]
pub(crate) struct DatagramKeys {
    pub(crate) sealer: std::sync::Arc<Sealer>,
    pub(crate) opener: Mutex<Option<Opener>>,
}

impl DatagramKeys {
    /// Exports the keys from a TLS session; `dialer` tells which half this side sends with.
    pub(crate) fn export<D>(tls: &rustls::ConnectionCommon<D>, dialer: bool) -> Option<Self> {
        let material = tls
            .export_keying_material(zeroize::Zeroizing::new([0u8; 64]), EXPORTER_LABEL, None)
            .ok()?;
        let (to_acceptor, to_dialer) = material.split_at(32);
        let (send, recv) = if dialer {
            (to_acceptor, to_dialer)
        } else {
            (to_dialer, to_acceptor)
        };
        let key = |bytes: &[u8]| {
            UnboundKey::new(&AES_256_GCM, bytes)
                .ok()
                .map(LessSafeKey::new)
        };
        Some(DatagramKeys {
            sealer: std::sync::Arc::new(Sealer {
                key: key(send)?,
                next: AtomicU64::new(1),
            }),
            opener: Mutex::new(Some(Opener {
                key: key(recv)?,
                window: ReplayWindow::new(),
            })),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Sealer, Opener) {
        let bytes = [7u8; 32];
        let key = || LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &bytes).unwrap());
        (
            Sealer {
                key: key(),
                next: AtomicU64::new(1),
            },
            Opener {
                key: key(),
                window: ReplayWindow::new(),
            },
        )
    }

    #[test]
    fn a_sealed_datagram_opens_once_and_hides_its_frame() {
        let (sealer, mut opener) = pair();
        let frame = b"\0\0\0\x05hello";
        let sealed = sealer.seal(frame).unwrap();
        assert_eq!(sealed.len(), frame.len() + SEAL_OVERHEAD);
        assert!(!sealed.windows(5).any(|w| w == b"hello"));
        let mut copy = sealed.clone();
        let range = opener.open(&mut copy).unwrap();
        assert_eq!(&copy[range], frame);
        let mut again = sealed.clone();
        assert_eq!(opener.open(&mut again), Err(OpenError::Replayed));
    }

    #[test]
    fn altered_or_foreign_datagrams_do_not_open_and_do_not_move_the_window() {
        let (sealer, mut opener) = pair();
        let mut sealed = sealer.seal(b"\0\0\0\x01x").unwrap();
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert_eq!(opener.open(&mut sealed), Err(OpenError::Unauthenticated));
        // A forged header claiming a far counter does not open, and the genuine next one does.
        let mut forged = sealer.seal(b"\0\0\0\x01y").unwrap();
        forged[1..9].copy_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(opener.open(&mut forged), Err(OpenError::Unauthenticated));
        let mut next = sealer.seal(b"\0\0\0\x01z").unwrap();
        assert!(opener.open(&mut next).is_ok());
    }

    #[test]
    fn the_replay_window_accepts_late_datagrams_once_and_refuses_older_ones() {
        let mut w = ReplayWindow::new();
        assert!(!w.fresh(0));
        w.mark(5);
        assert!(w.fresh(3) && !w.fresh(5));
        w.mark(3);
        assert!(!w.fresh(3));
        w.mark(5 + REPLAY_WINDOW);
        assert!(!w.fresh(5), "slid out of the window");
        assert!(w.fresh(6), "the oldest counter still in the window");
        w.mark(u64::MAX - 1);
        assert!(!w.fresh(5 + REPLAY_WINDOW));
        assert!(w.fresh(u64::MAX - 2));
    }
}
