//! The eBPF datapath: loads, pins and attaches the programs, and owns the
//! BPF maps. One job per file:
//!
//! - `load`: programs verified and pinned, maps reused, configuration set.
//! - `map_layout`: pinned maps of another layout are replaced, not reused
//!   (`btf` reads the layouts the kernel and the object describe).
//! - `bpffs`: `--bpffs` is on bpffs (mounted if nobody has).
//! - `pins`: the names of the pins, and their removal.
//! - `taps`: attaching to and detaching from registered taps, pruning.
//! - `attach_mode`: `--tap-attach`; `tcx`, `tc_attach` and `tc_block` do
//!   each mode.
//! - `tables`: each port's flow table (who is behind a connection; one
//!   table under each lane's identity address) and the counters;
//!   `table_writer` adds and removes the tables off the attach path (each
//!   change of FLOWS waits for an RCU grace period).
//! - `identity`: the identity addresses that encode a port's slot, one per
//!   lane (IPv4, then each IPv6 metadata address).
//! - `metadata_addrs`: the addresses guests ask, IPv4 and IPv6.
//! - `server_netns`: the network namespace the server lives in.
//! - `server_link`: the server's veth pair, from the host's namespace into
//!   the server's.
//! - `netdev`: rtnetlink handles, the link events of taps, link lookups.
//! - `reconcile`: keeps the attached taps equal to the registered ones.
//! - `sys`: the bpf(2) commands aya does not offer.
//!
//! Depends on `state` only (the reconciler follows the registry's
//! snapshots); the guest server reads the flow table through a port of its
//! own (`ingress::server::FlowLookup`).
//!
//! Layout under `--bpffs DIR`:
//! ```text
//! DIR/maps/{PORTS,FLOWS,CONFIG,COUNTERS}   reused across restarts (flows survive;
//!                                          FLOWS holds each port's flow table)
//! DIR/progs/{tap_ingress,server_egress}    the programs of the running daemon
//! DIR/links/entry-ingress                  TCX ingress link of server_egress (the
//!                                          server's replies) on the entry end
//! DIR/links/tap-<ifname>                   TCX ingress link on each registered tap ('.' as %2e)
//! ```
//! Links are pinned so the datapath keeps working while the daemon is down
//! or restarting; a new daemon attaches its programs next to the old links
//! and only then removes them, so there is no moment without a program.
//!
//! With `--tap-attach tc` the taps get a tc filter instead of a TCX link
//! (see [`tc_attach`]), with `tc-block` an ingress qdisc bound to one shared
//! block that holds the filter once (see [`tc_block`]); the entry end stays
//! on TCX either way. Whichever
//! mode runs, attaching a tap removes the other mode's attachment after the
//! new one is in place, so switching modes across a restart leaves one.
mod attach_mode;
mod bpffs;
mod btf;
pub mod identity;
mod load;
mod map_layout;
pub mod metadata_addrs;
pub mod netdev;
mod pins;
pub mod reconcile;
pub mod server_link;
pub mod server_netns;
mod sys;
mod table_writer;
mod tables;
mod taps;
pub mod tc_attach;
pub mod tc_block;
mod tcx;

use std::{path::PathBuf, sync::Arc};

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
    programs::SchedClassifier,
};
use metadata_ebpf::PortEntry;

pub use attach_mode::TapAttach;
pub use identity::IdentityPlan;
pub use metadata_addrs::MetadataAddrs;
pub use pins::remove_pins;
pub use tables::{CounterTable, FlowTable};
pub use taps::{TableFate, remove_tc_attachments};

/// A registered tap the programs are attached to right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttachedTap {
    pub ifindex: u32,
    pub slot: u32,
}

pub struct Datapath {
    ebpf: Ebpf,
    /// The tap ingress program every tap gets (pinned under progs/).
    tap_program: SchedClassifier,
    tap_program_id: u32,
    ports: HashMap<MapData, u32, PortEntry>,
    flows: Arc<FlowTable>,
    counters: Arc<CounterTable>,
    identity: IdentityPlan,
    links_dir: PathBuf,
    tap_attach: TapAttach,
    /// Persistent: the reconciler publishes a copy after every pass.
    attached: imbl::OrdMap<String, AttachedTap>,
    /// Set once the first pass after start has attached what a previous
    /// daemon left and pruned the rest (`prune`).
    started: bool,
}

impl Datapath {
    pub fn flows(&self) -> Arc<FlowTable> {
        self.flows.clone()
    }

    pub fn counters(&self) -> Arc<CounterTable> {
        self.counters.clone()
    }

    pub fn attached(&self) -> &imbl::OrdMap<String, AttachedTap> {
        &self.attached
    }
}
