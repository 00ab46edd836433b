//! Watching for changes through the datapath (local backend): a guest's
//! long poll returns within 100 ms of an `instance put` that changes what it
//! watches and not on a change elsewhere; a timeout answers the same
//! content and ETag; the 17th held watch of a port gets 429.
use std::time::{Duration, Instant};

use mdr_harness::fixtures::{GUEST_ADDR as ADDR, GUEST_MAC as MAC};
use mdr_harness::{Daemon, Guest, GuestConfig, Host, Instance, Reply, TenantNet};

const META_DATA: &str = "/openstack/latest/meta_data.json";

struct Scene {
    guest: Guest,
    instance: Instance,
    daemon: Daemon,
    _net: TenantNet,
    _host: Host,
}

impl Scene {
    fn new() -> Self {
        let host = Host::new().unwrap();
        let net = TenantNet::with_router_and_decoy(&host).unwrap();
        let guest = Guest::new(&net, GuestConfig::new(ADDR, MAC)).unwrap();
        let daemon = Daemon::start(&host).unwrap();
        let instance = Instance::sample("watched");
        daemon.register(&guest, &instance).unwrap();
        guest.wait_served(&instance.uuid).unwrap();
        Self {
            guest,
            instance,
            daemon,
            _net: net,
            _host: host,
        }
    }

    /// The ETag the guest gets for `path`, without its quotes (what goes
    /// into `last_etag`).
    fn etag(&self, path: &str) -> String {
        let reply = self.guest.http_get(path).unwrap();
        assert_eq!(reply.status, 200, "{reply}");
        etag_of(&reply)
    }

    /// A watch of `path` from the guest (curl, as a guest script would).
    fn watch(&self, path: &str, etag: &str, timeout_sec: u64) -> Reply {
        self.guest
            .http_get_with(
                &format!("{path}?wait_for_change=true&last_etag={etag}&timeout_sec={timeout_sec}"),
                &[],
                Duration::from_secs(timeout_sec + 10),
            )
            .unwrap()
    }
}

fn etag_of(reply: &Reply) -> String {
    reply
        .header("etag")
        .unwrap_or_else(|| panic!("no ETag: {reply}"))
        .trim_matches('"')
        .to_owned()
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_long_poll_returns_within_100_ms_of_a_put_that_changes_it_and_not_for_others() {
    let scene = Scene::new();
    let etag = scene.etag(META_DATA);
    // An instance on no port of this guest, changed while the guest waits.
    let elsewhere = Instance::sample("elsewhere");
    scene.daemon.put_instance(&elsewhere).unwrap();

    std::thread::scope(|scope| {
        let poll = scope.spawn(|| {
            let reply = scene.watch(META_DATA, &etag, 60);
            (reply, Instant::now())
        });
        std::thread::sleep(Duration::from_millis(700));
        let mut changed_elsewhere = elsewhere.clone();
        changed_elsewhere.doc["meta"]["role"] = "changed elsewhere".into();
        scene.daemon.put_instance(&changed_elsewhere).unwrap();
        // The same document again: nothing meta_data.json shows changed.
        scene.daemon.put_instance(&scene.instance).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        assert!(!poll.is_finished(), "woken by a change elsewhere");

        let mut changed = scene.instance.clone();
        changed.doc["meta"]["role"] = "db".into();
        scene.daemon.put_instance(&changed).unwrap();
        let put_done = Instant::now();
        let (reply, returned) = poll.join().unwrap();
        let after = returned.saturating_duration_since(put_done);
        assert!(
            after < Duration::from_millis(100),
            "returned {after:?} after the put"
        );
        assert_eq!(reply.status, 200, "{reply}");
        assert_ne!(etag_of(&reply), etag);
        assert_eq!(reply.json().unwrap()["meta"]["role"], "db");
    });
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_timeout_answers_the_same_content_and_etag_and_bad_parameters_are_400() {
    let scene = Scene::new();
    let path = "/latest/meta-data/instance-id";
    let etag = scene.etag(path);
    let started = Instant::now();
    let reply = scene.watch(path, &etag, 1);
    assert!(started.elapsed() >= Duration::from_millis(950));
    assert_eq!(reply.status, 200);
    assert_eq!(etag_of(&reply), etag);
    assert_eq!(reply.body, scene.instance.ec2_id);
    // Another ETag: at once. Other query parameters are ignored.
    let started = Instant::now();
    let reply = scene
        .guest
        .http_get(&format!(
            "{path}?foo=bar&wait_for_change=true&last_etag=0000"
        ))
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(reply.status, 200);
    for bad in ["timeout_sec=0", "timeout_sec=3601", "timeout_sec=x"] {
        let reply = scene
            .guest
            .http_get(&format!("{path}?wait_for_change=true&{bad}"))
            .unwrap();
        assert_eq!(reply.status, 400, "{bad}: {reply}");
        assert!(reply.body.contains("timeout_sec"), "{reply}");
    }
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn the_17th_watch_of_a_port_gets_429_and_ordinary_requests_still_pass() {
    let scene = Scene::new();
    let etag = scene.etag(META_DATA);
    std::thread::scope(|scope| {
        let held: Vec<_> = (0..16)
            .map(|_| scope.spawn(|| scene.watch(META_DATA, &etag, 30)))
            .collect();
        // Until all 16 are held (the daemon counts them in `status`).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = scene.daemon.status().unwrap();
            if status["datapath"]["backend"]["watches"] == 16 {
                break;
            }
            assert!(Instant::now() < deadline, "16 watches never held: {status}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let reply = scene.watch(META_DATA, &etag, 30);
        assert_eq!(reply.status, 429, "{reply}");
        // Watches take 16 of the port's 64 connections: the guest is served.
        assert_eq!(scene.guest.http_get(META_DATA).unwrap().status, 200);

        let mut changed = scene.instance.clone();
        changed.doc["name"] = "renamed".into();
        scene.daemon.put_instance(&changed).unwrap();
        for watch in held {
            let reply = watch.join().unwrap();
            assert_eq!(reply.status, 200, "{reply}");
            assert_eq!(reply.json().unwrap()["name"], "renamed");
        }
    });
    assert_eq!(
        scene.daemon.status().unwrap()["datapath"]["backend"]["watches"],
        0
    );
}
