//! Identity addresses: the source address a guest's request has when it
//! reaches the server. Each registered port has a slot, and slot N maps to
//! `identity_net + N`, so the server knows the port from the peer address
//! alone. The range is routed only to the server's veth; nothing else on the
//! host uses it.
//!
//! A port has one identity address per lane (`metadata_ebpf::IDENTITY_LANES`):
//! lane 0 (the identity range itself) for its IPv4 connections, then one
//! lane per IPv6 metadata address for the IPv6 connections the datapath
//! translates to IPv4. Lane L is the range of the identity range's size
//! that follows it L times (240.1.0.0/16, then 240.2.0.0/16 and
//! 240.3.0.0/16 by default), slot N at offset N in each. So two connections
//! of one guest never meet under one (address, port) pair, whichever family
//! or metadata address each uses, and the slot is still plain arithmetic.
use std::net::Ipv4Addr;

use anyhow::bail;
use metadata_ebpf::IDENTITY_LANES;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentityPlan {
    /// The server's own address (on the server end of the veth pair).
    pub server_addr: Ipv4Addr,
    /// First address of the identity range.
    pub net: Ipv4Addr,
    pub prefix_len: u8,
}

impl Default for IdentityPlan {
    /// 240.0.0.0/4 is reserved, never routed on the Internet, and accepted as
    /// unicast by Linux: nothing a host or guest uses can collide with it.
    fn default() -> Self {
        Self {
            server_addr: Ipv4Addr::new(240, 0, 0, 1),
            net: Ipv4Addr::new(240, 1, 0, 0),
            prefix_len: 16,
        }
    }
}

