//! The capabilities `serve` needs, and whether this process has them.
//! Root has all of them; a systemd unit that trims the set (as the
//! installed one does) or a container may not.

use super::Item;

/// What `serve` needs, with why. The installed unit's
/// CapabilityBoundingSet is exactly this list (a test keeps them equal),
/// and `serve` was run with exactly this set in the tests.
pub const NEEDED: &[(&str, u32, &str)] = &[
    ("CAP_BPF", 39, "load the programs and create the maps"),
    (
        "CAP_PERFMON",
        38,
        "the verifier's pointer arithmetic on the counters (indexed per path); \
         without it, Spectre v1 hardening refuses tap_ingress",
    ),
    (
        "CAP_SYS_ADMIN",
        21,
        "open a port's flow table by its map id (BPF_MAP_GET_FD_BY_ID) when the \
         server identifies a connection: the kernel allows that to CAP_SYS_ADMIN only",
    ),
    (
        "CAP_NET_ADMIN",
        12,
        "attach to taps, create the veth pair, set its address and route",
    ),
    (
        "CAP_NET_BIND_SERVICE",
        10,
        "listen on the server port when it is below ip_unprivileged_port_start (80 is)",
    ),
];

/// The effective set of this process, from /proc/self/status.
fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(1024)
}

pub fn item(server_port: u16) -> Item {
    let Some(effective) = effective() else {
        return Item::warn("capabilities", "cannot read CapEff from /proc/self/status");
    };
    let missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(name, _, _)| {
            *name != "CAP_NET_BIND_SERVICE" || server_port < unprivileged_port_start()
        })
        .filter(|(_, bit, _)| effective & (1 << bit) == 0)
        .map(|(name, _, _)| *name)
        .collect();
    let names: Vec<&str> = NEEDED.iter().map(|(name, _, _)| *name).collect();
    if missing.is_empty() {
        Item::ok("capabilities", names.join(", "))
    } else {
        Item::fail(
            "capabilities",
            format!("missing {}", missing.join(", ")),
            format!(
                "run as root with {} (the installed unit grants exactly these)",
                names.join(", ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unit `cargo xtask install` puts in /etc/systemd/system.
    const UNIT: &str = include_str!("../../../dist/metadata-redirector.service");

    #[test]
    fn the_unit_grants_exactly_what_serve_needs() {
        let line = UNIT
            .lines()
            .find_map(|line| line.strip_prefix("CapabilityBoundingSet="))
            .expect("the unit bounds its capabilities");
        let mut granted: Vec<&str> = line.split_whitespace().collect();
        granted.sort();
        let mut needed: Vec<&str> = NEEDED.iter().map(|(name, _, _)| *name).collect();
        needed.sort();
        assert_eq!(granted, needed);
    }
}
