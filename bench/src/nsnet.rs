//! TCP sockets inside the guests' network namespaces, from one process.
//!
//! A socket belongs to the network namespace its creating thread was in when
//! it called socket(2), for its whole life, whichever thread uses it later.
//! So the load generator, one process on a tokio runtime, switches the
//! current worker thread into a guest's namespace (setns(CLONE_NEWNET) is
//! per thread) right before creating that guest's socket; all traffic of the
//! socket then starts inside the guest, never in the machine's namespace.
//!
//! Only runtimes made for a measurement run this (they are dropped after it,
//! so no thread lingers in a namespace that is about to be deleted), and
//! nothing else creates inet sockets or spawns processes on their threads.
use std::cell::Cell;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use tokio::net::TcpSocket;

/// An open handle on a network namespace (its /run/netns bind mount).
#[derive(Debug)]
pub struct NetnsHandle {
    file: File,
    /// The namespace's inode: what tells two namespaces apart.
    inode: u64,
}

thread_local! {
    /// The inode of the namespace this thread last switched into (0: never).
    static CURRENT: Cell<u64> = const { Cell::new(0) };
}

impl NetnsHandle {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let inode = file.metadata()?.ino();
        let own = std::fs::metadata("/proc/self/ns/net")?.ino();
        if inode == own {
            // Load from the machine's own namespace is exactly what must
            // never happen; refuse rather than trust the caller.
            bail!("{} is this process's own network namespace", path.display());
        }
        Ok(Self { file, inode })
    }

    /// Moves the calling thread into this namespace (skipped when it is
    /// there already: most sockets of a worker go to the same few guests
    /// in a row only by chance, but the check is free).
    fn enter(&self) -> io::Result<()> {
        if CURRENT.get() == self.inode {
            return Ok(());
        }
        // The main thread's namespace is the process's as `ip netns pids`
        // sees it: switching it would make the harness's cleanup of that
        // guest namespace SIGKILL this very process. Sockets are made on
        // runtime workers only.
        // SAFETY: getpid and gettid have no preconditions.
        if unsafe { libc::getpid() == libc::gettid() } {
            return Err(io::Error::other(
                "guest sockets must be created on a worker thread, not the main thread",
            ));
        }
        // SAFETY: setns on an fd we own; it affects only this thread.
        if unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            // The thread's namespace is unknown now; never skip next time.
            CURRENT.set(0);
            return Err(io::Error::last_os_error());
        }
        CURRENT.set(self.inode);
        Ok(())
    }

    /// A non-blocking TCP socket that lives in this namespace.
    pub fn tcp_socket(&self, ipv6: bool) -> io::Result<TcpSocket> {
        self.enter()?;
        let family = if ipv6 { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: plain socket(2); the fd is checked and owned by TcpSocket.
        let fd = unsafe {
            libc::socket(
                family,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, non-blocking stream socket nobody else owns.
        Ok(unsafe { TcpSocket::from_raw_fd(fd) })
    }
}
