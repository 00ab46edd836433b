//! What a guest sends over the wire, to the real guest server on a TCP
//! socket: request lines, paths, headers and bodies of every kind, and
//! plain garbage. Two instances, A and B, are registered; B's document and
//! password are full of markers. Guest A's connections (the flow lookup
//! says slot A for every peer) may claim B's identity in every header,
//! present B's own IMDSv2 token, or walk paths with B's UUID in them: no
//! answer ever carries a byte of B's data, and nothing panics.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request};
use proptest::{collection, prelude::*, prop_assert, prop_assert_eq};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::watch,
};

use super::{check, panics_on_server_threads, server_runtime};
use crate::{
    backend::{
        Backend, Guest, Responder,
        local::{ApiConfig, ApiContext, handle},
        watch::{MAX_WATCHES_PER_PORT, WatchLimiter},
    },
    ingress::{
        dispatch::Dispatcher,
        limits::ConnectionLimiter,
        ratelimit::RateLimiter,
        server::{FlowLookup, GuestServer},
    },
    state::{PortAddRequest, Registry},
};

const A: &str = "aaaaaaaa-1111-4111-8111-aaaaaaaaaaaa";
const B: &str = "bbbbbbbb-2222-4222-8222-bbbbbbbbbbbb";
/// Every value of B's that a guest could be served contains this.
const B_MARK: &str = "bsecret";
const A_MARK: &str = "asecret";

/// Every connection comes from A's tap.
struct AllFromA;

impl FlowLookup for AllFromA {
    fn slot(&self, _peer: Ipv4Addr) -> Option<u32> {
        Some(1)
    }

    fn guest_addr(&self, _peer: SocketAddrV4) -> Option<IpAddr> {
        Some(Ipv4Addr::new(10, 0, 0, 5).into())
    }
}

/// An instance document with `mark` in every field that can carry text.
fn marked_document(uuid: &str, mark: &str) -> serde_json::Value {
    use base64::Engine as _;
    json!({
        "uuid": uuid,
        "name": format!("{mark}-name"),
        "hostname": format!("{mark}-host"),
        "project_id": format!("{mark}-project"),
        "availability_zone": format!("{mark}-zone"),
        "public_keys": {format!("{mark}-key"): format!("ssh-ed25519 AAAA {mark}-pubkey")},
        "meta": {format!("{mark}-meta-key"): format!("{mark}-meta-value")},
        "user_data": base64::engine::general_purpose::STANDARD.encode(format!("#!/bin/sh\necho {mark}-userdata\n")),
        "vendor_data": {"v": format!("{mark}-vendor")},
        "network_data": {"links": [{"id": format!("{mark}-link")}]},
        "devices": [{"type": "nic", "mac": "fa:16:3e:00:00:09", "tags": [format!("{mark}-tag")]}],
        "ec2": {
            "instance_id": format!("i-{mark}"),
            "instance_type": format!("{mark}-type"),
            "security_groups": [format!("{mark}-sg")],
            "block_device_mapping": {"root": format!("/dev/{mark}")}
        },
        "imds": {"tokens": "optional", "hop_limit": 1}
    })
}

/// One request as guest A might write it.
#[derive(Debug, Clone)]
struct WireRequest {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Content-Length as sent: right, missing, or wrong on purpose.
    length: Length,
}

#[derive(Debug, Clone, Copy)]
enum Length {
    Right,
    Missing,
    Wrong(u16),
    Chunked,
}

