//! The datapath forgets a connection once it is over: a port's flow table
//! holds its open connections, not every connection made lately, so a busy
//! guest does not push its own live flows out of the LRU.

use std::time::Duration;

use mdr_harness::fixtures::{GUEST_ADDR, GUEST_MAC};
use mdr_harness::python;
use mdr_harness::wait::{self, Poll};
use mdr_harness::{Daemon, Guest, GuestConfig, Host, Instance, TenantNet};

/// Per-port request limits raised so that a few hundred requests in a row
/// are all answered.
const UNLIMITED: &str = "rate_limit_per_sec = 1000000.0\nrate_limit_burst = 1000000\n";

/// Connections per way of closing.
const CONNECTIONS: usize = 150;

/// Flows in the port flow tables of the pinned FLOWS map, read with bpftool.
fn flow_count(daemon: &Daemon) -> usize {
    mdr_harness::flows::count(&daemon.pinned_map("FLOWS")).unwrap()
}

fn counter(daemon: &Daemon, name: &str) -> u64 {
    let status = daemon.status().unwrap();
    status["datapath"]["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {status}"))
}

/// Runs tests/py/connections.py; asserts every response was a 200.
fn connections(guest: &Guest, mode: &str, per_connection: usize) {
    let count = CONNECTIONS.to_string();
    let out = python::run(
        guest.ns(),
        "connections.py",
        &[mode, "/openstack/latest/meta_data.json", &count],
        Duration::from_secs(120),
    )
    .unwrap();
    assert_eq!(out["failures"], serde_json::json!([]), "{mode}: {out}");
    assert_eq!(
        out["ok"].as_u64(),
        Some((CONNECTIONS * per_connection) as u64),
        "{mode}: {out}"
    );
}

/// Waits until FLOWS is empty (the last close handshakes may still be on
/// their way), allowing at most `leftover` entries after the deadline.
fn wait_flows_drained(daemon: &Daemon, leftover: usize, what: &str) {
    let drained = wait::until("FLOWS to drain", Duration::from_secs(5), || {
        let n = flow_count(daemon);
        Ok(if n == 0 {
            Poll::Ready(0)
        } else {
            Poll::Pending(format!("{n} entries"))
        })
    });
    if let Err(err) = drained {
        let n = flow_count(daemon);
        assert!(n <= leftover, "{what}: {n} flows left in FLOWS ({err})");
    }
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn flows_are_removed_when_their_connections_close() {
    let host = Host::new().unwrap();
    let net = TenantNet::with_router_and_decoy(&host).unwrap();
    let guest = Guest::new(&net, GuestConfig::new(GUEST_ADDR, GUEST_MAC)).unwrap();
    let daemon = Daemon::start_with_config_file(&host, UNLIMITED).unwrap();
    let instance = Instance::sample("flows");
    daemon.register(&guest, &instance).unwrap();
    guest.wait_served(&instance.uuid).unwrap();
    wait_flows_drained(&daemon, 0, "after the first requests");
    let closed_before = counter(&daemon, "flows_closed");
    let reset_before = counter(&daemon, "flows_reset");

    // Connection: close, the server's FIN first.
    connections(&guest, "server-closes", 1);
    wait_flows_drained(&daemon, 2, "server closes first");
    // Keep-alive, then the guest hangs up first.
    connections(&guest, "client-closes", 2);
    wait_flows_drained(&daemon, 2, "guest closes first");
    let closed = counter(&daemon, "flows_closed") - closed_before;
    assert!(
        closed >= 2 * CONNECTIONS as u64 - 2,
        "flows_closed grew by {closed} over {} connections",
        2 * CONNECTIONS
    );

    // Keep-alive, then a RST from the guest.
    connections(&guest, "reset", 1);
    wait_flows_drained(&daemon, 2, "guest resets");
    let reset = counter(&daemon, "flows_reset") - reset_before;
    assert!(
        reset >= CONNECTIONS as u64 - 2,
        "flows_reset grew by {reset} over {CONNECTIONS} connections"
    );

    // No reply was lost for want of a flow.
    assert_eq!(counter(&daemon, "dropped_no_flow"), 0);
    eprintln!(
        "flows_closed +{closed}, flows_reset +{reset}, dropped_no_flow_late {}",
        counter(&daemon, "dropped_no_flow_late")
    );
}

/// A port that goes (`port del` here; a stopped domain or an unplugged NIC
/// under `--discover` take the same path) takes its open connections'
/// flows with it at once (its flow table goes): no reply can reach them any
/// more. The connection here is open and idle, so only that can remove its
/// flow before the server's 10 s header timeout closes it.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_removed_ports_open_flows_are_purged() {
    let host = Host::new().unwrap();
    let net = TenantNet::with_router_and_decoy(&host).unwrap();
    let guest = Guest::new(&net, GuestConfig::new(GUEST_ADDR, GUEST_MAC)).unwrap();
    let daemon = Daemon::start(&host).unwrap();
    let instance = Instance::sample("purge");
    daemon.register(&guest, &instance).unwrap();
    guest.wait_served(&instance.uuid).unwrap();
    wait_flows_drained(&daemon, 0, "after the first requests");
    let mut idle = guest
        .ns()
        .spawn(
            &[
                "python3",
                "-c",
                "import socket, time\n\
                 s = socket.create_connection(('169.254.169.254', 80), timeout=5)\n\
                 print('open', flush=True)\n\
                 time.sleep(30)",
            ],
            std::process::Stdio::piped(),
            std::process::Stdio::inherit(),
        )
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(idle.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "open");
    assert_eq!(flow_count(&daemon), 1, "the idle connection's flow");

    let removed = std::time::Instant::now();
    daemon
        .cli_ok(&["port", "del", "--ifname", guest.tap()])
        .unwrap();
    let purged = wait::until("the flow to be purged", Duration::from_secs(3), || {
        // A table removed between bpftool's listing of FLOWS and its look
        // at the table fails that look: read again.
        Ok(
            match mdr_harness::flows::count(&daemon.pinned_map("FLOWS")) {
                Ok(0) => Poll::Ready(()),
                Ok(n) => Poll::Pending(format!("{n} flows")),
                Err(err) => Poll::Pending(format!("{err:#}")),
            },
        )
    });
    let _ = idle.kill();
    let _ = idle.wait();
    purged.unwrap();
    assert!(removed.elapsed() < Duration::from_secs(5));
}
