//! The command line: `serve` runs the daemon, everything else is a client of
//! its admin socket. These spellings are a contract other tools drive.
//!
//! The clap types stay here, and so do their conversions into what the
//! other layers take (`PortAddRequest`, `NovaOptions`); `settings` resolves
//! `serve`'s flags, its `--config` file and the defaults into `Settings`.
//!
//! The top layer with `serve` and `admin`: nothing below depends on it.
pub mod identity;
pub mod settings;

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    backend::nova::config::{BackendKind, NovaOptions, Protocol},
    datapath::TapAttach,
    discovery::DiscoverKind,
    state::{PortAddRequest, StoreSync},
};

pub const DEFAULT_ADMIN_SOCKET: &str = "/run/metadata-redirector/admin.sock";

/// Serves instance metadata (OpenStack and EC2 formats) to the guests of this
/// hypervisor: an eBPF program on each registered tap catches requests to
/// 169.254.169.254 (and over IPv6 to fe80::a9fe:a9fe and fd00:ec2::254) and
/// hands them to one host-wide server, which knows the instance from the tap
/// the request came in on.
#[derive(Debug, Parser)]
#[command(name = "metadata-redirector", version, propagate_version = true)]
pub struct Cli {
    /// The daemon's admin socket (root only).
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_ADMIN_SOCKET)]
    pub admin_socket: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: load the datapath, watch taps, serve guests and the admin API.
    // Boxed: serve has many options, the other commands few.
    Serve(Box<ServeArgs>),
    /// Check what `serve` needs from this host: one line per item, ok or the fix.
    ///
    /// The items: kernel version, BTF, TCX, bpffs, capabilities, the routes
    /// of the identity range and server address, rp_filter and the firewall
    /// where the server end lives, the admin socket's and the state
    /// directories. Takes serve's flags and --config, to check what that
    /// daemon would use. Exits 1 when something needed is missing.
    Check(Box<ServeArgs>),
    /// Create, replace, show, list or delete instance documents.
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// Register taps (ports) and bind them to instances (or see those `serve --discover` found).
    #[command(subcommand)]
    Port(PortCommand),
    /// Show whether the daemon answers, and what it serves. Exits 0 only when it answers.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Also list every attached tap and every failing one (one line
        /// each; by default only their counts).
        #[arg(long)]
        taps: bool,
    },
    /// The signed identity: what verifiers of guests' tokens need (runs
    /// without the daemon).
    #[command(subcommand)]
    Identity(IdentityCommand),
}

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Print the JWK Set (JSON) that verifies `/openstack/identity` tokens:
    /// the public key of --identity-cert, with the `kid` the tokens carry.
    Jwks(IdentityJwksArgs),
}

#[derive(Debug, Clone, Default, Args)]
pub struct IdentityJwksArgs {
    /// The serve configuration file to take identity_key and identity_cert
    /// from (flags win).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub identity: IdentityArgs,
}

/// The signed identity's key (both backends).
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Signed identity")]
pub struct IdentityArgs {
    /// PEM private key (RSA of at least 2048 bits, or EC P-256) that signs
    /// the instance identity document (`signature`, `pkcs7`, `rsa2048`) and
    /// `/openstack/identity` tokens. Without it those paths are 404.
    #[arg(long, value_name = "FILE")]
    pub identity_key: Option<PathBuf>,
    /// PEM certificate of --identity-key: what verifiers check against
    /// (`openssl smime -verify -certfile`, and the JWKS).
    #[arg(long, value_name = "FILE")]
    pub identity_cert: Option<PathBuf>,
    /// The tokens' `iss` claim [default: metadata-redirector].
    #[arg(long, value_name = "NAME")]
    pub identity_issuer: Option<String>,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> anyhow::Result<Self> {
        <Self as ValueEnum>::from_str(text, false)
            .map_err(|_| anyhow::anyhow!("{text:?} is not a log format (text or json)"))
    }
}

