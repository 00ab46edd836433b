//! The datapath's flow tables, read with bpf(2): the pinned FLOWS map holds,
//! for each attached port's identity address, the id of that port's own flow
//! table (an LRU hash map of the guest connections it has open).
use std::net::Ipv4Addr;
use std::os::fd::AsFd as _;
use std::path::Path;

use anyhow::{Context, Result};
use mdr_bpffs::sys;

/// One port's flow table.
#[derive(Clone, Debug)]
pub struct FlowTable {
    pub identity: Ipv4Addr,
    pub map_id: u32,
    /// Flows in it now.
    pub entries: usize,
    pub max_entries: u64,
    /// Kernel memory the table takes, as the kernel accounts it.
    pub memlock_bytes: u64,
}

/// Every port's flow table, from the FLOWS map pinned at `flows`: one row
/// per table, though FLOWS holds each under every lane's identity address
/// (IPv4, then each IPv6 metadata address); the row names the lowest of
/// them, the IPv4 lane's.
pub fn tables(flows: &Path) -> Result<Vec<FlowTable>> {
    let mut by_id = std::collections::BTreeMap::<u32, FlowTable>::new();
    for table in keyed_tables(flows)? {
        match by_id.entry(table.map_id) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(table);
            }
            std::collections::btree_map::Entry::Occupied(mut kept) => {
                if table.identity < kept.get().identity {
                    kept.insert(table);
                }
            }
        }
    }
    Ok(by_id.into_values().collect())
}

/// One row per key of FLOWS (a table shows once per lane), read with
/// bpf(2) directly: a handful of calls per table, where two bpftool runs
/// per key took 16 minutes for 10,000 ports.
fn keyed_tables(flows: &Path) -> Result<Vec<FlowTable>> {
    let outer = sys::obj_get(flows).with_context(|| format!("opening {}", flows.display()))?;
    let mut tables = Vec::new();
    for key in sys::map_keys(outer.as_fd(), 4).context("listing FLOWS")? {
        let key: [u8; 4] = key.try_into().expect("4-byte keys");
        // The inner map's id (a map of maps' value, as userspace reads it).
        // Either is gone when the port went between the two looks: skipped.
        let Some(id) = sys::map_lookup(outer.as_fd(), &key, 4).context("reading FLOWS")? else {
            continue;
        };
        let map_id = u32::from_ne_bytes(id.try_into().expect("4-byte values"));
        let Some(table) = sys::map_fd_by_id(map_id).context("opening a flow table")? else {
            continue;
        };
        let size = sys::map_size(table.as_fd()).context("reading a flow table's size")?;
        let entries = sys::map_keys(table.as_fd(), size.key_size as usize)
            .context("listing a flow table's flows")?
            .len();
        tables.push(FlowTable {
            identity: Ipv4Addr::from(key),
            map_id,
            entries,
            max_entries: u64::from(size.max_entries),
            memlock_bytes: size.memlock_bytes,
        });
    }
    Ok(tables)
}

/// Flows in all the tables together.
pub fn count(flows: &Path) -> Result<usize> {
    Ok(tables(flows)?.iter().map(|table| table.entries).sum())
}
