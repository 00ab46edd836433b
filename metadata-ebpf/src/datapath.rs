use core::mem::{offset_of, size_of};

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_F_PSEUDO_HDR, TC_ACT_SHOT, TC_ACT_UNSPEC},
    btf_maps::{Array, HashMap, HashOfMaps, LruHashMap, PerCpuArray},
    helpers::{bpf_ktime_get_ns, bpf_redirect, bpf_redirect_peer},
    macros::{btf_map, classifier},
    programs::TcContext,
};
use metadata_ebpf::{
    Counter, Counters, DatapathConfig, Family, FlowEntry, FlowKey, GuestStep, MAX_FLOW_TABLE_KEYS,
    MAX_FLOWS_PER_PORT, MAX_PORTS, METADATA_MAC, METADATA_PORT, PortEntry, ServerStep, guest_step,
    server_step, tcp_flags::SYN,
};

// IPv6: the Neighbour Advertisements for the metadata addresses (`ndp`),
// the catch of TCP to them (`ipv6`), and the translation between IPv6 and
// the server's IPv4 both ways (`translate`).
mod addr6;
mod ipv6;
mod ndp;
mod translate;

// The close rules (when a flow is created, marked and removed) are
// `guest_step` and `server_step` in the shared crate, unit-tested on the
// host; the programs below only carry them out.

// Flows are kept per port: FLOWS maps a port's identity address to a flow
// table of its own (an LRU of MAX_FLOWS_PER_PORT entries) that the daemon
// creates when it attaches the port and drops when it detaches it. Tap
// ingress only ever writes the table of the identity PORTS gives for the
// tap the packet came in on, so a guest's SYNs can evict that guest's own
// flows and nobody else's: whatever a guest sends, other guests' open
// connections keep their flows. Server egress finds the table from the
// reply's destination (the identity address). A port's table is in FLOWS
// under each of its identity addresses (one per lane: IPv4, and IPv6 per
// metadata address), and a flow's key carries the lane's address, so a
// guest's IPv4 and IPv6 connections never share a key. The daemon pins
// FLOWS, and the tables live as long as FLOWS refers to them, so flows
// survive a daemon restart like every other map. FLOWS is not
// preallocated: a host uses a key per lane per port, not MAX_PORTS * 3.
// (The shared crate documents the memory this takes.)

/// One port's flow table.
type FlowTable = LruHashMap<FlowKey, FlowEntry, { MAX_FLOWS_PER_PORT as usize }>;

#[btf_map]
static PORTS: HashMap<u32, PortEntry, { MAX_PORTS as usize }> = HashMap::new();
#[btf_map]
static FLOWS: HashOfMaps<
    [u8; 4],
    FlowTable,
    { MAX_FLOW_TABLE_KEYS as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashOfMaps::new();
#[btf_map]
static CONFIG: Array<DatapathConfig, 1> = Array::new();
#[btf_map]
static COUNTERS: PerCpuArray<Counters, { Family::COUNT }> = PerCpuArray::new();

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
/// 802.1Q VLAN tag.
const ETH_P_8021Q: u16 = 0x8100;
/// 802.1ad (QinQ) service VLAN tag.
const ETH_P_8021AD: u16 = 0x88a8;
/// ARP hardware type for Ethernet (`ARPHRD_ETHER`).
const ARPHRD_ETHER: u16 = 1;
const IPPROTO_TCP: u8 = 6;
/// `frag_off` bits that make a packet a fragment: MF (0x2000) and the
/// 13-bit offset. DF (0x4000) is not one of them.
const IP_FRAGMENT_MASK: u16 = 0x3fff;
const NSEC_PER_SEC: u64 = 1_000_000_000;
// ARP for IPv4 over Ethernet.
const ARP_OP_REQUEST: u16 = 1;
const ARP_OP_REPLY: u16 = 2;

#[repr(C)]
pub(crate) struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    proto_be: u16,
}

