//! Loads, pins and attaches the eBPF programs, and owns the BPF maps.
//!
//! Layout under `--bpffs DIR`:
//! ```text
//! DIR/maps/{PORTS,FLOWS,CONFIG,COUNTERS}   reused across restarts (flows survive;
//!                                          FLOWS holds each port's flow table)
//! DIR/progs/{tap_ingress,server_egress}    the programs of the running daemon
//! DIR/links/server-egress                  TCX egress link on the server end
//! DIR/links/tap-<ifname>                   TCX ingress link on each registered tap ('.' as %2e)
//! ```
//! Links are pinned so the datapath keeps working while the daemon is down
//! or restarting; a new daemon attaches its programs next to the old links
//! and only then removes them, so there is no moment without a program.
//!
//! With `--tap-attach tc` the taps get a tc filter instead of a TCX link
//! (see [`tc_attach`]); the server end stays on TCX either way. Whichever
//! mode runs, attaching a tap removes the other mode's attachment after the
//! new one is in place, so switching modes across a restart leaves one.
pub mod identity;
pub mod netdev;
pub mod reconcile;
mod sys;
pub mod tc_attach;

use std::{
    collections::{BTreeMap, HashSet},
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, HashOfMaps, Map, MapData, MapError, PerCpuArray},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::TcAttachOptions,
    },
};
use metadata_ebpf::{Counters, DatapathConfig, FlowEntry, FlowKey, PortEntry, names};
use tracing::{debug, info, warn};

pub use identity::IdentityPlan;
use netdev::ServerLink;

/// The object file built from metadata-ebpf by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/metadata-ebpf"));

/// How the tap ingress program is attached (`--tap-attach`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TapAttach {
    /// A TCX link, pinned under `links/`.
    #[default]
    Tcx,
    /// A cls_bpf filter on the tap's clsact (or ingress) qdisc.
    Tc,
}

impl TapAttach {
    pub fn as_str(self) -> &'static str {
        match self {
            TapAttach::Tcx => "tcx",
            TapAttach::Tc => "tc",
        }
    }
}

impl std::str::FromStr for TapAttach {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> anyhow::Result<Self> {
        match text {
            "tcx" => Ok(TapAttach::Tcx),
            "tc" => Ok(TapAttach::Tc),
            _ => Err(anyhow!("{text:?} is not an attach mode (tcx or tc)")),
        }
    }
}

/// A registered tap the programs are attached to right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttachedTap {
    pub ifindex: u32,
    pub slot: u32,
}

pub struct Datapath {
    ebpf: Ebpf,
    ports: HashMap<MapData, u32, PortEntry>,
    flows: Arc<FlowTable>,
    counters: Arc<CounterTable>,
    identity: IdentityPlan,
    links_dir: PathBuf,
    tap_attach: TapAttach,
    attached: BTreeMap<String, AttachedTap>,
}

