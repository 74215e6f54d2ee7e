//! Latency histograms in microseconds.

use hdrhistogram::Histogram;
use std::time::Duration;

/// A latency histogram, 1 µs to 60 s, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"))
    }
}

impl Latencies {
    /// Records one sample.
    pub fn record(&mut self, sample: Duration) {
        let micros = (sample.as_micros() as u64).clamp(1, 60_000_000);
        let _ = self.0.record(micros);
    }

    /// Samples recorded.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// Whether no sample was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value at a percentile (0 to 100), µs.
    pub fn percentile_us(&self, percentile: f64) -> u64 {
        self.0.value_at_quantile(percentile / 100.0)
    }

    /// Merges another histogram in.
    pub fn merge(&mut self, other: &Latencies) {
        let _ = self.0.add(&other.0);
    }

    /// (value µs, cumulative fraction) points for a CDF plot.
    pub fn cdf(&self) -> Vec<(f64, f64)> {
        let total = self.0.len().max(1) as f64;
        self.0
            .iter_recorded()
            .map(|v| {
                (
                    v.value_iterated_to() as f64,
                    v.count_since_last_iteration() as f64,
                )
            })
            .scan(0.0, |seen, (value, count)| {
                *seen += count;
                Some((value, *seen / total))
            })
            .collect()
    }
}
