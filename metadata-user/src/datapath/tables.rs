//! The read side of the datapath's maps: who is behind a connection to the
//! server (FLOWS), and what the programs counted (COUNTERS).
use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::Context as _;
use aya::maps::{HashMap, MapData, PerCpuArray};
use metadata_ebpf::{Counters, FlowEntry, FlowKey};
use tracing::warn;

use super::IdentityPlan;

/// Read side of the FLOWS map: who is behind a connection to the server.
pub struct FlowTable {
    pub(super) map: HashMap<MapData, FlowKey, FlowEntry>,
    pub(super) identity: IdentityPlan,
}

/// A connection's peer, resolved through the datapath's maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowOrigin {
    pub slot: u32,
    pub flow: FlowEntry,
}

impl FlowTable {
    /// The port slot an identity address encodes (None for any other).
    pub fn slot(&self, addr: Ipv4Addr) -> Option<u32> {
        self.identity.slot_of(addr)
    }

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
