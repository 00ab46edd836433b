//! How long a guest connection may take to send a request head, kept per
//! connection and checked by one timer per server thread.
//!
//! Why not hyper's `header_read_timeout`: hyper arms a boxed timer for
//! every request head it starts to read (allocated, put into tokio's timer
//! wheel when the head is not there yet, taken out and freed when it
//! comes), which on a keep-alive connection is every request. Here a
//! connection only stores a number when its state changes (accepted, head
//! received, answer handed over), and a thread's one ticker closes the
//! connections whose deadline has passed.
//!
//! The deadline runs while the connection waits for a request head: from
//! the accept, and again from the moment an answer is handed to hyper
//! until the next head is in (hyper's own runs from when it starts reading
//! the next head, microseconds later once the answer is written). It does
//! not run while a request is being answered. A connection past its
//! deadline is closed without an answer, as hyper's timeout does.
//! The clock is coarse (the ticker's count): a connection is closed between
//! one timeout and one timeout plus one tick after its deadline started.
use std::{
    io,
    pin::Pin,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// No deadline: a request is being answered.
const NONE: u64 = u64::MAX;

/// One server thread's connections and its coarse clock.
pub struct HeaderDeadlines {
    /// Ticks since the ticker started.
    now: AtomicU64,
    /// Whole ticks a connection may wait for a head.
    timeout_ticks: u64,
    tick: Duration,
    /// Every connection of the thread; the ticker drops those that ended.
    connections: Mutex<Vec<Weak<Deadline>>>,
    /// The server is shutting down: no connection waits for another head.
    closing: AtomicBool,
}

impl HeaderDeadlines {
    /// A connection is closed once it has waited `timeout` for a request
    /// head, checked every `tick`.
    pub fn new(timeout: Duration, tick: Duration) -> Arc<Self> {
        Arc::new(Self {
            now: AtomicU64::new(0),
            timeout_ticks: timeout.as_nanos().div_ceil(tick.as_nanos().max(1)) as u64,
            tick,
            connections: Mutex::new(Vec::new()),
            closing: AtomicBool::new(false),
        })
    }

    /// A new connection, waiting for its first head from now on.
    pub fn watch(self: &Arc<Self>) -> Arc<Deadline> {
        let deadline = Arc::new(Deadline {
            deadlines: self.clone(),
            at: AtomicU64::new(NONE),
            expired: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        deadline.wait_for_head();
        self.connections
            .lock()
            .expect("deadline list lock")
            .push(Arc::downgrade(&deadline));
        deadline
    }

    /// Ticks forever (run it as a task on the thread's runtime): advances
    /// the clock and closes the connections past their deadline.
    pub async fn run_ticker(self: Arc<Self>) {
        let mut interval = tokio::time::interval(self.tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            interval.tick().await;
            self.expire();
        }
    }

    /// Shutdown: every connection waiting for a head is closed now, as if
    /// its deadline had passed; one whose request is being answered sees
    /// `Deadline::closing` once its answer is out.
    pub fn close_idle(&self) {
        self.closing.store(true, Ordering::Relaxed);
        self.close_where(|at| at != NONE);
    }

    /// One tick: the clock moves on, and every connection whose deadline
    /// is before it is woken to be closed.
    fn expire(&self) {
        let now = self.now.fetch_add(1, Ordering::Relaxed) + 1;
        // Strictly before: a deadline set during tick N ran for at least
        // the whole timeout by tick N + timeout + 1.
        self.close_where(|at| at < now);
    }

    /// Wakes every connection whose deadline (`NONE` while it is being
    /// answered) `is_due` says has passed, to be closed, and forgets it and
    /// the connections that ended.
    fn close_where(&self, is_due: impl Fn(u64) -> bool) {
        self.connections
            .lock()
            .expect("deadline list lock")
            .retain(|connection| {
                let Some(connection) = connection.upgrade() else {
                    return false;
                };
                if is_due(connection.at.load(Ordering::Relaxed)) {
                    connection.expired.store(true, Ordering::Relaxed);
                    connection.waker.wake();
                    return false;
                }
                true
            });
    }
}

/// One connection's deadline for its next request head.
pub struct Deadline {
    deadlines: Arc<HeaderDeadlines>,
    /// The tick after which the connection is closed; `NONE` while a
    /// request is being answered.
    at: AtomicU64,
    expired: AtomicBool,
    /// The connection's task, waiting on a read.
    waker: AtomicWaker,
}

impl Deadline {
    /// A head is awaited from now on: the answer was handed over (or the
    /// connection is new).
    pub fn wait_for_head(&self) {
        let now = self.deadlines.now.load(Ordering::Relaxed);
        self.at
            .store(now + self.deadlines.timeout_ticks, Ordering::Relaxed);
    }

    /// A head is in: no deadline while it is answered.
    pub fn head_received(&self) {
        self.at.store(NONE, Ordering::Relaxed);
    }

    /// The server is shutting down (`HeaderDeadlines::close_idle`): end
    /// the connection instead of waiting for another head.
    pub fn closing(&self) -> bool {
        self.deadlines.closing.load(Ordering::Relaxed)
    }
}

/// A connection's stream whose reads fail (TimedOut) once its deadline has
/// passed: hyper then ends the connection, and it is closed.
pub struct WithDeadline<S> {
    stream: S,
    deadline: Arc<Deadline>,
}

impl<S> WithDeadline<S> {
    pub fn new(stream: S, deadline: Arc<Deadline>) -> Self {
        Self { stream, deadline }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WithDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.deadline.expired.load(Ordering::Relaxed) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request head within the header read timeout",
            )));
        }
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        if read.is_pending() {
            // Where the ticker wakes the connection: a waiting read.
            self.deadline.waker.register(cx.waker());
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WithDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(300);
    const TICK: Duration = Duration::from_millis(50);

    /// Reads from a stream behind a deadline until it ends or fails; how
    /// long that took.
    async fn read_until_cut_off(deadlines: &Arc<HeaderDeadlines>) -> (Duration, io::Result<usize>) {
        let (_client, server) = tokio::io::duplex(64);
        let mut stream = WithDeadline::new(server, deadlines.watch());
        let started = Instant::now();
        let mut buf = [0u8; 8];
        let read = stream.read(&mut buf).await;
        (started.elapsed(), read)
    }

    /// A connection that sends nothing fails its read after the timeout,
    /// not before it and not much later.
    #[tokio::test]
    async fn a_silent_connection_is_cut_off_after_the_timeout() {
        let deadlines = HeaderDeadlines::new(TIMEOUT, TICK);
        tokio::spawn(deadlines.clone().run_ticker());
        let (after, read) = read_until_cut_off(&deadlines).await;
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert!(after >= TIMEOUT, "cut off after {after:?}");
        assert!(after < TIMEOUT + 4 * TICK, "cut off after {after:?}");
    }

    /// While a request is answered there is no deadline; once its answer
    /// is handed over, the next head has the whole timeout again.
    #[tokio::test]
    async fn the_deadline_runs_only_while_a_head_is_awaited() {
        let deadlines = HeaderDeadlines::new(TIMEOUT, TICK);
        tokio::spawn(deadlines.clone().run_ticker());
        let (mut client, server) = tokio::io::duplex(64);
        let deadline = deadlines.watch();
        let mut stream = WithDeadline::new(server, deadline.clone());

        client.write_all(b"GET").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(stream.read(&mut buf).await.unwrap(), 3);
        deadline.head_received();
        // An answer that takes longer than the timeout.
        tokio::time::sleep(TIMEOUT * 2).await;
        client.write_all(b"x").await.unwrap();
        assert_eq!(stream.read(&mut buf).await.unwrap(), 1, "still open");

        deadline.wait_for_head();
        let started = Instant::now();
        let read = stream.read(&mut buf).await;
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert!(
            started.elapsed() >= TIMEOUT - TICK,
            "{:?}",
            started.elapsed()
        );
    }

    /// Shutdown closes the connections waiting for a head at once; one
    /// whose request is being answered keeps reading, and is told to close
    /// once it is done.
    #[tokio::test]
    async fn shutdown_closes_idle_connections_at_once() {
        let deadlines = HeaderDeadlines::new(Duration::from_secs(60), TICK);
        let (_idle_client, idle) = tokio::io::duplex(64);
        let idle_deadline = deadlines.watch();
        let mut idle = WithDeadline::new(idle, idle_deadline.clone());
        let (mut busy_client, busy) = tokio::io::duplex(64);
        let busy_deadline = deadlines.watch();
        busy_deadline.head_received();
        let mut busy = WithDeadline::new(busy, busy_deadline.clone());

        let mut buf = [0u8; 8];
        let waiting = tokio::spawn(async move {
            let started = Instant::now();
            let read = idle.read(&mut buf).await;
            (started.elapsed(), read)
        });
        tokio::time::sleep(TICK).await;
        assert!(!idle_deadline.closing());
        deadlines.close_idle();
        let (after, read) = waiting.await.unwrap();
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert!(after < Duration::from_secs(5), "{after:?}");

        busy_client.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(busy.read(&mut buf).await.unwrap(), 1, "still open");
        assert!(busy_deadline.closing());
    }

    /// Ended connections leave the thread's list at the next tick.
    #[tokio::test]
    async fn ended_connections_are_forgotten() {
        let deadlines = HeaderDeadlines::new(TIMEOUT, TICK);
        for _ in 0..10 {
            drop(deadlines.watch());
        }
        let kept = deadlines.watch();
        kept.head_received();
        deadlines.expire();
        assert_eq!(deadlines.connections.lock().unwrap().len(), 1);
    }
}
