//! A hostile nova-api-metadata: any status line, any headers (huge,
//! duplicated, non-UTF-8, wrong lengths, chunked or not), any body, bytes
//! left over after the answer, answers that come too late. Two guests of
//! two instances ask at once through one nova backend (one connection
//! pool, one cache). Nothing panics; each guest gets a status neutron's
//! agent passes on, or our own 500 or 503, and never an answer nova gave
//! for the other instance.
use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, StatusCode};
use proptest::{collection, prelude::*, prop_assert, prop_assert_eq};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::{check, panics_on_server_threads, server_runtime};
use crate::{
    backend::{
        Guest,
        nova::{
            NovaBackend,
            config::{NovaConfig, Protocol, SharedSecret},
        },
    },
    state::{Port, port::PortSpec},
};

const A: &str = "aaaaaaaa-1111-4111-8111-aaaaaaaaaaaa";
const B: &str = "bbbbbbbb-2222-4222-8222-bbbbbbbbbbbb";
/// What our fake nova puts in every answer, followed by the instance the
/// request was for (from the X-Instance-ID the daemon sent).
const ANSWER_FOR: &str = "nova-answer-for-";
/// How long the backend waits for nova.
const TIMEOUT: Duration = Duration::from_millis(150);

/// How nova answers during one case.
#[derive(Debug, Clone)]
struct Script {
    status_line: String,
    headers: Vec<(String, Vec<u8>)>,
    body_tail: Vec<u8>,
    framing: Framing,
    /// Bytes after the answer: another answer, for the same instance.
    leftover: bool,
    close: bool,
    late: bool,
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    Length,
    WrongLength(u16),
    DoubleLength,
    Chunked,
    BrokenChunks,
    UntilClose,
}

fn status_line() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop_oneof![
            Just(200u16), Just(201), Just(204), Just(301), Just(304), Just(400), Just(401),
            Just(403), Just(404), Just(409), Just(418), Just(500), Just(502), Just(503),
            Just(504), Just(599),
        ]
        .prop_map(|code| format!("HTTP/1.1 {code} Whatever")),
        1 => Just("HTTP/1.0 200 OK".to_owned()),
        1 => "[ -~]{0,30}",
    ]
}

fn header() -> impl Strategy<Value = (String, Vec<u8>)> {
    prop_oneof![
        Just(("Content-Type".to_owned(), b"text/plain".to_vec())),
        Just((
            "Content-Type".to_owned(),
            b"application/json; charset=\xff\xfe".to_vec()
        )),
        Just(("Content-Encoding".to_owned(), b"gzip".to_vec())),
        Just(("Set-Cookie".to_owned(), b"session=bsecret".to_vec())),
        Just(("Connection".to_owned(), b"keep-alive".to_vec())),
        Just(("X-Instance-ID".to_owned(), B.as_bytes().to_vec())),
        Just(("X-Big".to_owned(), vec![b'a'; 9000])),
        ("[A-Za-z-]{1,12}", collection::vec(any::<u8>(), 0..24)),
    ]
}

fn framing() -> impl Strategy<Value = Framing> {
    prop_oneof![
        4 => Just(Framing::Length),
        1 => any::<u16>().prop_map(Framing::WrongLength),
        1 => Just(Framing::DoubleLength),
        2 => Just(Framing::Chunked),
        1 => Just(Framing::BrokenChunks),
        1 => Just(Framing::UntilClose),
    ]
}

fn script() -> impl Strategy<Value = Script> {
    (
        status_line(),
        collection::vec(header(), 0..5),
        collection::vec(any::<u8>(), 0..64),
        framing(),
        proptest::bool::weighted(0.2),
        proptest::bool::weighted(0.3),
        proptest::bool::weighted(0.02),
    )
        .prop_map(
            |(status_line, headers, body_tail, framing, leftover, close, late)| Script {
                status_line,
                headers,
                body_tail,
                framing,
                leftover,
                close,
                late,
            },
        )
}

impl Script {
    fn answer(&self, instance: &str) -> Vec<u8> {
        let mut body = format!("{ANSWER_FOR}{instance}\n").into_bytes();
        body.extend_from_slice(&self.body_tail);
        let mut out = format!("{}\r\n", self.status_line).into_bytes();
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        if self.close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        match self.framing {
            Framing::Length => {
                out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                out.extend_from_slice(&body);
            }
            Framing::WrongLength(n) => {
                out.extend_from_slice(format!("Content-Length: {n}\r\n\r\n").as_bytes());
                out.extend_from_slice(&body);
            }
            Framing::DoubleLength => {
                out.extend_from_slice(
                    format!(
                        "Content-Length: {}\r\nContent-Length: {}\r\n\r\n",
                        body.len(),
                        body.len() + 1
                    )
                    .as_bytes(),
                );
                out.extend_from_slice(&body);
            }
            Framing::Chunked | Framing::BrokenChunks => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                let size = if matches!(self.framing, Framing::BrokenChunks) {
                    body.len() + 7
                } else {
                    body.len()
                };
                out.extend_from_slice(format!("{size:x}\r\n").as_bytes());
                out.extend_from_slice(&body);
                out.extend_from_slice(b"\r\n0\r\n\r\n");
            }
            Framing::UntilClose => {
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&body);
            }
        }
        if self.leftover {
            let extra = format!("{ANSWER_FOR}{instance}");
            out.extend_from_slice(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{extra}",
                    extra.len()
                )
                .as_bytes(),
            );
        }
        out
    }

    /// Whether the connection ends after this answer.
    fn ends_connection(&self) -> bool {
        self.close || matches!(self.framing, Framing::UntilClose) || self.late
    }
}

