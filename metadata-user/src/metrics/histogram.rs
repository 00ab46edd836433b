//! A latency histogram: observing is two adds to the thread's own copy
//! (see `per_thread`), no lock. Buckets are fixed (seconds, Prometheus'
//! convention) and wide enough for a request answered from memory (0.1 ms)
//! and a tap attach or a slow nova (seconds).
use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use thread_local::ThreadLocal;

use super::per_thread::{Padded, bump};

/// Upper bounds of the buckets, in seconds (+Inf is implicit).
pub const BOUNDS_SECONDS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// The same bounds in nanoseconds, for the comparison on the hot path.
const BOUNDS_NANOS: [u64; 15] = {
    let mut nanos = [0; 15];
    let mut i = 0;
    while i < BOUNDS_SECONDS.len() {
        nanos[i] = (BOUNDS_SECONDS[i] * 1e9) as u64;
        i += 1;
    }
    nanos
};

#[derive(Debug, Default)]
pub struct Histogram {
    per_thread: ThreadLocal<Padded<Counts>>,
}

/// One thread's observations. No count: it is the buckets' sum.
#[derive(Debug, Default)]
struct Counts {
    /// Observations per bucket (not cumulative); the last is +Inf.
    buckets: [AtomicU64; BOUNDS_SECONDS.len() + 1],
    sum_nanos: AtomicU64,
}

/// A histogram as read at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    pub sum_seconds: f64,
    pub count: u64,
    /// (upper bound, observations in this bucket alone), +Inf last; the
    /// exposition makes them cumulative.
    pub buckets: Vec<(f64, u64)>,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(BOUNDS_NANOS.len());
        let counts = &self.per_thread.get_or_default().0;
        bump(&counts.buckets[bucket], 1);
        bump(&counts.sum_nanos, nanos);
    }

    /// Read for a scrape: every thread's copy, summed. The fields are read
    /// one after the other while requests go on, so the count is taken as
    /// the sum of the buckets: `+Inf` and `_count` then always agree, as
    /// Prometheus expects.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets: Vec<(f64, u64)> = (0..=BOUNDS_SECONDS.len())
            .map(|i| (BOUNDS_SECONDS.get(i).copied().unwrap_or(f64::INFINITY), 0))
            .collect();
        let mut sum_nanos = 0u64;
        for counts in self.per_thread.iter() {
            for ((_, total), bucket) in buckets.iter_mut().zip(&counts.0.buckets) {
                *total = total.wrapping_add(bucket.load(Ordering::Relaxed));
            }
            sum_nanos = sum_nanos.wrapping_add(counts.0.sum_nanos.load(Ordering::Relaxed));
        }
        HistogramSnapshot {
            sum_seconds: sum_nanos as f64 / 1e9,
            count: buckets.iter().map(|(_, count)| count).sum(),
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_fall_in_the_first_bucket_that_holds_them() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_micros(100)); // exactly the first bound
        histogram.observe(Duration::from_micros(101));
        histogram.observe(Duration::from_secs(60)); // beyond every bound
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 3);
        assert_eq!(snapshot.buckets[0], (0.0001, 1));
        assert_eq!(snapshot.buckets[1], (0.00025, 1));
        assert_eq!(snapshot.buckets[14], (10.0, 0));
        assert_eq!(snapshot.buckets[15], (f64::INFINITY, 1));
        assert!((snapshot.sum_seconds - 60.000201).abs() < 1e-9);
    }

    #[test]
    fn a_snapshot_sums_every_thread() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_millis(2)); // the 2.5 ms bucket
        std::thread::scope(|scope| {
            for _ in 0..3 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        histogram.observe(Duration::from_micros(50));
                        histogram.observe(Duration::from_millis(2));
                    }
                });
            }
        });
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 6001);
        assert_eq!(snapshot.buckets[0], (0.0001, 3000));
        assert_eq!(snapshot.buckets[4], (0.0025, 3001));
        assert!((snapshot.sum_seconds - (0.15 + 6.002)).abs() < 1e-9);
    }
}
