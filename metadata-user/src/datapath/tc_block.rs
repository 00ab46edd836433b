//! `--tap-attach tc-block`: every tap's `ingress` qdisc bound to one shared
//! filter block ([`BLOCK`]), which holds our cls_bpf filter once.
//!
//! Why it exists: each qdisc with a filter block of its own on a device that
//! cannot offload tc (a tap, a veth) enters that block into one host-wide
//! list, which the kernel searches for every new one
//! (`flow_indr_dev_setup_offload`): with a qdisc of its own per tap, adding
//! a port costs more the more taps there are (see docs/benchmark.md,
//! Density). Qdiscs bound to a shared block share one entry, so the search
//! is as short at 10,000 taps as at 100, and attaching a tap is one qdisc
//! creation: the filter is already on the block. The program tells the taps
//! apart by `skb->ifindex` (the PORTS map), so one filter serves them all,
//! and a tap whose port is not registered is passed through untouched.
//!
//! What it costs: the kernel refuses filter changes addressed by device on a
//! shared block (`tc filter add dev TAP ingress ...` fails with EOPNOTSUPP,
//! "This filter block is shared. Please use the block index to manipulate
//! the filters"), so another tool can no longer add an ingress filter to
//! these taps (neutron's QoS policing does); it fails loudly, and cannot
//! reach the other taps. A tap that already has an ingress or clsact qdisc
//! not bound to our block (someone else's) keeps it and gets the per-tap
//! filter of `--tap-attach tc` on it instead.
//!
//! A block lives only while a qdisc is bound to it. The daemon binds the
//! ingress of its own entry end (the server veth's host side, see
//! `server_link`) to the block first, so the block and our filter on it
//! exist from the start, whatever taps come and go. Packets arriving there
//! are the server's replies, which the entry end's TCX program redirects
//! before tc sees them; anything else it passes runs our filter, which
//! passes it too (the entry end is no registered port).
use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::Context as _;
use aya::programs::SchedClassifier;
use rtnetlink::{
    packet_core::{DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST},
    packet_route::{
        RouteNetlinkMessage,
        tc::{TcAttribute, TcHandle as NlTcHandle, TcHeader, TcMessage, TcOption},
    },
};
use tracing::{debug, info, warn};

use super::tc_attach::{
    self, HANDLE, PRIORITY, acknowledgement, ingress_qdisc_message, send_request,
};

/// The shared block's index ("md" in ASCII, like our filter's handle):
/// `ingress_block 28004` in `tc qdisc show`, `tc filter show block 28004`.
pub const BLOCK: u32 = 0x6d64;

/// `TCA_INGRESS_BLOCK`: the index of the block a qdisc's ingress is bound to.
const TCA_INGRESS_BLOCK: u16 = 13;
/// cls_bpf options (`TCA_BPF_*` in linux/pkt_cls.h).
const TCA_BPF_FD: u16 = 6;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_FLAGS: u16 = 8;
const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;

/// What [`bind`] found on a tap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// An ingress qdisc bound to our block is there (made now, or before).
    Ours,
    /// An ingress or clsact qdisc not bound to our block: someone else's.
    Foreign,
}

/// Gives `ifindex` an `ingress` qdisc bound to our block, unless it has an
/// ingress or clsact qdisc already (then says whose).
pub fn bind(ifindex: u32) -> io::Result<Binding> {
    let mut message = ingress_qdisc_message(ifindex);
    message
        .attributes
        .push(TcAttribute::Kind("ingress".to_string()));
    message.attributes.push(TcAttribute::Other(DefaultNla::new(
        TCA_INGRESS_BLOCK,
        BLOCK.to_ne_bytes().to_vec(),
    )));
    let socket = send_request(
        RouteNetlinkMessage::NewQueueDiscipline(message),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    )?;
    match acknowledgement(&socket)? {
        None => Ok(Binding::Ours),
        // Only now, on the rare path, is the qdisc there asked about.
        Some(libc::EEXIST) => Ok(if ingress_block_of(ifindex)? == Some(BLOCK) {
            Binding::Ours
        } else {
            Binding::Foreign
        }),
        Some(code) => Err(io::Error::from_raw_os_error(code)),
    }
}

/// Removes `ifindex`'s ingress qdisc if it is bound to our block (and so
/// ours); any other qdisc stays. True if one was removed.
pub fn unbind(ifindex: u32) -> io::Result<bool> {
    if ingress_block_of(ifindex)? != Some(BLOCK) {
        return Ok(false);
    }
    let socket = send_request(
        RouteNetlinkMessage::DelQueueDiscipline(ingress_qdisc_message(ifindex)),
        NLM_F_REQUEST | NLM_F_ACK,
    )?;
    match acknowledgement(&socket)? {
        None => Ok(true),
        // Gone meanwhile (with its tap, say).
        Some(libc::ENOENT | libc::ENODEV | libc::EINVAL) => Ok(false),
        Some(code) => Err(io::Error::from_raw_os_error(code)),
    }
}

