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
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use mdr_harness::fixtures::{GATEWAY, PREFIX_LEN, random_uuid};
use mdr_harness::listener::Listener;
use mdr_harness::tempdir::TempDir;
use mdr_harness::wait::{self, Poll};
use mdr_harness::{
    Daemon, DaemonConfig, Guest, GuestConfig, Host, Instance, METADATA_ADDR, Netns, TenantNet,
    names,
};

use crate::baseline_store::StoreVersion;
use crate::conn::Target;
use crate::cpu::{Role, Watched};
use crate::http1::{self, ConnMode};
use crate::load::Client;
use crate::neutron::{self, LogSink, Proxy};
use crate::nsnet::NetnsHandle;
use crate::parallel;
use crate::responder_answers;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TapAttach {
    /// A TCX link per tap.
    Tcx,
    /// A cls_bpf filter per tap.
    Tc,
    /// Every tap's ingress qdisc on one shared block holding the filter.
    TcBlock,
}

impl TapAttach {
    pub const ALL: [TapAttach; 3] = [TapAttach::Tcx, TapAttach::Tc, TapAttach::TcBlock];

    pub fn flag(self) -> &'static str {
        match self {
            TapAttach::Tcx => "tcx",
            TapAttach::Tc => "tc",
            TapAttach::TcBlock => "tc-block",
        }
    }
}

/// Which way a request reaches which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    /// Guest -> registered tap -> eBPF redirect -> the daemon.
    Ours,
    /// Guest -> router namespace -> iptables REDIRECT -> haproxy -> agent socket.
    Neutron,
    /// Guest -> registered tap -> eBPF redirect -> the minimal responder on
    /// the server address (the daemon stopped; the datapath stays pinned).
    Limit,
    /// Ours, served by the baseline build of the daemon (`--baseline-bin`).
    Baseline,
    /// Ours over IPv6: to [fe80::a9fe:a9fe%eth0]:80, translated by the same
    /// programs onto the same server.
    Ours6,
}

impl PathKind {
    pub const ALL: [PathKind; 5] = [
        PathKind::Ours,
        PathKind::Neutron,
        PathKind::Limit,
        PathKind::Baseline,
        PathKind::Ours6,
    ];

    pub fn label(self) -> &'static str {
        match self {
            PathKind::Ours => "ours",
            PathKind::Neutron => "neutron-style",
            PathKind::Limit => "limit",
            PathKind::Baseline => "baseline",
            PathKind::Ours6 => "ours (IPv6)",
        }
    }

    /// Whether guests' taps must be registered (the redirect on).
    fn uses_redirect(self) -> bool {
        self != PathKind::Neutron
    }
}

/// Which process listens on the server address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    /// This build of the daemon.
    Daemon,
    /// The baseline build, on the same state, socket and pins.
    Baseline,
    /// The minimal responder, answering as in `ConnMode`.
    Responder(ConnMode),
}

/// The identity range the daemon uses by default (`identity_net`): slot N
/// is `240.1.0.0 + N`. The bench keeps the default.
const IDENTITY_NET: Ipv4Addr = Ipv4Addr::new(240, 1, 0, 0);
/// OpenStack's IPv6 metadata address, on-link on every guest's eth0.
const METADATA_ADDR6: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0xa9fe, 0xa9fe);

/// The link-local address every guest uses for the IPv6 path (one per
/// network, as on a real cloud where MACs differ; `nodad`, so that it is
/// usable at once, where the kernel's own would wait out address
/// duplicate detection).
const GUEST_LINK_LOCAL: &str = "fe80::5/64";

/// Gives `guest` its link-local IPv6 address and returns the ifindex of its
/// eth0 (`ip -o link`: "N: eth0@..."), the scope of fe80::a9fe:a9fe.
fn ipv6_ready(guest: &Guest) -> Result<u32> {
    guest.ns().ip(&[
        "-6",
        "addr",
        "add",
        GUEST_LINK_LOCAL,
        "dev",
        "eth0",
        "nodad",
    ])?;
    let out = guest.ns().ip(&["-o", "link", "show", "dev", "eth0"])?;
    out.split(':')
        .next()
        .and_then(|index| index.trim().parse().ok())
        .with_context(|| format!("no ifindex in {out:?}"))
}

