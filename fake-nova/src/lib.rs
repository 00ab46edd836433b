//! A stand-in for nova-api-metadata as it runs behind neutron's metadata
//! proxy (`service_metadata_proxy = True`), for tests.
//!
//! It checks the proxy headers the way nova's metadata handler does:
//! `X-Instance-ID`, `X-Tenant-ID` and `X-Instance-ID-Signature` must each be
//! there once (400 otherwise), the signature must equal the hex HMAC-SHA256
//! of the instance ID under the shared secret, compared in constant time
//! (403 otherwise), and a known instance whose project differs from
//! `X-Tenant-ID` is 404. Then it answers with small, recognisable documents,
//! stores passwords the way nova's password handler does (409 on a second
//! POST, 400 over 1020 bytes), and records every request it saw.
//!
//! Each answer carries the request's sequence number, so a test can tell a
//! cached answer (an old number) from a fresh one.
//!
//! Used as a library by unit tests and as the `fake-nova` binary (request
//! log as JSON lines on stdout) by end-to-end tests.
mod handler;
pub mod pki;
mod tls;

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpSocket, task::JoinSet};

pub use fake_nova_record::RecordedRequest;
pub use handler::sign_instance_id;

/// Calls back with each request once it has been answered.
pub type RequestHook = Arc<dyn Fn(&RecordedRequest) + Send + Sync>;

/// How to run one fake nova.
#[derive(Clone, Default)]
pub struct Config {
    /// nova's `[neutron] metadata_proxy_shared_secret`.
    pub secret: Vec<u8>,
    /// Serve HTTPS instead of HTTP.
    pub tls: Option<TlsConfig>,
    /// Called with every request after it was answered (the binary prints it).
    pub on_request: Option<RequestHook>,
    /// User data read from this file at every request (`.../user_data`,
    /// `.../user-data`): a test changes nova's answer by rewriting it, and
    /// makes it 404 by removing it. Without it user data is echoed like
    /// any other path.
    pub user_data_file: Option<std::path::PathBuf>,
}

/// PEM text for an HTTPS fake nova.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub cert_pem: String,
    pub key_pem: String,
    /// When set, a client certificate signed by this CA is required.
    pub client_ca_pem: Option<String>,
}

/// What tests can change while the fake nova runs.
#[derive(Default)]
struct Behaviour {
    /// instance ID -> project: a mismatching X-Tenant-ID is 404, as in nova.
    projects: HashMap<String, String>,
    /// path (without query) -> scripted (status, body) once the checks pass.
    scripted: HashMap<String, (u16, String)>,
    /// instance ID -> password set by POST.
    passwords: HashMap<String, String>,
    /// Wait this long before answering (slow or hung nova).
    delay: Duration,
}

struct State {
    secret: Vec<u8>,
    user_data_file: Option<std::path::PathBuf>,
    on_request: Option<RequestHook>,
    behaviour: Mutex<Behaviour>,
    log: Mutex<Vec<RecordedRequest>>,
    next_seq: Mutex<u64>,
    /// TCP connections accepted (to see keep-alive at work).
    connections: AtomicUsize,
}

/// A running fake nova. Dropping it (or `stop`) closes the listener and
/// every open connection at once, like a nova that died.
pub struct FakeNova {
    addr: SocketAddr,
    state: Arc<State>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeNova {
    /// Listens on `listen` (port 0 picks one; SO_REUSEADDR is set, so a test
    /// can start a new fake nova on the port of one it stopped).
    pub async fn start(listen: SocketAddr, config: Config) -> io::Result<Self> {
        let socket = if listen.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(listen)?;
        let listener = socket.listen(1024)?;
        let addr = listener.local_addr()?;
        let acceptor = match &config.tls {
            Some(tls) => Some(tls::acceptor(tls).map_err(io::Error::other)?),
            None => None,
        };
        let state = Arc::new(State {
            secret: config.secret,
            user_data_file: config.user_data_file,
            on_request: config.on_request,
            behaviour: Mutex::default(),
            log: Mutex::default(),
            next_seq: Mutex::new(0),
            connections: AtomicUsize::new(0),
        });
        let server_state = state.clone();
        let server = tokio::spawn(async move {
            // Connections live in this set: aborting the server task drops
            // the set, which aborts every connection with it.
            let mut connections = JoinSet::new();
            loop {
                while connections.try_join_next().is_some() {}
                let Ok((stream, _peer)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                server_state.connections.fetch_add(1, Ordering::Relaxed);
                let state = server_state.clone();
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| {
                        let state = state.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                handler::handle(&state, request).await,
                            )
                        }
                    });
                    match acceptor {
                        Some(acceptor) => {
                            // A failed handshake (no or bad client certificate) just closes.
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        Ok(Self {
            addr,
            state,
            server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.state.log.lock().unwrap().len()
    }

    /// TCP connections accepted so far.
    pub fn connection_count(&self) -> usize {
        self.state.connections.load(Ordering::Relaxed)
    }

    pub fn clear_requests(&self) {
        self.state.log.lock().unwrap().clear();
    }

    /// Declares an instance's project: requests for it with another
    /// X-Tenant-ID get 404, as from nova. Unknown instances accept any project.
    pub fn set_project(&self, instance_id: &str, project_id: &str) {
        let mut behaviour = self.state.behaviour.lock().unwrap();
        behaviour
            .projects
            .insert(instance_id.into(), project_id.into());
    }

    /// Answers `path` (without query) with this status and body once the
    /// proxy headers have been checked.
    pub fn script(&self, path: &str, status: u16, body: &str) {
        let mut behaviour = self.state.behaviour.lock().unwrap();
        behaviour
            .scripted
            .insert(path.into(), (status, body.into()));
    }

    /// Waits this long before answering each request (a slow or hung nova).
    pub fn set_delay(&self, delay: Duration) {
        self.state.behaviour.lock().unwrap().delay = delay;
    }

    /// The password an instance has set with POST, if any.
    pub fn password(&self, instance_id: &str) -> Option<String> {
        self.state
            .behaviour
            .lock()
            .unwrap()
            .passwords
            .get(instance_id)
            .cloned()
    }

    /// Closes the listener and every connection.
    pub fn stop(self) {}
}

impl Drop for FakeNova {
    fn drop(&mut self) {
        self.server.abort();
    }
}
