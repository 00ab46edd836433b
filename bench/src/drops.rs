//! Where packets or connections were lost during a measurement: the
//! hypervisor namespace's TCP counters (an accept queue that overflows
//! shows as ListenOverflows, and costs the guest a 1 s SYN retransmit) and
//! the datapath's own drop counters.
use std::collections::BTreeMap;

use anyhow::{Context, Result};
use mdr_harness::{Daemon, Netns};

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

/// The counters now: `tcp.*` from the namespace's /proc/net/netstat (read
/// from inside it), `datapath.dropped_*` from `status --json`.
pub fn snapshot(host: &Netns, daemon: &Daemon) -> Result<Counters> {
    let mut counters = Counters::new();
    let netstat = host.exec_ok(&["cat", "/proc/net/netstat"])?;
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
                counters.insert(format!("tcp.{name}"), value.parse().unwrap_or(0));
            }
        }
    }
    let status: serde_json::Value =
        serde_json::from_str(&daemon.cli_ok(&["status", "--json"])?).context("status --json")?;
    if let Some(map) = status["datapath"]["counters"].as_object() {
        for (name, value) in map {
            if name.starts_with("dropped") {
                counters.insert(format!("datapath.{name}"), value.as_u64().unwrap_or(0));
            }
        }
    }
    Ok(counters)
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