impl Datapath {
    /// Loads the programs (reusing pinned maps if a previous daemon left
    /// them), pins them, and attaches the return path to the server end.
    pub fn load(
        bpffs: &Path,
        identity: IdentityPlan,
        server: &ServerLink,
        server_port: u16,
        syn_rate_per_port: u32,
        tap_attach: TapAttach,
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

        replace_incompatible_pins(&maps_dir)?;
        let mut loader = EbpfLoader::new();
        for name in [names::PORTS, names::FLOWS, names::CONFIG, names::COUNTERS] {
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
            remove_pin(&pin)?;
            program
                .pin(&pin)
                .with_context(|| format!("pinning {}", pin.display()))?;
        }

        let mut config: Array<MapData, DatapathConfig> = take_map(&mut ebpf, names::CONFIG)?;
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
                },
                0,
            )
            .context("writing the datapath configuration")?;

        let mut datapath = Self {
            ports: take_map(&mut ebpf, names::PORTS)?,
            flows: Arc::new(FlowTable {
                tables: Mutex::new(take_map(&mut ebpf, names::FLOWS)?),
                lookup: MapData::from_pin(maps_dir.join(names::FLOWS))
                    .context("opening the pinned FLOWS")?,
                open: Mutex::default(),
                identity,
            }),
            counters: Arc::new(CounterTable {
                map: take_map(&mut ebpf, names::COUNTERS)?,
            }),
            ebpf,
            identity,
            links_dir,
            tap_attach,
            attached: BTreeMap::new(),
        };
        datapath.attach_program(
            names::SERVER_EGRESS,
            server.server_ifindex,
            TcAttachType::Egress,
            "server-egress",
        )?;
        Ok(datapath)
    }

    pub fn flows(&self) -> Arc<FlowTable> {
        self.flows.clone()
    }

    pub fn counters(&self) -> Arc<CounterTable> {
        self.counters.clone()
    }

    pub fn attached(&self) -> &BTreeMap<String, AttachedTap> {
        &self.attached
    }

    /// Starts serving the guest behind `ifname` (now `ifindex`) as `slot`.
    /// Idempotent: attaching what is already attached does nothing.
    pub fn attach_tap(&mut self, ifname: &str, ifindex: u32, slot: u32) -> anyhow::Result<()> {
        let wanted = AttachedTap { ifindex, slot };
        match self.attached.get(ifname) {
            Some(current) if *current == wanted => return Ok(()),
            Some(current) if current.ifindex == ifindex => {
                // Same tap, another slot: the link stays, the port entry and
                // the flow table change.
                let identity = self.identity.address_of(slot)?;
                self.flows.ensure(identity, slot)?;
                let entry = PortEntry::new(slot, identity.octets());
                self.ports
                    .insert(ifindex, entry, 0)
                    .with_context(|| format!("updating {ifname} in the port map"))?;
                self.flows.remove(self.identity.address_of(current.slot)?);
                self.attached.insert(ifname.to_string(), wanted);
                return Ok(());
            }
            // Re-created under the same name: the old link died with the old tap.
            Some(_) => self.detach_tap(ifname)?,
            None => {}
        }
        let identity = self.identity.address_of(slot)?;
        // The port's flow table, then its map entry, then the program: the
        // program passes traffic from taps it does not know, so there is no
        // window where a guest is served wrongly.
        self.flows.ensure(identity, slot)?;
        let entry = PortEntry::new(slot, identity.octets());
        self.ports
            .insert(ifindex, entry, 0)
            .with_context(|| format!("registering {ifname} in the port map"))?;
        if let Err(err) = self.attach_tap_program(ifname, ifindex) {
            let _ = self.ports.remove(&ifindex);
            self.flows.remove(identity);
            return Err(err.context(format!("attaching to {ifname}")));
        }
        info!(
            ifname,
            ifindex,
            slot,
            mode = self.tap_attach.as_str(),
            "tap attached"
        );
        self.attached.insert(ifname.to_string(), wanted);
        Ok(())
    }

    /// Stops serving `ifname`: drops its port entry and its link. Also used
    /// when the tap disappeared (the kernel already dropped the link then).
    pub fn detach_tap(&mut self, ifname: &str) -> anyhow::Result<()> {
        let Some(old) = self.attached.remove(ifname) else {
            return Ok(());
        };
        let _ = self.ports.remove(&old.ifindex);
        // Its open connections cannot get replies any more (the tap is gone,
        // or no longer ours): the flow table goes too.
        if let Ok(identity) = self.identity.address_of(old.slot) {
            self.flows.remove(identity);
        }
        // Both modes' attachments, whichever this daemon uses: cheap when
        // absent, and a tap never keeps a program we no longer account for.
        remove_tc_filter(old.ifindex);
        self.remove_tcx_link(ifname)?;
        info!(ifname, ifindex = old.ifindex, "tap detached");
        Ok(())
    }

    /// Removes the TCX link pinned for `ifname`, if any.
    fn remove_tcx_link(&self, ifname: &str) -> anyhow::Result<()> {
        let pin = self.links_dir.join(tap_pin_name(ifname));
        if !pin.exists() {
            return Ok(());
        }
        // Detach now rather than when the kernel gets round to releasing the
        // unpinned link: attaching the same program to the same tap again
        // soon after (port del + port add) fails with EEXIST while it lives.
        if let Err(err) = sys::detach_pinned_link(&pin) {
            debug!(ifname, %err, "link already gone");
        }
        remove_pin(&pin)
    }

    /// Puts the tap ingress program on `ifindex` the configured way, then
    /// removes what the other mode may have left there (a previous daemon
    /// ran with the other `--tap-attach`): only once the new attachment is
    /// in place, so the tap is never without a program.
    fn attach_tap_program(&mut self, ifname: &str, ifindex: u32) -> anyhow::Result<()> {
        match self.tap_attach {
            TapAttach::Tcx => {
                self.attach_program(
                    names::TAP_INGRESS,
                    ifindex,
                    TcAttachType::Ingress,
                    &tap_pin_name(ifname),
                )?;
                remove_tc_filter(ifindex);
            }
            TapAttach::Tc => {
                let current = netdev::ifname_of(ifindex)?;
                let prog = program_mut(&mut self.ebpf, names::TAP_INGRESS)?;
                tc_attach::attach(prog, &current)?;
                self.remove_tcx_link(ifname)?;
            }
        }
        Ok(())
    }

    /// Forgets port entries, flow tables and link pins that no attached tap
    /// accounts for: what a previous daemon left for ports that are gone now.
    pub fn prune(&mut self) -> anyhow::Result<()> {
        let identities: HashSet<Ipv4Addr> = self
            .attached
            .values()
            .filter_map(|tap| self.identity.address_of(tap.slot).ok())
            .collect();
        self.flows.retain(&identities);
        let live: std::collections::HashSet<u32> =
            self.attached.values().map(|tap| tap.ifindex).collect();
        let stale: Vec<u32> = self
            .ports
            .keys()
            .filter_map(Result::ok)
            .filter(|ifindex| !live.contains(ifindex))
            .collect();
        for ifindex in stale {
            debug!(ifindex, "removing stale port entry");
            let _ = self.ports.remove(&ifindex);
            // A previous daemon in tc mode left its filter on that tap (TCX
            // links are handled with their pins below).
            remove_tc_filter(ifindex);
        }
        for entry in fs::read_dir(&self.links_dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            let Some(ifname) = tap_ifname_of_pin(&name) else {
                continue;
            };
            if !self.attached.contains_key(&ifname) {
                debug!(ifname, "removing stale link pin");
                remove_pin(&self.links_dir.join(name.as_ref()))?;
            }
        }
        Ok(())
    }

    /// Attaches `program` with TCX and pins the link as `links/<pin_name>`,
    /// replacing a link a previous daemon (or a previous tap) left there only
    /// after the new one is in place.
    fn attach_program(
        &mut self,
        program: &str,
        ifindex: u32,
        attach_type: TcAttachType,
        pin_name: &str,
    ) -> anyhow::Result<()> {
        let ifname = netdev::ifname_of(ifindex)?;
        let prog: &mut SchedClassifier = program_mut(&mut self.ebpf, program)?;
        let id = prog
            .attach_with_options(
                &ifname,
                attach_type,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .with_context(|| format!("attaching {program} to {ifname}"))?;
        let link: FdLink = prog.take_link(id)?.try_into()?;
        let pin = self.links_dir.join(pin_name);
        let staging = self.links_dir.join(format!("staging-{pin_name}"));
        remove_pin(&staging)?;
        let pinned: PinnedLink = link
            .pin(&staging)
            .with_context(|| format!("pinning {}", staging.display()))?;
        // Renaming over the old pin drops the old link (nobody else holds it).
        fs::rename(&staging, &pin)
            .with_context(|| format!("moving link pin to {}", pin.display()))?;
        drop(pinned);
        Ok(())
    }
}

