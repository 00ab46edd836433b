//! The pinned maps' layout check: a map left by a build whose definition
//! differs from this one's is replaced rather than reused.
//!
//! aya reuses a pinned map without comparing it with the program's
//! definition. A daemon upgraded across a layout change would then run with
//! maps of the wrong shape, and a changed value layout of the same size
//! (fields reordered, a field's type changed, a field renamed into another
//! meaning) would not even fail: the new program would read the old bytes
//! as other fields. So every pin is compared with what this build's own
//! object defines, generically for whatever maps it has:
//!
//! - the map type, key size, value size and capacity (`bpf_map_info`; the
//!   object's are in turn held to the shared crate's types, so FLOWS's key
//!   count follows `MAX_FLOW_TABLE_KEYS`, a key per lane of each port), and
//! - the layout of the key and the value type, from the BTF the kernel
//!   keeps for the pinned map against the BTF of this build's object, field
//!   by field (name, type, bit offset): see [`super::btf`].
//!
//! A pin that differs in any of them, or whose layout cannot be told (made
//! without BTF, unreadable), is removed; the loader then creates the map anew: the
//! reconciler refills PORTS, CONFIG is rewritten, and only open guest
//! connections (FLOWS) and the counters start over.
use std::path::Path;

use anyhow::{Context as _, bail};
use metadata_ebpf::{Counters, DatapathConfig, Family, PortEntry, names};
use tracing::{debug, warn};

use super::{btf::Btf, pins::remove_pin, sys};

/// Each pinned map's (name, key size, value size, max entries) as the
/// shared crate's types and constants define it. The object's BTF says the
/// same when it was built from this source; [`check_object_sizes`] makes
/// sure it does, so a pin is held to both.
fn expected_layouts() -> [(&'static str, usize, usize, u32); 4] {
    use std::mem::size_of;
    [
        (
            names::PORTS,
            size_of::<u32>(),
            size_of::<PortEntry>(),
            metadata_ebpf::MAX_PORTS,
        ),
        // Identity address (one key per lane of each port) -> the port's
        // flow table (each table's own layout is checked in
        // `FlowTable::ensure`, by the stamp in its name).
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

/// Fails when the object's definition of a pinned map has other sizes or
/// capacity than the shared crate's types (an object built from another
/// source than this daemon): holding pins to such an object would reuse
/// maps the daemon's own reads and writes do not fit.
fn check_object_sizes(object_maps: &[(String, MapShape)]) -> anyhow::Result<()> {
    for (name, key_size, value_size, max_entries) in expected_layouts() {
        let Some((_, shape)) = object_maps.iter().find(|(found, _)| found == name) else {
            bail!("the eBPF object defines no map {name}");
        };
        let found = (
            shape.key_size as usize,
            shape.value_size as usize,
            shape.max_entries,
        );
        let wanted = (key_size, value_size, max_entries);
        if found != wanted {
            bail!(
                "the eBPF object's {name} has (key, value, entries) {found:?}, \
                 the daemon's types {wanted:?}"
            );
        }
    }
    Ok(())
}

/// One map as this build defines it, in the terms the kernel reports a
/// pinned map in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// [`Btf::layout`] of the key and value types ("void" for none); for a
    /// pinned map created without BTF, "unknown", which never matches.
    pub key_layout: String,
    pub value_layout: String,
}

/// What a map created without BTF has for a layout.
const UNKNOWN_LAYOUT: &str = "unknown (created without BTF)";

/// `BPF_MAP_TYPE_ARRAY_OF_MAPS` and `BPF_MAP_TYPE_HASH_OF_MAPS`: loaders
/// create them without BTF (the kernel takes none for them), and their
/// values are the ids of the maps they hold, whose layout is checked one by
/// one when they are opened (see [`inner_layout_stamp`]).
fn is_map_of_maps(map_type: u32) -> bool {
    matches!(map_type, 12 | 13)
}

impl MapShape {
    /// What can be compared of a map of maps: its shape, not a layout.
    fn without_layouts(mut self) -> Self {
        if is_map_of_maps(self.map_type) {
            self.key_layout = "(map of maps)".into();
            self.value_layout = "(map of maps)".into();
        }
        self
    }
}

/// A stamp of the layout of the maps the map of maps `name` holds, from
/// the object's BTF: a 32-bit FNV-1a hash of their key and value layouts.
/// The daemon creates those maps itself, without BTF, so it writes the
/// stamp into each one's name and compares it when it finds one a previous
/// daemon left: a table of another layout is replaced, not reused.
pub fn inner_layout_stamp(object: &[u8], name: &str) -> anyhow::Result<u32> {
    use object::{Object as _, ObjectSection as _};
    let file = object::File::parse(object).context("parsing the eBPF object")?;
    let section = file
        .section_by_name(".BTF")
        .context("the eBPF object has no .BTF section")?;
    let btf = Btf::parse(section.data().context("reading .BTF")?)?;
    let definition = btf
        .map_definitions()?
        .into_iter()
        .find(|map| map.name == name)
        .with_context(|| format!("the eBPF object defines no map {name}"))?;
    let (key, value) = definition
        .inner
        .with_context(|| format!("{name} is not a map of maps"))?;
    let layout = format!("{}|{}", btf.layout(key)?, btf.layout(value)?);
    Ok(fnv1a(layout.as_bytes()))
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |hash, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    })
}

