//! Loading: the programs from the object build.rs made, verified and
//! pinned, with the maps a previous daemon pinned reused; then the
//! datapath's configuration and the return path on the entry end.
use std::{
    collections::BTreeMap,
    fs,
    os::fd::AsFd as _,
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, MapInfo, MapType},
    programs::{ProgramInfo, SchedClassifier, TcAttachType},
};
use metadata_ebpf::{DatapathConfig, names};
use tracing::{debug, info};

use super::{
    CounterTable, Datapath, FlowTable, IdentityPlan, MetadataAddrs, TapAttach,
    bpffs::ensure_bpffs,
    map_layout::{inner_layout_stamp, replace_incompatible_pins},
    pins::remove_pin,
    server_link::ServerLink,
    sys,
    table_writer::TableWriter,
    tc_block,
    tcx::attach_program,
};

/// The pin of the return program's TCX link on the entry end's ingress.
const RETURN_LINK_PIN: &str = "entry-ingress";
/// Where versions that kept the server end in the host's namespace pinned
/// the return program's link (egress of the server end). That end is gone
/// by the time the datapath loads (`server_link` deleted the old pair), so
/// the link is defunct; only its pin is left to remove.
const OLD_RETURN_LINK_PIN: &str = "server-egress";

/// The object file built from metadata-ebpf by build.rs.
pub(super) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/metadata-ebpf"));

/// The maps pinned under `--bpffs DIR/maps/`, reused by the next daemon.
pub(super) const PINNED_MAPS: [&str; 4] =
    [names::PORTS, names::FLOWS, names::CONFIG, names::COUNTERS];

impl Datapath {
    /// Loads the programs (reusing pinned maps if a previous daemon left
    /// them), pins them, and attaches the return path to the entry end.
    pub fn load(
        bpffs: &Path,
        identity: IdentityPlan,
        server: &ServerLink,
        server_port: u16,
        syn_rate_per_port: u32,
        tap_attach: TapAttach,
        metadata: &MetadataAddrs,
    ) -> anyhow::Result<Self> {
        ensure_bpffs(bpffs)?;
        let maps_dir = bpffs.join("maps");
        let progs_dir = bpffs.join("progs");
        let links_dir = bpffs.join("links");
        for dir in [bpffs, &maps_dir, &progs_dir, &links_dir] {
            fs::create_dir_all(dir).with_context(|| {
                format!(
                    "creating {} (is bpffs mounted at /sys/fs/bpf?)",
                    dir.display()
                )
            })?;
        }

        replace_incompatible_pins(&maps_dir, EBPF_OBJECT)?;
        let mut loader = EbpfLoader::new();
        for name in PINNED_MAPS {
            loader.map_pin_path(name, maps_dir.join(name));
        }
        let mut ebpf = loader.load(EBPF_OBJECT).with_context(|| {
            format!(
                "loading the eBPF programs (maps pinned under {}; if they were left by an \
                 incompatible version, remove that directory)",
                maps_dir.display()
            )
        })?;

        for name in [names::TAP_INGRESS, names::SERVER_EGRESS] {
            let program: &mut SchedClassifier = program_mut(&mut ebpf, name)?;
            program
                .load()
                .with_context(|| format!("verifying program {name}"))?;
            let pin = progs_dir.join(name);
            if name == names::TAP_INGRESS && same_program(&pin, program) {
                // The previous daemon's program is this one, on the same
                // maps: keep it, and the taps it is attached to need nothing.
                program
                    .unload()
                    .context("unloading the duplicate tap program")?;
                info!(
                    "keeping the tap program a previous daemon left (the same instructions and maps)"
                );
                continue;
            }
            remove_pin(&pin)?;
            program
                .pin(&pin)
                .with_context(|| format!("pinning {}", pin.display()))?;
        }
        // Taps get the pinned tap program: the one just loaded, or the
        // previous daemon's that is the same.
        let tap_program = SchedClassifier::from_pin(progs_dir.join(names::TAP_INGRESS))
            .context("opening the pinned tap program")?;
        let tap_program_id = tap_program.info().context("the tap program's id")?.id();

        let mut config: Array<MapData, DatapathConfig> = take_map(&mut ebpf, names::CONFIG)?;
        let (metadata_addrs6, served6) = metadata.ipv6_config();
        config
            .set(
                0,
                DatapathConfig {
                    server_addr: identity.server_addr.octets(),
                    server_port_be: server_port.to_be(),
                    server_mac: server.server_mac,
                    redirect_ifindex: server.entry_ifindex,
                    ready: 1,
                    syn_rate_per_port,
                    metadata_addr: metadata.ipv4.octets(),
                    served6,
                    metadata_addrs6,
                },
                0,
            )
            .context("writing the datapath configuration")?;

        let layout_stamp = inner_layout_stamp(EBPF_OBJECT, names::FLOWS)?;
        let flows_pin = maps_dir.join(names::FLOWS);
        let open_flows = || MapData::from_pin(&flows_pin).context("opening the pinned FLOWS");
        let mut datapath = Self {
            ports: take_map(&mut ebpf, names::PORTS)?,
            flows: Arc::new(FlowTable {
                tables: Mutex::new(take_map(&mut ebpf, names::FLOWS)?),
                lookup: open_flows()?,
                open: Mutex::default(),
                identity,
                writer: TableWriter::start(open_flows()?, layout_stamp)?,
                layout_stamp,
            }),
            counters: Arc::new(CounterTable {
                map: take_map(&mut ebpf, names::COUNTERS)?,
            }),
            ebpf,
            tap_program,
            tap_program_id,
            identity,
            links_dir,
            tap_attach,
            attached: imbl::OrdMap::new(),
            started: false,
        };
        // The server's replies cross the veth pair from the server's
        // namespace and arrive here, in the host's, where their taps are.
        attach_program(
            program_mut(&mut datapath.ebpf, names::SERVER_EGRESS)?,
            &datapath.links_dir,
            server.entry_ifindex,
            TcAttachType::Ingress,
            RETURN_LINK_PIN,
        )?;
        remove_pin(&datapath.links_dir.join(OLD_RETURN_LINK_PIN))?;
        if tap_attach == TapAttach::TcBlock {
            // The block and its filter, before any tap is bound to it.
            tc_block::ensure(
                &datapath.tap_program,
                datapath.tap_program_id,
                server.entry_ifindex,
            )?;
        } else {
            // A previous daemon's, in tc-block mode: the block goes with
            // the last qdisc bound to it (taps are unbound as attached).
            tc_block::release(server.entry_ifindex);
        }
        Ok(datapath)
    }
}