#[repr(C)]
pub(crate) struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    tot_len_be: u16,
    id_be: u16,
    frag_off_be: u16,
    ttl: u8,
    protocol: u8,
    check: u16,
    saddr: [u8; 4],
    daddr: [u8; 4],
}

/// The TCP header without options (ports stay in network byte order; the
/// flags byte is the one after data offset).
#[repr(C)]
pub(crate) struct TcpHdr {
    source_be: u16,
    dest_be: u16,
    seq_be: u32,
    ack_seq_be: u32,
    /// Data offset in the high nibble, in 32-bit words.
    doff_res: u8,
    flags: u8,
    window_be: u16,
    check: u16,
    urg_ptr_be: u16,
}

#[repr(C)]
struct ArpHdr {
    htype_be: u16,
    ptype_be: u16,
    hlen: u8,
    plen: u8,
    op_be: u16,
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
}

const ETH_HLEN: usize = size_of::<EthHdr>();
/// An IPv4 header without options (IHL 5).
const IP_MIN_LEN: usize = size_of::<Ipv4Hdr>();
const TCP_MIN_LEN: usize = size_of::<TcpHdr>();
const IP_CHECK: usize = offset_of!(Ipv4Hdr, check);
const IP_SADDR: usize = offset_of!(Ipv4Hdr, saddr);
const IP_DADDR: usize = offset_of!(Ipv4Hdr, daddr);
const TCP_SPORT: usize = offset_of!(TcpHdr, source_be);
const TCP_DPORT: usize = offset_of!(TcpHdr, dest_be);
const TCP_DOFF: usize = offset_of!(TcpHdr, doff_res);
const TCP_FLAGS: usize = offset_of!(TcpHdr, flags);
const TCP_CHECK: usize = offset_of!(TcpHdr, check);
const ETH_DST: usize = offset_of!(EthHdr, dst);
const ETH_SRC: usize = offset_of!(EthHdr, src);
// The layouts the offsets above rely on (the wire formats).
const _: () = assert!(ETH_HLEN == 14 && IP_MIN_LEN == 20 && TCP_MIN_LEN == 20);
const _: () = assert!(size_of::<ArpHdr>() == 28);
/// Bytes the parser wants in the linear part of the skb: Ethernet, IPv6
/// and a Neighbour Solicitation without options, which is more than
/// Ethernet, IPv4 and TCP, or IPv6 and TCP, without options (options are
/// read with skb loads).
const PARSE_LEN: usize = ETH_HLEN + ipv6::IPV6_HLEN + ndp::NS_LEN;

/// What a program does with a packet, and the counter that records why.
/// Each program decides in one function and counts in its entry point, so
/// every run counts exactly one verdict counter.
#[derive(Clone, Copy)]
enum Verdict {
    /// Not ours: let the rest of the TC chain (or the stack) decide
    /// (`TC_ACT_UNSPEC`), so we compose with other programs on the device.
    Pass(Counter),
    Drop(Counter),
    /// Rewritten; send it out of this ifindex.
    Redirect(Counter, u32),
    /// Rewritten; hand it to the ingress of this veth's peer, in the
    /// peer's namespace (`bpf_redirect_peer`). Requests go to the server
    /// this way: in the same softirq pass, where a redirect out of the
    /// entry end would queue each packet to the backlog and take it
    /// through the stack a second time (veth_xmit, netif_rx). Only valid
    /// from TC ingress, and only to a peer in another namespace; the
    /// kernel drops the packet otherwise.
    RedirectPeer(Counter, u32),
}

/// Bumps one counter in this CPU's copy of the family's row.
#[inline(always)]
fn count(family: Family, counter: Counter) {
    if let Some(counters) = COUNTERS.get_ptr_mut(family as u32) {
        // LLVM knows a Counter's range and drops the bound check below once
        // the counter comes from a merged path (a value reloaded from the
        // stack); the verifier needs to see it. black_box hides the range.
        let index = core::hint::black_box(counter as usize);
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        let slots = unsafe { (*counters).as_array_mut() };
        if index < slots.len() {
            slots[index] += 1;
        }
    }
}

