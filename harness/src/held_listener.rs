//! A listening socket the test holds across daemon restarts, as systemd
//! does for a socket-activated service: bound inside the daemon's server
//! namespace and handed to each daemon it starts as `LISTEN_FDS`.
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::{FromRawFd as _, OwnedFd};

use anyhow::{Context as _, Result};

/// The daemon's default server address and port inside its namespace.
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(240, 0, 0, 1);
pub const SERVER_PORT: u16 = 80;

/// Binds `addr:port` in the network namespace `/run/netns/<netns>` with
/// IP_FREEBIND (systemd's `FreeBind=yes`: the address appears only when the
/// daemon sets up its server link) and listens. Only this thread enters the
/// namespace, and only for the bind.
pub fn bind_in(netns: &str, addr: Ipv4Addr, port: u16) -> Result<TcpListener> {
    let path = format!("/run/netns/{netns}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<TcpListener> {
                let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
                // SAFETY: setns on this thread only, with an nsfs fd.
                check(unsafe {
                    libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET)
                })
                .context("setns")?;
                bind(addr, port)
            })
            .join()
            .expect("the binding thread panicked")
    })
}

fn bind(addr: Ipv4Addr, port: u16) -> Result<TcpListener> {
    // SAFETY: plain socket calls on a socket this function owns; the
    // option values and the address are valid for their sizes.
    unsafe {
        let fd = check(libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        ))
        .context("socket")?;
        let socket = OwnedFd::from_raw_fd(fd);
        let on: libc::c_int = 1;
        for (level, option) in [
            (libc::SOL_SOCKET, libc::SO_REUSEADDR),
            (libc::IPPROTO_IP, libc::IP_FREEBIND),
        ] {
            check(libc::setsockopt(
                fd,
                level,
                option,
                (&raw const on).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            ))
            .context("setsockopt")?;
        }
        let sockaddr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(addr).to_be(),
            },
            sin_zero: [0; 8],
        };
        check(libc::bind(
            fd,
            (&raw const sockaddr).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ))
        .with_context(|| format!("bind {addr}:{port}"))?;
        check(libc::listen(fd, 4096)).context("listen")?;
        Ok(TcpListener::from(socket))
    }
}

fn check(result: libc::c_int) -> std::io::Result<libc::c_int> {
    if result < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(result)
    }
}
