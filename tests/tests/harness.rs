//! Tests of the harness itself, without the daemon: they show that what the
//! end-to-end tests build behaves as they assume (isolated same-address
//! tenants, a decoy that answers whatever the datapath does not catch, a
//! booting qemu guest, a daemon wrapper that cleans up).
use mdr_harness::tempdir::TempDir;
use mdr_harness::tenant::DECOY_MARK;
use mdr_harness::{
    Daemon, DaemonConfig, Guest, GuestConfig, Host, QemuConfig, QemuGuest, TenantNet, cmd,
};
use std::path::Path;
use std::time::Duration;

use mdr_harness::fixtures::{GATEWAY, GUEST_ADDR as ADDR, GUEST_MAC as MAC};

#[test]
#[ignore = "root: run via cargo xtask test"]
fn same_address_guests_on_two_bridges_reach_only_their_own_router() {
    let host = Host::new().unwrap();
    let net_a = TenantNet::with_router_and_decoy(&host).unwrap();
    let net_b = TenantNet::with_router_and_decoy(&host).unwrap();
    let guest_a = Guest::new(&net_a, GuestConfig::new(ADDR, MAC)).unwrap();
    let guest_b = Guest::new(&net_b, GuestConfig::new(ADDR, MAC)).unwrap();

    for (guest, net) in [(&guest_a, &net_a), (&guest_b, &net_b)] {
        assert!(
            guest.ping(GATEWAY).unwrap(),
            "{} cannot ping its router",
            guest.tap()
        );
        // The decoy names its router namespace: each guest reached its own.
        let reply = guest.http_get_url("http://10.0.0.1/").unwrap();
        assert_eq!(reply.status, 200, "{reply}");
        assert!(reply.body.contains(net.router().unwrap().name()), "{reply}");
    }
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn an_uncaught_metadata_request_reaches_the_decoy() {
    let host = Host::new().unwrap();
    let net = TenantNet::with_router_and_decoy(&host).unwrap();
    let guest = Guest::new(&net, GuestConfig::new(ADDR, MAC)).unwrap();

    let reply = guest.http_get("/openstack/latest/meta_data.json").unwrap();
    assert_eq!(reply.status, 200, "{reply}");
    assert!(reply.body.contains(DECOY_MARK), "{reply}");
}

/// Fail-closed: without the datapath an on-link guest gets no answer at all,
/// whether there is no router or one with a decoy (which does not answer
/// ARP for 169.254.169.254), and curl gives up within its timeout.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn an_on_link_guest_without_the_datapath_gets_nothing() {
    let host = Host::new().unwrap();
    let bare = TenantNet::without_router(&host, 24).unwrap();
    let routed = TenantNet::with_router_and_decoy(&host).unwrap();
    for net in [&bare, &routed] {
        let guest = Guest::new(net, GuestConfig::new(ADDR, MAC).on_link()).unwrap();
        let reply = guest
            .http_get_with(
                "/openstack/latest/meta_data.json",
                &[],
                Duration::from_secs(2),
            )
            .unwrap();
        assert_eq!(reply.status, 0, "{reply}");
        assert!(reply.error.is_some(), "{reply}");
    }
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn namespaces_and_links_are_gone_after_drop() {
    let names = {
        let host = Host::new().unwrap();
        let net = TenantNet::with_router_and_decoy(&host).unwrap();
        let guest = Guest::new(&net, GuestConfig::new(ADDR, MAC)).unwrap();
        [host.name(), net.router().unwrap().name(), guest.ns().name()].map(str::to_owned)
    };
    let list = cmd::run(&["ip", "netns", "list"]).unwrap();
    for name in names {
        assert!(!list.contains(&name), "{name} is still there:\n{list}");
    }
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_qemu_guest_boots_and_fetches_over_its_tap() {
    let host = Host::new().unwrap();
    let net = TenantNet::with_router_and_decoy(&host).unwrap();
    let mut vm = QemuGuest::new(&net, QemuConfig::new(ADDR, MAC)).unwrap();
    vm.boot().unwrap();

    let reply = vm.wait_for_answer().unwrap();
    assert!(vm.link_came_up(), "console:\n{}", vm.console());
    // init reports every module that failed to load.
    assert!(
        !vm.console().contains("insmod "),
        "console:\n{}",
        vm.console()
    );
    assert_eq!(reply.status, 200, "{reply}\nconsole:\n{}", vm.console());
    assert!(reply.body.contains(DECOY_MARK), "{reply}");
}

/// A stand-in daemon: `serve` makes its bpffs dir and "socket" and sleeps;
/// `status` succeeds once the socket exists; `serve --help` names
/// `--server-netns`, as today's daemon does (the harness asks).
const FAKE_DAEMON: &str = r#"#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in
    --help) echo "  --server-netns <NAME>"; exit 0 ;;
    --admin-socket) sock=$2; shift ;;
    --bpffs) bpffs=$2; shift ;;
    serve) mode=serve ;;
    status) mode=status ;;
  esac
  shift