/// The daemon's default name for the host's end of its veth pair.
const ENTRY_IFNAME: &str = "mdr-in";

/// The server address and port the daemon listens on by default.
const SERVER_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(240, 0, 0, 1), 80);

pub struct BenchGuest {
    pub guest: Guest,
    pub instance: Instance,
    pub net: usize,
    pub netns: Arc<NetnsHandle>,
    /// The ifindex of the guest's eth0 inside its namespace: the scope of
    /// fe80::a9fe:a9fe.
    pub eth0_index: u32,
}

pub struct Network {
    pub id: String,
    // Dropped before the tenant network (its namespace).
    pub proxy: Option<Proxy>,
    pub tenant: TenantNet,
}

pub struct World {
    // Field order is drop order: the responder and the daemon stop first,
    // then the guests and networks go, the host namespace and the
    // directory last.
    responder: Option<Listener>,
    pub daemon: Daemon,
    server: Server,
    daemon_bin: PathBuf,
    baseline_bin: Option<PathBuf>,
    /// The store's real schema version while the baseline has it lowered.
    lowered_store: Option<StoreVersion>,
    /// Each guest's answer from the daemon, raw, for the responder:
    /// (keep-alive, close), captured on first use.
    captured: Vec<(Vec<u8>, Vec<u8>)>,
    url_path: &'static str,
    pub guests: Vec<BenchGuest>,
    pub nets: Vec<Network>,
    _logs: LogSink,
    /// Whether each guest's real tap is registered now.
    registered: Vec<bool>,
    pub host: Host,
    dir: TempDir,
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
    /// k guests spread over as many networks as they can), asking for
    /// `url_path`; `baseline_bin` serves the baseline path.
    pub fn build(
        guests: usize,
        per_net: usize,
        url_path: &'static str,
        baseline_bin: Option<PathBuf>,
    ) -> Result<Self> {
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
            let eth0_index = ipv6_ready(&guest)?;
            Ok(BenchGuest {
                guest,
                instance,
                net,
                netns,
                eth0_index,
            })
        })?;
        Ok(Self {
            responder: None,
            daemon,
            server: Server::Daemon,
            daemon_bin: mdr_harness::env::mdr_bin(),
            baseline_bin,
            lowered_store: None,
            captured: Vec::new(),
            url_path,
            guests: bench_guests,
            nets,
            _logs: logs,
            registered: vec![false; guests],
            host,
            dir,
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

    /// Makes the world ready for `path` with requests made as in `mode`:
    /// the server it needs listening (the daemon, the baseline build or the
    /// responder), and the taps registered for every path but the
    /// neutron-style one (a registered tap's metadata traffic never reaches
    /// the router). Registering needs a daemon, so it happens first.
    pub fn prepare(&mut self, path: PathKind, mode: ConnMode) -> Result<()> {
        let want = match path {
            PathKind::Ours | PathKind::Ours6 | PathKind::Neutron => Server::Daemon,
            PathKind::Baseline => Server::Baseline,
            PathKind::Limit => Server::Responder(mode),
        };
        // The responder takes over our daemon's datapath and namespace (a
        // baseline build may lay both out its own way), and leaves them.
        let responder_involved = matches!(self.server, Server::Responder(_))
            || (matches!(want, Server::Responder(_)) && self.server == Server::Baseline);
        if responder_involved && self.server != want {
            self.switch_daemon(Server::Daemon)?;
        }
        self.set_ours(path.uses_redirect())?;
        match want {
            Server::Daemon | Server::Baseline => self.switch_daemon(want),
            Server::Responder(mode) => self.start_responder(mode),
        }
    }

    /// The process(es) whose CPU a cell on `path` charges.
    pub fn watched(&self, path: PathKind) -> Vec<Watched> {
        match path {
            PathKind::Ours | PathKind::Ours6 | PathKind::Baseline => vec![Watched {
                role: Role::Daemon,
                pids: self.daemon.pid().into_iter().collect(),
            }],
            PathKind::Neutron => vec![
                Watched {
                    role: Role::Haproxy,
                    pids: self.proxy_pids(),
                },
                Watched {
                    role: Role::Agent,
                    pids: self.daemon.pid().into_iter().collect(),
                },
            ],
            PathKind::Limit => vec![Watched {
                role: Role::Responder,
                pids: self.responder.iter().map(Listener::pid).collect(),
            }],
        }
    }

    /// Has `server` (this build or the baseline) run the daemon, and waits
    /// until it serves every registered tap again. A stopped daemon leaves
    /// the datapath pinned, so the next one takes it over as in production.
    fn switch_daemon(&mut self, server: Server) -> Result<()> {
        if self.server == server {
            return Ok(());
        }
        let bin = match server {
            Server::Baseline => self
                .baseline_bin
                .clone()
                .context("the baseline path needs --baseline-bin")?,
            _ => self.daemon_bin.clone(),
        };
        self.stop_server();
        if let Some(lowered) = self.lowered_store.take() {
            lowered.restore()?;
        }
        if !mdr_harness::daemon::serves_in_own_netns(&bin)? {
            self.make_way_for_host_netns_server()?;
        }
        self.daemon.set_bin(&bin);
        if let Err(refusal) = self.daemon.restart() {
            // An older build refuses the store's newer schema (see
            // baseline_store): shown the version it knows, it starts.
            let lowered = match server {
                Server::Baseline => StoreVersion::lower_for(self.daemon.state_dir(), &refusal)?,
                _ => None,
            };
            let Some(lowered) = lowered else {
                return Err(refusal);
            };
            self.lowered_store = Some(lowered);
            self.daemon.restart()?;
        }
        self.server = server;
        let taps: Vec<String> = (0..self.guests.len())
            .filter(|&i| self.registered[i])
            .map(|i| self.guests[i].guest.tap().to_owned())
            .collect();
        wait_attached(&self.daemon, &taps)
    }

    /// An older build (the baseline) serves in the hypervisor namespace and
    /// wants both ends of its veth pair there; it refuses to adopt an entry
    /// end whose peer is in the server namespace our daemon made. Deleting
    /// the entry end deletes the pair; our daemon makes it again when it
    /// comes back (and moves an old-style pair into its namespace).
    fn make_way_for_host_netns_server(&self) -> Result<()> {
        let present = self
            .host
            .exec(&["ip", "link", "show", "dev", ENTRY_IFNAME])?
            .status
            .success();
        if present {
            self.host.ip(&["link", "del", "dev", ENTRY_IFNAME])?;
        }
        Ok(())
    }

    /// Stops whatever listens on the server address.
    fn stop_server(&mut self) {
        match self.server {
            Server::Responder(_) => self.responder = None,
            Server::Daemon | Server::Baseline => self.daemon.terminate(),
        }
    }

    /// Stops the daemon and starts the responder in its place, in the
    /// namespace the daemon listened in, answering every registered guest
    /// from its identity address with what the daemon answered it.
    fn start_responder(&mut self, mode: ConnMode) -> Result<()> {
        if self.server == Server::Responder(mode) {
            return Ok(());
        }
        if self.captured.is_empty() {
            self.capture_answers()?;
        }
        let slots = tap_slots(&self.daemon)?;
        let answers: Vec<(Ipv4Addr, Vec<u8>)> = self
            .guests
            .iter()
            .zip(&self.captured)
            .filter_map(|(g, (keep_alive, close))| {
                let slot = *slots.get(g.guest.tap())?;
                let addr = Ipv4Addr::from(u32::from(IDENTITY_NET) + slot);
                let answer = match mode {
                    ConnMode::KeepAlive => keep_alive,
                    ConnMode::Close => close,
                };
                Some((addr, answer.clone()))
            })
            .collect();
        let file = self.dir.join(&format!("answers-{}.bin", mode_flag(mode)));
        responder_answers::write(&file, &answers)
            .with_context(|| format!("writing {}", file.display()))?;
        self.stop_server();
        let bin = std::env::current_exe()?.with_file_name("mdr-responder");
        let listen = SERVER_ADDR.to_string();
        let file = file.to_string_lossy();
        // Where the daemon listened: its server namespace.
        let server_ns = Netns::existing(self.daemon.server_netns());
        let responder = Listener::start_logged(
            &server_ns,
            &[
                &bin.to_string_lossy(),
                "--listen",
                &listen,
                "--answers",
                &file,
                "--path",
                self.url_path,
                "--mode",
                mode_flag(mode),
            ],
            SERVER_ADDR.port(),
            &self.dir.join("responder.log"),
        )?;
        self.responder = Some(responder);
        self.server = Server::Responder(mode);
        Ok(())
    }

    /// Every guest's answer from the daemon over our path, raw (head and
    /// body), once with keep-alive and once with `Connection: close`.
    fn capture_answers(&mut self) -> Result<()> {
        self.set_ours(true)?;
        let runtime = crate::load::runtime()?;
        let targets: Vec<Target> = (0..self.guests.len())
            .map(|index| self.target(index, PathKind::Ours).0)
            .collect();
        let url_path = self.url_path;
        let captured = runtime.block_on(async move {
            tokio::spawn(async move {
                let mut captured = Vec::with_capacity(targets.len());
                for target in targets {
                    let mut session = crate::conn::Session::new(target);
                    let keep_alive =
                        raw_answer(&mut session, url_path, ConnMode::KeepAlive).await?;
                    let close = raw_answer(&mut session, url_path, ConnMode::Close).await?;
                    captured.push((keep_alive, close));
                }
                anyhow::Ok(captured)
            })
            .await
            .context("the capture task panicked")?
        });
        runtime.shutdown_timeout(Duration::from_secs(1));
        self.captured = captured.context("capturing the daemon's answers")?;
        Ok(())
    }

    /// Where guest `index`'s requests go, and the headers it adds: on
    /// every path the guest asks 169.254.169.254 itself; what is
    /// registered and what listens decides who answers.
    pub fn target(&self, index: usize, path: PathKind) -> (Target, Vec<String>) {
        let g = &self.guests[index];
        let addr = match path {
            PathKind::Ours6 => std::net::SocketAddr::V6(std::net::SocketAddrV6::new(
                METADATA_ADDR6,
                80,
                0,
                g.eth0_index,
            )),
            _ => SocketAddrV4::new(METADATA_ADDR, 80).into(),
        };
        (
            Target {
                ns: g.netns.clone(),
                addr,
            },
            Vec::new(),
        )
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
        self.prepare(path, ConnMode::Close)?;
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
        let server_ns = Netns::existing(self.daemon.server_netns());
        crate::drops::snapshot(&[&self.host, &server_ns], self.daemon.bpffs())
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
    Ok(tap_slots(daemon)?.into_keys().collect())
}

/// The slot of every attached tap (`status --json --taps`), asked with this
/// build's CLI whichever build serves: an older daemon (the baseline)
/// lists the taps without being asked, and its CLI knows no `--taps`.
fn tap_slots(daemon: &Daemon) -> Result<HashMap<String, u32>> {
    let mut status = std::process::Command::new(mdr_harness::env::mdr_bin());
    status
        .arg("--admin-socket")
        .arg(daemon.admin_socket())
        .args(["status", "--json", "--taps"])
        .stdin(std::process::Stdio::null());
    let out = mdr_harness::cmd::checked(&mut status)?;
    let status: serde_json::Value = serde_json::from_str(&out).context("status --json --taps")?;
    let taps = status["datapath"]["attached_taps"]
        .as_object()
        .context("status --json has no datapath.attached_taps")?;
    Ok(taps
        .iter()
        .filter_map(|(tap, info)| Some((tap.clone(), info["slot"].as_u64()? as u32)))
        .collect())
}

/// Waits until the datapath is attached to every one of `taps`.
fn wait_attached(daemon: &Daemon, taps: &[String]) -> Result<()> {
    wait::until(
        "the restarted daemon to attach every registered tap",
        Duration::from_secs(60),
        || {
            let attached = attached_taps(daemon)?;
            let count = taps.iter().filter(|tap| attached.contains(tap)).count();
            Ok(if count == taps.len() {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{count} of {} taps attached", taps.len()))
            })
        },
    )
}

/// One request as in `mode`; the whole answer as it came.
async fn raw_answer(
    session: &mut crate::conn::Session,
    url_path: &str,
    mode: ConnMode,
) -> Result<Vec<u8>> {
    let request = http1::request(url_path, mode, &[]);
    let answer = session.request(&request, mode).await?;
    ensure!(answer.status == 200, "HTTP {}", answer.status);
    Ok(session.last_response().to_vec())
}

/// The responder's `--mode`.
fn mode_flag(mode: ConnMode) -> &'static str {
    match mode {
        ConnMode::KeepAlive => "keep-alive",
        ConnMode::Close => "close",
    }
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
