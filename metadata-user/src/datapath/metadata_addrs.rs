//! The addresses guests ask for metadata: one IPv4 address (169.254.169.254)
//! and up to two IPv6 ones (OpenStack's `fe80::a9fe:a9fe`, EC2's
//! `fd00:ec2::254`), or none when IPv6 is switched off. The datapath reads
//! them from its configuration map; the order of the IPv6 ones is the order
//! of their identity lanes.
use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::bail;
use metadata_ebpf::{DEFAULT_METADATA_ADDRS6, METADATA_ADDR, METADATA_ADDRS6};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataAddrs {
    pub ipv4: Ipv4Addr,
    /// Served over IPv6, in lane order; empty: IPv6 is not served.
    pub ipv6: Vec<Ipv6Addr>,
}

impl Default for MetadataAddrs {
    fn default() -> Self {
        Self {
            ipv4: Ipv4Addr::from(METADATA_ADDR),
            ipv6: DEFAULT_METADATA_ADDRS6
                .iter()
                .map(|addr| Ipv6Addr::from(*addr))
                .collect(),
        }
    }
}

impl MetadataAddrs {
    /// Checks that guests could ask these addresses: unicast, not ours.
    /// The message names the setting.
    pub fn validate(&self) -> anyhow::Result<()> {
        let v4 = self.ipv4;
        if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() || v4.is_loopback() {
            bail!("metadata_addr: {v4} is not a unicast address a guest can ask");
        }
        if self.ipv6.len() > METADATA_ADDRS6 {
            bail!(
                "metadata_addrs6: at most {METADATA_ADDRS6} addresses, got {}",
                self.ipv6.len()
            );
        }
        for (index, addr) in self.ipv6.iter().enumerate() {
            if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() {
                bail!("metadata_addrs6: {addr} is not a unicast address a guest can ask");
            }
            if addr.to_ipv4_mapped().is_some() {
                bail!("metadata_addrs6: {addr} is an IPv4-mapped address");
            }
            if self.ipv6[..index].contains(addr) {
                bail!("metadata_addrs6: {addr} is listed twice");
            }
        }
        Ok(())
    }

    /// The IPv6 addresses as the datapath's configuration holds them, and
    /// the mask of those served (bit i for entry i; 0 when IPv6 is off).
    pub fn ipv6_config(&self) -> ([[u8; 16]; METADATA_ADDRS6], u32) {
        let mut addrs = [[0; 16]; METADATA_ADDRS6];
        let mut served = 0;
        for (index, addr) in self.ipv6.iter().take(METADATA_ADDRS6).enumerate() {
            addrs[index] = addr.octets();
            served |= 1 << index;
        }
        (addrs, served)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_openstacks_and_ec2s() {
        let addrs = MetadataAddrs::default();
        addrs.validate().unwrap();
        assert_eq!(addrs.ipv4, Ipv4Addr::new(169, 254, 169, 254));
        let expected: Vec<Ipv6Addr> = vec![
            "fe80::a9fe:a9fe".parse().unwrap(),
            "fd00:ec2::254".parse().unwrap(),
        ];
        assert_eq!(addrs.ipv6, expected);
        let (config, served) = addrs.ipv6_config();
        assert_eq!(served, 0b11);
        assert_eq!(config, DEFAULT_METADATA_ADDRS6);
    }

    #[test]
    fn off_and_one_address() {
        let off = MetadataAddrs {
            ipv6: vec![],
            ..Default::default()
        };
        off.validate().unwrap();
        assert_eq!(off.ipv6_config(), ([[0; 16]; 2], 0));
        let ec2_only = MetadataAddrs {
            ipv6: vec!["fd00:ec2::254".parse().unwrap()],
            ..Default::default()
        };
        let (config, served) = ec2_only.ipv6_config();
        assert_eq!((config[0], served), (metadata_ebpf::METADATA_ADDR6_EC2, 1));
    }

    #[test]
    fn bad_addresses_name_the_setting() {
        for (ipv4, ipv6, key) in [
            ("0.0.0.0", vec![], "metadata_addr"),
            ("224.0.0.1", vec![], "metadata_addr"),
            ("127.0.0.1", vec![], "metadata_addr"),
            ("169.254.169.254", vec!["ff02::1"], "metadata_addrs6"),
            ("169.254.169.254", vec!["::"], "metadata_addrs6"),
            ("169.254.169.254", vec!["::1"], "metadata_addrs6"),
            ("169.254.169.254", vec!["::ffff:1.2.3.4"], "metadata_addrs6"),
            (
                "169.254.169.254",
                vec!["fe80::1", "fe80::1"],
                "metadata_addrs6",
            ),
            (
                "169.254.169.254",
                vec!["fe80::1", "fe80::2", "fe80::3"],
                "metadata_addrs6",
            ),
        ] {
            let addrs = MetadataAddrs {
                ipv4: ipv4.parse().unwrap(),
                ipv6: ipv6.iter().map(|a| a.parse().unwrap()).collect(),
            };
            let err = addrs.validate().unwrap_err().to_string();
            assert!(err.starts_with(key), "{ipv4} {ipv6:?}: {err}");
        }
    }
}
