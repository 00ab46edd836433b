//! OpenStack mode through the real datapath: guests' requests reach a fake
//! nova-api-metadata on the host namespace's loopback with the headers
//! neutron's agent sends (nova checks the signature exactly as nova does),
//! and nothing a guest says about itself gets there.
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Result, ensure};
use hmac::{Hmac, Mac as _};
use mdr_harness::fixtures::{self, GUEST_ADDR as ADDR, GUEST_MAC as MAC};
use mdr_harness::nova::{NovaInstance, RecordedRequest, TestPki};
use mdr_harness::tempdir::TempDir;
use mdr_harness::{
    Daemon, FakeNova, FakeNovaConfig, Guest, GuestConfig, Host, METADATA_ADDR, Reply, TenantNet,
};

/// nova's `metadata_proxy_shared_secret` in these tests.
const SECRET: &str = "s3cret shared with nova";
const META_DATA: &str = "/openstack/latest/meta_data.json";
const INSTANCE_ID: &str = "/latest/meta-data/instance-id";

/// What nova expects in X-Instance-ID-Signature: the hex HMAC-SHA256 of
/// the instance ID under the shared secret.
fn signature(secret: &str, instance: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(instance.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// `guest` gets `instance`'s answers: meta_data.json names the instance and
/// its project, and the fake nova's echo of a meta-data key shows the
/// instance, the project and the guest's own address as nova received them.
fn check_nova_answers(guest: &Guest, instance: &NovaInstance) -> Result<()> {
    let who = format!("guest on tap {} (expecting {})", guest.tap(), instance.uuid);
    let reply = guest.http_get(META_DATA)?;
    let doc = reply.json().filter(|_| reply.status == 200);
    let doc = doc.ok_or_else(|| anyhow::anyhow!("{who}: meta_data.json: {reply}"))?;
    ensure!(
        doc["uuid"] == instance.uuid.as_str() && doc["project_id"] == instance.project.as_str(),
        "{who}: meta_data.json is another instance's: {reply}"
    );
    let reply = guest.http_get(INSTANCE_ID)?;
    let echo = reply.json().filter(|_| reply.status == 200);
    let echo = echo.ok_or_else(|| anyhow::anyhow!("{who}: instance-id: {reply}"))?;
    ensure!(
        echo["instance_id"] == instance.uuid.as_str()
            && echo["tenant_id"] == instance.project.as_str()
            && echo["forwarded_for"] == guest.addr().to_string().as_str(),
        "{who}: instance-id: {reply}"
    );
    Ok(())
}

/// What nova received for `instance` from the guest at `addr`: each of the
/// four proxy headers exactly once and right, no X-Neutron-* header, and
/// the fake nova accepted it (a wrong signature would be its 403).
fn check_proxy_headers(request: &RecordedRequest, instance: &NovaInstance, addr: Ipv4Addr) {
    let expected = [
        ("x-instance-id", instance.uuid.clone()),
        ("x-tenant-id", instance.project.clone()),
        ("x-instance-id-signature", signature(SECRET, &instance.uuid)),
        ("x-forwarded-for", addr.to_string()),
    ];
    for (name, value) in expected {
        assert_eq!(
            request.header_values(name),
            [value.as_str()],
            "{name} of {} {}: {request:?}",
            request.method,
            request.path
        );
    }
    assert!(
        !request
            .headers
            .iter()
            .any(|(name, _)| name.starts_with("x-neutron-")),
        "{request:?}"
    );
    assert_eq!(request.status, 200, "nova refused {request:?}");
}

/// Two tenant networks with the same subnet, each with a router and a decoy
/// (an uncaught request would be answered, wrongly), a guest on each with
/// the same IP and MAC, each the port of its own nova instance.
struct TwoTenants {
    guest_a: Guest,
    guest_b: Guest,
    alpha: NovaInstance,
    beta: NovaInstance,
    _daemon: Daemon,
    nova: FakeNova,
    _nets: [TenantNet; 2],
    _host: Host,
}

impl TwoTenants {
    fn new() -> Self {
        let host = Host::new().unwrap();
        let (alpha, beta) = (NovaInstance::new(), NovaInstance::new());
        // nova knows both projects: a wrong X-Tenant-ID would be 404.
        let config = FakeNovaConfig::new(SECRET)
            .project(&alpha.uuid, &alpha.project)
            .project(&beta.uuid, &beta.project);
        let nova = FakeNova::start(&host, config).unwrap();
        let nets = [(); 2].map(|()| TenantNet::with_router_and_decoy(&host).unwrap());
        let guest_a = Guest::new(&nets[0], GuestConfig::new(ADDR, MAC)).unwrap();
        let guest_b = Guest::new(&nets[1], GuestConfig::new(ADDR, MAC)).unwrap();
        let daemon =
            Daemon::start_with_args(&host, &nova.daemon_args(&nova.secret_file())).unwrap();
        for (guest, instance) in [(&guest_a, &alpha), (&guest_b, &beta)] {
            daemon
                .add_nova_port(guest.tap(), instance, MAC, ADDR, None)
                .unwrap();
        }
        guest_a.wait_served(&alpha.uuid).unwrap();
        guest_b.wait_served(&beta.uuid).unwrap();
        Self {
            guest_a,
            guest_b,
            alpha,
            beta,
            _daemon: daemon,
            nova,
            _nets: nets,
            _host: host,
        }
    }
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn same_ip_and_mac_guests_get_their_own_instance_from_nova_signed_as_nova_expects() {
    let scene = TwoTenants::new();
    for _ in 0..2 {
        check_nova_answers(&scene.guest_a, &scene.alpha).unwrap();
        check_nova_answers(&scene.guest_b, &scene.beta).unwrap();
    }

    let requests = scene.nova.requests();
    for instance in [&scene.alpha, &scene.beta] {
        let theirs: Vec<&RecordedRequest> = requests
            .iter()
            .filter(|r| r.header("x-instance-id") == Some(instance.uuid.as_str()))
            .collect();
        // wait_served's meta_data.json and the instance-id echo, at least.
        assert!(theirs.len() >= 2, "{instance:?}: {requests:#?}");
    }
    for request in &requests {
        let instance = if request.header("x-instance-id") == Some(scene.alpha.uuid.as_str()) {
            &scene.alpha
        } else {
            &scene.beta
        };
        check_proxy_headers(request, instance, ADDR);
    }
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn identity_headers_sent_by_a_guest_never_reach_nova() {
    let scene = TwoTenants::new();
    let (victim, intruder) = (&scene.alpha, &scene.beta);
    // Even a valid signature for the victim (as if the secret had leaked).
    let forged_signature = signature(SECRET, &victim.uuid);
    let (network, router) = (fixtures::random_uuid(), fixtures::random_uuid());
    let spoofed_addr = "10.9.9.9";
    let headers = [
        format!("X-Instance-ID: {}", victim.uuid),
        format!("X-Instance-ID-Signature: {forged_signature}"),
        format!("X-Tenant-ID: {}", victim.project),
        format!("X-Forwarded-For: {spoofed_addr}"),
        format!("X-Neutron-Network-ID: {network}"),
        format!("X-Neutron-Router-ID: {router}"),
        format!("X-Real-IP: {spoofed_addr}"),
        format!("Forwarded: for={spoofed_addr}"),
        "X-Metadata-Provider: lb-provider".to_owned(),
    ];
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let forged_values = [
        victim.uuid.as_str(),
        victim.project.as_str(),
        &forged_signature,
        spoofed_addr,
        &network,
        &router,
        "lb-provider",
    ];

    // Paths with a query never asked before, so each goes to nova.
    for path in [
        format!("{META_DATA}?spoof=1"),
        format!("{INSTANCE_ID}?spoof=2"),
        "/openstack/latest/network_data.json?spoof=3".to_owned(),
    ] {
        let reply = scene
            .guest_b
            .http_get_with(&path, &headers, Duration::from_secs(5))
            .unwrap();
        assert_eq!(reply.status, 200, "{path}: {reply}");
        let doc = reply.json().unwrap_or_else(|| panic!("{path}: {reply}"));
        let named = doc.get("uuid").or_else(|| doc.get("instance_id"));
        assert_eq!(
            named,
            Some(&intruder.uuid.as_str().into()),
            "{path}: {reply}"
        );

        let seen = scene.nova.requests_for(&path);
        assert_eq!(seen.len(), 1, "{path}: {seen:#?}");
        check_proxy_headers(&seen[0], intruder, ADDR);
        for (name, value) in &seen[0].headers {
            assert!(
                !forged_values.iter().any(|forged| value.contains(forged)),
                "{path}: the guest's {name}: {value} reached nova"
            );
            assert!(
                !["x-real-ip", "forwarded", "x-metadata-provider"].contains(&name.as_str()),
                "{path}: the guest's {name} header reached nova"
            );
        }
    }
    // The victim is still itself.
    check_nova_answers(&scene.guest_a, victim).unwrap();
}

/// nova's password handler behind the datapath: a POST reaches nova with
/// its body for the guest's own instance, the next GET is not served from
/// the cache, and nova's 409 on a second POST reaches the guest.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_password_post_reaches_nova_for_the_guests_own_instance() {
    let scene = TwoTenants::new();
    let path = "/openstack/latest/password";
    // Cached empty answers first, as a guest polling for its password has.
    for guest in [&scene.guest_a, &scene.guest_b] {
        let reply = guest.http_get(path).unwrap();
        assert_eq!((reply.status, reply.body.as_str()), (200, ""), "{reply}");
    }

    let reply = scene.guest_a.http_post(path, "hunter2").unwrap();
    assert_eq!(reply.status, 200, "{reply}");
    let posts: Vec<RecordedRequest> = scene
        .nova
        .requests_for(path)
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(posts.len(), 1, "{posts:#?}");
    check_proxy_headers(&posts[0], &scene.alpha, ADDR);
    assert_eq!(posts[0].body, "hunter2");

    let reply = scene.guest_a.http_get(path).unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "hunter2"),
        "{reply}"
    );
    let reply = scene.guest_b.http_get(path).unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (200, ""), "{reply}");
    let reply = scene.guest_a.http_post(path, "again").unwrap();
    assert_eq!(reply.status, 409, "{reply}");
}

