//! The command line: `serve` runs the daemon, everything else is a client of
//! its admin socket. These spellings are a contract other tools drive.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub const DEFAULT_ADMIN_SOCKET: &str = "/run/metadata-redirector/admin.sock";

/// Serves instance metadata (OpenStack and EC2 formats) to the guests of this
/// hypervisor: an eBPF program on each registered tap catches requests to
/// 169.254.169.254 and hands them to one host-wide server, which knows the
/// instance from the tap the request came in on.
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
    Serve(ServeArgs),
    /// Create, replace, show, list or delete instance documents.
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// Register taps (ports) and bind them to instances.
    #[command(subcommand)]
    Port(PortCommand),
    /// Show whether the daemon answers, and what it serves. Exits 0 only when it answers.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Where the SQLite store (instances, ports, passwords, token key) lives
    /// [default: /var/lib/metadata-redirector].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// bpffs directory for the pinned programs, links and maps
    /// [default: /sys/fs/bpf/metadata-redirector].
    #[arg(long, value_name = "DIR")]
    pub bpffs: Option<PathBuf>,
    /// TOML file with any of the settings below (command-line flags win).
    /// Keys: state_dir, admin_socket, bpffs, server_ifname, entry_ifname,
    /// server_addr, server_port, identity_net, domain, detach_on_exit,
    /// syn_rate_per_port, rate_limit_per_sec, rate_limit_burst.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Name of the veth end the server listens behind [default: mdr-srv].
    #[arg(long, value_name = "NAME")]
    pub server_ifname: Option<String>,
    /// Name of the veth end caught requests are sent into [default: mdr-in].
    #[arg(long, value_name = "NAME")]
    pub entry_ifname: Option<String>,
    /// On SIGTERM/SIGINT, also detach from every tap and remove the pinned
    /// maps and the veth pair. Without it the datapath stays in place, so a
    /// restarted daemon resumes with every tap and open flow intact.
    #[arg(long)]
    pub detach_on_exit: bool,
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
    /// Unregister a tap and detach the datapath from it.
    Del {
        #[arg(long, value_name = "TAP")]
        ifname: String,
    },
    /// List registered ports.
    List {
        /// Print JSON instead of a table.
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
}