/// The maps an eBPF object defines, by name, read from its `.BTF` section.
pub fn object_maps(object: &[u8]) -> anyhow::Result<Vec<(String, MapShape)>> {
    use object::{Object as _, ObjectSection as _};
    let file = object::File::parse(object).context("parsing the eBPF object")?;
    let section = file
        .section_by_name(".BTF")
        .context("the eBPF object has no .BTF section")?;
    let btf = Btf::parse(section.data().context("reading .BTF")?)?;
    btf.map_definitions()?
        .into_iter()
        .map(|map| {
            let size = |id: u32| if id == 0 { Ok(0) } else { btf.size_of(id) };
            let shape = MapShape {
                map_type: map.map_type,
                key_size: size(map.key_type)?,
                value_size: size(map.value_type)?,
                max_entries: map.max_entries,
                key_layout: btf.layout(map.key_type)?,
                value_layout: btf.layout(map.value_type)?,
            };
            Ok((map.name, shape))
        })
        .collect::<anyhow::Result<_>>()
        .context("reading the eBPF object's map definitions")
}

/// The shape of the map pinned at `pin`, as the kernel created it.
pub fn pinned_shape(pin: &Path) -> anyhow::Result<MapShape> {
    let info = sys::pinned_map_info(pin).context("reading the map's info")?;
    let (key_layout, value_layout) = if info.btf_id == 0 {
        (UNKNOWN_LAYOUT.to_owned(), UNKNOWN_LAYOUT.to_owned())
    } else {
        let btf = Btf::parse(&sys::btf_by_id(info.btf_id).context("reading the map's BTF")?)
            .context("parsing the map's BTF")?;
        (
            btf.layout(info.btf_key_type_id)?,
            btf.layout(info.btf_value_type_id)?,
        )
    };
    Ok(MapShape {
        map_type: info.map_type,
        key_size: info.key_size,
        value_size: info.value_size,
        max_entries: info.max_entries,
        key_layout,
        value_layout,
    })
}

/// Removes each pin under `maps_dir` whose map differs from this build's
/// definition of the same name (`object`: the eBPF object about to be
/// loaded). Pins of maps this build does not define are left alone.
pub fn replace_incompatible_pins(maps_dir: &Path, object: &[u8]) -> anyhow::Result<()> {
    let maps = object_maps(object)?;
    check_object_sizes(&maps)?;
    for (name, wanted) in maps {
        let pin = maps_dir.join(&name);
        if !pin.exists() {
            continue;
        }
        let wanted = wanted.without_layouts();
        match pinned_shape(&pin).map(MapShape::without_layouts) {
            Ok(found) if found == wanted => debug!(map = name, "pinned map reused"),
            Ok(found) => {
                warn!(
                    map = name,
                    difference = %difference(&found, &wanted),
                    "pinned map has another layout; replacing it"
                );
                remove_pin(&pin)?;
            }
            Err(err) => {
                warn!(map = name, "pinned map unusable ({err:#}); replacing it");
                remove_pin(&pin)?;
            }
        }
    }
    Ok(())
}