/// One guest on a network without a router (only the datapath can answer)
/// whose instance's answers come from `nova`, via a daemon started with
/// `daemon_args`.
struct Scene {
    guest: Guest,
    instance: NovaInstance,
    daemon: Daemon,
    nova: FakeNova,
    _net: TenantNet,
    _files: TempDir,
    host: Host,
}

impl Scene {
    /// `daemon_args` gets the fake nova and a directory for files the
    /// daemon needs.
    fn new(
        nova: FakeNovaConfig,
        daemon_args: impl FnOnce(&FakeNova, &TempDir) -> Vec<String>,
    ) -> Self {
        let host = Host::new().unwrap();
        let nova = FakeNova::start(&host, nova).unwrap();
        let files = TempDir::new("files").unwrap();
        let net = TenantNet::without_router(&host, 24).unwrap();
        let guest = Guest::new(&net, GuestConfig::new(ADDR, MAC).on_link()).unwrap();
        let daemon = Daemon::start_with_args(&host, &daemon_args(&nova, &files)).unwrap();
        let instance = NovaInstance::new();
        daemon
            .add_nova_port(guest.tap(), &instance, MAC, ADDR, None)
            .unwrap();
        Self {
            guest,
            instance,
            daemon,
            nova,
            _net: net,
            _files: files,
            host,
        }
    }