impl WireRequest {
    /// The request as bytes; `last` ones ask the server to close after
    /// answering, so the client knows when it has everything.
    fn bytes(&self, b_token: &str, last: bool) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.target).into_bytes();
        for (name, value) in &self.headers {
            let value = value.replace("{B_TOKEN}", b_token);
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        if last {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        match self.length {
            Length::Right => {
                out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes())
            }
            Length::Missing => {}
            Length::Wrong(n) => {
                out.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes())
            }
            Length::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        }
        out.extend_from_slice(b"\r\n");
        if matches!(self.length, Length::Chunked) {
            out.extend_from_slice(format!("{:x}\r\n", self.body.len()).as_bytes());
            out.extend_from_slice(&self.body);
            out.extend_from_slice(b"\r\n0\r\n\r\n");
        } else {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        16 => prop_oneof![
            Just(""), Just("openstack"), Just("latest"), Just("ec2"), Just("meta-data"),
            Just("user-data"), Just("user_data"), Just("password"), Just("api"),
            Just("token"), Just("dynamic"), Just("instance-identity"), Just("document"),
            Just("2009-04-04"), Just("2013-04-04"), Just("2016-06-30"), Just("meta_data.json"),
            Just("vendor_data.json"), Just("vendor_data2.json"), Just("network_data.json"),
            Just("public-keys"), Just("0"), Just("openssh-key"), Just("hostname"),
            Just("instance-id"), Just("local-hostname"), Just("placement"),
            Just("block-device-mapping"), Just("security-groups"), Just(".."), Just("."),
            Just("%2e%2e"), Just("%2F"), Just("%00"), Just(B), Just("tap-b"), Just("2"),
        ]
        .prop_map(str::to_owned),
        1 => "[A-Za-z0-9._~%!$&'()*+,;=:@-]{1,12}",
        // Characters no URI may hold: refused before any lookup.
        1 => "[!-~&&[^/?#]]{1,12}",
    ]
}

/// Paths that answer with the asking instance's data.
const DATA_PATHS: [&str; 14] = [
    "/openstack/latest/meta_data.json",
    "/openstack/2013-04-04/user_data",
    "/openstack/latest/password",
    "/openstack/latest/vendor_data.json",
    "/openstack/latest/network_data.json",
    "/latest/meta-data/hostname",
    "/latest/meta-data/instance-id",
    "/latest/user-data",
    "/latest/meta-data/public-keys/0/openssh-key",
    "/latest/dynamic/instance-identity/document",
    "/2009-04-04/meta-data/placement/availability-zone",
    "/latest/meta-data/security-groups",
    "/latest/meta-data/block-device-mapping/root",
    "/latest/api/token",
];

fn target() -> impl Strategy<Value = String> {
    let path = prop_oneof![
        // A path with data, maybe with more segments before or after it.
        (
            proptest::sample::select(&DATA_PATHS[..]),
            collection::vec(segment(), 0..2),
            collection::vec(segment(), 0..2),
        )
            .prop_map(|(path, before, after)| {
                let mut path = path.to_owned();
                if !before.is_empty() {
                    path = format!("/{}{path}", before.join("/"));
                }
                if !after.is_empty() {
                    path = format!("{path}/{}", after.join("/"));
                }
                path
            }),
        collection::vec(segment(), 0..5).prop_map(|segments| format!("/{}", segments.join("/"))),
    ];
    (
        path,
        any::<bool>(),
        proptest::option::weighted(0.1, "[!-~&&[^#]]{0,16}"),
    )
        .prop_map(|(mut target, slash, query)| {
            if slash {
                target.push('/');
            }
            if let Some(query) = query {
                target.push('?');
                target.push_str(&query);
            }
            target
        })
}

