//! Accepts guest connections on the server address and identifies each one
//! from its peer address through the BPF flow map, then hands its requests
//! to the API. A connection that did not come through a registered tap has
//! no flow and is closed without a word.
use std::{convert::Infallible, net::SocketAddr, os::fd::AsRawFd as _, sync::Arc, time::Duration};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{net::TcpListener, sync::watch};
use tracing::{debug, warn};

use super::{
    backend::Responder,
    conn::{ConnHandle, Guest},
    limits::ConnectionLimiter,
};
use crate::{datapath::FlowTable, state::Registry};

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line + headers) a guest may send; beyond
/// it hyper answers 431.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// How long in-flight requests get to finish on shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub struct GuestServer {
    pub flows: Arc<FlowTable>,
    pub registry: Arc<Registry>,
    pub responder: Arc<Responder>,
    pub connections: Arc<ConnectionLimiter>,
}

impl GuestServer {
    /// Who is behind a connection from `peer`: the flow map gives the slot
    /// and the guest's own address, the registry gives the port for the slot.
    fn identify(&self, peer: SocketAddr, conn: Arc<ConnHandle>) -> Option<Guest> {
        let SocketAddr::V4(peer) = peer else {
            return None;
        };
        let origin = self.flows.origin(peer)?;
        let port = self.registry.snapshot().port_by_slot(origin.slot)?.clone();
        Some(Guest {
            port,
            guest_addr: origin.flow.guest_addr.into(),
            conn,
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
            let conn = Arc::new(ConnHandle::new(stream.as_raw_fd()));
            let Some(guest) = self.identify(peer, conn) else {
                debug!(%peer, "connection without a datapath identity, closed");
                continue;
            };
            let Some(permit) = self.connections.acquire(guest.port.slot) else {
                debug!(%peer, slot = guest.port.slot, "too many open connections for this port, closed");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let server = self.clone();
            let service = service_fn(move |request| {
                let server = server.clone();
                let guest = guest.clone();
                async move { Ok::<_, Infallible>(server.responder.respond(&guest, request).await) }
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
