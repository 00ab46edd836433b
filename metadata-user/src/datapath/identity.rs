//! Identity addresses: the source address a guest's request has when it
//! reaches the server. Each registered port has a slot, and slot N maps to
//! `identity_net + N`, so the server knows the port from the peer address
//! alone. The range is routed only to the server's veth; nothing else on the
//! host uses it.
use std::net::Ipv4Addr;

use anyhow::bail;

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
        if self.contains(self.server_addr) {
            bail!(
                "server address {} lies inside the identity range",
                self.server_addr
            );
        }
        match self.next_hop() {
            Some(next_hop) if !self.contains(next_hop) => {}
            _ => bail!(
                "the address after the server address {} is the identity range's next hop \
                 and must be a unicast address outside {}/{}",
                self.server_addr,
                self.net,
                self.prefix_len
            ),
        }
        Ok(())
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

    pub fn address_of(&self, slot: u32) -> anyhow::Result<Ipv4Addr> {
        if slot == 0 || slot > self.max_slot() {
            bail!("slot {slot} outside 1..={}", self.max_slot());
        }
        Ok(Ipv4Addr::from(u32::from(self.net) + slot))
    }

    pub fn slot_of(&self, addr: Ipv4Addr) -> Option<u32> {
        if !self.contains(addr) {
            return None;
        }
        let slot = u32::from(addr) - u32::from(self.net);
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
        assert_eq!(plan.address_of(1).unwrap(), Ipv4Addr::new(240, 1, 0, 1));
        assert_eq!(plan.address_of(258).unwrap(), Ipv4Addr::new(240, 1, 1, 2));
        assert_eq!(plan.slot_of(Ipv4Addr::new(240, 1, 1, 2)), Some(258));
        assert_eq!(plan.max_slot(), 65_534);
    }

    #[test]
    fn outside_addresses_have_no_slot() {
        let plan = IdentityPlan::default();
        assert_eq!(plan.slot_of(Ipv4Addr::new(240, 1, 0, 0)), None);
        assert_eq!(plan.slot_of(Ipv4Addr::new(240, 1, 255, 255)), None);
        assert_eq!(plan.slot_of(Ipv4Addr::new(10, 0, 0, 5)), None);
        assert_eq!(plan.slot_of(plan.server_addr), None);
        assert!(plan.address_of(0).is_err());
        assert!(plan.address_of(65_535).is_err());
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