#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Where the SQLite store (instances, ports, passwords, token key) lives
    /// [default: /var/lib/metadata-redirector].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// How far a store write (`port add`, `instance put`, ...) is on disk
    /// when it returns: `normal`, it survives the daemon's crash or SIGKILL,
    /// but an OS crash or power loss may roll back the last few (never
    /// corrupt the store), or `full`, an fsync per write (1-10 ms each),
    /// which survives power loss too [default: normal].
    #[arg(long, value_enum, value_name = "MODE")]
    pub store_sync: Option<StoreSync>,
    /// bpffs directory for the pinned programs, links and maps
    /// [default: /sys/fs/bpf/metadata-redirector].
    #[arg(long, value_name = "DIR")]
    pub bpffs: Option<PathBuf>,
    /// TOML file with any of the settings below (command-line flags win).
    /// Keys: state_dir, store_sync, admin_socket, bpffs, server_ifname, entry_ifname,
    /// server_netns, server_addr, server_port, identity_net, metadata_addr,
    /// metadata_addrs6, ipv6, domain, detach_on_exit, tap_attach,
    /// syn_rate_per_port, rate_limit_per_sec, rate_limit_burst,
    /// max_connections (open guest connections of the whole host, default
    /// 8192), max_connections_per_port (default 64), discover, libvirt_uri,
    /// metrics_listen, log_format, and the nova backend's: backend,
    /// nova_metadata_host, nova_metadata_port,
    /// nova_metadata_protocol, nova_metadata_insecure, nova_client_cert,
    /// nova_client_priv_key, auth_ca_cert, metadata_proxy_shared_secret_file,
    /// nova_metadata_timeout, metadata_cache_expiration, stale_if_error,
    /// neutron_agent_socket; the signed identity's: identity_key,
    /// identity_cert, identity_issuer. The installed
    /// /etc/metadata-redirector/config.toml lists each with its default.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Name of the veth end the server listens behind, inside the server's
    /// namespace [default: mdr-srv].
    #[arg(long, value_name = "NAME")]
    pub server_ifname: Option<String>,
    /// Name of the veth end caught requests are sent into, in the daemon's
    /// own namespace; it has no address [default: mdr-in].
    #[arg(long, value_name = "NAME")]
    pub entry_ifname: Option<String>,
    /// The network namespace the server lives in, so that no bridge or
    /// other interface of the host can reach it; kept as /run/netns/NAME
    /// (like `ip netns add`), created if missing and reused by the next
    /// daemon [default: metadata-redirector].
    #[arg(long, value_name = "NAME")]
    pub server_netns: Option<String>,
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// On SIGTERM/SIGINT, also detach from every tap and remove the pinned
    /// maps, the veth pair and the server's namespace. Without it the datapath stays in place, so a
    /// restarted daemon resumes with every tap and open flow intact.
    #[arg(long)]
    pub detach_on_exit: bool,
    /// How the program goes on each tap: `tc`, a cls_bpf filter at pref 1
    /// on an ingress qdisc (added, or an ingress or clsact one already
    /// there), about 0.1 ms per tap, growing with the taps on the host;
    /// `tc-block`, every tap's ingress qdisc bound to one shared tc block
    /// (28004) holding that filter once: the same cost at 10,000 taps as at
    /// 100, so pick it for thousands of taps per host, but other tools can
    /// then no longer add tc ingress filters to these taps by device (the
    /// kernel refuses them on a shared block; neutron's QoS policing does
    /// that); or `tcx`, a pinned TCX link (coexists with any qdisc, but the
    /// kernel waits an RCU grace period per tap, 10-20 ms, holding the RTNL
    /// lock) [default: tc].
    #[arg(long, value_enum, value_name = "MODE")]
    pub tap_attach: Option<TapAttach>,
    /// Do not serve IPv6 (`ipv6 = false` in the config file): the guests'
    /// IPv6 traffic, to fe80::a9fe:a9fe and fd00:ec2::254 included, passes
    /// untouched. By default both are served, like 169.254.169.254, each
    /// guest identified by its tap.
    #[arg(long)]
    pub no_ipv6: bool,
    /// Learn the ports from the hypervisor, with no `port add`: `libvirt`
    /// serves every tap of every running libvirt domain, bound to the
    /// domain's UUID, with nova's project, port ids and fixed IPs from the
    /// domain's metadata (or, for the local backend, the instance document
    /// the domain carries), and follows starts, stops, hot-plugs and
    /// restarts. Manual ports stay as they are [default: none].
    #[arg(long, value_enum, value_name = "SOURCE")]
    pub discover: Option<DiscoverKind>,
    /// The libvirt that `--discover libvirt` watches [default: qemu:///system].
    #[arg(long, value_name = "URI")]
    pub libvirt_uri: Option<String>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics. Off unless
    /// given. Name a loopback or management address: an unspecified one
    /// (0.0.0.0, ::) or one guests reach (the server's and identity
    /// addresses, 169.254.169.254) is refused.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,
    /// How log lines are written to stderr: `text` for people, `json` (one
    /// object per line) for log shippers [default: text].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    #[command(flatten)]
    pub nova: NovaArgs,
}

