//! Neighbour Discovery for the IPv6 metadata addresses (RFC 4861), as ARP
//! for the IPv4 one: a registered tap's Neighbour Solicitation for one is
//! turned into the Neighbour Advertisement in place and sent back out of
//! the same tap, so it never reaches the bridge.
use core::mem::{offset_of, size_of};

use aya_ebpf::{
    helpers::generated::{bpf_csum_diff, bpf_skb_change_tail},
    programs::TcContext,
};
use metadata_ebpf::{Counter, DatapathConfig, METADATA_MAC};

use super::{
    ETH_HLEN, ETH_P_IPV6, EthHdr, PORTS, Verdict,
    addr6::{Addr6, UNSPECIFIED, metadata_index6},
    ifindex,
    ipv6::{
        IPPROTO_ICMPV6, IPV6_DADDR, IPV6_HLEN, IPV6_SADDR, Ipv6Fields, mtu_allows_ipv6,
        read_header, store_header,
    },
    ptr_at,
    translate::{fold, packet_at},
};

/// ICMPv6 Neighbour Solicitation, without options.
#[repr(C)]
struct NeighbourSolicitation {
    icmp_type: u8,
    code: u8,
    checksum: u16,
    reserved: [u8; 4],
    target: [u8; 16],
}

/// ICMPv6 Neighbour Advertisement with its one option, the target's
/// link-layer address; the target itself is written apart (as `Addr6`).
#[repr(C)]
struct AdvertisementStart {
    icmp_type: u8,
    code: u8,
    checksum: u16,
    /// R, S, O in the high bits; the rest is reserved.
    flags: u8,
    reserved: [u8; 3],
}

#[repr(C)]
struct TargetLinkLayerOption {
    option_type: u8,
    /// In units of 8 bytes.
    option_len: u8,
    mac: [u8; 6],
}

pub(super) const NS_LEN: usize = size_of::<NeighbourSolicitation>();
const ICMP: usize = ETH_HLEN + IPV6_HLEN;
const NS_TARGET: usize = ICMP + offset_of!(NeighbourSolicitation, target);
const NA_TARGET: usize = ICMP + size_of::<AdvertisementStart>();
const NA_OPTION: usize = NA_TARGET + 16;
/// The whole answer: Ethernet, IPv6, the advertisement and its option.
const NA_FRAME_LEN: usize = NA_OPTION + size_of::<TargetLinkLayerOption>();
const NA_LEN: usize = NA_FRAME_LEN - ICMP;
const ICMP_CHECKSUM: usize = ICMP + offset_of!(AdvertisementStart, checksum);
const _: () = assert!(NS_LEN == 24 && NA_LEN == 32 && NA_FRAME_LEN == 86);

