//! Summaries of benchmark samples, computed one way for every bench binary so that their
//! tables read alike: latency percentiles by nearest rank, and the median of repeated rates.

use std::time::Duration;

/// The `p`-quantile (`0.0..=1.0`) of `samples`, in any order, by nearest rank: the sample at
/// index `round((n - 1) · p)` once sorted. Zero when there are none.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// The median of `values`, in any order: the middle one, or the mean of the two middle ones
/// for an even count. NaN when there are none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|v| Duration::from_millis(*v)).collect()
    }

    #[test]
    fn percentiles_take_the_nearest_rank_in_any_order() {
        let samples = ms(&[7, 1, 9, 3, 5]);
        assert_eq!(percentile(&samples, 0.0), Duration::from_millis(1));
        assert_eq!(percentile(&samples, 0.5), Duration::from_millis(5));
        assert_eq!(percentile(&samples, 1.0), Duration::from_millis(9));
        // (5 - 1) · 0.99 = 3.96 → index 4; (5 - 1) · 0.6 = 2.4 → index 2.
        assert_eq!(percentile(&samples, 0.99), Duration::from_millis(9));
        assert_eq!(percentile(&samples, 0.6), Duration::from_millis(5));
        // An even count rounds to a sample, never between two: (4 - 1) · 0.5 = 1.5 → index 2.
        assert_eq!(
            percentile(&ms(&[4, 1, 3, 2]), 0.5),
            Duration::from_millis(3)
        );
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn medians_average_the_middle_pair() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
