//! `--neutron-agent-socket PATH`: a drop-in for neutron-metadata-agent's
//! unix socket, so the haproxy proxies neutron runs in router and DHCP
//! namespaces keep working while a cloud moves host by host.
//!
//! haproxy (as neutron configures it) sends HTTP/1.1 with the guest's
//! address in `X-Forwarded-For` (`option forwardfor`) and the network or
//! router it serves in `X-Neutron-Network-ID` / `X-Neutron-Router-ID`. We
//! find the one registered port that matches and hand the request to the
//! same backend as the eBPF path:
//!
//! - Network-ID: the ports registered with that `--network-id` and the
//!   address among their `--ip`s. IPv6 addresses are taken as IPv4's; an
//!   IPv6 link-local address (neutron's proxy for `fe80::a9fe:a9fe`
//!   forwards the guest's) that is no port's `--ip` matches the port whose
//!   `--mac` it was made from (EUI-64), as neutron's agent matches it.
//! - Router-ID: we do not know which networks a router joins (neutron's
//!   agent asks neutron-server), so the ports having the address, on any
//!   network. Overlapping tenant addresses on one host then match several
//!   ports, and the answer is 404 rather than a guess.
//! - Exactly one port matches, or 404. No proxy header, or both kinds at
//!   once (a guest adding the kind haproxy does not set), is 400.
//!
//! Trust: only the last value of each header is used. haproxy appends its
//! own after whatever the guest sent (`add-header`, `option forwardfor`),
//! and newer neutron configs replace them (`set-header`), so the last value
//! is the proxy's in both. The identity headers are removed before the
//! request is dispatched; the backend never sees them.
//!
//! The socket is created mode 0600 (owner only: haproxy must run as the
//! daemon's user, root, unless the operator loosens it) the way the admin
//! socket is (`crate::private_socket`): a stale socket at the same path is
//! replaced, a live one never is; its directory is created when missing.
use std::{convert::Infallible, net::IpAddr, path::Path, sync::Arc, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::{
    HeaderMap, Request, Response, StatusCode,
    body::Incoming,
    header::{HeaderName, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{net::UnixListener, sync::watch};
use tracing::{debug, warn};

use super::forwarded_addr;
use crate::{
    backend::{Guest, Reply},
    private_socket,
    state::Port,
};

/// Answers a request from an identified guest (the same backend the eBPF
/// path uses: the local API or nova).
pub type Dispatch =
    Arc<dyn Fn(Guest, Request<Incoming>) -> BoxFuture<'static, Reply> + Send + Sync>;

/// The currently registered ports (called per request, so port add/del take
/// effect at once).
pub type PortLookup = Arc<dyn Fn() -> Vec<Arc<Port>> + Send + Sync>;

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_NEUTRON_NETWORK_ID: &str = "x-neutron-network-id";
const X_NEUTRON_ROUTER_ID: &str = "x-neutron-router-id";
/// How long haproxy may take to send request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long in-flight requests get to finish on shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request from the proxy was not dispatched.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The proxy did not say enough (400).
    BadRequest(&'static str),
    /// No port, or more than one, matches (404).
    NotFound,
}

/// The last value the proxy set for a header: the last line's last
/// comma-separated element.
fn last_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let line = headers.get_all(name).iter().next_back()?.to_str().ok()?;
    let value = line.rsplit(',').next()?.trim();
    (!value.is_empty()).then_some(value)
}

/// The one registered port the proxy's headers point to, and the guest's address.
pub fn identify(headers: &HeaderMap, ports: &[Arc<Port>]) -> Result<(Arc<Port>, IpAddr), Refusal> {
    let forwarded_for = last_value(headers, X_FORWARDED_FOR)
        .ok_or(Refusal::BadRequest("X-Forwarded-For is missing"))?;
    let network = last_value(headers, X_NEUTRON_NETWORK_ID);
    let router = last_value(headers, X_NEUTRON_ROUTER_ID);
    // What is no address matches no port.
    let Some(addr) = forwarded_addr::parse(forwarded_for) else {
        return Err(Refusal::NotFound);
    };
    let made_from_mac = forwarded_addr::eui64_mac(&addr);
    let has_addr = |port: &&Arc<Port>| {
        port.spec.ips.contains(&addr) || (made_from_mac.is_some() && port.spec.mac == made_from_mac)
    };
    let mut matches: Vec<&Arc<Port>> = match (network, router) {
        (Some(_), Some(_)) => {
            return Err(Refusal::BadRequest(
                "X-Neutron-Network-ID and X-Neutron-Router-ID are both present",
            ));
        }
        (None, None) => {
            return Err(Refusal::BadRequest(
                "X-Neutron-Network-ID or X-Neutron-Router-ID is required",
            ));
        }
        (Some(network), None) => {
            let Ok(network) = network.parse::<uuid::Uuid>() else {
                return Err(Refusal::NotFound);
            };
            ports
                .iter()
                .filter(has_addr)
                .filter(|p| p.spec.network_id == Some(network))
                .collect()
        }
        (None, Some(_router)) => ports.iter().filter(has_addr).collect(),
    };
    match (matches.pop(), matches.is_empty()) {
        (Some(port), true) => Ok((port.clone(), addr)),
        (None, _) => Err(Refusal::NotFound),
        (Some(_), false) => {
            debug!(%addr, ?network, ?router, "several registered ports match; answering 404");
            Err(Refusal::NotFound)
        }
    }
}

/// Removes what the proxy (or the guest behind it) said about identity, so
/// nothing downstream can read it.
fn strip_proxy_headers(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-neutron-") || name.as_str() == X_FORWARDED_FOR)
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// Creates the socket, root only (0600), as the admin socket is (see
/// [`crate::private_socket`]): never taking over a live socket, never
/// reachable with the umask's mode.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    let listener = private_socket::bind(path, 0o600, "--neutron-agent-socket")?;
    listener.set_nonblocking(true)?;
    UnixListener::from_std(listener).context("registering the neutron agent socket with tokio")
}

fn refusal_response(refusal: Refusal) -> Response<Full<Bytes>> {
    let (status, message) = match refusal {
        Refusal::BadRequest(why) => (StatusCode::BAD_REQUEST, why),
        Refusal::NotFound => (StatusCode::NOT_FOUND, "Not Found"),
    };
    let mut response = Response::new(Full::new(Bytes::from(format!("{message}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    response
}

async fn handle(
    ports: &PortLookup,
    dispatch: &Dispatch,
    mut request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let identified = identify(request.headers(), &ports());
    strip_proxy_headers(request.headers_mut());
    match identified {
        Ok((port, guest_addr)) => {
            let guest = Guest {
                port,
                guest_addr: Some(guest_addr),
            };
            // No socket of ours reaches the guest (haproxy is in between),
            // so the reply's IP TTL has nothing to apply to here.
            dispatch(guest, request).await.response
        }
        Err(refusal) => refusal_response(refusal),
    }
}

/// Serves the socket until `shutdown` flips to true, then drains.
pub async fn serve(
    listener: UnixListener,
    ports: PortLookup,
    dispatch: Dispatch,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    warn!("neutron agent socket: accept: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let ports = ports.clone();
        let dispatch = dispatch.clone();
        let service = service_fn(move |request| {
            let ports = ports.clone();
            let dispatch = dispatch.clone();
            async move { Ok::<_, Infallible>(handle(&ports, &dispatch, request).await) }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                debug!("neutron agent socket connection: {err}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("neutron agent socket: connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::state::port::PortSpec;

    const NET_A: &str = "aaaaaaaa-0000-0000-0000-000000000001";
    const NET_B: &str = "bbbbbbbb-0000-0000-0000-000000000002";

    fn port(ifname: &str, network: Option<&str>, ip: &str, slot: u32) -> Arc<Port> {
        Arc::new(Port {
            spec: PortSpec {
                ifname: ifname.into(),
                instance: uuid::Uuid::from_u128(slot.into()),
                port_id: None,
                mac: Some(format!("fa:16:3e:00:00:{slot:02x}")),
                ips: vec![ip.parse().unwrap()],
                network_id: network.map(|n| n.parse().unwrap()),
                project_id: Some("p".into()),
            },
            slot,
            source: Default::default(),
        })
    }

    fn ports() -> Vec<Arc<Port>> {
        vec![
            // Same address on two networks: overlapping tenant subnets.
            port("tap-a", Some(NET_A), "10.0.0.5", 1),
            port("tap-b", Some(NET_B), "10.0.0.5", 2),
            port("tap-c", Some(NET_B), "10.0.0.6", 3),
            port("tap-d", None, "10.0.0.7", 4),
            // IPv6-only, on NET_B.
            port("tap-e", Some(NET_B), "fd00::5", 5),
        ]
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        map
    }

    fn found(pairs: &[(&'static str, &'static str)]) -> Result<String, Refusal> {
        identify(&headers(pairs), &ports())
            .map(|(port, addr)| format!("{} {addr}", port.spec.ifname))
    }

    #[test]
    fn network_id_and_address_pick_one_port() {
        let ff = X_FORWARDED_FOR;
        assert_eq!(
            found(&[(ff, "10.0.0.5"), (X_NEUTRON_NETWORK_ID, NET_A)]).unwrap(),
            "tap-a 10.0.0.5"
        );
        assert_eq!(
            found(&[(ff, "10.0.0.5"), (X_NEUTRON_NETWORK_ID, NET_B)]).unwrap(),
            "tap-b 10.0.0.5"
        );
        // Zero matches: wrong network, unknown address, malformed values.
        assert_eq!(
            found(&[(ff, "10.0.0.6"), (X_NEUTRON_NETWORK_ID, NET_A)]),
            Err(Refusal::NotFound)
        );
        assert_eq!(
            found(&[(ff, "10.0.0.9"), (X_NEUTRON_NETWORK_ID, NET_B)]),
            Err(Refusal::NotFound)
        );
        assert_eq!(
            found(&[(ff, "fe80::1"), (X_NEUTRON_NETWORK_ID, NET_B)]),
            Err(Refusal::NotFound)
        );
        assert_eq!(
            found(&[(ff, "not-an-address"), (X_NEUTRON_NETWORK_ID, NET_B)]),
            Err(Refusal::NotFound)
        );
        assert_eq!(
            found(&[(ff, "10.0.0.5"), (X_NEUTRON_NETWORK_ID, "nope")]),
            Err(Refusal::NotFound)
        );
        // A port registered without --network-id never matches a network.
        assert_eq!(
            found(&[(ff, "10.0.0.7"), (X_NEUTRON_NETWORK_ID, NET_A)]),
            Err(Refusal::NotFound)
        );
    }

    /// IPv6: a fixed IP as an IPv4 one; a link-local EUI-64 address by the
    /// MAC it was made from (on the proxy's network only); anything else
    /// matches nothing.
    #[test]
    fn ipv6_addresses_and_link_local_eui64_addresses_find_their_port() {
        let ff = X_FORWARDED_FOR;
        let net_b = (X_NEUTRON_NETWORK_ID, NET_B);
        assert_eq!(found(&[(ff, "fd00::5"), net_b]).unwrap(), "tap-e fd00::5");
        assert_eq!(
            found(&[(ff, "FD00:0::5"), net_b]).unwrap(),
            "tap-e fd00::5",
            "any spelling of the address"
        );
        // tap-e's MAC is fa:16:3e:00:00:05, tap-c's fa:16:3e:00:00:03.
        assert_eq!(
            found(&[(ff, "fe80::f816:3eff:fe00:5"), net_b]).unwrap(),
            "tap-e fe80::f816:3eff:fe00:5"
        );
        assert_eq!(
            found(&[(ff, "fe80::f816:3eff:fe00:3%eth0"), net_b]).unwrap(),
            "tap-c fe80::f816:3eff:fe00:3"
        );
        // tap-a's MAC, but tap-a is on NET_A.
        assert_eq!(
            found(&[(ff, "fe80::f816:3eff:fe00:1"), net_b]),
            Err(Refusal::NotFound)
        );
        for unknown in ["fd00::6", "fe80::5", "fe80::f816:3eff:fe00:9"] {
            let value = HeaderValue::from_str(unknown).unwrap();
            let mut map = headers(&[net_b]);
            map.append(HeaderName::from_static(X_FORWARDED_FOR), value);
            assert!(
                matches!(identify(&map, &ports()), Err(Refusal::NotFound)),
                "{unknown}"
            );
        }
    }

    #[test]
    fn router_id_matches_the_address_alone() {
        let ff = X_FORWARDED_FOR;
        let router = "cccccccc-0000-0000-0000-000000000003";
        assert_eq!(
            found(&[(ff, "10.0.0.6"), (X_NEUTRON_ROUTER_ID, router)]).unwrap(),
            "tap-c 10.0.0.6"
        );
        assert_eq!(
            found(&[(ff, "10.0.0.7"), (X_NEUTRON_ROUTER_ID, router)]).unwrap(),
            "tap-d 10.0.0.7"
        );
        assert_eq!(
            found(&[(ff, "fd00::5"), (X_NEUTRON_ROUTER_ID, router)]).unwrap(),
            "tap-e fd00::5"
        );
        // Ambiguous: 10.0.0.5 is on two networks.
        assert_eq!(
            found(&[(ff, "10.0.0.5"), (X_NEUTRON_ROUTER_ID, router)]),
            Err(Refusal::NotFound)
        );
    }

    #[test]
    fn only_the_proxys_last_values_count() {
        let ff = X_FORWARDED_FOR;
        // The guest's own X-Forwarded-For line first, haproxy's appended last.
        assert_eq!(
            found(&[
                (ff, "10.0.0.6"),
                (ff, "10.0.0.5"),
                (X_NEUTRON_NETWORK_ID, NET_A)
            ])
            .unwrap(),
            "tap-a 10.0.0.5"
        );
        // A comma list in one line: the last element.
        assert_eq!(
            found(&[(ff, "10.0.0.6, 10.0.0.5"), (X_NEUTRON_NETWORK_ID, NET_A)]).unwrap(),
            "tap-a 10.0.0.5"
        );
        // The guest's Network-ID first, haproxy's last.
        assert_eq!(
            found(&[
                (ff, "10.0.0.5"),
                (X_NEUTRON_NETWORK_ID, NET_B),
                (X_NEUTRON_NETWORK_ID, NET_A)
            ])
            .unwrap(),
            "tap-a 10.0.0.5"
        );
    }

    #[test]
    fn missing_or_conflicting_proxy_headers_are_bad_requests() {
        let ff = X_FORWARDED_FOR;
        assert!(matches!(
            found(&[(X_NEUTRON_NETWORK_ID, NET_A)]),
            Err(Refusal::BadRequest(_))
        ));
        assert!(matches!(
            found(&[(ff, "10.0.0.5")]),
            Err(Refusal::BadRequest(_))
        ));
        assert!(matches!(
            found(&[
                (ff, "10.0.0.5"),
                (X_NEUTRON_NETWORK_ID, NET_A),
                (X_NEUTRON_ROUTER_ID, NET_B)
            ]),
            Err(Refusal::BadRequest(_))
        ));
    }

    #[test]
    fn bind_replaces_a_stale_socket_but_not_a_file_nor_a_live_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/metadata_proxy");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            drop(bind(&path).unwrap());
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            drop(bind(&path).unwrap());

            // A daemon still serving it keeps it.
            let _live = bind(&path).unwrap();
            let err = format!("{:#}", bind(&path).unwrap_err());
            assert!(
                err.starts_with("--neutron-agent-socket ")
                    && err.ends_with("another process is serving it; not taking it over"),
                "{err}"
            );
            std::os::unix::net::UnixStream::connect(&path).expect("still served");
        });
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let err = rt.block_on(async { format!("{:#}", bind(&file).unwrap_err()) });
        assert!(
            err.starts_with("--neutron-agent-socket ")
                && err.ends_with("exists and is not a socket; not removing it"),
            "{err}"
        );
    }
}

/// The socket end to end, as haproxy uses it, in front of the nova backend
/// and a fake nova on loopback.
#[cfg(test)]
mod socket_tests {
    use std::time::Duration;

    use fake_nova::FakeNova;
    use futures::FutureExt as _;
    use http_body_util::BodyExt as _;

    use super::*;
    use crate::{
        backend::nova::{
            NovaBackend,
            config::{NovaConfig, Protocol, SharedSecret},
        },
        state::port::PortSpec,
    };

    const SECRET: &[u8] = b"s3cret";
    const INSTANCE: &str = "6c8a3b0e-1d6f-4d2b-9a57-0f4ad3a7e001";
    const PROJECT: &str = "d3b07384d113edec49eaa6238ad5ff00";

    async fn fake_nova() -> FakeNova {
        FakeNova::start(
            "127.0.0.1:0".parse().unwrap(),
            fake_nova::Config {
                secret: SECRET.to_vec(),
                ..Default::default()
            },
        )
        .await
        .unwrap()
    }

    fn config_for(addr: std::net::SocketAddr) -> NovaConfig {
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

    fn port(ifname: &str, instance: &str, network: &str, ip: &str, slot: u32) -> Arc<Port> {
        Arc::new(Port {
            spec: PortSpec {
                ifname: ifname.into(),
                instance: instance.parse().unwrap(),
                port_id: None,
                mac: None,
                ips: vec![ip.parse().unwrap()],
                network_id: Some(network.parse().unwrap()),
                project_id: Some(PROJECT.into()),
            },
            slot,
            source: Default::default(),
        })
    }

    /// Sends one request over the unix socket, as haproxy would.
    async fn via_socket(path: &Path, headers: &[(&str, &str)]) -> (StatusCode, String) {
        let stream = tokio::net::UnixStream::connect(path).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let mut builder =
            Request::get("/openstack/latest/meta_data.json").header("host", "169.254.169.254");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let response = sender
            .send_request(builder.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn neutron_agent_socket_identifies_and_forwards_to_nova() {
        const NET: &str = "aaaaaaaa-0000-0000-0000-000000000001";
        const OTHER: &str = "99999999-0000-0000-0000-000000000009";
        // An instance of its own, so that nova's cache of INSTANCE cannot answer.
        const V6_INSTANCE: &str = "66666666-0000-0000-0000-000000000006";
        let nova = fake_nova().await;
        let backend = NovaBackend::new(&config_for(nova.addr()));
        let ports: PortLookup = Arc::new(|| {
            vec![
                port("tap-a", INSTANCE, NET, "10.0.0.5", 1),
                port("tap-b", OTHER, NET, "10.0.0.6", 2),
                port("tap-c", OTHER, NET, "10.0.0.6", 3),
                port("tap-v6", V6_INSTANCE, NET, "fd00::5", 4),
            ]
        });
        let dispatch: Dispatch = Arc::new(move |guest, request| {
            let backend = backend.clone();
            async move { Reply::new(backend.serve_guest(&guest, None, request).await) }.boxed()
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata_proxy");
        let listener = bind(&path).unwrap();
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(serve(listener, ports, dispatch, shutdown_rx));

        // One match: the guest's spoofed identity (first lines) loses to the proxy's (last).
        let (status, body) = via_socket(
            &path,
            &[
                ("X-Instance-ID", OTHER),
                ("X-Forwarded-For", "10.0.0.6"),
                ("X-Neutron-Network-ID", OTHER),
                ("X-Neutron-Network-ID", NET),
                ("X-Forwarded-For", "10.0.0.5"),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let seen = nova.requests().pop().unwrap();
        assert_eq!(seen.header_values("x-instance-id"), [INSTANCE]);
        assert_eq!(seen.header_values("x-forwarded-for"), ["10.0.0.5"]);
        assert!(
            seen.headers
                .iter()
                .all(|(name, _)| !name.starts_with("x-neutron-"))
        );

        // An IPv6 guest behind the proxy: its address goes to nova as it is.
        let (status, body) = via_socket(
            &path,
            &[
                ("X-Forwarded-For", "fd00::5"),
                ("X-Neutron-Network-ID", NET),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let seen = nova.requests().pop().unwrap();
        assert_eq!(seen.header_values("x-instance-id"), [V6_INSTANCE]);
        assert_eq!(seen.header_values("x-forwarded-for"), ["fd00::5"]);

        // Zero matches and two matches: 404, nova never asked.
        let asked = nova.request_count();
        let unknown = via_socket(
            &path,
            &[
                ("X-Forwarded-For", "10.0.0.9"),
                ("X-Neutron-Network-ID", NET),
            ],
        )
        .await;
        assert_eq!(unknown.0, StatusCode::NOT_FOUND);
        let ambiguous = via_socket(
            &path,
            &[
                ("X-Forwarded-For", "10.0.0.6"),
                ("X-Neutron-Network-ID", NET),
            ],
        )
        .await;
        assert_eq!(ambiguous.0, StatusCode::NOT_FOUND);
        let no_proxy_header = via_socket(&path, &[("X-Forwarded-For", "10.0.0.5")]).await;
        assert_eq!(no_proxy_header.0, StatusCode::BAD_REQUEST);
        assert_eq!(nova.request_count(), asked);

        shutdown.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap();
    }
}
