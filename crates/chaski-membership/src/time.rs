//! Virtual time: the [`Instant`] the caller passes in, so that the state machine never reads a clock.

use std::{
    fmt,
    ops::{Add, Sub},
    time::Duration,
};

/// A point in time, as a duration since an arbitrary epoch chosen by the caller.
///
/// The state machine never reads a clock: the driver passes `now` into every call. A real driver
/// maps `std::time::Instant` onto this type by subtracting a start instant; the simulator counts
/// virtual time from zero. Only differences between instants have a meaning.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(Duration);

impl Instant {
    /// The epoch.
    pub const ZERO: Instant = Instant(Duration::ZERO);

    /// The instant `since` after the epoch.
    pub const fn from_duration(since: Duration) -> Instant {
        Instant(since)
    }

    /// The instant `micros` microseconds after the epoch.
    pub const fn from_micros(micros: u64) -> Instant {
        Instant(Duration::from_micros(micros))
    }

    /// The time since the epoch.
    pub const fn since_epoch(self) -> Duration {
        self.0
    }

    /// The time since the epoch in whole microseconds (saturating).
    pub fn as_micros(self) -> u64 {
        u64::try_from(self.0.as_micros()).unwrap_or(u64::MAX)
    }

    /// How long after `earlier` this instant is, or zero if it is not after it.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;

    fn add(self, rhs: Duration) -> Instant {
        Instant(self.0.saturating_add(rhs))
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;

    /// Saturating at the epoch.
    fn sub(self, rhs: Duration) -> Instant {
        Instant(self.0.saturating_sub(rhs))
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;

    /// Saturating: an earlier minus a later instant is zero.
    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_duration_since(rhs)
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t+{:?}", self.0)
    }
}
