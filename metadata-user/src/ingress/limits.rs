//! Caps on open guest connections, per port and for the whole host: one
//! guest opening connections without end exhausts its own allowance, and
//! all guests together never the server's file descriptors or memory.
//! A connection over either cap is closed as soon as it is accepted, and
//! counted (`status`: `datapath.connections`).
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::Serialize;

/// Open connections one port may hold by default. cloud-init uses one at
/// a time; a guest's parallel tooling rarely needs more than a few.
pub const DEFAULT_MAX_PER_PORT: u32 = 64;
/// Open guest connections the whole host may hold by default: a boot storm
/// of a thousand guests has fewer in flight, and each costs a file
/// descriptor and some tens of KiB. The daemon raises its descriptor limit
/// to fit (see serve.rs).
pub const DEFAULT_MAX_TOTAL: u32 = 8192;

/// The two caps (`max_connections`, `max_connections_per_port`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionCaps {
    pub total: u32,
    pub per_port: u32,
}

impl Default for ConnectionCaps {
    fn default() -> Self {
        Self {
            total: DEFAULT_MAX_TOTAL,
            per_port: DEFAULT_MAX_PER_PORT,
        }
    }
}

/// Which cap refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverCap {
    Host,
    Port,
}

/// What `status` shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConnectionStats {
    pub open: u32,
    pub max: u32,
    pub max_per_port: u32,
    /// Connections closed at once because the host had `max` open.
    pub refused_host_cap: u64,
    /// Connections closed at once because their port had `max_per_port` open.
    pub refused_port_cap: u64,
}

#[derive(Debug, Default)]
struct Open {
    total: u32,
    by_slot: HashMap<u32, u32>,
}

/// Open connections, per port slot and in all.
#[derive(Debug)]
pub struct ConnectionLimiter {
    caps: ConnectionCaps,
    open: Mutex<Open>,
    refused_host_cap: AtomicU64,
    refused_port_cap: AtomicU64,
}

/// Holds one of a port's connection places; gives it back on drop.
#[derive(Debug)]
pub struct ConnectionPermit {
    limiter: Arc<ConnectionLimiter>,
    slot: u32,
}

impl ConnectionLimiter {
    pub fn new(caps: ConnectionCaps) -> Arc<Self> {
        Arc::new(Self {
            caps,
            open: Mutex::new(Open::default()),
            refused_host_cap: AtomicU64::new(0),
            refused_port_cap: AtomicU64::new(0),
        })
    }

    /// A place for one more connection of `slot`, or which cap is reached
    /// (and the refusal counted).
    pub fn acquire(self: &Arc<Self>, slot: u32) -> Result<ConnectionPermit, OverCap> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.caps.total {
            self.refused_host_cap.fetch_add(1, Ordering::Relaxed);
            return Err(OverCap::Host);
        }
        let count = open.by_slot.entry(slot).or_insert(0);
        if *count >= self.caps.per_port {
            self.refused_port_cap.fetch_add(1, Ordering::Relaxed);
            return Err(OverCap::Port);
        }
        *count += 1;
        open.total += 1;
        Ok(ConnectionPermit {
            limiter: self.clone(),
            slot,
        })
    }

    pub fn stats(&self) -> ConnectionStats {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        ConnectionStats {
            open: open.total,
            max: self.caps.total,
            max_per_port: self.caps.per_port,
            refused_host_cap: self.refused_host_cap.load(Ordering::Relaxed),
            refused_port_cap: self.refused_port_cap.load(Ordering::Relaxed),
        }
    }

    #[cfg(test)]
    fn open_connections(&self, slot: u32) -> u32 {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.by_slot.get(&slot).copied().unwrap_or(0)
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.by_slot.get_mut(&self.slot) {
            *count -= 1;
            // Idle ports take no memory.
            if *count == 0 {
                open.by_slot.remove(&self.slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_each_port_separately_and_releases_on_drop() {
        let limiter = ConnectionLimiter::new(ConnectionCaps {
            total: 100,
            per_port: 2,
        });
        let a1 = limiter.acquire(1).unwrap();
        let _a2 = limiter.acquire(1).unwrap();
        assert_eq!(
            limiter.acquire(1).unwrap_err(),
            OverCap::Port,
            "third connection of port 1 refused"
        );
        let _b1 = limiter.acquire(2).expect("port 2 unaffected by port 1");
        drop(a1);
        assert_eq!(limiter.open_connections(1), 1);
        assert!(limiter.acquire(1).is_ok(), "a released place can be reused");
        assert_eq!(limiter.stats().refused_port_cap, 1);
    }

    #[test]
    fn caps_the_host_across_ports_and_counts_refusals() {
        let limiter = ConnectionLimiter::new(ConnectionCaps {
            total: 3,
            per_port: 2,
        });
        let held: Vec<_> = [1, 1, 2]
            .into_iter()
            .map(|slot| limiter.acquire(slot).unwrap())
            .collect();
        assert_eq!(limiter.acquire(3).unwrap_err(), OverCap::Host);
        assert_eq!(limiter.acquire(2).unwrap_err(), OverCap::Host);
        let stats = limiter.stats();
        assert_eq!(
            (stats.open, stats.refused_host_cap, stats.refused_port_cap),
            (3, 2, 0)
        );
        drop(held);
        assert_eq!(limiter.stats().open, 0);
        let _again = limiter.acquire(3).expect("room once the others closed");
    }
}
