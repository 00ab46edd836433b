//! The daemon and the taps come and go; registered ports are served again
//! without any new command.

use mdr_harness::fixtures::{GUEST_ADDR as ADDR, GUEST_MAC as MAC};
use mdr_harness::wait::{self, Poll};
use mdr_harness::{Daemon, Guest, GuestConfig, Host, Instance, TenantNet, check_own_answers, cmd};
use std::net::Ipv4Addr;
use std::time::Duration;

#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_sigkilled_daemon_restarted_on_its_state_dir_serves_every_port_again() {
    let host = Host::new().unwrap();
    let net_a = TenantNet::with_router_and_decoy(&host).unwrap();
    let net_b = TenantNet::with_router_and_decoy(&host).unwrap();
    let guest_a = Guest::new(&net_a, GuestConfig::new(ADDR, MAC)).unwrap();
    let guest_b = Guest::new(&net_b, GuestConfig::new(ADDR, MAC)).unwrap();
    let mut daemon = Daemon::start(&host).unwrap();
    let (alpha, beta) = (Instance::sample("alpha"), Instance::sample("beta"));
    daemon.register(&guest_a, &alpha).unwrap();
    daemon.register(&guest_b, &beta).unwrap();
    guest_a.wait_served(&alpha.uuid).unwrap();
    guest_b.wait_served(&beta.uuid).unwrap();

    daemon.kill9().unwrap();
    daemon.restart().unwrap();

    guest_a.wait_served(&alpha.uuid).unwrap();
    guest_b.wait_served(&beta.uuid).unwrap();
    check_own_answers(&guest_a, &alpha).unwrap();
    check_own_answers(&guest_b, &beta).unwrap();
}

/// A daemon restarted with the same build keeps the previous daemon's tap
/// program and the TCX links running it: nothing on the taps changes, so a
/// restart with thousands of ports costs a lookup per tap, not a link (an
/// RCU grace period each). Same for tc's filters: `tc_attach.rs`.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_restart_keeps_the_previous_daemons_program_and_its_tcx_links() {
    let (_host, _net, guest, mut daemon, instance) = served_guest("kept", &tcx());
    let pin = daemon
        .bpffs()
        .join("links")
        .join(format!("tap-{}", guest.tap()));
    // The guest can be served before the pin exists: the kernel makes a
    // TCX link live and then waits out an RCU grace period (about 15 ms)
    // inside the attach call, and the daemon pins the link once it returns.
    wait::until("the tap's link pin", Duration::from_secs(5), || {
        Ok(if pin.exists() {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("no {}", pin.display()))
        })
    })
    .unwrap();
    let before = link_and_program(&pin, "before the restart");

    daemon.kill9().unwrap();
    daemon.restart().unwrap();

    guest.wait_served(&instance.uuid).unwrap();
    check_own_answers(&guest, &instance).unwrap();
    assert_eq!(
        link_and_program(&pin, "after the restart"),
        before,
        "the tap's link (id, program id) was replaced"
    );
    assert!(
        daemon.log().contains("keeping the tap program"),
        "{}",
        daemon.log()
    );
}

