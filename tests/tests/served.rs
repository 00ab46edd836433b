//! Guests are told apart by their tap, not by anything they chose.

use mdr_harness::{
    Daemon, Guest, GuestConfig, Host, Instance, METADATA_ADDR, TenantNet, check_own_answers,
};

use mdr_harness::fixtures::{GUEST_ADDR as ADDR, GUEST_MAC as MAC};

/// Two tenant networks, each a bridge with a router at 10.0.0.1 (and a decoy
/// there, so an uncaught request would be answered, wrongly), one guest on
/// each with the same IP and MAC: each gets its own instance.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn two_tenants_with_the_same_ip_and_mac_get_their_own_answers() {
    let host = Host::new().unwrap();
    let net_a = TenantNet::with_router_and_decoy(&host).unwrap();
    let net_b = TenantNet::with_router_and_decoy(&host).unwrap();
    let guest_a = Guest::new(&net_a, GuestConfig::new(ADDR, MAC)).unwrap();
    let guest_b = Guest::new(&net_b, GuestConfig::new(ADDR, MAC)).unwrap();
    let daemon = Daemon::start(&host).unwrap();
    let (alpha, beta) = (Instance::sample("alpha"), Instance::sample("beta"));
    daemon.register(&guest_a, &alpha).unwrap();
    daemon.register(&guest_b, &beta).unwrap();

    guest_a.wait_served(&alpha.uuid).unwrap();
    guest_b.wait_served(&beta.uuid).unwrap();
    // Asked again, in turn: still each its own.
    for _ in 0..3 {
        check_own_answers(&guest_a, &alpha).unwrap();
        check_own_answers(&guest_b, &beta).unwrap();
    }
}

/// Replies to every identity address leave through one on-link next hop, so
/// the host-wide neighbour table holds one entry for the server end however
/// many guests it serves. One entry per guest filled that table (1024 by
/// default, shared by all namespaces) at a few hundred guests, and the
/// kernel then dropped replies that TCP resent only 200 ms later.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn replies_to_all_guests_share_one_neighbour_entry() {
    let host = Host::new().unwrap();
    let net = TenantNet::with_router_and_decoy(&host).unwrap();
    let daemon = Daemon::start(&host).unwrap();
    let mut guests = Vec::new();
    for index in 0..4u8 {
        let config = GuestConfig::new(
            std::net::Ipv4Addr::new(10, 0, 0, 20 + index),
            &format!("fa:16:3e:00:01:{index:02x}"),
        );
        let guest = Guest::new(&net, config).unwrap();
        let instance = Instance::sample(&format!("neigh-{index}"));
        daemon.register(&guest, &instance).unwrap();
        guests.push((guest, instance));
    }
    for (guest, instance) in &guests {
        guest.wait_served(&instance.uuid).unwrap();
        check_own_answers(guest, instance).unwrap();
    }
    let neighbours = daemon
        .server_ns_ip(&["-4", "neigh", "show", "nud", "all", "dev", "mdr-srv"])
        .unwrap();
    let entries: Vec<&str> = neighbours
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        entries.len(),
        1,
        "one neighbour (the next hop) for {} guests, got: {neighbours}",
        guests.len()
    );
    assert!(
        entries[0].starts_with("240.0.0.2 "),
        "the next hop after 240.0.0.1: {neighbours}"
    );
}

/// No router anywhere, only `169.254.169.254 dev eth0`: the guest ARPs for
/// the metadata address and the program answers it from the tap.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn an_on_link_guest_without_a_router_is_served() {
    let host = Host::new().unwrap();
    let net = TenantNet::without_router(&host, 24).unwrap();
    let guest = Guest::new(&net, GuestConfig::new(ADDR, MAC).on_link()).unwrap();
    let daemon = Daemon::start(&host).unwrap();
    let instance = Instance::sample("onlink");
    daemon.register(&guest, &instance).unwrap();

    guest.wait_served(&instance.uuid).unwrap();
    check_own_answers(&guest, &instance).unwrap();
    // The neighbour entry is the datapath's answer (nothing else is on the
    // bridge that could have answered).
    let neigh = guest
        .ns()
        .ip(&["neigh", "show", &METADATA_ADDR.to_string(), "dev", "eth0"])
        .unwrap();
    let mac = metadata_ebpf::METADATA_MAC
        .map(|byte| format!("{byte:02x}"))
        .join(":");
    assert!(
        neigh.contains(&mac),
        "neighbour entry {neigh:?}, expected lladdr {mac}"
    );
}
