//! Compute-node mode (`serve --discover libvirt`): a private libvirtd runs
//! qemu domains shaped like nova's, and the daemon serves every one of them
//! with no `port` command, through starts, stops, hot-plugs and restarts of
//! either daemon.
//!
//! Each test has its own host namespace, libvirtd and daemon: the daemon
//! serves every domain its libvirtd runs, so two tests sharing one would see
//! each other's. Domains that need no guest CPU are started paused (their
//! taps exist, nothing runs); the guests that must send requests boot the
//! test kernel and stay up, answering [`ask`] for more requests.

use std::path::PathBuf;
use std::time::Duration;

use mdr_harness::fixtures::{GATEWAY, GUEST_ADDR, GUEST_MAC, PREFIX_LEN, random_uuid};
use mdr_harness::libvirt::{
    Boot, DomainXml, GuestImage, Libvirtd, NOVA_NS_1_0, NOVA_NS_1_1, Nic, NovaMeta, ask,
    nova_tap_name, wait_for_console_answer,
};
use mdr_harness::nova::FakeNovaConfig;
use mdr_harness::wait::{self, Poll};
use mdr_harness::{Daemon, FakeNova, Host, Instance, Reply, TenantNet, cmd, names};
use serde_json::Value;

/// How long a booting guest may take to print its first answer (about 10 s
/// under TCG; two boot at once on a 2-core machine).
const BOOT_TIMEOUT: Duration = Duration::from_secs(150);
/// How long discovery may take to follow a change libvirt reports.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(20);
const META_DATA: &str = "/openstack/latest/meta_data.json";

fn discover_args(libvirtd: &Libvirtd) -> Vec<String> {
    vec![
        "--discover".into(),
        "libvirt".into(),
        "--libvirt-uri".into(),
        libvirtd.uri(),
    ]
}

/// `port list --json`.
fn ports(daemon: &Daemon) -> Vec<Value> {
    let out = daemon.cli_ok(&["port", "list", "--json"]).unwrap();
    serde_json::from_str::<Vec<Value>>(&out).unwrap()
}

fn port(daemon: &Daemon, tap: &str) -> Option<Value> {
    ports(daemon).into_iter().find(|port| port["ifname"] == tap)
}

/// Waits until `tap` is a registered port and the datapath is attached to
/// it; returns the port.
#[track_caller]
fn wait_served(daemon: &Daemon, tap: &str) -> Value {
    wait::until(
        &format!("{tap} to be a port, attached"),
        FOLLOW_TIMEOUT,
        || {
            let status = daemon.status()?;
            let attached = status["datapath"]["attached_taps"].get(tap).is_some();
            Ok(match port(daemon, tap) {
                Some(port) if attached => Poll::Ready(port),
                found => Poll::Pending(format!("port {found:?}, attached {attached}")),
            })
        },
    )
    .unwrap_or_else(|err| panic!("{err:#}\n{}", daemon.log()))
}

#[track_caller]
fn wait_unserved(daemon: &Daemon, tap: &str) {
    wait::until(&format!("{tap}'s port to go"), FOLLOW_TIMEOUT, || {
        let status = daemon.status()?;
        let attached = status["datapath"]["attached_taps"].get(tap).is_some();
        Ok(match port(daemon, tap) {
            None if !attached => Poll::Ready(()),
            found => Poll::Pending(format!("port {found:?}, attached {attached}")),
        })
    })
    .unwrap_or_else(|err| panic!("{err:#}\n{}", daemon.log()))
}

/// The discovery part of `status --json`.
fn discovery(daemon: &Daemon) -> Value {
    daemon.status().unwrap()["discovery"].clone()
}

/// The problems discovery reports for the domain `name`.
fn problems(daemon: &Daemon, name: &str) -> Vec<String> {
    discovery(daemon)["domains"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|domain| domain["name"] == name)
        .flat_map(|domain| domain["problems"].as_array().cloned().unwrap_or_default())
        .map(|problem| problem.as_str().unwrap_or_default().to_owned())
        .collect()
}