/// The id of the TCX link pinned at `pin` and of the program it runs.
fn link_and_program(pin: &std::path::Path, when: &str) -> (u64, u64) {
    let out = cmd::checked(&mut cmd::command(&[
        "bpftool",
        "-j",
        "link",
        "show",
        "pinned",
        &pin.to_string_lossy(),
    ]))
    .unwrap_or_else(|err| panic!("the tap's link pin {when}: {err:#}"));
    let link: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = |key: &str| {
        link[key]
            .as_u64()
            .unwrap_or_else(|| panic!("no {key} in {link}"))
    };
    (id("id"), id("prog_id"))
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_tap_deleted_and_recreated_under_the_same_name_is_served_again() {
    let (host, _net, guest, _daemon, instance) = served_guest("phoenix", &[]);
    let before = host.ifindex(guest.tap()).unwrap();

    guest.replug().unwrap();

    let after = host.ifindex(guest.tap()).unwrap();
    assert_ne!(before, after, "the tap should have a new ifindex");
    guest.wait_served(&instance.uuid).unwrap();
    check_own_answers(&guest, &instance).unwrap();
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_pinned_map_with_another_layout_is_replaced_on_restart() {
    let (_host, _net, guest, mut daemon, instance) = served_guest("upgraded", &[]);

    // What an older version with another PortEntry layout would have left.
    daemon.kill9().unwrap();
    let ports = daemon.pinned_map("PORTS");
    std::fs::remove_file(&ports).unwrap();
    let created = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&ports)
        .args([
            "type", "hash", "key", "4", "value", "8", "entries", "16", "name", "PORTS",
        ])
        .status()
        .unwrap();
    assert!(created.success(), "bpftool map create failed");
    daemon.restart().unwrap();

    guest.wait_served(&instance.uuid).unwrap();
    check_own_answers(&guest, &instance).unwrap();
    let shown = std::process::Command::new("bpftool")
        .args(["map", "show", "pinned"])
        .arg(&ports)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains(&format!(
            "value {}B",
            std::mem::size_of::<metadata_ebpf::PortEntry>()
        )),
        "the old map is still pinned: {shown}"
    );
    assert!(
        daemon.log().contains("has another layout"),
        "{}",
        daemon.log()
    );
}

/// The ID of the map pinned at `pin`, as bpftool reads it.
fn map_id(pin: &std::path::Path) -> u64 {
    let pin = pin.to_string_lossy();
    let out = cmd::checked(&mut cmd::command(&[
        "bpftool", "-j", "map", "show", "pinned", &pin,
    ]))
    .unwrap();
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no map id in {out}"))
}

/// A pinned PORTS map of the same size whose value has the same fields in
/// another order (what a build that swapped two fields of PortEntry would
/// have left) is detected from its BTF and replaced, not reused: the new
/// program would otherwise read the slot where the identity address is.
/// The map the daemon pinned itself is reused across a restart.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_pinned_map_of_the_same_size_with_another_field_order_is_replaced() {
    use mdr_harness::pinned_map::{self, Field, Layout};

    let (_host, _net, guest, mut daemon, instance) = served_guest("relaid", &[]);
    let ports = daemon.pinned_map("PORTS");

    // Its own map, same build: reused.
    let own = map_id(&ports);
    daemon.kill9().unwrap();
    daemon.restart().unwrap();
    guest.wait_served(&instance.uuid).unwrap();
    assert_eq!(map_id(&ports), own, "the daemon's own map was replaced");
    assert!(!daemon.log().contains("another layout"), "{}", daemon.log());

    // PortEntry with `slot` and `identity_addr` swapped: 32 bytes either way.
    daemon.kill9().unwrap();
    std::fs::remove_file(&ports).unwrap();
    let reordered = Layout::Struct {
        name: "PortEntry",
        size: std::mem::size_of::<metadata_ebpf::PortEntry>() as u32,
        fields: vec![
            ("identity_addr", Field::U8Array(4), 0),
            ("slot", Field::U32, 4),
            ("identity_addrs6", Field::U8Array(8), 8),
            ("syn_window_start_ns", Field::U64, 16),
            ("syn_count", Field::U32, 24),
            ("_pad", Field::U32, 28),
        ],
    };
    pinned_map::create(
        &ports,
        pinned_map::MAP_TYPE_HASH,
        metadata_ebpf::MAX_PORTS,
        &Layout::U32,
        &reordered,
    )
    .unwrap();
    let impostor = map_id(&ports);
    daemon.restart().unwrap();

    guest.wait_served(&instance.uuid).unwrap();
    check_own_answers(&guest, &instance).unwrap();
    assert_ne!(
        map_id(&ports),
        impostor,
        "the map of another layout was reused"
    );
    let log = daemon.log();
    let line = log
        .lines()
        .find(|line| line.contains("has another layout"))
        .unwrap_or_else(|| panic!("no word of the layout in the log:\n{log}"));
    assert!(
        line.contains("map=\"PORTS\"")
            && line.contains("value: pinned struct PortEntry/32{identity_addr@0"),
        "{line}"
    );
}