/// Counts the verdict in the family's row and turns it into the TC action.
#[inline(always)]
fn finish((family, verdict): (Family, Verdict)) -> i32 {
    match verdict {
        Verdict::Pass(counter) => {
            count(family, counter);
            TC_ACT_UNSPEC
        }
        Verdict::Drop(counter) => {
            count(family, counter);
            TC_ACT_SHOT
        }
        Verdict::Redirect(counter, ifindex) => {
            count(family, counter);
            // SAFETY: plain helper call.
            unsafe { bpf_redirect(ifindex, 0) as i32 }
        }
        Verdict::RedirectPeer(counter, ifindex) => {
            count(family, counter);
            // SAFETY: plain helper call.
            unsafe { bpf_redirect_peer(ifindex, 0) as i32 }
        }
    }
}

/// A bounds-checked pointer into the linear packet data, or None.
#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Makes sure the first `PARSE_LEN` bytes (or the whole packet, if shorter)
/// are linear, so direct packet access sees the headers.
#[inline(always)]
fn pull_headers(ctx: &TcContext) {
    if ctx.data() + PARSE_LEN > ctx.data_end() {
        let len = ctx.len().min(PARSE_LEN as u32);
        let _ = ctx.pull_data(len);
    }
}

/// Whether the packet holds a whole TCP header (without options) at `tcp`.
#[inline(always)]
fn has_tcp_header(ctx: &TcContext, tcp: usize) -> bool {
    ctx.load::<u16>(tcp + TCP_MIN_LEN - 2).is_ok()
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's lifetime.
    unsafe { (*ctx.skb.skb).ifindex }
}

#[classifier]
pub fn tap_ingress(ctx: TcContext) -> i32 {
    finish(tap_verdict(&ctx))
}

#[inline(always)]
fn tap_verdict(ctx: &TcContext) -> (Family, Verdict) {
    pull_headers(ctx);
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return (Family::Ipv4, Verdict::Pass(Counter::Passed));
    };
    // SAFETY: bounds checked by ptr_at.
    let proto = u16::from_be(unsafe { (*eth).proto_be });
    let family = if proto == ETH_P_IPV6 {
        Family::Ipv6
    } else {
        Family::Ipv4
    };
    // A VLAN-tagged frame (a trunk's subport) is not ours, whatever it
    // carries. The kernel has usually moved the outer tag into the skb's
    // metadata before TC runs, leaving the inner ethertype in the frame;
    // a second tag (QinQ), or a tag the kernel left in place, shows in
    // the frame.
    if vlan_present(ctx) || proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        return (family, Verdict::Pass(Counter::PassedVlan));
    }
    let Some(config) = CONFIG.get(0) else {
        return (family, Verdict::Pass(Counter::Passed));
    };
    let verdict = match proto {
        ETH_P_IP => tap_ipv4(ctx, config),
        ETH_P_ARP => tap_arp(ctx, config),
        ETH_P_IPV6 => ipv6::tap_ipv6(ctx, config),
        _ => Verdict::Pass(Counter::Passed),
    };
    (family, verdict)
}

/// Whether the skb carries a VLAN tag in its metadata (taken off the
/// frame by the kernel on receive).
#[inline(always)]
fn vlan_present(ctx: &TcContext) -> bool {
    // SAFETY: the context pointer is valid for the program's lifetime.
    unsafe { (*ctx.skb.skb).vlan_present != 0 }
}

