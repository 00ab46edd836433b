//! `--tap-attach tc`: the tap ingress program as a legacy tc filter
//! (cls_bpf, direct action) instead of a TCX link.
//!
//! Why it exists: creating a TCX link waits for an RCU grace period, 11-20 ms
//! per tap on the kernels we run on, while adding a cls_bpf filter over
//! rtnetlink takes about 0.1 ms. What it costs: the tap needs an `ingress`
//! qdisc (one already there, as neutron's QoS policing adds, or a clsact, is
//! used as it is: filters on parent ffff:fff2 land on its ingress block), and
//! a filter is not a link we own and pin. It belongs to the tap, outlives the
//! daemon (even a SIGKILLed one), and is found again only by where it sits:
//! ingress, priority [`PRIORITY`], handle [`HANDLE`]. Everything here
//! addresses that one spot and never touches other filters.
//!
//! Why `ingress` and not clsact: creating a qdisc with a filter block on a
//! device that cannot offload tc (a tap, a veth) enters the block into one
//! host-wide list of such blocks, and the kernel searches that list for
//! every new one (`flow_indr_dev_setup_offload`, 60% of the daemon's CPU
//! while adding ports at 8,000 taps with clsact). A clsact has two blocks
//! (ingress and egress), so each new one searched a list of two entries per
//! tap, twice; an `ingress` qdisc has one block: a quarter of the searching.
//! The search is still there (see docs/benchmark.md, Density); `tc_block`
//! (`--tap-attach tc-block`) shares one block among all taps instead.
//!
//! Deleting goes by ifindex over our own rtnetlink request, not through
//! aya's `SchedClassifierLink::attached`, which takes an interface *name*:
//! after a tap was re-created under the same name that name leads to the
//! new tap, not to the one whose filter we mean.
use std::io;

use anyhow::Context as _;
use aya::programs::{
    SchedClassifier, TcAttachType,
    tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
};
use rtnetlink::{
    packet_core::{
        NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage,
        NetlinkPayload, Nla as _, NlasIterator,
    },
    packet_route::{
        RouteNetlinkMessage,
        tc::{TcAttribute, TcHandle as NlTcHandle, TcMessage, TcOption},
    },
    sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE},
};
use tracing::{debug, warn};

/// Our filter's priority ("pref" in `tc filter show`). 1 runs it before any
/// other ingress filter, as TCX programs run before all of tc: neutron's QoS
/// policing filter (prio 49) would otherwise end classification with its
/// "ok" verdict for conforming packets before the metadata request is seen.
/// Our program returns TC_ACT_UNSPEC for everything it does not catch, so
/// later filters still see all other traffic.
pub const PRIORITY: u16 = 1;
/// Our filter's handle, "md" in ASCII (`handle 0x6d64` in `tc filter show`).
pub const HANDLE: u32 = 0x6d64;

/// Attaches `program` to `ifname`'s ingress at our priority and handle. If a
/// filter is already there (left by a previous daemon: the normal restart
/// case) its program is replaced in one netlink request, so the tap is never
/// without a program.
pub fn attach(program: &mut SchedClassifier, ifname: &str, ifindex: u32) -> anyhow::Result<()> {
    ensure_ingress_qdisc(ifindex)
        .with_context(|| format!("adding an ingress qdisc to {ifname}"))?;
    let options = NlOptions {
        priority: PRIORITY,
        handle: TcHandle::from(HANDLE),
        classid: None,
    };
    // Creating first (NLM_F_CREATE | NLM_F_EXCL) is the fast path for a new
    // tap; EEXIST means one of our filters is there, which is then changed in
    // place (no NLM_F_EXCL, no NLM_F_CREATE: cls_bpf swaps the program).
    let id = match program.attach_with_options(
        ifname,
        TcAttachType::Ingress,
        TcAttachOptions::Netlink(options),
    ) {
        Ok(id) => id,
        Err(err) if os_error(&err) == Some(libc::EEXIST) => {
            let existing = SchedClassifierLink::attached(
                ifname,
                TcAttachType::Ingress,
                PRIORITY,
                TcHandle::from(HANDLE),
                None,
            )?;
            program
                .attach_to_link(existing)
                .with_context(|| format!("replacing the program of our tc filter on {ifname}"))?
        }
        Err(err) => {
            return Err(err).with_context(|| {
                format!(
                    "adding a tc filter on {ifname} ingress (pref {PRIORITY}; is another \
                     kind of filter at that priority?)"
                )
            });
        }
    };
    // aya's link wrappers detach on Drop, and the program keeps the links it
    // made until it is dropped itself (when the daemon exits). The filter must
    // stay when the daemon goes (that is what keeps guests served across a
    // restart), so the link is taken out and forgotten. It holds only the
    // ifindex, priority and handle, no fd or memory, so nothing leaks; detach()
    // below removes the filter when we mean to.
    let link = program.take_link(id)?;
    std::mem::forget(link);
    Ok(())
}

