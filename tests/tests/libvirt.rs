//! The compute-node mode's world: a private libvirtd with qemu domains.

use integration_tests::fixtures::{GATEWAY, PREFIX_LEN, random_uuid};
use integration_tests::libvirt::{DomainXml, Libvirtd, NOVA_NS_1_1, Nic, NovaMeta, nova_tap_name};
use integration_tests::{Host, TenantNet, names};

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
        integration_tests::cmd::run(&["ip", "-o", "link", "show", "dev", &tap]).is_err(),
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
