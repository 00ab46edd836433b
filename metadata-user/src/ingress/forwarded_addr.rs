//! The guest address a neutron proxy reports in `X-Forwarded-For`, IPv4 or
//! IPv6, and what an IPv6 link-local one says about the guest's MAC.
//!
//! neutron serves IPv6 guests at `fe80::a9fe:a9fe` through the same haproxy,
//! which then forwards the guest's link-local source address. That address
//! is no fixed IP of the port, so neutron's agent finds the port by the MAC
//! the address was made from (modified EUI-64, RFC 4291 appendix A); a guest
//! using another interface identifier (RFC 7217 stable privacy addresses)
//! is found only if its address is registered (`port add --ip`).
use std::net::{IpAddr, Ipv6Addr};

/// The address in one `X-Forwarded-For` element: IPv4, or IPv6 with or
/// without a zone (`fe80::1%eth0`, the zone dropped); an IPv4-mapped IPv6
/// address (a dual-stack listener's view of an IPv4 peer) is IPv4.
pub fn parse(value: &str) -> Option<IpAddr> {
    let value = value.trim();
    let value = value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(value);
    let without_zone = value.split_once('%').map_or(value, |(addr, _)| addr);
    match without_zone.parse::<IpAddr>().ok()? {
        IpAddr::V6(v6) => Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)),
        v4 => Some(v4),
    }
}

/// The MAC an IPv6 link-local address with a modified EUI-64 interface
/// identifier was made from, in the registry's form (lower-case, colons);
/// None for any other address.
pub fn eui64_mac(addr: &IpAddr) -> Option<String> {
    let IpAddr::V6(v6) = addr else {
        return None;
    };
    if !is_link_local(v6) {
        return None;
    }
    let id = &v6.octets()[8..];
    if id[3] != 0xff || id[4] != 0xfe {
        return None;
    }
    let mac = [id[0] ^ 0x02, id[1], id[2], id[5], id[6], id[7]];
    Some(
        mac.iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// fe80::/10 (`Ipv6Addr::is_unicast_link_local` is not stable yet).
fn is_link_local(addr: &Ipv6Addr) -> bool {
    addr.segments()[0] & 0xffc0 == 0xfe80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_either_family() {
        assert_eq!(parse("10.0.0.5"), Some("10.0.0.5".parse().unwrap()));
        assert_eq!(parse(" fd00::5 "), Some("fd00::5".parse().unwrap()));
        assert_eq!(parse("fe80::1%eth0"), Some("fe80::1".parse().unwrap()));
        assert_eq!(parse("[fe80::1]"), Some("fe80::1".parse().unwrap()));
        assert_eq!(parse("::ffff:10.0.0.5"), Some("10.0.0.5".parse().unwrap()));
        for bad in [
            "",
            "10.0.0",
            "fe80::1::2",
            "unknown",
            "10.0.0.5:80",
            "%eth0",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn eui64_link_local_addresses_name_their_mac() {
        let addr = parse("fe80::f816:3eff:fe00:5").unwrap();
        assert_eq!(eui64_mac(&addr).as_deref(), Some("fa:16:3e:00:00:05"));
        // Not EUI-64, not link-local, not IPv6.
        for other in [
            "fe80::1",
            "fd00::f816:3eff:fe00:5",
            "10.0.0.5",
            "fe80::a9fe:a9fe",
        ] {
            assert_eq!(eui64_mac(&parse(other).unwrap()), None, "{other}");
        }
    }
}
