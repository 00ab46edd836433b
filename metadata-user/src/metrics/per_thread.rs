//! Counts kept per thread and summed when read.
//!
//! Guest requests are served by one thread per core. A count they all add
//! to is a cache line every add pulls over to the adding core, and at
//! keep-alive rates that, not the add, was what counting cost. So each
//! thread adds to its own copy (`thread_local::ThreadLocal`: one per thread
//! that ever recorded, handed to the next thread once that one has ended)
//! and a scrape sums the copies. The totals are the same; as before, a
//! scrape reads them one after the other while requests go on.
use std::sync::atomic::{AtomicU64, Ordering};

use thread_local::ThreadLocal;

/// One thread's copy on cache lines of its own. `ThreadLocal` keeps the
/// threads' values side by side in arrays: two on one line would bounce it
/// between cores as one shared count did. 128 bytes, not 64: x86 cores
/// prefetch lines in pairs.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

/// Adds `n` to a count that only the calling thread writes (its own copy):
/// a load and a store, where a shared count needs a locked add (which also
/// waits for the core's stores to drain). A reader on another thread sees
/// the value before or after, never a torn one.
#[inline]
pub fn bump(count: &AtomicU64, n: u64) {
    count.store(
        count.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// A single count, added to per thread.
#[derive(Debug, Default)]
pub struct Counter {
    per_thread: ThreadLocal<Padded<AtomicU64>>,
}

impl Counter {
    pub fn add(&self, n: u64) {
        bump(&self.per_thread.get_or_default().0, n);
    }

    /// The total over every thread that added.
    pub fn get(&self) -> u64 {
        self.per_thread
            .iter()
            .map(|count| count.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// The total, read the way the `AtomicU64` this replaced was read, so
    /// readers need not change. The ordering does not matter: the total is
    /// a sum of relaxed reads either way.
    pub fn load(&self, _order: Ordering) -> u64 {
        self.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_sums_every_thread_including_ended_ones() {
        let counter = Counter::default();
        counter.add(1);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..10_000 {
                        counter.add(1);
                    }
                });
            }
        });
        // The four threads have ended; their counts stay, and a thread that
        // takes over one of their copies adds to it.
        std::thread::scope(|scope| {
            scope.spawn(|| counter.add(5));
        });
        assert_eq!(counter.get(), 40_006);
        assert_eq!(counter.load(Ordering::Relaxed), 40_006);
    }

    #[test]
    fn copies_do_not_share_cache_lines() {
        assert_eq!(std::mem::align_of::<Padded<AtomicU64>>(), 128);
        assert_eq!(std::mem::size_of::<Padded<AtomicU64>>(), 128);
    }
}