done
case "$mode" in
  serve) mkdir -p "$bpffs/maps" && touch "$sock" && echo "fake daemon up" >&2 && exec sleep 600 ;;
  status) test -e "$sock" ;;
esac
"#;

#[test]
#[ignore = "root: run via cargo xtask test"]
fn the_daemon_runs_in_the_host_namespace_and_is_cleaned_up() {
    use std::os::unix::fs::PermissionsExt as _;

    let dir = TempDir::new("fake").unwrap();
    let bin = dir.join("fake-daemon");
    std::fs::write(&bin, FAKE_DAEMON).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let host = Host::new().unwrap();
    let config = DaemonConfig {
        bin,
        ..DaemonConfig::in_dir(dir.path())
    };

    let (bpffs, pid) = {
        let mut daemon = Daemon::start_with(&host, config, None).unwrap();
        let netns_of = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
        let first = daemon.pid().unwrap();
        let host_ns = std::fs::metadata(host.path()).unwrap();
        let daemon_ns = std::fs::metadata(format!("/proc/{first}/ns/net")).unwrap();
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(daemon_ns.ino(), host_ns.ino(), "{:?}", netns_of(first));
        assert!(daemon.bpffs().join("maps").is_dir());
        assert!(daemon.log().contains("fake daemon up"));

        daemon.kill9().unwrap();
        assert!(!Path::new(&format!("/proc/{first}")).exists());
        daemon.restart().unwrap();
        let second = daemon.pid().unwrap();
        assert_ne!(first, second);
        assert!(daemon.cli(&["status"]).unwrap().status.success());
        (daemon.bpffs().to_owned(), second)
    };
    assert!(!bpffs.exists(), "{} is still there", bpffs.display());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the daemon still runs"
    );
}

/// Leftovers of a run that died without unwinding (SIGKILL) are removed by
/// the next run's sweep; objects of live runs (this one) are kept.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn leftovers_of_dead_runs_are_swept_and_live_ones_kept() {
    // pid_max is at most 2^22: no process has this pid.
    let dead = "mdr-test-99999999-0-beef";
    let (ns, pins, tmp) = (
        format!("{dead}-host"),
        Path::new(mdr_harness::bpffs::ROOT).join(format!("{dead}-bpffs")),
        std::env::temp_dir().join(format!("{dead}-daemon")),
    );
    // A daemon's server namespace, with the server end of its pair; the
    // entry end sits in the dead run's host namespace.
    let server_ns = format!("{dead}-srv");
    mdr_harness::bpffs::ensure_mounted().unwrap();
    cmd::run(&["ip", "netns", "add", &ns]).unwrap();
    cmd::run(&["ip", "netns", "add", &server_ns]).unwrap();
    cmd::run(&[
        "ip", "-n", &ns, "link", "add", "mdr-in", "type", "veth", "peer", "name", "mdr-srv",
        "netns", &server_ns,
    ])
    .unwrap();
    std::fs::create_dir_all(pins.join("maps")).unwrap();
    std::fs::create_dir_all(&tmp).unwrap();
    let live = Host::new().unwrap();

    mdr_harness::names::sweep_stale();

    let list = cmd::run(&["ip", "netns", "list"]).unwrap();
    assert!(!list.contains(&ns), "{ns} survived:\n{list}");
    assert!(!list.contains(&server_ns), "{server_ns} survived:\n{list}");
    assert!(!pins.exists() && !tmp.exists());
    assert!(
        list.contains(live.name()),
        "a live run's namespace was swept"
    );
}
