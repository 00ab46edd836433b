//! At most [`MAX_WATCHES_PER_PORT`] held watches per port. A watch holds its
//! connection, which counts against the port's connection cap (ingress's
//! `ConnectionLimiter`); this smaller cap keeps watches from taking all of
//! a port's connections, so the guest can still make ordinary requests.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

pub const MAX_WATCHES_PER_PORT: u32 = 16;

#[derive(Debug)]
pub struct WatchLimiter {
    max_per_port: u32,
    held: Mutex<HashMap<u32, u32>>,
}

/// One held watch of a port; gives its place back on drop (answered,
/// timed out, or the guest hung up).
#[derive(Debug)]
pub struct WatchPermit {
    limiter: Arc<WatchLimiter>,
    slot: u32,
}

impl WatchLimiter {
    pub fn new(max_per_port: u32) -> Arc<Self> {
        Arc::new(Self {
            max_per_port,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more watch of port `slot`, or None (429).
    pub fn acquire(self: &Arc<Self>, slot: u32) -> Option<WatchPermit> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let count = held.entry(slot).or_insert(0);
        if *count >= self.max_per_port {
            return None;
        }
        *count += 1;
        Some(WatchPermit {
            limiter: self.clone(),
            slot,
        })
    }

    /// Watches held now, over every port (for `status`).
    pub fn held(&self) -> u32 {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.values().sum()
    }
}

impl Drop for WatchPermit {
    fn drop(&mut self) {
        let mut held = self.limiter.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(&self.slot) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_per_port_then_none_and_released_on_drop() {
        let limiter = WatchLimiter::new(MAX_WATCHES_PER_PORT);
        let permits: Vec<_> = (0..MAX_WATCHES_PER_PORT)
            .map(|_| limiter.acquire(7).expect("within the cap"))
            .collect();
        assert!(limiter.acquire(7).is_none(), "the 17th is refused");
        assert!(limiter.acquire(8).is_some(), "another port is not affected");
        assert_eq!(limiter.held(), MAX_WATCHES_PER_PORT);
        drop(permits);
        assert_eq!(limiter.held(), 0);
        assert!(limiter.acquire(7).is_some());
    }
}