#[track_caller]
fn wait_connection(daemon: &Daemon, state: &str) {
    wait::until(
        &format!("discovery to be {state}"),
        Duration::from_secs(60),
        || {
            let discovery = discovery(daemon);
            Ok(if discovery["connection"] == state {
                Poll::Ready(())
            } else {
                Poll::Pending(discovery.to_string())
            })
        },
    )
    .unwrap_or_else(|err| panic!("{err:#}\n{}", daemon.log()))
}

/// Asserts the port of `tap` belongs to the domain `name` (`uuid`).
#[track_caller]
fn assert_owned_by(port: &Value, name: &str, uuid: &str) {
    assert_eq!(port["source"], "libvirt", "{port}");
    assert_eq!(port["domain"], name, "{port}");
    assert_eq!(port["domain_uuid"], uuid, "{port}");
    assert_eq!(port["instance"], uuid, "{port}");
}

/// A domain to start paused on `bridge`, with `document` in its metadata.
fn paused(bridge: &str, document: Option<&Instance>) -> (DomainXml, String) {
    let uuid = document.map_or_else(random_uuid, |instance| instance.uuid.clone());
    let tap = names::ifname("vm");
    let mut domain = DomainXml::new(&names::global("dom"), &uuid);
    domain.nics.push(Nic {
        mac: "fa:16:3e:00:01:01".into(),
        bridge: Some(bridge.to_owned()),
        tap: Some(tap.clone()),
    });
    if let Some(instance) = document {
        domain = domain.with_document(&instance.doc.to_string());
    }
    (domain, tap)
}

/// A domain that boots the test guest (one request at boot, printed on its
/// console, then [`ask`] for more) as `GUEST_ADDR`/`GUEST_MAC` on `bridge`.
struct Booted {
    domain: DomainXml,
    tap: String,
    console: PathBuf,
}

fn booted(libvirtd: &Libvirtd, bridge: &str, uuid: &str, tap: &str) -> Booted {
    let id = names::random_u64();
    let initrd = libvirtd.dir().join(format!("guest-{id}.cpio"));
    GuestImage {
        addr: GUEST_ADDR,
        prefix_len: PREFIX_LEN,
        gateway: GATEWAY,
        path: META_DATA.into(),
        stay_up: true,
    }
    .write(&initrd)
    .unwrap();
    let console = libvirtd.dir().join(format!("console-{id}.log"));
    let mut domain = DomainXml::new(&names::global("dom"), uuid);
    domain.boot = Boot::Kernel {
        initrd,
        console: console.clone(),
    };
    domain.memory_mib = 192;
    domain.nics.push(Nic {
        mac: GUEST_MAC.into(),
        bridge: Some(bridge.to_owned()),
        tap: Some(tap.to_owned()),
    });
    Booted {
        domain,
        tap: tap.to_owned(),
        console,
    }
}

impl Booted {
    fn console_text(&self) -> String {
        format!(
            "--- console of {} ---\n{}",
            self.domain.name,
            std::fs::read_to_string(&self.console).unwrap_or_default()
        )
    }

    /// The answer to the guest's first request, sent once at boot.
    #[track_caller]
    fn first_answer(&self, libvirtd: &Libvirtd, daemon: &Daemon) -> Reply {
        wait_for_console_answer(&self.console, BOOT_TIMEOUT).unwrap_or_else(|err| {
            panic!(
                "{err:#}\n{}\n--- daemon log ---\n{}",
                libvirtd.logs(),
                daemon.log()
            )
        })
    }
}

/// `ask` from the network's router.
#[track_caller]
fn ask_via(net: &TenantNet, path: &str) -> Reply {
    ask(net.router().unwrap(), GUEST_ADDR, path).unwrap()
}

