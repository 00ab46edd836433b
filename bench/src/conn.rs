//! Where a simulated guest's requests go, and one request on a fresh or
//! kept connection.
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::http1::{self, ConnMode};
use crate::nsnet::NetnsHandle;

/// How long one request may take before it counts as an error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// From inside a guest namespace to `addr` (169.254.169.254:80, or
/// [fe80::a9fe:a9fe%eth0]:80): the guest's routes and whatever catches the
/// traffic decide who answers.
#[derive(Clone, Debug)]
pub struct Target {
    pub ns: Arc<NetnsHandle>,
    pub addr: SocketAddr,
}

pub async fn connect(target: &Target) -> io::Result<TcpStream> {
    // Created (synchronously, on this thread) inside the guest.
    let socket = target.ns.tcp_socket(target.addr.is_ipv6())?;
    let stream = socket.connect(target.addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A client's connection state across requests.
pub struct Session {
    pub target: Target,
    conn: Option<TcpStream>,
    buf: Vec<u8>,
    /// Where the last answer's body is in `buf`.
    body: std::ops::Range<usize>,
    /// How long the last connect took (zero when the connection was kept).
    pub last_connect: Duration,
}

/// What one request got.
pub struct Answer {
    pub status: u16,
    /// When the whole response had arrived (before any wait for EOF).
    pub done: Instant,
}

impl Session {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            conn: None,
            buf: Vec::with_capacity(16 * 1024),
            body: 0..0,
            last_connect: Duration::ZERO,
        }
    }

    /// Sends `request` (built for `mode`) and reads the answer. With
    /// keep-alive the connection is reused; with close it is new, and the
    /// server's close is awaited after the answer is timed.
    pub async fn request(&mut self, request: &[u8], mode: ConnMode) -> io::Result<Answer> {
        let result = tokio::time::timeout(REQUEST_TIMEOUT, self.request_inner(request, mode))
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "request timed out")));
        if result.is_err() || mode == ConnMode::Close {
            self.conn = None;
        }
        result
    }

    async fn request_inner(&mut self, request: &[u8], mode: ConnMode) -> io::Result<Answer> {
        let started = Instant::now();
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => connect(&self.target).await?,
        };
        self.last_connect = started.elapsed();
        self.body = 0..0;
        let response = http1::exchange(&mut conn, request, &mut self.buf).await?;
        let done = Instant::now();
        self.body = response.body.clone();
        if mode == ConnMode::Close {
            http1::drain_to_eof(&mut conn).await?;
        } else {
            self.conn = Some(conn);
        }
        Ok(Answer {
            status: response.status,
            done,
        })
    }

    /// The body of the last answer.
    pub fn last_body(&self) -> &[u8] {
        &self.buf[self.body.clone()]
    }

    /// The last answer as it came: status line, headers and body.
    pub fn last_response(&self) -> &[u8] {
        &self.buf[..self.body.end]
    }
}
