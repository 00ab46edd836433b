//! The pinned maps' layout check: a map left by a build with other key or
//! value sizes is replaced rather than reused.
use std::path::Path;

use aya::maps::MapData;
use metadata_ebpf::{Counters, DatapathConfig, Family, PortEntry, names};
use tracing::warn;

use super::pins::remove_pin;

/// Each pinned map's (name, key size, value size, max entries) as this
/// build defines it.
fn expected_layouts() -> [(&'static str, usize, usize, u32); 4] {
    use std::mem::size_of;
    [
        (
            names::PORTS,
            size_of::<u32>(),
            size_of::<PortEntry>(),
            metadata_ebpf::MAX_PORTS,
        ),
        // Identity address -> the port's flow table (each table's own
        // layout is checked in `FlowTable::ensure`).
        (
            names::FLOWS,
            size_of::<[u8; 4]>(),
            size_of::<u32>(),
            metadata_ebpf::MAX_FLOW_TABLE_KEYS,
        ),
        (
            names::CONFIG,
            size_of::<u32>(),
            size_of::<DatapathConfig>(),
            1,
        ),
        (
            names::COUNTERS,
            size_of::<u32>(),
            size_of::<Counters>(),
            Family::COUNT as u32,
        ),
    ]
}

/// aya reuses a pinned map without comparing it with the program's
/// definition. A daemon upgraded across a layout change would then run with
/// maps of the wrong shape, so such pins are dropped here and recreated: the
/// reconciler refills PORTS, CONFIG is rewritten, and only open guest
/// connections (FLOWS) and the counters start over.
pub fn replace_incompatible_pins(maps_dir: &Path) -> anyhow::Result<()> {
    for (name, key_size, value_size, max_entries) in expected_layouts() {
        let pin = maps_dir.join(name);
        if !pin.exists() {
            continue;
        }
        let found = MapData::from_pin(&pin)
            .and_then(|map| map.info())
            .map(|info| {
                (
                    info.key_size() as usize,
                    info.value_size() as usize,
                    info.max_entries(),
                )
            });
        let wanted = (key_size, value_size, max_entries);
        match found {
            Ok(found) if found == wanted => {}
            Ok(found) => {
                warn!(
                    map = name,
                    ?found,
                    ?wanted,
                    "pinned map has another layout; replacing it"
                );
                remove_pin(&pin)?;
            }
            Err(err) => {
                warn!(map = name, %err, "pinned map unreadable; replacing it");
                remove_pin(&pin)?;
            }
        }
    }
    Ok(())
}
