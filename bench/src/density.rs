//! Density: what a port costs. Ours: attach time per tap (for each
//! `--tap-attach` mode, a fresh daemon and fresh taps each), daemon memory
//! and BPF map memory with N ports registered on N veth "taps". Neutron-style:
//! per network, a router namespace with the proxy's iptables rules and one
//! haproxy (neutron's agent itself, a Python process, is not counted).
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mdr_harness::fixtures::{GATEWAY, PREFIX_LEN, random_uuid};
use mdr_harness::tempdir::TempDir;
use mdr_harness::{Daemon, Host, Instance, TenantNet, cmd, names};
use serde::Serialize;

use crate::admin_status::StatusPoller;
use crate::machine;
use crate::neutron::{self, LogSink, Proxy};
use crate::parallel;
use crate::stats;
use crate::world::{self, TapAttach};

#[derive(Clone, Debug, Serialize)]
pub struct BpfMap {
    pub name: String,
    pub kind: String,
    pub max_entries: u64,
    pub memlock_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct OursDensity {
    /// The daemon's `--tap-attach`.
    pub tap_attach: TapAttach,
    pub taps: usize,
    /// `port add --wait` (the CLI returns once the daemon has attached the
    /// tap): started -> returned, ms. Nothing in it grows with the ports
    /// already there but the daemon's own work.
    pub attach_ms: Vec<f64>,
    /// The same through the admin API on one keep-alive connection
    /// (`POST /v1/ports?wait=10`), without the CLI's process start: the
    /// daemon's own part, ms (every other port is added this way).
    pub api_attach_ms: Vec<f64>,
    /// Adding a port with N-1 others there: with all N attached, a port is
    /// deleted and added again, [`AT_SIZE_SAMPLES`] times over ports spread
    /// across the N, every other one with the CLI (`port add --wait`), ms.
    /// The same number of samples at every N, so medians and p99s of
    /// different sizes compare (the fill's own samples grow with N, and at
    /// 100 ports its p99 is the largest of 50).
    pub at_size_cli_ms: Vec<f64>,
    /// The other half of those re-adds, through the admin API, ms.
    pub at_size_api_ms: Vec<f64>,
    /// `instance put`, one after the other before the ports, ms (every
    /// other instance; the others go through the API).
    pub instance_put_ms: Vec<f64>,
    /// `PUT /v1/instances` on one keep-alive connection, ms: the daemon's
    /// own part of an `instance put`.
    pub api_instance_put_ms: Vec<f64>,
    /// `port list --json` with every port registered, ms (median of 5).
    pub port_list_ms: f64,
    /// `status` (counts, no per-tap list) with every port attached, ms.
    pub status_ms: f64,
    /// SIGKILL, then a new daemon on the same state: started -> its status
    /// counts every port's tap attached, ms.
    pub restart_served_ms: f64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub hwm_after_kib: u64,
    /// When RSS was over [`RSS_OUTLIER_KIB`]: the largest mappings then
    /// (smaps), to say where an outlier sits.
    pub rss_outlier_mappings: Vec<(String, u64)>,
    pub bpf_maps: Vec<BpfMap>,
}

/// Re-adds timed with every port attached (half CLI, half API).
const AT_SIZE_SAMPLES: usize = 200;

/// After a port's delete, before it is added again: the daemon answers the
/// delete once the registry has dropped the port and detaches the tap in
/// the background (a qdisc or link removal, well under a millisecond), so
/// the add that follows would otherwise time that detach too.
const DETACH_SETTLE: Duration = Duration::from_millis(20);

/// An RSS above this (with or without ports) is an outlier worth its smaps:
/// every run so far stayed near 26 MiB, and issue 14 saw 51 MiB once.
const RSS_OUTLIER_KIB: u64 = 40 * 1024;

#[derive(Clone, Debug, Serialize)]
pub struct NeutronDensity {
    pub networks: usize,
    pub haproxy_rss_kib: Vec<u64>,
    pub haproxy_pss_kib: Vec<u64>,
    /// Kernel memory (slab, per-cpu, stacks, page tables) the namespaces,
    /// veths, bridges and iptables tables took, over all networks.
    pub namespaces_kernel_kib: i64,
    /// The same, for starting the haproxies (their stacks and page tables).
    pub haproxy_kernel_kib: i64,
}

/// N veth pairs in `host`, in one `ip -batch` (a thousand `ip` runs would
/// take longer than what is measured), with IPv6 off on them.
///
/// Why IPv6 off: both ends of every pair sit in the host namespace, and with
/// IPv6 on each end sends its own DAD, router solicitations and MLD reports
/// and gets a link-local route. At 10,000 pairs that chatter kept the
/// kernel busy for minutes after the taps were made: routing each packet
/// walked the 20,000 link-local routes (`__find_rr_leaf`, 26% of the
/// daemon's CPU in softirqs it happened to run), and address configuration
/// held the rtnl lock the daemon's tc requests wait for. A real tap's peer
/// is a guest, not a second host interface; and the datapath catches the
/// guest's frames at tc ingress, before any of the tap's own IP config.
fn make_taps(host: &Host, count: usize) -> Result<Vec<String>> {
    // New interfaces take `default`; the daemon's own veth pair is made
    // after this is set back.
    host.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])?;
    let taps = make_veths(host, count);
    host.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=0"])?;
    taps
}

