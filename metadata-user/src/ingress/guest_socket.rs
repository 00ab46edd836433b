//! A guest connection's socket, known to the reactor only once it has to
//! wait.
//!
//! Most guest connections never wait: TCP_DEFER_ACCEPT hands them to
//! accept() with their request already in, the answer is ready at once, and
//! it fits the empty send buffer. Registering such a socket with epoll, as
//! tokio's `TcpListener::accept` does, costs an EPOLL_CTL_ADD, and its drop
//! an EPOLL_CTL_DEL: two of a new connection's seven syscalls, and about 7%
//! of the daemon's CPU per request with a new connection per request (perf,
//! `cargo xtask bench`). So `GuestListener` accepts without registering,
//! and a `GuestSocket` reads and writes straight through until a call would
//! block; only then does it become a tokio `TcpStream`, which registers it
//! and waits as usual. (Neither tokio nor std accepts a non-blocking socket
//! without registering it, hence the accept4 here.)
//!
//! Its answers go out with `sendmsg`, so that the last one can say
//! MSG_MORE (`ConnHandle::send_fin_with_last_answer`) without a setsockopt
//! of its own. And it ends by closing: hyper shuts the write side down
//! before it lets go of a connection, which would cost a shutdown(2) right
//! before the close(2) that sends the same FIN (or the same RST, when the
//! guest left data unread).
use std::{
    io::{self, IoSlice},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, RawFd},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use socket2::SockAddr;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf, unix::AsyncFd};

use super::conn::ConnHandle;

/// A listening socket whose connections come out unregistered.
pub(super) struct GuestListener(AsyncFd<TcpListener>);

impl GuestListener {
    /// Registers `listener` (made non-blocking) with the current runtime.
    pub(super) fn new(listener: TcpListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        // SAFETY: the AsyncFd owns the listener, so its fd stays open and
        // the same for as long as it is registered.
        let registered = unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) };
        Ok(Self(registered.map_err(|err| err.into_parts().1)?))
    }

    /// The next connection, non-blocking, with its peer's address.
    pub(super) async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let listener = &self.0;
        loop {
            // poll_read_ready, not `readable()`: it takes from the task's
            // coop budget, so a listener that always has a connection
            // waiting still lets the thread's connections run.
            let mut ready = std::future::poll_fn(|cx| listener.poll_read_ready(cx)).await?;
            if let Ok(accepted) = ready.try_io(|listener| accept_nonblocking(listener.get_ref())) {
                return accepted;
            }
        }
    }
}

fn accept_nonblocking(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    // SAFETY: accept4 writes at most `len` bytes of address into the
    // storage try_init provides, and sets `len` to what it wrote.
    let (fd, peer) = unsafe {
        SockAddr::try_init(|storage, len| {
            loop {
                let fd = libc::accept4(
                    listener.as_raw_fd(),
                    storage.cast(),
                    len,
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                );
                if fd >= 0 {
                    return Ok(fd);
                }
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        })?
    };
    // SAFETY: accept4 returned a new fd that nothing else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let peer = peer
        .as_socket()
        .ok_or_else(|| io::Error::other("accepted a connection that is neither IPv4 nor IPv6"))?;
    Ok((stream, peer))
}

/// A guest connection: straight syscalls until one would block, a
/// registered tokio stream from then on.
pub(super) struct GuestSocket {
    state: State,
    conn: Arc<ConnHandle>,
}

enum State {
    /// Unknown to the reactor: every call goes straight to the socket.
    Direct(TcpStream),
    /// Registered with the thread's reactor, after a call would have blocked.
    Registered(tokio::net::TcpStream),
    /// Registration failed and closed the socket.
    Closed,
}

impl GuestSocket {
    /// `stream` must be non-blocking (`GuestListener::accept`); `conn`
    /// says whether an answer is the connection's last.
    pub(super) fn new(stream: TcpStream, conn: Arc<ConnHandle>) -> Self {
        Self {
            state: State::Direct(stream),
            conn,
        }
    }

    /// The stream registered with the reactor (done now if it was not).
    fn registered(&mut self) -> io::Result<&mut tokio::net::TcpStream> {
        if matches!(self.state, State::Direct(_)) {
            let State::Direct(stream) = std::mem::replace(&mut self.state, State::Closed) else {
                unreachable!("matched just above");
            };
            self.state = State::Registered(tokio::net::TcpStream::from_std(stream)?);
        }
        match &mut self.state {
            State::Registered(stream) => Ok(stream),
            _ => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the connection could not be registered with the reactor and was closed",
            )),
        }
    }

    #[cfg(test)]
    fn is_registered(&self) -> bool {
        matches!(self.state, State::Registered(_))
    }
}

impl AsyncRead for GuestSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let State::Direct(stream) = &this.state {
            match recv_into(stream.as_raw_fd(), buf) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
        match this.registered() {
            Ok(stream) => Pin::new(stream).poll_read(cx, buf),
            Err(err) => Poll::Ready(Err(err)),
        }
    }
}