/// How often `needle` appears in the daemon's log.
fn log_count(daemon: &Daemon, needle: &str) -> usize {
    daemon.log().matches(needle).count()
}

/// The local backend on a plain libvirt host: documents in the domains'
/// metadata. A domain running before the daemon starts is served; two
/// booted after it, with the same address and MAC on two networks, each
/// get their own document on their first request (no retry); a document
/// changed, removed and set again live applies on the next request (404
/// while there is none, logged once); a hot-plugged NIC is served and its
/// unplug removes it; a destroyed domain's ports go; the operator can
/// neither take nor remove what a domain owns.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn local_backend_serves_every_domain_through_its_life() {
    let host = Host::new().unwrap();
    let net_a = TenantNet::new(&host, GATEWAY, PREFIX_LEN).unwrap();
    let net_b = TenantNet::new(&host, GATEWAY, PREFIX_LEN).unwrap();
    let libvirtd = Libvirtd::start(&host).unwrap();

    // Running before the daemon starts.
    let early = Instance::sample("early");
    let (early_domain, early_tap) = paused(net_a.bridge(), Some(&early));
    libvirtd.define_and_start(&early_domain, true).unwrap();

    let daemon = Daemon::start_with_args(&host, &discover_args(&libvirtd)).unwrap();
    let served = wait_served(&daemon, &early_tap);
    assert_owned_by(&served, &early_domain.name, &early.uuid);
    assert_eq!(served["mac"], "fa:16:3e:00:01:01");
    let instance = daemon.cli_ok(&["instance", "get", &early.uuid]).unwrap();
    assert!(
        instance.contains(&format!("\"name\": \"{}\"", early.name)),
        "{instance}"
    );

    // Started after it: two guests alike but for their networks.
    let one = Instance::sample("one");
    let two = Instance::sample("two");
    let g1 = booted(&libvirtd, net_a.bridge(), &one.uuid, &names::ifname("g1"));
    let g2 = booted(&libvirtd, net_b.bridge(), &two.uuid, &names::ifname("g2"));
    for (guest, instance) in [(&g1, &one), (&g2, &two)] {
        let domain = guest
            .domain
            .clone()
            .with_document(&instance.doc.to_string());
        libvirtd.define_and_start(&domain, false).unwrap();
    }
    for (guest, instance) in [(&g1, &one), (&g2, &two)] {
        let reply = guest.first_answer(&libvirtd, &daemon);
        assert_eq!(reply.status, 200, "{reply}\n{}", guest.console_text());
        let meta = reply.json().unwrap();
        assert_eq!(meta["uuid"], instance.uuid.as_str(), "{meta}");
        assert_eq!(meta["name"], instance.name.as_str(), "{meta}");
        assert_owned_by(
            &port(&daemon, &guest.tap).unwrap(),
            &guest.domain.name,
            &instance.uuid,
        );
    }
    assert_eq!(
        ask_via(&net_b, META_DATA).json().unwrap()["uuid"],
        two.uuid.as_str()
    );

    // The document changes live: the next request sees it.
    let mut changed = one.doc.clone();
    changed["meta"]["role"] = "renamed".into();
    libvirtd
        .set_document(&g1.domain.name, Some(&changed.to_string()))
        .unwrap();
    wait::until("the changed document", FOLLOW_TIMEOUT, || {
        let reply = ask_via(&net_a, META_DATA);
        Ok(match reply.json() {
            Some(meta) if meta["meta"]["role"] == "renamed" => Poll::Ready(()),
            _ => Poll::Pending(reply.to_string()),
        })
    })
    .unwrap();
    // Removed: 404, logged once; set again: served again.
    let no_document = "no instance document in the domain's metadata";
    libvirtd.set_document(&g1.domain.name, None).unwrap();
    wait::until("404 without a document", FOLLOW_TIMEOUT, || {
        let reply = ask_via(&net_a, META_DATA);
        Ok(if reply.status == 404 {
            Poll::Ready(())
        } else {
            Poll::Pending(reply.to_string())
        })
    })
    .unwrap();
    assert!(
        problems(&daemon, &g1.domain.name)
            .iter()
            .any(|p| p.starts_with(no_document)),
        "{}",
        discovery(&daemon)
    );
    // Another change of the domain (its document stays absent): not logged again.
    libvirtd
        .virsh(&["desc", &g1.domain.name, "--live", "--title", "still none"])
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(log_count(&daemon, no_document), 1, "{}", daemon.log());
    libvirtd
        .set_document(&g1.domain.name, Some(&one.doc.to_string()))
        .unwrap();
    wait::until("the document back", FOLLOW_TIMEOUT, || {
        let reply = ask_via(&net_a, META_DATA);
        Ok(if reply.status == 200 {
            Poll::Ready(())
        } else {
            Poll::Pending(reply.to_string())
        })
    })
    .unwrap();
    assert_eq!(problems(&daemon, &g1.domain.name), Vec::<String>::new());

    // What a domain owns, the operator can neither take nor change.
    let refused = daemon
        .cli(&[
            "port",
            "add",
            "--ifname",
            &g1.tap,
            "--instance",
            &early.uuid,
        ])
        .unwrap();
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains(&format!("is the tap of libvirt domain {}", g1.domain.name)),
        "{message}"
    );
    let refused = daemon.cli(&["port", "del", "--ifname", &g1.tap]).unwrap();
    assert!(!refused.status.success());
    let refused = daemon.cli(&["instance", "del", &one.uuid]).unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains(&g1.domain.name),
        "{refused:?}"
    );

    // A NIC hot-plugged into the running guest is served; unplugged, it goes.
    let plugged = Nic {
        mac: "fa:16:3e:00:02:02".into(),
        bridge: Some(net_a.bridge().to_owned()),
        tap: Some(names::ifname("hp")),
    };
    let hp_tap = plugged.tap.clone().unwrap();
    libvirtd.attach_nic(&g1.domain.name, &plugged).unwrap();
    let hot = wait_served(&daemon, &hp_tap);
    assert_owned_by(&hot, &g1.domain.name, &one.uuid);
    assert_eq!(hot["mac"], plugged.mac.as_str());
    libvirtd
        .detach_nic(&g1.domain.name, &plugged.mac, Duration::from_secs(60))
        .unwrap();
    wait_unserved(&daemon, &hp_tap);
    assert!(port(&daemon, &g1.tap).is_some(), "the first NIC stays");

    // Destroyed: the ports go, the other domains stay.
    libvirtd.destroy(&early_domain.name).unwrap();
    wait_unserved(&daemon, &early_tap);
    libvirtd.destroy(&g2.domain.name).unwrap();
    wait_unserved(&daemon, &g2.tap);
    assert!(port(&daemon, &g1.tap).is_some());
    let status = discovery(&daemon);
    assert_eq!(status["connection"], "connected", "{status}");
    assert_eq!(status["domains_seen"], 1, "{status}");
    assert_eq!(status["ports_owned"], 1, "{status}");
    // `status` in words names the source and the domain.
    let text = daemon.cli_ok(&["status"]).unwrap();
    assert!(text.contains("discovery: libvirt qemu:///system"), "{text}");
    assert!(
        text.contains(&format!("  {} ({}): {}", g1.domain.name, one.uuid, g1.tap)),
        "{text}"
    );
    let table = daemon.cli_ok(&["port", "list"]).unwrap();
    assert!(
        table.contains(&format!("libvirt:{}", g1.domain.name)),
        "{table}"
    );
}

