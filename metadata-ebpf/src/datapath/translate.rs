//! Translation between a guest's IPv6 and the server's IPv4.
//!
//! The server has one address family and one path: an IPv6 guest's
//! segments become IPv4 from the port's identity address (the lane of the
//! metadata address asked) to the server on the way in, and the server's
//! replies become IPv6 from that metadata address to the guest on the way
//! out, their IPv4 TTL as the hop limit (so the IMDSv2 token's limit holds
//! over IPv6 too). The TCP segment is left as it is but for the server's
//! port; its checksum is updated for the pseudo-header's addresses, the
//! only part of it that differs between the families (length and protocol
//! add up the same in both). `bpf_skb_change_proto` makes or takes the 20
//! bytes of room after the Ethernet header (and turns a GSO skb's type
//! into the other family's); the new header is then written whole.
use aya_ebpf::{
    bindings::BPF_F_PSEUDO_HDR, helpers::generated::bpf_csum_diff, programs::TcContext,
};
use metadata_ebpf::{DatapathConfig, FlowEntry, METADATA_PORT};

use super::{
    ETH_HLEN, ETH_P_IP, ETH_P_IPV6, EthHdr, IP_MIN_LEN, IPPROTO_TCP, Ipv4Hdr, TCP_CHECK, TCP_DPORT,
    TCP_SPORT,
    addr6::{Addr6, metadata_addr6},
    ipv6::{IPV6_HLEN, IPV6_SADDR, Ipv6Fields, store_header},
    ptr_at,
};

/// IPv4's "don't fragment": the translated packets carry it, as the
/// guest's own IPv4 packets to the metadata service do.
const IP_DF: u16 = 0x4000;

/// A guest's IPv6 segment, as it goes to the server (its addresses are
/// read from the packet itself).
pub(super) struct Request4 {
    pub(super) identity: [u8; 4],
    pub(super) server_addr: [u8; 4],
    pub(super) server_port_be: u16,
    /// The IPv6 payload length: the TCP segment's.
    pub(super) payload_len: u16,
    pub(super) ttl: u8,
    pub(super) tos: u8,
    pub(super) eth_dst: [u8; 6],
    pub(super) eth_src: [u8; 6],
}

/// Where the IPv4 header's two addresses start (source, then destination).
const IPV4_ADDRS: usize = ETH_HLEN + 12;

/// IPv6 to IPv4, towards the server.
#[inline(always)]
pub(super) fn request_to_ipv4(ctx: &TcContext, request: &Request4) -> Result<(), i64> {
    let mut to = [
        u32::from_ne_bytes(request.identity),
        u32::from_ne_bytes(request.server_addr),
    ];
    // The guest's addresses as they are in the packet, not copied: the
    // stack is eBPF's scarcest resource here.
    let addrs = packet_at(ctx, IPV6_SADDR, 32)?;
    // SAFETY: `addrs` has 32 readable bytes (packet_at), `to` is an
    // initialised stack array of 8.
    let pseudo_diff = checked(unsafe { bpf_csum_diff(addrs, 32, to.as_mut_ptr(), 8, 0) })?;
    ctx.change_proto(ETH_P_IP.to_be(), 0)?;
    let mut ip = Ipv4Hdr {
        version_ihl: 0x45,
        tos: request.tos,
        tot_len_be: (request.payload_len + IP_MIN_LEN as u16).to_be(),
        id_be: 0,
        frag_off_be: IP_DF.to_be(),
        ttl: request.ttl,
        protocol: IPPROTO_TCP,
        check: 0,
        saddr: request.identity,
        daddr: request.server_addr,
    };
    ip.check = ipv4_header_checksum(&ip).to_be();
    ctx.store(ETH_HLEN, &ip, 0)?;
    let tcp = ETH_HLEN + IP_MIN_LEN;
    ctx.l4_csum_replace(tcp + TCP_CHECK, 0, pseudo_diff, BPF_F_PSEUDO_HDR as u64)?;
    let (old, new) = (METADATA_PORT.to_be(), request.server_port_be);
    if old != new {
        ctx.l4_csum_replace(tcp + TCP_CHECK, old as u64, new as u64, 2)?;
        ctx.store(tcp + TCP_DPORT, &new, 0)?;
    }
    let eth = EthHdr {
        dst: request.eth_dst,
        src: request.eth_src,
        proto_be: ETH_P_IP.to_be(),
    };
    ctx.store(0, &eth, 0)
}

