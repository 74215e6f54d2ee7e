//! Latency histograms in microseconds, and the median of repeated runs.

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

/// The median of `values` (the mean of the middle two for an even count); `None` if empty.
/// Sections that repeat a run report it: single runs on this 2-core machine move by up to
/// 1.7x.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_takes_the_middle_run_or_the_mean_of_the_middle_two() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[5.0]), Some(5.0));
        assert_eq!(median(&[9.0, 1.0, 4.0]), Some(4.0));
        assert_eq!(median(&[9.0, 1.0, 4.0, 2.0]), Some(3.0));
    }
}