/// nova's compute node: the domains carry nova's metadata and the daemon
/// forwards to nova (here the fake one) with the domain's UUID and the
/// project from `nova:owner`, with no command. A domain whose nova metadata
/// is malformed is skipped and logged with its name; one with no project
/// is served but reported; both next to the good one.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn nova_backend_serves_domains_from_novas_metadata() {
    let host = Host::new().unwrap();
    let net = TenantNet::new(&host, GATEWAY, PREFIX_LEN).unwrap();
    let libvirtd = Libvirtd::start(&host).unwrap();
    let uuid = random_uuid();
    let project = format!("{:032x}", names::random_u64());
    let nova = FakeNova::start(
        &host,
        FakeNovaConfig::new("compute-node-secret").project(&uuid, &project),
    )
    .unwrap();
    let mut args = nova.daemon_args(&nova.secret_file());
    args.extend(discover_args(&libvirtd));
    let daemon = Daemon::start_with_args(&host, &args).unwrap();

    // Broken nova metadata (a port id that is no UUID) and, beside it, a
    // domain of nova 1.0 without an owner: neither stops the good one.
    let (mut broken, broken_tap) = paused(net.bridge(), None);
    broken.nova = Some(NovaMeta {
        namespace: NOVA_NS_1_1,
        name: "broken".into(),
        project_id: project.clone(),
        project_name: "demo".into(),
        ports: vec![("not-a-uuid".into(), vec![])],
    });
    libvirtd.define_and_start(&broken, true).unwrap();
    let (mut ownerless, ownerless_tap) = paused(net.bridge(), None);
    ownerless.extra_metadata = format!(
        "<nova:instance xmlns:nova='{NOVA_NS_1_0}'><nova:name>old</nova:name></nova:instance>"
    );
    libvirtd.define_and_start(&ownerless, true).unwrap();

    let port_id = random_uuid();
    let tap = nova_tap_name(&port_id);
    let mut guest = booted(&libvirtd, net.bridge(), &uuid, &tap);
    guest.domain.nova = Some(NovaMeta {
        namespace: NOVA_NS_1_1,
        name: "web-1".into(),
        project_id: project.clone(),
        project_name: "demo".into(),
        ports: vec![(port_id.clone(), vec![GUEST_ADDR])],
    });
    libvirtd.define_and_start(&guest.domain, false).unwrap();
    let reply = guest.first_answer(&libvirtd, &daemon);
    assert_eq!(reply.status, 200, "{reply}\n{}", nova.log());
    let served = port(&daemon, &tap).unwrap();
    assert_owned_by(&served, &guest.domain.name, &uuid);
    assert_eq!(served["port_id"], port_id.as_str(), "{served}");
    assert_eq!(served["ips"], serde_json::json!([GUEST_ADDR.to_string()]));
    assert_eq!(served["project_id"], project.as_str());
    let asked = nova.requests_for(META_DATA);
    let request = asked.last().expect("nova was asked");
    assert_eq!(request.header("x-instance-id"), Some(uuid.as_str()));
    assert_eq!(request.header("x-tenant-id"), Some(project.as_str()));
    assert_eq!(
        request.header("x-forwarded-for"),
        Some(GUEST_ADDR.to_string().as_str())
    );

    // The broken one: skipped, named in the log, shown in status.
    assert!(port(&daemon, &broken_tap).is_none());
    let log = daemon.log();
    assert!(
        log.lines()
            .any(|line| line.contains(&broken.name) && line.contains("skipped, not served")),
        "{log}"
    );
    assert!(
        problems(&daemon, &broken.name)
            .iter()
            .any(|p| p.contains("not-a-uuid")),
        "{}",
        discovery(&daemon)
    );
    // The ownerless one: its tap is held (its guest can reach no one
    // else), and the missing project is reported.
    wait_served(&daemon, &ownerless_tap);
    assert!(
        problems(&daemon, &ownerless.name)
            .iter()
            .any(|p| p.starts_with("no project")),
        "{}",
        discovery(&daemon)
    );
    // Fixed: served, and the problem is gone.
    libvirtd.destroy(&broken.name).unwrap();
    broken.nova.as_mut().unwrap().ports.clear();
    libvirtd.define_and_start(&broken, true).unwrap();
    wait_served(&daemon, &broken_tap);
    assert_eq!(problems(&daemon, &broken.name), Vec::<String>::new());
}

