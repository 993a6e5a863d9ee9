//! End-to-end latency: the histogram consumers record into (nanoseconds from the send
//! stamp to the socket read that brought the message in) and its percentile summary.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency a histogram tracks (an hour, in nanoseconds); larger ones count as this.
const LATENCY_MAX_NANOS: u64 = 3_600_000_000_000;

/// A histogram of latencies in nanoseconds, 1 ns to an hour, three significant digits.
///
/// # Errors
/// Never in practice (the bounds are valid).
pub fn latency_histogram() -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, LATENCY_MAX_NANOS, 3)
}

/// End-to-end latency percentiles, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Messages measured.
    pub samples: u64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

impl Latency {
    /// Percentiles of a histogram of nanoseconds; `None` if it is empty.
    pub fn from_histogram(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(Self {
            samples: h.len(),
            p50_us: us(h.value_at_quantile(0.5)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
        })
    }
}
