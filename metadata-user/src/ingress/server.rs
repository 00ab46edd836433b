//! Accepts guest connections on the server address and identifies each one
//! from its peer address through the datapath's flow map, then hands its
//! requests to the backend. A connection that did not come through a
//! registered tap has no flow and is closed without a word.
use std::{
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::AsRawFd as _,
    sync::Arc,
    time::Duration,
};

use hyper::{
    HeaderMap, Method, Request, Response,
    body::Incoming,
    header::{ACCEPT, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{net::TcpListener, sync::watch};
use tracing::{debug, error, warn};

use super::{
    conn::ConnHandle,
    dispatch::Dispatcher,
    limits::{ConnectionLimiter, OverCap},
};
use crate::{
    backend::{Guest, Reply, local::response::ApiError},
    state::Registry,
};

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line + headers) a guest may send; beyond
/// it hyper answers 431.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// How long in-flight requests get to finish on shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What the server needs from the datapath: who is behind a connection's
/// peer address (serve.rs implements it for the flow map).
pub trait FlowLookup: Send + Sync {
    /// None when the peer did not come through a registered tap.
    fn origin(&self, peer: SocketAddrV4) -> Option<Origin>;
}

/// Where an accepted connection came from, as the datapath recorded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The port slot the peer address encodes.
    pub slot: u32,
    /// The guest's own address, before the datapath rewrote it.
    pub guest_addr: Ipv4Addr,
}

pub struct GuestServer {
    pub flows: Arc<dyn FlowLookup>,
    pub registry: Arc<Registry>,
    pub dispatcher: Arc<Dispatcher>,
    pub connections: Arc<ConnectionLimiter>,
}

impl GuestServer {
    /// Who is behind a connection from `peer`: the flow map gives the slot
    /// and the guest's own address, the registry gives the port for the slot.
    fn identify(&self, peer: SocketAddr) -> Option<Guest> {
        let SocketAddr::V4(peer) = peer else {
            return None;
        };
        let origin = self.flows.origin(peer)?;
        let port = self.registry.snapshot().port_by_slot(origin.slot)?.clone();
        Some(Guest {
            port,
            guest_addr: origin.guest_addr,
        })
    }

    /// Serves until `shutdown` flips to true, then drains open connections.
    pub async fn run(self: Arc<Self>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let graceful = GracefulShutdown::new();
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!("accept: {err}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => break,
            };
            let Some(guest) = self.identify(peer) else {
                debug!(%peer, "connection without a datapath identity, closed");
                continue;
            };
            // Over a cap: closed at once (and counted by the limiter).
            let permit = match self.connections.acquire(guest.port.slot) {
                Ok(permit) => permit,
                Err(OverCap::Port) => {
                    debug!(%peer, slot = guest.port.slot, "too many open connections for this port, closed");
                    continue;
                }
                Err(OverCap::Host) => {
                    debug!(%peer, "too many open guest connections on this host, closed");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let conn = Arc::new(ConnHandle::new(stream.as_raw_fd()));
            let server = self.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let server = server.clone();
                let guest = guest.clone();
                let conn = conn.clone();
                async move {
                    // Kept for an error page in the guest's format, should
                    // the answer have to be withheld.
                    let method = request.method().clone();
                    let accept = request.headers().get(ACCEPT).cloned();
                    let reply = server.dispatcher.dispatch(&guest, request).await;
                    Ok::<_, Infallible>(within_hop_limit(&conn, reply, &method, accept, peer))
                }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_REQUEST_HEAD)
                .serve_connection(TokioIo::new(stream), service);
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    debug!(%peer, "connection: {err}");
                }
                drop(permit);
            });
        }
        drop(listener);
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            warn!("some guest connections were still open after {DRAIN_TIMEOUT:?}; closing them");
        }
    }
}

/// The reply's response, sent with the IP TTL it needs: the connection's
/// TTL is lowered first (and stays lowered, see `ConnHandle::limit_ip_ttl`).
/// If the kernel refuses the lower TTL the answer is withheld: an IMDSv2
/// token would otherwise leave with the default TTL and reach a container
/// or a host beyond the hop limit. The guest gets a 500 instead, and the
/// log says why.
fn within_hop_limit(
    conn: &ConnHandle,
    reply: Reply,
    method: &Method,
    accept: Option<HeaderValue>,
    peer: SocketAddr,
) -> Response<http_body_util::Full<bytes::Bytes>> {
    match conn.limit_ip_ttl(reply.ip_ttl) {
        Ok(()) => reply.response,
        Err(err) => {
            error!(
                %peer,
                ttl = reply.ip_ttl,
                "cannot set the IP TTL the answer needs (hop limit): {err}; answering 500 instead"
            );
            let mut headers = HeaderMap::new();
            if let Some(accept) = accept {
                headers.insert(ACCEPT, accept);
            }
            ApiError::Internal.into_response(method, &headers)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd as _;

    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full};
    use hyper::StatusCode;

    use super::*;

    fn token_reply(ip_ttl: u8) -> Reply {
        Reply {
            response: Response::new(Full::new(Bytes::from_static(b"SECRET-TOKEN"))),
            ip_ttl,
        }
    }

    async fn body(response: Response<Full<Bytes>>) -> Bytes {
        response.into_body().collect().await.unwrap().to_bytes()
    }

    /// The hop limit fails closed: when the TTL cannot be set, the token
    /// is not sent; a 500 is. An answer that needs no lower TTL still goes.
    #[tokio::test]
    async fn an_answer_whose_ttl_cannot_be_set_is_withheld() {
        // Not a socket: setsockopt fails with ENOTSOCK, as it would on a
        // socket the kernel refuses the option for.
        let (reader, _writer) = std::io::pipe().unwrap();
        let conn = ConnHandle::new(reader.as_raw_fd());
        let peer: SocketAddr = "240.1.0.9:40000".parse().unwrap();

        let answer = within_hop_limit(&conn, token_reply(1), &Method::PUT, None, peer);
        assert_eq!(answer.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let text = body(answer).await;
        assert!(
            !text.windows(12).any(|w| w == b"SECRET-TOKEN"),
            "the token left: {text:?}"
        );

        let default = token_reply(crate::backend::guest::DEFAULT_TTL);
        let answer = within_hop_limit(&conn, default, &Method::GET, None, peer);
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(body(answer).await, "SECRET-TOKEN");
    }

    #[tokio::test]
    async fn an_answer_whose_ttl_is_set_is_sent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, peer) = listener.accept().unwrap();
        let conn = ConnHandle::new(server_side.as_raw_fd());
        let answer = within_hop_limit(&conn, token_reply(1), &Method::PUT, None, peer);
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(body(answer).await, "SECRET-TOKEN");
    }
}
