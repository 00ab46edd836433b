//! One thread's epoll loop: accept, read a request head, write the peer's
//! answer, and in close mode close. Level-triggered, non-blocking, one
//! read buffer per thread; a connection keeps state only while its request
//! head is incomplete or its answer is partly written.
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};

use crate::Mode;
use crate::answers::Answers;

/// Largest request head read before the connection is dropped.
const MAX_HEAD: usize = 8 * 1024;
/// What a request for anything else gets (then the connection is closed).
const NOT_FOUND: &[u8] =
    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
/// The epoll token of the listener (connections use their fd).
const LISTENER: u64 = u64::MAX;

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt with a correctly sized int on an fd we own.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A listening socket with SO_REUSEPORT (one per thread) and TCP_NODELAY,
/// which accepted sockets inherit, with the same backlog as the daemon.
pub fn listen(addr: SocketAddrV4) -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation; the fd is owned at once.
    let fd = check(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: a fresh fd nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    let sockaddr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: bind with a sockaddr_in of the right size.
    check(unsafe {
        libc::bind(
            fd,
            (&sockaddr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })?;
    // SAFETY: listen on our socket.
    check(unsafe { libc::listen(fd, 65_535) })?;
    Ok(socket)
}

/// A connection waiting for the rest of its head or of its answer.
#[derive(Default)]
struct Pending {
    head: Vec<u8>,
    /// The answer, and how much of it is written.
    unsent: Option<(&'static [u8], usize)>,
}

struct Loop {
    epoll: OwnedFd,
    answers: &'static Answers,
    request_line_start: &'static [u8],
    mode: Mode,
    /// Peer answer per open connection.
    peers: HashMap<RawFd, &'static [u8]>,
    pending: HashMap<RawFd, Pending>,
}

pub fn serve(
    listener: OwnedFd,
    answers: &'static Answers,
    request_line_start: &'static [u8],
    mode: Mode,
) -> io::Result<()> {
    // SAFETY: epoll_create1 with a valid flag; the fd is owned at once.
    let epoll = unsafe { OwnedFd::from_raw_fd(check(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
    let mut state = Loop {
        epoll,
        answers,
        request_line_start,
        mode,
        peers: HashMap::new(),
        pending: HashMap::new(),
    };
    state.watch(listener.as_raw_fd(), LISTENER, libc::EPOLLIN as u32)?;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // SAFETY: epoll_wait into a buffer of `events.len()` entries.
        let ready = unsafe {
            libc::epoll_wait(
                state.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                -1,
            )
        };
        if ready < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        for event in &events[..ready as usize] {
            let (token, flags) = (event.u64, event.events);
            if token == LISTENER {
                state.accept_all(listener.as_raw_fd())?;
            } else if flags & libc::EPOLLOUT as u32 != 0 {
                state.write_rest(token as RawFd);
            } else {
                state.read(token as RawFd, &mut buf);
            }
        }
    }
}

impl Loop {
    fn watch(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: registering an open fd with our epoll instance.
        check(unsafe {
            libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event)
        })
        .map(drop)
    }

    fn rewatch(&self, fd: RawFd, events: u32) {
        let mut event = libc::epoll_event {
            events,
            u64: fd as u64,
        };
        // SAFETY: changing the events of an fd registered with our epoll.
        unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_MOD, fd, &mut event) };
    }

    fn accept_all(&mut self, listener: RawFd) -> io::Result<()> {
        loop {
            // SAFETY: sockaddr_in storage of the right size for accept4.
            let mut peer: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            // SAFETY: accept4 into `peer`, whose size `len` says.
            let fd = unsafe {
                libc::accept4(
                    listener,
                    (&mut peer as *mut libc::sockaddr_in).cast(),
                    &mut len,
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                let err = io::Error::last_os_error();
                return match err.kind() {
                    io::ErrorKind::WouldBlock => Ok(()),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => continue,
                    _ => Err(err),
                };
            }
            let addr = Ipv4Addr::from(u32::from_be(peer.sin_addr.s_addr));
            match self.answers.get(addr) {
                Some(answer) if self.watch(fd, fd as u64, libc::EPOLLIN as u32).is_ok() => {
                    self.peers.insert(fd, answer);
                }
                _ => close(fd),
            }
        }
    }

    fn drop_connection(&mut self, fd: RawFd) {
        self.peers.remove(&fd);
        self.pending.remove(&fd);
        close(fd);
    }

    fn read(&mut self, fd: RawFd, buf: &mut [u8]) {
        // SAFETY: read into a buffer of `buf.len()` bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let kind = io::Error::last_os_error().kind();
            if kind != io::ErrorKind::WouldBlock && kind != io::ErrorKind::Interrupted {
                self.drop_connection(fd);
            }
            return;
        }
        if n == 0 {
            self.drop_connection(fd);
            return;
        }
        let data = &buf[..n as usize];
        // The common case: a whole head in one read, nothing pending.
        let complete = match self.pending.get_mut(&fd) {
            None if head_complete(data) => self.request_line_ok(data),
            None => {
                self.pending.insert(
                    fd,
                    Pending {
                        head: data.to_vec(),
                        unsent: None,
                    },
                );
                return;
            }
            Some(pending) => {
                pending.head.extend_from_slice(data);
                if pending.head.len() > MAX_HEAD {
                    self.drop_connection(fd);
                    return;
                }
                if !head_complete(&pending.head) {
                    return;
                }
                let head = std::mem::take(&mut pending.head);
                self.pending.remove(&fd);
                self.request_line_ok(&head)
            }
        };
        let Some(&answer) = self.peers.get(&fd) else {
            return;
        };
        if complete {
            self.send(fd, answer, 0);
        } else {
            write_all_or_give_up(fd, NOT_FOUND);
            self.drop_connection(fd);
        }
    }

    /// The request line, and only it: `GET <the path> HTTP/1.1`.
    fn request_line_ok(&self, head: &[u8]) -> bool {
        head.starts_with(self.request_line_start)
    }

    /// Writes `answer` from `offset`; waits for EPOLLOUT if the socket is
    /// full, closes afterwards in close mode.
    fn send(&mut self, fd: RawFd, answer: &'static [u8], mut offset: usize) {
        while offset < answer.len() {
            let rest = &answer[offset..];
            // SAFETY: write from a live slice of `rest.len()` bytes.
            let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
            if n < 0 {
                let kind = io::Error::last_os_error().kind();
                if kind == io::ErrorKind::Interrupted {
                    continue;
                }
                if kind == io::ErrorKind::WouldBlock {
                    self.pending.entry(fd).or_default().unsent = Some((answer, offset));
                    self.rewatch(fd, libc::EPOLLOUT as u32);
                } else {
                    self.drop_connection(fd);
                }
                return;
            }
            offset += n as usize;
        }
        if self.mode == Mode::Close {
            self.drop_connection(fd);
        }
    }

    fn write_rest(&mut self, fd: RawFd) {
        let Some((answer, offset)) = self.pending.get_mut(&fd).and_then(|p| p.unsent.take()) else {
            return;
        };
        self.pending.remove(&fd);
        self.rewatch(fd, libc::EPOLLIN as u32);
        self.send(fd, answer, offset);
    }
}

fn head_complete(data: &[u8]) -> bool {
    data.windows(4).any(|w| w == b"\r\n\r\n")
}

fn write_all_or_give_up(fd: RawFd, bytes: &[u8]) {
    // SAFETY: write from a live slice; a short write is not retried (the
    // connection is closed right after).
    unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
}

fn close(fd: RawFd) {
    // SAFETY: closing an fd this loop owns (closing drops it from epoll).
    unsafe { libc::close(fd) };
}
