//! Tap ingress for IPv6, from a registered tap: a Neighbour Solicitation
//! for a metadata address is answered (`ndp`); TCP to a metadata address,
//! port 80, is translated to IPv4 and redirected to the server as IPv4's
//! is, as the port's identity address of that metadata address's lane;
//! anything else sent to a metadata address is dropped. Everything else
//! passes untouched: router solicitations, solicitations for other targets,
//! MLD, DHCPv6, other TCP, and all of it from taps that are not registered.
use core::mem::size_of;

use aya_ebpf::{helpers::generated::bpf_check_mtu, programs::TcContext};
use metadata_ebpf::{Counter, DatapathConfig, Family, FlowEntry, IPV6_MIN_MTU, METADATA_PORT};

use super::{
    ETH_HLEN, EthHdr, GuestSegment, IP_MIN_LEN, IPPROTO_TCP, PORTS, TCP_DPORT, TCP_FLAGS,
    TCP_MIN_LEN, TCP_SPORT, Verdict,
    addr6::{Addr6, metadata_index6},
    has_tcp_header, ifindex, ndp, ptr_at, track_guest_segment, translate,
};

/// The fixed IPv6 header up to its addresses (extension headers are not
/// followed). The addresses are read and written as `Addr6`.
#[repr(C)]
pub(super) struct Ipv6Start {
    /// Version (4 bits), traffic class (8), flow label (20).
    pub(super) version_tc_flow: [u8; 4],
    pub(super) payload_len_be: u16,
    pub(super) next_header: u8,
    pub(super) hop_limit: u8,
}

pub(super) const IPV6_HLEN: usize = 40;
/// Where the source and destination addresses are in a frame.
pub(super) const IPV6_SADDR: usize = ETH_HLEN + size_of::<Ipv6Start>();
pub(super) const IPV6_DADDR: usize = IPV6_SADDR + 16;
const _: () = assert!(size_of::<Ipv6Start>() == 8 && IPV6_DADDR + 16 == ETH_HLEN + IPV6_HLEN);

pub(super) const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_FRAGMENT: u8 = 44;

/// The fixed header's fields but the addresses.
pub(super) struct Ipv6Fields {
    pub(super) version: u8,
    pub(super) traffic_class: u8,
    pub(super) payload_len: u16,
    pub(super) next_header: u8,
    pub(super) hop_limit: u8,
}

#[inline(always)]
pub(super) fn tap_ipv6(ctx: &TcContext, config: &DatapathConfig) -> Verdict {
    // IPv6 switched off: none of it is ours.
    if config.served6 == 0 {
        return Verdict::Pass(Counter::Passed);
    }
    let Some(ip) = read_header(ctx) else {
        return Verdict::Pass(Counter::Passed);
    };
    // A solicitation goes to the target's solicited-node group (or, to
    // confirm reachability, to the target itself): recognised by its
    // target, not by its destination.
    if ip.next_header == IPPROTO_ICMPV6 && ndp::is_solicitation(ctx) {
        return ndp::answer_solicitation(ctx, config);
    }
    let Some(daddr) = Addr6::load(ctx, IPV6_DADDR) else {
        return Verdict::Pass(Counter::Passed);
    };
    let Some(index) = metadata_index6(config, &daddr) else {
        return Verdict::Pass(Counter::Passed);
    };
    catch_tcp(ctx, config, index)
}

/// The fixed header's fields but the addresses.
#[inline(always)]
pub(super) fn read_header(ctx: &TcContext) -> Option<Ipv6Fields> {
    let ip = ptr_at::<Ipv6Start>(ctx, ETH_HLEN)?;
    // The whole fixed header must be there.
    ptr_at::<[u8; IPV6_HLEN]>(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        let first = (*ip).version_tc_flow;
        Some(Ipv6Fields {
            version: first[0] >> 4,
            traffic_class: (first[0] << 4) | (first[1] >> 4),
            payload_len: u16::from_be((*ip).payload_len_be),
            next_header: (*ip).next_header,
            hop_limit: (*ip).hop_limit,
        })
    }
}

/// Writes a fixed IPv6 header (no flow label) over the packet's.
#[inline(always)]
pub(super) fn store_header(
    ctx: &TcContext,
    fields: &Ipv6Fields,
    saddr: &Addr6,
    daddr: &Addr6,
) -> Result<(), i64> {
    let tc = fields.traffic_class;
    let start = Ipv6Start {
        version_tc_flow: [0x60 | (tc >> 4), tc << 4, 0, 0],
        payload_len_be: fields.payload_len.to_be(),
        next_header: fields.next_header,
        hop_limit: fields.hop_limit,
    };
    ctx.store(ETH_HLEN, &start, 0)?;
    ctx.store(IPV6_SADDR, saddr, 0)?;
    ctx.store(IPV6_DADDR, daddr, 0)
}

