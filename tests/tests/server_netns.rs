//! The server lives in a network namespace of its own (issue 16 item 2):
//! nothing but the datapath reaches its listener, and no tenant bridge gets
//! an ARP answer for the server's or the identity addresses, whether the
//! guest's tap is registered or not. The namespace outlives the daemon, is
//! reused by the next one, replaces the pair an older version left in the
//! host namespace, and goes with `--detach-on-exit`.
use std::net::Ipv4Addr;
use std::time::Duration;

use mdr_harness::fixtures::{GATEWAY, GUEST_ADDR, GUEST_MAC};
use mdr_harness::{
    Daemon, Guest, GuestConfig, Host, Instance, Request, TenantNet, check_own_answers, cmd,
    tenant::DECOY_MARK,
};

/// The daemon's defaults (`server_addr`, its next hop, `identity_net`).
const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(240, 0, 0, 1);
const NEXT_HOP: Ipv4Addr = Ipv4Addr::new(240, 0, 0, 2);
const IDENTITY_NET: Ipv4Addr = Ipv4Addr::new(240, 1, 0, 0);
/// An identity address no port has: what a guest claims for itself to look
/// like a redirected request.
const CLAIMED: Ipv4Addr = Ipv4Addr::new(240, 1, 0, 200);

/// One network (a Linux bridge with a router), a registered guest and an
/// unregistered one on it, and the daemon serving the first.
struct World {
    host: Host,
    net: TenantNet,
    registered: Guest,
    unregistered: Guest,
    instance: Instance,
    daemon: Daemon,
}

impl World {
    fn new() -> Self {
        let host = Host::new().unwrap();
        let net = TenantNet::with_router_and_decoy(&host).unwrap();
        let registered = Guest::new(&net, GuestConfig::new(GUEST_ADDR, GUEST_MAC)).unwrap();
        let unregistered = Guest::new(
            &net,
            GuestConfig::new(Ipv4Addr::new(10, 0, 0, 6), "fa:16:3e:00:00:06"),
        )
        .unwrap();
        let daemon = Daemon::start(&host).unwrap();
        let instance = Instance::sample("fenced");
        daemon.register(&registered, &instance).unwrap();
        registered.wait_served(&instance.uuid).unwrap();
        Self {
            host,
            net,
            registered,
            unregistered,
            instance,
            daemon,
        }
    }

    /// The identity address of the registered guest's port.
    fn registered_identity(&self) -> Ipv4Addr {
        let status = self.daemon.status().unwrap();
        let slot = status["datapath"]["attached_taps"][self.registered.tap()]["slot"]
            .as_u64()
            .unwrap_or_else(|| panic!("no slot for the registered tap in {status}"));
        Ipv4Addr::from(u32::from(IDENTITY_NET) + slot as u32)
    }

