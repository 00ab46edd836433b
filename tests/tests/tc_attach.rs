//! `serve --tap-attach tc`: the tap program as a cls_bpf filter (pref 1,
//! handle 0x6d64) instead of a pinned TCX link.
use mdr_harness::fixtures::{GUEST_ADDR as ADDR, GUEST_MAC as MAC};
use mdr_harness::tenant::DECOY_MARK;
use mdr_harness::wait::{self, Poll};
use mdr_harness::{Daemon, Guest, GuestConfig, Host, Instance, TenantNet, check_own_answers};
use std::time::Duration;

fn tc_mode() -> Vec<String> {
    vec!["--tap-attach".into(), "tc".into()]
}

fn tcx_mode() -> Vec<String> {
    vec!["--tap-attach".into(), "tcx".into()]
}

/// A tenant network, one guest on it and a daemon in tc mode serving the
/// guest as `name`, with the guest's filter already checked to be ours
/// (its program id is returned). Bound in this order, the parts drop in
/// reverse: daemon, guest, network.
fn served_in_tc_mode(host: &Host, name: &str) -> (TenantNet, Guest, Daemon, Instance, u32) {
    let net = TenantNet::with_router_and_decoy(host).unwrap();
    let guest = Guest::new(&net, GuestConfig::new(ADDR, MAC)).unwrap();
    let daemon = Daemon::start_with_args(host, &tc_mode()).unwrap();
    let instance = Instance::sample(name);
    daemon.register(&guest, &instance).unwrap();
    guest.wait_served(&instance.uuid).unwrap();
    let filter = our_one_filter(host, guest.tap());
    (net, guest, daemon, instance, filter)
}

/// The lines of `tc filter show dev TAP ingress` that are filters (the
/// others are the per-priority headers), e.g. `filter protocol all pref 1
/// bpf chain 0 handle 0x6d64 tap_ingress direct-action not_in_hw id 42 ...`.
fn ingress_filters(host: &Host, tap: &str) -> Vec<String> {
    let out = host
        .exec_ok(&["tc", "filter", "show", "dev", tap, "ingress"])
        .unwrap();
    out.lines()
        .filter(|line| line.contains("handle"))
        .map(str::to_owned)
        .collect()
}

/// Asserts that the tap has exactly our filter and returns the program ID it runs.
fn our_one_filter(host: &Host, tap: &str) -> u32 {
    let filters = ingress_filters(host, tap);
    assert_eq!(filters.len(), 1, "{filters:#?}");
    let filter = &filters[0];
    for part in ["pref 1 bpf", "handle 0x6d64", "direct-action"] {
        assert!(filter.contains(part), "{part:?} missing: {filter}");
    }
    filter
        .split_whitespace()
        .skip_while(|word| *word != "id")
        .nth(1)
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no program id in {filter}"))
}

fn tcx_pin(daemon: &Daemon, tap: &str) -> std::path::PathBuf {
    daemon.bpffs().join("links").join(format!("tap-{tap}"))
}

/// Waits until `path` exists (or, with `present` false, no longer does).
fn wait_for(path: &std::path::Path, present: bool) {
    wait::until(
        &format!("{} to exist: {present}", path.display()),
        Duration::from_secs(5),
        || {
            Ok(if path.exists() == present {
                Poll::Ready(())
            } else {
                Poll::Pending(String::new())
            })
        },
    )
    .unwrap();
}

/// Waits (up to 5 s) until `tap` has no ingress filter left.
fn wait_for_no_filter(host: &Host, tap: &str) {
    wait::until("the filter to go", Duration::from_secs(5), || {
        let filters = ingress_filters(host, tap);
        Ok(if filters.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("{filters:?}"))
        })
    })
    .unwrap();
}