/// Removes our tc filter from `ifindex` if there is one. A failure only
/// leaves the program on a tap whose port entry is gone, where it passes
/// everything, so it is logged rather than failing the caller.
pub fn remove_tc_filter(ifindex: u32) {
    match tc_attach::detach(ifindex) {
        Ok(tc_attach::Detached::Removed) => debug!(ifindex, "tc filter removed"),
        Ok(tc_attach::Detached::NotThere) => {}
        Err(err) => warn!(ifindex, %err, "removing our tc filter"),
    }
}

/// bpffs refuses names with a '.', which interface names may contain.
fn tap_pin_name(ifname: &str) -> String {
    format!("tap-{}", ifname.replace('%', "%25").replace('.', "%2e"))
}

fn tap_ifname_of_pin(pin: &str) -> Option<String> {
    let encoded = pin.strip_prefix("tap-")?;
    Some(encoded.replace("%2e", ".").replace("%25", "%"))
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut SchedClassifier> {
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
        // Identity address -> the port's flow table (checked one by one in
        // `FlowTable::ensure`).
        (
            names::FLOWS,
            size_of::<[u8; 4]>(),
            size_of::<u32>(),
            metadata_ebpf::MAX_PORTS,
        ),
        (
            names::CONFIG,
            size_of::<u32>(),
            size_of::<DatapathConfig>(),
            1,
        ),
        (names::COUNTERS, size_of::<u32>(), size_of::<Counters>(), 1),
    ]
}

