//! Nova mode: watchers share one upstream request per interval (the fake
//! nova counts them) and wake when nova's answer changes; with
//! `--stale-if-error` a GET is answered from the last good answer while
//! nova is down, fresh again when it returns, and 503 once the kept answer
//! is older than the limit.
use std::time::{Duration, Instant};

use mdr_harness::fixtures::{GUEST_ADDR as ADDR, GUEST_MAC as MAC};
use mdr_harness::nova::NovaInstance;
use mdr_harness::tempdir::TempDir;
use mdr_harness::{Daemon, FakeNova, FakeNovaConfig, Guest, GuestConfig, Host, TenantNet};

const SECRET: &str = "s3cret shared with nova";
const USER_DATA: &str = "/openstack/latest/user_data";

struct Scene {
    guest: Guest,
    daemon: Daemon,
    nova: FakeNova,
    user_data: std::path::PathBuf,
    _dir: TempDir,
    _net: TenantNet,
    _host: Host,
}

impl Scene {
    /// A nova-mode daemon with a 1 s cache interval, and `extra` flags.
    fn new(extra: &[&str]) -> Self {
        let host = Host::new().unwrap();
        let instance = NovaInstance::new();
        let dir = TempDir::new("nova-user-data").unwrap();
        let user_data = dir.join("user_data");
        std::fs::write(&user_data, "#cloud-config\nversion: 1\n").unwrap();
        let nova = FakeNova::start(
            &host,
            FakeNovaConfig::new(SECRET)
                .project(&instance.uuid, &instance.project)
                .user_data_file(&user_data),
        )
        .unwrap();
        let net = TenantNet::with_router_and_decoy(&host).unwrap();
        let guest = Guest::new(&net, GuestConfig::new(ADDR, MAC)).unwrap();
        let mut args = nova.daemon_args(&nova.secret_file());
        args.extend(["--metadata-cache-expiration".to_owned(), "1".to_owned()]);
        args.extend(extra.iter().map(|arg| arg.to_string()));
        let daemon = Daemon::start_with_args(&host, &args).unwrap();
        daemon
            .add_nova_port(guest.tap(), &instance, MAC, ADDR, None)
            .unwrap();
        guest.wait_served(&instance.uuid).unwrap();
        Self {
            guest,
            daemon,
            nova,
            user_data,
            _dir: dir,
            _net: net,
            _host: host,
        }
    }

    fn upstream_requests_for(&self, path: &str) -> usize {
        self.nova
            .requests()
            .iter()
            .filter(|request| request.path.starts_with(path))
            .count()
    }
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn watchers_in_nova_mode_share_one_upstream_request_per_interval() {
    let scene = Scene::new(&[]);
    let first = scene.guest.http_get(USER_DATA).unwrap();
    assert_eq!(first.status, 200, "{first}");
    let etag = first.header("etag").unwrap().trim_matches('"').to_owned();
    let before = scene.upstream_requests_for(USER_DATA);

    std::thread::scope(|scope| {
        let watchers: Vec<_> = (0..6)
            .map(|_| {
                scope.spawn(|| {
                    let reply = scene
                        .guest
                        .http_get_with(
                            &format!(
                                "{USER_DATA}?wait_for_change=true&last_etag={etag}&timeout_sec=60"
                            ),
                            &[],
                            Duration::from_secs(70),
                        )
                        .unwrap();
                    (reply, Instant::now())
                })
            })
            .collect();
        // About 3.5 intervals of unchanged content with six watchers.
        std::thread::sleep(Duration::from_millis(3500));
        let polled = scene.upstream_requests_for(USER_DATA) - before;
        assert!(
            (2..=5).contains(&polled),
            "one upstream request per 1 s interval for six watchers, got {polled}"
        );
        assert!(
            watchers.iter().all(|w| !w.is_finished()),
            "woken without a change"
        );
        assert_eq!(
            scene.daemon.status().unwrap()["datapath"]["backend"]["stats"]["watched_paths"],
            1
        );

        std::fs::write(&scene.user_data, "#cloud-config\nversion: 2\n").unwrap();
        let changed_at = Instant::now();
        for watcher in watchers {
            let (reply, returned) = watcher.join().unwrap();
            assert_eq!(reply.status, 200, "{reply}");
            assert_eq!(reply.body, "#cloud-config\nversion: 2\n");
            assert_ne!(reply.header("etag").unwrap().trim_matches('"'), etag);
            // Within one interval (plus the request itself).
            assert!(returned.duration_since(changed_at) < Duration::from_millis(1500));
        }
    });
    assert!(
        scene
            .nova
            .requests()
            .iter()
            .all(|request| !request.path.contains("wait_for_change")),
        "the watch parameters reached nova"
    );
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn stale_answers_while_nova_is_down_fresh_when_it_returns_503_past_the_limit() {
    let mut scene = Scene::new(&["--stale-if-error", "4"]);
    let fresh = scene.guest.http_get(USER_DATA).unwrap();
    assert_eq!(fresh.status, 200, "{fresh}");
    assert!(fresh.header("age").is_none());

    scene.nova.stop();
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..2 {
        let stale = scene.guest.http_get(USER_DATA).unwrap();
        assert_eq!(stale.status, 200, "{stale}");
        assert_eq!(stale.body, fresh.body);
        let age: u64 = stale
            .header("age")
            .expect("marked with its age")
            .parse()
            .unwrap();
        assert!((1..=3).contains(&age), "Age {age}");
    }
    // Never another path's (or instance's) answer: never asked before, 503.
    assert_eq!(
        scene
            .guest
            .http_get("/openstack/latest/vendor_data.json")
            .unwrap()
            .status,
        503
    );
    // Never for a POST.
    assert_eq!(
        scene
            .guest
            .http_post("/openstack/latest/password", "secret")
            .unwrap()
            .status,
        503
    );
    let status = scene.daemon.status().unwrap();
    assert_eq!(
        status["datapath"]["backend"]["stats"]["cache"]["stale_served"], 2,
        "{status}"
    );
    assert_eq!(
        scene
            .daemon
            .log()
            .matches("answering GETs from kept answers")
            .count(),
        1,
        "logged once per outage"
    );

    scene.nova.restart().unwrap();
    let again = scene.guest.http_get(USER_DATA).unwrap();
    assert_eq!(again.status, 200, "{again}");
    assert!(again.header("age").is_none(), "fresh once nova is back");
    assert!(scene.daemon.log().contains("stale answers stopped"));

    scene.nova.stop();
    std::thread::sleep(Duration::from_millis(4500));
    let expired = scene.guest.http_get(USER_DATA).unwrap();
    assert_eq!(
        expired.status, 503,
        "older than --stale-if-error: {expired}"
    );
}
