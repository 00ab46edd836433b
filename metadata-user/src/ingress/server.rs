//! Accepts guest connections on the server address and identifies each one
//! by its peer address, then hands its requests to the backend.
//!
//! Identity: the datapath rewrites every guest's source to its port's
//! identity address (240.1.0.0/16 by default, slot N at offset N), so the
//! peer address alone names the port. Nothing else can open a connection
//! from such an address: the server's replies to the identity range leave
//! only through the datapath's egress program on the server link, which
//! drops every segment that belongs to no flow the tap program recorded
//! (`dropped_no_flow`), so a handshake from a forged identity address never
//! completes and is never accepted. The flow map is read (one bpf() call)
//! only when an answer needs the guest's own address
//! (`Responder::needs_guest_addr`); a connection whose flow is gone by then
//! is closed without a word, as one from outside the identity range is.
//!
//! Shape: one thread per core, each with a current-thread runtime and a
//! listener of its own on the same address (SO_REUSEPORT): the kernel
//! spreads connections over them, and a connection is served start to end
//! on the thread that accepted it, with no hand-over between threads.
//! The header read timeout is the thread's too (`header_deadline`): one
//! ticker per thread, not a timer per request.
use std::{
    convert::Infallible,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::AsRawFd as _,
    sync::Arc,
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use hyper::{
    HeaderMap, Method, Request, Version,
    body::Incoming,
    header::{ACCEPT, CONNECTION, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::{
    rt::TokioIo,
    server::graceful::{GracefulShutdown, Watcher},
};
use tokio::{io::AsyncReadExt as _, sync::watch};
use tracing::{debug, error, warn};

use super::{
    answer_replay::{self, Answered, Replay},
    conn::ConnHandle,
    dispatch::Dispatcher,
    guest_http::{self, Head, PlainRequest, has_token},
    guest_socket::{GuestListener, GuestSocket},
    header_deadline::{Deadline, HeaderDeadlines, WithDeadline},
    limits::{ConnectionLimiter, OverCap},
};
use crate::{
    backend::{
        Guest, GuestBody, Reply,
        kind::PathKind,
        local::{SEED_BASE64_LEN, fill_random_seed, response::ApiError},
    },
    state::Registry,
};

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a thread checks its connections' header deadlines: a silent
/// connection is closed between 10 and 11 s after it began to wait.
const HEADER_DEADLINE_TICK: Duration = Duration::from_secs(1);
/// Largest request head (request line + headers) a guest may send; beyond
/// it hyper answers 431.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// What a guest connection reads into at a time: a request head is a few
/// hundred bytes. At most 1 KiB, so that glibc serves it from its
/// per-thread cache (up to 1032 bytes) instead of its slower bins; a
/// larger head grows the buffer.
const READ_BUFFER: usize = 1024;
/// On shutdown, how long connections accepted just before get to deliver
/// their first request before idle ones are closed.
const FIRST_REQUEST_GRACE: Duration = Duration::from_millis(200);
/// How long in-flight requests get to finish on shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Accept queue length asked for, per listener (the kernel caps it at
/// net.core.somaxconn, 4096 by default). Every guest of the host connects
/// to these sockets: in a boot storm hundreds of handshakes complete at
/// once, and a full queue drops them, costing each guest a 1 s SYN
/// retransmit. The default backlog of tokio's `TcpListener::bind` (mio's,
/// 128) overflowed with 500 guests in `cargo xtask bench`.
const LISTEN_BACKLOG: u32 = 65_535;
/// TCP_DEFER_ACCEPT, in seconds: a connection is handed to accept() only
/// once its first data (the request) has arrived, so a new connection costs
/// one wakeup that finds the request waiting, not one for the handshake
/// and another for the request. A guest that connects and stays silent is
/// handed over anyway after about this long (the kernel's SYN-ACK
/// retransmit), and the header read timeout applies from then on.
const DEFER_ACCEPT_SECS: libc::c_int = 1;

/// What the server needs from the datapath (serve.rs implements it for the
/// flow map).
pub trait FlowLookup: Send + Sync {
    /// The port slot an identity address encodes (any lane); None for any
    /// other address. Arithmetic only.
    fn slot(&self, peer: Ipv4Addr) -> Option<u32>;
    /// The guest's own address behind `peer`, as the datapath recorded it
    /// (a flow map lookup): IPv6 for a guest that asked over IPv6. None
    /// when it has no flow for `peer`.
    fn guest_addr(&self, peer: SocketAddrV4) -> Option<IpAddr>;
}

pub struct GuestServer {
    pub flows: Arc<dyn FlowLookup>,
    pub registry: Arc<Registry>,
    pub dispatcher: Arc<Dispatcher>,
    pub connections: Arc<ConnectionLimiter>,
}

/// One listener per thread on `addr:port`: SO_REUSEPORT so they share the
/// address, TCP_NODELAY so every accepted socket inherits it (answers go
/// out whole at once; no setsockopt per connection). Bound here, before any
/// thread starts, so that a taken address fails the daemon's start.
pub fn listen(addr: Ipv4Addr, port: u16, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    (0..count.max(1))
        .map(|_| {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.set_reuseaddr(true)?;
            socket.set_reuseport(true)?;
            socket.set_nodelay(true)?;
            defer_accept(&socket)?;
            socket.bind((addr, port).into())?;
            // Leaves the reactor of whoever calls this; each thread
            // registers its listener with its own runtime.
            socket.listen(LISTEN_BACKLOG)?.into_std()
        })
        .collect()
}

/// Sets TCP_DEFER_ACCEPT on a listener (ours, or one handed over).
/// Neither tokio nor std has it, hence the setsockopt.
pub(super) fn defer_accept(socket: &impl std::os::fd::AsRawFd) -> io::Result<()> {
    super::conn::set_int_option(
        socket.as_raw_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_DEFER_ACCEPT,
        DEFER_ACCEPT_SECS,
    )
}

impl GuestServer {
    /// Who is behind a connection from `peer`: the slot from its address,
    /// the port from the registry, the guest's own address from the
    /// datapath when an answer may need it.
    fn identify(&self, peer: SocketAddr) -> Option<Guest> {
        let SocketAddr::V4(peer) = peer else {
            return None;
        };
        let slot = self.flows.slot(*peer.ip())?;
        let port = self.registry.snapshot().port_by_slot(slot)?.clone();
        let guest_addr = if self.dispatcher.responder.needs_guest_addr(&port) {
            let Some(addr) = self.flows.guest_addr(peer) else {
                warn!(%peer, "no datapath flow for connection");
                return None;
            };
            Some(addr)
        } else {
            None
        };
        Some(Guest { port, guest_addr })
    }

    /// Serves on one thread per listener until `shutdown` flips to true,
    /// then drains; the returned handles end when their thread is done.
    pub fn run_threads(
        self: Arc<Self>,
        listeners: Vec<std::net::TcpListener>,
        shutdown: watch::Receiver<bool>,
    ) -> io::Result<Vec<std::thread::JoinHandle<()>>> {
        listeners
            .into_iter()
            .enumerate()
            .map(|(index, listener)| {
                let server = self.clone();
                let shutdown = shutdown.clone();
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                std::thread::Builder::new()
                    .name(format!("guest-server-{index}"))
                    .spawn(move || {
                        runtime.block_on(server.run(listener, shutdown));
                    })
            })
            .collect()
    }

    /// Serves one listener until `shutdown` flips to true, then drains the
    /// connections it accepted.
    pub(crate) async fn run(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let listener = match GuestListener::new(listener) {
            Ok(listener) => listener,
            Err(err) => {
                error!("cannot serve the guest listener: {err}");
                return;
            }
        };
        // Every connection task holds a watcher of it, used once a
        // connection goes to hyper: its shutdown waits for all of them.
        let graceful = GracefulShutdown::new();
        let deadlines = HeaderDeadlines::new(HEADER_READ_TIMEOUT, HEADER_DEADLINE_TICK);
        let ticker = tokio::spawn(deadlines.clone().run_ticker());
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
            let conn = Arc::new(ConnHandle::new(stream.as_raw_fd()));
            let deadline = deadlines.watch();
            let stream =
                WithDeadline::new(GuestSocket::new(stream, conn.clone()), deadline.clone());
            let server = self.clone();
            let hyper_watcher = graceful.watcher();
            // Boxed where it is made: the connection's future (its request,
            // its answer, the backend's state) is over a kilobyte, and
            // tokio moves a task's future several times while spawning
            // it; a box is one allocation and moves as a pointer.
            let connection = Box::pin(async move {
                server
                    .serve_connection(stream, guest, conn, deadline, peer, hyper_watcher)
                    .await;
                drop(permit);
            });
            tokio::spawn(connection);
        }
        drop(listener);
        // Connections still waiting for a head keep their deadline while
        // they drain.
        let _ticker = AbortOnDrop(ticker);
        // Shutdown closes a connection that has not read a request yet as
        // idle, and a guest whose request was on its way then sees a
        // reset. Those accepted just now get the time to send theirs first
        // (a restart with a held listener must reset none).
        tokio::time::sleep(FIRST_REQUEST_GRACE).await;
        // Idle connections close now, the others once their answer is out.
        deadlines.close_idle();
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            warn!("some guest connections were still open after {DRAIN_TIMEOUT:?}; closing them");
        }
    }
}

impl GuestServer {
    /// Serves one guest connection: its plain requests here
    /// (`guest_http`), and from the first one that is not, the rest of the
    /// connection with hyper.
    async fn serve_connection(
        self: Arc<Self>,
        mut stream: WithDeadline<GuestSocket>,
        guest: Guest,
        conn: Arc<ConnHandle>,
        deadline: Arc<Deadline>,
        peer: SocketAddr,
        hyper_watcher: Watcher,
    ) {
        let Some(taken_in) = self
            .serve_plain(&mut stream, &guest, &conn, &deadline, peer)
            .await
        else {
            return;
        };
        self.serve_with_hyper(stream, taken_in, guest, conn, deadline, peer, hyper_watcher)
            .await;
    }

    /// The rest of a connection, from a request that is not plain on,
    /// served by hyper; `taken_in` is what was read of it already. Boxed:
    /// hyper's connection is kilobytes, and inline it would make every
    /// connection's task that large, to be moved into place at each spawn,
    /// for the few connections that ever get here.
    #[allow(
        clippy::too_many_arguments,
        reason = "the connection's parts, handed on as they are"
    )]
    fn serve_with_hyper(
        self: Arc<Self>,
        stream: WithDeadline<GuestSocket>,
        taken_in: Bytes,
        guest: Guest,
        conn: Arc<ConnHandle>,
        deadline: Arc<Deadline>,
        peer: SocketAddr,
        hyper_watcher: Watcher,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let server = self;
        let service = service_fn(move |request: Request<Incoming>| {
            let server = server.clone();
            let guest = guest.clone();
            let conn = conn.clone();
            let deadline = deadline.clone();
            deadline.head_received();
            async move {
                let closes = closes_after_answer(&request);
                let reply = server.answer(&guest, &conn, peer, request, closes).await;
                deadline.wait_for_head();
                Ok::<_, Infallible>(reply.response)
            }
        });
        // hyper reads what was taken in first, then the socket.
        let (reader, writer) = tokio::io::split(stream);
        let io = tokio::io::join(std::io::Cursor::new(taken_in).chain(reader), writer);
        let connection = http1::Builder::new()
            // A guest may shut down its sending side once its request
            // is out (`printf ... | nc`, as minimal images fetch): that
            // is not the end of the connection, and the answer must
            // still go out. Without this, hyper drops the request when
            // it sees the EOF before the answer is ready.
            .half_close(true)
            // Ours instead (`deadlines`): hyper's arms a timer per
            // request head. Without a timer hyper has none either.
            .header_read_timeout(None)
            .max_buf_size(MAX_REQUEST_HEAD)
            .serve_connection(TokioIo::new(io), service);
        Box::pin(async move {
            if let Err(err) = hyper_watcher.watch(connection).await {
                debug!(%peer, "connection: {err}");
            }
        })
    }

    /// Answers the connection's plain requests until it ends (None) or a
    /// request comes that is hyper's: then the bytes read and not yet
    /// answered, from that request's first byte on.
    async fn serve_plain(
        &self,
        stream: &mut WithDeadline<GuestSocket>,
        guest: &Guest,
        conn: &ConnHandle,
        deadline: &Deadline,
        peer: SocketAddr,
    ) -> Option<Bytes> {
        let mut buffer = BytesMut::with_capacity(READ_BUFFER);
        // Room for a usual head (status, a few headers, the date), so that
        // a new connection's answer is not written through reallocations.
        let mut head = Vec::with_capacity(256);
        loop {
            // A head this guest sent before, answered as it was then.
            if let Some(head_len) = answer_replay::head_end(&buffer, MAX_REQUEST_HEAD)
                && let Some(replay) = answer_replay::lookup(
                    guest,
                    &buffer[..head_len],
                    self.registry.generation(),
                    &mut head,
                )
                // Either refused: the whole way, for its 500 or its 429.
                && conn.limit_ip_ttl(replay.ip_ttl).is_ok()
                && self
                    .dispatcher
                    .replay(guest, replay.tree, replay.status)
            {
                deadline.head_received();
                bytes::Buf::advance(&mut buffer, head_len);
                if replay.closes {
                    conn.send_fin_with_last_answer();
                }
                if let Err(err) = write_replay(stream, &head, &replay).await {
                    debug!(%peer, "connection: {err}");
                    return None;
                }
                if replay.closes || deadline.closing() {
                    return None;
                }
                deadline.wait_for_head();
                continue;
            }
            match guest_http::take_head(&mut buffer, MAX_REQUEST_HEAD) {
                Head::Plain(PlainRequest {
                    request,
                    head: request_head,
                    closes,
                }) => {
                    deadline.head_received();
                    // Read before the answer's snapshot is (`Registry::generation`).
                    let generation = self.registry.generation();
                    let method = request.method().clone();
                    let uri = request.uri().clone();
                    let reply = self.answer(guest, conn, peer, request, closes).await;
                    let (repeat, ip_ttl, status) =
                        (reply.repeat, reply.ip_ttl, reply.response.status());
                    let answer = guest_http::encode(reply.response, &method, head);
                    if answer.closes {
                        conn.send_fin_with_last_answer();
                    }
                    if let Err(err) =
                        guest_http::write_answer(stream, &answer.head, &answer.body).await
                    {
                        debug!(%peer, "connection: {err}");
                        return None;
                    }
                    if let (Some(repeat), Some(date_at)) = (repeat, answer.date_at) {
                        answer_replay::keep(
                            guest,
                            Answered {
                                request: &request_head,
                                generation,
                                head: &answer.head,
                                date_at,
                                replay: Replay {
                                    body: answer.body.clone(),
                                    // A HEAD answer has no body to put one in.
                                    seed: repeat.seed.filter(|_| !answer.body.is_empty()),
                                    ip_ttl,
                                    tree: PathKind::of(uri.path()).tree,
                                    status: status.as_u16(),
                                    closes: closes || answer.closes,
                                },
                            },
                        );
                    }
                    if closes || answer.closes || deadline.closing() {
                        return None;
                    }
                    head = answer.head;
                    deadline.wait_for_head();
                    continue;
                }
                Head::Partial => {}
                Head::Other => return Some(buffer.freeze()),
            }
            if buffer.capacity() - buffer.len() < READ_BUFFER / 4 {
                buffer.reserve(READ_BUFFER);
            }
            match stream.read_buf(&mut buffer).await {
                Ok(0) => return None,
                Ok(_) => {}
                Err(err) => {
                    debug!(%peer, "connection: {err}");
                    return None;
                }
            }
        }
    }

    /// The answer to an identified guest's request, as it may leave
    /// (`within_hop_limit`). `closes`: the connection ends after it, so
    /// its FIN goes with it.
    async fn answer<B>(
        &self,
        guest: &Guest,
        conn: &ConnHandle,
        peer: SocketAddr,
        request: Request<B>,
        closes: bool,
    ) -> Reply
    where
        B: GuestBody,
    {
        // Kept for an error page in the guest's format, should the answer
        // have to be withheld.
        let method = request.method().clone();
        let accept = request.headers().get(ACCEPT).cloned();
        let reply = self.dispatcher.dispatch(guest, request).await;
        let response = within_hop_limit(conn, reply, &method, accept, peer);
        if closes {
            conn.send_fin_with_last_answer();
        }
        response
    }
}

