use aya_ebpf::{
    bindings::{BPF_F_PSEUDO_HDR, TC_ACT_SHOT},
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray},
    helpers::{bpf_ktime_get_ns, bpf_redirect},
    macros::{btf_map, classifier},
    programs::TcContext,
};
use metadata_ebpf::{
    Counters, DatapathConfig, FlowEntry, FlowKey, MAX_FLOWS, MAX_PORTS, METADATA_ADDR,
    METADATA_MAC, METADATA_PORT, PortEntry,
};

// How a flow ends (FLOWS holds a connection from the guest's SYN until it is
// over, so the LRU only has to evict when more connections are open at once
// than it holds, not merely made recently):
//
// * Tap ingress looks the flow up only on FIN or RST segments, so the
//   common path (data, ACKs) does no extra map work. A guest FIN sets
//   `guest_fin`; a guest RST removes the flow (the server does not answer a
//   RST, so no reply will need it).
// * Server egress already looks the flow up for every reply. A server FIN
//   sets `server_fin`; once both are set the flow is removed after the
//   redirect data has been copied out, so the segment that completes the
//   close still reaches the guest. That segment is the server's last one in
//   either order: server closes first (Connection: close) -> its ACK of the
//   guest's FIN; guest closes first (keep-alive client hanging up) -> the
//   server's FIN (the guest's final ACK needs no flow: ingress rewrites from
//   PORTS alone). Simultaneous close works out the same way, since the
//   server always ACKs the guest's FIN after ingress has marked it. A server
//   RST removes the flow too.
// * Each mark is a byte of its own written by one program only, so the two
//   programs never race on a read-modify-write.
//
// Edge cases, and why they are acceptable:
// * A segment the server sends after removal finds no flow and is dropped.
//   Without data or SYN (the ACK that the server, in TIME_WAIT, sends for a
//   retransmitted guest FIN after its first ACK was lost; a late RST) it is
//   counted as `dropped_no_flow_late`: the guest has already closed, its
//   kernel retries the FIN and then gives up, and no application waits.
//   With data (a retransmission of a reply segment lost between the tap and
//   the guest after both FINs were seen, which needs a loss on the
//   veth/redirect/tap path) it is `dropped_no_flow`, as an eviction was.
// * The guest reusing a source port: its new SYN overwrites the entry with
//   both marks cleared, so an old connection's marks never close the new
//   one early.
// * Userspace resolves the peer at accept time (`FlowTable::origin`). A
//   fast guest may have sent its FIN already (a half-close after the
//   request); that only sets `guest_fin`, and the flow stays until the
//   server's FIN, which cannot come before the server has accepted and
//   answered. Only a guest RST before accept removes it, and then the
//   connection is dead anyway.
// * Keep-alive connections keep their flow as long as they are open; the
//   server's idle timeout (or the guest hanging up) closes them like any
//   other, and an idle one is no more exposed to LRU eviction than before.
// * A stray RST from the guest (outside the window, which the server would
//   ignore) still removes the flow: it can only break the guest's own
//   connection, as the key is the guest's own tap identity.
// * A guest FIN or RST for a flow already gone (retransmission, daemon
//   restart with recreated maps) finds nothing and changes nothing; the
//   segment is still redirected.

#[btf_map]
static PORTS: HashMap<u32, PortEntry, { MAX_PORTS as usize }> = HashMap::new();
#[btf_map]
static FLOWS: LruHashMap<FlowKey, FlowEntry, { MAX_FLOWS as usize }> = LruHashMap::new();
#[btf_map]
static CONFIG: Array<DatapathConfig, 1> = Array::new();
#[btf_map]
static COUNTERS: PerCpuArray<Counters, 1> = PerCpuArray::new();

/// "Not ours": let the rest of the TC chain (or the stack) decide, so we
/// compose with other tcx programs on the same device.
const TC_ACT_UNSPEC: i32 = -1;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const IPPROTO_TCP: u8 = 6;

