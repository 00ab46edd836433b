//! The closed-loop load generator: every simulated guest keeps exactly one
//! request outstanding for the whole window, as a guest agent polling its
//! metadata would, and every latency goes into an HDR histogram.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

use crate::conn::{Session, Target};
use crate::cpu::{self, RoleCpu, Watched};
use crate::http1::ConnMode;

/// Histograms count microseconds, up to a minute, to 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// No client makes more requests than this in one window, whatever the
/// clock says (a second bound on every loop).
const MAX_REQUESTS_PER_CLIENT: u64 = 50_000_000;
/// Pause after a failed request, so a broken path is not hammered.
const ERROR_BACKOFF: Duration = Duration::from_millis(20);

/// One simulated guest: where it sends, and the exact bytes it sends.
#[derive(Clone)]
pub struct Client {
    pub target: Target,
    pub request: Arc<Vec<u8>>,
}

#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// Requests start now, but are only counted from `warmup` on...
    pub warmup: Duration,
    /// ...for this long.
    pub measure: Duration,
}

pub struct LoadResult {
    /// 200 answers within the window.
    pub ok: u64,
    /// Failed requests (transport errors, timeouts, non-200) in the window.
    pub errors: u64,
    pub first_error: Option<String>,
    pub measured: Duration,
    pub latency_us: Histogram<u64>,
    /// CPU of the watched processes over exactly the measured interval.
    pub cpu: Vec<RoleCpu>,
}

impl LoadResult {
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.measured.as_secs_f64()
    }
}

/// Builds a fresh runtime (see `nsnet` for why it must not outlive the
/// measurement), runs every client for `window`, and merges their results;
/// `watched` processes' CPU is taken over the measured part of the window.
pub fn run(
    clients: &[Client],
    mode: ConnMode,
    window: Window,
    stop: &AtomicBool,
    watched: Vec<Watched>,
) -> Result<LoadResult> {
    let runtime = runtime()?;
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + window.warmup;
    let end = measure_from + window.measure;
    let cpu = cpu::measure(watched, measure_from, end);
    let outcome = runtime.block_on(async {
        let tasks: Vec<_> = clients
            .iter()
            .cloned()
            .map(|client| tokio::spawn(closed_loop(client, mode, start, measure_from, end)))
            .collect();
        let mut total = LoadResult {
            ok: 0,
            errors: 0,
            first_error: None,
            measured: window.measure,
            latency_us: new_histogram(),
            cpu: Vec::new(),
        };
        for task in tasks {
            let part = task.await.context("a load task panicked")?;
            total.ok += part.ok;
            total.errors += part.errors;
            total.first_error = total.first_error.or(part.first_error);
            total.latency_us.add(&part.latency_us)?;
        }
        anyhow::Ok(total)
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    let cpu = cpu
        .join()
        .map_err(|_| anyhow::anyhow!("the CPU sampler panicked"))?;
    if stop.load(Ordering::SeqCst) {
        anyhow::bail!("interrupted");
    }
    let mut outcome = outcome?;
    outcome.cpu = cpu?;
    Ok(outcome)
}

/// A multi-threaded runtime with one worker per core, like the daemon's.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(crate::machine::cores())
        .enable_all()
        .build()
        .context("starting the load generator's runtime")
}

async fn closed_loop(
    client: Client,
    mode: ConnMode,
    start: Instant,
    measure_from: Instant,
    end: Instant,
) -> LoadResult {
    tokio::time::sleep_until(start.into()).await;
    let mut session = Session::new(client.target);
    let mut result = LoadResult {
        ok: 0,
        errors: 0,
        first_error: None,
        measured: end - measure_from,
        latency_us: new_histogram(),
        cpu: Vec::new(),
    };
    for _ in 0..MAX_REQUESTS_PER_CLIENT {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let answer = session.request(&client.request, mode).await;
        let counted = sent >= measure_from;
        match answer {
            Ok(answer) if answer.status == 200 => {
                if counted && answer.done <= end {
                    result.ok += 1;
                    let micros = (answer.done - sent).as_micros() as u64;
                    result.latency_us.saturating_record(micros.max(1));
                }
            }
            other => {
                if counted {
                    result.errors += 1;
                }
                if result.first_error.is_none() {
                    result.first_error = Some(match other {
                        Ok(answer) => format!("HTTP {}", answer.status),
                        Err(err) => err.to_string(),
                    });
                }
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
    result
}

/// Whether a client's answer names the expected instance (the load only
/// counts statuses; this checks once that each path answers the right guest).
pub fn answers_for(body: &[u8], uuid: &str) -> bool {
    std::str::from_utf8(body).is_ok_and(|text| text.contains(uuid))
}
