//! A small benchmark harness: runs a closure in timed batches and reports the median.
//!
//! The machines we measure on are shared and noisy, so every figure is the median over several
//! batches (with the 10th and 90th percentiles beside it), and results that are compared with each
//! other (a layer and its raw baseline) are measured in the same process, one after the other.
//!
//! Set `CHASKI_BENCH_QUICK=1` to run every measurement briefly (a smoke test of the benchmark
//! itself, not a measurement).

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

/// Summary statistics of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// The median.
    pub median: f64,
    /// The 10th percentile.
    pub p10: f64,
    /// The 90th percentile.
    pub p90: f64,
    /// The 99th percentile.
    pub p99: f64,
    /// The number of samples.
    pub samples: usize,
}

impl Summary {
    /// Summarises `samples` (which it sorts). Returns `None` for an empty slice.
    pub fn of(samples: &mut [f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Some(Summary {
            median: at(0.5),
            p10: at(0.1),
            p90: at(0.9),
            p99: at(0.99),
            samples: samples.len(),
        })
    }
}

/// Whether `CHASKI_BENCH_QUICK` asks for a short smoke run.
pub fn quick() -> bool {
    std::env::var_os("CHASKI_BENCH_QUICK").is_some_and(|v| !v.is_empty() && v != "0")
}

/// How long to measure one configuration: 1 s normally, 50 ms in quick mode.
pub fn budget() -> Duration {
    if quick() {
        Duration::from_millis(50)
    } else {
        Duration::from_secs(1)
    }
}

/// Measures the time per call of `f`, in nanoseconds.
///
/// The closure is first calibrated so that one batch takes about 10 ms, then batches are run
/// until [`budget`] is spent (at least 5 and at most 1,000 of them); the summary is over the
/// per-call time of each batch.
pub fn time_per_op<T>(mut f: impl FnMut() -> T) -> Summary {
    // Calibrate: grow the batch until it takes at least 10 ms (or 1 ms in quick mode).
    let target = budget() / 100;
    let mut batch: u64 = 1;
    loop {
        let start = Instant::now();
        for _ in 0..batch {
            black_box(f());
        }
        if start.elapsed() >= target || batch >= 1 << 30 {
            break;
        }
        batch *= 2;
    }
    let mut samples = Vec::new();
    let deadline = Instant::now() + budget();
    while samples.len() < 5 || (Instant::now() < deadline && samples.len() < 1_000) {
        let start = Instant::now();
        for _ in 0..batch {
            black_box(f());
        }
        samples.push(start.elapsed().as_nanos() as f64 / batch as f64);
    }
    Summary::of(&mut samples).expect("at least five samples")
}

/// The median of `values` (NaN for none).
pub fn median(mut values: Vec<f64>) -> f64 {
    Summary::of(&mut values).map_or(f64::NAN, |s| s.median)
}

/// `"met"` or `"MISSED"`, for the targets line of a benchmark.
pub fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// Formats a rate in operations per second with an SI suffix (`"3.21 M"`).
pub fn si(rate: f64) -> String {
    let (value, suffix) = if rate >= 1e9 {
        (rate / 1e9, " G")
    } else if rate >= 1e6 {
        (rate / 1e6, " M")
    } else if rate >= 1e3 {
        (rate / 1e3, " k")
    } else {
        (rate, " ")
    };
    format!("{value:.2}{suffix}")
}

/// Formats a byte count as `8 B`, `64 KiB`, `1 MiB`.
pub fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes % (1 << 10) == 0 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

/// The resident memory of this process, in bytes (Linux: `/proc/self/statm`; 0 elsewhere).
pub fn rss_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_known_samples() {
        let mut samples: Vec<f64> = (1..=101).rev().map(f64::from).collect();
        let s = Summary::of(&mut samples).unwrap();
        assert_eq!(s.median, 51.0);
        assert_eq!(s.p10, 11.0);
        assert_eq!(s.p90, 91.0);
        assert_eq!(s.p99, 100.0);
        assert_eq!(s.samples, 101);
        assert_eq!(Summary::of(&mut []), None);
    }

    #[test]
    fn formatting() {
        assert_eq!(si(3_210_000.0), "3.21 M");
        assert_eq!(si(999.0), "999.00 ");
        assert_eq!(size(8), "8 B");
        assert_eq!(size(64 << 10), "64 KiB");
        assert_eq!(size(1 << 20), "1 MiB");
        assert_eq!(size(1500), "1500 B");
    }
}