/// Served through a tc filter; a SIGKILLed daemon restarted on the same
/// state keeps the filter and its program (the same build) and serves
/// again.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_tap_attached_with_tc_is_served_and_a_restart_leaves_one_filter() {
    let host = Host::new().unwrap();
    let (_net, guest, mut daemon, instance, before) = served_in_tc_mode(&host, "tc-served");
    check_own_answers(&guest, &instance).unwrap();

    assert!(!tcx_pin(&daemon, guest.tap()).exists(), "a TCX link too");
    let status = daemon.status().unwrap();
    assert_eq!(status["datapath"]["tap_attach"], "tc", "{status}");
    let qdiscs = host
        .exec_ok(&["tc", "qdisc", "show", "dev", guest.tap()])
        .unwrap();
    // An `ingress` qdisc (one filter block), not a clsact (two): each block
    // makes every later qdisc's creation walk longer (tc_attach's comment).
    assert!(qdiscs.contains("qdisc ingress ffff:"), "{qdiscs}");
    assert!(!qdiscs.contains("clsact"), "{qdiscs}");

    // The attachment outlives the daemon: the guest stays caught.
    daemon
        .kill9_keeps_guest_caught_and_restart(&guest, &instance.uuid)
        .unwrap();
    check_own_answers(&guest, &instance).unwrap();
    // The same build: the previous daemon's program is kept, and so is
    // the filter running it.
    let after = our_one_filter(&host, guest.tap());
    assert_eq!(before, after, "the filter's program was replaced");
    assert!(
        daemon.log().contains("keeping the tap program"),
        "{}",
        daemon.log()
    );
    assert!(!daemon.log().contains("attaching:"), "{}", daemon.log());
}

/// `port add --wait` answers once the tap is attached (served at once),
/// `port show` says where the datapath is, and `status` shows counts, the
/// per-tap list only with `--taps`.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn port_add_wait_returns_attached_and_status_lists_taps_only_on_request() {
    let host = Host::new().unwrap();
    let net = TenantNet::with_router_and_decoy(&host).unwrap();
    let guest = Guest::new(&net, GuestConfig::new(ADDR, MAC)).unwrap();
    let daemon = Daemon::start(&host).unwrap();
    let instance = Instance::sample("waiter");
    daemon.put_instance(&instance).unwrap();

    let tap = guest.tap();
    let addr = ADDR.to_string();
    let out = daemon
        .cli_ok(&[
            "port",
            "add",
            "--ifname",
            tap,
            "--instance",
            &instance.uuid,
            "--mac",
            MAC,
            "--ip",
            &addr,
            "--wait",
            "5",
        ])
        .unwrap();
    assert!(out.contains(": attached (ifindex "), "{out}");
    check_own_answers(&guest, &instance).unwrap();
    let shown = daemon.cli_ok(&["port", "show", tap]).unwrap();
    assert!(shown.contains("\ndatapath: attached (ifindex "), "{shown}");
    // The default mode is tc: the filter is ours.
    our_one_filter(&host, tap);

    let status = daemon.cli_ok(&["status"]).unwrap();
    assert!(status.contains("taps.attached: 1\n"), "{status}");
    assert!(
        !status.contains(tap),
        "the per-tap list by default: {status}"
    );
    let with_taps = daemon.cli_ok(&["status", "--taps"]).unwrap();
    assert!(
        with_taps.contains(&format!("attached_taps.{tap}.slot: ")),
        "{with_taps}"
    );

    // A port whose tap does not exist yet: said so at once, not a timeout.
    let absent = mdr_harness::names::ifname("nt");
    let out = daemon
        .cli_ok(&[
            "port",
            "add",
            "--ifname",
            &absent,
            "--instance",
            &instance.uuid,
            "--wait",
            "5",
        ])
        .unwrap();
    assert!(out.contains("no such interface yet"), "{out}");
}