/// TCP to 169.254.169.254:80 from a registered tap: rewrite towards the server.
#[inline(always)]
fn tap_ipv4(ctx: &TcContext, config: &DatapathConfig) -> Verdict {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return Verdict::Pass(Counter::Passed);
    };
    // SAFETY: bounds checked by ptr_at.
    let (daddr, protocol, version_ihl, frag_off, saddr) = unsafe {
        (
            (*ip).daddr,
            (*ip).protocol,
            (*ip).version_ihl,
            u16::from_be((*ip).frag_off_be),
            (*ip).saddr,
        )
    };
    let metadata_addr = config.metadata_addr;
    if daddr != metadata_addr || protocol != IPPROTO_TCP {
        return Verdict::Pass(Counter::Passed);
    }
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4 || ihl < IP_MIN_LEN {
        return Verdict::Drop(Counter::DroppedMalformed);
    }
    // MF set or a non-zero offset: the TCP ports may be missing, and guests
    // never fragment TCP to the metadata service (they send DF).
    if frag_off & IP_FRAGMENT_MASK != 0 {
        return Verdict::Drop(Counter::DroppedFragment);
    }
    let tcp = ETH_HLEN + ihl;
    let Ok(dport_be) = ctx.load::<u16>(tcp + TCP_DPORT) else {
        return Verdict::Drop(Counter::DroppedMalformed);
    };
    if u16::from_be(dport_be) != METADATA_PORT {
        return Verdict::Pass(Counter::Passed);
    }
    // The identity comes from the tap the packet arrived on, nothing else.
    let tap = ifindex(ctx);
    let Some(port) = PORTS.get_ptr_mut(tap) else {
        return Verdict::Pass(Counter::PassedUnregistered);
    };
    if config.ready == 0 {
        return Verdict::Drop(Counter::DroppedNotReady);
    }
    // Guests never send IP options to the metadata service; served, a
    // Record Route would collect the server's own address on the way back.
    if ihl > IP_MIN_LEN {
        return Verdict::Drop(Counter::DroppedIpOptions);
    }
    // The whole fixed TCP header must be there (the rewrite updates its
    // checksum), before anything is remembered or counted against a budget.
    let (Ok(sport_be), Ok(flags), true) = (
        ctx.load::<u16>(tcp + TCP_SPORT),
        ctx.load::<u8>(tcp + TCP_FLAGS),
        has_tcp_header(ctx, tcp),
    ) else {
        return Verdict::Drop(Counter::DroppedMalformed);
    };
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Verdict::Drop(Counter::DroppedMalformed);
    };
    // SAFETY: bounds checked by ptr_at.
    let (guest_mac, gateway_mac) = unsafe { ((*eth).src, (*eth).dst) };
    // SAFETY: a valid map value pointer; a plain copy.
    let identity = unsafe { (*port).identity_addr };

    let segment = GuestSegment {
        family: Family::Ipv4,
        port,
        identity,
        sport_be,
        flags,
    };
    // SAFETY: `port` is the live PORTS value of this tap.
    let tracked = unsafe {
        track_guest_segment(&segment, config, || {
            FlowEntry::new(saddr, tap, guest_mac, gateway_mac)
        })
    };
    if let Err(counter) = tracked {
        return Verdict::Drop(counter);
    }

    let rewritten = rewrite(
        ctx,
        tcp,
        Rewrite {
            saddr: (saddr, identity),
            daddr: (metadata_addr, config.server_addr),
            port_offset: TCP_DPORT,
            port: (dport_be, config.server_port_be),
            eth_dst: config.server_mac,
            eth_src: guest_mac,
        },
    );
    if rewritten.is_err() {
        return Verdict::Drop(Counter::DroppedRewrite);
    }
    Verdict::RedirectPeer(Counter::Caught, config.redirect_ifindex)
}

/// A guest's TCP segment to the metadata service, as far as its flow is
/// concerned: its port, the identity (lane) address it goes to the server
/// as, its source port and flags.
struct GuestSegment {
    family: Family,
    port: *mut PortEntry,
    identity: [u8; 4],
    sport_be: u16,
    flags: u8,
}

