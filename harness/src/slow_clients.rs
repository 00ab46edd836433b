//! Slow-header guests ("slowloris"): from each of many guests, a few
//! connections to 169.254.169.254:80 that send the start of a request head
//! and then one more byte a second, never finishing it. When the server
//! cuts one off (its header read timeout), the guest opens another at once,
//! so the server always holds them all.
//!
//! One thread does it for every guest: it enters a guest's network
//! namespace (setns, for this thread only) to open each socket, and goes
//! back to its own at once; a socket stays in the namespace it was made in.
use std::fs::File;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::METADATA_ADDR;
use crate::netns::Netns;

const HEAD_START: &[u8] = b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nX-Slow: ";

/// What the slow guests did, so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct SlowStats {
    /// Connections opened (the first ones and each reopened one).
    pub opened: u64,
    /// Connections the server closed.
    pub cut_off: u64,
    /// Connects that failed.
    pub failed: u64,
}

pub struct SlowClients {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
    opened: Arc<AtomicU64>,
    cut_off: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl SlowClients {
    /// Starts `per_guest` slow connections from each namespace in `guests`
    /// and returns once all of them are open.
    pub fn start(guests: &[&Netns], per_guest: usize) -> Result<Self> {
        let namespaces = guests
            .iter()
            .map(|ns| {
                File::open(ns.path()).with_context(|| format!("opening {}", ns.path().display()))
            })
            .collect::<Result<Vec<_>>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (opened, cut_off, failed) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (stop, opened, cut_off, failed) = (
                stop.clone(),
                opened.clone(),
                cut_off.clone(),
                failed.clone(),
            );
            std::thread::spawn(move || {
                run(
                    namespaces, per_guest, &stop, &opened, &cut_off, &failed, ready_tx,
                )
            })
        };
        let mut clients = Self {
            stop,
            thread: Some(thread),
            opened,
            cut_off,
            failed,
        };
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let outcome = clients.finish();
            bail!("the slow connections did not all open within 60 s: {outcome:?}");
        }
        Ok(clients)
    }

    pub fn stats(&self) -> SlowStats {
        SlowStats {
            opened: self.opened.load(Ordering::Relaxed),
            cut_off: self.cut_off.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    /// Stops, closes every connection, and says whether the thread failed.
    pub fn finish(&mut self) -> Result<SlowStats> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("the slow-client thread panicked"))??;
        }
        Ok(self.stats())
    }
}

impl Drop for SlowClients {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Opens a TCP connection to the metadata address from inside `ns`.
fn connect_in(ns: &File, home: &File) -> std::io::Result<TcpStream> {
    enter(ns)?;
    let connected = TcpStream::connect_timeout(
        &SocketAddr::from((METADATA_ADDR, 80)),
        Duration::from_secs(3),
    );
    enter(home).expect("returning to the thread's own network namespace");
    let mut stream = connected?;
    stream.write_all(HEAD_START)?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}

fn enter(ns: &File) -> std::io::Result<()> {
    // SAFETY: setns on an open namespace fd; affects this thread only.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn run(
    namespaces: Vec<File>,
    per_guest: usize,
    stop: &AtomicBool,
    opened: &AtomicU64,
    cut_off: &AtomicU64,
    failed: &AtomicU64,
    ready: std::sync::mpsc::Sender<()>,
) -> Result<()> {
    let home = File::open("/proc/thread-self/ns/net").context("opening our own namespace")?;
    let mut slots: Vec<(usize, Option<TcpStream>)> = (0..namespaces.len())
        .flat_map(|guest| (0..per_guest).map(move |_| (guest, None)))
        .collect();
    let mut announced = false;
    let mut next_byte = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        for (guest, slot) in &mut slots {
            if slot.is_none() {
                match connect_in(&namespaces[*guest], &home) {
                    Ok(stream) => {
                        opened.fetch_add(1, Ordering::Relaxed);
                        *slot = Some(stream);
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            // Closed by the server? (Nothing is ever sent back otherwise.)
            if let Some(stream) = slot {
                let mut buffer = [0u8; 512];
                match stream.read(&mut buffer) {
                    Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                    _ => {
                        cut_off.fetch_add(1, Ordering::Relaxed);
                        *slot = None;
                    }
                }
            }
        }
        if !announced && slots.iter().all(|(_, slot)| slot.is_some()) {
            announced = true;
            let _ = ready.send(());
        }
        if Instant::now() >= next_byte {
            next_byte = Instant::now() + Duration::from_secs(1);
            for (_, slot) in &mut slots {
                if let Some(stream) = slot
                    && stream.write_all(b"a").is_err()
                {
                    cut_off.fetch_add(1, Ordering::Relaxed);
                    *slot = None;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