/// Addresses `ifindex`'s ingress qdisc (ingress or clsact: handle ffff:).
pub(super) fn ingress_qdisc_message(ifindex: u32) -> TcMessage {
    let mut message = TcMessage::with_index(ifindex as i32);
    message.header.parent = NlTcHandle::INGRESS;
    message.header.handle = NlTcHandle {
        major: 0xffff,
        minor: 0,
    };
    message
}

/// Adds an `ingress` qdisc to interface `ifindex` unless an ingress or
/// clsact qdisc is already there (the kernel answers EEXIST for both: they
/// share the ffff: handle). Either takes our filter on parent ffff:fff2.
fn ensure_ingress_qdisc(ifindex: u32) -> io::Result<()> {
    let mut message = ingress_qdisc_message(ifindex);
    message
        .attributes
        .push(TcAttribute::Kind(INGRESS_QDISC.to_string()));
    let socket = send_request(
        RouteNetlinkMessage::NewQueueDiscipline(message),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    )?;
    match acknowledgement(&socket)? {
        None => Ok(()),
        Some(libc::EEXIST) => Ok(()),
        Some(code) => Err(io::Error::from_raw_os_error(code)),
    }
}

/// The qdisc kind we add: one filter block (see the module's comment).
const INGRESS_QDISC: &str = "ingress";

/// Reads the answer to a request sent with NLM_F_ACK: None when it was
/// done, or the kernel's error number.
pub(super) fn acknowledgement(socket: &Socket) -> io::Result<Option<i32>> {
    let mut reply = Vec::with_capacity(8192);
    let len = socket.recv(&mut reply, 0)?;
    let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[..len])
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
    match reply.payload {
        NetlinkPayload::Error(err) => Ok(err.code.map(|code| -code.get())),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected rtnetlink answer: {other:?}"),
        )),
    }
}

fn os_error(err: &aya::programs::ProgramError) -> Option<i32> {
    match err {
        aya::programs::ProgramError::TcError(TcError::NetlinkError(err)) => err.raw_os_error(),
        _ => None,
    }
}

/// Whether [`detach`] found a filter to remove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detached {
    Removed,
    /// No filter of ours, no ingress/clsact qdisc, or no such interface.
    NotThere,
}

/// Removes our filter from interface `ifindex`'s ingress, if there is one.
pub fn detach(ifindex: u32) -> io::Result<Detached> {
    let mut message = TcMessage::with_index(ifindex as i32);
    message.header.parent = NlTcHandle {
        major: 0xffff,
        minor: NlTcHandle::MIN_INGRESS,
    };
    message.header.handle = NlTcHandle::from(HANDLE);
    // tcm_info = TC_H_MAKE(priority << 16, htons(ETH_P_ALL)), as aya attached it.
    message.header.info = (u32::from(PRIORITY) << 16) | u32::from((libc::ETH_P_ALL as u16).to_be());
    let socket = send_request(
        RouteNetlinkMessage::DelTrafficFilter(message),
        NLM_F_REQUEST | NLM_F_ACK,
    )?;
    match acknowledgement(&socket)? {
        None => Ok(Detached::Removed),
        // ENOENT: no filter there; ENODEV: the tap is gone (and its
        // filters with it); EINVAL: no ingress/clsact qdisc ("Parent
        // Qdisc doesn't exists"), so no filter either; EOPNOTSUPP: the
        // ingress block is shared (`tc_block`), which holds no filter
        // addressed by device.
        Some(libc::ENOENT | libc::ENODEV | libc::EINVAL | libc::EOPNOTSUPP) => {
            Ok(Detached::NotThere)
        }
        Some(code) => Err(io::Error::from_raw_os_error(code)),
    }
}

/// Sends one rtnetlink request on a socket of its own, which the caller
/// reads the answer from.
pub(super) fn send_request(payload: RouteNetlinkMessage, flags: u16) -> io::Result<Socket> {
    let mut request = NetlinkMessage::from(payload);
    request.header.flags = flags;
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&bytes, 0)?;
    Ok(socket)
}

