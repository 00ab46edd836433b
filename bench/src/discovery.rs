//! Discovery: how soon a domain libvirt starts is served with no command,
//! and what the daemon costs with that many domains.
//!
//! A private libvirtd (the tests' [`Libvirtd`]: its own mount namespace and
//! socket, in the bench's host namespace) and a daemon with `--discover
//! libvirt` on it. N domains shaped like nova's (owner, name, port with its
//! fixed IP, the tap named after the port) are defined first, then started
//! one after another, paused: libvirt creates the tap and starts qemu, no
//! guest CPU runs. For each domain the time from libvirt's start event
//! (`virsh event`, read as it arrives) to the daemon's status listing the
//! tap as attached; negative when the daemon attached on the tap's
//! appearance before libvirt reported the start. Then the daemon's RSS
//! with all of them served.
use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mdr_harness::fixtures::{GATEWAY, PREFIX_LEN, random_uuid};
use mdr_harness::libvirt::{DomainXml, Libvirtd, NOVA_NS_1_1, Nic, NovaMeta, nova_tap_name};
use mdr_harness::tempdir::TempDir;
use mdr_harness::{Daemon, DaemonConfig, Host, TenantNet, cmd, names};
use serde::Serialize;

use crate::admin_status::StatusPoller;
use crate::machine;
use crate::stats;
use crate::world::{DAEMON_CONFIG, TapAttach};

#[derive(Clone, Debug, Serialize)]
pub struct DiscoveryRun {
    pub tap_attach: TapAttach,
    pub domains: usize,
    /// libvirt's start event -> the daemon lists the tap attached, ms
    /// (negative: attached before the event arrived).
    pub event_to_attached_ms: Vec<f64>,
    /// `virsh start --paused` run -> the daemon lists the tap attached, ms:
    /// the whole wait, libvirt's own work included.
    pub start_to_attached_ms: Vec<f64>,
    /// `virsh start --paused` returned, ms after it was run.
    pub virsh_start_ms: Vec<f64>,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub hwm_after_kib: u64,
}

impl DiscoveryRun {
    pub fn median_ms(&self) -> f64 {
        stats::median(&self.event_to_attached_ms)
    }

    pub fn p99_ms(&self) -> f64 {
        stats::percentile(&self.event_to_attached_ms, 99.0)
    }

    /// Domains whose tap was attached before libvirt's start event came.
    pub fn attached_before_event(&self) -> usize {
        self.event_to_attached_ms
            .iter()
            .filter(|ms| **ms < 0.0)
            .count()
    }
}

/// `on_error` sees the daemon before it is stopped (to keep its log).
pub fn measure(
    count: usize,
    tap_attach: TapAttach,
    on_error: impl FnOnce(&Daemon),
) -> Result<DiscoveryRun> {
    let host = Host::new()?;
    let dir = TempDir::new("discovery")?;
    let net = TenantNet::without_router(&host, PREFIX_LEN)?;
    let libvirtd = Libvirtd::start(&host)?;
    let daemon = start_daemon(&host, &dir, &libvirtd.uri(), tap_attach)?;
    let result = run(&net, &libvirtd, &daemon, count, tap_attach);
    if result.is_err() {
        on_error(&daemon);
    }
    // Domains go before the daemon and libvirtd (drop order: daemon,
    // libvirtd, network, host namespace).
    drop(daemon);
    drop(libvirtd);
    result
}

fn start_daemon(host: &Host, dir: &TempDir, uri: &str, tap_attach: TapAttach) -> Result<Daemon> {
    let config_path = dir.join("daemon.toml");
    std::fs::write(&config_path, DAEMON_CONFIG)?;
    let mut config = DaemonConfig::in_dir(dir.path());
    config.extra_args = vec![
        "--config".into(),
        config_path.to_string_lossy().into_owned(),
        "--tap-attach".into(),
        tap_attach.flag().into(),
        "--discover".into(),
        "libvirt".into(),
        "--libvirt-uri".into(),
        uri.into(),
    ];
    config.own_process_group = true;
    config.print_log_on_drop = false;
    Daemon::start_with(host, config, None)
}