/// Carries out the close rules (`guest_step`) for a guest segment in its
/// port's own flow table: a SYN takes the SYN budget and remembers the flow
/// `new_flow` makes, a FIN marks it, a RST removes it. `Err` is the counter
/// of a segment that must be dropped.
///
/// # Safety
/// `segment.port` must point at a live PORTS value.
#[inline(always)]
unsafe fn track_guest_segment(
    segment: &GuestSegment,
    config: &DatapathConfig,
    new_flow: impl FnOnce() -> FlowEntry,
) -> Result<(), Counter> {
    let key = FlowKey {
        identity_addr: segment.identity,
        guest_port_be: segment.sport_be,
        _pad: 0,
    };
    // The port's own flow table: the only one this packet may touch.
    // SAFETY: FLOWS is a map of maps; the table is only used through helpers.
    let table = unsafe { FLOWS.get(&segment.identity) };
    match guest_step(segment.flags) {
        GuestStep::Open => {
            // SAFETY: guaranteed by the caller.
            if !unsafe { take_syn_budget(segment.port, config.syn_rate_per_port) } {
                return Err(Counter::DroppedSynBudget);
            }
            // Without a flow the server could not tell who is asking, so the
            // SYN goes no further: the guest's TCP retries it.
            let Some(table) = table else {
                return Err(Counter::DroppedFlowTable);
            };
            if table.insert(key, new_flow(), 0).is_err() {
                return Err(Counter::DroppedFlowTable);
            }
        }
        GuestStep::Reset => {
            if let Some(table) = table
                && table.remove(key).is_ok()
            {
                count(segment.family, Counter::FlowsReset);
            }
        }
        GuestStep::MarkFin => {
            if let Some(flow) = table.and_then(|table| table.get_ptr_mut(key)) {
                // SAFETY: a valid map value pointer; a single byte only this
                // program writes.
                unsafe { (*flow).guest_fin = 1 };
            }
        }
        GuestStep::Nothing => {}
    }
    Ok(())
}

/// Counts one SYN against the port's budget for the current second.
/// Races between CPUs can let a few extra through; that is fine for a budget.
///
/// # Safety
/// `port` must point at a live PORTS value.
#[inline(always)]
unsafe fn take_syn_budget(port: *mut PortEntry, per_second: u32) -> bool {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: guaranteed by the caller.
    unsafe {
        if now.wrapping_sub((*port).syn_window_start_ns) >= NSEC_PER_SEC {
            (*port).syn_window_start_ns = now;
            (*port).syn_count = 0;
        }
        if (*port).syn_count >= per_second {
            return false;
        }
        (*port).syn_count += 1;
    }
    true
}

/// An ARP request for 169.254.169.254 from a registered tap: turn it into the
/// reply in place and send it back out of the same tap.
#[inline(always)]
fn tap_arp(ctx: &TcContext, config: &DatapathConfig) -> Verdict {
    let Some(arp) = ptr_at::<ArpHdr>(ctx, ETH_HLEN) else {
        return Verdict::Pass(Counter::Passed);
    };
    // SAFETY: bounds checked by ptr_at.
    let (htype, ptype, hlen, plen, op, sha, spa, tpa) = unsafe {
        (
            u16::from_be((*arp).htype_be),
            u16::from_be((*arp).ptype_be),
            (*arp).hlen,
            (*arp).plen,
            u16::from_be((*arp).op_be),
            (*arp).sha,
            (*arp).spa,
            (*arp).tpa,
        )
    };
    if htype != ARPHRD_ETHER
        || ptype != ETH_P_IP
        || hlen != 6
        || plen != 4
        || op != ARP_OP_REQUEST
        || tpa != config.metadata_addr
    {
        return Verdict::Pass(Counter::Passed);
    }
    let tap = ifindex(ctx);
    // SAFETY: only checks presence.
    if unsafe { PORTS.get(tap) }.is_none() {
        return Verdict::Pass(Counter::PassedUnregistered);
    }
    let reply = ArpHdr {
        htype_be: ARPHRD_ETHER.to_be(),
        ptype_be: ETH_P_IP.to_be(),
        hlen: 6,
        plen: 4,
        op_be: ARP_OP_REPLY.to_be(),
        sha: METADATA_MAC,
        spa: config.metadata_addr,
        tha: sha,
        tpa: spa,
    };
    let eth = EthHdr {
        dst: sha,
        src: METADATA_MAC,
        proto_be: ETH_P_ARP.to_be(),
    };
    if ctx.store(0, &eth, 0).is_err() || ctx.store(ETH_HLEN, &reply, 0).is_err() {
        return Verdict::Drop(Counter::DroppedRewrite);
    }
    // Out of the same tap: back to the guest that asked.
    Verdict::Redirect(Counter::ArpAnswered, tap)
}

