//! Which share of a process's CPU is network receive work done in its
//! context: a `perf record` call-graph profile of the process, and the
//! share of its samples under the kernel's `net_rx_action`.
//!
//! Why it matters here: a test guest is a network namespace behind a veth
//! pair. When the daemon writes an answer, the segment crosses the veth and
//! the kernel runs the guest's whole receive path (IP, TCP, waking the
//! reader) in the softirq the daemon's `writev` raised, on the daemon's
//! time. On a hypervisor the tap hands the frame to the VMM's queue and
//! the guest's kernel receives it on the guest's own vCPU.
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// Samples per second: enough for a stable share in a few seconds, little
/// enough not to slow the process down.
const FREQUENCY: &str = "1999";

/// What a profile found.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ReceiveShare {
    pub samples: u64,
    /// Samples with `net_rx_action` on the stack.
    pub net_rx_samples: u64,
}

impl ReceiveShare {
    pub fn share(&self) -> f64 {
        if self.samples == 0 {
            f64::NAN
        } else {
            self.net_rx_samples as f64 / self.samples as f64
        }
    }
}

/// Whether perf can be used at all (it is optional: without it the report
/// leaves the share out).
pub fn available() -> bool {
    std::process::Command::new("perf")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Profiles `pid` for `duration` (blocking), writing the samples to `data`.
pub fn record(pid: u32, duration: Duration, data: &Path) -> Result<()> {
    let out = std::process::Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-F", FREQUENCY, "-g"])
        .args(["-p", &pid.to_string(), "-o"])
        .arg(data)
        .args(["--", "sleep", &format!("{:.3}", duration.as_secs_f64())])
        .stdin(Stdio::null())
        .output()
        .context("running perf record")?;
    if !out.status.success() {
        bail!(
            "perf record failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Reads a profile `record` wrote.
pub fn receive_share(data: &Path) -> Result<ReceiveShare> {
    let out = std::process::Command::new("perf")
        .args(["script", "-F", "ip,sym", "-i"])
        .arg(data)
        .stdin(Stdio::null())
        .output()
        .context("running perf script")?;
    if !out.status.success() {
        bail!(
            "perf script failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(count(&String::from_utf8_lossy(&out.stdout)))
}

/// `perf script -F ip,sym` prints each sample as its stack, one frame
/// (address and symbol) a line, between blank lines.
fn count(script: &str) -> ReceiveShare {
    let mut share = ReceiveShare::default();
    for sample in script.split("\n\n") {
        if sample.trim().is_empty() {
            continue;
        }
        share.samples += 1;
        if sample
            .lines()
            .any(|frame| frame.split_whitespace().any(|word| word == "net_rx_action"))
        {
            share.net_rx_samples += 1;
        }
    }
    share
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_under_net_rx_action_are_counted() {
        let script = "\
\tffffffff81a tcp_v4_rcv
\tffffffff81b net_rx_action
\tffffffff81c handle_softirqs
\tffffffff81d tcp_sendmsg

\tffffffff81e tcp_sendmsg
\t1234 writev

\t5678 hyper::proto::h1::role::parse
";
        let share = count(script);
        assert_eq!(share.samples, 3);
        assert_eq!(share.net_rx_samples, 1);
        assert!((share.share() - 1.0 / 3.0).abs() < 1e-9);
    }
}
