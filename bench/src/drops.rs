//! Where packets or connections were lost during a measurement: the TCP
//! counters of the namespaces a server listens in (an accept queue that
//! overflows shows as ListenOverflows, and costs the guest a 1 s SYN
//! retransmit) and the datapath's own drop counters.
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use mdr_harness::{Netns, cmd};

/// TcpExt counters that mean a connection attempt was lost or stalled.
const TCP_EXT: [&str; 6] = [
    "ListenOverflows",
    "PAWSTimewait",
    "ListenDrops",
    "TCPSynRetrans",
    "TCPTimeouts",
    "TCPReqQFullDrop",
];

pub type Counters = BTreeMap<String, u64>;

/// The counters now: `tcp.*` summed over the namespaces' /proc/net/netstat
/// (read from inside each: the hypervisor namespace, where an older
/// baseline build listens, and the daemon's server namespace, where ours
/// and the limit listen), `datapath.dropped_*` from the pinned COUNTERS map
/// under `bpffs` (read with bpftool, so also while no daemon runs).
pub fn snapshot(namespaces: &[&Netns], bpffs: &Path) -> Result<Counters> {
    let mut counters = Counters::new();
    for netns in namespaces {
        let netstat = netns.exec_ok(&["cat", "/proc/net/netstat"])?;
        let lines: Vec<&str> = netstat
            .lines()
            .filter(|l| l.starts_with("TcpExt:"))
            .collect();
        if let [names, values] = lines[..] {
            for (name, value) in names
                .split_whitespace()
                .zip(values.split_whitespace())
                .skip(1)
            {
                if TCP_EXT.contains(&name) {
                    *counters.entry(format!("tcp.{name}")).or_default() +=
                        value.parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    if let Some(fulls) = neighbour_table_fulls() {
        counters.insert("neigh.table_fulls".into(), fulls);
    }
    let map = bpffs.join("maps/COUNTERS");
    let dump = cmd::run(&[
        "bpftool",
        "-j",
        "map",
        "dump",
        "pinned",
        &map.to_string_lossy(),
    ])?;
    let dump: serde_json::Value = serde_json::from_str(&dump).context("bpftool map dump")?;
    for (name, value) in summed_over_cpus(&dump) {
        if name.starts_with("dropped") {
            counters.insert(format!("datapath.{name}"), value);
        }
    }
    Ok(counters)
}

/// How often the IPv4 neighbour table was full (summed over CPUs). The
/// table is one for the whole machine, shared by every namespace: when
/// other namespaces on a shared machine fill it, the kernel drops our
/// segments too (NEIGH_CREATEFAIL) and TCP retransmits them 200 ms to 1 s
/// later, which no counter of our own namespaces shows.
fn neighbour_table_fulls() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/stat/arp_cache").ok()?;
    let mut lines = text.lines();
    let column = lines
        .next()?
        .split_whitespace()
        .position(|name| name == "table_fulls")?;
    Some(
        lines
            .filter_map(|line| line.split_whitespace().nth(column))
            .filter_map(|hex| u64::from_str_radix(hex, 16).ok())
            .sum(),
    )
}

/// The per-CPU counters of a `bpftool -j map dump` of COUNTERS (its BTF
/// gives the fields names), summed over CPUs.
fn summed_over_cpus(dump: &serde_json::Value) -> Counters {
    let mut total = Counters::new();
    let per_cpu = dump
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry["formatted"]["values"].as_array())
        .flatten();
    for cpu in per_cpu {
        for (name, value) in cpu["value"].as_object().into_iter().flatten() {
            *total.entry(name.clone()).or_insert(0) += value.as_u64().unwrap_or(0);
        }
    }
    total
}

/// What grew between two snapshots (only the counters that did).
pub fn grown(before: &Counters, after: &Counters) -> Counters {
    after
        .iter()
        .filter_map(|(name, value)| {
            let delta = value.saturating_sub(before.get(name).copied().unwrap_or(0));
            (delta > 0).then(|| (name.clone(), delta))
        })
        .collect()
}

/// "tcp.ListenOverflows 1216, ..." or "" when nothing grew.
pub fn describe(grown: &Counters) -> String {
    grown
        .iter()
        .map(|(name, value)| format!("{name} {value}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_counters_are_summed_by_name() {
        let dump = serde_json::json!([{
            "key": ["0x00", "0x00", "0x00", "0x00"],
            "formatted": {"key": 0, "values": [
                {"cpu": 0, "value": {"caught": 3, "dropped_no_flow": 1}},
                {"cpu": 1, "value": {"caught": 4, "dropped_no_flow": 2}}
            ]}
        }]);
        let total = summed_over_cpus(&dump);
        assert_eq!(total["caught"], 7);
        assert_eq!(total["dropped_no_flow"], 3);
    }
}