impl IdentityPlan {
    /// Checks the plan is usable: a sane prefix, the server outside the range.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(8..=30).contains(&self.prefix_len) {
            bail!(
                "identity prefix length must be 8..=30, got {}",
                self.prefix_len
            );
        }
        if u32::from(self.net) & !self.mask() != 0 {
            bail!(
                "identity network {}/{} has host bits set",
                self.net,
                self.prefix_len
            );
        }
        // In u64: the last lane's start may itself lie past the end.
        let size = u64::from(!self.mask()) + 1;
        let end = u64::from(u32::from(self.net)) + IDENTITY_LANES as u64 * size - 1;
        if end > u64::from(u32::MAX) {
            bail!(
                "identity network {}/{} is too close to the end of the address space for \
                 its {} lanes (each IPv6 metadata address takes the next range of the \
                 same size)",
                self.net,
                self.prefix_len,
                IDENTITY_LANES
            );
        }
        if self.lane_of(self.server_addr).is_some() {
            bail!(
                "server address {} lies inside the identity ranges {}",
                self.server_addr,
                self.describe_lanes()
            );
        }
        match self.next_hop() {
            Some(next_hop) if self.lane_of(next_hop).is_none() => {}
            _ => bail!(
                "the address after the server address {} is the identity ranges' next hop \
                 and must be a unicast address outside {}",
                self.server_addr,
                self.describe_lanes()
            ),
        }
        Ok(())
    }

    /// Lane `lane`'s network: the identity range, moved up `lane` times its
    /// own size.
    pub fn lane(&self, lane: usize) -> (Ipv4Addr, u8) {
        let size = u64::from(!self.mask()) + 1;
        let start = u64::from(u32::from(self.net)) + lane as u64 * size;
        (Ipv4Addr::from(start as u32), self.prefix_len)
    }

    /// Every lane's network, lane 0 first: what is routed to the server.
    pub fn lanes(&self) -> [(Ipv4Addr, u8); IDENTITY_LANES] {
        std::array::from_fn(|lane| self.lane(lane))
    }

    fn describe_lanes(&self) -> String {
        self.lanes()
            .iter()
            .map(|(net, len)| format!("{net}/{len}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The lane `addr` lies in, if any.
    fn lane_of(&self, addr: Ipv4Addr) -> Option<usize> {
        (0..IDENTITY_LANES).find(|&lane| {
            let (net, _) = self.lane(lane);
            u32::from(addr) & self.mask() == u32::from(net)
        })
    }

    /// The gateway the identity range is routed through on the server end:
    /// the address after the server's. Nothing answers it (the end has ARP
    /// off) and nothing needs to. It exists so that the kernel keeps one
    /// neighbour entry for all replies instead of one per identity address:
    /// those entries live in the host-wide ARP table (gc_thresh3, 1024 by
    /// default, shared by every namespace), and when it is full the kernel
    /// drops the server's segments (NEIGH_CREATEFAIL) and TCP retries them
    /// only after 200 ms.
    pub fn next_hop(&self) -> Option<Ipv4Addr> {
        let next = u32::from(self.server_addr).checked_add(1)?;
        let next = Ipv4Addr::from(next);
        (!next.is_broadcast() && !next.is_multicast() && !next.is_loopback()).then_some(next)
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix_len))
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == u32::from(self.net)
    }

    /// The highest usable slot (the last address of the range is left out).
    pub fn max_slot(&self) -> u32 {
        !self.mask() - 1
    }

    /// The port's identity address in every lane, lane 0 first.
    pub fn addresses_of(&self, slot: u32) -> anyhow::Result<[Ipv4Addr; IDENTITY_LANES]> {
        if slot == 0 || slot > self.max_slot() {
            bail!("slot {slot} outside 1..={}", self.max_slot());
        }
        Ok(std::array::from_fn(|lane| {
            Ipv4Addr::from(u32::from(self.lane(lane).0) + slot)
        }))
    }

    /// The slot an identity address of any lane encodes.
    pub fn slot_of(&self, addr: Ipv4Addr) -> Option<u32> {
        let (net, _) = self.lane(self.lane_of(addr)?);
        let slot = u32::from(addr) - u32::from(net);
        (1..=self.max_slot()).contains(&slot).then_some(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip() {
        let plan = IdentityPlan::default();
        plan.validate().unwrap();
        assert_eq!(
            plan.addresses_of(1).unwrap()[0],
            Ipv4Addr::new(240, 1, 0, 1)
        );
        assert_eq!(
            plan.addresses_of(258).unwrap()[0],
            Ipv4Addr::new(240, 1, 1, 2)
        );
        assert_eq!(plan.slot_of(Ipv4Addr::new(240, 1, 1, 2)), Some(258));
        assert_eq!(plan.max_slot(), 65_534);
    }

    #[test]
    fn every_lane_encodes_the_slot() {
        let plan = IdentityPlan::default();
        assert_eq!(
            plan.lanes(),
            [
                (Ipv4Addr::new(240, 1, 0, 0), 16),
                (Ipv4Addr::new(240, 2, 0, 0), 16),
                (Ipv4Addr::new(240, 3, 0, 0), 16)
            ]
        );
        let addresses = plan.addresses_of(258).unwrap();
        assert_eq!(
            addresses,
            [
                Ipv4Addr::new(240, 1, 1, 2),
                Ipv4Addr::new(240, 2, 1, 2),
                Ipv4Addr::new(240, 3, 1, 2)
            ]
        );
        for address in addresses {
            assert_eq!(plan.slot_of(address), Some(258), "{address}");
        }
        assert_eq!(plan.slot_of(Ipv4Addr::new(240, 4, 1, 2)), None);
        assert_eq!(plan.slot_of(Ipv4Addr::new(240, 3, 255, 255)), None);
        let small = IdentityPlan {
            net: Ipv4Addr::new(240, 1, 0, 0),
            prefix_len: 24,
            ..Default::default()
        };
        assert_eq!(
            small.addresses_of(7).unwrap(),
            [
                Ipv4Addr::new(240, 1, 0, 7),
                Ipv4Addr::new(240, 1, 1, 7),
                Ipv4Addr::new(240, 1, 2, 7)
            ]
        );
    }

    #[test]
    fn outside_addresses_have_no_slot() {
        let plan = IdentityPlan::default();
        assert_eq!(plan.slot_of(Ipv4Addr::new(240, 1, 0, 0)), None);
        assert_eq!(plan.slot_of(Ipv4Addr::new(240, 1, 255, 255)), None);
        assert_eq!(plan.slot_of(Ipv4Addr::new(10, 0, 0, 5)), None);
        assert_eq!(plan.slot_of(plan.server_addr), None);
        assert!(plan.addresses_of(0).is_err());
        assert!(plan.addresses_of(65_535).is_err());
    }

    #[test]
    fn bad_plans_are_refused() {
        let inside = IdentityPlan {
            server_addr: Ipv4Addr::new(240, 1, 0, 9),
            ..Default::default()
        };
        assert!(inside.validate().is_err(), "server inside the range");
        let host_bits = IdentityPlan {
            net: Ipv4Addr::new(240, 1, 0, 1),
            ..Default::default()
        };
        assert!(host_bits.validate().is_err(), "host bits set");
        let next_hop_inside = IdentityPlan {
            server_addr: Ipv4Addr::new(240, 0, 255, 255),
            net: Ipv4Addr::new(240, 1, 0, 0),
            prefix_len: 16,
        };
        assert!(
            next_hop_inside.validate().is_err(),
            "the next hop 240.1.0.0 lies in the range"
        );
        // The server in an IPv6 lane, and a next hop in one.
        let in_lane = IdentityPlan {
            server_addr: Ipv4Addr::new(240, 3, 0, 1),
            ..Default::default()
        };
        let err = in_lane.validate().unwrap_err().to_string();
        assert!(err.contains("240.3.0.0/16"), "{err}");
        let after_the_lanes = IdentityPlan {
            server_addr: Ipv4Addr::new(240, 4, 0, 1),
            ..Default::default()
        };
        after_the_lanes.validate().unwrap();
        // The lanes must not run past the end of the address space.
        let at_the_end = IdentityPlan {
            server_addr: Ipv4Addr::new(240, 0, 0, 1),
            net: Ipv4Addr::new(255, 254, 0, 0),
            prefix_len: 16,
        };
        let err = at_the_end.validate().unwrap_err().to_string();
        assert!(err.contains("lanes"), "{err}");
    }

    #[test]
    fn the_next_hop_follows_the_server() {
        let plan = IdentityPlan::default();
        assert_eq!(plan.next_hop(), Some(Ipv4Addr::new(240, 0, 0, 2)));
        let last = IdentityPlan {
            server_addr: Ipv4Addr::new(255, 255, 255, 254),
            ..Default::default()
        };
        assert_eq!(last.next_hop(), None, "255.255.255.255 is no next hop");
        assert!(last.validate().is_err());
    }
}