fn header() -> impl Strategy<Value = (String, String)> {
    let claims = prop_oneof![
        Just(("X-Instance-ID", B)),
        Just(("X-Tenant-ID", "bsecret-project")),
        Just(("X-Instance-ID-Signature", "0000")),
        Just(("X-Forwarded-For", "10.0.0.6")),
        Just(("X-Neutron-Network-ID", B)),
        Just(("X-Neutron-Router-ID", B)),
        Just(("X-Real-IP", "10.0.0.6")),
        Just(("Forwarded", "for=10.0.0.6")),
        Just(("X-aws-ec2-metadata-token", "{B_TOKEN}")),
        Just(("X-aws-ec2-metadata-token-ttl-seconds", "21600")),
        Just(("X-aws-ec2-metadata-token-ttl-seconds", "0")),
        Just((
            "X-aws-ec2-metadata-token-ttl-seconds",
            "99999999999999999999"
        )),
        Just(("Accept", "application/json")),
        Just(("Accept", "text/html")),
        Just(("Accept", "*/*;q=0.1, text/plain")),
        Just(("Host", "169.254.169.254")),
        Just(("Connection", "close")),
        Just(("Connection", "keep-alive, X-Instance-ID")),
        Just(("Expect", "100-continue")),
        Just(("Range", "bytes=0-1")),
    ]
    .prop_map(|(name, value)| (name.to_owned(), value.to_owned()));
    prop_oneof![
        4 => claims,
        1 => ("[A-Za-z0-9-]{1,16}", "[ -~]{0,32}"),
        1 => "[!-~]{0,64}".prop_map(|token| ("X-aws-ec2-metadata-token".to_owned(), token)),
    ]
}

fn wire_request() -> impl Strategy<Value = WireRequest> {
    let method = prop_oneof![
        4 => Just("GET".to_owned()),
        1 => Just("HEAD".to_owned()),
        2 => Just("PUT".to_owned()),
        1 => Just("POST".to_owned()),
        1 => prop_oneof![Just("DELETE"), Just("OPTIONS"), Just("PATCH"), Just("CONNECT")]
            .prop_map(str::to_owned),
        1 => "[A-Z]{1,10}",
    ];
    let length = prop_oneof![
        8 => Just(Length::Right),
        4 => Just(Length::Missing),
        1 => any::<u16>().prop_map(Length::Wrong),
        2 => Just(Length::Chunked),
    ];
    (
        method,
        target(),
        collection::vec(header(), 0..6),
        collection::vec(any::<u8>(), 0..48),
        length,
    )
        .prop_map(|(method, target, headers, body, length)| WireRequest {
            method,
            target,
            headers,
            body,
            length,
        })
}

/// What a connection carries: up to three requests back to back, or a
/// request with bytes of it replaced, or nothing but garbage.
#[derive(Debug, Clone)]
enum Connection {
    Requests(Vec<WireRequest>),
    Corrupted(WireRequest, usize, u8),
    Garbage(Vec<u8>),
}

fn connection() -> impl Strategy<Value = Connection> {
    prop_oneof![
        8 => collection::vec(wire_request(), 1..=3).prop_map(Connection::Requests),
        1 => (wire_request(), any::<usize>(), any::<u8>())
            .prop_map(|(r, at, byte)| Connection::Corrupted(r, at, byte)),
        1 => collection::vec(any::<u8>(), 0..256).prop_map(Connection::Garbage),
    ]
}

impl Connection {
    fn bytes(&self, b_token: &str) -> Vec<u8> {
        match self {
            Connection::Requests(requests) => requests
                .iter()
                .enumerate()
                .flat_map(|(index, r)| r.bytes(b_token, index + 1 == requests.len()))
                .collect(),
            Connection::Corrupted(request, at, byte) => {
                let mut bytes = request.bytes(b_token, true);
                let at = at % bytes.len();
                bytes[at] = *byte;
                bytes
            }
            Connection::Garbage(bytes) => bytes.clone(),
        }
    }
}

