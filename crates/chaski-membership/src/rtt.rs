//! Round-trip time estimation as TCP does it (RFC 6298): smoothed RTT, RTT variation, minimum.

use std::time::Duration;

/// Round-trip statistics of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RttStats {
    /// Smoothed round-trip time (RFC 6298 `SRTT`); zero until the first sample.
    pub srtt: Duration,
    /// Round-trip time variation, the jitter (RFC 6298 `RTTVAR`); zero until the first sample.
    pub rttvar: Duration,
    /// The smallest round trip seen; zero until the first sample.
    pub min_rtt: Duration,
    /// The latest sample.
    pub latest: Duration,
    /// How many samples were folded in.
    pub samples: u64,
}

impl RttStats {
    /// Folds one sample in: the first sets `srtt = r`, `rttvar = r / 2`; later ones apply
    /// `rttvar = 3/4 rttvar + 1/4 |srtt - r|` then `srtt = 7/8 srtt + 1/8 r`.
    pub fn update(&mut self, sample: Duration) {
        if self.samples == 0 {
            self.srtt = sample;
            self.rttvar = sample / 2;
            self.min_rtt = sample;
        } else {
            let diff = self.srtt.abs_diff(sample);
            self.rttvar = (self.rttvar * 3 + diff) / 4;
            self.srtt = (self.srtt * 7 + sample) / 8;
            self.min_rtt = self.min_rtt.min(sample);
        }
        self.latest = sample;
        self.samples += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_rfc6298() {
        let mut r = RttStats::default();
        r.update(Duration::from_millis(100));
        assert_eq!(r.srtt, Duration::from_millis(100));
        assert_eq!(r.rttvar, Duration::from_millis(50));
        r.update(Duration::from_millis(20));
        // rttvar = 3/4 * 50 + 1/4 * 80 = 57.5; srtt = 7/8 * 100 + 1/8 * 20 = 90.
        assert_eq!(r.rttvar, Duration::from_micros(57_500));
        assert_eq!(r.srtt, Duration::from_millis(90));
        assert_eq!(r.min_rtt, Duration::from_millis(20));
        assert_eq!(r.samples, 2);
    }
}