fn make_veths(host: &Host, count: usize) -> Result<Vec<String>> {
    let mut script = String::new();
    let mut taps = Vec::with_capacity(count);
    for _ in 0..count {
        let (tap, peer) = (names::ifname("dn"), names::ifname("dp"));
        script += &format!(
            "link add {tap} type veth peer name {peer}\nlink set {tap} up\nlink set {peer} up\n"
        );
        taps.push(tap);
    }
    let mut command = host.command(&["ip", "-batch", "-"]);
    command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().context("starting ip -batch")?;
    std::io::Write::write_all(&mut child.stdin.take().expect("piped"), script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip -batch failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(taps)
}

/// `on_error` sees the daemon before it is stopped (to keep its log).
pub fn ours(
    count: usize,
    tap_attach: TapAttach,
    on_error: impl FnOnce(&Daemon),
) -> Result<OursDensity> {
    let host = Host::new()?;
    let dir = TempDir::new("density")?;
    // The taps exist before the daemon starts (it lists them), as on a
    // hypervisor whose VMs are running: a thousand link events in one burst
    // is not what is measured here.
    let taps = make_taps(&host, count)?;
    let mut daemon = world::start_daemon(&host, &dir, None, tap_attach)?;
    let result = attach_all(&mut daemon, &taps, tap_attach);
    if result.is_err() {
        on_error(&daemon);
    }
    result
}

fn attach_all(daemon: &mut Daemon, taps: &[String], tap_attach: TapAttach) -> Result<OursDensity> {
    let count = taps.len();
    let pid = daemon.pid().context("the daemon runs")?;
    // One after the other: the time of a put at 1 instance and at N.
    let mut instances = Vec::with_capacity(count);
    let mut instance_put_ms = Vec::with_capacity(count);
    let mut api_instance_put_ms = Vec::with_capacity(count);
    let mut admin = StatusPoller::connect(daemon.admin_socket())?;
    for index in 0..count {
        let instance = Instance::sample(&format!("dense-{index}"));
        let started = Instant::now();
        if index % 2 == 1 {
            admin
                .put_instance(instance.doc.to_string().as_bytes())
                .with_context(|| format!("instance {index}"))?;
            api_instance_put_ms.push(ms(started.elapsed()));
        } else {
            daemon.put_instance(&instance)?;
            instance_put_ms.push(ms(started.elapsed()));
        }
        instances.push(instance);
    }
    // Settle, then the baseline: instances stored, no port yet.
    std::thread::sleep(Duration::from_millis(500));
    let rss_before_kib = machine::status_kib(pid, "VmRSS")?;
    // `--wait`: the daemon answers once the tap is attached (the same
    // signal for both modes), so nothing here polls a listing that grows
    // with the ports.
    let mut attach_ms = Vec::with_capacity(count);
    let mut api_attach_ms = Vec::with_capacity(count);
    for (index, (tap, instance)) in taps.iter().zip(&instances).enumerate() {
        let via = if index % 2 == 1 { Via::Api } else { Via::Cli };
        let took = add_port(daemon, &mut admin, via, tap, instance)
            .with_context(|| format!("attaching tap {index} ({tap})"))?;
        match via {
            Via::Api => api_attach_ms.push(took),
            Via::Cli => attach_ms.push(took),
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let attached = attached_count(daemon)?;
    if attached != count {
        bail!("{attached} taps attached, expected {count}");
    }
    let rss_after_kib = machine::status_kib(pid, "VmRSS")?;
    let (at_size_cli_ms, at_size_api_ms) = re_add_at_size(daemon, &mut admin, taps, &instances)?;
    let port_list_ms = median_of(5, || {
        daemon.cli_ok(&["port", "list", "--json"])?;
        Ok(())
    })?;
    let status_ms = median_of(5, || {
        daemon.cli_ok(&["status"])?;
        Ok(())
    })?;
    let hwm_after_kib = machine::status_kib(pid, "VmHWM")?;
    let rss_outlier_mappings = if rss_before_kib.max(rss_after_kib) > RSS_OUTLIER_KIB {
        machine::largest_mappings(pid, 8)?
    } else {
        Vec::new()
    };
    Ok(OursDensity {
        tap_attach,
        taps: count,
        attach_ms,
        api_attach_ms,
        at_size_cli_ms,
        at_size_api_ms,
        rss_before_kib,
        rss_after_kib,
        hwm_after_kib,
        rss_outlier_mappings,
        bpf_maps: bpf_maps(&daemon.bpffs().join("maps"))?,
        instance_put_ms,
        api_instance_put_ms,
        port_list_ms,
        status_ms,
        restart_served_ms: restart_served(daemon, count)?,
    })
}

/// Deletes and re-adds [`AT_SIZE_SAMPLES`] ports spread over `taps` (all
/// attached), timing each add: what adding a port costs at this size. The
/// CLI's and the API's times.
fn re_add_at_size(
    daemon: &Daemon,
    admin: &mut StatusPoller,
    taps: &[String],
    instances: &[Instance],
) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut cli_ms = Vec::with_capacity(AT_SIZE_SAMPLES / 2);
    let mut api_ms = Vec::with_capacity(AT_SIZE_SAMPLES / 2);
    for sample in 0..AT_SIZE_SAMPLES {
        let index = sample * taps.len() / AT_SIZE_SAMPLES;
        let (tap, instance) = (&taps[index], &instances[index]);
        admin
            .delete_port(tap)
            .with_context(|| format!("deleting the port of tap {index} ({tap})"))?;
        std::thread::sleep(DETACH_SETTLE);
        let via = if sample % 2 == 1 { Via::Api } else { Via::Cli };
        let took = add_port(daemon, admin, via, tap, instance)
            .with_context(|| format!("re-adding tap {index} ({tap})"))?;
        match via {
            Via::Api => api_ms.push(took),
            Via::Cli => cli_ms.push(took),
        }
    }
    Ok((cli_ms, api_ms))
}

/// How a port is added: the CLI's `port add --wait` (a process start and
/// the admin API) or the same request on the bench's keep-alive admin
/// connection (the daemon's own part).
#[derive(Clone, Copy)]
enum Via {
    Cli,
    Api,
}

/// Adds `tap`'s port for `instance` and waits for the attach; the time
/// from the request (or the CLI's start) to the answer, ms.
fn add_port(
    daemon: &Daemon,
    admin: &mut StatusPoller,
    via: Via,
    tap: &str,
    instance: &Instance,
) -> Result<f64> {
    let started = Instant::now();
    match via {
        Via::Api => {
            let body = serde_json::json!({"ifname": tap, "instance": instance.uuid});
            let answer = admin.add_port_and_wait(body.to_string().as_bytes())?;
            let took = ms(started.elapsed());
            if answer["datapath"]["state"] != "attached" {
                bail!("not attached: {answer}");
            }
            Ok(took)
        }
        Via::Cli => {
            let out = daemon.cli_ok(&[
                "port",
                "add",
                "--ifname",
                tap,
                "--instance",
                &instance.uuid,
                "--wait",
                "10",
            ])?;
            let took = ms(started.elapsed());
            if !out.contains(": attached") {
                bail!("not attached: {}", out.trim());
            }
            Ok(took)
        }
    }
}

/// SIGKILLs the daemon and starts it again on the same state and pins:
/// the time until its status counts `count` taps attached (the summary,
/// one small answer per poll).
fn restart_served(daemon: &mut Daemon, count: usize) -> Result<f64> {
    daemon.kill9()?;
    let started = Instant::now();
    daemon.restart()?;
    loop {
        if attached_count(daemon).unwrap_or(0) == count {
            return Ok(ms(started.elapsed()));
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the restarted daemon did not attach {count} taps within 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The daemon's count of attached taps (`status --json`, no per-tap list).
fn attached_count(daemon: &Daemon) -> Result<usize> {
    let out = daemon.cli_ok(&["status", "--json"])?;
    let status: serde_json::Value = serde_json::from_str(&out).context("status --json")?;
    status["datapath"]["taps"]["attached"]
        .as_u64()
        .map(|n| n as usize)
        .context("status --json has no datapath.taps.attached")
}

/// The median time of `runs` runs of `f`, ms.
fn median_of(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        f()?;
        times.push(ms(started.elapsed()));
    }
    Ok(stats::median(&times))
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// What bpftool says about every map the daemon pinned.
fn bpf_maps(dir: &Path) -> Result<Vec<BpfMap>> {
    let mut maps = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let out = cmd::run(&[
            "bpftool",
            "-j",
            "map",
            "show",
            "pinned",
            &path.to_string_lossy(),
        ])?;
        let info: serde_json::Value = serde_json::from_str(&out).context("bpftool -j map show")?;
        maps.push(BpfMap {
            name: path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            kind: info["type"].as_str().unwrap_or("?").to_owned(),
            max_entries: info["max_entries"].as_u64().unwrap_or(0),
            memlock_bytes: info["bytes_memlock"].as_u64().unwrap_or(0),
        });
        // FLOWS holds one flow table per attached port (not pinned on
        // their own): their memory grows with the ports.
        if path.file_name().is_some_and(|name| name == "FLOWS") {
            let tables = mdr_harness::flows::tables(&path)?;
            maps.push(BpfMap {
                name: format!("FLOWS tables ({})", tables.len()),
                kind: "lru_hash".to_owned(),
                max_entries: tables.iter().map(|t| t.max_entries).sum(),
                memlock_bytes: tables.iter().map(|t| t.memlock_bytes).sum(),
            });
        }
    }
    Ok(maps)
}

pub fn neutron(count: usize) -> Result<NeutronDensity> {
    let host = Host::new()?;
    let dir = TempDir::new("density-neutron")?;
    let logs = LogSink::start(dir.join("log.sock"))?;
    // haproxy only connects to the agent socket per request; none is made.
    let agent_socket = dir.join("agent.sock");
    std::thread::sleep(Duration::from_millis(300));
    let before = machine::kernel_kib();
    let nets = parallel::map(0..count, |_| {
        let net = TenantNet::new(&host, GATEWAY, PREFIX_LEN)?;
        neutron::apply_rules(net.router().context("router")?)?;
        Ok((random_uuid(), net))
    })?;
    std::thread::sleep(Duration::from_millis(300));
    let with_namespaces = machine::kernel_kib();
    // From this thread: children die with the thread that spawned them.
    let mut proxies = Vec::with_capacity(count);
    for (id, net) in &nets {
        proxies.push(Proxy::start(
            net.router().context("router")?,
            id,
            &agent_socket,
            &logs,
            dir.path(),
        )?);
    }
    std::thread::sleep(Duration::from_millis(500));
    let with_proxies = machine::kernel_kib();
    let mut rss = Vec::new();
    let mut pss = Vec::new();
    for proxy in &proxies {
        rss.push(machine::status_kib(proxy.pid(), "VmRSS")?);
        pss.push(machine::pss_kib(proxy.pid())?);
    }
    drop(proxies);
    drop(nets);
    Ok(NeutronDensity {
        networks: count,
        haproxy_rss_kib: rss,
        haproxy_pss_kib: pss,
        namespaces_kernel_kib: with_namespaces as i64 - before as i64,
        haproxy_kernel_kib: with_proxies as i64 - with_namespaces as i64,
    })
}

impl OursDensity {
    pub fn attach_median_ms(&self) -> f64 {
        stats::median(&self.attach_ms)
    }
    pub fn attach_p99_ms(&self) -> f64 {
        stats::percentile(&self.attach_ms, 99.0)
    }
    pub fn api_attach_median_ms(&self) -> f64 {
        stats::median(&self.api_attach_ms)
    }
    pub fn api_attach_p99_ms(&self) -> f64 {
        stats::percentile(&self.api_attach_ms, 99.0)
    }
    pub fn at_size_cli_median_ms(&self) -> f64 {
        stats::median(&self.at_size_cli_ms)
    }
    pub fn at_size_cli_p99_ms(&self) -> f64 {
        stats::percentile(&self.at_size_cli_ms, 99.0)
    }
    pub fn at_size_api_median_ms(&self) -> f64 {
        stats::median(&self.at_size_api_ms)
    }
    pub fn at_size_api_p99_ms(&self) -> f64 {
        stats::percentile(&self.at_size_api_ms, 99.0)
    }
    pub fn api_instance_put_median_ms(&self) -> f64 {
        stats::median(&self.api_instance_put_ms)
    }
    pub fn bpf_memlock_bytes(&self) -> u64 {
        self.bpf_maps.iter().map(|m| m.memlock_bytes).sum()
    }
}