/// Sends `bytes` on a new connection and reads everything the server
/// answers until it closes. A server still waiting for more (a body
/// longer than what came) is told there is no more by a half-close, after
/// which it gives up on the request and closes.
async fn exchange(server: std::net::SocketAddr, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    const IDLE: Duration = Duration::from_millis(150);
    let mut stream = TcpStream::connect(server).await?;
    stream.write_all(bytes).await?;
    let mut answer = Vec::new();
    let mut half_closed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(IDLE, stream.read(&mut chunk)).await {
            Ok(Ok(0)) => return Ok(answer),
            Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
            // A reset after the answer (unread bytes left when it closed).
            Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionReset => return Ok(answer),
            Ok(Err(err)) => return Err(err),
            Err(_) if !half_closed => {
                stream.shutdown().await?;
                half_closed = true;
            }
            Err(_) if tokio::time::Instant::now() > deadline => {
                return Err(std::io::Error::other(
                    "the server neither answered nor closed",
                ));
            }
            Err(_) => {}
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[test]
fn fuzz_guest_requests_over_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(dir.path()).unwrap();
    for (uuid, mark) in [(A, A_MARK), (B, B_MARK)] {
        registry
            .put_instance(marked_document(uuid, mark).to_string().as_bytes())
            .unwrap();
    }
    for (ifname, uuid) in [("tap-a", A), ("tap-b", B)] {
        registry
            .add_port(PortAddRequest {
                ifname: ifname.into(),
                instance: uuid.into(),
                ips: vec!["10.0.0.5".into()],
                ..Default::default()
            })
            .unwrap();
    }
    registry
        .set_password(&B.parse().unwrap(), "bsecret-password")
        .unwrap();
    let key = registry.secret("imds-token-key").unwrap();
    let api =
        |registry: &Arc<Registry>| ApiContext::new(ApiConfig::default(), key, registry.clone());

    let runtime = server_runtime();
    // B's own token, minted for B's port as B would get it.
    let b_token = runtime.block_on(async {
        let snapshot = registry.snapshot();
        let guest = Guest {
            port: snapshot.ports["tap-b"].clone(),
            guest_addr: Some(Ipv4Addr::new(10, 0, 0, 5).into()),
        };
        let request = Request::builder()
            .method(Method::PUT)
            .uri("/latest/api/token")
            .header("x-aws-ec2-metadata-token-ttl-seconds", "21600")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let doc = snapshot.instance(&B.parse().unwrap()).cloned();
        let reply = handle(&api(&registry), &guest, doc, request).await;
        let body = reply
            .response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    });
    assert!(!b_token.is_empty());

    let (shutdown, shutdown_rx) = watch::channel(false);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = listener.local_addr().unwrap();
    let server = Arc::new(GuestServer {
        flows: Arc::new(AllFromA),
        registry: registry.clone(),
        dispatcher: Arc::new(Dispatcher {
            responder: Arc::new(Responder {
                backend: Backend::Local(api(&registry)),
                registry: registry.clone(),
                watches: WatchLimiter::new(MAX_WATCHES_PER_PORT),
                shutdown: shutdown_rx.clone(),
            }),
            requests: RateLimiter::new(1e9, u32::MAX),
            metrics: Arc::new(crate::metrics::Metrics::new(
                crate::metrics::BackendLabel::Local,
            )),
        }),
        connections: ConnectionLimiter::new(Default::default()),
    });
    let server_task = runtime.spawn(server.run(listener, shutdown_rx));

    let panics_before = panics_on_server_threads();
    let answered_with_a = AtomicUsize::new(0);
    check("guest_wire", connection(), |connection| {
        let bytes = connection.bytes(&b_token);
        let answer = runtime
            .block_on(exchange(server_addr, &bytes))
            .map_err(|err| TestCaseError::fail(format!("exchange: {err}")))?;
        for mark in [B_MARK.as_bytes(), b_token.as_bytes()] {
            prop_assert!(
                !contains(&answer, mark),
                "guest A got B's data ({}): {}",
                String::from_utf8_lossy(mark),
                String::from_utf8_lossy(&answer)
            );
        }
        if contains(&answer, A_MARK.as_bytes()) {
            answered_with_a.fetch_add(1, Ordering::Relaxed);
        }
        prop_assert_eq!(
            panics_on_server_threads(),
            panics_before,
            "the server panicked"
        );
        Ok(())
    });
    // Not vacuous: guest A was served its own data along the way.
    assert!(
        answered_with_a.load(Ordering::Relaxed) > 0,
        "no case got A's own data: the server answered nothing useful"
    );
    shutdown.send(true).unwrap();
    runtime.block_on(server_task).unwrap();
}
