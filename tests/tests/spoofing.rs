//! A guest cannot become another one: not with its neighbour's IP and MAC,
//! not with the headers a Neutron proxy would add.
use mdr_harness::{
    Daemon, Guest, GuestConfig, Host, Instance, TenantNet, check_own_answers,
    check_own_answers_with, fixtures,
};
use std::net::Ipv4Addr;

const VICTIM_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
const VICTIM_MAC: &str = "fa:16:3e:00:00:05";

struct Scene {
    victim: Guest,
    intruder: Guest,
    victim_instance: Instance,
    intruder_instance: Instance,
    _daemon: Daemon,
    _net: TenantNet,
    _host: Host,
}

/// Two registered, served guests on one network.
fn scene() -> Scene {
    let host = Host::new().unwrap();
    let net = TenantNet::with_router_and_decoy(&host).unwrap();
    let victim = Guest::new(&net, GuestConfig::new(VICTIM_ADDR, VICTIM_MAC)).unwrap();
    let intruder = Guest::new(
        &net,
        GuestConfig::new(Ipv4Addr::new(10, 0, 0, 6), "fa:16:3e:00:00:06"),
    )
    .unwrap();
    let daemon = Daemon::start(&host).unwrap();
    let (victim_instance, intruder_instance) =
        (Instance::sample("victim"), Instance::sample("intruder"));
    daemon.register(&victim, &victim_instance).unwrap();
    daemon.register(&intruder, &intruder_instance).unwrap();
    victim.wait_served(&victim_instance.uuid).unwrap();
    intruder.wait_served(&intruder_instance.uuid).unwrap();
    Scene {
        victim,
        intruder,
        victim_instance,
        intruder_instance,
        _daemon: daemon,
        _net: net,
        _host: host,
    }
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_guest_with_its_neighbours_ip_and_mac_gets_only_its_own_answer() {
    let mut scene = scene();
    scene
        .intruder
        .set_identity(VICTIM_ADDR, VICTIM_MAC)
        .unwrap();

    check_own_answers(&scene.intruder, &scene.intruder_instance).unwrap();
    check_own_answers(&scene.victim, &scene.victim_instance).unwrap();
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn identity_headers_do_not_change_who_a_guest_is() {
    let mut scene = scene();
    let victim = scene.victim_instance.clone();
    let project = victim.doc["project_id"].as_str().unwrap();
    let network = fixtures::random_uuid();
    let headers = [
        format!("X-Instance-ID: {}", victim.uuid),
        format!("X-Instance-ID-Signature: {}", "0".repeat(64)),
        format!("X-Tenant-ID: {project}"),
        format!("X-Forwarded-For: {VICTIM_ADDR}"),
        format!("X-Neutron-Network-ID: {network}"),
        format!("X-Neutron-Router-ID: {}", fixtures::random_uuid()),
    ];
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();

    check_own_answers_with(&scene.intruder, &scene.intruder_instance, &headers).unwrap();

    // Both at once: the neighbour's addresses and its headers.
    scene
        .intruder
        .set_identity(VICTIM_ADDR, VICTIM_MAC)
        .unwrap();
    check_own_answers_with(&scene.intruder, &scene.intruder_instance, &headers).unwrap();
    check_own_answers(&scene.victim, &scene.victim_instance).unwrap();
}