// Offsets inside the IPv4 header.
const IP_CHECK: usize = 10;
const IP_SADDR: usize = 12;
const IP_DADDR: usize = 16;
const IP_MIN_LEN: usize = 20;
// Offsets inside the TCP header.
const TCP_SPORT: usize = 0;
const TCP_DPORT: usize = 2;
const TCP_FLAGS: usize = 13;
const TCP_CHECK: usize = 16;
const TCP_DOFF: usize = 12;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const NSEC_PER_SEC: u64 = 1_000_000_000;
const TCP_MIN_LEN: usize = 20;
// ARP for IPv4 over Ethernet.
const ARP_OP_REQUEST: u16 = 1;
const ARP_OP_REPLY: u16 = 2;
/// Bytes the parser wants in the linear part of the skb: Ethernet, IPv4 with
/// no options and TCP with no options (options are read with skb loads).
const PARSE_LEN: usize = ETH_HLEN + IP_MIN_LEN + TCP_MIN_LEN;

macro_rules! count {
    ($field:ident) => {
        if let Some(c) = COUNTERS.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, only this CPU writes it while we run.
            unsafe { (*c).$field += 1 };
        }
    };
}

#[repr(C)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    proto_be: u16,
}

#[repr(C)]
struct Ipv4Hdr {
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

/// A bounds-checked pointer into the linear packet data, or None.
#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
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

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's lifetime.
    unsafe { (*ctx.skb.skb).ifindex }
}

#[classifier]
pub fn tap_ingress(ctx: TcContext) -> i32 {
    pull_headers(&ctx);
    let Some(eth) = ptr_at::<EthHdr>(&ctx, 0) else {
        count!(passed);
        return TC_ACT_UNSPEC;
    };
    // SAFETY: bounds checked by ptr_at.
    match u16::from_be(unsafe { (*eth).proto_be }) {
        ETH_P_IP => tap_ipv4(&ctx),
        ETH_P_ARP => tap_arp(&ctx),
        _ => {
            count!(passed);
            TC_ACT_UNSPEC
        }
    }
}

