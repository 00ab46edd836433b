//! The compute-node mode's world: a private libvirtd with qemu domains.

use std::time::Duration;

use mdr_harness::fixtures::{GATEWAY, GUEST_ADDR, GUEST_MAC, PREFIX_LEN, random_uuid};
use mdr_harness::libvirt::{
    Boot, DomainXml, GuestImage, Libvirtd, NOVA_NS_1_1, Nic, NovaMeta, nova_tap_name,
    wait_for_console_answer,
};
use mdr_harness::{Daemon, Host, Instance, TenantNet, names};

/// The harness's own check: a private libvirtd starts in the test's host
/// namespace, defines a nova-shaped domain and starts it paused; its tap
/// appears on the test bridge there (and only there); the domain survives
/// a SIGKILL and restart of libvirtd; destroying it removes the tap.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_private_libvirtd_runs_a_paused_domain_on_a_test_bridge() {
    let host = Host::new().unwrap();
    let net = TenantNet::new(&host, GATEWAY, PREFIX_LEN).unwrap();
    let mut libvirtd = Libvirtd::start(&host).unwrap();

    let port_id = random_uuid();
    let tap = nova_tap_name(&port_id);
    let name = names::global("dom");
    let mut domain = DomainXml::new(&name, &random_uuid());
    domain.nova = Some(NovaMeta {
        namespace: NOVA_NS_1_1,
        name: "smoke".into(),
        project_id: "5b4a3c2d1e0f4a9b8c7d6e5f4a3b2c1d".into(),
        project_name: "demo".into(),
        ports: vec![(port_id, vec![std::net::Ipv4Addr::new(10, 0, 0, 5)])],
    });
    domain.nics.push(Nic {
        mac: "fa:16:3e:00:00:05".into(),
        bridge: Some(net.bridge().to_owned()),
        tap: Some(tap.clone()),
    });
    libvirtd.define_and_start(&domain, true).unwrap();
    assert_eq!(libvirtd.domstate(&name).unwrap(), "paused");
    let link = host.ip(&["-o", "link", "show", "dev", &tap]).unwrap();
    assert!(link.contains(&format!("master {}", net.bridge())), "{link}");
    assert!(
        mdr_harness::cmd::run(&["ip", "-o", "link", "show", "dev", &tap]).is_err(),
        "the tap must not exist in the machine's own namespace"
    );
    let xml = libvirtd.virsh(&["dumpxml", &name]).unwrap();
    assert!(xml.contains("nova/1.1"), "{xml}");

    libvirtd.kill9().unwrap();
    libvirtd.restart().unwrap();
    assert_eq!(
        libvirtd.domstate(&name).unwrap(),
        "paused",
        "{}",
        libvirtd.logs()
    );

    libvirtd.destroy(&name).unwrap();
    assert_eq!(libvirtd.domstate(&name).unwrap(), "shut off");
    assert!(
        host.ip(&["link", "show", "dev", &tap]).is_err(),
        "the tap is gone"
    );
}

/// The harness's booted guest: a domain boots the test kernel from
/// `target/guest/`, sends its one request over the libvirt-made tap (here
/// registered by hand), prints the answer on its file console and stays up;
/// a NIC hot-plugged into it appears as a tap, and its guest kernel lets it
/// go again on unplug.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_booted_domain_answers_on_its_console_and_takes_a_hot_plugged_nic() {
    let host = Host::new().unwrap();
    let net = TenantNet::new(&host, GATEWAY, PREFIX_LEN).unwrap();
    let libvirtd = Libvirtd::start(&host).unwrap();
    let daemon = Daemon::start(&host).unwrap();
    let instance = Instance::sample("booted");
    daemon.put_instance(&instance).unwrap();
    let tap = names::ifname("vm");
    daemon
        .add_port(&tap, &instance, GUEST_MAC, GUEST_ADDR)
        .unwrap();

    let initrd = libvirtd.dir().join("guest.cpio");
    GuestImage {
        addr: GUEST_ADDR,
        prefix_len: PREFIX_LEN,
        gateway: GATEWAY,
        path: "/openstack/latest/meta_data.json".into(),
        stay_up: true,
    }
    .write(&initrd)
    .unwrap();
    let console = libvirtd.dir().join("console.log");
    let name = names::global("dom");
    let mut domain = DomainXml::new(&name, &instance.uuid);
    domain.boot = Boot::Kernel {
        initrd,
        console: console.clone(),
    };
    domain.memory_mib = 256;
    domain.nics.push(Nic {
        mac: GUEST_MAC.into(),
        bridge: Some(net.bridge().to_owned()),
        tap: Some(tap.clone()),
    });
    libvirtd.define_and_start(&domain, false).unwrap();
    let reply = wait_for_console_answer(&console, Duration::from_secs(120))
        .unwrap_or_else(|err| panic!("{err:#}\n{}", libvirtd.logs()));
    assert_eq!(reply.status, 200, "{reply}");
    assert_eq!(reply.json().unwrap()["uuid"], instance.uuid.as_str());

    let plugged = Nic {
        mac: "fa:16:3e:00:00:06".into(),
        bridge: Some(net.bridge().to_owned()),
        tap: Some(names::ifname("hp")),
    };
    libvirtd.attach_nic(&name, &plugged).unwrap();
    let hp_tap = plugged.tap.as_deref().unwrap();
    assert!(host.ip(&["link", "show", "dev", hp_tap]).is_ok());
    libvirtd
        .detach_nic(&name, &plugged.mac, Duration::from_secs(60))
        .unwrap_or_else(|err| {
            panic!(
                "{err:#}\nconsole:\n{}",
                std::fs::read_to_string(&console).unwrap_or_default()
            )
        });
    assert!(
        host.ip(&["link", "show", "dev", hp_tap]).is_err(),
        "the hot-plugged tap is gone"
    );
}