    /// The daemon's answer to `path` once the tap is attached.
    fn first_answer(&self, path: &str) -> Reply {
        self.guest.wait_answer(path).unwrap()
    }
}

/// The daemon's arguments for `nova` plus `extra`.
fn args(nova: &FakeNova, extra: &[&str]) -> Vec<String> {
    let mut args = nova.daemon_args(&nova.secret_file());
    args.extend(extra.iter().map(|arg| arg.to_string()));
    args
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_wrong_shared_secret_is_403_in_the_guest() {
    let scene = Scene::new(FakeNovaConfig::new(SECRET), |nova, files| {
        let wrong = files.join("wrong-secret");
        std::fs::write(&wrong, "not nova's secret\n").unwrap();
        nova.daemon_args(&wrong)
    });

    let reply = scene.first_answer(META_DATA);
    assert_eq!(reply.status, 403, "{reply}");
    // Refusals are not cached: the next request asks nova again.
    let reply = scene.guest.http_get(META_DATA).unwrap();
    assert_eq!(reply.status, 403, "{reply}");
    let seen = scene.nova.requests_for(META_DATA);
    assert!(seen.len() >= 2, "{seen:#?}");
    for request in &seen {
        assert_eq!(request.status, 403);
        // Signed, but with the daemon's (wrong) secret.
        assert_eq!(
            request.header("x-instance-id-signature"),
            Some(signature("not nova's secret", &scene.instance.uuid).as_str())
        );
    }
    assert!(
        scene.daemon.log().contains("403"),
        "the daemon should say nova refused it:\n{}",
        scene.daemon.log()
    );
}

/// GETs `path` from the guest; the status and how long the exchange took
/// as curl measured it (from its first packet, not counting the start of
/// nsenter and curl themselves).
fn timed_get(guest: &Guest, path: &str) -> (u16, Duration) {
    let url = format!("http://{METADATA_ADDR}{path}");
    let out = guest
        .exec(&[
            "curl",
            "-sS",
            "--noproxy",
            "*",
            "-m",
            "15",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{time_total}",
            &url,
        ])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let (status, seconds) = text
        .split_once(' ')
        .unwrap_or_else(|| panic!("curl printed {text:?}: {out:?}"));
    (
        status.parse().unwrap(),
        Duration::from_secs_f64(seconds.trim().parse().unwrap()),
    )
}

/// `--nova-metadata-timeout 1`: a dead nova (refused) is 503 at once, a
/// hung nova (answers after 8 s) is 503 after the timeout, and when nova is
/// back on its port the same path is answered (the 503s were not cached).
#[test]
#[ignore = "root: run via cargo xtask test"]
fn nova_down_is_503_within_the_timeout_and_the_daemon_recovers() {
    let timeout = Duration::from_secs(1);
    let mut scene = Scene::new(FakeNovaConfig::new(SECRET), |nova, _| {
        args(nova, &["--nova-metadata-timeout", "1"])
    });
    scene.guest.wait_served(&scene.instance.uuid).unwrap();

    // Dead: nothing listens on the port.
    scene.nova.stop();
    let (status, took) = timed_get(&scene.guest, INSTANCE_ID);
    assert_eq!(status, 503);
    assert!(took < timeout, "a refused connection took {took:?}");

    // Hung: it accepts and answers after 8 s.
    let hung = FakeNovaConfig::new(SECRET).delay(Duration::from_secs(8));
    let mut hung = FakeNova::start(&scene.host, hung).unwrap();
    let (status, took) = timed_get(&scene.guest, INSTANCE_ID);
    assert_eq!(status, 503);
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(2),
        "a hung nova was given up on after {took:?}, not after {timeout:?}"
    );
    hung.stop();

    // Back on the same port: the same path is answered.
    scene.nova.restart().unwrap();
    let (status, _) = timed_get(&scene.guest, INSTANCE_ID);
    assert_eq!(status, 200);
    check_nova_answers(&scene.guest, &scene.instance).unwrap();
    assert!(
        scene.daemon.log().contains("nova metadata unavailable"),
        "{}",
        scene.daemon.log()
    );
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn https_to_nova_with_a_private_ca() {
    let pki = TestPki::new().unwrap();
    let scene = Scene::new(FakeNovaConfig::new(SECRET).https(&pki), |nova, _| {
        args(nova, &["--auth-ca-cert", &pki.ca().to_string_lossy()])
    });
    scene.guest.wait_served(&scene.instance.uuid).unwrap();
    check_nova_answers(&scene.guest, &scene.instance).unwrap();
    check_proxy_headers(&scene.nova.requests()[0], &scene.instance, ADDR);
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn https_to_nova_with_a_client_certificate() {
    let pki = TestPki::new().unwrap();
    let nova = FakeNovaConfig::new(SECRET)
        .https(&pki)
        .require_client_cert(&pki);
    let (ca, cert, key) = (pki.ca(), pki.client_cert(), pki.client_key());
    let scene = Scene::new(nova.clone(), |nova, _| {
        args(
            nova,
            &[
                "--auth-ca-cert",
                &ca.to_string_lossy(),
                "--nova-client-cert",
                &cert.to_string_lossy(),
                "--nova-client-priv-key",
                &key.to_string_lossy(),
            ],
        )
    });
    scene.guest.wait_served(&scene.instance.uuid).unwrap();
    check_nova_answers(&scene.guest, &scene.instance).unwrap();

    // The certificate is what let it in: without one, nova refuses the
    // handshake and the guest gets 503.
    let without = Scene::new(nova, |nova, _| {
        args(nova, &["--auth-ca-cert", &ca.to_string_lossy()])
    });
    let reply = without.first_answer(META_DATA);
    assert_eq!(reply.status, 503, "{reply}");
    assert!(without.nova.requests().is_empty());
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn https_to_nova_with_the_wrong_ca_is_503() {
    let (pki, other) = (TestPki::new().unwrap(), TestPki::new().unwrap());
    let scene = Scene::new(FakeNovaConfig::new(SECRET).https(&pki), |nova, _| {
        args(nova, &["--auth-ca-cert", &other.ca().to_string_lossy()])
    });
    let reply = scene.first_answer(META_DATA);
    assert_eq!(reply.status, 503, "{reply}");
    assert!(
        scene.nova.requests().is_empty(),
        "an unverified nova got requests"
    );
    assert!(
        scene.daemon.log().contains("nova metadata unavailable"),
        "{}",
        scene.daemon.log()
    );
}

/// A guest that shuts down its sending side once its request is out
/// (`printf ... | nc`, as minimal images fetch) still gets its answer, also
/// when nova takes its time: the half-closed connection waits for it.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_request_whose_sender_half_closed_is_answered() {
    let host = Host::new().unwrap();
    let instance = NovaInstance::new();
    let config = FakeNovaConfig::new(SECRET)
        .project(&instance.uuid, &instance.project)
        .delay(Duration::from_millis(500));
    let nova = FakeNova::start(&host, config).unwrap();
    let net = TenantNet::with_router_and_decoy(&host).unwrap();
    let guest = Guest::new(&net, GuestConfig::new(ADDR, MAC)).unwrap();
    let mut args = nova.daemon_args(&nova.secret_file());
    args.extend(["--metadata-cache-expiration".into(), "0".into()]);
    let daemon = Daemon::start_with_args(&host, &args).unwrap();
    daemon
        .add_nova_port(guest.tap(), &instance, MAC, ADDR, None)
        .unwrap();
    guest.wait_served(&instance.uuid).unwrap();
    let out = guest
        .ns()
        .exec_ok(&[
            "sh",
            "-c",
            &format!(
                "printf 'GET {META_DATA} HTTP/1.0\\r\\nHost: {METADATA_ADDR}\\r\\n\\r\\n' \\
                 | busybox nc -w 10 {METADATA_ADDR} 80"
            ),
        ])
        .unwrap();
    assert!(out.starts_with("HTTP/1.0 200"), "{out:?}");
    assert!(out.contains(&instance.uuid), "{out:?}");
}