/// The return path, on the entry end's TCX ingress: the server's replies,
/// back from its namespace (the name is from when it ran on the server
/// end's egress).
#[classifier]
pub fn server_egress(ctx: TcContext) -> i32 {
    finish(server_verdict(&ctx))
}

/// A server segment: translated back with the flow its guest's SYN left,
/// to IPv4 or IPv6 as the guest spoke, in that family's counter row.
#[inline(always)]
fn server_verdict(ctx: &TcContext) -> (Family, Verdict) {
    // Until a flow says otherwise, what the server end sends is IPv4's.
    let ipv4 = |verdict| (Family::Ipv4, verdict);
    pull_headers(ctx);
    let (Some(eth), Some(ip)) = (ptr_at::<EthHdr>(ctx, 0), ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)) else {
        return ipv4(Verdict::Pass(Counter::EgressPassed));
    };
    // SAFETY: bounds checked by ptr_at.
    let (proto, saddr, daddr, protocol, version_ihl, tot_len) = unsafe {
        (
            u16::from_be((*eth).proto_be),
            (*ip).saddr,
            (*ip).daddr,
            (*ip).protocol,
            (*ip).version_ihl,
            u16::from_be((*ip).tot_len_be),
        )
    };
    let Some(config) = CONFIG.get(0) else {
        return ipv4(Verdict::Pass(Counter::EgressPassed));
    };
    if proto != ETH_P_IP || protocol != IPPROTO_TCP || saddr != config.server_addr {
        return ipv4(Verdict::Pass(Counter::EgressPassed));
    }
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    if ihl < IP_MIN_LEN {
        return ipv4(Verdict::Drop(Counter::DroppedMalformed));
    }
    let tcp = ETH_HLEN + ihl;
    let (Ok(sport_be), Ok(dport_be), Ok(flags), true) = (
        ctx.load::<u16>(tcp + TCP_SPORT),
        ctx.load::<u16>(tcp + TCP_DPORT),
        ctx.load::<u8>(tcp + TCP_FLAGS),
        has_tcp_header(ctx, tcp),
    ) else {
        return ipv4(Verdict::Drop(Counter::DroppedMalformed));
    };
    if sport_be != config.server_port_be {
        return ipv4(Verdict::Pass(Counter::EgressPassed));
    }
    let key = FlowKey {
        identity_addr: daddr,
        guest_port_be: dport_be,
        _pad: 0,
    };
    // The table of the port the reply is for; none (a port detached, or an
    // address that is no port's) is the same as no flow.
    // SAFETY: FLOWS is a map of maps; the table is only used through helpers.
    let table = unsafe { FLOWS.get(&daddr) };
    let Some((table, entry)) = table.and_then(|table| Some((table, table.get_ptr_mut(key)?)))
    else {
        // Tell the harmless tail of a closed connection (no data, no SYN)
        // from a segment the guest is waiting for.
        let doff = match ctx.load::<u8>(tcp + TCP_DOFF) {
            Ok(byte) => ((byte >> 4) as usize) * 4,
            Err(_) => 0,
        };
        return ipv4(if flags & SYN == 0 && (tot_len as usize) <= ihl + doff {
            Verdict::Drop(Counter::DroppedNoFlowLate)
        } else {
            Verdict::Drop(Counter::DroppedNoFlow)
        });
    };
    // SAFETY: a valid map value pointer. A plain-old-data copy: the redirect
    // below uses only the copy, so removing the entry cannot affect it.
    let flow = unsafe { *entry };
    let family = if flow.ip_version == 6 {
        Family::Ipv6
    } else {
        Family::Ipv4
    };
    // The translation to IPv6 rebuilds the header from fields it knows;
    // the server never sends IPv4 options, and what it says it sends must
    // be there.
    if family == Family::Ipv6
        && (ihl != IP_MIN_LEN || (tot_len as usize) < IP_MIN_LEN + TCP_MIN_LEN)
    {
        return (family, Verdict::Drop(Counter::DroppedMalformed));
    }
    match server_step(flags, flow.guest_fin != 0, flow.server_fin != 0) {
        ServerStep::Reset => {
            if table.remove(key).is_ok() {
                count(family, Counter::FlowsReset);
            }
        }
        ServerStep::Close => {
            if table.remove(key).is_ok() {
                count(family, Counter::FlowsClosed);
            }
        }
        ServerStep::MarkFin => {
            // SAFETY: as above, before any removal; a single byte only this
            // program writes.
            unsafe { (*entry).server_fin = 1 };
        }
        ServerStep::Keep => {}
    }
    let rewritten = if family == Family::Ipv6 {
        translate::reply_to_ipv6(ctx, config, &flow)
    } else {
        let guest_addr = [
            flow.guest_addr[0],
            flow.guest_addr[1],
            flow.guest_addr[2],
            flow.guest_addr[3],
        ];
        rewrite(
            ctx,
            tcp,
            Rewrite {
                saddr: (config.server_addr, config.metadata_addr),
                daddr: (daddr, guest_addr),
                port_offset: TCP_SPORT,
                port: (sport_be, METADATA_PORT.to_be()),
                eth_dst: flow.guest_mac,
                eth_src: flow.gateway_mac,
            },
        )
    };
    if rewritten.is_err() {
        return (family, Verdict::Drop(Counter::DroppedRewrite));
    }
    (
        family,
        Verdict::Redirect(Counter::Replied, flow.tap_ifindex),
    )
}

