//! `metadata-redirector check` on a host that has what the daemon needs,
//! and on hosts that each lack one thing: it names the item and the fix,
//! and exits non-zero. Each broken host is a namespace of the test's own.
use std::process::Output;

use mdr_harness::{Host, Netns, bpffs, check::item, tempdir::TempDir};

/// `check` with the test's own places (see `mdr_harness::check::run`).
fn check(host: &Host, server: &Netns, dir: &TempDir, wrapper: &[&str]) -> Output {
    mdr_harness::check::run(host, server, dir, wrapper, &[])
}

fn lines(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_good_host_passes_every_item() {
    bpffs::ensure_mounted().unwrap();
    let host = Host::new().unwrap();
    let server = Netns::new("srv").unwrap();
    let dir = TempDir::new("check").unwrap();
    // What the host's own namespace routes or filters does not reach the
    // server's namespace, so it changes nothing.
    host.exec_ok(&["iptables", "-P", "INPUT", "DROP"]).unwrap();
    let out = check(&host, &server, &dir, &[]);
    let text = lines(&out);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "kernel",
        "BTF",
        "TCX",
        "bpffs",
        "capabilities",
        "routes",
        "rp_filter",
        "firewall",
        "admin socket",
        "state dir",
    ] {
        assert!(item(&text, name).starts_with("ok "), "{text}");
    }
    assert!(text.ends_with("all needed items are in place\n"), "{text}");
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_route_stealing_identity_addresses_is_named_with_its_fix() {
    let host = Host::new().unwrap();
    let server = Netns::new("srv").unwrap();
    server
        .ip(&[
            "link",
            "add",
            "elsewhere",
            "type",
            "veth",
            "peer",
            "name",
            "elsewhere-p",
        ])
        .unwrap();
    server.ip(&["link", "set", "elsewhere", "up"]).unwrap();
    server
        .ip(&["route", "add", "240.1.7.0/24", "dev", "elsewhere"])
        .unwrap();
    let dir = TempDir::new("check").unwrap();
    let out = check(&host, &server, &dir, &[]);
    let text = lines(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let routes = item(&text, "routes");
    assert!(routes.starts_with("FAIL "), "{text}");
    assert!(routes.contains("240.1.7.0/24 dev elsewhere"), "{routes}");
    assert!(routes.contains("fix: remove that route"), "{routes}");
    assert!(text.ends_with("1 needed item(s) missing\n"), "{text}");
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_firewall_dropping_the_servers_traffic_is_named_with_its_fix() {
    let host = Host::new().unwrap();
    let server = Netns::new("srv").unwrap();
    // The server namespace's own filter table: the machine's is not touched.
    server
        .exec_ok(&["iptables", "-P", "INPUT", "DROP"])
        .unwrap();
    server
        .exec_ok(&["iptables", "-A", "INPUT", "-i", "lo", "-j", "ACCEPT"])
        .unwrap();
    let dir = TempDir::new("check").unwrap();
    let out = check(&host, &server, &dir, &[]);
    let text = lines(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let firewall = item(&text, "firewall");
    assert!(firewall.starts_with("FAIL "), "{text}");
    assert!(
        firewall
            .contains("fix: iptables -I INPUT -i mdr-srv -p tcp -d 240.0.0.1 --dport 80 -j ACCEPT"),
        "{firewall}"
    );

    // With that rule in place, the item passes.
    server
        .exec_ok(&[
            "iptables",
            "-I",
            "INPUT",
            "-i",
            "mdr-srv",
            "-p",
            "tcp",
            "-d",
            "240.0.0.1",
            "--dport",
            "80",
            "-j",
            "ACCEPT",
        ])
        .unwrap();
    let out = check(&host, &server, &dir, &[]);
    assert!(out.status.success(), "{}", lines(&out));
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn bpffs_unmounted_is_named_with_its_fix() {
    bpffs::ensure_mounted().unwrap();
    let host = Host::new().unwrap();
    let server = Netns::new("srv").unwrap();
    let dir = TempDir::new("check").unwrap();
    // A private mount namespace whose /sys/fs/bpf is unmounted (all of its
    // stacked mounts); the machine's stays as it is.
    let out = check(
        &host,
        &server,
        &dir,
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "while grep -q ' /sys/fs/bpf ' /proc/self/mounts; do umount -l /sys/fs/bpf || exit 9; done; exec \"$@\"",
            "sh",
        ],
    );
    let text = lines(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = item(&text, "bpffs");
    assert!(line.starts_with("FAIL "), "{text}");
    assert!(line.contains("fix: mount -t bpf bpf /sys/fs/bpf"), "{line}");
    assert!(
        bpffs::is_mounted(bpffs::ROOT),
        "the machine's bpffs is still mounted"
    );
}
