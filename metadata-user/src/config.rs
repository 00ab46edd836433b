//! `serve` settings: command-line flags, then the `--config` TOML file, then
//! the built-in defaults. Every key is checked; an unknown one is an error
//! (a misspelt setting must not be silently ignored).
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::{
    cli::{DEFAULT_ADMIN_SOCKET, ServeArgs},
    datapath::{IdentityPlan, netdev::ServerLinkPlan},
    metadata::ratelimit::RateLimitConfig,
};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/metadata-redirector";
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/metadata-redirector";
const DEFAULT_SERVER_IFNAME: &str = "mdr-srv";
const DEFAULT_ENTRY_IFNAME: &str = "mdr-in";
const DEFAULT_SERVER_PORT: u16 = 80;
const DEFAULT_DOMAIN: &str = "novalocal";

/// The `--config` file. All keys optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    state_dir: Option<PathBuf>,
    admin_socket: Option<PathBuf>,
    bpffs: Option<PathBuf>,
    server_ifname: Option<String>,
    entry_ifname: Option<String>,
    server_addr: Option<Ipv4Addr>,
    server_port: Option<u16>,
    /// "A.B.C.D/N"
    identity_net: Option<String>,
    domain: Option<String>,
    detach_on_exit: Option<bool>,
    syn_rate_per_port: Option<u32>,
    /// Requests per second one port may make on average...
    rate_limit_per_sec: Option<f64>,
    /// ...and in a burst.
    rate_limit_burst: Option<u32>,
}

/// Resolved settings for one daemon.
#[derive(Debug, Clone)]
pub struct Settings {
    pub state_dir: PathBuf,
    pub admin_socket: PathBuf,
    pub bpffs: PathBuf,
    pub link: ServerLinkPlan,
    pub identity: IdentityPlan,
    pub server_port: u16,
    pub domain: String,
    pub detach_on_exit: bool,
    /// New connections per second one port may open (enforced in the datapath).
    pub syn_rate_per_port: u32,
    pub rate_limit: RateLimitConfig,
}

impl Settings {
    pub fn resolve(args: ServeArgs, admin_socket: PathBuf) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let rate_limit = rate_limit(&file)?;
        let mut identity = IdentityPlan::default();
        if let Some(addr) = file.server_addr {
            identity.server_addr = addr;
        }
        if let Some(net) = &file.identity_net {
            (identity.net, identity.prefix_len) =
                parse_cidr(net).with_context(|| format!("identity_net: {net:?}"))?;
        }
        identity.validate().context("identity_net/server_addr")?;
        let admin_socket = if admin_socket == Path::new(DEFAULT_ADMIN_SOCKET) {
            file.admin_socket.unwrap_or(admin_socket)
        } else {
            admin_socket
        };
        let server_ifname = args
            .server_ifname
            .or(file.server_ifname)
            .unwrap_or_else(|| DEFAULT_SERVER_IFNAME.into());
        let entry_ifname = args
            .entry_ifname
            .or(file.entry_ifname)
            .unwrap_or_else(|| DEFAULT_ENTRY_IFNAME.into());
        for (flag, name) in [
            ("--server-ifname", &server_ifname),
            ("--entry-ifname", &entry_ifname),
        ] {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', ':', '\0']) {
                bail!(
                    "{flag}: {name:?} is not a valid interface name (1-15 bytes, no '/', ':' or spaces)"
                );
            }
        }
        if server_ifname == entry_ifname {
            bail!("--server-ifname and --entry-ifname must differ");
        }
        Ok(Self {
            state_dir: args
                .state_dir
                .or(file.state_dir)
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            admin_socket,
            bpffs: args
                .bpffs
                .or(file.bpffs)
                .unwrap_or_else(|| DEFAULT_BPFFS.into()),
            link: ServerLinkPlan {
                server_ifname,
                entry_ifname,
                server_addr: identity.server_addr,
                identity_net: (identity.net, identity.prefix_len),
            },
            identity,
            server_port: file.server_port.unwrap_or(DEFAULT_SERVER_PORT),
            domain: file.domain.unwrap_or_else(|| DEFAULT_DOMAIN.into()),
            detach_on_exit: args.detach_on_exit || file.detach_on_exit.unwrap_or(false),
            rate_limit,
            syn_rate_per_port: match file.syn_rate_per_port {
                Some(0) => bail!("syn_rate_per_port: must be at least 1"),
                Some(rate) => rate,
                None => metadata_ebpf::DEFAULT_SYN_RATE_PER_PORT,
            },
        })
    }
}

fn rate_limit(file: &FileConfig) -> anyhow::Result<RateLimitConfig> {
    let mut config = RateLimitConfig::default();
    if let Some(rate) = file.rate_limit_per_sec {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("rate_limit_per_sec: must be a positive number, got {rate}");
        }
        config.rate_per_sec = rate;
    }
    if let Some(burst) = file.rate_limit_burst {
        if burst == 0 {
            bail!("rate_limit_burst: must be at least 1");
        }
        config.burst = burst;
    }
    Ok(config)
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--config: reading {}", path.display()))?;
    toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("--config {}: {}", path.display(), e.message()))
}

fn parse_cidr(text: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
    let (addr, len) = text.split_once('/').context("expected A.B.C.D/N")?;
    Ok((addr.parse()?, len.parse()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_file(text: &str) -> anyhow::Result<Settings> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        Settings::resolve(args, DEFAULT_ADMIN_SOCKET.into())
    }

    #[test]
    fn defaults_apply() {
        let settings =
            Settings::resolve(ServeArgs::default(), DEFAULT_ADMIN_SOCKET.into()).unwrap();
        assert_eq!(settings.bpffs, Path::new(DEFAULT_BPFFS));
        assert_eq!(settings.link.server_ifname, "mdr-srv");
        assert_eq!(settings.server_port, 80);
    }

    #[test]
    fn file_values_and_flag_precedence() {
        let settings =
            with_file("bpffs = \"/sys/fs/bpf/x\"\nidentity_net = \"240.2.0.0/16\"\n").unwrap();
        assert_eq!(settings.bpffs, Path::new("/sys/fs/bpf/x"));
        assert_eq!(settings.identity.net, Ipv4Addr::new(240, 2, 0, 0));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "bpffs = \"/sys/fs/bpf/x\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            bpffs: Some("/sys/fs/bpf/y".into()),
            ..Default::default()
        };
        let settings = Settings::resolve(args, DEFAULT_ADMIN_SOCKET.into()).unwrap();
        assert_eq!(settings.bpffs, Path::new("/sys/fs/bpf/y"));
    }

    #[test]
    fn unknown_and_bad_keys_are_named() {
        let err = with_file("bpfs = \"/x\"\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `bpfs`"), "{err}");
        let err = format!(
            "{:#}",
            with_file("identity_net = \"240.1.0.0\"\n").unwrap_err()
        );
        assert!(err.contains("identity_net"), "{err}");
        let err = format!(
            "{:#}",
            with_file("server_ifname = \"much-too-long-name\"\n").unwrap_err()
        );
        assert!(err.contains("--server-ifname"), "{err}");
    }
}
