//! Cost to other traffic: TCP throughput from a guest to its router with
//! iperf3, with and without the datapath on the guest's tap. The guest
//! sends, so every data segment passes the tap's TC ingress hook.
use std::process::Stdio;

use anyhow::{Context, Result};
use mdr_harness::Netns;
use mdr_harness::listener::Listener;

const PORT: u16 = 5201;

/// `iperf3 -s` in the router namespace for as long as this lives.
pub struct Server {
    _iperf3: Listener,
}

impl Server {
    pub fn start(router: &Netns) -> Result<Self> {
        let port = PORT.to_string();
        let iperf3 = Listener::start(
            router,
            &["iperf3", "-s", "-p", &port],
            PORT,
            Stdio::null(),
            Stdio::null(),
        )?;
        Ok(Self { _iperf3: iperf3 })
    }
}

/// Bits per second the server received in a `seconds`-long test from `guest`.
pub fn throughput(guest: &Netns, server_addr: &str, seconds: u32) -> Result<f64> {
    let secs = seconds.to_string();
    let port = PORT.to_string();
    let out = guest.exec_ok(&["iperf3", "-c", server_addr, "-p", &port, "-t", &secs, "-J"])?;
    let report: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J output")?;
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| {
            format!("no end.sum_received.bits_per_second in iperf3's report: {out:.300}")
        })
}