/// Requests the fake nova has answered.
static ANSWERED: AtomicU64 = AtomicU64::new(0);

/// The fake nova: answers every request as the current script says.
async fn serve(listener: TcpListener, script: Arc<Mutex<Option<Script>>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(answer_connection(stream, script.clone()));
    }
}

async fn answer_connection(mut stream: TcpStream, script: Arc<Mutex<Option<Script>>>) {
    let mut buffer = Vec::new();
    loop {
        // One request head (the daemon sends GETs without a body).
        let head_end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
        buffer.drain(..head_end);
        let instance = head
            .lines()
            .find_map(|line| line.strip_prefix("x-instance-id:"))
            .map(|value| value.trim().to_owned())
            .unwrap_or_default();
        let Some(script) = script.lock().unwrap().clone() else {
            return;
        };
        if script.late {
            tokio::time::sleep(TIMEOUT + Duration::from_millis(50)).await;
        }
        ANSWERED.fetch_add(1, Ordering::Relaxed);
        if stream.write_all(&script.answer(&instance)).await.is_err() || script.ends_connection() {
            return;
        }
    }
}

fn guest(uuid: &str, slot: u32) -> Guest {
    Guest {
        port: Arc::new(Port {
            spec: PortSpec {
                ifname: format!("tap{slot}"),
                instance: uuid.parse().unwrap(),
                port_id: None,
                mac: None,
                ips: vec![Ipv4Addr::new(10, 0, 0, 5).into()],
                network_id: None,
                project_id: Some("project".into()),
            },
            slot,
            source: crate::state::Source::Manual,
        }),
        guest_addr: Some(Ipv4Addr::new(10, 0, 0, 5).into()),
    }
}

/// What a guest got: status, header names, body.
async fn ask(nova: &NovaBackend, guest: &Guest, path: &str) -> (StatusCode, Vec<String>, Bytes) {
    let request = Request::builder()
        .uri(path)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = nova.serve_guest(guest, None, request).await;
    let status = response.status();
    let headers = response.headers().keys().map(|k| k.to_string()).collect();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[test]
fn fuzz_answers_from_a_hostile_nova() {
    let runtime = server_runtime();
    let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let nova_addr: SocketAddr = listener.local_addr().unwrap();
    let current = Arc::new(Mutex::new(None));
    runtime.spawn(serve(listener, current.clone()));
    let backend = NovaBackend::new(&NovaConfig {
        host: nova_addr.ip().to_string(),
        port: nova_addr.port(),
        protocol: Protocol::Http,
        tls: None,
        secret: SharedSecret(Arc::from(&b"secret"[..])),
        timeout: TIMEOUT,
        cache_expiration: Duration::from_secs(15),
        // Off: a stale answer kept across cases would be served in place
        // of the failure a case's nova gave.
        stale_if_error: Duration::ZERO,
    });
    let (guest_a, guest_b) = (guest(A, 1), guest(B, 2));
    let paths = [
        "/openstack/latest/meta_data.json",
        "/latest/meta-data/",
        "/",
    ];
    let panics_before = panics_on_server_threads();
    // Most cases ask paths no case asked before, so that nova is asked
    // (not the cache); some ask the same few, so cached and in-flight
    // answers are shared too.
    let fresh = AtomicU64::new(0);
    check(
        "nova_answers",
        (
            script(),
            0..paths.len(),
            0..paths.len(),
            proptest::bool::weighted(0.2),
        ),
        |(case, path_a, path_b, cached)| {
            *current.lock().unwrap() = Some(case);
            let query = if cached {
                String::new()
            } else {
                format!("?case={}", fresh.fetch_add(1, Ordering::Relaxed))
            };
            let (path_a, path_b) = (
                format!("{}{query}", paths[path_a]),
                format!("{}{query}", paths[path_b]),
            );
            let (a, b) = runtime.block_on(async {
                tokio::join!(
                    ask(&backend, &guest_a, &path_a),
                    ask(&backend, &guest_b, &path_b)
                )
            });
            for ((status, headers, body), own, other) in [(&a, A, B), (&b, B, A)] {
                prop_assert!(
                    [200, 400, 403, 404, 409, 500, 502, 503, 504].contains(&status.as_u16()),
                    "status {status}"
                );
                prop_assert!(
                    // ETag is the daemon's own, of the body it serves
                    // (backend::watch::etag), never nova's.
                    headers
                        .iter()
                        .all(|name| name == "content-type" || name == "etag"),
                    "nova's headers reached the guest: {headers:?}"
                );
                prop_assert!(
                    !contains(body, &format!("{ANSWER_FOR}{other}")),
                    "the guest of {own} got nova's answer for {other}: {body:?}"
                );
            }
            prop_assert_eq!(panics_on_server_threads(), panics_before, "a task panicked");
            Ok(())
        },
    );
    // Not vacuous: nova itself was asked, most cases twice.
    let (asked, answered) = (
        fresh.load(Ordering::Relaxed),
        ANSWERED.load(Ordering::Relaxed),
    );
    assert!(
        answered >= asked,
        "nova answered {answered} requests for {asked} uncached cases"
    );
}
