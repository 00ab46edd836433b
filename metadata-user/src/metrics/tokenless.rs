//! EC2 requests answered without an IMDSv2 token, per instance (AWS calls
//! it MetadataNoToken): which guests still use IMDSv1, before an operator
//! requires tokens. Bounded by the instances with a registered port: the
//! exporter drops the others at each scrape.
use std::{
    collections::{BTreeMap, HashSet},
    sync::Mutex,
};

use thread_local::ThreadLocal;

use super::per_thread::Padded;

/// Instance (its UUID as a number: one word to hash, not sixteen bytes) to
/// count. foldhash, not SipHash: the keys are the operator's UUIDs, not
/// something a guest chooses, so there is no flooding to resist, and the
/// hash is most of a lookup.
type Counts = foldhash::HashMap<u128, u64>;

#[derive(Debug, Default)]
pub struct TokenlessCounts {
    /// A map per thread (see `per_thread`) behind a lock of its own: on the
    /// request path only the thread takes it, so it never waits and its
    /// line stays on the thread's core; a scrape takes each in turn. A
    /// lookup and an add per request; an allocation only when the thread
    /// sees an instance for the first time.
    per_thread: ThreadLocal<Padded<Mutex<Counts>>>,
}

impl TokenlessCounts {
    pub fn add(&self, instance: uuid::Uuid) {
        let mut counts = self
            .per_thread
            .get_or_default()
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *counts.entry(instance.as_u128()).or_default() += 1;
    }

    /// Forgets instances not in `live` (deleted, or without a port now),
    /// then returns the counts of the rest, summed over the threads and
    /// sorted by instance.
    pub fn retain_and_read(&self, live: &HashSet<uuid::Uuid>) -> Vec<(uuid::Uuid, u64)> {
        let mut totals = BTreeMap::<uuid::Uuid, u64>::new();
        for counts in self.per_thread.iter() {
            let mut counts = counts.0.lock().unwrap_or_else(|e| e.into_inner());
            counts.retain(|&instance, _| live.contains(&uuid::Uuid::from_u128(instance)));
            for (&instance, &count) in counts.iter() {
                let total = totals.entry(uuid::Uuid::from_u128(instance)).or_default();
                *total = total.wrapping_add(count);
            }
        }
        totals.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_instance_and_forgets_the_gone() {
        let counts = TokenlessCounts::default();
        let (a, b) = (uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2));
        counts.add(a);
        counts.add(a);
        counts.add(b);
        let both = HashSet::from([a, b]);
        assert_eq!(counts.retain_and_read(&both), vec![(a, 2), (b, 1)]);
        assert_eq!(counts.retain_and_read(&HashSet::from([b])), vec![(b, 1)]);
        assert_eq!(counts.retain_and_read(&both), vec![(b, 1)], "a starts over");
    }

    #[test]
    fn counts_are_summed_over_the_threads_and_forgotten_in_each() {
        let counts = TokenlessCounts::default();
        let (a, b) = (uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2));
        counts.add(a);
        std::thread::scope(|scope| {
            for _ in 0..3 {
                scope.spawn(|| {
                    for _ in 0..100 {
                        counts.add(a);
                        counts.add(b);
                    }
                });
            }
        });
        let both = HashSet::from([a, b]);
        assert_eq!(counts.retain_and_read(&both), vec![(a, 301), (b, 300)]);
        // `a` is gone from every thread's map, not only the first one's.
        assert_eq!(counts.retain_and_read(&HashSet::from([b])), vec![(b, 300)]);
        assert_eq!(counts.retain_and_read(&both), vec![(b, 300)]);
    }
}