/// TCP to 169.254.169.254:80 from a registered tap: rewrite towards the server.
#[inline(always)]
fn tap_ipv4(ctx: &TcContext) -> i32 {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        count!(passed);
        return TC_ACT_UNSPEC;
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
    if daddr != METADATA_ADDR || protocol != IPPROTO_TCP {
        count!(passed);
        return TC_ACT_UNSPEC;
    }
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4 || ihl < IP_MIN_LEN {
        count!(dropped_malformed);
        return TC_ACT_SHOT;
    }
    // MF set or a non-zero offset: the TCP ports may be missing, and guests
    // never fragment TCP to the metadata service (they send DF).
    if frag_off & 0x3fff != 0 {
        count!(dropped_fragment);
        return TC_ACT_SHOT;
    }
    let tcp = ETH_HLEN + ihl;
    let Ok(dport_be) = ctx.load::<u16>(tcp + TCP_DPORT) else {
        count!(dropped_malformed);
        return TC_ACT_SHOT;
    };
    if u16::from_be(dport_be) != METADATA_PORT {
        count!(passed);
        return TC_ACT_UNSPEC;
    }
    // The identity comes from the tap the packet arrived on, nothing else.
    let tap = ifindex(ctx);
    let Some(port) = PORTS.get_ptr_mut(tap) else {
        count!(passed_unregistered);
        return TC_ACT_UNSPEC;
    };
    // SAFETY: a valid map value pointer; fields are plain integers.
    let (slot_identity, config) = (unsafe { (*port).identity_addr }, CONFIG.get(0).copied());
    let Some(config) = config else {
        count!(dropped_not_ready);
        return TC_ACT_SHOT;
    };
    if config.ready == 0 {
        count!(dropped_not_ready);
        return TC_ACT_SHOT;
    }
    let (Ok(sport_be), Ok(flags)) = (
        ctx.load::<u16>(tcp + TCP_SPORT),
        ctx.load::<u8>(tcp + TCP_FLAGS),
    ) else {
        count!(dropped_malformed);
        return TC_ACT_SHOT;
    };
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        count!(dropped_malformed);
        return TC_ACT_SHOT;
    };
    // SAFETY: bounds checked by ptr_at.
    let (guest_mac, gateway_mac) = unsafe { ((*eth).src, (*eth).dst) };

    // Only a connection's SYN writes the flow table: later segments of the
    // connection find their entry, so the common path does no map update.
    if flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        // SAFETY: as above.
        if !unsafe { take_syn_budget(port, config.syn_rate_per_port) } {
            count!(dropped_syn_budget);
            return TC_ACT_SHOT;
        }
        // Overwrites an entry left by an earlier connection from the same
        // source port, marks and all.
        let _ = FLOWS.insert(
            FlowKey {
                identity_addr: slot_identity,
                guest_port_be: sport_be,
                _pad: 0,
            },
            FlowEntry::new(saddr, tap, guest_mac, gateway_mac),
            0,
        );
    } else if flags & (TCP_FIN | TCP_RST) != 0 {
        let key = FlowKey {
            identity_addr: slot_identity,
            guest_port_be: sport_be,
            _pad: 0,
        };
        if flags & TCP_RST != 0 {
            // The server will not answer a RST: nothing needs the flow now.
            if FLOWS.remove(key).is_ok() {
                count!(flows_reset);
            }
        } else if let Some(flow) = FLOWS.get_ptr_mut(key) {
            // SAFETY: a valid map value pointer; a single byte only this
            // program writes.
            unsafe { (*flow).guest_fin = 1 };
        }
    }

    let rewritten = rewrite(
        ctx,
        tcp,
        Rewrite {
            saddr: (saddr, slot_identity),
            daddr: (METADATA_ADDR, config.server_addr),
            port_offset: TCP_DPORT,
            port: (dport_be, config.server_port_be),
            eth_dst: config.server_mac,
            eth_src: guest_mac,
        },
    );
    if rewritten.is_err() {
        count!(dropped_rewrite);
        return TC_ACT_SHOT;
    }
    count!(caught);
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(config.redirect_ifindex, 0) as i32 }
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
fn tap_arp(ctx: &TcContext) -> i32 {
    let Some(arp) = ptr_at::<ArpHdr>(ctx, ETH_HLEN) else {
        count!(passed);
        return TC_ACT_UNSPEC;
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
    if htype != 1
        || ptype != ETH_P_IP
        || hlen != 6
        || plen != 4
        || op != ARP_OP_REQUEST
        || tpa != METADATA_ADDR
    {
        count!(passed);
        return TC_ACT_UNSPEC;
    }
    let tap = ifindex(ctx);
    // SAFETY: only checks presence.
    if unsafe { PORTS.get(tap) }.is_none() {
        count!(passed_unregistered);
        return TC_ACT_UNSPEC;
    }
    let reply = ArpHdr {
        htype_be: 1u16.to_be(),
        ptype_be: ETH_P_IP.to_be(),
        hlen: 6,
        plen: 4,
        op_be: ARP_OP_REPLY.to_be(),
        sha: METADATA_MAC,
        spa: METADATA_ADDR,
        tha: sha,
        tpa: spa,
    };
    let eth = EthHdr {
        dst: sha,
        src: METADATA_MAC,
        proto_be: ETH_P_ARP.to_be(),
    };
    if ctx.store(0, &eth, 0).is_err() || ctx.store(ETH_HLEN, &reply, 0).is_err() {
        count!(dropped_rewrite);
        return TC_ACT_SHOT;
    }
    count!(arp_answered);
    // Out of the same tap: back to the guest that asked.
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(tap, 0) as i32 }
}