/// A port's flow table (inside FLOWS) that a build with another flow
/// layout left (the daemon stamps its layout into each table's name; an
/// older table is named `flows_<slot>`) is replaced on restart, not reused,
/// even though its sizes are the same; a table of this build is reused.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_flow_table_of_another_layout_is_replaced_on_restart() {
    let (_host, _net, guest, mut daemon, instance) = served_guest("tables", &[]);
    let flows = daemon.pinned_map("FLOWS");
    // The port's table (FLOWS also holds spare tables made ahead for the
    // slots handed out next): under the port's IPv4 identity address.
    let port_identity = {
        let status = daemon.status().unwrap();
        let slot = status["datapath"]["attached_taps"][guest.tap()]["slot"]
            .as_u64()
            .unwrap_or_else(|| panic!("no slot for the tap in {status}"));
        std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(240, 1, 0, 0)) + slot as u32)
    };
    let table_id = || {
        let tables: Vec<_> = mdr_harness::flows::tables(&flows)
            .unwrap()
            .into_iter()
            .filter(|table| table.identity == port_identity)
            .collect();
        assert_eq!(tables.len(), 1, "{tables:?}");
        (tables[0].identity, tables[0].map_id)
    };
    let (identity, own) = table_id();

    daemon.kill9().unwrap();
    daemon.restart().unwrap();
    guest.wait_served(&instance.uuid).unwrap();
    assert_eq!(table_id().1, own, "the daemon's own table was replaced");

    // Same type and sizes, the old build's name.
    daemon.kill9().unwrap();
    let staged = daemon.bpffs().join("old-table");
    let staged_path = staged.to_string_lossy().into_owned();
    let entries = metadata_ebpf::MAX_FLOWS_PER_PORT.to_string();
    let key_size = std::mem::size_of::<metadata_ebpf::FlowKey>().to_string();
    let value_size = std::mem::size_of::<metadata_ebpf::FlowEntry>().to_string();
    cmd::checked(&mut cmd::command(&[
        "bpftool",
        "map",
        "create",
        &staged_path,
        "type",
        "lru_hash",
        "key",
        &key_size,
        "value",
        &value_size,
        "entries",
        &entries,
        "name",
        "flows_1",
    ]))
    .unwrap();
    let key: Vec<String> = identity.octets().iter().map(u8::to_string).collect();
    let flows_path = flows.to_string_lossy().into_owned();
    let mut update = vec!["bpftool", "map", "update", "pinned", &flows_path, "key"];
    update.extend(key.iter().map(String::as_str));
    update.extend(["value", "pinned", &staged_path]);
    cmd::checked(&mut cmd::command(&update)).unwrap();
    std::fs::remove_file(&staged).unwrap();
    let (_, impostor) = table_id();
    assert_ne!(impostor, own);

    daemon.restart().unwrap();
    guest.wait_served(&instance.uuid).unwrap();
    check_own_answers(&guest, &instance).unwrap();
    assert_ne!(table_id().1, impostor, "the old build's table was reused");
    assert!(
        daemon
            .log()
            .contains("flow table of another layout; replacing it"),
        "{}",
        daemon.log()
    );
}

