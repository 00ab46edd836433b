//! Listening sockets handed to the daemon by whoever keeps them open across
//! its restarts: systemd's socket activation (`LISTEN_FDS`, see
//! `sd_listen_fds(3)`), or anything that speaks the same protocol.
//!
//! Why: a listener the daemon binds itself dies with the daemon. Every
//! connection still in its accept queue is reset, and until the next daemon
//! listens, guests are refused. A listener someone else holds outlives the
//! daemon (a SIGTERM, a SIGKILL, an upgrade): the kernel keeps completing
//! handshakes and queueing guests' connections, and the next daemon accepts
//! them. On SIGTERM the old daemon stops accepting and answers what it has
//! accepted, so no request is refused or reset across a restart.
//!
//! The sockets must listen on the server address and port, in the server's
//! network namespace (`NetworkNamespacePath=/run/netns/<--server-netns>` in
//! the socket unit); anything else is refused with the reason, since the
//! datapath would never reach it.
use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, bail};

/// `SIOCGSKNS` (linux/sockios.h): an fd of the network namespace a socket
/// belongs to. The libc crate does not define it.
const SIOCGSKNS: libc::c_ulong = 0x894c;

/// The TCP listeners handed over in `LISTEN_FDS` (none when the daemon was
/// started without socket activation), checked to listen on `addr:port`
/// in the namespace `netns`, and ready for tokio (non-blocking,
/// TCP_NODELAY inherited by accepted sockets).
pub fn take(addr: Ipv4Addr, port: u16, netns: BorrowedFd<'_>) -> anyhow::Result<Vec<TcpListener>> {
    let mut fds = listenfd::ListenFd::from_env();
    let wanted = SocketAddr::from((addr, port));
    (0..fds.len())
        .filter_map(|index| {
            let what = || format!("the socket handed over as LISTEN_FDS index {index}");
            let listener = match fds.take_tcp_listener(index) {
                Ok(listener) => listener?,
                Err(err) => return Some(Err(err).with_context(what)),
            };
            Some(
                check(&listener, wanted, netns)
                    .with_context(what)
                    .map(|()| listener),
            )
        })
        .collect()
}

fn check(listener: &TcpListener, wanted: SocketAddr, netns: BorrowedFd<'_>) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    if local != wanted {
        bail!(
            "it listens on {local}, not on the server address {wanted} \
             (server_addr and --server-port must match ListenStream=)"
        );
    }
    if !same_namespace(listener, netns)? {
        bail!(
            "it is not in the server's network namespace: the socket unit needs \
             NetworkNamespacePath=/run/netns/<--server-netns>"
        );
    }
    listener.set_nonblocking(true)?;
    // Accepted sockets inherit it (see `server::listen`).
    let on: libc::c_int = 1;
    // SAFETY: a valid socket fd and a c_int option value of the right size.
    let set = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(std::io::Error::last_os_error()).context("setting TCP_NODELAY");
    }
    super::server::defer_accept(listener).context("setting TCP_DEFER_ACCEPT")
}

/// Whether `listener` belongs to the network namespace `netns` (same nsfs
/// inode and device).
fn same_namespace(listener: &TcpListener, netns: BorrowedFd<'_>) -> anyhow::Result<bool> {
    // SAFETY: SIOCGSKNS takes no argument and returns a new fd or -1.
    let fd = unsafe { libc::ioctl(listener.as_raw_fd(), SIOCGSKNS) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("asking for its network namespace");
    }
    // SAFETY: a new fd that nothing else owns.
    let socket_ns = unsafe { OwnedFd::from_raw_fd(fd) };
    let socket_ns = nix::sys::stat::fstat(&socket_ns)?;
    let server_ns = nix::sys::stat::fstat(netns)?;
    Ok((socket_ns.st_dev, socket_ns.st_ino) == (server_ns.st_dev, server_ns.st_ino))
}

/// One listener per server thread: the handed-over ones, duplicated round
/// robin when there are fewer than `threads` (each thread registers its own
/// fd with its own runtime; they all accept from the same queue).
pub fn spread(listeners: Vec<TcpListener>, threads: usize) -> anyhow::Result<Vec<TcpListener>> {
    let count = threads.max(listeners.len());
    listeners
        .iter()
        .cycle()
        .take(count)
        .map(|listener| {
            listener
                .try_clone()
                .context("duplicating a handed-over listener")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_netns() -> std::fs::File {
        std::fs::File::open("/proc/self/ns/net").unwrap()
    }

    /// A listener of this namespace on the right address is accepted and
    /// made ready for tokio; another address is refused with both named.
    #[test]
    fn the_address_and_namespace_are_checked() {
        use std::os::fd::AsFd as _;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let netns = own_netns();
        check(&listener, addr, netns.as_fd()).unwrap();

        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let err = check(&listener, other, netns.as_fd()).unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        assert!(err.to_string().contains("127.0.0.1:1"), "{err}");

        // Not a namespace this socket is in: the stat of another nsfs file
        // (the mount namespace) differs.
        let mnt = std::fs::File::open("/proc/self/ns/mnt").unwrap();
        let err = check(&listener, addr, mnt.as_fd()).unwrap_err();
        assert!(err.to_string().contains("NetworkNamespacePath"), "{err}");
    }

    #[test]
    fn fewer_listeners_than_threads_are_duplicated() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let spread = spread(vec![listener], 3).unwrap();
        assert_eq!(spread.len(), 3);
        assert!(spread.iter().all(|l| l.local_addr().unwrap() == addr));
    }
}