    fn counter(&self, name: &str) -> u64 {
        let status = self.daemon.status().unwrap();
        status["datapath"]["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name} in {status}"))
    }

    /// Everything a guest can try to reach the server around the datapath,
    /// and what must hold for each.
    fn attack_from(&self, guest: &Guest, what: &str) {
        // Where the server is, and where it is not.
        let host_addrs = self.host.ip(&["-4", "-o", "addr", "show"]).unwrap();
        assert!(
            !host_addrs.contains(" 240."),
            "the host namespace holds a 240.0.0.0/4 address:\n{host_addrs}"
        );
        let routes = self
            .host
            .ip(&["-4", "route", "show", "table", "all"])
            .unwrap();
        assert!(
            !routes.contains("240."),
            "the host namespace routes 240.0.0.0/4:\n{routes}"
        );
        let server_addrs = self
            .daemon
            .server_ns_ip(&["-4", "-o", "addr", "show", "dev", "mdr-srv"])
            .unwrap();
        assert!(
            server_addrs.contains(&format!(" {SERVER_ADDR}/32 ")),
            "{server_addrs}"
        );

        // The guest claims an identity address and puts all of 240.0.0.0/4
        // on its link.
        let ns = guest.ns();
        ns.ip(&["addr", "add", &format!("{CLAIMED}/32"), "dev", "eth0"])
            .unwrap();
        ns.ip(&["route", "add", "240.0.0.0/4", "dev", "eth0"])
            .unwrap();

        // ARP: the router answers (so a silence below means something), the
        // host answers for none of the server's addresses.
        assert_eq!(
            arp_replies(guest, GATEWAY, guest.addr()),
            1,
            "{what}: the router did not answer ARP"
        );
        let identity = self.registered_identity();
        for target in [SERVER_ADDR, NEXT_HOP, identity, CLAIMED] {
            for source in [guest.addr(), CLAIMED] {
                assert_eq!(
                    arp_replies(guest, target, source),
                    0,
                    "{what}: ARP for {target} from {source} was answered"
                );
            }
        }

        // TCP: the SYN goes to the host's own MAC on the bridge, as if ARP
        // had answered, so it reaches the host's stack for sure.
        let bridge_mac = mac_of(&self.host, self.net.bridge());
        ns.ip(&[
            "neigh",
            "replace",
            &SERVER_ADDR.to_string(),
            "lladdr",
            &bridge_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])
        .unwrap();
        // Counted from a quiet moment: the last segments of the guest's
        // earlier (served) connections may still be on their way.
        let server_before = self.quiet_server_snmp();
        let host_before = self.host.exec_ok(&["cat", "/proc/net/snmp"]).unwrap();
        let no_flow = self.counter("dropped_no_flow");
        for source in [CLAIMED, guest.addr()] {
            let result = mdr_harness::python::run(
                ns,
                "connect_from.py",
                &[&source.to_string(), &SERVER_ADDR.to_string(), "80", "2"],
                Duration::from_secs(10),
            )
            .unwrap();
            assert_eq!(
                result["connected"], false,
                "{what}: a handshake with {SERVER_ADDR}:80 from {source} completed: {result}"
            );
            // No half-open connection either, in either namespace.
            for (place, sockets) in [
                ("host", self.host.exec_ok(&["ss", "-Htan"]).unwrap()),
                ("server", self.server_ns_sockets()),
            ] {
                assert!(
                    !sockets.contains(&source.to_string()),
                    "{what}: the {place} namespace has a socket for {source}:\n{sockets}"
                );
            }
        }
        let host_after = self.host.exec_ok(&["cat", "/proc/net/snmp"]).unwrap();
        assert!(
            snmp(&host_after, "Ip", "InReceives") > snmp(&host_before, "Ip", "InReceives"),
            "{what}: the SYNs never reached the host, so the test proves nothing"
        );
        for (place, before, after) in [
            ("host", &host_before, &host_after),
            ("server", &server_before, &self.server_ns_snmp()),
        ] {
            assert_eq!(
                snmp(after, "Tcp", "InSegs"),
                snmp(before, "Tcp", "InSegs"),
                "{what}: TCP in the {place} namespace saw the guest's SYNs"
            );
        }
        assert_eq!(
            self.counter("dropped_no_flow"),
            no_flow,
            "{what}: the server answered a SYN that never came through the datapath"
        );

        // And the datapath still serves the registered guest.
        check_own_answers(&self.registered, &self.instance).unwrap();
    }

    /// `/proc/net/snmp` of the server's namespace once its TCP has received
    /// nothing for half a second (at most 10 s of waiting).
    fn quiet_server_snmp(&self) -> String {
        let mut last = self.server_ns_snmp();
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(500));
            let now = self.server_ns_snmp();
            if snmp(&now, "Tcp", "InSegs") == snmp(&last, "Tcp", "InSegs") {
                return now;
            }
            last = now;
        }
        panic!("TCP in the server namespace never went quiet");
    }

    /// `/proc/net/snmp` of the server's namespace.
    fn server_ns_snmp(&self) -> String {
        let out = self
            .daemon
            .server_ns_exec(&["cat", "/proc/net/snmp"])
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ss -Htan` inside the server's namespace.
    fn server_ns_sockets(&self) -> String {
        let out = self.daemon.server_ns_exec(&["ss", "-Htan"]).unwrap();
        assert!(out.status.success(), "ss in the server namespace: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// How many ARP replies `guest` gets for one request for `target` sent from
/// `source` (busybox arping, 1 s).
fn arp_replies(guest: &Guest, target: Ipv4Addr, source: Ipv4Addr) -> u32 {
    let out = guest
        .exec(&[
            "busybox",
            "arping",
            "-c",
            "1",
            "-w",
            "1",
            "-I",
            "eth0",
            "-s",
            &source.to_string(),
            &target.to_string(),
        ])
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Sent 1 probe"),
        "arping sent nothing: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("Received "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no count in arping's output: {stdout}"))
}

/// One counter of `/proc/net/snmp` (a header line and a value line per
/// protocol).
fn snmp(text: &str, proto: &str, field: &str) -> u64 {
    let prefix = format!("{proto}:");
    let mut lines = text.lines().filter(|line| line.starts_with(&prefix));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let index = names
        .split_whitespace()
        .position(|name| name == field)
        .unwrap_or_else(|| panic!("no {field} in {names}"));
    values
        .split_whitespace()
        .nth(index)
        .unwrap()
        .parse()
        .unwrap()
}

fn mac_of(host: &Host, ifname: &str) -> String {
    let out = host.ip(&["-o", "link", "show", "dev", ifname]).unwrap();
    out.split_whitespace()
        .skip_while(|word| *word != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {out}"))
        .to_owned()
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_registered_guest_cannot_reach_the_server_around_the_datapath() {
    let world = World::new();
    world.attack_from(&world.registered, "registered tap");
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn an_unregistered_guest_cannot_reach_the_server() {
    let world = World::new();
    world.attack_from(&world.unregistered, "unregistered tap");
    // Its metadata requests still go where they went: to the router.
    let reply = world
        .unregistered
        .http_get("/openstack/latest/meta_data.json")
        .unwrap();
    assert!(reply.body.contains(DECOY_MARK), "{reply}");
}

/// `status` names the namespace; a SIGKILLed daemon leaves it (and the
/// server end in it) for the next one, which serves again; the guest's
/// connections are refused at once while no daemon runs.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn the_namespace_outlives_the_daemon_and_is_reused() {
    let mut world = World::new();
    let status = world.daemon.status().unwrap();
    assert_eq!(
        status["datapath"]["server_netns"],
        world.daemon.server_netns(),
        "{status}"
    );
    let text = world.daemon.cli_ok(&["status"]).unwrap();
    assert!(
        text.contains(&format!("server_netns: {}", world.daemon.server_netns())),
        "{text}"
    );
    let server_end = |daemon: &Daemon| {
        let link = daemon
            .server_ns_ip(&["-o", "link", "show", "dev", "mdr-srv"])
            .unwrap();
        // The ifindex and the MAC: both new if the pair were made anew.
        let index = link.split(':').next().unwrap().to_owned();
        let mac = link
            .split_whitespace()
            .skip_while(|word| *word != "link/ether")
            .nth(1)
            .map(str::to_owned);
        (index, mac)
    };
    let before = server_end(&world.daemon);

    world.daemon.kill9().unwrap();
    let reply = world
        .registered
        .http_get_with(
            "/openstack/latest/meta_data.json",
            &[],
            Duration::from_secs(2),
        )
        .unwrap();
    assert_eq!(reply.status, 0, "{reply}");
    // curl's exit 7 (could not connect), not 28 (timed out).
    assert!(
        reply.error.as_deref().is_some_and(|e| e.contains("(7)")),
        "no daemon: refused at once, not a timeout: {reply}"
    );

    world.daemon.restart().unwrap();
    world.registered.wait_served(&world.instance.uuid).unwrap();
    check_own_answers(&world.registered, &world.instance).unwrap();
    assert_eq!(
        server_end(&world.daemon),
        before,
        "the server end was made anew"
    );
    assert_eq!(
        world
            .daemon
            .log()
            .matches("server veth pair created")
            .count(),
        1,
        "{}",
        world.daemon.log()
    );
    assert_eq!(
        world
            .daemon
            .log()
            .matches("server namespace created")
            .count(),
        1,
        "{}",
        world.daemon.log()
    );
}

/// An older daemon kept the pair in the host namespace, with the server's
/// address and the identity route there; the new one replaces it.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_pair_left_in_the_host_namespace_by_an_older_version_is_replaced() {
    let host = Host::new().unwrap();
    let net = TenantNet::with_router_and_decoy(&host).unwrap();
    let guest = Guest::new(&net, GuestConfig::new(GUEST_ADDR, GUEST_MAC)).unwrap();
    for args in [
        &[
            "link", "add", "mdr-srv", "type", "veth", "peer", "name", "mdr-in",
        ][..],
        &["addr", "add", "240.0.0.1/32", "dev", "mdr-srv"],
        &["link", "set", "mdr-srv", "up"],
        &["link", "set", "mdr-in", "up"],
        &[
            "route",
            "add",
            "240.1.0.0/16",
            "via",
            "240.0.0.2",
            "dev",
            "mdr-srv",
            "onlink",
        ],
    ] {
        host.ip(args).unwrap();
    }
    let daemon = Daemon::start(&host).unwrap();
    let instance = Instance::sample("upgraded");
    daemon.register(&guest, &instance).unwrap();
    guest.wait_served(&instance.uuid).unwrap();
    check_own_answers(&guest, &instance).unwrap();

    let addrs = host.ip(&["-4", "-o", "addr", "show"]).unwrap();
    assert!(!addrs.contains(" 240."), "{addrs}");
    let links = host.ip(&["-o", "link", "show"]).unwrap();
    assert!(!links.contains(" mdr-srv"), "{links}");
    assert!(links.contains(" mdr-in@"), "{links}");
    assert!(
        daemon
            .log()
            .contains("removed the server's veth pair from the host namespace"),
        "{}",
        daemon.log()
    );
}

/// `--detach-on-exit` removes the namespace and the pair with the rest.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn detach_on_exit_removes_the_namespace() {
    let host = Host::new().unwrap();
    let net = TenantNet::with_router_and_decoy(&host).unwrap();
    let guest = Guest::new(&net, GuestConfig::new(GUEST_ADDR, GUEST_MAC)).unwrap();
    let mut daemon = Daemon::start_with_args(&host, &["--detach-on-exit".into()]).unwrap();
    let instance = Instance::sample("leaver");
    daemon.register(&guest, &instance).unwrap();
    guest.wait_served(&instance.uuid).unwrap();
    let netns_file = std::path::Path::new("/run/netns").join(daemon.server_netns());
    assert!(netns_file.exists());

    daemon.sigterm_and_wait(Duration::from_secs(10)).unwrap();
    assert!(
        !netns_file.exists(),
        "{} is still there\n{}",
        netns_file.display(),
        daemon.log()
    );
    let list = cmd::run(&["ip", "netns", "list"]).unwrap();
    assert!(!list.contains(daemon.server_netns()), "{list}");
    let links = host.ip(&["-o", "link", "show"]).unwrap();
    assert!(!links.contains("mdr-in"), "{links}");
    let reply = guest.http_get("/openstack/latest/meta_data.json").unwrap();
    assert!(reply.body.contains(DECOY_MARK), "{reply}");
}

/// Two daemons (two hypervisor namespaces here) told to use the same server
/// namespace: the second refuses to start, naming the flag, and does not
/// take over the first one's server end.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_second_daemon_on_the_same_namespace_refuses_to_start() {
    let world = World::new();
    let other_host = Host::new().unwrap();
    let dir = mdr_harness::tempdir::TempDir::new("second").unwrap();
    let config = mdr_harness::DaemonConfig {
        server_netns: world.daemon.server_netns().to_owned(),
        print_log_on_drop: false,
        ..mdr_harness::DaemonConfig::in_dir(dir.path())
    };
    let err = match Daemon::start_with(&other_host, config, None) {
        Ok(_) => panic!("a second daemon started on the same server namespace"),
        Err(err) => format!("{err:#}"),
    };
    assert!(err.contains("choose another --server-netns"), "{err}");
    check_own_answers(&world.registered, &world.instance).unwrap();
}

/// The packets and bytes a link sent and received (`ip -s -j link show`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LinkStats {
    tx_packets: u64,
    rx_packets: u64,
}

impl LinkStats {
    fn parse(json: &str) -> Self {
        let links: serde_json::Value = serde_json::from_str(json).unwrap();
        let stats = &links[0]["stats64"];
        let field = |dir: &str| {
            stats[dir]["packets"]
                .as_u64()
                .unwrap_or_else(|| panic!("no {dir} packets in {json}"))
        };
        Self {
            tx_packets: field("tx"),
            rx_packets: field("rx"),
        }
    }
}

/// Requests are handed by the tap's program straight to the server end's
/// ingress in the server's namespace (`bpf_redirect_peer`): they never
/// leave through the entry end (whose transmit would queue each packet to
/// the backlog for a second pass through the stack). Only the replies
/// cross the pair, back to the entry end's ingress program. IPv4 and IPv6.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn requests_go_straight_to_the_server_end_and_only_replies_cross_the_pair() {
    let world = World::new();
    let guest = &world.registered;
    guest
        .ns()
        .ip(&["-6", "addr", "add", "fe80::5/64", "dev", "eth0", "nodad"])
        .unwrap();
    let entry = || {
        LinkStats::parse(
            &world
                .host
                .ip(&["-s", "-j", "link", "show", "dev", "mdr-in"])
                .unwrap(),
        )
    };
    let server_end = || {
        LinkStats::parse(
            &world
                .daemon
                .server_ns_ip(&["-s", "-j", "link", "show", "dev", "mdr-srv"])
                .unwrap(),
        )
    };
    let (entry_before, server_before) = (entry(), server_end());
    const REQUESTS: u64 = 10;
    for _ in 0..REQUESTS {
        check_own_answers(guest, &world.instance).unwrap();
        let reply = Request::new(
            "GET",
            "http://[fe80::a9fe:a9fe%eth0]/openstack/latest/meta_data.json",
        )
        .timeout(Duration::from_secs(5))
        .send(guest.ns())
        .unwrap();
        assert_eq!(reply.status, 200, "over IPv6: {reply}");
    }
    let (entry_after, server_after) = (entry(), server_end());
    // Each request is a connection of its own: at least SYN, ACK, data and
    // FIN from the guest, and from the server SYN-ACK, data and FIN. Three
    // requests per round (two over IPv4, one over IPv6).
    let connections = 3 * REQUESTS;
    let received = server_after.rx_packets - server_before.rx_packets;
    assert!(
        received >= 4 * connections,
        "the server end received {received} packets for {connections} connections"
    );
    assert_eq!(
        entry_after.tx_packets, entry_before.tx_packets,
        "requests were sent out of the entry end (a redirect to its egress, not to its peer); \
         the server end received {received}"
    );
    let replies = entry_after.rx_packets - entry_before.rx_packets;
    assert!(
        replies >= 3 * connections,
        "the entry end received {replies} reply packets for {connections} connections"
    );
    // The server end, for its part, sends only what crossed to the entry end.
    assert_eq!(
        server_after.tx_packets - server_before.tx_packets,
        replies,
        "{server_before:?} -> {server_after:?}, entry {entry_before:?} -> {entry_after:?}"
    );
}
