//! Accepts guest connections on the server address and identifies each one
//! from its peer address through the datapath's flow map, then hands its
//! requests to the backend. A connection that did not come through a
//! registered tap has no flow and is closed without a word.
use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr, SocketAddrV4},
    os::fd::AsRawFd as _,
    sync::Arc,
    time::Duration,
};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{net::TcpListener, sync::watch};
use tracing::{debug, warn};

use super::{conn::ConnHandle, dispatch::Dispatcher, limits::ConnectionLimiter};
use crate::{backend::Guest, state::Registry};

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
    /// The guest's own address, before the datapath rewrote it: IPv6 for a
    /// guest that asked over IPv6 (the datapath translated its connection).
    pub guest_addr: IpAddr,
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
            let Some(permit) = self.connections.acquire(guest.port.slot) else {
                debug!(%peer, slot = guest.port.slot, "too many open connections for this port, closed");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let conn = Arc::new(ConnHandle::new(stream.as_raw_fd()));
            let server = self.clone();
            let service = service_fn(move |request| {
                let server = server.clone();
                let guest = guest.clone();
                let conn = conn.clone();
                async move {
                    let reply = server.dispatcher.dispatch(&guest, request).await;
                    // Before hyper writes the answer, and for the rest of
                    // the connection (see `ConnHandle::limit_ip_ttl`).
                    conn.limit_ip_ttl(reply.ip_ttl);
                    Ok::<_, Infallible>(reply.response)
                }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                // A guest may shut down its sending side once its request
                // is out (`printf ... | nc`, as minimal images fetch): that
                // is not the end of the connection, and the answer must
                // still go out. Without this, hyper drops the request when
                // it sees the EOF before the answer is ready.
                .half_close(true)
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