/// `port del` removes the filter: the guest's request then goes to its
/// router as if there were no datapath, and the decoy answers.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn port_del_removes_the_tc_filter() {
    let host = Host::new().unwrap();
    let (_net, guest, daemon, instance, _) = served_in_tc_mode(&host, "tc-deleted");

    daemon
        .cli_ok(&["port", "del", "--ifname", guest.tap()])
        .unwrap();

    wait_for_no_filter(&host, guest.tap());
    let reply = guest.http_get("/openstack/latest/meta_data.json").unwrap();
    assert_eq!(reply.status, 200, "{reply}");
    assert!(reply.body.contains(DECOY_MARK), "{reply}");

    // And back: the same tap is attached again at once.
    daemon.register(&guest, &instance).unwrap();
    guest.wait_served(&instance.uuid).unwrap();
    our_one_filter(&host, guest.tap());
}

/// A daemon restarted from tcx to tc mode: the tap ends with our filter and
/// without the TCX link (and its pin); and back to tcx, without the filter.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn switching_modes_across_a_restart_leaves_one_attachment() {
    let host = Host::new().unwrap();
    let net = TenantNet::with_router_and_decoy(&host).unwrap();
    let guest = Guest::new(&net, GuestConfig::new(ADDR, MAC)).unwrap();
    let mut daemon = Daemon::start_with_args(&host, &tcx_mode()).unwrap();
    let instance = Instance::sample("switcher");
    daemon.register(&guest, &instance).unwrap();
    guest.wait_served(&instance.uuid).unwrap();
    let pin = tcx_pin(&daemon, guest.tap());
    // The program serves as soon as it is attached; the pin follows.
    wait_for(&pin, true);
    assert!(ingress_filters(&host, guest.tap()).is_empty());

    daemon.kill9().unwrap();
    daemon.set_extra_args(&tc_mode());
    daemon.restart().unwrap();
    guest.wait_served(&instance.uuid).unwrap();
    wait_for(&pin, false);
    our_one_filter(&host, guest.tap());
    // No TCX program is left on the tap either (bpftool lists tcx and
    // cls_bpf programs under "tc", told apart by "kind").
    let shown = host
        .exec_ok(&["bpftool", "-j", "net", "show", "dev", guest.tap()])
        .unwrap();
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let progs: Vec<&serde_json::Value> = shown[0]["tc"].as_array().into_iter().flatten().collect();
    // bpftool asks for filters at each of root, ingress, clsact/ingress and
    // clsact/egress; an `ingress` qdisc's one block answers all four with
    // the same filter. One program, and none of them a TCX link.
    let ids: std::collections::BTreeSet<u64> = progs
        .iter()
        .filter_map(|prog| prog["id"].as_u64())
        .collect();
    assert_eq!(ids.len(), 1, "{shown}");
    assert!(
        progs
            .iter()
            .all(|prog| !prog["kind"].as_str().unwrap_or("").starts_with("tcx")),
        "{shown}"
    );
    assert!(
        progs.iter().any(|prog| prog["kind"] == "clsact/ingress"),
        "{shown}"
    );
    check_own_answers(&guest, &instance).unwrap();

    daemon.kill9().unwrap();
    daemon.set_extra_args(&tcx_mode());
    daemon.restart().unwrap();
    guest.wait_served(&instance.uuid).unwrap();
    wait_for_no_filter(&host, guest.tap());
    wait_for(&pin, true);
    check_own_answers(&guest, &instance).unwrap();
}

/// A daemon that comes up without a port the previous one served (here: its
/// store is gone) prunes what is left of it: the port entry and our filter.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_restart_without_the_port_removes_its_filter() {
    let host = Host::new().unwrap();
    let (_net, guest, mut daemon, _instance, _) = served_in_tc_mode(&host, "forgotten");

    daemon.kill9().unwrap();
    std::fs::remove_dir_all(daemon.state_dir()).unwrap();
    daemon.restart().unwrap();

    // The first pass (and its prune) runs before the admin socket answers.
    assert!(ingress_filters(&host, guest.tap()).is_empty());
    let reply = guest.http_get("/openstack/latest/meta_data.json").unwrap();
    assert!(reply.body.contains(DECOY_MARK), "{reply}");
}

