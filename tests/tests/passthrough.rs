//! What is not metadata, or not from a registered tap, is left alone.
use mdr_harness::fixtures::GATEWAY;
use mdr_harness::tenant::DECOY_MARK;
use mdr_harness::{Daemon, Guest, GuestConfig, Host, Instance, TenantNet};
use std::net::Ipv4Addr;

/// Two guests on one network; only one is registered. The other's request
/// goes to the router as if there were no datapath, and the decoy answers.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn an_unregistered_tap_passes_through_to_the_decoy() {
    let host = Host::new().unwrap();
    let net = TenantNet::with_router_and_decoy(&host).unwrap();
    let registered = Guest::new(
        &net,
        GuestConfig::new(Ipv4Addr::new(10, 0, 0, 5), "fa:16:3e:00:00:05"),
    )
    .unwrap();
    let unregistered = Guest::new(
        &net,
        GuestConfig::new(Ipv4Addr::new(10, 0, 0, 6), "fa:16:3e:00:00:06"),
    )
    .unwrap();
    let daemon = Daemon::start(&host).unwrap();
    let instance = Instance::sample("registered");
    daemon.register(&registered, &instance).unwrap();
    // Once this is served the datapath is attached and working.
    registered.wait_served(&instance.uuid).unwrap();

    for path in [
        "/openstack/latest/meta_data.json",
        "/latest/meta-data/instance-id",
    ] {
        let reply = unregistered.http_get(path).unwrap();
        assert_eq!(reply.status, 200, "{path}: {reply}");
        assert!(reply.body.contains(DECOY_MARK), "{path}: {reply}");
    }
}

/// On a registered, served tap, ordinary traffic still flows both ways:
/// ping, and TCP to the router's own address on port 80.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn ping_and_tcp_between_guest_and_router_still_work_on_a_registered_tap() {
    let host = Host::new().unwrap();
    let net = TenantNet::with_router_and_decoy(&host).unwrap();
    let addr = Ipv4Addr::new(10, 0, 0, 5);
    let guest = Guest::new(&net, GuestConfig::new(addr, "fa:16:3e:00:00:05")).unwrap();
    let daemon = Daemon::start(&host).unwrap();
    let instance = Instance::sample("pinger");
    daemon.register(&guest, &instance).unwrap();
    guest.wait_served(&instance.uuid).unwrap();

    assert!(guest.ping(GATEWAY).unwrap(), "guest -> router ping");
    let router = net.router().unwrap();
    let out = router
        .exec(&["busybox", "ping", "-c", "1", "-W", "2", &addr.to_string()])
        .unwrap();
    assert!(out.status.success(), "router -> guest ping: {out:?}");
    // Port 80, but not 169.254.169.254: not metadata, so the router answers.
    let reply = guest.http_get_url(&format!("http://{GATEWAY}/")).unwrap();
    assert_eq!(reply.status, 200, "{reply}");
    assert!(reply.body.contains(DECOY_MARK), "{reply}");
}
