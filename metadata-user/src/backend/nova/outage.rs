//! nova's outages, logged once each. While nova is down every guest request
//! fails the same way (and, with `--stale-if-error`, is answered from the
//! cache anyway), so a warning per request would bury the log: the first
//! failure warns, each further one is a debug line, and the first answer
//! after them says, at info, that nova is back and how long it was away.
use std::{
    fmt::Display,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tracing::{debug, info, warn};
use uuid::Uuid;

/// Whether nova is in an outage, and since when.
#[derive(Debug, Default)]
pub struct Outage {
    /// Mirrors `since.is_some()`, so that answers while nova is up (nearly
    /// all of them) cost one atomic load and no lock.
    down: AtomicBool,
    since: Mutex<Option<Instant>>,
}

/// What one exchange with nova did to the outage (returned for tests).
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// The first failure: logged as a warning.
    Started,
    /// Another failure in the same outage: logged at debug.
    Continues,
    /// The first answer after failures: logged at info.
    Ended(Duration),
    /// An answer while nova was up: nothing logged.
    None,
}

impl Outage {
    /// nova could not be asked, was too slow, or answered 5xx (`why`).
    pub fn failed(&self, instance: &Uuid, why: &dyn Display) -> Change {
        let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        if since.is_some() {
            debug!(%instance, "nova metadata still unavailable: {why}");
            return Change::Continues;
        }
        *since = Some(Instant::now());
        self.down.store(true, Ordering::Relaxed);
        warn!(
            %instance,
            "nova metadata unavailable: {why} (further failures are logged at debug until it answers again)"
        );
        Change::Started
    }

    /// nova answered (with anything but a 5xx).
    pub fn answered(&self) -> Change {
        if !self.down.load(Ordering::Relaxed) {
            return Change::None;
        }
        let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        let Some(started) = since.take() else {
            return Change::None;
        };
        self.down.store(false, Ordering::Relaxed);
        let lasted = started.elapsed();
        info!(
            outage_seconds = lasted.as_secs_f64(),
            "nova metadata answers again"
        );
        Change::Ended(lasted)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::{Arc, Mutex},
    };

    use super::*;

    /// The log lines written while `f` runs, at debug and above.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer({
                let buffer = buffer.clone();
                move || buffer.clone()
            })
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn one_warning_per_outage_debug_per_request_info_when_it_ends() {
        let outage = Outage::default();
        let instance = Uuid::from_u128(1);
        let mut changes = Vec::new();
        let log = logged(|| {
            changes.push(outage.answered());
            for _ in 0..5 {
                changes.push(outage.failed(&instance, &"connection refused"));
            }
            changes.push(outage.answered());
            changes.push(outage.answered());
            // A second outage warns again.
            changes.push(outage.failed(&instance, &"no answer within 10s"));
        });
        assert_eq!(changes[0], Change::None);
        assert_eq!(changes[1], Change::Started);
        assert!(changes[2..6].iter().all(|c| *c == Change::Continues));
        assert!(matches!(changes[6], Change::Ended(_)), "{changes:?}");
        assert_eq!(changes[7], Change::None);
        assert_eq!(changes[8], Change::Started);

        let lines: Vec<&str> = log.lines().collect();
        let count = |level: &str, text: &str| {
            lines
                .iter()
                .filter(|line| line.contains(level) && line.contains(text))
                .count()
        };
        assert_eq!(count("WARN", "unavailable: connection refused"), 1, "{log}");
        assert_eq!(count("DEBUG", "still unavailable"), 4, "{log}");
        assert_eq!(count("INFO", "answers again"), 1, "{log}");
        assert_eq!(
            count("WARN", "unavailable: no answer within 10s"),
            1,
            "{log}"
        );
        assert_eq!(lines.len(), 7, "nothing else is logged:\n{log}");
    }
}