/// aya reuses a pinned map without comparing it with the program's
/// definition. A daemon upgraded across a layout change would then run with
/// maps of the wrong shape, so such pins are dropped here and recreated: the
/// reconciler refills PORTS, CONFIG is rewritten, and only open guest
/// connections (FLOWS) and the counters start over.
fn replace_incompatible_pins(maps_dir: &Path) -> anyhow::Result<()> {
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

/// Where bpffs is conventionally mounted; mounted by us if nobody has yet
/// (as iproute2 and systemd do), so pins work on a bare host.
const BPFFS_MOUNT: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

fn ensure_bpffs(dir: &Path) -> anyhow::Result<()> {
    let is_bpffs = |path: &Path| -> bool {
        let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
            return false;
        };
        // SAFETY: statfs into a zeroed struct with a valid NUL-terminated path.
        let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
        (unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } == 0)
            && stat.f_type as i64 == BPF_FS_MAGIC
    };
    // The nearest existing ancestor tells which filesystem `dir` will be on.
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if is_bpffs(existing) {
        return Ok(());
    }
    if !dir.starts_with(BPFFS_MOUNT) {
        anyhow::bail!(
            "{} is not on a bpffs (mount one, or use a directory under {BPFFS_MOUNT})",
            dir.display()
        );
    }
    fs::create_dir_all(BPFFS_MOUNT)?;
    let target = std::ffi::CString::new(BPFFS_MOUNT)?;
    let fstype = std::ffi::CString::new("bpf")?;
    // SAFETY: plain mount(2) with valid NUL-terminated strings and no data.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("mounting bpffs at /sys/fs/bpf");
    }
    info!("mounted bpffs at {BPFFS_MOUNT}");
    Ok(())
}

fn remove_pin(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Removes everything the datapath pinned under `bpffs`: links (which
/// detaches the programs), programs and maps.
pub fn remove_pins(bpffs: &Path) -> anyhow::Result<()> {
    match fs::remove_dir_all(bpffs) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", bpffs.display())),
    }
}

/// FLOWS: each registered port's own flow table, by identity address (see
/// the eBPF crate's `datapath.rs`: a guest's traffic can only evict its own
/// port's flows). The daemon creates a port's table when it attaches the
/// port and removes it when it detaches it; the tables live as long as the
/// pinned FLOWS refers to them, so open connections keep their flows across
/// restarts. The read side tells who is behind a connection to the server.
pub struct FlowTable {
    tables: Mutex<HashOfMaps<MapData, [u8; 4], MapData>>,
    /// FLOWS again, for `origin`'s raw lookups of a table's id.
    lookup: MapData,
    /// Tables `origin` has opened, by identity, with the id they had: a
    /// connection then costs two lookups (the table's id, the flow) instead
    /// of opening the table each time. A table replaced or removed has
    /// another id or none, so a stale one is never used; at most
    /// `OPEN_TABLES` are kept (each holds an fd).
    open: Mutex<OpenTables>,
    identity: IdentityPlan,
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

    /// Makes sure the port with `identity` (slot `slot`) has a flow table:
    /// the one a previous daemon or an earlier attach left (so its open
    /// connections keep their flows), or a new one.
    fn ensure(&self, identity: Ipv4Addr, slot: u32) -> anyhow::Result<()> {
        let mut tables = self.tables();
        match tables.get(&identity.octets(), 0) {
            Ok(table) => {
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
                    Ok(found) if found == wanted => return Ok(()),
                    found => warn!(%identity, ?found, "flow table of another layout; replacing it"),
                }
            }
            Err(MapError::KeyNotFound) => {}
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("looking up the flow table of {identity}"));
            }
        }
        let fd = sys::create_lru_hash(
            &format!("flows_{slot}"),
            std::mem::size_of::<FlowKey>() as u32,
            std::mem::size_of::<FlowEntry>() as u32,
            metadata_ebpf::MAX_FLOWS_PER_PORT,
        )
        .with_context(|| format!("creating the flow table of {identity}"))?;
        let table = MapData::from_fd(fd)?;
        tables
            .insert(identity.octets(), &table, 0)
            .with_context(|| format!("adding the flow table of {identity}"))?;
        Ok(())
    }

    /// Drops the flow table of `identity`, if there is one.
    fn remove(&self, identity: Ipv4Addr) {
        self.open_tables().remove(&identity.octets());
        match self.tables().remove(&identity.octets()) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(err) => warn!(%identity, %err, "removing a flow table"),
        }
    }

    /// Drops every flow table but those of `identities`.
    fn retain(&self, identities: &HashSet<Ipv4Addr>) {
        let mut tables = self.tables();
        let stale: Vec<[u8; 4]> = tables
            .keys()
            .filter_map(Result::ok)
            .filter(|key| !identities.contains(&Ipv4Addr::from(*key)))
            .collect();
        for key in stale {
            debug!(identity = %Ipv4Addr::from(key), "removing stale flow table");
            let _ = tables.remove(&key);
        }
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
    map: PerCpuArray<MapData, Counters>,
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