/// IPv4 to IPv6, back to the guest of `flow`, from the metadata address it
/// asked. The caller has checked that the IPv4 header has no options and
/// a whole TCP header after it; the rest is read from the packet.
///
/// Not inlined: its stack frame is its own, next to the entry point's,
/// where inlined the two would share one over eBPF's 512 bytes.
#[inline(never)]
pub(super) fn reply_to_ipv6(
    ctx: &TcContext,
    config: &DatapathConfig,
    flow: &FlowEntry,
) -> Result<(), i64> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN).ok_or(-1i64)?;
    // SAFETY: bounds checked by ptr_at.
    let (tot_len, ttl, tos) = unsafe { (u16::from_be((*ip).tot_len_be), (*ip).ttl, (*ip).tos) };
    let tcp4 = ETH_HLEN + IP_MIN_LEN;
    let server_port_be = ctx.load::<u16>(tcp4 + TCP_SPORT)?;
    let mut source = metadata_addr6(config, flow.metadata_index as usize);
    // SAFETY: the field lies at a 4-byte offset of a 4-byte aligned value
    // (asserted in the shared crate), so the cast is aligned.
    let mut guest = unsafe { *(flow.guest_addr.as_ptr() as *const Addr6) };
    // The pseudo-header's addresses: the IPv4 ones (in the packet) out, the
    // metadata address and the guest's in.
    let addrs = packet_at(ctx, IPV4_ADDRS, 8)?;
    // SAFETY: `addrs` has 8 readable bytes (packet_at); `source` and
    // `guest` are initialised 16-byte values on the stack.
    let pseudo_diff = checked(unsafe {
        let diff = bpf_csum_diff(addrs, 8, (&mut source as *mut Addr6).cast(), 16, 0);
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            (&mut guest as *mut Addr6).cast(),
            16,
            checked(diff)? as u32,
        )
    })?;
    ctx.change_proto(ETH_P_IPV6.to_be(), 0)?;
    let header = Ipv6Fields {
        version: 6,
        traffic_class: tos,
        payload_len: tot_len - IP_MIN_LEN as u16,
        next_header: IPPROTO_TCP,
        hop_limit: ttl,
    };
    store_header(ctx, &header, &source, &guest)?;
    let tcp = ETH_HLEN + IPV6_HLEN;
    ctx.l4_csum_replace(tcp + TCP_CHECK, 0, pseudo_diff, BPF_F_PSEUDO_HDR as u64)?;
    let (old, new) = (server_port_be, METADATA_PORT.to_be());
    if old != new {
        ctx.l4_csum_replace(tcp + TCP_CHECK, old as u64, new as u64, 2)?;
        ctx.store(tcp + TCP_SPORT, &new, 0)?;
    }
    let eth = EthHdr {
        dst: flow.guest_mac,
        src: flow.gateway_mac,
        proto_be: ETH_P_IPV6.to_be(),
    };
    ctx.store(0, &eth, 0)
}

/// A pointer to `len` readable bytes of the packet at `offset`.
#[inline(always)]
pub(super) fn packet_at(ctx: &TcContext, offset: usize, len: usize) -> Result<*mut u32, i64> {
    let start = ctx.data() + offset;
    if start + len > ctx.data_end() {
        return Err(-1);
    }
    Ok(start as *mut u32)
}

/// A `bpf_csum_diff` result: the unfolded sum, or its error.
#[inline(always)]
fn checked(sum: i64) -> Result<u64, i64> {
    if sum < 0 { Err(sum) } else { Ok(sum as u64) }
}

/// Folds a 32-bit ones' complement sum (as `bpf_csum_diff` returns it) to
/// 16 bits.
#[inline(always)]
pub(super) fn fold(sum: u64) -> u16 {
    let mut sum = sum & 0xffff_ffff;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// RFC 1071 over the 20-byte header, in host order (store it big-endian).
#[inline(always)]
fn ipv4_header_checksum(ip: &Ipv4Hdr) -> u16 {
    let pair = |a: u8, b: u8| u32::from(u16::from_be_bytes([a, b]));
    let (s, d) = (ip.saddr, ip.daddr);
    let sum = pair(ip.version_ihl, ip.tos)
        + u32::from(u16::from_be(ip.tot_len_be))
        + u32::from(u16::from_be(ip.id_be))
        + u32::from(u16::from_be(ip.frag_off_be))
        + pair(ip.ttl, ip.protocol)
        + pair(s[0], s[1])
        + pair(s[2], s[3])
        + pair(d[0], d[1])
        + pair(d[2], d[3]);
    !fold(u64::from(sum))
}