/// The reply, sent with the IP TTL it needs: the connection's TTL is
/// lowered first (and stays lowered, see `ConnHandle::limit_ip_ttl`). If
/// the kernel refuses the lower TTL the answer is withheld: an IMDSv2
/// token would otherwise leave with the default TTL and reach a container
/// or a host beyond the hop limit. The guest gets a 500 instead, and the
/// log says why.
fn within_hop_limit(
    conn: &ConnHandle,
    reply: Reply,
    method: &Method,
    accept: Option<HeaderValue>,
    peer: SocketAddr,
) -> Reply {
    match conn.limit_ip_ttl(reply.ip_ttl) {
        Ok(()) => reply,
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
            Reply::new(ApiError::Internal.into_response(method, &headers))
        }
    }
}

/// A kept answer, with a new seed where it has one.
async fn write_replay(
    stream: &mut WithDeadline<GuestSocket>,
    head: &[u8],
    replay: &Replay,
) -> io::Result<()> {
    let body = &replay.body[..];
    match &replay.seed {
        Some(seed) => {
            let mut fresh = [0; SEED_BASE64_LEN];
            fill_random_seed(&mut fresh);
            guest_http::write_parts(
                stream,
                [head, &body[..seed.start], &fresh, &body[seed.end..]],
            )
            .await
        }
        None => guest_http::write_answer(stream, head, body).await,
    }
}

