//! Latency histograms shared by thousands of client tasks, and exact percentiles.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// log2 of the sub-buckets per power of two: 64 keeps the relative error under 1.6%.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Enough buckets for any u64 (the top bucket index for u64::MAX is 58 * 64 + 63).
const BUCKETS: usize = 59 * SUB as usize;

/// Nanoseconds since the UNIX epoch; the unit of `sent_ns` in bench events, so publisher
/// and receivers (same host) compare the same clock.
pub(crate) fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A log-linear histogram of nanosecond values that many tasks record into at once.
///
/// Relaxed atomic counters instead of per-client histograms: 19k clients × 30 KiB each
/// would not fit next to the server, and with two worker threads contention on a bucket
/// is rare. A delivery costs one `fetch_add` (plus one `fetch_max` when it sets a record).
pub(crate) struct AtomicHistogram {
    buckets: Box<[AtomicU64]>,
    max: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        AtomicHistogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }
}

impl AtomicHistogram {
    /// Records one value.
    pub(crate) fn record(&self, value: u64) {
        self.buckets[bucket_of(value)].fetch_add(1, Ordering::Relaxed);
        if value > self.max.load(Ordering::Relaxed) {
            self.max.fetch_max(value, Ordering::Relaxed);
        }
    }

    /// Values recorded so far (for progress; sums every bucket).
    pub(crate) fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// A consistent-enough copy once recording has stopped.
    pub(crate) fn snapshot(&self) -> Histogram {
        Histogram {
            counts: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            max: self.max.load(Ordering::Relaxed),
        }
    }
}

/// A frozen histogram.
pub(crate) struct Histogram {
    counts: Vec<u64>,
    max: u64,
}

impl Histogram {
    /// Number of values.
    pub(crate) fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The value at quantile `q` (0..=1): the upper edge of the bucket holding that rank,
    /// never above the exact maximum. 0 when empty.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (idx, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_high(idx).min(self.max);
            }
        }
        self.max
    }

    /// p50 / p99 / p99.9 / max in microseconds.
    pub(crate) fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.count(),
            p50_us: self.quantile(0.5) / 1000,
            p99_us: self.quantile(0.99) / 1000,
            p999_us: self.quantile(0.999) / 1000,
            max_us: self.max / 1000,
        }
    }
}

/// Latency percentiles as reported.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct LatencySummary {
    /// Samples.
    pub(crate) count: u64,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) p999_us: u64,
    pub(crate) max_us: u64,
}

fn bucket_of(value: u64) -> usize {
    if value < 2 * SUB {
        return value as usize;
    }
    let msb = 63 - value.leading_zeros();
    let shift = msb - SUB_BITS;
    ((u64::from(shift) + 1) * SUB + ((value >> shift) - SUB)) as usize
}

fn bucket_high(idx: usize) -> u64 {
    let idx = idx as u64;
    if idx < 2 * SUB {
        return idx;
    }
    let shift = idx / SUB - 1;
    let mantissa = idx % SUB + SUB;
    (mantissa << shift) + ((1u64 << shift) - 1)
}

/// Nearest-rank percentile of an ascending slice; 0 when empty.
pub(crate) fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        for v in (0..5000u64).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let idx = bucket_of(v);
            assert!(idx < BUCKETS);
            assert!(bucket_high(idx) >= v, "{v}");
            if idx > 0 {
                assert!(bucket_high(idx - 1) < v, "{v}");
            }
            assert!((bucket_high(idx) - v) as f64 <= v as f64 / 64.0 + 1.0);
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_high(BUCKETS - 1), u64::MAX);
    }

    #[test]
    fn quantiles_within_error() {
        let h = AtomicHistogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 10_000);
        let p50 = s.quantile(0.5) as f64;
        assert!((p50 - 5_000_000.0).abs() / 5_000_000.0 < 0.02, "{p50}");
        let p999 = s.quantile(0.999) as f64;
        assert!((p999 - 9_990_000.0).abs() / 9_990_000.0 < 0.02, "{p999}");
        assert_eq!(s.quantile(1.0), 10_000_000);
        let sum = s.summary();
        assert_eq!(sum.max_us, 10_000);
        assert!(sum.p99_us >= 9_900 && sum.p99_us <= 10_000);
    }

    #[test]
    fn empty_is_zero() {
        assert_eq!(AtomicHistogram::default().snapshot().quantile(0.5), 0);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn exact_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&v, 1.0), 100);
        assert_eq!(percentile(&v, 0.0), 1);
        assert_eq!(percentile(&[7], 0.99), 7);
    }
}
