//! What we may do to a guest connection's socket: lower its IP TTL for the
//! IMDSv2 hop limit, and never raise it again; send its last answer and its
//! FIN in one segment.
use std::{
    os::fd::RawFd,
    sync::atomic::{AtomicBool, AtomicU8, Ordering},
};

use crate::backend::guest::DEFAULT_TTL;

/// Per-connection socket control the backend's answers need (the IMDSv2
/// hop limit), applied by the server before each answer is written, and
/// whether an answer is the connection's last (read by `GuestSocket`).
#[derive(Debug)]
pub struct ConnHandle {
    fd: RawFd,
    ttl: AtomicU8,
    last_answer: AtomicBool,
}

impl ConnHandle {
    /// `fd` must stay open as long as this handle is used (the server keeps
    /// the TcpStream alive for the whole connection).
    pub fn new(fd: RawFd) -> Self {
        Self {
            fd,
            ttl: AtomicU8::new(DEFAULT_TTL),
            last_answer: AtomicBool::new(false),
        }
    }

    /// Lowers the IP TTL of everything the connection sends from now on to
    /// `ttl`; never raises it. The kernel resends lost segments with the
    /// socket's TTL at the time of the resend, so raising it again after a
    /// token answer would let the token's lost bytes go out once more with
    /// the higher TTL, and a client beyond the hop limit would get the token
    /// by sending one more request on the same connection. Skips the syscall
    /// when the TTL is already that low, so the common path costs nothing.
    ///
    /// An error means the socket still has its previous TTL: the caller must
    /// not send an answer that needs the lower one (fail closed).
    pub fn limit_ip_ttl(&self, ttl: u8) -> std::io::Result<()> {
        if self.ttl.load(Ordering::Relaxed) <= ttl {
            return Ok(());
        }
        set_int_option(self.fd, libc::IPPROTO_IP, libc::IP_TTL, ttl.into())?;
        // Recorded only once the kernel has it: after a failure the next
        // answer that needs the lower TTL tries again.
        self.ttl.fetch_min(ttl, Ordering::Relaxed);
        Ok(())
    }

    /// For an answer after which the connection is closed: its last,
    /// partial segment is held back (MSG_MORE) until the close, which then
    /// sets the FIN on it instead of sending one segment more. Each segment
    /// the daemon sends costs its transmit, the datapath's egress program
    /// and the peer's receive work; with a new connection per request the
    /// separate FIN was about a tenth of the daemon's CPU per request.
    /// Full segments still leave at once, and the close follows the write
    /// in the same poll, so nothing waits. Set once the request asked for
    /// the close, before its answer is written; MSG_MORE rather than
    /// TCP_CORK because it rides on the write and costs no syscall.
    pub fn send_fin_with_last_answer(&self) {
        self.last_answer.store(true, Ordering::Relaxed);
    }

    /// The flags of the connection's next send(2): never SIGPIPE (the
    /// guest may be gone), and MSG_MORE once the answer is the last.
    pub(super) fn send_flags(&self) -> libc::c_int {
        if self.last_answer.load(Ordering::Relaxed) {
            libc::MSG_NOSIGNAL | libc::MSG_MORE
        } else {
            libc::MSG_NOSIGNAL
        }
    }
}

/// setsockopt of an int-valued option (neither std nor tokio has IP_TTL
/// after accept or TCP_DEFER_ACCEPT).
pub(super) fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: setsockopt on an fd the caller owns, with a correctly sized int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Segments a socket has received so far, and how many of them carried
/// data (the kernel's TCP_INFO): what the tests count a FIN by.
#[cfg(test)]
pub(super) fn segments_in(socket: RawFd) -> (u32, u32) {
    // SAFETY: tcp_info is plain old data; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt on an open socket into a correctly sized struct.
    let rc = unsafe {
        libc::getsockopt(
            socket,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    (info.tcpi_segs_in, info.tcpi_data_segs_in)
}

#[cfg(test)]
mod tests {
    use std::{
        net::{TcpListener, TcpStream},
        os::fd::AsRawFd as _,
    };

    use super::*;

    /// The IP TTL set on the connection's socket, read back from the kernel.
    fn ip_ttl(stream: &TcpStream) -> u8 {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt on an open socket into a correctly sized int.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_TTL,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        value as u8
    }

    /// After a token (the hop limit), everything on the same keep-alive
    /// connection keeps the lower TTL: a raised one would carry the token's
    /// retransmitted bytes past the hop limit. A new connection starts at
    /// the default.
    #[test]
    fn ttl_is_lowered_and_never_raised_again() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        let conn = ConnHandle::new(server_side.as_raw_fd());

        conn.limit_ip_ttl(DEFAULT_TTL).unwrap();
        assert_eq!(ip_ttl(&server_side), DEFAULT_TTL);
        conn.limit_ip_ttl(3).unwrap();
        assert_eq!(ip_ttl(&server_side), 3);
        conn.limit_ip_ttl(DEFAULT_TTL).unwrap();
        assert_eq!(ip_ttl(&server_side), 3, "not raised again");
        conn.limit_ip_ttl(1).unwrap();
        assert_eq!(ip_ttl(&server_side), 1);

        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        let conn = ConnHandle::new(server_side.as_raw_fd());
        conn.limit_ip_ttl(DEFAULT_TTL).unwrap();
        assert_eq!(ip_ttl(&server_side), DEFAULT_TTL);
    }

    /// A socket the kernel refuses the TTL for (here: not a socket at all)
    /// is an error, and is not remembered as lowered: the next attempt
    /// makes the syscall again instead of assuming it worked.
    #[test]
    fn a_refused_ttl_is_an_error_and_not_remembered() {
        let (reader, _writer) = std::io::pipe().unwrap();
        let conn = ConnHandle::new(reader.as_raw_fd());
        assert!(conn.limit_ip_ttl(DEFAULT_TTL).is_ok(), "nothing to lower");
        let err = conn.limit_ip_ttl(1).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTSOCK), "{err}");
        assert!(conn.limit_ip_ttl(1).is_err(), "tried again, failed again");
    }

    #[test]
    fn only_the_last_answer_is_sent_with_more_to_come() {
        let conn = ConnHandle::new(-1);
        assert_eq!(conn.send_flags() & libc::MSG_MORE, 0);
        assert_ne!(conn.send_flags() & libc::MSG_NOSIGNAL, 0);
        conn.send_fin_with_last_answer();
        assert_ne!(conn.send_flags() & libc::MSG_MORE, 0);
        assert_ne!(conn.send_flags() & libc::MSG_NOSIGNAL, 0);
    }
}