/// Restarts and crashes of either daemon, with paused domains: the daemon
/// SIGKILLed while one domain is created and another destroyed reconciles
/// at start; libvirtd SIGKILLed logs one change, and after its restart the
/// domain that died meanwhile loses its port and a new one gains one; a
/// daemon started while libvirtd is down serves what its store holds and
/// connects once libvirtd is back. Undefining a running domain keeps its
/// port until it stops.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn restarts_of_either_daemon_are_reconciled() {
    let host = Host::new().unwrap();
    let net = TenantNet::without_router(&host, PREFIX_LEN).unwrap();
    let mut libvirtd = Libvirtd::start(&host).unwrap();
    let domain = |name: &str| {
        let instance = Instance::sample(name);
        let (domain, tap) = paused(net.bridge(), Some(&instance));
        (domain, tap, instance)
    };
    let (a, a_tap, _) = domain("a");
    let (b, b_tap, _) = domain("b");
    let (c, c_tap, _) = domain("c");
    let (d, d_tap, _) = domain("d");
    for dom in [&a, &b] {
        libvirtd.define_and_start(dom, true).unwrap();
    }
    let mut daemon = Daemon::start_with_args(&host, &discover_args(&libvirtd)).unwrap();
    wait_served(&daemon, &a_tap);
    let b_slot = wait_served(&daemon, &b_tap)["slot"].clone();

    // The daemon dies; meanwhile c starts and a is destroyed.
    daemon.kill9().unwrap();
    libvirtd.define_and_start(&c, true).unwrap();
    libvirtd.destroy(&a.name).unwrap();
    daemon.restart().unwrap();
    wait_served(&daemon, &c_tap);
    wait_unserved(&daemon, &a_tap);
    assert_eq!(
        port(&daemon, &b_tap).unwrap()["slot"],
        b_slot,
        "b keeps its slot"
    );

    // libvirtd dies; b's qemu dies with nobody watching.
    let unavailable = "libvirt unavailable";
    let before = log_count(&daemon, unavailable);
    let b_qemu = libvirtd.qemu_pid(&b.name).unwrap();
    libvirtd.kill9().unwrap();
    wait_connection(&daemon, "disconnected");
    cmd::signal(b_qemu, libc::SIGKILL);
    // Retries (1 s, 2 s, 4 s) fail without a word each.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        log_count(&daemon, unavailable),
        before + 1,
        "{}",
        daemon.log()
    );
    assert!(
        port(&daemon, &b_tap).is_some(),
        "kept while libvirt is away"
    );
    libvirtd.restart().unwrap();
    libvirtd.define_and_start(&d, true).unwrap();
    wait_connection(&daemon, "connected");
    wait_unserved(&daemon, &b_tap);
    wait_served(&daemon, &d_tap);
    wait_served(&daemon, &c_tap);

    // The daemon starts while libvirtd is down: it serves its store.
    libvirtd.kill9().unwrap();
    daemon.kill9().unwrap();
    daemon.restart().unwrap();
    wait_connection(&daemon, "disconnected");
    let c_slot = wait_served(&daemon, &c_tap)["slot"].clone();
    wait_served(&daemon, &d_tap);
    libvirtd.restart().unwrap();
    wait_connection(&daemon, "connected");
    assert_eq!(port(&daemon, &c_tap).unwrap()["slot"], c_slot);
    wait_served(&daemon, &d_tap);

    // Undefined while running: served until it stops.
    libvirtd.undefine(&c.name).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(port(&daemon, &c_tap).is_some());
    libvirtd.destroy(&c.name).unwrap();
    wait_unserved(&daemon, &c_tap);
    let status = discovery(&daemon);
    assert_eq!(status["domains_seen"], 1, "{status}");
    assert_eq!(status["ports_owned"], 1, "{status}");
}
