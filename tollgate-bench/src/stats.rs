//! Medians, and the samples criterion measured.

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The median of `values`: the middle one, or the mean of the two middle ones; `None` for
/// none.
pub fn median(values: &[f64]) -> Option<f64> {
    let sorted = sorted(values);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// The value at the middle rank of `values`: the median of an odd count, the upper of the
/// two middle values of an even one; `None` for none.
pub fn upper_median(values: &[f64]) -> Option<f64> {
    let sorted = sorted(values);
    sorted.get(sorted.len() / 2).copied()
}

/// A sorted copy of `values`.
fn sorted(values: &[f64]) -> Vec<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
}

/// The (iterations, elapsed) pairs criterion asked one benchmark for through `iter_custom`,
/// shared between the benchmark's closure and the summary; the warm-up's come first.
#[derive(Clone, Default)]
pub struct Samples(Arc<Mutex<Vec<(u64, Duration)>>>);

impl Samples {
    /// Keeps one pair, and gives back `elapsed` for criterion.
    pub fn record(&self, iterations: u64, elapsed: Duration) -> Duration {
        self.0.lock().unwrap().push((iterations, elapsed));
        elapsed
    }

    /// The median of the per-iteration times of the last `sample_size` pairs, criterion's
    /// measurement samples (criterion's median), in nanoseconds.
    pub fn median_ns(&self, sample_size: usize) -> Option<f64> {
        let all = self.0.lock().unwrap();
        let samples = &all[all.len().saturating_sub(sample_size)..];
        let per_iteration: Vec<f64> = samples
            .iter()
            .map(|(iterations, elapsed)| elapsed.as_nanos() as f64 / *iterations as f64)
            .collect();
        median(&per_iteration)
    }
}
