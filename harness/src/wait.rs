//! Polling with a deadline: the daemon reacts asynchronously (netlink events,
//! attaching programs), so tests wait for an observable state instead of
//! sleeping a fixed time.
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// What one look at the awaited state found.
pub enum Poll<T> {
    Ready(T),
    /// Not yet; the text describes what was seen, for the timeout message.
    Pending(String),
}

/// Calls `probe` until it is [`Poll::Ready`], or fails with the last
/// observation once `timeout` has passed. `Err` from the probe aborts at once.
pub fn until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<Poll<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe()? {
            Poll::Ready(value) => return Ok(value),
            Poll::Pending(seen) if Instant::now() >= deadline => {
                bail!("timed out after {timeout:?} waiting for {what}; last seen: {seen}")
            }
            Poll::Pending(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
