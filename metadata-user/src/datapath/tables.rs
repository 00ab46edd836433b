//! The read side of the datapath's maps: who is behind a connection to the
//! server (FLOWS), and what the programs counted (COUNTERS).
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::Mutex,
};

use anyhow::Context as _;
use aya::maps::{HashMap, MapData, PerCpuArray};
use metadata_ebpf::{Counters, FlowEntry, FlowKey};
use tracing::{debug, warn};

use super::IdentityPlan;

/// The FLOWS map: who is behind a connection to the server (read by the
/// guest server on every connection), and the flows of ports that are gone
/// (purged by the datapath).
pub struct FlowTable {
    pub(super) map: HashMap<MapData, FlowKey, FlowEntry>,
    /// A second handle on the same map for [`FlowTable::purge`], so that
    /// the readers share `map` without a lock.
    pub(super) writer: Mutex<HashMap<MapData, FlowKey, FlowEntry>>,
    pub(super) identity: IdentityPlan,
}

/// A connection's peer, resolved through the datapath's maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowOrigin {
    pub slot: u32,
    pub flow: FlowEntry,
}

impl FlowTable {
    /// Resolves the peer of an accepted connection. None when the peer is not
    /// an identity address or the datapath has no flow for it (the connection
    /// did not come through a tap).
    pub fn origin(&self, peer: SocketAddrV4) -> Option<FlowOrigin> {
        let slot = self.identity.slot_of(*peer.ip())?;
        let key = FlowKey {
            identity_addr: peer.ip().octets(),
            guest_port_be: peer.port().to_be(),
            _pad: 0,
        };
        match self.map.get(&key, 0) {
            Ok(flow) => Some(FlowOrigin { slot, flow }),
            Err(err) => {
                warn!(%peer, %err, "no datapath flow for connection");
                None
            }
        }
    }
}

impl FlowTable {
    /// Drops every flow whose identity address `stale` picks: flows of a
    /// port that was detached (its domain stopped, its NIC was unplugged,
    /// the operator removed it) can never be answered again, and would
    /// otherwise stay until the LRU pushed them out. Returns how many went.
    ///
    /// The one place that knows how flows are kept: a layout with a flow
    /// table per port drops that port's table here instead.
    pub(super) fn purge(&self, stale: impl Fn(Ipv4Addr) -> bool) -> usize {
        let mut writer = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let doomed: Vec<FlowKey> = writer
            .keys()
            .filter_map(Result::ok)
            .filter(|key| stale(Ipv4Addr::from(key.identity_addr)))
            .collect();
        let mut purged = 0;
        for key in &doomed {
            match writer.remove(key) {
                Ok(()) => purged += 1,
                // Closed meanwhile (the programs remove finished flows).
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(err) => warn!(%err, "purging a flow"),
            }
        }
        if purged > 0 {
            debug!(purged, "flows of detached ports purged");
        }
        purged
    }
}

/// Read side of the COUNTERS map.
pub struct CounterTable {
    pub(super) map: PerCpuArray<MapData, Counters>,
}

impl CounterTable {
    /// The counters summed over all CPUs.
    pub fn totals(&self) -> anyhow::Result<Counters> {
        let per_cpu = self.map.get(&0, 0).context("reading counters")?;
        let mut total = Counters::default();
        for counters in per_cpu.iter() {
            total.accumulate(counters);
        }
        Ok(total)
    }
}