/// A tap that already has a qdisc with an ingress block (neutron's QoS
/// policing adds an `ingress` one, the daemon too; here another tool's
/// clsact): the filter goes onto that qdisc, which stays as it is.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn an_existing_clsact_qdisc_takes_our_filter() {
    let host = Host::new().unwrap();
    let net = TenantNet::with_router_and_decoy(&host).unwrap();
    let guest = Guest::new(&net, GuestConfig::new(ADDR, MAC)).unwrap();
    host.exec_ok(&["tc", "qdisc", "add", "dev", guest.tap(), "clsact"])
        .unwrap();
    let daemon = Daemon::start_with_args(&host, &tc_mode()).unwrap();
    let instance = Instance::sample("policed");
    daemon.register(&guest, &instance).unwrap();
    guest.wait_served(&instance.uuid).unwrap();

    our_one_filter(&host, guest.tap());
    let qdiscs = host
        .exec_ok(&["tc", "qdisc", "show", "dev", guest.tap()])
        .unwrap();
    assert!(qdiscs.contains("qdisc clsact ffff:"), "{qdiscs}");
    assert!(!qdiscs.contains("qdisc ingress"), "{qdiscs}");
}

/// A filter at our spot on a tap the daemon first sees after its start
/// (left there by hand here; by a daemon whose port was lost, say): the
/// daemon no longer dumps each new tap's filters, so attaching finds it by
/// the create's EEXIST and swaps its program in place. One filter, served.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_filter_left_at_our_spot_is_taken_over_after_the_start() {
    let host = Host::new().unwrap();
    let net = TenantNet::with_router_and_decoy(&host).unwrap();
    let daemon = Daemon::start_with_args(&host, &tc_mode()).unwrap();
    let guest = Guest::new(&net, GuestConfig::new(ADDR, MAC)).unwrap();
    let program = daemon.bpffs().join("progs").join("tap_ingress");
    host.exec_ok(&["tc", "qdisc", "add", "dev", guest.tap(), "ingress"])
        .unwrap();
    host.exec_ok(&[
        "tc",
        "filter",
        "add",
        "dev",
        guest.tap(),
        "ingress",
        "protocol",
        "all",
        "pref",
        "1",
        "handle",
        "0x6d64",
        "bpf",
        "direct-action",
        "pinned",
        &program.to_string_lossy(),
    ])
    .unwrap();
    let instance = Instance::sample("left-behind");
    daemon.register(&guest, &instance).unwrap();
    guest.wait_served(&instance.uuid).unwrap();
    our_one_filter(&host, guest.tap());
    check_own_answers(&guest, &instance).unwrap();
}

/// `--detach-on-exit` in tc mode takes the filters off the taps too (they
/// are not pinned, so removing the pins alone would leave them).
#[test]
#[ignore = "root: run via cargo xtask test"]
fn detach_on_exit_removes_the_tc_filters() {
    let host = Host::new().unwrap();
    let net = TenantNet::with_router_and_decoy(&host).unwrap();
    let guest = Guest::new(&net, GuestConfig::new(ADDR, MAC)).unwrap();
    let mut args = tc_mode();
    args.push("--detach-on-exit".into());
    let mut daemon = Daemon::start_with_args(&host, &args).unwrap();
    let instance = Instance::sample("leaver");
    daemon.register(&guest, &instance).unwrap();
    guest.wait_served(&instance.uuid).unwrap();
    our_one_filter(&host, guest.tap());

    daemon.sigterm_and_wait(Duration::from_secs(10)).unwrap();
    assert!(
        ingress_filters(&host, guest.tap()).is_empty(),
        "{}",
        daemon.log()
    );
    let reply = guest.http_get("/openstack/latest/meta_data.json").unwrap();
    assert!(reply.body.contains(DECOY_MARK), "{reply}");
}