/// Removes our tc filter from `ifindex` if there is one. A failure only
/// leaves the program on a tap whose port entry is gone, where it passes
/// everything, so it is logged rather than failing the caller.
pub fn remove_tc_filter(ifindex: u32) {
    match detach(ifindex) {
        Ok(Detached::Removed) => debug!(ifindex, "tc filter removed"),
        Ok(Detached::NotThere) => {}
        Err(err) => warn!(ifindex, %err, "removing our tc filter"),
    }
}

/// `TCA_BPF_ID` inside a cls_bpf filter's options: the program's id.
const TCA_BPF_ID: u16 = 11;

/// The id of the program our filter on `ifindex`'s ingress runs; None when
/// there is no filter of ours (or no such interface). One netlink dump of
/// that interface's filters at our priority: how a restarted daemon tells
/// a tap it can keep as it is from one it must attach to.
pub fn our_program(ifindex: u32) -> io::Result<Option<u32>> {
    // A filter on a shared block (`tc_block`) is listed too, by block
    // (another ifindex): not a filter of this tap's own.
    Ok(filter_at_our_spot(ingress_filters_request(ifindex))?
        .filter(|filter| filter.header.index == ifindex as i32)
        .and_then(|filter| bpf_program_id(&filter)))
}

/// A dump request for the filters at our priority on `ifindex`'s ingress.
pub(super) fn ingress_filters_request(ifindex: u32) -> TcMessage {
    let mut message = TcMessage::with_index(ifindex as i32);
    message.header.parent = NlTcHandle {
        major: 0xffff,
        minor: NlTcHandle::MIN_INGRESS,
    };
    message.header.info = u32::from(PRIORITY) << 16;
    message
}

/// The program id of the filter at our priority and handle among those
/// `request` (a filter dump request: a device's ingress, or a block) lists.
pub(super) fn program_at_our_spot(request: TcMessage) -> io::Result<Option<u32>> {
    Ok(filter_at_our_spot(request)?.and_then(|filter| bpf_program_id(&filter)))
}

/// The filter at our priority and handle among those `request` (a filter
/// dump request) lists; None when there is none, or no such qdisc or
/// interface.
pub(super) fn filter_at_our_spot(request: TcMessage) -> io::Result<Option<TcMessage>> {
    let socket = send_request(
        RouteNetlinkMessage::GetTrafficFilter(request),
        NLM_F_REQUEST | NLM_F_DUMP,
    )?;
    let mut found = None;
    loop {
        let mut reply = Vec::with_capacity(32 * 1024);
        let len = socket.recv(&mut reply, 0)?;
        let mut offset = 0;
        while offset < len {
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[offset..len])
                .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::Done(_) => return Ok(found),
                NetlinkPayload::Error(err) => {
                    return match err.code {
                        None => Ok(found),
                        Some(code)
                            if matches!(
                                -code.get(),
                                libc::ENOENT | libc::ENODEV | libc::EINVAL
                            ) =>
                        {
                            Ok(None)
                        }
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                    };
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewTrafficFilter(filter))
                    if filter.header.handle == NlTcHandle::from(HANDLE) && found.is_none() =>
                {
                    found = Some(filter);
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length.next_multiple_of(4);
        }
    }
}

/// The program id in a cls_bpf filter's options. netlink-packet-route
/// has no parser for cls_bpf ("bpf") options: it hands the whole nest over
/// as one unparsed attribute, whose nested attributes are read here.
fn bpf_program_id(filter: &TcMessage) -> Option<u32> {
    filter
        .attributes
        .iter()
        .filter_map(|attribute| match attribute {
            TcAttribute::Options(options) => Some(options),
            _ => None,
        })
        .flatten()
        .find_map(|option| match option {
            TcOption::Other(nla) if nla.kind() == TCA_BPF_ID => u32_value(nla),
            TcOption::Other(nest) => {
                let mut bytes = vec![0u8; nest.value_len()];
                nest.emit_value(&mut bytes);
                NlasIterator::new(&bytes[..])
                    .filter_map(Result::ok)
                    .find(|nla| nla.kind() == TCA_BPF_ID)
                    .and_then(|nla| Some(u32::from_ne_bytes(nla.value().try_into().ok()?)))
            }
            _ => None,
        })
}

fn u32_value(nla: &impl rtnetlink::packet_core::Nla) -> Option<u32> {
    let mut value = [0u8; 4];
    (nla.value_len() == 4).then(|| {
        nla.emit_value(&mut value);
        u32::from_ne_bytes(value)
    })
}
