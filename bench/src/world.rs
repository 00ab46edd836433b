//! The measured world: one "hypervisor" namespace with the daemon, tenant
//! networks (a bridge and a router namespace with neutron's haproxy each)
//! and guest namespaces on them, every guest with its own instance.
//!
//! Each guest is known to the daemon twice, so that the same guest can be
//! measured on both paths:
//! - its real tap, registered only while the eBPF path is measured (a
//!   registered tap's metadata traffic never reaches the router);
//! - a "neutron identity" port (`--network-id`, `--ip`) under an interface
//!   name that never exists, so nothing is attached for it: the agent socket
//!   finds the guest by network and address, as neutron's agent would.
//!
//! Same addresses on every network (10.0.0.x/24): overlapping tenant subnets
//! are the case both designs claim to handle.
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use mdr_harness::fixtures::{GATEWAY, PREFIX_LEN, random_uuid};
use mdr_harness::tempdir::TempDir;
use mdr_harness::wait::{self, Poll};
use mdr_harness::{
    Daemon, DaemonConfig, Guest, GuestConfig, Host, Instance, METADATA_ADDR, TenantNet, names,
};

use crate::conn::Target;
use crate::http1::{self, ConnMode};
use crate::load::Client;
use crate::neutron::{self, LogSink, Proxy};
use crate::nsnet::NetnsHandle;
use crate::parallel;

/// `#cloud-config\nhostname: bench\n`: cloud-init fetches user_data, so
/// every instance has one (a 404 would count as an error).
const USER_DATA_B64: &str = "I2Nsb3VkLWNvbmZpZwpob3N0bmFtZTogYmVuY2gK";

/// The daemon's limits, raised so that they do not throttle a load test:
/// per-port request rate and burst, and the datapath's per-port SYN budget.
pub const DAEMON_CONFIG: &str = "\
# mdr-bench: limits raised so they never throttle the load generator
rate_limit_per_sec = 1000000000.0
rate_limit_burst = 1000000000
syn_rate_per_port = 100000000
";

/// How the daemon attaches the tap program (its `--tap-attach`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TapAttach {
    /// A TCX link per tap (the daemon's default).
    Tcx,
    /// A cls_bpf filter per tap.
    Tc,
}

impl TapAttach {
    pub const ALL: [TapAttach; 2] = [TapAttach::Tcx, TapAttach::Tc];

    pub fn flag(self) -> &'static str {
        match self {
            TapAttach::Tcx => "tcx",
            TapAttach::Tc => "tc",
        }
    }
}

/// Which way a request reaches the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    /// Guest -> registered tap -> eBPF redirect -> server.
    Ours,
    /// Guest -> router namespace -> iptables REDIRECT -> haproxy -> agent socket.
    Neutron,
    /// The agent socket directly, with haproxy's headers: the server alone.
    Limit,
}

impl PathKind {
    pub const ALL: [PathKind; 3] = [PathKind::Ours, PathKind::Neutron, PathKind::Limit];

    pub fn label(self) -> &'static str {
        match self {
            PathKind::Ours => "ours",
            PathKind::Neutron => "neutron-style",
            PathKind::Limit => "limit",
        }
    }
}

pub struct BenchGuest {
    pub guest: Guest,
    pub instance: Instance,
    pub net: usize,
    pub netns: Arc<NetnsHandle>,
}

pub struct Network {
    pub id: String,
    // Dropped before the tenant network (its namespace).
    pub proxy: Option<Proxy>,
    pub tenant: TenantNet,
}

pub struct World {
    // Field order is drop order: the daemon stops first, then the guests
    // and networks go, the host namespace and the directory last.
    pub daemon: Daemon,
    pub guests: Vec<BenchGuest>,
    pub nets: Vec<Network>,
    _logs: LogSink,
    pub agent_socket: PathBuf,
    /// Whether each guest's real tap is registered now.
    registered: Vec<bool>,
    pub host: Host,
    _dir: TempDir,
}

/// Starts a daemon in `host` with the bench's config and, optionally, the
/// agent socket; its files live in `dir`.
pub fn start_daemon(
    host: &Host,
    dir: &TempDir,
    agent_socket: Option<&std::path::Path>,
    tap_attach: TapAttach,
) -> Result<Daemon> {
    let config_path = dir.join("daemon.toml");
    std::fs::write(&config_path, DAEMON_CONFIG)?;
    let mut config = DaemonConfig::in_dir(dir.path());
    config.extra_args = vec![
        "--config".into(),
        config_path.to_string_lossy().into_owned(),
        "--tap-attach".into(),
        tap_attach.flag().into(),
    ];
    if let Some(socket) = agent_socket {
        config.extra_args.push("--neutron-agent-socket".into());
        config
            .extra_args
            .push(socket.to_string_lossy().into_owned());
    }
    // Ctrl-C reaches only us; we stop the daemon in order.
    config.own_process_group = true;
    config.print_log_on_drop = false;
    Daemon::start_with(host, config, None)
}

