//! The datapath's tables: each port's flow table in FLOWS (created and
//! dropped with the port; who is behind a connection to the server), and
//! what the programs counted (COUNTERS).
use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsFd as _,
    sync::Mutex,
};

use anyhow::Context as _;
use aya::maps::{HashMap, HashOfMaps, Map, MapData, MapError, PerCpuArray};
use metadata_ebpf::{Counters, FlowEntry, FlowKey};
use tracing::{debug, warn};

use super::{IdentityPlan, sys, table_writer::TableWriter};

/// FLOWS: each registered port's own flow table, by identity address (see
/// the eBPF crate's `datapath.rs`: a guest's traffic can only evict its own
/// port's flows). The daemon creates a port's table when it attaches the
/// port and removes it when it detaches it; the tables live as long as the
/// pinned FLOWS refers to them, so open connections keep their flows across
/// restarts. The read side tells who is behind a connection to the server.
pub struct FlowTable {
    pub(super) tables: Mutex<HashOfMaps<MapData, [u8; 4], MapData>>,
    /// FLOWS again, for `origin`'s raw lookups of a table's id.
    pub(super) lookup: MapData,
    /// Tables `origin` has opened, by identity, with the id they had: a
    /// connection then costs two lookups (the table's id, the flow) instead
    /// of opening the table each time. A table replaced or removed has
    /// another id or none, so a stale one is never used; at most
    /// `OPEN_TABLES` are kept (each holds an fd).
    pub(super) open: Mutex<OpenTables>,
    pub(super) identity: IdentityPlan,
    /// Adds and removes tables off the attach path.
    pub(super) writer: TableWriter,
}

type OpenTables = std::collections::HashMap<[u8; 4], (u32, PortFlows)>;

/// How many flow tables `FlowTable::origin` keeps open.
const OPEN_TABLES: usize = 256;

/// A connection's peer, resolved through the datapath's maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowOrigin {
    pub slot: u32,
    pub flow: FlowEntry,
}

/// One port's flow table as aya reads it.
type PortFlows = HashMap<MapData, FlowKey, FlowEntry>;

fn port_flows(table: MapData) -> Result<PortFlows, MapError> {
    PortFlows::try_from(Map::from_map_data(table)?)
}

impl FlowTable {
    fn tables(&self) -> std::sync::MutexGuard<'_, HashOfMaps<MapData, [u8; 4], MapData>> {
        // A panic while holding the lock leaves the map itself consistent.
        self.tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn open_tables(&self) -> std::sync::MutexGuard<'_, OpenTables> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The id of the table FLOWS holds for `identity`, if any (one lookup,
    /// nothing opened).
    fn table_id(&self, identity: Ipv4Addr) -> Option<u32> {
        sys::inner_map_id(self.lookup.fd().as_fd(), &identity.octets())
            .ok()
            .flatten()
    }

    /// Makes sure the port with `identity` (slot `slot`) has a flow table:
    /// the one a previous daemon, an earlier attach or `prepare` left (so
    /// open connections keep their flows), or a new one. Waits for the
    /// writer only when the table is not there yet, and then only until it
    /// is (see `table_writer`).
    pub(super) fn ensure(&self, identity: Ipv4Addr, slot: u32) -> anyhow::Result<()> {
        self.writer.settle(identity, || self.table_id(identity));
        if self.has_table_of_our_layout(identity)? {
            return Ok(());
        }
        self.writer.insert([(identity, slot)]);
        self.writer.settle(identity, || self.table_id(identity));
        if self.table_id(identity).is_none() {
            anyhow::bail!("the flow table of {identity} could not be added (see the log)");
        }
        Ok(())
    }

    fn has_table_of_our_layout(&self, identity: Ipv4Addr) -> anyhow::Result<bool> {
        let tables = self.tables();
        let table = match tables.get(&identity.octets(), 0) {
            Ok(table) => table,
            Err(MapError::KeyNotFound) => return Ok(false),
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("looking up the flow table of {identity}"));
            }
        };
        let layout = table.info().map(|info| {
            (
                info.map_type().ok(),
                info.key_size() as usize,
                info.value_size() as usize,
                info.max_entries(),
            )
        });
        let wanted = (
            Some(aya::maps::MapType::LruHash),
            std::mem::size_of::<FlowKey>(),
            std::mem::size_of::<FlowEntry>(),
            metadata_ebpf::MAX_FLOWS_PER_PORT,
        );
        match layout {
            Ok(found) if found == wanted => Ok(true),
            found => {
                warn!(%identity, ?found, "flow table of another layout; replacing it");
                Ok(false)
            }
        }
    }

    /// Has fresh tables made, in the background, for ports about to be
    /// attached (spares for the next slots, or a pass's ports that have
    /// none): `ensure` then finds them. Identities that have a table or
    /// one on its way are skipped.
    pub(super) fn prepare(&self, wanted: impl IntoIterator<Item = (Ipv4Addr, u32)>) {
        let missing: Vec<(Ipv4Addr, u32)> = wanted
            .into_iter()
            .filter(|(identity, _)| {
                !self.writer.is_queued(*identity) && self.table_id(*identity).is_none()
            })
            .collect();
        if !missing.is_empty() {
            self.writer.insert(missing);
        }
    }

    /// Empties the table of `identity` (its flows were a tap's that is
    /// gone; the port stays registered and keeps the table).
    pub(super) fn flush(&self, identity: Ipv4Addr) {
        let table = match self.tables().get(&identity.octets(), 0) {
            Ok(table) => table,
            Err(_) => return,
        };
        let Ok(mut flows) = port_flows(table) else {
            return;
        };
        let keys: Vec<FlowKey> = flows.keys().filter_map(Result::ok).collect();
        for key in keys {
            let _ = flows.remove(&key);
        }
    }

    /// Drops the flow table of `identity`, if there is one, in the background.
    pub(super) fn remove(&self, identity: Ipv4Addr) {
        self.open_tables().remove(&identity.octets());
        self.writer.remove([identity]);
    }

    /// Drops every flow table but those of `identities`, in the background.
    pub(super) fn retain(&self, identities: &HashSet<Ipv4Addr>) {
        let stale: Vec<Ipv4Addr> = self
            .tables()
            .keys()
            .filter_map(Result::ok)
            .map(Ipv4Addr::from)
            .filter(|identity| !identities.contains(identity))
            .collect();
        debug!(count = stale.len(), "removing stale flow tables");
        self.writer.remove(stale);
    }

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
        let identity = key.identity_addr;
        let id = match sys::inner_map_id(self.lookup.fd().as_fd(), &identity) {
            Ok(Some(id)) => id,
            Ok(None) => {
                warn!(%peer, "no flow table for the connection's port");
                return None;
            }
            Err(err) => {
                warn!(%peer, %err, "looking up the flow table of a connection");
                return None;
            }
        };
        let mut open = self.open_tables();
        if open
            .get(&identity)
            .is_none_or(|(open_id, _)| *open_id != id)
        {
            if open.len() >= OPEN_TABLES {
                open.clear();
            }
            match MapData::from_id(id).and_then(port_flows) {
                Ok(table) => open.insert(identity, (id, table)),
                Err(err) => {
                    warn!(%peer, %err, "opening the flow table of a connection");
                    return None;
                }
            };
        }
        let (_, table) = &open[&identity];
        match table.get(&key, 0) {
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
