//! The nova backend against a fake nova (the `fake-nova` crate) on
//! loopback: headers, signature, statuses, outages, TLS and cache. The
//! neutron agent socket in front of it is tested in `ingress::neutron_agent`.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use fake_nova::{FakeNova, pki::TestPki};
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, Response, StatusCode};

use crate::backend::watch::WatchQuery;

use super::{
    ForwardTarget, NovaBackend,
    config::{NovaConfig, Protocol, SharedSecret},
    tls::{TlsFiles, client_config},
};

const SECRET: &[u8] = b"s3cret";
const INSTANCE: &str = "6c8a3b0e-1d6f-4d2b-9a57-0f4ad3a7e001";
const PROJECT: &str = "d3b07384d113edec49eaa6238ad5ff00";
const META_DATA: &str = "/openstack/latest/meta_data.json";

fn target() -> ForwardTarget {
    ForwardTarget {
        instance_id: INSTANCE.parse().unwrap(),
        project_id: PROJECT.into(),
        guest_addr: Ipv4Addr::new(10, 0, 0, 5).into(),
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn fake_nova(secret: &[u8]) -> FakeNova {
    fake_nova_at(loopback(), secret).await
}

/// A fake nova on `addr`: a new one, or one back where a stopped one was.
async fn fake_nova_at(addr: SocketAddr, secret: &[u8]) -> FakeNova {
    FakeNova::start(
        addr,
        fake_nova::Config {
            secret: secret.to_vec(),
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

fn config_for(addr: SocketAddr) -> NovaConfig {
    NovaConfig {
        host: addr.ip().to_string(),
        port: addr.port(),
        protocol: Protocol::Http,
        tls: None,
        secret: SharedSecret(Arc::from(SECRET)),
        timeout: Duration::from_secs(5),
        cache_expiration: Duration::from_secs(15),
        stale_if_error: Duration::ZERO,
    }
}

fn request(
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

fn get(path: &str) -> Request<Full<Bytes>> {
    request(Method::GET, path, &[], "")
}

/// The status of a GET of `path`.
async fn status_of(backend: &NovaBackend, path: &str) -> StatusCode {
    send(backend, get(path)).await.0
}

/// Status and body as text.
async fn send(backend: &NovaBackend, request: Request<Full<Bytes>>) -> (StatusCode, String) {
    let response = backend.forward(&target(), request).await;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn nova_receives_exactly_the_proxy_headers_and_never_the_guests() {
    let nova = fake_nova(SECRET).await;
    let backend = NovaBackend::new(&config_for(nova.addr()));
    let spoofed = [
        ("X-Instance-ID", "11111111-2222-3333-4444-555555555555"),
        ("X-Tenant-ID", "someone-else"),
        ("X-Instance-ID-Signature", "0000"),
        ("X-Forwarded-For", "10.9.9.9"),
        (
            "X-Neutron-Network-ID",
            "aaaaaaaa-0000-0000-0000-000000000001",
        ),
        (
            "X-Neutron-Router-ID",
            "bbbbbbbb-0000-0000-0000-000000000002",
        ),
        ("X-Metadata-Provider", "lb-1"),
        ("Host", "169.254.169.254"),
        ("Accept", "application/json"),
    ];
    let (status, body) = send(&backend, request(Method::GET, META_DATA, &spoofed, "")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["uuid"], INSTANCE);
    assert_eq!(doc["project_id"], PROJECT);

    let (status, _) = send(
        &backend,
        request(Method::GET, "/latest/meta-data/?probe=1&x=y", &spoofed, ""),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let requests = nova.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].path, "/latest/meta-data/?probe=1&x=y",
        "path and query pass through"
    );
    for seen in &requests {
        assert_eq!(seen.method, "GET");
        assert_eq!(seen.header_values("x-instance-id"), [INSTANCE]);
        assert_eq!(seen.header_values("x-tenant-id"), [PROJECT]);
        assert_eq!(
            seen.header_values("x-instance-id-signature"),
            [super::sign::sign_instance_id(SECRET, INSTANCE)]
        );
        assert_eq!(seen.header_values("x-forwarded-for"), ["10.0.0.5"]);
        assert_eq!(seen.header_values("host"), [nova.addr().to_string()]);
        assert_eq!(seen.header_values("accept"), ["application/json"]);
        for (name, _) in &seen.headers {
            assert!(
                !name.starts_with("x-neutron-") && !name.starts_with("x-metadata-provider"),
                "{name} leaked"
            );
        }
    }
}

#[tokio::test]
async fn connections_to_nova_are_kept_alive() {
    let nova = fake_nova(SECRET).await;
    let backend = NovaBackend::new(&config_for(nova.addr()));
    for n in 0..20 {
        let path = format!("/openstack/latest/item-{n}");
        assert_eq!(
            backend.forward(&target(), get(&path)).await.status(),
            StatusCode::OK
        );
    }
    assert_eq!(nova.request_count(), 20);
    assert_eq!(
        nova.connection_count(),
        1,
        "one pooled connection for sequential requests"
    );
}

#[tokio::test]
async fn wrong_secret_is_nova_403_and_not_cached() {
    let nova = fake_nova(b"another secret").await;
    let backend = NovaBackend::new(&config_for(nova.addr()));
    for _ in 0..2 {
        let (status, body) = send(&backend, get(META_DATA)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body.contains("Invalid proxy request signature"), "{body}");
    }
    assert_eq!(nova.request_count(), 2);
}

#[tokio::test]
async fn statuses_pass_or_become_500() {
    let nova = fake_nova(SECRET).await;
    let backend = NovaBackend::new(&config_for(nova.addr()));
    for (code, expected) in [
        (400, 400),
        (409, 409),
        (500, 500),
        (502, 502),
        (503, 503),
        (504, 504),
        (201, 500),
        (302, 500),
        (401, 500),
        (418, 500),
        (501, 500),
    ] {
        let path = format!("/openstack/latest/status-{code}");
        nova.script(&path, code, "scripted");
        let response = backend.forward(&target(), get(&path)).await;
        assert_eq!(response.status().as_u16(), expected, "nova answered {code}");
    }
    // 404 from nova passes through too, with nova's body.
    let (status, _) = send(&backend, get("/nothing-here")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // nova's project check: a mismatching project is nova's 404.
    nova.set_project(INSTANCE, "the-real-project");
    let (status, _) = send(&backend, get("/openstack/2012-08-10/meta_data.json")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn password_post_passes_through_uncached_and_invalidates() {
    let nova = fake_nova(SECRET).await;
    let backend = NovaBackend::new(&config_for(nova.addr()));
    let path = "/openstack/latest/password";
    let (status, body) = send(&backend, get(path)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
    let (status, _) = send(&backend, get(path)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        nova.request_count(),
        1,
        "the second GET came from the cache"
    );

    let post = |body| request(Method::POST, path, &[("Content-Type", "text/plain")], body);
    let (status, _) = send(&backend, post("ZW5jcnlwdGVk")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(nova.password(INSTANCE).as_deref(), Some("ZW5jcnlwdGVk"));
    let seen = nova.requests().pop().unwrap();
    assert_eq!(
        (seen.method.as_str(), seen.body.as_str()),
        ("POST", "ZW5jcnlwdGVk")
    );
    assert_eq!(seen.header_values("content-type"), ["text/plain"]);
    assert_eq!(seen.header_values("content-length"), ["12"]);

    // Not cached: a second POST reaches nova, which refuses to overwrite.
    let (status, _) = send(&backend, post("b3RoZXI=")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(nova.request_count(), 3);

    // The POST invalidated the cached (empty) password.
    let (status, body) = send(&backend, get(path)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ZW5jcnlwdGVk"));
    assert_eq!(nova.request_count(), 4);
}

#[tokio::test]
async fn oversized_body_is_refused_without_asking_nova() {
    let nova = fake_nova(SECRET).await;
    let backend = NovaBackend::new(&config_for(nova.addr()));
    let big: &'static str = Box::leak(
        "x".repeat(super::backend::MAX_REQUEST_BODY + 1)
            .into_boxed_str(),
    );
    let (status, _) = send(
        &backend,
        request(Method::POST, "/openstack/latest/password", &[], big),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(nova.request_count(), 0);
}

#[tokio::test]
async fn nova_down_is_503_and_service_resumes_when_it_returns() {
    let nova = fake_nova(SECRET).await;
    let addr = nova.addr();
    let backend = NovaBackend::new(&config_for(addr));
    assert_eq!(
        status_of(&backend, "/latest/meta-data/hostname").await,
        StatusCode::OK
    );
    nova.stop();

    // (hostname is cached now; instance-id is not.)
    let started = Instant::now();
    let (status, body) = send(&backend, get("/latest/meta-data/instance-id")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The 503 was not cached: asked again, still 503 (refused), not a stale answer.
    assert_eq!(
        status_of(&backend, "/latest/meta-data/instance-id").await,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let nova = fake_nova_at(addr, SECRET).await;
    assert_eq!(
        status_of(&backend, "/latest/meta-data/instance-id").await,
        StatusCode::OK
    );
    assert_eq!(nova.request_count(), 1);
}

#[tokio::test]
async fn hung_nova_is_503_at_the_timeout() {
    let nova = fake_nova(SECRET).await;
    nova.set_delay(Duration::from_secs(30));
    let config = NovaConfig {
        timeout: Duration::from_millis(300),
        ..config_for(nova.addr())
    };
    let backend = NovaBackend::new(&config);
    let started = Instant::now();
    let (status, _) = send(&backend, get(META_DATA)).await;
    let waited = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // Once nova answers in time again, so do we.
    nova.set_delay(Duration::ZERO);
    assert_eq!(status_of(&backend, META_DATA).await, StatusCode::OK);
}

/// An https fake nova and the backend's TLS settings for it.
async fn https_nova(dir: &Path, require_client_cert: bool) -> (FakeNova, fake_nova::pki::PkiFiles) {
    let pki = TestPki::generate(&["127.0.0.1"]);
    let files = pki.write_to(dir).unwrap();
    let config = fake_nova::Config {
        secret: SECRET.to_vec(),
        tls: Some(pki.server_tls(require_client_cert)),
        ..Default::default()
    };
    (FakeNova::start(loopback(), config).await.unwrap(), files)
}

/// A backend asking nova at `addr` over https with these TLS settings.
fn https_backend(addr: SocketAddr, files: TlsFiles<'_>) -> NovaBackend {
    NovaBackend::new(&NovaConfig {
        protocol: Protocol::Https,
        tls: Some(client_config(&files).unwrap()),
        ..config_for(addr)
    })
}

/// TLS settings that trust `ca` and present no client certificate.
fn trust(ca: &Path) -> TlsFiles<'_> {
    TlsFiles {
        ca_cert: Some(ca),
        client_identity: None,
        insecure: false,
    }
}

#[tokio::test]
async fn https_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (nova, files) = https_nova(dir.path(), false).await;
    let trusting = https_backend(nova.addr(), trust(&files.ca));
    assert_eq!(status_of(&trusting, META_DATA).await, StatusCode::OK);

    // Another CA: the certificate is refused, the guest sees 503.
    let other_dir = tempfile::tempdir().unwrap();
    let other = TestPki::generate(&["127.0.0.1"])
        .write_to(other_dir.path())
        .unwrap();
    let distrusting = https_backend(nova.addr(), trust(&other.ca));
    assert_eq!(
        status_of(&distrusting, META_DATA).await,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // --nova-metadata-insecure accepts it anyway.
    let insecure = https_backend(
        nova.addr(),
        TlsFiles {
            ca_cert: None,
            client_identity: None,
            insecure: true,
        },
    );
    assert_eq!(status_of(&insecure, META_DATA).await, StatusCode::OK);
    assert_eq!(nova.request_count(), 2);
}

#[tokio::test]
async fn https_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (nova, files) = https_nova(dir.path(), true).await;
    let with_cert = https_backend(
        nova.addr(),
        TlsFiles {
            client_identity: Some((&files.client_cert, &files.client_key)),
            ..trust(&files.ca)
        },
    );
    assert_eq!(status_of(&with_cert, META_DATA).await, StatusCode::OK);
    let seen = nova.requests().pop().unwrap();
    assert_eq!(seen.header_values("x-instance-id"), [INSTANCE]);

    let without_cert = https_backend(nova.addr(), trust(&files.ca));
    assert_eq!(
        status_of(&without_cert, META_DATA).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(nova.request_count(), 1);
}

#[tokio::test]
async fn boot_storm_of_identical_gets_is_one_upstream_request() {
    let nova = fake_nova(SECRET).await;
    // Slow enough that all 200 arrive while the first is in flight.
    nova.set_delay(Duration::from_millis(300));
    let backend = NovaBackend::new(&config_for(nova.addr()));
    let guests: Vec<_> = (0..200)
        .map(|_| {
            let backend = backend.clone();
            tokio::spawn(async move { send(&backend, get(META_DATA)).await })
        })
        .collect();
    let mut bodies = std::collections::BTreeSet::new();
    for guest in guests {
        let (status, body) = guest.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        bodies.insert(body);
    }
    assert_eq!(nova.request_count(), 1);
    assert_eq!(bodies.len(), 1, "everyone got the one answer");
    let stats = backend.stats();
    assert_eq!(stats.upstream_requests, 1);
    assert_eq!(stats.cache.misses, 1);
    assert_eq!(stats.cache.coalesced + stats.cache.hits, 199);
}

#[tokio::test]
async fn cached_answers_expire() {
    let nova = fake_nova(SECRET).await;
    let config = NovaConfig {
        cache_expiration: Duration::from_millis(400),
        ..config_for(nova.addr())
    };
    let backend = NovaBackend::new(&config);
    let path = META_DATA;
    let first = send(&backend, get(path)).await.1;
    assert_eq!(send(&backend, get(path)).await.1, first);
    // Same path, other query: its own entry.
    send(&backend, get(&format!("{META_DATA}?x"))).await;
    assert_eq!(nova.request_count(), 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = send(&backend, get(path)).await.1;
    assert_ne!(
        later, first,
        "a fresh answer (new sequence number) after expiry"
    );
    assert_eq!(nova.request_count(), 3);
}

#[tokio::test]
async fn errors_are_not_cached_but_404_is() {
    let nova = fake_nova(SECRET).await;
    let backend = NovaBackend::new(&config_for(nova.addr()));
    nova.script("/openstack/latest/vendor_data2.json", 500, "boom");
    for _ in 0..2 {
        assert_eq!(
            status_of(&backend, "/openstack/latest/vendor_data2.json").await,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    assert_eq!(nova.request_count(), 2);
    for _ in 0..2 {
        assert_eq!(
            status_of(&backend, "/openstack/latest/missing.json").await,
            StatusCode::NOT_FOUND
        );
    }
    assert_eq!(nova.request_count(), 3);
}

#[tokio::test]
async fn zero_expiration_disables_the_cache() {
    let nova = fake_nova(SECRET).await;
    let config = NovaConfig {
        cache_expiration: Duration::ZERO,
        ..config_for(nova.addr())
    };
    let backend = NovaBackend::new(&config);
    for _ in 0..3 {
        assert_eq!(status_of(&backend, META_DATA).await, StatusCode::OK);
    }
    assert_eq!(nova.request_count(), 3);
}

/// `?wait_for_change=true&last_etag=E` for `path`, waiting at most `secs`.
fn watch_request(path: &str, etag: &str, secs: u64) -> (Request<Full<Bytes>>, WatchQuery) {
    let etag = etag.replace('"', "%22");
    let query = format!("wait_for_change=true&last_etag={etag}&timeout_sec={secs}");
    let watch = WatchQuery::parse(Some(&query)).unwrap().unwrap();
    (get(&format!("{path}?{query}")), watch)
}

fn header(response: &Response<Full<Bytes>>, name: hyper::header::HeaderName) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|value| value.to_str().unwrap().to_owned())
}

/// Eight guests watch one path: nova is asked once per interval (not eight
/// times), a poll that finds the same content wakes no one, and a change
/// wakes them all with the new ETag. Watch parameters never reach nova.
#[tokio::test]
async fn watchers_share_one_poll_per_interval_and_wake_on_change() {
    let nova = fake_nova(SECRET).await;
    let path = "/openstack/latest/user_data";
    nova.script(path, 200, "v1");
    let config = NovaConfig {
        cache_expiration: Duration::from_millis(300),
        ..config_for(nova.addr())
    };
    let backend = NovaBackend::new(&config);
    let first = backend.forward(&target(), get(path)).await;
    let etag = header(&first, hyper::header::ETAG).expect("a 200 carries an ETag");
    let (_shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    let watchers: Vec<_> = (0..8)
        .map(|_| {
            let backend = backend.clone();
            let shutdown = shutdown.clone();
            let etag = etag.clone();
            tokio::spawn(async move {
                let (request, watch) = watch_request(path, &etag, 30);
                let started = Instant::now();
                let response = backend.watch(&target(), request, &watch, shutdown).await;
                (response, started.elapsed())
            })
        })
        .collect();
    // About four intervals of unchanged content.
    tokio::time::sleep(Duration::from_millis(1250)).await;
    let polls = nova.requests().iter().filter(|r| r.path == path).count();
    assert!(
        (4..=6).contains(&polls),
        "one request per interval for 8 watchers: {polls}"
    );
    assert!(
        watchers.iter().all(|w| !w.is_finished()),
        "unchanged content woke a watcher"
    );
    nova.script(path, 200, "v2");
    for watcher in watchers {
        let (response, waited) = watcher.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let new_etag = header(&response, hyper::header::ETAG).unwrap();
        assert_ne!(new_etag, etag);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "v2");
        assert!(waited < Duration::from_secs(3), "{waited:?}");
    }
    assert!(
        nova.requests()
            .iter()
            .all(|r| !r.path.contains("wait_for_change")),
        "watch parameters went to nova"
    );
    assert_eq!(backend.stats().cache.stale_served, 0);
}

/// A watch whose ETag is not the current one is answered at once; one that
/// times out gets the same content and ETag.
#[tokio::test]
async fn a_stale_etag_answers_at_once_and_a_timeout_answers_the_same() {
    let nova = fake_nova(SECRET).await;
    let path = "/openstack/latest/vendor_data.json";
    nova.script(path, 200, "{}");
    let backend = NovaBackend::new(&config_for(nova.addr()));
    let (_tx, shutdown) = tokio::sync::watch::channel(false);
    let (request, watch) = watch_request(path, "not-the-current-one", 30);
    let started = Instant::now();
    let response = backend
        .watch(&target(), request, &watch, shutdown.clone())
        .await;
    assert!(started.elapsed() < Duration::from_secs(1));
    let etag = header(&response, hyper::header::ETAG).unwrap();
    let (request, watch) = watch_request(path, &etag, 1);
    let started = Instant::now();
    let response = backend.watch(&target(), request, &watch, shutdown).await;
    assert!(started.elapsed() >= Duration::from_millis(950));
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, hyper::header::ETAG).unwrap(), etag);
}

/// Shutdown ends a held watch at once, with the current content.
#[tokio::test]
async fn shutdown_ends_watches() {
    let nova = fake_nova(SECRET).await;
    let path = "/openstack/latest/user_data";
    nova.script(path, 200, "same");
    let backend = NovaBackend::new(&config_for(nova.addr()));
    let etag = header(
        &backend.forward(&target(), get(path)).await,
        hyper::header::ETAG,
    )
    .unwrap();
    let (tx, shutdown) = tokio::sync::watch::channel(false);
    let (request, watch) = watch_request(path, &etag, 3600);
    let held = tokio::spawn({
        let backend = backend.clone();
        async move { backend.watch(&target(), request, &watch, shutdown).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.send(true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(1), held)
        .await
        .expect("the watch ended at shutdown")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// `--stale-if-error`: while nova is down a GET gets the last good answer
/// with its Age; a POST never does; once the answer is older than the
/// limit it is 503; when nova is back answers are fresh again.
#[tokio::test]
async fn stale_if_error_serves_young_answers_while_nova_is_down() {
    let nova = fake_nova(SECRET).await;
    let addr = nova.addr();
    let config = NovaConfig {
        cache_expiration: Duration::from_millis(100),
        stale_if_error: Duration::from_secs(2),
        timeout: Duration::from_secs(1),
        ..config_for(addr)
    };
    let backend = NovaBackend::new(&config);
    let path = META_DATA;
    let (status, fresh) = send(&backend, get(path)).await;
    assert_eq!(status, StatusCode::OK);
    nova.stop();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let response = backend.forward(&target(), get(path)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, hyper::header::AGE).as_deref(), Some("1"));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, fresh, "the last good answer");
    // Another instance never gets it.
    let other = ForwardTarget {
        instance_id: "6c8a3b0e-1d6f-4d2b-9a57-0f4ad3a7e002".parse().unwrap(),
        ..target()
    };
    assert_eq!(
        backend.forward(&other, get(path)).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Nor a POST.
    let (status, _) = send(
        &backend,
        request(Method::POST, "/openstack/latest/password", &[], "pw"),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(backend.stats().cache.stale_served, 1);

    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (status, _) = send(&backend, get(path)).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "older than the limit"
    );

    let nova = fake_nova_at(addr, SECRET).await;
    let response = backend.forward(&target(), get(path)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        header(&response, hyper::header::AGE).is_none(),
        "fresh again"
    );
    assert_eq!(nova.request_count(), 1);
}
