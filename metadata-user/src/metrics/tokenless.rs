//! EC2 requests answered without an IMDSv2 token, per instance (AWS calls
//! it MetadataNoToken): which guests still use IMDSv1, before an operator
//! requires tokens. Bounded by the instances with a registered port: the
//! exporter drops the others at each scrape.
use std::{
    collections::{HashMap, HashSet},
    sync::{
        RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

#[derive(Debug, Default)]
pub struct TokenlessCounts {
    /// A read lock and an atomic add per request; the write lock only when
    /// an instance is seen for the first time.
    by_instance: RwLock<HashMap<uuid::Uuid, AtomicU64>>,
}

impl TokenlessCounts {
    pub fn add(&self, instance: uuid::Uuid) {
        {
            let counts = self.by_instance.read().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = counts.get(&instance) {
                count.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let mut counts = self.by_instance.write().unwrap_or_else(|e| e.into_inner());
        counts
            .entry(instance)
            .or_insert_with(|| AtomicU64::new(0))
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets instances not in `live` (deleted, or without a port now),
    /// then returns the counts of the rest, sorted by instance.
    pub fn retain_and_read(&self, live: &HashSet<uuid::Uuid>) -> Vec<(uuid::Uuid, u64)> {
        let mut counts = self.by_instance.write().unwrap_or_else(|e| e.into_inner());
        counts.retain(|instance, _| live.contains(instance));
        let mut out: Vec<_> = counts
            .iter()
            .map(|(instance, count)| (*instance, count.load(Ordering::Relaxed)))
            .collect();
        out.sort();
        out
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
}