/// A tap that leaves its bridge and joins another is still the same tap: the
/// bridge's notice that its port left (an AF_BRIDGE RTM_DELLINK) must not
/// read as the tap being gone. The daemon keeps the link it pinned for the
/// tap (same link ID), and the guest is served on its new network.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_tap_moved_to_another_bridge_keeps_its_datapath() {
    let host = Host::new().unwrap();
    let net_a = TenantNet::with_router_and_decoy(&host).unwrap();
    let net_b = TenantNet::with_router_and_decoy(&host).unwrap();
    let guest = Guest::new(&net_a, GuestConfig::new(ADDR, MAC)).unwrap();
    // TCX: the link (and its ID) is what shows the attachment is kept.
    let daemon = Daemon::start_with_args(&host, &["--tap-attach".into(), "tcx".into()]).unwrap();
    let instance = Instance::sample("mover");
    daemon.register(&guest, &instance).unwrap();
    guest.wait_served(&instance.uuid).unwrap();
    let pin = daemon
        .bpffs()
        .join("links")
        .join(format!("tap-{}", guest.tap()));
    // The link's ID as bpftool reads it from the pin (with -j even its
    // errors are JSON on stdout).
    let link_id = || {
        let pin = pin.to_string_lossy();
        let out = cmd::output(&mut cmd::command(&[
            "bpftool", "-j", "link", "show", "pinned", &pin,
        ]))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|link| link.get("id").cloned())
            .ok_or_else(|| anyhow::anyhow!("{text}"))
    };
    // The program serves as soon as it is attached; the pin follows.
    let before = wait::until("the tap's link pinned", Duration::from_secs(5), || {
        Ok(match link_id() {
            Ok(id) => Poll::Ready(id),
            Err(err) => Poll::Pending(err.to_string()),
        })
    })
    .unwrap();

    host.ip(&["link", "set", guest.tap(), "nomaster"]).unwrap();
    host.ip(&["link", "set", guest.tap(), "master", net_b.bridge(), "up"])
        .unwrap();
    // Link events are handled in order: once a tap plugged after the move
    // is served, the daemon has seen everything the move caused.
    let marker = Guest::new(
        &net_b,
        GuestConfig::new(Ipv4Addr::new(10, 0, 0, 6), "fa:16:3e:00:00:06"),
    )
    .unwrap();
    let marker_instance = Instance::sample("marker");
    daemon.register(&marker, &marker_instance).unwrap();
    marker.wait_served(&marker_instance.uuid).unwrap();

    assert_eq!(
        link_id().unwrap(),
        before,
        "the tap was detached and attached again"
    );
    check_own_answers(&guest, &instance).unwrap();
    assert!(
        !daemon
            .log()
            .contains(&format!("tap detached ifname=\"{}\"", guest.tap())),
        "{}",
        daemon.log()
    );
}

/// `port del` then `port add` for the same tap, again and again: each time
/// the same program goes back on the same hook, which tcx refuses (EEXIST)
/// while the previous link still exists.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_port_deleted_and_added_again_at_once_is_served() {
    let (_host, _net, guest, daemon, instance) = served_guest("again", &[]);

    for _ in 0..5 {
        daemon
            .cli_ok(&["port", "del", "--ifname", guest.tap()])
            .unwrap();
        daemon.register(&guest, &instance).unwrap();
        guest.wait_served(&instance.uuid).unwrap();
    }
    check_own_answers(&guest, &instance).unwrap();
    assert!(!daemon.log().contains("attaching:"), "{}", daemon.log());
}

/// The start of most tests here: a tenant network with one guest, a daemon
/// (`serve` with `args`), and the guest registered as `name` and served.
/// Bound as a tuple in this order, the parts drop as locals would: the
/// instance, the daemon, the guest, the network, the host.
fn served_guest(name: &str, args: &[String]) -> (Host, TenantNet, Guest, Daemon, Instance) {
    let host = Host::new().unwrap();
    let net = TenantNet::with_router_and_decoy(&host).unwrap();
    let guest = Guest::new(&net, GuestConfig::new(ADDR, MAC)).unwrap();
    let daemon = Daemon::start_with_args(&host, args).unwrap();
    let instance = Instance::sample(name);
    daemon.register(&guest, &instance).unwrap();
    guest.wait_served(&instance.uuid).unwrap();
    (host, net, guest, daemon, instance)
}

fn tcx() -> [String; 2] {
    ["--tap-attach".into(), "tcx".into()]
}
