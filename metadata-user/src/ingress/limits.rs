//! Per-port connection cap: one guest opening connections without end can
//! exhaust its own allowance, never the server's file descriptors or other
//! guests' service.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// Open connections per port slot.
#[derive(Debug)]
pub struct ConnectionLimiter {
    max_per_port: u32,
    open: Mutex<HashMap<u32, u32>>,
}

/// Holds one of a port's connection places; gives it back on drop.
#[derive(Debug)]
pub struct ConnectionPermit {
    limiter: Arc<ConnectionLimiter>,
    slot: u32,
}

impl ConnectionLimiter {
    pub fn new(max_per_port: u32) -> Arc<Self> {
        Arc::new(Self {
            max_per_port,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more connection of `slot`, or None when it has
    /// `max_per_port` open already.
    pub fn acquire(self: &Arc<Self>, slot: u32) -> Option<ConnectionPermit> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(slot).or_insert(0);
        if *count >= self.max_per_port {
            return None;
        }
        *count += 1;
        Some(ConnectionPermit {
            limiter: self.clone(),
            slot,
        })
    }

    #[cfg(test)]
    fn open_connections(&self, slot: u32) -> u32 {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&slot).copied().unwrap_or(0)
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.slot) {
            *count -= 1;
            // Idle ports take no memory.
            if *count == 0 {
                open.remove(&self.slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_each_port_separately_and_releases_on_drop() {
        let limiter = ConnectionLimiter::new(2);
        let a1 = limiter.acquire(1).unwrap();
        let _a2 = limiter.acquire(1).unwrap();
        assert!(
            limiter.acquire(1).is_none(),
            "third connection of port 1 refused"
        );
        let _b1 = limiter.acquire(2).expect("port 2 unaffected by port 1");
        drop(a1);
        assert_eq!(limiter.open_connections(1), 1);
        assert!(
            limiter.acquire(1).is_some(),
            "a released place can be reused"
        );
    }
}