/// Whether hyper closes the connection once it has answered `request`:
/// an HTTP/1.1 request with a `close` token in any Connection header
/// (hyper's own rule; HTTP/1.0 requests are left out, they are rare and
/// hyper's rule for them differs). Only then may the answer hold back its
/// last segment for the FIN (`ConnHandle::send_fin_with_last_answer`): on a
/// connection that stays open the held segment would wait 200 ms.
fn closes_after_answer<B>(request: &Request<B>) -> bool {
    request.version() == Version::HTTP_11
        && request
            .headers()
            .get_all(CONNECTION)
            .iter()
            .any(|value| has_token(value.as_bytes(), b"close"))
}

/// Stops the thread's header deadline ticker once the server is done.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full};
    use hyper::{Response, StatusCode};

    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::{
        ingress::{answer_replay::kept_and_replayed, conn::segments_in, ratelimit::RateLimiter},
        metrics::{Metrics, Tree},
    };

    fn token_reply(ip_ttl: u8) -> Reply {
        Reply {
            response: Response::new(Full::new(Bytes::from_static(b"SECRET-TOKEN"))),
            ip_ttl,
            repeat: None,
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

        let answer = within_hop_limit(&conn, token_reply(1), &Method::PUT, None, peer).response;
        assert_eq!(answer.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let text = body(answer).await;
        assert!(
            !text.windows(12).any(|w| w == b"SECRET-TOKEN"),
            "the token left: {text:?}"
        );

        let default = token_reply(crate::backend::guest::DEFAULT_TTL);
        let answer = within_hop_limit(&conn, default, &Method::GET, None, peer).response;
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(body(answer).await, "SECRET-TOKEN");
    }

    #[tokio::test]
    async fn an_answer_whose_ttl_is_set_is_sent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, peer) = listener.accept().unwrap();
        let conn = ConnHandle::new(server_side.as_raw_fd());
        let answer = within_hop_limit(&conn, token_reply(1), &Method::PUT, None, peer).response;
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(body(answer).await, "SECRET-TOKEN");
    }

    /// Accepted sockets inherit TCP_NODELAY from the listener, so the
    /// server sets it once per listener instead of once per connection.
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay() {
        let listeners = listen(Ipv4Addr::LOCALHOST, 0, 1).unwrap();
        let listener = TcpListener::from_std(listeners.into_iter().next().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        let _client = TcpStream::connect(address).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
    }

    /// A connection reaches accept() only once its request has arrived
    /// (TCP_DEFER_ACCEPT): one wakeup per connection, which finds the
    /// request waiting.
    #[tokio::test]
    async fn connections_are_accepted_once_their_request_arrived() {
        use tokio::io::AsyncWriteExt as _;
        let listeners = listen(Ipv4Addr::LOCALHOST, 0, 1).unwrap();
        let listener = TcpListener::from_std(listeners.into_iter().next().unwrap()).unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let early = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(early.is_err(), "accepted before any request arrived");
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let accepted = tokio::time::timeout(Duration::from_secs(5), listener.accept()).await;
        assert!(accepted.is_ok(), "not accepted once the request arrived");
    }

    fn request(version: Version, connection: &[&str]) -> Request<()> {
        let mut request = Request::builder().version(version).uri("/");
        for value in connection {
            request = request.header(CONNECTION, *value);
        }
        request.body(()).unwrap()
    }

    /// The FIN rides on the answer only when hyper will close after it.
    #[test]
    fn only_a_closing_request_gets_the_fin_with_its_answer() {
        const HTTP_10: Version = Version::HTTP_10;
        const HTTP_11: Version = Version::HTTP_11;
        assert!(closes_after_answer(&request(HTTP_11, &["close"])));
        assert!(closes_after_answer(&request(
            HTTP_11,
            &["Keep-Alive, CLOSE "]
        )));
        assert!(closes_after_answer(&request(
            HTTP_11,
            &["upgrade", "close"]
        )));
        assert!(!closes_after_answer(&request(HTTP_11, &[])));
        assert!(!closes_after_answer(&request(HTTP_11, &["keep-alive"])));
        assert!(!closes_after_answer(&request(
            HTTP_11,
            &["closed, x-close"]
        )));
        assert!(!closes_after_answer(&request(HTTP_10, &["close"])));
    }

    /// Every connection is the guest on the port in slot 1.
    struct OnePort;

    impl FlowLookup for OnePort {
        fn slot(&self, _peer: Ipv4Addr) -> Option<u32> {
            Some(1)
        }

        fn guest_addr(&self, _peer: SocketAddrV4) -> Option<IpAddr> {
            None
        }
    }

    /// A guest server on loopback, with the local backend, answering for
    /// one port and its instance; served until `shutdown` flips.
    fn loopback_server(
        state: &std::path::Path,
        shutdown: watch::Receiver<bool>,
    ) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let server = loopback_server_with(state, shutdown, RateLimiter::new(1e9, u32::MAX));
        (server.address, server.served)
    }

    /// What a test sees of a loopback server.
    struct Loopback {
        address: SocketAddr,
        served: tokio::task::JoinHandle<()>,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
    }

    const INSTANCE: &str = "aaaaaaaa-1111-4111-8111-aaaaaaaaaaaa";

    /// `loopback_server` with the ports' request rate `requests`.
    fn loopback_server_with(
        state: &std::path::Path,
        shutdown: watch::Receiver<bool>,
        requests: RateLimiter,
    ) -> Loopback {
        use crate::{
            backend::{
                Backend, Responder,
                local::{ApiConfig, ApiContext},
                watch::{MAX_WATCHES_PER_PORT, WatchLimiter},
            },
            metrics::BackendLabel,
            state::PortAddRequest,
        };
        let uuid = INSTANCE;
        let registry = Registry::open(state).unwrap();
        let doc =
            serde_json::json!({"uuid": uuid, "name": "a", "ec2": {"instance_id": "i-0000000a"}});
        registry.put_instance(doc.to_string().as_bytes()).unwrap();
        registry
            .add_port(PortAddRequest {
                ifname: "tap-a".into(),
                instance: uuid.into(),
                ips: vec!["10.0.0.5".into()],
                ..Default::default()
            })
            .unwrap();
        let key = registry.secret("imds-token-key").unwrap();
        let api = ApiContext::new(ApiConfig::default(), key, registry.clone());
        let metrics = Arc::new(Metrics::new(BackendLabel::Local));
        let server = Arc::new(GuestServer {
            flows: Arc::new(OnePort),
            registry: registry.clone(),
            dispatcher: Arc::new(Dispatcher {
                responder: Arc::new(Responder {
                    backend: Backend::Local(api),
                    registry: registry.clone(),
                    watches: WatchLimiter::new(MAX_WATCHES_PER_PORT),
                    shutdown: shutdown.clone(),
                }),
                requests,
                metrics: metrics.clone(),
            }),
            connections: ConnectionLimiter::new(Default::default()),
        });
        let listener = listen(Ipv4Addr::LOCALHOST, 0, 1).unwrap().remove(0);
        let address = listener.local_addr().unwrap();
        Loopback {
            address,
            served: tokio::spawn(server.run(listener, shutdown)),
            registry,
            metrics,
        }
    }

    /// One request on a new connection, read until the server closes: the
    /// answer, and the segments that brought it (all, with data).
    async fn one_request(server: SocketAddr, connection: &str) -> (String, u32, u32) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut client = TcpStream::connect(server).await.unwrap();
        let before = segments_in(client.as_raw_fd());
        let request = format!("GET /openstack HTTP/1.1\r\nHost: x\r\n{connection}\r\n");
        client.write_all(request.as_bytes()).await.unwrap();
        if connection.is_empty() {
            // Keep-alive: the client ends it once the answer is in.
            let mut answer = vec![0u8; 4096];
            let n = client.read(&mut answer).await.unwrap();
            let after = segments_in(client.as_raw_fd());
            return (
                String::from_utf8_lossy(&answer[..n]).into(),
                after.0 - before.0,
                after.1 - before.1,
            );
        }
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        let after = segments_in(client.as_raw_fd());
        (
            String::from_utf8(answer).unwrap(),
            after.0 - before.0,
            after.1 - before.1,
        )
    }

    /// The server's wiring of `send_fin_with_last_answer`: a request that
    /// says `Connection: close` gets its whole answer and the FIN in the
    /// same segment, so it costs no more segments than a keep-alive
    /// answer, which has no FIN.
    #[tokio::test]
    async fn a_closing_request_gets_its_answer_and_the_fin_in_one_segment() {
        let state = tempfile::tempdir().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let (server, served) = loopback_server(state.path(), shutdown);

        let (kept, kept_segments, kept_data) = one_request(server, "").await;
        assert!(kept.starts_with("HTTP/1.1 200 OK"), "{kept}");
        assert!(kept.contains("latest"), "{kept}");
        let (closed, closed_segments, closed_data) =
            one_request(server, "Connection: close\r\n").await;
        assert!(closed.starts_with("HTTP/1.1 200 OK"), "{closed}");
        assert!(closed.contains("latest"), "{closed}");
        assert_eq!(closed_data, kept_data, "the answer in as many segments");
        assert_eq!(
            closed_segments, kept_segments,
            "no segment of its own for the FIN"
        );

        stop.send(true).unwrap();
        served.await.unwrap();
    }

    /// Writes `requests` on one connection and reads until the server
    /// closes it (a reset, when the server left part of the requests
    /// unread, ends it too: what came before it is kept).
    async fn exchange(server: SocketAddr, requests: &str) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut client = TcpStream::connect(server).await.unwrap();
        client.write_all(requests.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let read = client.read_to_end(&mut answer);
        let _ = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the server closed the connection");
        String::from_utf8(answer).unwrap()
    }

    /// Plain requests are answered without hyper; the first that is not
    /// (a body) goes to hyper with what was read of it, and hyper serves
    /// it and the rest of the connection: every answer arrives, in order.
    #[tokio::test]
    async fn plain_requests_and_one_with_a_body_share_a_connection() {
        let state = tempfile::tempdir().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let (server, served) = loopback_server(state.path(), shutdown);

        let wire = exchange(
            server,
            concat!(
                "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n\r\n",
                "HEAD /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n\r\n",
                "POST /openstack/latest/password HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nsecret",
                "GET /openstack/latest/password HTTP/1.1\r\nHost: x\r\n\r\n",
                "GET /latest/meta-data/instance-id HTTP/1.1\r\nConnection: close\r\n\r\n",
            ),
        )
        .await;
        let answers: Vec<&str> = wire.split("HTTP/1.1 ").skip(1).collect();
        assert_eq!(answers.len(), 5, "{wire}");
        assert!(answers[0].starts_with("200 OK\r\n"), "{wire}");
        assert!(answers[0].contains("content-length: 10\r\n"), "{wire}");
        assert!(answers[0].contains("\r\ndate: "), "{wire}");
        assert!(answers[0].ends_with("\r\n\r\ni-0000000a"), "{wire}");
        assert!(answers[1].contains("content-length: 10\r\n"), "{wire}");
        assert!(answers[1].ends_with("\r\n\r\n"), "HEAD has no body: {wire}");
        assert!(answers[2].starts_with("200 OK\r\n"), "{wire}");
        assert!(answers[3].ends_with("\r\n\r\nsecret"), "{wire}");
        assert!(answers[4].ends_with("\r\n\r\ni-0000000a"), "{wire}");

        stop.send(true).unwrap();
        served.await.unwrap();
    }

    /// What the plain path leaves to hyper gets hyper's answers: HTTP/1.0,
    /// a malformed head (400), a head over the limit (431).
    #[tokio::test]
    async fn what_is_not_plain_gets_hyper_answers() {
        let state = tempfile::tempdir().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let (server, served) = loopback_server(state.path(), shutdown);

        let old = exchange(server, "GET /latest/meta-data/instance-id HTTP/1.0\r\n\r\n").await;
        assert!(old.starts_with("HTTP/1.0 200 OK\r\n"), "{old}");
        assert!(old.ends_with("i-0000000a"), "{old}");
        let bad = exchange(server, "GET /x HTTP/1.1\r\nBad Header: y\r\n\r\n").await;
        assert!(bad.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{bad}");
        let big = format!("GET /x HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(9000));
        let big = exchange(server, &big).await;
        assert!(big.starts_with("HTTP/1.1 431 "), "{big}");

        stop.send(true).unwrap();
        served.await.unwrap();
    }

    /// A new connection to `server` with an instance-id request sent on it.
    async fn instance_id_requested(server: SocketAddr) -> TcpStream {
        use tokio::io::AsyncWriteExt as _;
        let mut client = TcpStream::connect(server).await.unwrap();
        client
            .write_all(b"GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        client
    }

    /// A guest that shuts its sending side after the request still gets
    /// the answer, and then the connection closes.
    #[tokio::test]
    async fn a_half_closed_request_is_answered() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let state = tempfile::tempdir().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let (server, served) = loopback_server(state.path(), shutdown);

        let mut client = instance_id_requested(server).await;
        client.shutdown().await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.ends_with("i-0000000a"), "{answer}");

        stop.send(true).unwrap();
        served.await.unwrap();
    }

    /// At shutdown a keep-alive connection waiting for its next request is
    /// closed at once (not after the header timeout), and the server ends.
    #[tokio::test]
    async fn shutdown_closes_waiting_keep_alive_connections() {
        use tokio::io::AsyncReadExt as _;
        let state = tempfile::tempdir().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let (server, served) = loopback_server(state.path(), shutdown);

        let mut client = instance_id_requested(server).await;
        let mut answer = vec![0u8; 4096];
        let n = client.read(&mut answer).await.unwrap();
        assert!(String::from_utf8_lossy(&answer[..n]).ends_with("i-0000000a"));

        let started = std::time::Instant::now();
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(3), served)
            .await
            .expect("the server ended")
            .unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    /// A keep-alive client that reads one answer at a time (framed by its
    /// Content-Length; none after a HEAD).
    struct Client {
        stream: TcpStream,
        read: Vec<u8>,
    }

    /// An answer's head (without the date, which moves) and body.
    #[derive(Debug, PartialEq)]
    struct Answer {
        head: String,
        date: String,
        body: Vec<u8>,
    }

    impl Client {
        async fn connect(server: SocketAddr) -> Self {
            Self {
                stream: TcpStream::connect(server).await.unwrap(),
                read: Vec::new(),
            }
        }

        async fn send(&mut self, requests: &str) {
            use tokio::io::AsyncWriteExt as _;
            self.stream.write_all(requests.as_bytes()).await.unwrap();
        }

        async fn answer(&mut self, to_head: bool) -> Answer {
            use tokio::io::AsyncReadExt as _;
            loop {
                if let Some(end) = answer_replay::head_end(&self.read, usize::MAX) {
                    let head = String::from_utf8(self.read[..end].to_vec()).unwrap();
                    let length: usize = head
                        .lines()
                        .find_map(|line| line.strip_prefix("content-length: "))
                        .map_or(0, |value| value.parse().unwrap());
                    let length = if to_head { 0 } else { length };
                    if self.read.len() >= end + length {
                        let body = self.read[end..end + length].to_vec();
                        self.read.drain(..end + length);
                        let (date, head): (Vec<&str>, Vec<&str>) =
                            head.lines().partition(|line| line.starts_with("date: "));
                        return Answer {
                            head: head.join("\n"),
                            date: date.concat(),
                            body,
                        };
                    }
                }
                let mut chunk = [0u8; 4096];
                let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
                    .await
                    .expect("an answer in time")
                    .unwrap();
                assert!(
                    n > 0,
                    "closed before the answer: {:?}",
                    String::from_utf8_lossy(&self.read)
                );
                self.read.extend_from_slice(&chunk[..n]);
            }
        }

        async fn ask(&mut self, request: &str) -> Answer {
            self.send(request).await;
            self.answer(request.starts_with("HEAD ")).await
        }
    }

    fn json(answer: &Answer) -> serde_json::Value {
        serde_json::from_slice(&answer.body).unwrap()
    }

    const META_DATA: &str = "GET /openstack/latest/meta_data.json HTTP/1.1\r\nHost: x\r\n\r\n";

    /// A request head sent again gets the answer kept from the first time
    /// (`answer_replay`): the same head and body but for a new seed and
    /// the current date, counted like any other request. `instance put`
    /// takes effect on the next request, as without it.
    #[tokio::test]
    async fn a_repeated_request_gets_its_kept_answer_until_the_instance_changes() {
        let state = tempfile::tempdir().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let server = loopback_server_with(state.path(), shutdown, RateLimiter::new(1e9, u32::MAX));
        let mut client = Client::connect(server.address).await;

        let first = client.ask(META_DATA).await;
        assert!(first.head.starts_with("HTTP/1.1 200 OK"), "{first:?}");
        assert_eq!(kept_and_replayed(), (1, 0));
        let second = client.ask(META_DATA).await;
        let third = client.ask(META_DATA).await;
        assert_eq!(kept_and_replayed(), (1, 2), "the repeats were replayed");
        assert_eq!(second.head, first.head);
        assert_eq!(third.head, first.head);
        assert!(httpdate::parse_http_date(third.date.trim_start_matches("date: ")).is_ok());
        let seeds: Vec<serde_json::Value> = [&first, &second, &third]
            .into_iter()
            .map(|answer| {
                let mut document = json(answer);
                let seed = document["random_seed"].take();
                assert_eq!(document, {
                    let mut d = json(&first);
                    d["random_seed"].take();
                    d
                });
                seed
            })
            .collect();
        assert_eq!(seeds[0].as_str().unwrap().len(), 684);
        assert_ne!(seeds[0], seeds[1]);
        assert_ne!(seeds[1], seeds[2]);
        assert_eq!(server.metrics.requests.get(Tree::OpenStack, 200), 3);

        let renamed = serde_json::json!({"uuid": INSTANCE, "name": "renamed"});
        server
            .registry
            .put_instance(renamed.to_string().as_bytes())
            .unwrap();
        let fourth = client.ask(META_DATA).await;
        assert_eq!(json(&fourth)["name"], "renamed");
        assert_eq!(kept_and_replayed(), (1, 2), "the change was a miss");
        let fifth = client.ask(META_DATA).await;
        assert_eq!(json(&fifth)["name"], "renamed");
        assert_eq!(kept_and_replayed(), (1, 3), "and is kept in turn");

        stop.send(true).unwrap();
        server.served.await.unwrap();
    }

    /// A replayed request takes from the port's rate like any other; once
    /// it is spent, the repeat goes the whole way and gets its 429.
    #[tokio::test]
    async fn a_repeat_is_held_to_the_ports_rate() {
        let state = tempfile::tempdir().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let server = loopback_server_with(state.path(), shutdown, RateLimiter::new(0.01, 2));
        let mut client = Client::connect(server.address).await;
        let request = "GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n";
        assert!(client.ask(request).await.head.starts_with("HTTP/1.1 200 "));
        assert!(client.ask(request).await.head.starts_with("HTTP/1.1 200 "));
        assert_eq!(kept_and_replayed(), (1, 1));
        // Found kept, refused by the rate, and answered the whole way.
        let refused = client.ask(request).await;
        assert!(refused.head.starts_with("HTTP/1.1 429 "), "{refused:?}");
        assert_eq!(kept_and_replayed(), (1, 2));
        assert_eq!(server.metrics.requests.get(Tree::Ec2, 200), 2);
        assert_eq!(server.metrics.requests.get(Tree::Ec2, 429), 1);
        // IMDSv1 use: both answers, the replayed one too; not the 429.
        let instance = INSTANCE.parse().unwrap();
        assert_eq!(
            server
                .metrics
                .tokenless
                .retain_and_read(&[instance].into_iter().collect()),
            [(instance, 2)]
        );

        stop.send(true).unwrap();
        server.served.await.unwrap();
    }

    /// Nothing whose answer depends on more than the request, the port and
    /// the instance document is kept: user data (every read is audited), a
    /// token and a request with one, a watch, an error, the versions
    /// listing (it follows the clock). Each is answered the whole way, every
    /// time.
    #[tokio::test]
    async fn what_depends_on_more_than_the_document_is_never_kept() {
        let state = tempfile::tempdir().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let server = loopback_server_with(state.path(), shutdown, RateLimiter::new(1e9, u32::MAX));
        let with_user_data =
            serde_json::json!({"uuid": INSTANCE, "name": "a", "user_data": "aGVsbG8="});
        server
            .registry
            .put_instance(with_user_data.to_string().as_bytes())
            .unwrap();
        let mut client = Client::connect(server.address).await;
        let token = client
            .ask("PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n")
            .await;
        assert!(token.head.starts_with("HTTP/1.1 200 "), "{token:?}");
        let token = String::from_utf8(token.body).unwrap();
        let with_token = format!(
            "GET /latest/meta-data/instance-id HTTP/1.1\r\nX-aws-ec2-metadata-token: {token}\r\n\r\n"
        );
        let etag = client.ask(META_DATA).await;
        let watch = "GET /openstack/latest/meta_data.json?wait_for_change=true&last_etag=other HTTP/1.1\r\n\r\n";
        let kept_before = kept_and_replayed();
        for request in [
            "GET /openstack/latest/user_data HTTP/1.1\r\n\r\n",
            "GET /latest/user-data HTTP/1.1\r\n\r\n",
            with_token.as_str(),
            watch,
            "GET /latest/meta-data/nothing-here HTTP/1.1\r\n\r\n",
            "GET /openstack HTTP/1.1\r\n\r\n",
        ] {
            for _ in 0..2 {
                let answer = client.ask(request).await;
                assert!(
                    answer.head.starts_with("HTTP/1.1 "),
                    "{request}: {answer:?}"
                );
            }
        }
        assert_eq!(kept_and_replayed(), kept_before, "none kept, none replayed");
        assert!(etag.head.contains("etag: "));
        let user_data = client.ask("GET /latest/user-data HTTP/1.1\r\n\r\n").await;
        assert_eq!(user_data.body, b"hello");

        stop.send(true).unwrap();
        server.served.await.unwrap();
    }

    /// Repeats sent together are answered in order; a HEAD's repeat has no
    /// body; a repeat that asks to close gets its answer and the close,
    /// on a new connection as on the first.
    #[tokio::test]
    async fn pipelined_head_and_closing_repeats() {
        let state = tempfile::tempdir().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let server = loopback_server_with(state.path(), shutdown, RateLimiter::new(1e9, u32::MAX));
        let get = "GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n";
        let head = "HEAD /latest/meta-data/instance-id HTTP/1.1\r\n\r\n";
        let mut client = Client::connect(server.address).await;
        client.send(&format!("{get}{head}{get}{head}{get}")).await;
        for to_head in [false, true, false, true, false] {
            let answer = client.answer(to_head).await;
            // A body after a HEAD answer would be read as the start of
            // the next answer's head.
            assert!(answer.head.starts_with("HTTP/1.1 200 OK"), "{answer:?}");
            assert!(answer.head.contains("content-length: 10"), "{answer:?}");
            if !to_head {
                assert_eq!(answer.body, b"i-0000000a");
            }
        }
        assert_eq!(kept_and_replayed(), (2, 3));
        // Kept on this thread whichever connection asks.
        let mut other = Client::connect(server.address).await;
        other.send(&format!("{head}{head}")).await;
        for _ in 0..2 {
            let answer = other.answer(true).await;
            assert!(answer.head.starts_with("HTTP/1.1 200 OK"), "{answer:?}");
            assert!(answer.head.contains("content-length: 10"), "{answer:?}");
        }
        assert!(other.read.is_empty(), "a body after a HEAD");
        assert_eq!(kept_and_replayed(), (2, 5));

        let closing = "GET /latest/meta-data/instance-id HTTP/1.1\r\nConnection: close\r\n\r\n";
        for replayed in [5, 6] {
            let wire = exchange(server.address, &format!("{closing}{get}")).await;
            assert_eq!(
                wire.matches("HTTP/1.1 200 OK").count(),
                1,
                "closed after it: {wire}"
            );
            assert!(wire.ends_with("i-0000000a"), "{wire}");
            assert_eq!(kept_and_replayed().1, replayed);
        }

        stop.send(true).unwrap();
        server.served.await.unwrap();
    }

    /// Not a test: a fixed load for an instruction count of the server
    /// (`valgrind --tool=callgrind --separate-threads=yes <test binary>
    /// --ignored --exact ingress::server::tests::keep_alive_load_for_a_profile`).
    #[test]
    #[ignore]
    fn keep_alive_load_for_a_profile() {
        use std::io::{Read as _, Write as _};
        const REQUESTS: usize = 2000;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let state = tempfile::tempdir().unwrap();
        let (stop, shutdown) = watch::channel(false);
        runtime.block_on(async {
            let (server, served) = loopback_server(state.path(), shutdown);
            let client = std::thread::spawn(move || {
                let mut stream = std::net::TcpStream::connect(server).unwrap();
                let request = b"GET /openstack/latest/meta_data.json HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n";
                let mut buf = vec![0u8; 65536];
                if std::env::var_os("PROFILE_CLOSE").is_some() {
                    let request = b"GET /openstack/latest/meta_data.json HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n";
                    for _ in 0..REQUESTS {
                        let mut stream = std::net::TcpStream::connect(server).unwrap();
                        stream.write_all(request).unwrap();
                        let mut all = Vec::new();
                        stream.read_to_end(&mut all).unwrap();
                        assert!(all.len() > 100);
                    }
                    return;
                }
                for _ in 0..REQUESTS {
                    stream.write_all(request).unwrap();
                    let mut have = 0;
                    loop {
                        have += stream.read(&mut buf[have..]).unwrap();
                        let text = String::from_utf8_lossy(&buf[..have]);
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length: usize = text[..end]
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length: "))
                                .unwrap()
                                .parse()
                                .unwrap();
                            if have >= end + 4 + length {
                                break;
                            }
                        }
                    }
                }
            });
            while !client.is_finished() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            client.join().unwrap();
            stop.send(true).unwrap();
            served.await.unwrap();
        });
    }

    /// Several listeners share one address (SO_REUSEPORT).
    #[tokio::test]
    async fn listeners_share_the_address() {
        let first = listen(Ipv4Addr::LOCALHOST, 0, 1).unwrap();
        let port = first[0].local_addr().unwrap().port();
        let more = listen(Ipv4Addr::LOCALHOST, port, 2).unwrap();
        assert_eq!(more.len(), 2);
    }
}