#[classifier]
pub fn server_egress(ctx: TcContext) -> i32 {
    pull_headers(&ctx);
    let (Some(eth), Some(ip)) = (ptr_at::<EthHdr>(&ctx, 0), ptr_at::<Ipv4Hdr>(&ctx, ETH_HLEN))
    else {
        count!(egress_passed);
        return TC_ACT_UNSPEC;
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
    let Some(config) = CONFIG.get(0).copied() else {
        count!(egress_passed);
        return TC_ACT_UNSPEC;
    };
    if proto != ETH_P_IP || protocol != IPPROTO_TCP || saddr != config.server_addr {
        count!(egress_passed);
        return TC_ACT_UNSPEC;
    }
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    if ihl < IP_MIN_LEN {
        count!(dropped_malformed);
        return TC_ACT_SHOT;
    }
    let tcp = ETH_HLEN + ihl;
    let (Ok(sport_be), Ok(dport_be), Ok(flags)) = (
        ctx.load::<u16>(tcp + TCP_SPORT),
        ctx.load::<u16>(tcp + TCP_DPORT),
        ctx.load::<u8>(tcp + TCP_FLAGS),
    ) else {
        count!(dropped_malformed);
        return TC_ACT_SHOT;
    };
    if sport_be != config.server_port_be {
        count!(egress_passed);
        return TC_ACT_UNSPEC;
    }
    let key = FlowKey {
        identity_addr: daddr,
        guest_port_be: dport_be,
        _pad: 0,
    };
    let Some(entry) = FLOWS.get_ptr_mut(key) else {
        // Tell the harmless tail of a closed connection (no data, no SYN)
        // from a segment the guest is waiting for.
        let doff = match ctx.load::<u8>(tcp + TCP_DOFF) {
            Ok(byte) => ((byte >> 4) as usize) * 4,
            Err(_) => 0,
        };
        if flags & TCP_SYN == 0 && (tot_len as usize) <= ihl + doff {
            count!(dropped_no_flow_late);
        } else {
            count!(dropped_no_flow);
        }
        return TC_ACT_SHOT;
    };
    // SAFETY: a valid map value pointer. A plain-old-data copy: the redirect
    // below uses only the copy, so removing the entry cannot affect it.
    let flow = unsafe { *entry };
    if flags & TCP_RST != 0 {
        if FLOWS.remove(key).is_ok() {
            count!(flows_reset);
        }
    } else if flags & TCP_FIN != 0 || flow.guest_fin != 0 {
        // The server's FIN, or a segment after the guest's FIN: the close
        // may be complete with this segment. (A guest FIN marked just after
        // the copy is seen on the server's ACK of it, which always follows.)
        let server_fin = flow.server_fin != 0 || flags & TCP_FIN != 0;
        if flow.guest_fin != 0 && server_fin {
            if FLOWS.remove(key).is_ok() {
                count!(flows_closed);
            }
        } else if flow.server_fin == 0 && flags & TCP_FIN != 0 {
            // SAFETY: as above, before any removal; a single byte only this
            // program writes.
            unsafe { (*entry).server_fin = 1 };
        }
    }
    let rewritten = rewrite(
        &ctx,
        tcp,
        Rewrite {
            saddr: (config.server_addr, METADATA_ADDR),
            daddr: (daddr, flow.guest_addr),
            port_offset: TCP_SPORT,
            port: (sport_be, METADATA_PORT.to_be()),
            eth_dst: flow.guest_mac,
            eth_src: flow.gateway_mac,
        },
    );
    if rewritten.is_err() {
        count!(dropped_rewrite);
        return TC_ACT_SHOT;
    }
    count!(replied);
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(flow.tap_ifindex, 0) as i32 }
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
    ctx.store(0, &rw.eth_dst, 0)?;
    ctx.store(6, &rw.eth_src, 0)?;
    Ok(())
}
