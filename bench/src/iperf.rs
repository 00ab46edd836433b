//! Cost to other traffic: TCP throughput from a guest to its router with
//! iperf3, with and without the datapath on the guest's tap. The guest
//! sends, so every data segment passes the tap's TC ingress hook.
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use integration_tests::Netns;
use integration_tests::wait::{self, Poll};

const PORT: &str = "5201";

/// `iperf3 -s` in the router namespace for as long as this lives.
pub struct Server {
    child: Child,
}

impl Server {
    pub fn start(router: &Netns) -> Result<Self> {
        let child = router.spawn(&["iperf3", "-s", "-p", PORT], Stdio::null(), Stdio::null())?;
        let server = Self { child };
        wait::until("iperf3 to listen", Duration::from_secs(10), || {
            let out = router.exec_ok(&["ss", "-Hltn", &format!("sport = :{PORT}")])?;
            Ok(if out.trim().is_empty() {
                Poll::Pending("nothing listening".into())
            } else {
                Poll::Ready(())
            })
        })?;
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bits per second the server received in a `seconds`-long test from `guest`.
pub fn throughput(guest: &Netns, server_addr: &str, seconds: u32) -> Result<f64> {
    let secs = seconds.to_string();
    let out = guest.exec_ok(&["iperf3", "-c", server_addr, "-p", PORT, "-t", &secs, "-J"])?;
    let report: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J output")?;
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| {
            format!("no end.sum_received.bits_per_second in iperf3's report: {out:.300}")
        })
}