/// Whether the program pinned at `pin` is `loaded` again: the same
/// instructions (the tag leaves map references out) on the same maps.
fn same_program(pin: &Path, loaded: &SchedClassifier) -> bool {
    let (Ok(old), Ok(new)) = (ProgramInfo::from_pin(pin), loaded.info()) else {
        return false;
    };
    let map_ids = |info: &ProgramInfo| info.map_ids().ok().flatten();
    let (Some(old_maps), Some(new_maps)) = (map_ids(&old), map_ids(&new)) else {
        return false;
    };
    if old.tag() != new.tag() || old.program_type() != new.program_type() {
        return false;
    }
    match same_data_maps(&old_maps, &new_maps) {
        Ok(same) => same,
        Err(err) => {
            debug!("cannot compare the tap programs' data: {err:#}");
            false
        }
    }
}

/// Whether two loads of a program use the same maps. The pinned maps are
/// shared, so they have the same ids; every load also makes its own maps
/// for the object's data sections (`.rodata`, `.rodata.cst16`: constants),
/// which the tag leaves out, so those must hold the same bytes under the
/// same names. Any other map only one side has (a pinned map replaced since,
/// say) makes them different.
fn same_data_maps(old: &[u32], new: &[u32]) -> anyhow::Result<bool> {
    let own = |ids: &[u32], other: &[u32]| {
        data_sections(ids.iter().copied().filter(|id| !other.contains(id)))
    };
    Ok(own(old, new)? == own(new, old)?)
}

/// The name and contents of each of `ids`, which must be data-section maps
/// (one-element arrays); an error for any other map.
fn data_sections(
    ids: impl Iterator<Item = u32>,
) -> anyhow::Result<BTreeMap<Vec<u8>, Option<Vec<u8>>>> {
    let mut sections = BTreeMap::new();
    for id in ids {
        let info = MapInfo::from_id(id).with_context(|| format!("map {id}"))?;
        let name = info.name().to_vec();
        let is_data_section = matches!(info.map_type(), Ok(MapType::Array))
            && info.max_entries() == 1
            && name.starts_with(b".");
        if !is_data_section {
            anyhow::bail!(
                "map {id} ({}) is not a data section",
                String::from_utf8_lossy(&name)
            );
        }
        let fd = info.fd().with_context(|| format!("opening map {id}"))?;
        let value = sys::map_lookup(fd.as_fd(), &0u32.to_ne_bytes(), info.value_size() as usize)
            .with_context(|| format!("reading map {id}"))?;
        if sections.insert(name, value).is_some() {
            anyhow::bail!("two data sections of the same name");
        }
    }
    Ok(sections)
}

pub(super) fn program_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> anyhow::Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a classifier"))
}

fn take_map<T>(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}
