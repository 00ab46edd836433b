//! Who is on the other end of a guest connection, and what we may do to the
//! connection's socket.
use std::{
    net::Ipv4Addr,
    os::fd::RawFd,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
};

use crate::state::Port;

/// The guest behind one accepted connection. Built by the server from the
/// BPF flow map (never from anything the guest sent), once per connection.
#[derive(Clone, Debug)]
pub struct Guest {
    pub port: Arc<Port>,
    /// The guest's own source address, as it sent it (for X-Forwarded-For).
    pub guest_addr: Ipv4Addr,
    pub conn: Arc<ConnHandle>,
}

/// Per-connection socket controls the API needs (IMDSv2 hop limit).
#[derive(Debug)]
pub struct ConnHandle {
    fd: RawFd,
    ttl: AtomicU8,
}

/// Linux's default IP TTL for our responses.
pub const DEFAULT_TTL: u8 = 64;

impl ConnHandle {
    /// `fd` must stay open as long as this handle is used (the server keeps
    /// the TcpStream alive for the whole connection).
    pub fn new(fd: RawFd) -> Self {
        Self {
            fd,
            ttl: AtomicU8::new(DEFAULT_TTL),
        }
    }

    /// Lowers the IP TTL of everything the connection sends from now on to
    /// `ttl`; never raises it. The kernel resends lost segments with the
    /// socket's TTL at the time of the resend, so raising it again after a
    /// token answer would let the token's lost bytes go out once more with
    /// the higher TTL, and a client beyond the hop limit would get the token
    /// by sending one more request on the same connection. Skips the syscall
    /// when the TTL is already that low, so the common path costs nothing.
    pub fn limit_ip_ttl(&self, ttl: u8) {
        if self.ttl.fetch_min(ttl, Ordering::Relaxed) <= ttl {
            return;
        }
        let value = libc::c_int::from(ttl);
        // SAFETY: setsockopt on a socket fd we own, with a correctly sized int.
        unsafe {
            libc::setsockopt(
                self.fd,
                libc::IPPROTO_IP,
                libc::IP_TTL,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}
