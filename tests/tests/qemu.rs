//! A real guest kernel on a real tap fetches its own metadata.

use mdr_harness::fixtures::{GATEWAY, GUEST_ADDR, GUEST_MAC};
use mdr_harness::{Daemon, Host, Instance, QemuConfig, QemuGuest, TenantNet};

/// Boots a qemu guest made with `config` on a tap registered for an
/// instance named `name`, asserts that it got that instance's
/// meta_data.json, then hands the daemon to `then` while all still runs.
fn fetches_its_own_meta_data(config: QemuConfig, name: &str, then: impl FnOnce(&Daemon)) {
    let host = Host::new().unwrap();
    let net = TenantNet::new(&host, GATEWAY, 24).unwrap();
    let mut vm = QemuGuest::new(&net, config).unwrap();
    let daemon = Daemon::start(&host).unwrap();
    let instance = Instance::sample(name);
    daemon.put_instance(&instance).unwrap();
    daemon
        .add_port(vm.tap(), &instance, vm.mac(), vm.addr())
        .unwrap();

    vm.boot().unwrap();
    let reply = vm.wait_for_answer().unwrap();

    assert_eq!(reply.status, 200, "{reply}\nconsole:\n{}", vm.console());
    let doc = reply.json().unwrap_or_else(|| panic!("not JSON: {reply}"));
    assert_eq!(doc["uuid"], instance.uuid.as_str(), "{reply}");
    assert_eq!(doc["name"], name, "{reply}");
    then(&daemon);
}

/// qemu (TCG) boots Debian's kernel with a busybox initramfs on an `ip
/// tuntap` tap on a bridge; the guest fetches meta_data.json with busybox nc
/// and prints it on the serial console. The network has a router but no
/// decoy, so a request sent before the datapath is attached gets no answer
/// and the guest retries.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_qemu_guest_fetches_its_own_meta_data() {
    fetches_its_own_meta_data(QemuConfig::new(GUEST_ADDR, GUEST_MAC), "vm", |_| {});
}

/// The same guest kernel fetches over IPv6 from `fe80::a9fe:a9fe%eth0`
/// (its own link-local address, its own Neighbour Solicitation): the
/// datapath's advertisement and translation work for a real IPv6 stack.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_qemu_guest_fetches_its_own_meta_data_over_ipv6() {
    let mut config = QemuConfig::new(GUEST_ADDR, GUEST_MAC);
    config.fetch_host = "fe80::a9fe:a9fe%eth0".into();
    fetches_its_own_meta_data(config, "vm6", |daemon| {
        let ipv6 = &daemon.status().unwrap()["datapath"]["counters_by_family"]["ipv6"];
        assert!(
            ipv6["caught"].as_u64().unwrap_or(0) > 0,
            "over IPv6: {ipv6}"
        );
    });
}
