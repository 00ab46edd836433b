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
use metadata_ebpf::{Counters, Family, FlowEntry, FlowKey, IDENTITY_LANES};
use tracing::{debug, warn};

use super::{
    IdentityPlan, sys,
    table_writer::{TableWriter, table_name},
};

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
    /// The layout stamp of this build's flow tables
    /// (`map_layout::inner_layout_stamp`), carried in each table's name
    /// (`table_writer::table_name`).
    pub(super) layout_stamp: u32,
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

    /// The id of the port's table if FLOWS holds it under every lane's
    /// identity address (a port has one table, under each of its lanes).
    fn table_id_in_every_lane(&self, identities: &[Ipv4Addr; IDENTITY_LANES]) -> Option<u32> {
        let id = self.table_id(identities[0])?;
        identities[1..]
            .iter()
            .all(|identity| self.table_id(*identity) == Some(id))
            .then_some(id)
    }

    /// Makes sure the port with `identities` (its identity address in each
    /// lane, lane 0 first; slot `slot`) has a flow table under each of them:
    /// the one a previous daemon, an earlier attach or `prepare` left under
    /// lane 0 (so open connections keep their flows), or a new one. Waits
    /// for the writer only when the table is not there yet, and then only
    /// until it is (see `table_writer`).
    pub(super) fn ensure(
        &self,
        identities: &[Ipv4Addr; IDENTITY_LANES],
        slot: u32,
    ) -> anyhow::Result<()> {
        let identity = identities[0];
        let every_lane = || self.table_id_in_every_lane(identities);
        self.writer.settle(identity, every_lane);
        if self.has_table_of_our_layout(identity, slot)? {
            if every_lane().is_none() {
                // Left by a daemon with fewer lanes (before IPv6): the same
                // table goes under the others too, here and now (rare).
                self.add_to_every_lane(identities)?;
            }
            return Ok(());
        }
        self.writer.insert([(*identities, slot)]);
        self.writer.settle(identity, every_lane);
        if every_lane().is_none() {
            anyhow::bail!("the flow table of {identity} could not be added (see the log)");
        }
        Ok(())
    }

    /// Puts lane 0's table under every other lane's identity address.
    fn add_to_every_lane(&self, identities: &[Ipv4Addr; IDENTITY_LANES]) -> anyhow::Result<()> {
        let mut tables = self.tables();
        let table = tables
            .get(&identities[0].octets(), 0)
            .with_context(|| format!("looking up the flow table of {}", identities[0]))?;
        let id = table.info()?.id();
        for identity in &identities[1..] {
            if self.table_id(*identity) != Some(id) {
                tables
                    .insert(identity.octets(), &table, 0)
                    .with_context(|| format!("adding the flow table of {identity}"))?;
            }
        }
        Ok(())
    }

    /// Whether the table under `identity` is one of this build's layout:
    /// its name carries the layout stamp, so a table a build with other
    /// FlowKey/FlowEntry fields made is not reused, even when its sizes
    /// match.
    fn has_table_of_our_layout(&self, identity: Ipv4Addr, slot: u32) -> anyhow::Result<bool> {
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
                info.name_as_str().map(str::to_owned),
            )
        });
        let wanted = (
            Some(aya::maps::MapType::LruHash),
            std::mem::size_of::<FlowKey>(),
            std::mem::size_of::<FlowEntry>(),
            metadata_ebpf::MAX_FLOWS_PER_PORT,
            Some(table_name(self.layout_stamp, slot)),
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
    /// none): `ensure` then finds them. Ports that have a table in every
    /// lane or one on its way are skipped, and so are those whose lane 0
    /// table is of this layout (see `ensure`).
    pub(super) fn prepare(
        &self,
        wanted: impl IntoIterator<Item = ([Ipv4Addr; IDENTITY_LANES], u32)>,
    ) {
        let missing: Vec<([Ipv4Addr; IDENTITY_LANES], u32)> = wanted
            .into_iter()
            .filter(|(identities, slot)| {
                if self.writer.is_queued(identities[0])
                    || self.table_id_in_every_lane(identities).is_some()
                {
                    return false;
                }
                // A table under lane 0 only: one of this layout (a daemon
                // with fewer lanes left it) is kept, `ensure` puts it under
                // the other lanes with its flows; one of another layout is
                // replaced, and `has_table_of_our_layout` logs that.
                !matches!(self.has_table_of_our_layout(identities[0], *slot), Ok(true))
            })
            .collect();
        if !missing.is_empty() {
            self.writer.insert(missing);
        }
    }

    /// Empties the port's table (its flows were a tap's that is gone; the
    /// port stays registered and keeps the table). One table for every
    /// lane: lane 0's key finds it.
    pub(super) fn flush(&self, identities: &[Ipv4Addr; IDENTITY_LANES]) {
        let table = match self.tables().get(&identities[0].octets(), 0) {
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

    /// Drops the port's flow table, its key under each identity address, in
    /// the background.
    pub(super) fn remove(&self, identities: &[Ipv4Addr; IDENTITY_LANES]) {
        let mut open = self.open_tables();
        for identity in identities {
            open.remove(&identity.octets());
        }
        drop(open);
        self.writer.remove(identities.iter().copied());
    }

    /// Drops every flow table key but those of `identities` (every lane's),
    /// in the background.
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
    /// One family's counters, summed over all CPUs.
    pub fn family(&self, family: Family) -> anyhow::Result<Counters> {
        let per_cpu = self
            .map
            .get(&(family as u32), 0)
            .with_context(|| format!("reading the {} counters", family.name()))?;
        let mut total = Counters::default();
        for counters in per_cpu.iter() {
            total.accumulate(counters);
        }
        Ok(total)
    }

    /// The counters of every family, summed over all CPUs, in
    /// `Family::ALL` order.
    pub fn by_family(&self) -> anyhow::Result<[(Family, Counters); Family::COUNT]> {
        let mut rows = Family::ALL.map(|family| (family, Counters::default()));
        for (family, counters) in &mut rows {
            *counters = self.family(*family)?;
        }
        Ok(rows)
    }
}