impl AsyncWrite for GuestSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let flags = this.conn.send_flags();
        if let State::Direct(stream) = &this.state {
            match send_vectored(stream.as_raw_fd(), bufs, flags) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
        let stream = match this.registered() {
            Ok(stream) => stream,
            Err(err) => return Poll::Ready(Err(err)),
        };
        loop {
            ready!(stream.poll_write_ready(cx))?;
            let fd = stream.as_raw_fd();
            match stream.try_io(Interest::WRITABLE, || send_vectored(fd, bufs, flags)) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here; what was sent is the kernel's.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The close at drop sends the FIN (see the module's comment).
        Poll::Ready(Ok(()))
    }
}

/// recv(2) into the unfilled part of `buf`, without zeroing it first.
fn recv_into(fd: RawFd, buf: &mut ReadBuf<'_>) -> io::Result<()> {
    // SAFETY: recv only writes into the buffer; the bytes it reports are
    // initialised before `assume_init` says so.
    unsafe {
        let unfilled = buf.unfilled_mut();
        let read = loop {
            let read = libc::recv(fd, unfilled.as_mut_ptr().cast(), unfilled.len(), 0);
            if read >= 0 {
                break read as usize;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        };
        buf.assume_init(read);
        buf.advance(read);
    }
    Ok(())
}

/// sendmsg(2) of `bufs` with `flags`: writev with flags (MSG_MORE).
fn send_vectored(fd: RawFd, bufs: &[IoSlice<'_>], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: msghdr is plain old data; all zeroes is "no address, no
    // control data".
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is ABI-compatible with iovec on Unix (std guarantees it);
    // sendmsg only reads through the pointer.
    message.msg_iov = bufs.as_ptr().cast_mut().cast();
    message.msg_iovlen = bufs.len().min(libc::UIO_MAXIOV as usize) as _;
    loop {
        // SAFETY: the message points at `bufs`, alive for this call.
        let sent = unsafe { libc::sendmsg(fd, &message, flags) };
        if sent >= 0 {
            return Ok(sent as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        time::Duration,
    };

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::ingress::conn::segments_in;

    /// A connected pair on loopback: the client (blocking, std) and the
    /// server side as a guest listener hands it out.
    async fn pair() -> (TcpStream, GuestSocket, Arc<ConnHandle>) {
        let listener = GuestListener::new(TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
        let client = TcpStream::connect(listener.0.get_ref().local_addr().unwrap()).unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap(), "the peer's address");
        let conn = Arc::new(ConnHandle::new(stream.as_raw_fd()));
        (client, GuestSocket::new(stream, conn.clone()), conn)
    }

    /// A request that is in when it is read, and an answer that fits the
    /// send buffer, never touch the reactor.
    #[tokio::test]
    async fn a_connection_that_never_waits_is_never_registered() {
        let (mut client, mut socket, _conn) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        // Loopback delivers within the write; still, give it a moment.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut request = [0u8; 64];
        let read = socket.read(&mut request).await.unwrap();
        assert_eq!(&request[..read], b"GET / HTTP/1.1\r\n\r\n");
        socket.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        assert!(!socket.is_registered());
        drop(socket);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, b"HTTP/1.1 200 OK\r\n\r\n");
    }

    /// A read that finds nothing registers the socket and is woken when the
    /// data comes.
    #[tokio::test]
    async fn a_read_that_would_block_waits_for_the_data() {
        let (mut client, mut socket, _conn) = pair().await;
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            client.write_all(b"late").unwrap();
            client
        });
        let mut request = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut request))
            .await
            .expect("woken when the data came")
            .unwrap();
        assert_eq!(&request[..read], b"late");
        assert!(socket.is_registered());
        drop(writer.join().unwrap());
    }

    /// An answer larger than the send buffer: the write that would block
    /// registers the socket, and the rest goes out as the client reads.
    #[tokio::test]
    async fn a_write_that_would_block_waits_for_room() {
        let (mut client, mut socket, _conn) = pair().await;
        let answer: Vec<u8> = (0..8 * 1024 * 1024).map(|i| i as u8).collect();
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let mut received = Vec::new();
            client.read_to_end(&mut received).unwrap();
            received
        });
        socket.write_all(&answer).await.unwrap();
        assert!(socket.is_registered(), "8 MiB do not fit a send buffer");
        drop(socket);
        assert!(
            reader.join().unwrap() == answer,
            "the whole answer, in order"
        );
    }

    /// What the client receives when the server answers and closes, and in
    /// how many segments: the answer and the EOF always; with the FIN sent
    /// along (MSG_MORE on the last answer), one segment fewer than without.
    async fn answer_then_close(fin_with_answer: bool) -> (Vec<u8>, u32) {
        let (mut client, mut socket, conn) = pair().await;
        let before = segments_in(client.as_raw_fd()).0;
        if fin_with_answer {
            conn.send_fin_with_last_answer();
        }
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        socket.shutdown().await.unwrap();
        drop(socket);
        let mut received = Vec::new();
        client.read_to_end(&mut received).unwrap();
        (received, segments_in(client.as_raw_fd()).0 - before)
    }

    #[tokio::test]
    async fn the_last_answer_carries_the_fin() {
        let (plain, plain_segments) = answer_then_close(false).await;
        let (last, last_segments) = answer_then_close(true).await;
        assert_eq!(last, plain, "the whole answer, then EOF");
        assert!(last.ends_with(b"ok"));
        assert_eq!(plain_segments, 2, "answer, then FIN");
        assert_eq!(last_segments, 1, "answer and FIN together");
    }
}