/// Anything to `metadata_addrs6[index]`: TCP to port 80 from a registered
/// tap is translated and redirected to the server; the rest of what a
/// registered tap sends there is dropped, but other TCP ports, and all of
/// it from taps that are not registered, pass.
///
/// Not inlined, as `ndp::answer_solicitation`: each has a stack frame of
/// its own next to the entry point's, where inlined they would share one
/// over eBPF's 512 bytes.
#[inline(never)]
fn catch_tcp(ctx: &TcContext, config: &DatapathConfig, index: usize) -> Verdict {
    let (Some(ip), Some(saddr)) = (read_header(ctx), Addr6::load(ctx, IPV6_SADDR)) else {
        return Verdict::Pass(Counter::Passed);
    };
    // The identity comes from the tap the packet arrived on, nothing else.
    let tap = ifindex(ctx);
    let Some(port) = PORTS.get_ptr_mut(tap) else {
        return Verdict::Pass(Counter::PassedUnregistered);
    };
    if ip.version != 6 {
        return Verdict::Drop(Counter::DroppedMalformed);
    }
    if !mtu_allows_ipv6(ctx) {
        return Verdict::Pass(Counter::PassedSmallMtu);
    }
    // Only TCP, right after the fixed header, is served: a chain of
    // extension headers would need a loop to follow, a fragment may lack
    // the ports, and guests send neither to the metadata service.
    match ip.next_header {
        IPPROTO_TCP => {}
        IPPROTO_FRAGMENT => return Verdict::Drop(Counter::DroppedFragment),
        _ => return Verdict::Drop(Counter::DroppedNextHeader),
    }
    let tcp = ETH_HLEN + IPV6_HLEN;
    let Ok(dport_be) = ctx.load::<u16>(tcp + TCP_DPORT) else {
        return Verdict::Drop(Counter::DroppedMalformed);
    };
    if u16::from_be(dport_be) != METADATA_PORT {
        return Verdict::Pass(Counter::Passed);
    }
    if config.ready == 0 {
        return Verdict::Drop(Counter::DroppedNotReady);
    }
    // The segment must be whole as far as the header says, and fit an IPv4
    // packet once translated.
    let payload_len = ip.payload_len as usize;
    if payload_len < TCP_MIN_LEN || payload_len > u16::MAX as usize - IP_MIN_LEN {
        return Verdict::Drop(Counter::DroppedMalformed);
    }
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
    // The lane of this metadata address: the guest's IPv4 connections and
    // its connections to the other address have other identity addresses,
    // so none shares a (identity, source port) key with this one.
    // SAFETY: a valid map value pointer; a plain copy.
    let identity = unsafe {
        if index == 0 {
            (*port).identity_addrs6[0]
        } else {
            (*port).identity_addrs6[1]
        }
    };

    let segment = GuestSegment {
        family: Family::Ipv6,
        port,
        identity,
        sport_be,
        flags,
    };
    // SAFETY: `port` is the live PORTS value of this tap.
    let tracked = unsafe {
        track_guest_segment(&segment, config, || {
            FlowEntry::new6(saddr.0, index as u8, tap, guest_mac, gateway_mac)
        })
    };
    if let Err(counter) = tracked {
        return Verdict::Drop(counter);
    }

    let translated = translate::request_to_ipv4(
        ctx,
        &translate::Request4 {
            identity,
            server_addr: config.server_addr,
            server_port_be: config.server_port_be,
            payload_len: ip.payload_len,
            ttl: ip.hop_limit,
            tos: ip.traffic_class,
            eth_dst: config.server_mac,
            eth_src: guest_mac,
        },
    );
    if translated.is_err() {
        return Verdict::Drop(Counter::DroppedRewrite);
    }
    Verdict::RedirectPeer(Counter::Caught, config.redirect_ifindex)
}

/// Whether the tap the packet came in on has at least IPv6's minimum MTU.
/// Read from the device at each decision, so a tap whose MTU changes is
/// served or not from its next packet on.
#[inline(always)]
pub(super) fn mtu_allows_ipv6(ctx: &TcContext) -> bool {
    let mut mtu: u32 = 0;
    // SAFETY: the helper reads the skb's device (ifindex 0) and writes its
    // MTU into `mtu`; a negative result means it could not (then we do not
    // serve).
    let ret = unsafe { bpf_check_mtu(ctx.skb.skb.cast(), 0, &mut mtu, 0, 0) };
    ret >= 0 && mtu >= IPV6_MIN_MTU
}
