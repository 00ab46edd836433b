//! The datapath's flow tables, read with bpftool: the pinned FLOWS map holds,
//! for each attached port's identity address, the id of that port's own flow
//! table (an LRU hash map of the guest connections it has open).
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::cmd;

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

/// A byte as bpftool's JSON prints it: "0x1f" (or a number).
fn byte(value: &Value) -> Result<u8> {
    match value {
        Value::String(text) => Ok(u8::from_str_radix(text.trim_start_matches("0x"), 16)?),
        Value::Number(n) => Ok(u8::try_from(n.as_u64().context("a byte")?)?),
        _ => anyhow::bail!("not a byte: {value}"),
    }
}

fn bytes(value: &Value) -> Result<Vec<u8>> {
    value
        .as_array()
        .with_context(|| format!("not a byte array: {value}"))?
        .iter()
        .map(byte)
        .collect()
}

fn bpftool(args: &[&str]) -> Result<Value> {
    let out = cmd::run(&[&["bpftool", "-j"][..], args].concat())?;
    serde_json::from_str(&out).with_context(|| format!("bpftool {args:?} printed {out:?}"))
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

/// One row per key of FLOWS (a table shows once per lane).
fn keyed_tables(flows: &Path) -> Result<Vec<FlowTable>> {
    let dump = bpftool(&["map", "dump", "pinned", &flows.to_string_lossy()])?;
    let mut tables = Vec::new();
    for entry in dump.as_array().into_iter().flatten() {
        let key: [u8; 4] = bytes(&entry["key"])?
            .try_into()
            .map_err(|key| anyhow::anyhow!("FLOWS key {key:?} is not an address"))?;
        // The inner map's id: a number, or its bytes in host order.
        let map_id = match &entry["value"] {
            Value::Number(n) => u32::try_from(n.as_u64().context("map id")?)?,
            value => {
                let value: [u8; 4] = bytes(value)?
                    .try_into()
                    .map_err(|v| anyhow::anyhow!("FLOWS value {v:?} is not a map id"))?;
                u32::from_ne_bytes(value)
            }
        };
        let id = map_id.to_string();
        let read = bpftool(&["map", "show", "id", &id])
            .and_then(|info| Ok((info, bpftool(&["map", "dump", "id", &id])?)));
        let (info, flows) =
            match read {
                Ok(read) => read,
                // The port went between the two looks (its table with it):
                // not an error, unless FLOWS still lists that table.
                Err(err) => {
                    let again = bpftool(&["map", "dump", "pinned", &flows.to_string_lossy()])?;
                    if again.as_array().into_iter().flatten().any(|other| {
                        other["key"] == entry["key"] && other["value"] == entry["value"]
                    }) {
                        return Err(err);
                    }
                    continue;
                }
            };
        tables.push(FlowTable {
            identity: Ipv4Addr::from(key),
            map_id,
            entries: flows.as_array().map_or(0, Vec::len),
            max_entries: info["max_entries"].as_u64().unwrap_or(0),
            memlock_bytes: info["bytes_memlock"].as_u64().unwrap_or(0),
        });
    }
    Ok(tables)
}

/// Flows in all the tables together.
pub fn count(flows: &Path) -> Result<usize> {
    Ok(tables(flows)?.iter().map(|table| table.entries).sum())
}