fn run(
    net: &TenantNet,
    libvirtd: &Libvirtd,
    daemon: &Daemon,
    count: usize,
    tap_attach: TapAttach,
) -> Result<DiscoveryRun> {
    let pid = daemon.pid().context("the daemon runs")?;
    let mut domains = Vec::with_capacity(count);
    for index in 0..count {
        crate::check_stop()?;
        let port_id = random_uuid();
        let tap = nova_tap_name(&port_id);
        let mut domain = DomainXml::new(&names::global(&format!("d{index}")), &random_uuid());
        domain.memory_mib = 32;
        domain.nova = Some(NovaMeta {
            namespace: NOVA_NS_1_1,
            name: format!("bench-{index}"),
            project_id: format!("{:032x}", index + 1),
            project_name: "bench".into(),
            ports: vec![(port_id, vec![GATEWAY])],
        });
        domain.nics.push(Nic {
            mac: format!("fa:16:3e:00:{:02x}:{:02x}", index / 256, index % 256),
            bridge: Some(net.bridge().to_owned()),
            tap: Some(tap.clone()),
        });
        libvirtd.define(&domain)?;
        domains.push((domain.name, tap));
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss_before_kib = machine::status_kib(pid, "VmRSS")?;
    let events = StartEvents::listen(libvirtd)?;
    let mut status = StatusPoller::connect(daemon.admin_socket())?;
    let mut event_to_attached_ms = Vec::with_capacity(count);
    let mut virsh_start_ms = Vec::with_capacity(count);
    let mut start_to_attached_ms = Vec::with_capacity(count);
    for (index, (name, tap)) in domains.iter().enumerate() {
        crate::check_stop()?;
        let started = Instant::now();
        // Spawned, not waited for: the tap may be attached while virsh
        // still waits for libvirtd.
        let uri = libvirtd.uri();
        let mut virsh = cmd::command(&["virsh", "-q", "-c", &uri, "start", name, "--paused"]);
        virsh
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = virsh.spawn().context("starting virsh start")?;
        let attached = status
            .wait_attached(tap, Duration::from_secs(20))
            .with_context(|| format!("domain {index} ({name}, tap {tap})"));
        let out = wait_child(&mut child)?;
        virsh_start_ms.push(ms(Instant::now() - started));
        if !out.0 {
            bail!("virsh start {name} failed: {}\n{}", out.1, libvirtd.logs());
        }
        let attached = attached?;
        start_to_attached_ms.push(signed_ms(attached, started));
        let event = events.wait_for(name, Duration::from_secs(10))?;
        event_to_attached_ms.push(signed_ms(attached, event));
    }
    std::thread::sleep(Duration::from_millis(500));
    let discovery = daemon.status()?["discovery"].clone();
    let owned = discovery["ports_owned"].as_u64().unwrap_or(0);
    if owned != count as u64 {
        bail!("the daemon owns {owned} ports, expected {count}: {discovery}");
    }
    Ok(DiscoveryRun {
        tap_attach,
        domains: count,
        event_to_attached_ms,
        start_to_attached_ms,
        virsh_start_ms,
        rss_before_kib,
        rss_after_kib: machine::status_kib(pid, "VmRSS")?,
        hwm_after_kib: machine::status_kib(pid, "VmHWM")?,
    })
}

/// Waits for a child; (success, stderr).
fn wait_child(child: &mut Child) -> Result<(bool, String)> {
    let status = child.wait()?;
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    Ok((status.success(), stderr.trim().to_owned()))
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// `later - earlier` in ms, negative when `later` came first.
fn signed_ms(later: Instant, earlier: Instant) -> f64 {
    if later >= earlier {
        ms(later - earlier)
    } else {
        -ms(earlier - later)
    }
}

/// libvirt's "Started" lifecycle events, stamped when they arrive:
/// `virsh event --all --loop` prints each one as it comes (one line each,
/// flushed).
struct StartEvents {
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    child: Child,
}

impl StartEvents {
    fn listen(libvirtd: &Libvirtd) -> Result<Self> {
        let uri = libvirtd.uri();
        let mut command = cmd::command(&["virsh", "-q", "-c", &uri, "event", "--all", "--loop"]);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        cmd::die_with_parent(&mut command);
        let mut child = command.spawn().context("starting virsh event")?;
        let stdout = child.stdout.take().context("piped")?;
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let record = Arc::clone(&seen);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else {
                    break;
                };
                let at = Instant::now();
                if let Some(name) = started_domain(&line) {
                    record
                        .lock()
                        .expect("events lock")
                        .entry(name.to_owned())
                        .or_insert(at);
                }
            }
        });
        // virsh subscribes before it prints anything; give it that moment.
        std::thread::sleep(Duration::from_millis(300));
        Ok(Self { seen, child })
    }

    fn wait_for(&self, name: &str, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.seen.lock().expect("events lock").get(name) {
                return Ok(*at);
            }
            if Instant::now() >= deadline {
                bail!("no start event for {name} within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for StartEvents {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The domain of `event 'lifecycle' for domain 'NAME': Started Booted`.
fn started_domain(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("event 'lifecycle' for domain '")?;
    let (name, what) = rest.split_once("': ")?;
    what.starts_with("Started").then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_events_are_recognised() {
        assert_eq!(
            started_domain("event 'lifecycle' for domain 'mdr-test-1-d0': Started Booted"),
            Some("mdr-test-1-d0")
        );
        assert_eq!(
            started_domain("event 'lifecycle' for domain 'x': Suspended Paused"),
            None
        );
        assert_eq!(
            started_domain("event 'device-added' for domain 'x': net1"),
            None
        );
    }

    #[test]
    fn signed_differences() {
        let now = Instant::now();
        let later = now + Duration::from_millis(3);
        assert!((signed_ms(later, now) - 3.0).abs() < 1e-9);
        assert!((signed_ms(now, later) + 3.0).abs() < 1e-9);
    }
}