impl World {
    /// `guests` guests, `per_net` to a network (round-robin, so any first
    /// k guests spread over as many networks as they can).
    pub fn build(guests: usize, per_net: usize) -> Result<Self> {
        let host = Host::new()?;
        let dir = TempDir::new("bench")?;
        let agent_socket = dir.join("agent.sock");
        let daemon = start_daemon(&host, &dir, Some(&agent_socket), TapAttach::Tcx)?;
        let logs = LogSink::start(dir.join("log.sock"))?;
        let net_count = guests.div_ceil(per_net).max(1);
        let mut nets = parallel::map(0..net_count, |_| {
            let tenant = TenantNet::new(&host, GATEWAY, PREFIX_LEN)?;
            neutron::apply_rules(tenant.router().context("tenant networks have routers")?)?;
            Ok(Network {
                id: random_uuid(),
                proxy: None,
                tenant,
            })
        })?;
        // From this thread: the harness makes children die with the thread
        // that spawned them, and parallel::map's threads end soon.
        for net in &mut nets {
            let router = net
                .tenant
                .router()
                .context("tenant networks have routers")?;
            net.proxy = Some(Proxy::start(
                router,
                &net.id,
                &agent_socket,
                &logs,
                dir.path(),
            )?);
        }
        let bench_guests = parallel::map(0..guests, |index| {
            let net = index % net_count;
            let (addr, mac) = guest_address(index / net_count, index)?;
            let guest = Guest::new(&nets[net].tenant, GuestConfig::new(addr, &mac))?;
            let mut instance = Instance::sample(&format!("bench-{index}"));
            instance.doc["user_data"] = USER_DATA_B64.into();
            daemon.put_instance(&instance)?;
            // The neutron identity: network and address, nothing to attach.
            let phantom = names::ifname("nq");
            let addr = addr.to_string();
            daemon.cli_ok(&[
                "port",
                "add",
                "--ifname",
                &phantom,
                "--instance",
                &instance.uuid,
                "--mac",
                &mac,
                "--ip",
                &addr,
                "--network-id",
                &nets[net].id,
            ])?;
            let netns = Arc::new(NetnsHandle::open(&guest.ns().path())?);
            Ok(BenchGuest {
                guest,
                instance,
                net,
                netns,
            })
        })?;
        Ok(Self {
            daemon,
            guests: bench_guests,
            nets,
            _logs: logs,
            agent_socket,
            registered: vec![false; guests],
            host,
            _dir: dir,
        })
    }

    /// Registers (or unregisters) every guest's real tap and waits until
    /// the datapath is attached to all of them (or to none).
    pub fn set_ours(&mut self, on: bool) -> Result<()> {
        let all: Vec<usize> = (0..self.guests.len()).collect();
        self.set_registered(&all, on)
    }

    /// The same for one guest (iperf3 toggles only guest 0).
    pub fn set_guest_registered(&mut self, index: usize, on: bool) -> Result<()> {
        self.set_registered(&[index], on)
    }

    fn set_registered(&mut self, indices: &[usize], on: bool) -> Result<()> {
        let change: Vec<usize> = indices
            .iter()
            .copied()
            .filter(|&i| self.registered[i] != on)
            .collect();
        if change.is_empty() {
            return Ok(());
        }
        if on {
            // One by one in guest order: the daemon gives each new port the
            // smallest free slot, so every guest gets back the slot (and
            // identity address) it had. Shuffled slots would hand a guest an
            // address whose TIME_WAIT connections belong to another guest,
            // and PAWS would reject its SYNs for up to 60 s (see the report).
            for &index in &change {
                let g = &self.guests[index];
                self.daemon
                    .add_port(g.guest.tap(), &g.instance, g.guest.mac(), g.guest.addr())?;
            }
        } else {
            parallel::map(change.iter().copied(), |index| {
                let tap = self.guests[index].guest.tap();
                self.daemon
                    .cli_ok(&["port", "del", "--ifname", tap])
                    .map(drop)
            })?;
        }
        for &index in &change {
            self.registered[index] = on;
        }
        let want = if on { change.len() } else { 0 };
        let taps: Vec<String> = change
            .iter()
            .map(|&i| self.guests[i].guest.tap().to_owned())
            .collect();
        wait::until(
            "the datapath to follow the registrations",
            Duration::from_secs(60),
            || {
                let attached = attached_taps(&self.daemon)?;
                let count = taps.iter().filter(|tap| attached.contains(tap)).count();
                Ok(if count == want {
                    Poll::Ready(())
                } else {
                    Poll::Pending(format!(
                        "{count} of {} taps attached, want {want}",
                        taps.len()
                    ))
                })
            },
        )
    }