/// [`unbind`] for paths that cannot fail on it: a qdisc left bound to the
/// block runs a program that passes everything for an unregistered tap.
pub fn release(ifindex: u32) {
    match unbind(ifindex) {
        Ok(true) => debug!(ifindex, "ingress qdisc on the shared block removed"),
        Ok(false) => {}
        Err(err) => warn!(ifindex, %err, "removing our ingress qdisc"),
    }
}

/// Whether `ifindex`'s ingress qdisc is bound to our block.
pub fn is_bound(ifindex: u32) -> bool {
    matches!(ingress_block_of(ifindex), Ok(Some(BLOCK)))
}

/// The shared block `ifindex`'s ingress is bound to, if it holds our
/// filter; None without a qdisc, a shared block or our filter on it.
///
/// Asked through a dump of the tap's ingress filters at our priority: the
/// kernel's answer to a qdisc get leaves the ingress qdisc out, while a
/// filter on a shared block is listed by block (ifindex
/// TCM_IFINDEX_MAGIC_BLOCK, the block's index in place of the parent).
/// One block with one filter: the same cost at any number of taps.
fn ingress_block_of(ifindex: u32) -> io::Result<Option<u32>> {
    Ok(
        tc_attach::filter_at_our_spot(tc_attach::ingress_filters_request(ifindex))?
            .filter(|filter| filter.header.index as u32 == TcHeader::TCM_IFINDEX_MAGIC_BLOCK)
            .map(|filter| u32::from(filter.header.parent)),
    )
}

/// Makes sure the block exists with our filter running `program`: binds
/// `anchor_ifindex` (the entry end, ours) to the block, then adds the filter,
/// or replaces the program of one a previous daemon left (one request,
/// cls_bpf swaps it: the taps on the block are never without a program).
/// Kept as it is when it already runs `program_id`.
pub fn ensure(
    program: &SchedClassifier,
    program_id: u32,
    anchor_ifindex: u32,
) -> anyhow::Result<()> {
    match bind(anchor_ifindex).context("binding the entry end's ingress to the shared block")? {
        Binding::Ours => {}
        Binding::Foreign => anyhow::bail!(
            "the entry end (ifindex {anchor_ifindex}) has an ingress qdisc that is not bound to \
             tc block {BLOCK}; remove it (tc qdisc del dev ENTRY ingress) and start again"
        ),
    }
    let current = tc_attach::program_at_our_spot(block_filter_message())
        .with_context(|| format!("listing the filters of tc block {BLOCK}"))?;
    if current == Some(program_id) {
        info!(block = BLOCK, "keeping the shared block's filter");
        return Ok(());
    }
    let fd = program.fd().context("the tap program's fd")?;
    let mut message = block_filter_message();
    message.header.handle = NlTcHandle::from(HANDLE);
    message.header.info = (u32::from(PRIORITY) << 16) | u32::from((libc::ETH_P_ALL as u16).to_be());
    let mut name = metadata_ebpf::names::TAP_INGRESS.as_bytes().to_vec();
    name.push(0);
    message
        .attributes
        .push(TcAttribute::Kind("bpf".to_string()));
    message.attributes.push(TcAttribute::Options(vec![
        TcOption::Other(DefaultNla::new(
            TCA_BPF_FD,
            (fd.as_fd().as_raw_fd() as u32).to_ne_bytes().to_vec(),
        )),
        TcOption::Other(DefaultNla::new(TCA_BPF_NAME, name)),
        TcOption::Other(DefaultNla::new(
            TCA_BPF_FLAGS,
            TCA_BPF_FLAG_ACT_DIRECT.to_ne_bytes().to_vec(),
        )),
    ]));
    // NLM_F_CREATE without NLM_F_EXCL: created, or changed in place.
    let socket = send_request(
        RouteNetlinkMessage::NewTrafficFilter(message),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
    )?;
    if let Some(code) = acknowledgement(&socket)? {
        return Err(io::Error::from_raw_os_error(code)).with_context(|| {
            format!(
                "adding our filter to tc block {BLOCK} (pref {PRIORITY}; is another kind of \
                 filter at that priority?)"
            )
        });
    }
    info!(
        block = BLOCK,
        replaced = current.is_some(),
        "shared block's filter in place"
    );
    Ok(())
}

/// A filter request addressed to our block rather than to a device.
fn block_filter_message() -> TcMessage {
    let mut message = TcMessage::with_index(TcHeader::TCM_IFINDEX_MAGIC_BLOCK as i32);
    // tcm_block_index shares tcm_parent's place.
    message.header.parent = NlTcHandle::from(BLOCK);
    message.header.info = u32::from(PRIORITY) << 16;
    message
}