/// One NAT step: (old, new) pairs for the IPv4 addresses and one TCP port,
/// plus the new Ethernet addresses.
struct Rewrite {
    saddr: ([u8; 4], [u8; 4]),
    daddr: ([u8; 4], [u8; 4]),
    port_offset: usize,
    port: (u16, u16),
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
}

/// Applies a `Rewrite`, keeping the IPv4 and TCP checksums right (incremental
/// updates; the TCP one includes the pseudo-header, so it also works for
/// CHECKSUM_PARTIAL skbs from virtio guests and local sockets).
#[inline(always)]
fn rewrite(ctx: &TcContext, tcp: usize, rw: Rewrite) -> Result<(), i64> {
    let ip = ETH_HLEN;
    let tcp_check = tcp + TCP_CHECK;
    let pseudo = BPF_F_PSEUDO_HDR as u64 | 4;
    for (offset, (old, new)) in [(IP_SADDR, rw.saddr), (IP_DADDR, rw.daddr)] {
        let (old, new) = (
            u32::from_ne_bytes(old) as u64,
            u32::from_ne_bytes(new) as u64,
        );
        if old == new {
            continue;
        }
        ctx.l4_csum_replace(tcp_check, old, new, pseudo)?;
        ctx.l3_csum_replace(ip + IP_CHECK, old, new, 4)?;
        ctx.store(ip + offset, &(new as u32), 0)?;
    }
    let (old, new) = rw.port;
    if old != new {
        ctx.l4_csum_replace(tcp_check, old as u64, new as u64, 2)?;
        ctx.store(tcp + rw.port_offset, &new, 0)?;
    }
    ctx.store(ETH_DST, &rw.eth_dst, 0)?;
    ctx.store(ETH_SRC, &rw.eth_src, 0)?;
    Ok(())
}