    /// Registration the path needs: ours needs the taps registered, the
    /// neutron-style path needs them not to be (the limit does not care).
    pub fn prepare(&mut self, path: PathKind) -> Result<()> {
        match path {
            PathKind::Ours => self.set_ours(true),
            PathKind::Neutron => self.set_ours(false),
            PathKind::Limit => Ok(()),
        }
    }

    /// Where guest `index`'s requests go on `path`, and the headers it adds.
    pub fn target(&self, index: usize, path: PathKind) -> (Target, Vec<String>) {
        let g = &self.guests[index];
        match path {
            PathKind::Ours | PathKind::Neutron => (
                Target::Guest {
                    ns: g.netns.clone(),
                    addr: SocketAddrV4::new(METADATA_ADDR, 80),
                },
                Vec::new(),
            ),
            // What haproxy would add for this guest.
            PathKind::Limit => (
                Target::Unix(self.agent_socket.clone()),
                vec![
                    format!("X-Forwarded-For: {}", g.guest.addr()),
                    format!("X-Neutron-Network-ID: {}", self.nets[g.net].id),
                ],
            ),
        }
    }

    /// The first `count` guests as load clients asking for `url_path`.
    pub fn clients(
        &self,
        count: usize,
        path: PathKind,
        mode: ConnMode,
        url_path: &str,
    ) -> Vec<Client> {
        (0..count)
            .map(|index| {
                let (target, headers) = self.target(index, path);
                Client {
                    target,
                    request: Arc::new(http1::request(url_path, mode, &headers)),
                }
            })
            .collect()
    }

    /// One request per guest on `path`: each must get its own instance's
    /// meta_data.json, or the load numbers would measure something else.
    pub fn verify(&mut self, path: PathKind, count: usize) -> Result<()> {
        self.prepare(path)?;
        let runtime = crate::load::runtime()?;
        let checks: Vec<(crate::conn::Target, Vec<u8>, String)> = (0..count)
            .map(|index| {
                let (target, headers) = self.target(index, path);
                let request = http1::request(
                    "/openstack/latest/meta_data.json",
                    ConnMode::Close,
                    &headers,
                );
                (target, request, self.guests[index].instance.uuid.clone())
            })
            .collect();
        // Spawned: block_on would run it on this (the main) thread.
        let result = runtime.block_on(async {
            tokio::spawn(check_all(checks, path))
                .await
                .context("the check task panicked")?
        });
        runtime.shutdown_timeout(Duration::from_secs(1));
        result
    }

    /// The network of guest 0: its router namespace (iperf3's far end).
    pub fn router_of(&self, index: usize) -> &mdr_harness::Netns {
        self.nets[self.guests[index].net]
            .tenant
            .router()
            .expect("bench networks have routers")
    }

    /// Loss counters of the hypervisor namespace and the datapath.
    pub fn drop_counters(&self) -> Result<crate::drops::Counters> {
        crate::drops::snapshot(&self.host, &self.daemon)
    }

    pub fn proxy_pids(&self) -> Vec<u32> {
        self.nets
            .iter()
            .filter_map(|n| n.proxy.as_ref().map(Proxy::pid))
            .collect()
    }
}

/// One request per check, each on a fresh connection.
async fn check_all(checks: Vec<(Target, Vec<u8>, String)>, path: PathKind) -> Result<()> {
    for (index, (target, request, uuid)) in checks.into_iter().enumerate() {
        let mut session = crate::conn::Session::new(target);
        let answer = session
            .request(&request, ConnMode::Close)
            .await
            .with_context(|| format!("guest {index} on the {} path", path.label()))?;
        let body = String::from_utf8_lossy(session.last_body()).into_owned();
        ensure!(
            answer.status == 200 && crate::load::answers_for(body.as_bytes(), &uuid),
            "guest {index} on the {} path got HTTP {} without its uuid {uuid}: {body:.200}",
            path.label(),
            answer.status
        );
    }
    Ok(())
}

/// Names of the taps the datapath is attached to now (`status --json`).
pub fn attached_taps(daemon: &Daemon) -> Result<Vec<String>> {
    let out = daemon.cli_ok(&["status", "--json"])?;
    let status: serde_json::Value = serde_json::from_str(&out).context("status --json")?;
    let taps = status["datapath"]["attached_taps"]
        .as_object()
        .context("status --json has no datapath.attached_taps")?;
    Ok(taps.keys().cloned().collect())
}

/// The `slot`-th address on a network (10.0.0.10 on) and a MAC unique to
/// the guest.
fn guest_address(slot: usize, index: usize) -> Result<(Ipv4Addr, String)> {
    if slot >= 240 {
        bail!("at most 240 guests per network");
    }
    let addr = Ipv4Addr::new(10, 0, 0, 10 + slot as u8);
    let mac = format!(
        "fa:16:3e:{:02x}:{:02x}:{:02x}",
        (index >> 16) & 0xff,
        (index >> 8) & 0xff,
        index & 0xff
    );
    Ok((addr, mac))
}