const ICMPV6_NEIGHBOUR_SOLICITATION: u8 = 135;
const ICMPV6_NEIGHBOUR_ADVERTISEMENT: u8 = 136;
/// The advertisement answers a solicitation sent to us (RFC 4861 4.4).
const NA_SOLICITED: u8 = 0x40;
/// The advertisement overrides a cached link-layer address.
const NA_OVERRIDE: u8 = 0x20;
const ND_OPT_TARGET_LINK_LAYER_ADDR: u8 = 2;
/// Neighbour Discovery messages are sent, and only accepted, with hop
/// limit 255: proof they were not forwarded by a router.
const ND_HOP_LIMIT: u8 = 255;
/// ff02::1 and its Ethernet multicast address.
const ALL_NODES: Addr6 = Addr6([0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

/// Whether the ICMPv6 message after the fixed header is a solicitation.
#[inline(always)]
pub(super) fn is_solicitation(ctx: &TcContext) -> bool {
    matches!(ctx.load::<u8>(ICMP), Ok(ICMPV6_NEIGHBOUR_SOLICITATION))
}

/// A solicitation for a served metadata address from a registered tap:
/// answered in place, out of the same tap. Solicitations for anything else,
/// invalid ones (RFC 4861 7.1.1, which a node silently ignores) and those
/// from other taps pass untouched.
///
/// Not inlined: its stack frame is its own, next to the entry point's (see
/// `ipv6::catch_tcp`).
#[inline(never)]
pub(super) fn answer_solicitation(ctx: &TcContext, config: &DatapathConfig) -> Verdict {
    let (Some(ip), Some(code), Some(target)) = (
        read_header(ctx),
        ctx.load::<u8>(ICMP + offset_of!(NeighbourSolicitation, code))
            .ok(),
        Addr6::load(ctx, NS_TARGET),
    ) else {
        return Verdict::Pass(Counter::Passed);
    };
    if metadata_index6(config, &target).is_none() {
        return Verdict::Pass(Counter::Passed);
    }
    let (Some(saddr), Some(daddr)) = (Addr6::load(ctx, IPV6_SADDR), Addr6::load(ctx, IPV6_DADDR))
    else {
        return Verdict::Pass(Counter::Passed);
    };
    // Duplicate address detection: from the unspecified address, to the
    // target's solicited-node group only.
    let from_unspecified = saddr.is(&UNSPECIFIED);
    if ip.version != 6
        || ip.hop_limit != ND_HOP_LIMIT
        || code != 0
        || (ip.payload_len as usize) < NS_LEN
        || (from_unspecified && !daddr.is(&solicited_node(&target)))
    {
        return Verdict::Pass(Counter::Passed);
    }
    let tap = ifindex(ctx);
    // SAFETY: only checks presence.
    if unsafe { PORTS.get(tap) }.is_none() {
        return Verdict::Pass(Counter::PassedUnregistered);
    }
    if !mtu_allows_ipv6(ctx) {
        return Verdict::Pass(Counter::PassedSmallMtu);
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Verdict::Pass(Counter::Passed);
    };
    // SAFETY: bounds checked by ptr_at.
    let guest_mac = unsafe { (*eth).src };
    // RFC 4861 7.2.4: to the soliciting node, solicited; to all nodes, not
    // solicited, when it asked from the unspecified address (DAD: the
    // guest learns the address is taken). Override always: we are the
    // address's owner and say which link-layer address it has.
    let written = if from_unspecified {
        write_advertisement(ctx, &target, &ALL_NODES, ALL_NODES_MAC, NA_OVERRIDE)
    } else {
        write_advertisement(ctx, &target, &saddr, guest_mac, NA_SOLICITED | NA_OVERRIDE)
    };
    if written.is_err() {
        return Verdict::Drop(Counter::DroppedRewrite);
    }
    // Out of the same tap: back to the guest that asked.
    Verdict::Redirect(Counter::NdAnswered, tap)
}

/// Turns the packet into the advertisement of `target` to `daddr`: the
/// solicitation's length (with or without options of its own) becomes the
/// advertisement's, the headers and message are written, then the ICMPv6
/// checksum is taken over what was written.
#[inline(always)]
fn write_advertisement(
    ctx: &TcContext,
    target: &Addr6,
    daddr: &Addr6,
    eth_dst: [u8; 6],
    flags: u8,
) -> Result<(), i64> {
    // SAFETY: plain helper call on this program's skb.
    let resized = unsafe { bpf_skb_change_tail(ctx.skb.skb, NA_FRAME_LEN as u32, 0) };
    if resized != 0 {
        return Err(resized);
    }
    let eth = EthHdr {
        dst: eth_dst,
        src: METADATA_MAC,
        proto_be: ETH_P_IPV6.to_be(),
    };
    ctx.store(0, &eth, 0)?;
    let header = Ipv6Fields {
        version: 6,
        traffic_class: 0,
        payload_len: NA_LEN as u16,
        next_header: IPPROTO_ICMPV6,
        hop_limit: ND_HOP_LIMIT,
    };
    store_header(ctx, &header, target, daddr)?;
    let start = AdvertisementStart {
        icmp_type: ICMPV6_NEIGHBOUR_ADVERTISEMENT,
        code: 0,
        checksum: 0,
        flags,
        reserved: [0; 3],
    };
    ctx.store(ICMP, &start, 0)?;
    ctx.store(NA_TARGET, target, 0)?;
    let option = TargetLinkLayerOption {
        option_type: ND_OPT_TARGET_LINK_LAYER_ADDR,
        option_len: 1,
        mac: METADATA_MAC,
    };
    ctx.store(NA_OPTION, &option, 0)?;
    // The pseudo-header is the two addresses (in the packet, right before
    // the message) plus the upper-layer length and next header, which
    // seed the sum.
    ctx.pull_data(NA_FRAME_LEN as u32)?;
    let mut length_and_next_header = [(NA_LEN as u32).to_be(), u32::from(IPPROTO_ICMPV6).to_be()];
    let covered = packet_at(ctx, IPV6_SADDR, NA_FRAME_LEN - IPV6_SADDR)?;
    // SAFETY: a stack array of 8 bytes, then `covered`'s readable bytes.
    let sum = unsafe {
        let seed = bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            length_and_next_header.as_mut_ptr(),
            8,
            0,
        );
        if seed < 0 {
            return Err(seed);
        }
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            covered,
            (NA_FRAME_LEN - IPV6_SADDR) as u32,
            seed as u32,
        )
    };
    if sum < 0 {
        return Err(sum);
    }
    // The ones' complement of the folded sum, in the byte order the sum
    // was taken in (that of the words as they lie in memory).
    let checksum: u16 = !fold(sum as u64);
    ctx.store(ICMP_CHECKSUM, &checksum, 0)
}

/// The solicited-node multicast group of `target`: ff02::1:ff00:0/104 and
/// the target's low 24 bits.
#[inline(always)]
fn solicited_node(target: &Addr6) -> Addr6 {
    let t = &target.0;
    Addr6([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, t[13], t[14], t[15],
    ])
}