/// What differs, for the log line: the first field that does.
fn difference(found: &MapShape, wanted: &MapShape) -> String {
    let fields: [(&str, String, String); 6] = [
        (
            "type",
            found.map_type.to_string(),
            wanted.map_type.to_string(),
        ),
        (
            "key size",
            found.key_size.to_string(),
            wanted.key_size.to_string(),
        ),
        (
            "value size",
            found.value_size.to_string(),
            wanted.value_size.to_string(),
        ),
        (
            "max entries",
            found.max_entries.to_string(),
            wanted.max_entries.to_string(),
        ),
        ("key", found.key_layout.clone(), wanted.key_layout.clone()),
        (
            "value",
            found.value_layout.clone(),
            wanted.value_layout.clone(),
        ),
    ];
    fields
        .into_iter()
        .find(|(_, found, wanted)| found != wanted)
        .map(|(what, found, wanted)| format!("{what}: pinned {found}, this build {wanted}"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This build's object defines every map the daemon pins, each with a
    /// key and value layout taken from the shared crate's types.
    #[test]
    fn the_object_defines_each_pinned_map_with_its_layout() {
        let maps = object_maps(super::super::load::EBPF_OBJECT).unwrap();
        let names: Vec<&str> = maps.iter().map(|(name, _)| name.as_str()).collect();
        for name in super::super::load::PINNED_MAPS {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        // FLOWS holds the ports' flow tables (their layout is stamped in
        // their names, see the next test); CONFIG has a layout of its own.
        let shape = |wanted: &str| &maps.iter().find(|(name, _)| name == wanted).unwrap().1;
        let flows = shape("FLOWS");
        assert!(is_map_of_maps(flows.map_type), "{flows:?}");
        assert_eq!(flows.value_size, 4, "a map id");
        let config = shape("CONFIG");
        assert_eq!(
            config.value_size as usize,
            std::mem::size_of::<metadata_ebpf::DatapathConfig>()
        );
        assert!(
            config.value_layout.starts_with("struct DatapathConfig/"),
            "{}",
            config.value_layout
        );
    }

    /// FLOWS holds a flow table per port; the stamp follows the tables'
    /// key and value layouts (FlowKey, FlowEntry).
    #[test]
    fn the_flow_tables_have_a_layout_stamp() {
        let stamp = inner_layout_stamp(super::super::load::EBPF_OBJECT, "FLOWS").unwrap();
        assert_eq!(
            stamp,
            inner_layout_stamp(super::super::load::EBPF_OBJECT, "FLOWS").unwrap()
        );
        assert!(inner_layout_stamp(super::super::load::EBPF_OBJECT, "PORTS").is_err());
        assert_ne!(
            fnv1a(b"struct FlowEntry/24{a@0}"),
            fnv1a(b"struct FlowEntry/24{b@0}")
        );
    }

    /// The object's sizes are the shared crate's (incl. FLOWS holding a key
    /// per lane of every port); an object whose FLOWS has another capacity
    /// (a build with another MAX_FLOW_TABLE_KEYS) is refused.
    #[test]
    fn the_object_sizes_are_held_to_the_shared_types() {
        let mut maps = object_maps(super::super::load::EBPF_OBJECT).unwrap();
        check_object_sizes(&maps).unwrap();
        let flows = &mut maps.iter_mut().find(|(name, _)| name == "FLOWS").unwrap().1;
        assert_eq!(flows.max_entries, metadata_ebpf::MAX_FLOW_TABLE_KEYS);
        flows.max_entries = metadata_ebpf::MAX_PORTS;
        let err = check_object_sizes(&maps).unwrap_err().to_string();
        assert!(err.contains("FLOWS"), "{err}");
    }

    #[test]
    fn the_difference_names_the_first_field_that_differs() {
        let shape = MapShape {
            map_type: 1,
            key_size: 4,
            value_size: 8,
            max_entries: 16,
            key_layout: "int u32/4/0x20".into(),
            value_layout: "struct A/8{x@0: int u32/4/0x20, y@32: int u32/4/0x20}".into(),
        };
        let other = MapShape {
            value_layout: "struct A/8{y@0: int u32/4/0x20, x@32: int u32/4/0x20}".into(),
            ..shape.clone()
        };
        assert_eq!(difference(&shape, &shape), "");
        assert!(difference(&shape, &other).starts_with("value: pinned struct A/8{x@0"));
    }
}
