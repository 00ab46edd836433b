//! What the installed unit relies on: READY=1 on the notify socket only
//! once the datapath is loaded and the listener is up, STOPPING=1 on
//! SIGTERM, and a daemon that serves with exactly the unit's capabilities.
use std::{os::unix::net::UnixDatagram, path::Path, sync::mpsc, time::Duration};

use mdr_harness::{
    Daemon, Guest, GuestConfig, Host, Instance, TenantNet, check_own_answers,
    fixtures::{GUEST_ADDR, GUEST_MAC},
};

/// The unit's CapabilityBoundingSet, as `setpriv --bounding-set` spells it.
fn unit_capabilities() -> String {
    let unit = include_str!("../../dist/metadata-redirector.service");
    let line = unit
        .lines()
        .find_map(|line| line.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds its capabilities");
    let caps: Vec<String> = line
        .split_whitespace()
        .map(|cap| format!("+{}", cap.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    format!("-all,{}", caps.join(","))
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn ready_once_serving_stopping_on_sigterm_with_the_units_capabilities_only() {
    let host = Host::new().unwrap();
    let net = TenantNet::with_router_and_decoy(&host).unwrap();
    let guest = Guest::new(&net, GuestConfig::new(GUEST_ADDR, GUEST_MAC)).unwrap();
    let (mut config, dir) = Daemon::fresh_config().unwrap();
    let notify_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&notify_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    config.env = vec![(
        "NOTIFY_SOCKET".into(),
        notify_path.to_string_lossy().into_owned(),
    )];
    config.command_prefix = vec![
        "setpriv".into(),
        "--bounding-set".into(),
        unit_capabilities(),
        "--".into(),
    ];
    let pins = config.bpffs.clone();
    let server_netns = config.server_netns.clone();

    // On READY=1, look at once, while the daemon goes on: the pinned
    // programs and the listener must already be there.
    let (seen_tx, seen_rx) = mpsc::channel();
    let watcher = {
        let socket = socket.try_clone().unwrap();
        let host = host.clone();
        std::thread::spawn(move || {
            let mut buf = [0; 512];
            let len = socket.recv(&mut buf).expect("a notification within 30 s");
            let message = String::from_utf8_lossy(&buf[..len]).into_owned();
            let programs = Path::new(&pins).join("progs").exists()
                && Path::new(&pins).join("links/entry-ingress").exists();
            // The listeners live in the server's namespace.
            let listening = host
                .exec_ok(&[
                    "ip",
                    "netns",
                    "exec",
                    &server_netns,
                    "ss",
                    "-Hltn",
                    "src",
                    "240.0.0.1:80",
                ])
                .unwrap_or_default();
            seen_tx.send((message, programs, listening)).unwrap();
        })
    };
    let mut daemon = Daemon::start_with(&host, config, Some(dir)).unwrap();
    let (message, programs, listening) = seen_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    watcher.join().unwrap();
    assert!(message.starts_with("READY=1\n"), "{message:?}");
    assert!(
        message.contains(&format!("MAINPID={}", daemon.pid().unwrap())),
        "{message:?}"
    );
    assert!(programs, "READY=1 before the programs were pinned");
    assert!(
        listening.contains("240.0.0.1:80"),
        "READY=1 before the listener: {listening:?}"
    );

    // With nothing but the unit's capabilities, it attaches and serves.
    let instance = Instance::sample("notified");
    daemon.register(&guest, &instance).unwrap();
    guest.wait_served(&instance.uuid).unwrap();
    check_own_answers(&guest, &instance).unwrap();
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", daemon.pid().unwrap())).unwrap();
    let bounding = status
        .lines()
        .find(|l| l.starts_with("CapBnd:"))
        .unwrap()
        .to_owned();
    assert_eq!(
        bounding.split_whitespace().nth(1),
        Some("000000c000201400"),
        "exactly CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_NET_BIND_SERVICE"
    );

    // SIGTERM: STOPPING=1 before the exit.
    mdr_harness::cmd::signal(daemon.pid().unwrap(), libc::SIGTERM);
    let mut buf = [0; 512];
    let len = socket.recv(&mut buf).expect("STOPPING=1 within 30 s");
    assert_eq!(&buf[..len], b"STOPPING=1\n");
    mdr_harness::wait::until("the daemon to exit", Duration::from_secs(10), || {
        Ok(if daemon.is_running() {
            mdr_harness::wait::Poll::Pending("running".into())
        } else {
            mdr_harness::wait::Poll::Ready(())
        })
    })
    .unwrap();
}
