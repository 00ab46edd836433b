//! The daemon and the taps come and go; registered ports are served again
//! without any new command.

use integration_tests::fixtures::{GATEWAY, GUEST_ADDR as ADDR, GUEST_MAC as MAC};
use integration_tests::{Daemon, Guest, GuestConfig, Host, Instance, TenantNet, check_own_answers};

#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_sigkilled_daemon_restarted_on_its_state_dir_serves_every_port_again() {
    let host = Host::new().unwrap();
    let net_a = TenantNet::new(&host, GATEWAY, 24)
        .unwrap()
        .with_decoy()
        .unwrap();
    let net_b = TenantNet::new(&host, GATEWAY, 24)
        .unwrap()
        .with_decoy()
        .unwrap();
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

#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_tap_deleted_and_recreated_under_the_same_name_is_served_again() {
    let host = Host::new().unwrap();
    let net = TenantNet::new(&host, GATEWAY, 24)
        .unwrap()
        .with_decoy()
        .unwrap();
    let guest = Guest::new(&net, GuestConfig::new(ADDR, MAC)).unwrap();
    let daemon = Daemon::start(&host).unwrap();
    let instance = Instance::sample("phoenix");
    daemon.register(&guest, &instance).unwrap();
    guest.wait_served(&instance.uuid).unwrap();
    let before = host.ifindex(guest.tap()).unwrap();

    guest.replug().unwrap();

    let after = host.ifindex(guest.tap()).unwrap();
    assert_ne!(before, after, "the tap should have a new ifindex");
    guest.wait_served(&instance.uuid).unwrap();
    check_own_answers(&guest, &instance).unwrap();
}