/// The OpenStack options, named as neutron-metadata-agent's.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "OpenStack (nova backend, neutron agent socket)")]
pub struct NovaArgs {
    /// Answer guests from the local store, or forward to nova-api-metadata
    /// [default: local].
    #[arg(long, value_enum, value_name = "BACKEND")]
    pub backend: Option<BackendKind>,
    /// nova-api-metadata's host name or IP address (required with --backend nova).
    #[arg(long, value_name = "HOST")]
    pub nova_metadata_host: Option<String>,
    /// nova-api-metadata's port [default: 8775].
    #[arg(long, value_name = "PORT")]
    pub nova_metadata_port: Option<u16>,
    /// How to reach nova-api-metadata [default: http].
    #[arg(long, value_enum, value_name = "PROTOCOL")]
    pub nova_metadata_protocol: Option<Protocol>,
    /// https: do not verify nova's certificate.
    #[arg(long)]
    pub nova_metadata_insecure: bool,
    /// https: client certificate (PEM) to present to nova.
    #[arg(long, value_name = "FILE")]
    pub nova_client_cert: Option<PathBuf>,
    /// https: private key (PEM) of --nova-client-cert.
    #[arg(long, value_name = "FILE")]
    pub nova_client_priv_key: Option<PathBuf>,
    /// https: the CA certificates (PEM) to trust for nova [default: the system's].
    #[arg(long, value_name = "FILE")]
    pub auth_ca_cert: Option<PathBuf>,
    /// File holding nova's metadata_proxy_shared_secret (one trailing newline
    /// is ignored). Without it, the METADATA_PROXY_SHARED_SECRET environment
    /// variable. Never given on the command line itself.
    #[arg(long, value_name = "FILE")]
    pub metadata_proxy_shared_secret_file: Option<PathBuf>,
    /// Seconds to wait for nova's whole answer before telling the guest 503
    /// [default: 10].
    #[arg(long, value_name = "SECONDS")]
    pub nova_metadata_timeout: Option<f64>,
    /// Seconds a GET answer from nova is reused; 0 disables the cache
    /// [default: 15]. Also how often paths that guests watch are asked again.
    #[arg(long, value_name = "SECONDS")]
    pub metadata_cache_expiration: Option<u64>,
    /// While nova is unreachable, too slow or answers 5xx, answer a GET from
    /// the last good answer for that instance and path if it is younger than
    /// this many seconds (with an `Age` header); 0 turns it off [default: 0].
    #[arg(long, value_name = "SECONDS")]
    pub stale_if_error: Option<u64>,
    /// Also serve neutron-metadata-agent's protocol on this unix socket, for
    /// haproxy proxies in router or DHCP namespaces (either backend).
    #[arg(long, value_name = "PATH")]
    pub neutron_agent_socket: Option<PathBuf>,
}

impl NovaArgs {
    /// The nova options given on the command line.
    pub fn options(&self) -> NovaOptions {
        NovaOptions {
            backend: self.backend,
            nova_metadata_host: self.nova_metadata_host.clone(),
            nova_metadata_port: self.nova_metadata_port,
            nova_metadata_protocol: self.nova_metadata_protocol,
            nova_metadata_insecure: self.nova_metadata_insecure.then_some(true),
            nova_client_cert: self.nova_client_cert.clone(),
            nova_client_priv_key: self.nova_client_priv_key.clone(),
            auth_ca_cert: self.auth_ca_cert.clone(),
            metadata_proxy_shared_secret_file: self.metadata_proxy_shared_secret_file.clone(),
            nova_metadata_timeout: self.nova_metadata_timeout,
            metadata_cache_expiration: self.metadata_cache_expiration,
            stale_if_error: self.stale_if_error,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum InstanceCommand {
    /// Create or replace an instance from a JSON document (FILE, or - for stdin).
    Put {
        #[arg(value_name = "FILE|-")]
        file: PathBuf,
    },
    /// Print one instance document.
    Get { uuid: String },
    /// List instances.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete an instance; its guests' requests answer 404 from then on.
    Del { uuid: String },
}

#[derive(Debug, Subcommand)]
pub enum PortCommand {
    /// Register a tap for an instance. The tap may not exist yet; it is attached when it appears.
    Add(PortAddArgs),
    /// Unregister a manual port's tap and detach the datapath from it.
    Del {
        #[arg(long, value_name = "TAP")]
        ifname: String,
    },
    /// List registered ports, with their source (manual, or the libvirt domain).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one port and where the datapath is with its tap (attached,
    /// no tap yet, pending, failing).
    Show {
        #[arg(value_name = "TAP")]
        ifname: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Args)]
pub struct PortAddArgs {
    /// The tap's interface name (at most 15 bytes).
    #[arg(long, value_name = "TAP")]
    pub ifname: String,
    /// The instance this port belongs to (must exist).
    #[arg(long, value_name = "UUID")]
    pub instance: String,
    /// The Neutron port ID.
    #[arg(long, value_name = "UUID")]
    pub port_id: Option<String>,
    /// The guest's MAC address on this port.
    #[arg(long, value_name = "MAC")]
    pub mac: Option<String>,
    /// A fixed IP of the port (repeatable).
    #[arg(long = "ip", value_name = "ADDR")]
    pub ips: Vec<String>,
    /// The Neutron network the port is on.
    #[arg(long, value_name = "UUID")]
    pub network_id: Option<String>,
    /// The project (tenant) owning the port; defaults to the instance's project_id.
    #[arg(long, value_name = "ID")]
    pub project_id: Option<String>,
    /// Return only once the tap is attached (or absent, or failing), at
    /// most SECONDS (10 without a value); fails unless attached or absent.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "10")]
    pub wait: Option<f64>,
}

impl From<PortAddArgs> for PortAddRequest {
    fn from(args: PortAddArgs) -> Self {
        Self {
            ifname: args.ifname,
            instance: args.instance,
            port_id: args.port_id,
            mac: args.mac,
            ips: args.ips,
            network_id: args.network_id,
            project_id: args.project_id,
        }
    }
}
