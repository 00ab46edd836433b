//! `serve` settings: command-line flags, then the `--config` TOML file, then
//! the built-in defaults. Every key is checked; an unknown one is an error
//! (a misspelt setting must not be silently ignored).
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use super::{DEFAULT_ADMIN_SOCKET, IdentityArgs, LogFormat, ServeArgs};
use crate::{
    backend::{
        identity::{
            Identity, IdentityFiles, IdentityKey,
            jwt::{self, DEFAULT_ISSUER, Issuer},
        },
        nova::config::{BackendConfig, BackendKind, NovaOptions, Protocol, SECRET_ENV},
    },
    datapath::{IdentityPlan, MetadataAddrs, TapAttach, server_link::ServerLinkPlan, server_netns},
    discovery::{DiscoverConfig, DiscoverKind, libvirt::DEFAULT_URI},
    ingress::{limits::ConnectionCaps, ratelimit::RateLimitConfig},
    state::StoreSync,
};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/metadata-redirector";
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/metadata-redirector";
const DEFAULT_SERVER_IFNAME: &str = "mdr-srv";
const DEFAULT_ENTRY_IFNAME: &str = "mdr-in";
pub const DEFAULT_SERVER_NETNS: &str = "metadata-redirector";
const DEFAULT_SERVER_PORT: u16 = 80;
const DEFAULT_DOMAIN: &str = "novalocal";

/// The `--config` file. All keys optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    state_dir: Option<PathBuf>,
    /// "normal" or "full" (parsed here, so that a bad value names the key).
    store_sync: Option<String>,
    admin_socket: Option<PathBuf>,
    bpffs: Option<PathBuf>,
    server_ifname: Option<String>,
    entry_ifname: Option<String>,
    server_netns: Option<String>,
    server_addr: Option<Ipv4Addr>,
    server_port: Option<u16>,
    /// "A.B.C.D/N"
    identity_net: Option<String>,
    /// The IPv4 address guests ask (169.254.169.254).
    metadata_addr: Option<Ipv4Addr>,
    /// The IPv6 addresses guests ask, at most two (fe80::a9fe:a9fe and
    /// fd00:ec2::254).
    metadata_addrs6: Option<Vec<Ipv6Addr>>,
    /// false: IPv6 is not served (its traffic passes untouched).
    ipv6: Option<bool>,
    domain: Option<String>,
    detach_on_exit: Option<bool>,
    /// "tcx" or "tc" (parsed here rather than by serde, so that a bad value
    /// names the key).
    tap_attach: Option<String>,
    syn_rate_per_port: Option<u32>,
    /// Requests per second one port may make on average...
    rate_limit_per_sec: Option<f64>,
    /// ...and in a burst.
    rate_limit_burst: Option<u32>,
    /// Open guest connections the whole host may hold...
    max_connections: Option<u32>,
    /// ...and one port.
    max_connections_per_port: Option<u32>,
    /// "libvirt"
    discover: Option<DiscoverKind>,
    libvirt_uri: Option<String>,
    /// "ADDR:PORT" (parsed here, so that a bad value names the key).
    metrics_listen: Option<String>,
    /// "text" or "json".
    log_format: Option<String>,
    // The nova backend (see backend::nova::config; names as neutron-metadata-agent's).
    backend: Option<BackendKind>,
    nova_metadata_host: Option<String>,
    nova_metadata_port: Option<u16>,
    nova_metadata_protocol: Option<Protocol>,
    nova_metadata_insecure: Option<bool>,
    nova_client_cert: Option<PathBuf>,
    nova_client_priv_key: Option<PathBuf>,
    auth_ca_cert: Option<PathBuf>,
    metadata_proxy_shared_secret_file: Option<PathBuf>,
    /// Seconds (an integer or a fraction).
    nova_metadata_timeout: Option<f64>,
    metadata_cache_expiration: Option<u64>,
    stale_if_error: Option<u64>,
    neutron_agent_socket: Option<PathBuf>,
    // The signed identity (both backends).
    identity_key: Option<PathBuf>,
    identity_cert: Option<PathBuf>,
    identity_issuer: Option<String>,
}

impl FileConfig {
    /// The nova options the file sets (moved out; the rest stays).
    fn take_nova_options(&mut self) -> NovaOptions {
        NovaOptions {
            backend: self.backend.take(),
            nova_metadata_host: self.nova_metadata_host.take(),
            nova_metadata_port: self.nova_metadata_port.take(),
            nova_metadata_protocol: self.nova_metadata_protocol.take(),
            nova_metadata_insecure: self.nova_metadata_insecure.take(),
            nova_client_cert: self.nova_client_cert.take(),
            nova_client_priv_key: self.nova_client_priv_key.take(),
            auth_ca_cert: self.auth_ca_cert.take(),
            metadata_proxy_shared_secret_file: self.metadata_proxy_shared_secret_file.take(),
            nova_metadata_timeout: self.nova_metadata_timeout.take(),
            metadata_cache_expiration: self.metadata_cache_expiration.take(),
            stale_if_error: self.stale_if_error.take(),
        }
    }
}

/// The identity key and issuer: flags, then the file's keys, then none.
/// The key is loaded (and checked against the certificate) here, so a bad
/// file stops `serve` before anything else starts.
pub fn resolve_identity(
    flags: &IdentityArgs,
    config: Option<&Path>,
) -> anyhow::Result<Option<Arc<Identity>>> {
    let file = match config {
        Some(path) => read_file(path)?,
        None => FileConfig::default(),
    };
    identity_from(flags, file)
}

fn identity_from(flags: &IdentityArgs, file: FileConfig) -> anyhow::Result<Option<Arc<Identity>>> {
    let files = IdentityFiles {
        key: flags.identity_key.clone().or(file.identity_key),
        cert: flags.identity_cert.clone().or(file.identity_cert),
    };
    let issuer = flags.identity_issuer.clone().or(file.identity_issuer);
    if issuer.as_deref().is_some_and(|name| name.trim().is_empty()) {
        bail!("--identity-issuer must not be empty");
    }
    let Some(key) = IdentityKey::load(&files)? else {
        if issuer.is_some() {
            bail!("--identity-issuer needs --identity-key and --identity-cert");
        }
        return Ok(None);
    };
    Ok(Some(Arc::new(Identity {
        key,
        issuer: Issuer {
            name: issuer.unwrap_or_else(|| DEFAULT_ISSUER.to_owned()),
            host: jwt::hostname(),
        },
    })))
}

/// Resolved settings for one daemon.
#[derive(Debug, Clone)]
pub struct Settings {
    pub state_dir: PathBuf,
    /// How far a committed store write is on disk (`--store-sync`).
    pub store_sync: StoreSync,
    pub admin_socket: PathBuf,
    pub bpffs: PathBuf,
    pub link: ServerLinkPlan,
    /// The network namespace the server lives in (`--server-netns`).
    pub server_netns: String,
    pub identity: IdentityPlan,
    /// The addresses guests ask, IPv6's empty when it is switched off.
    pub metadata: MetadataAddrs,
    pub server_port: u16,
    pub domain: String,
    pub detach_on_exit: bool,
    /// How the tap ingress program is attached (`--tap-attach`).
    pub tap_attach: TapAttach,
    /// New connections per second one port may open (enforced in the datapath).
    pub syn_rate_per_port: u32,
    pub rate_limit: RateLimitConfig,
    /// Open guest connections, for the host and per port.
    pub connection_caps: ConnectionCaps,
    /// Where guests' requests are answered (`--backend`).
    pub backend: BackendConfig,
    /// `--neutron-agent-socket`: serve neutron-metadata-agent's protocol too.
    pub neutron_agent_socket: Option<PathBuf>,
    /// `--metrics-listen`: where Prometheus scrapes (None: no listener).
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: LogFormat,
    /// The signed identity's key (`--identity-key`); None: its paths 404.
    pub signed_identity: Option<Arc<Identity>>,
    /// `--discover`: where ports come from besides `port add`.
    pub discover: Option<DiscoverConfig>,
}

impl Settings {
    pub fn resolve(args: ServeArgs, admin_socket: PathBuf) -> anyhow::Result<Self> {
        let mut file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let rate_limit = rate_limit(&file)?;
        let connection_caps = connection_caps(&file)?;
        // Flags win over the file; the secret's environment variable is
        // read here so backend::nova::config stays free of process state.
        let backend = args
            .nova
            .options()
            .or(file.take_nova_options())
            .resolve(std::env::var_os(SECRET_ENV))?;
        let neutron_agent_socket = args
            .nova
            .neutron_agent_socket
            .or(file.neutron_agent_socket.take());
        let signed_identity = identity_from(
            &args.identity,
            FileConfig {
                identity_key: file.identity_key.take(),
                identity_cert: file.identity_cert.take(),
                identity_issuer: file.identity_issuer.take(),
                ..FileConfig::default()
            },
        )?;
        let mut identity = IdentityPlan::default();
        if let Some(addr) = file.server_addr {
            identity.server_addr = addr;
        }
        if let Some(net) = &file.identity_net {
            (identity.net, identity.prefix_len) =
                parse_cidr(net).with_context(|| format!("identity_net: {net:?}"))?;
        }
        identity.validate().context("identity_net/server_addr")?;
        let metadata = metadata_addrs(args.no_ipv6, &file, &identity)?;
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
        let libvirt_uri = args.libvirt_uri.or(file.libvirt_uri.take());
        let discover = match (args.discover.or(file.discover), libvirt_uri) {
            (Some(DiscoverKind::Libvirt), uri) => {
                let uri = uri.unwrap_or_else(|| DEFAULT_URI.into());
                if uri.trim().is_empty() {
                    bail!("--libvirt-uri: must not be empty");
                }
                Some(DiscoverConfig::Libvirt { uri })
            }
            (None, Some(_)) => bail!("--libvirt-uri (libvirt_uri) needs --discover libvirt"),
            (None, None) => None,
        };
        let server_netns = args
            .server_netns
            .or(file.server_netns)
            .unwrap_or_else(|| DEFAULT_SERVER_NETNS.into());
        server_netns::check_name(&server_netns).context("--server-netns")?;
        let tap_attach = match (args.tap_attach, &file.tap_attach) {
            (Some(mode), _) => mode,
            (None, Some(text)) => text.parse().context("tap_attach")?,
            (None, None) => TapAttach::default(),
        };
        let store_sync = match (args.store_sync, &file.store_sync) {
            (Some(sync), _) => sync,
            (None, Some(text)) => text.parse().context("store_sync")?,
            (None, None) => StoreSync::default(),
        };
        let log_format = match (args.log_format, &file.log_format) {
            (Some(format), _) => format,
            (None, Some(text)) => text.parse().context("log_format")?,
            (None, None) => LogFormat::default(),
        };
        let metrics_listen = match (args.metrics_listen, &file.metrics_listen) {
            (Some(addr), _) => Some(addr),
            (None, Some(text)) => Some(text.parse::<SocketAddr>().with_context(|| {
                format!("metrics_listen: {text:?} is not ADDR:PORT (e.g. \"127.0.0.1:9640\")")
            })?),
            (None, None) => None,
        };
        if let Some(addr) = metrics_listen {
            check_metrics_listen(addr, &identity).context("--metrics-listen")?;
        }
        Ok(Self {
            state_dir: args
                .state_dir
                .or(file.state_dir)
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            store_sync,
            admin_socket,
            bpffs: args
                .bpffs
                .or(file.bpffs)
                .unwrap_or_else(|| DEFAULT_BPFFS.into()),
            link: ServerLinkPlan {
                server_ifname,
                entry_ifname,
                server_addr: identity.server_addr,
                identity_nets: identity.lanes(),
                next_hop: identity
                    .next_hop()
                    .context("the identity plan has no next hop")?,
            },
            server_netns,
            identity,
            metadata,
            server_port: file.server_port.unwrap_or(DEFAULT_SERVER_PORT),
            domain: file.domain.unwrap_or_else(|| DEFAULT_DOMAIN.into()),
            detach_on_exit: args.detach_on_exit || file.detach_on_exit.unwrap_or(false),
            tap_attach,
            rate_limit,
            connection_caps,
            syn_rate_per_port: match file.syn_rate_per_port {
                Some(0) => bail!("syn_rate_per_port: must be at least 1"),
                Some(rate) => rate,
                None => metadata_ebpf::DEFAULT_SYN_RATE_PER_PORT,
            },
            backend,
            neutron_agent_socket,
            metrics_listen,
            log_format,
            signed_identity,
            discover,
        })
    }
}

/// The metrics listener must be where the operator scrapes from and never
/// where guests reach: not every address at once (that includes the server
/// veth's), not the server's or an identity address, not the metadata
/// address itself.
fn check_metrics_listen(addr: SocketAddr, identity: &IdentityPlan) -> anyhow::Result<()> {
    let ip = addr.ip();
    if ip.is_unspecified() {
        bail!(
            "{addr} listens on every address, the server veth's included; name the loopback \
             (127.0.0.1) or a management address"
        );
    }
    if addr.port() == 0 {
        bail!("{addr}: give the port Prometheus will scrape (e.g. 9640)");
    }
    if let IpAddr::V4(v4) = ip {
        let guest_reachable = v4 == identity.server_addr
            || Some(v4) == identity.next_hop()
            || v4 == Ipv4Addr::new(169, 254, 169, 254)
            || identity.contains(v4);
        if guest_reachable {
            bail!(
                "{addr} is an address guests' requests reach (the metadata, server or identity \
                 addresses); name the loopback (127.0.0.1) or a management address"
            );
        }
    }
    Ok(())
}

/// The metadata addresses: the file's, else the defaults; IPv6's none when
/// `--no-ipv6` or `ipv6 = false` switches it off.
fn metadata_addrs(
    no_ipv6: bool,
    file: &FileConfig,
    identity: &IdentityPlan,
) -> anyhow::Result<MetadataAddrs> {
    let mut metadata = MetadataAddrs::default();
    if let Some(addr) = file.metadata_addr {
        metadata.ipv4 = addr;
    }
    if let Some(addrs) = &file.metadata_addrs6 {
        if addrs.is_empty() {
            bail!("metadata_addrs6: empty; to switch IPv6 off, set ipv6 = false");
        }
        metadata.ipv6 = addrs.clone();
    }
    if no_ipv6 || file.ipv6 == Some(false) {
        metadata.ipv6.clear();
    }
    metadata.validate()?;
    if metadata.ipv4 == identity.server_addr || identity.slot_of(metadata.ipv4).is_some() {
        bail!(
            "metadata_addr: {} is the server's or an identity address",
            metadata.ipv4
        );
    }
    Ok(metadata)
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

fn connection_caps(file: &FileConfig) -> anyhow::Result<ConnectionCaps> {
    let mut caps = ConnectionCaps::default();
    if let Some(total) = file.max_connections {
        if total == 0 {
            bail!("max_connections: must be at least 1");
        }
        caps.total = total;
    }
    if let Some(per_port) = file.max_connections_per_port {
        if per_port == 0 {
            bail!("max_connections_per_port: must be at least 1");
        }
        caps.per_port = per_port;
    }
    if caps.per_port > caps.total {
        bail!(
            "max_connections_per_port ({}) is larger than max_connections ({})",
            caps.per_port,
            caps.total
        );
    }
    Ok(caps)
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--config: reading {}", path.display()))?;
    let fail = |what: String| anyhow::anyhow!("--config {}: {what}", path.display());
    let deserializer = toml::Deserializer::parse(&text).map_err(|e| fail(e.message().into()))?;
    // serde_path_to_error names the key a bad value sits in: toml's own
    // message says only what was wrong ("invalid type: integer `1`, ...").
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        let message = e.into_inner().message().to_owned();
        fail(if key == "." {
            message
        } else {
            format!("{key}: {message}")
        })
    })
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
        assert_eq!(settings.server_netns, "metadata-redirector");
        assert_eq!(settings.server_port, 80);
    }

    #[test]
    fn server_netns_from_flag_file_and_bad_names_name_the_flag() {
        assert_eq!(
            with_file("server_netns = \"mdr-a\"\n")
                .unwrap()
                .server_netns,
            "mdr-a"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "server_netns = \"mdr-a\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            server_netns: Some("mdr-b".into()),
            ..Default::default()
        };
        let settings = Settings::resolve(args, DEFAULT_ADMIN_SOCKET.into()).unwrap();
        assert_eq!(settings.server_netns, "mdr-b", "the flag wins");
        for bad in ["\"\"", "\"a/b\"", "\"..\""] {
            let err = format!(
                "{:#}",
                with_file(&format!("server_netns = {bad}\n")).unwrap_err()
            );
            assert!(err.contains("--server-netns"), "{bad}: {err}");
            assert!(err.contains("/run/netns"), "{bad}: {err}");
        }
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
    fn nova_options_from_file_and_flags() {
        use crate::backend::nova::config::NovaConfig;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            format!(
                "backend = \"nova\"\nnova_metadata_host = \"nova.example\"\nnova_metadata_port = 8000\n\
                 nova_metadata_timeout = 3\nmetadata_cache_expiration = 0\n\
                 metadata_proxy_shared_secret_file = {secret:?}\nneutron_agent_socket = \"/run/mdr/metadata_proxy\"\n"
            ),
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            nova: crate::cli::NovaArgs {
                nova_metadata_port: Some(9000),
                nova_metadata_timeout: Some(0.5),
                ..Default::default()
            },
            ..Default::default()
        };
        let settings = Settings::resolve(args, DEFAULT_ADMIN_SOCKET.into()).unwrap();
        let BackendConfig::Nova(NovaConfig {
            host,
            port,
            timeout,
            cache_expiration,
            secret,
            ..
        }) = settings.backend
        else {
            panic!("expected the nova backend");
        };
        assert_eq!((host.as_str(), port), ("nova.example", 9000), "flags win");
        assert_eq!(timeout, std::time::Duration::from_millis(500));
        assert!(cache_expiration.is_zero());
        assert_eq!(&*secret.0, b"s3cret");
        assert_eq!(
            settings.neutron_agent_socket.as_deref(),
            Some(Path::new("/run/mdr/metadata_proxy"))
        );

        // The default stays local; a nova option misspelt (neutron's old
        // nova_metadata_ip) is refused like any unknown key.
        let settings =
            Settings::resolve(ServeArgs::default(), DEFAULT_ADMIN_SOCKET.into()).unwrap();
        assert!(matches!(settings.backend, BackendConfig::Local));
        let err = with_file("nova_metadata_ip = \"10.0.0.1\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `nova_metadata_ip`"), "{err}");
        let err = with_file("backend = \"neutron\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `neutron`"), "{err}");
    }

    #[test]
    fn stale_if_error_and_identity_keys_from_the_file() {
        use crate::backend::nova::config::NovaConfig;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let settings = with_file(&format!(
            "backend = \"nova\"\nnova_metadata_host = \"nova\"\n\
             metadata_proxy_shared_secret_file = {secret:?}\nstale_if_error = 30\n"
        ))
        .unwrap();
        let BackendConfig::Nova(NovaConfig { stale_if_error, .. }) = settings.backend else {
            panic!("expected the nova backend");
        };
        assert_eq!(stale_if_error, std::time::Duration::from_secs(30));
        assert!(settings.signed_identity.is_none(), "no key, no identity");

        let err = format!(
            "{:#}",
            with_file("identity_issuer = \"https://x\"\n").unwrap_err()
        );
        assert!(
            err.starts_with("--identity-issuer needs --identity-key"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            with_file("identity_key = \"/nonexistent/key.pem\"\n").unwrap_err()
        );
        assert_eq!(err, "--identity-key needs --identity-cert");
        let err = format!(
            "{:#}",
            with_file(
                "identity_key = \"/nonexistent/key.pem\"\nidentity_cert = \"/nonexistent/c.pem\"\n"
            )
            .unwrap_err()
        );
        assert!(
            err.starts_with("--identity-key /nonexistent/key.pem"),
            "{err}"
        );
    }

    #[test]
    fn tap_attach_from_flag_file_and_default() {
        let settings =
            Settings::resolve(ServeArgs::default(), DEFAULT_ADMIN_SOCKET.into()).unwrap();
        assert_eq!(settings.tap_attach, TapAttach::Tc, "the default");
        assert_eq!(
            with_file("tap_attach = \"tc\"\n").unwrap().tap_attach,
            TapAttach::Tc
        );
        assert_eq!(
            with_file("tap_attach = \"tcx\"\n").unwrap().tap_attach,
            TapAttach::Tcx
        );
        assert_eq!(
            with_file("tap_attach = \"tc-block\"\n").unwrap().tap_attach,
            TapAttach::TcBlock
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "tap_attach = \"tcx\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            tap_attach: Some(TapAttach::Tc),
            ..Default::default()
        };
        let settings = Settings::resolve(args, DEFAULT_ADMIN_SOCKET.into()).unwrap();
        assert_eq!(settings.tap_attach, TapAttach::Tc, "the flag wins");

        for bad in ["\"TC\"", "\"netlink\"", "\"\"", "1"] {
            let err = format!(
                "{:#}",
                with_file(&format!("tap_attach = {bad}\n")).unwrap_err()
            );
            assert!(err.contains("tap_attach"), "{bad}: {err}");
        }
    }

    #[test]
    fn store_sync_from_flag_file_and_default() {
        let settings =
            Settings::resolve(ServeArgs::default(), DEFAULT_ADMIN_SOCKET.into()).unwrap();
        assert_eq!(settings.store_sync, StoreSync::Normal, "the default");
        assert_eq!(
            with_file("store_sync = \"full\"\n").unwrap().store_sync,
            StoreSync::Full
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "store_sync = \"full\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            store_sync: Some(StoreSync::Normal),
            ..Default::default()
        };
        let settings = Settings::resolve(args, DEFAULT_ADMIN_SOCKET.into()).unwrap();
        assert_eq!(settings.store_sync, StoreSync::Normal, "the flag wins");
        for bad in ["\"FULL\"", "\"off\"", "2"] {
            let err = format!(
                "{:#}",
                with_file(&format!("store_sync = {bad}\n")).unwrap_err()
            );
            assert!(err.contains("store_sync"), "{bad}: {err}");
        }
        use clap::Parser as _;
        let err = crate::cli::Cli::try_parse_from([
            "metadata-redirector",
            "serve",
            "--store-sync",
            "off",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("--store-sync"), "{err}");
    }

    #[test]
    fn tap_attach_flag_is_parsed_and_bad_values_name_it() {
        use clap::Parser as _;
        let cli =
            crate::cli::Cli::try_parse_from(["metadata-redirector", "serve", "--tap-attach", "tc"])
                .unwrap();
        let crate::cli::Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        assert_eq!(args.tap_attach, Some(TapAttach::Tc));
        let cli = crate::cli::Cli::try_parse_from([
            "metadata-redirector",
            "serve",
            "--tap-attach",
            "tc-block",
        ])
        .unwrap();
        let crate::cli::Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        assert_eq!(args.tap_attach, Some(TapAttach::TcBlock));
        let err = crate::cli::Cli::try_parse_from([
            "metadata-redirector",
            "serve",
            "--tap-attach",
            "legacy",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("--tap-attach"), "{err}");
        assert!(err.contains("tcx") && err.contains("tc-block"), "{err}");
    }

    /// The commented config file `cargo xtask install` puts in /etc.
    const CONFIG_TEMPLATE: &str = include_str!("../../../dist/config.toml");
    const UNSET_MARK: &str = "# unset by default";

    /// The template's `# key = value` lines: (key, line uncommented, whether
    /// it shows the default rather than an example).
    fn template_entries() -> Vec<(String, String, bool)> {
        CONFIG_TEMPLATE
            .lines()
            .filter_map(|line| {
                let setting = line.strip_prefix("# ")?;
                let (key, _) = setting.split_once(" = ")?;
                key.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    .then(|| {
                        (
                            key.to_owned(),
                            setting.to_owned(),
                            !setting.contains(UNSET_MARK),
                        )
                    })
            })
            .collect()
    }

    /// Every key the file format accepts, from serde's own refusal of an
    /// unknown one ("expected one of `a`, `b`, ...").
    fn accepted_keys() -> Vec<String> {
        let err = toml::from_str::<FileConfig>("no_such_key = 1")
            .unwrap_err()
            .to_string();
        let list = err
            .split("expected one of")
            .nth(1)
            .expect("serde lists the fields");
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_config_template_lists_every_key_once_with_its_default() {
        let entries = template_entries();
        let mut listed: Vec<String> = entries.iter().map(|(key, _, _)| key.clone()).collect();
        listed.sort();
        let mut accepted = accepted_keys();
        accepted.sort();
        assert!(accepted.len() > 20, "{accepted:?}");
        assert_eq!(
            listed, accepted,
            "dist/config.toml must list every key exactly once"
        );

        // Uncommented, the defaults resolve to exactly the built-in defaults...
        let defaults: String = entries
            .iter()
            .filter(|(_, _, is_default)| *is_default)
            .map(|(_, line, _)| format!("{line}\n"))
            .collect();
        let from_template = format!("{:?}", with_file(&defaults).unwrap());
        let built_in = format!(
            "{:?}",
            Settings::resolve(ServeArgs::default(), DEFAULT_ADMIN_SOCKET.into()).unwrap()
        );
        assert_eq!(from_template, built_in);
        // ...and every example is a value the key takes.
        let everything: String = entries
            .iter()
            .map(|(_, line, _)| format!("{line}\n"))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("all.toml");
        std::fs::write(&path, everything).unwrap();
        read_file(&path).unwrap();
    }

    /// docs/operations.md is where an operator looks a setting up: it must
    /// name every config key and every flag of `serve`.
    #[test]
    fn the_operations_guide_names_every_key_and_flag() {
        use clap::CommandFactory as _;
        let guide = include_str!("../../../docs/operations.md");
        for key in accepted_keys() {
            assert!(
                guide.contains(&format!("`{key}`")),
                "docs/operations.md lacks `{key}`"
            );
        }
        let cli = crate::cli::Cli::command();
        let serve = cli.find_subcommand("serve").expect("serve exists");
        for arg in serve.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long == "help" || long == "version" {
                continue;
            }
            assert!(
                guide.contains(&format!("`--{long}")),
                "docs/operations.md lacks --{long}"
            );
        }
    }

    #[test]
    fn metrics_listen_and_log_format_from_flag_and_file() {
        let settings =
            with_file("metrics_listen = \"127.0.0.1:9640\"\nlog_format = \"json\"\n").unwrap();
        assert_eq!(
            settings.metrics_listen,
            Some("127.0.0.1:9640".parse().unwrap())
        );
        assert_eq!(settings.log_format, LogFormat::Json);
        for (bad, expected) in [
            ("0.0.0.0:9640", "every address"),
            ("[::]:9640", "every address"),
            ("240.0.0.1:9640", "guests' requests reach"),
            ("240.1.3.4:9640", "guests' requests reach"),
            ("169.254.169.254:9640", "guests' requests reach"),
            ("127.0.0.1:0", "give the port"),
        ] {
            let err = format!(
                "{:#}",
                with_file(&format!("metrics_listen = \"{bad}\"\n")).unwrap_err()
            );
            assert!(
                err.contains("--metrics-listen") && err.contains(expected),
                "{bad}: {err}"
            );
        }
        let err = format!(
            "{:#}",
            with_file("metrics_listen = \"localhost\"\n").unwrap_err()
        );
        assert!(
            err.contains("metrics_listen: \"localhost\" is not ADDR:PORT"),
            "{err}"
        );
        let err = format!("{:#}", with_file("log_format = \"xml\"\n").unwrap_err());
        assert!(
            err.contains("log_format") && err.contains("text or json"),
            "{err}"
        );
    }

    #[test]
    fn metadata_addresses_and_the_ipv6_switch() {
        let settings =
            Settings::resolve(ServeArgs::default(), DEFAULT_ADMIN_SOCKET.into()).unwrap();
        assert_eq!(settings.metadata, MetadataAddrs::default());
        assert_eq!(settings.metadata.ipv6.len(), 2, "IPv6 is on by default");
        assert_eq!(settings.link.identity_nets.len(), 3, "a route per lane");

        let settings = with_file(
            "metadata_addr = \"169.254.169.253\"\nmetadata_addrs6 = [\"fd00:ec2::254\"]\n",
        )
        .unwrap();
        assert_eq!(settings.metadata.ipv4, Ipv4Addr::new(169, 254, 169, 253));
        assert_eq!(
            settings.metadata.ipv6,
            ["fd00:ec2::254".parse::<Ipv6Addr>().unwrap()]
        );
        assert!(
            with_file("ipv6 = false\n")
                .unwrap()
                .metadata
                .ipv6
                .is_empty()
        );
        let args = ServeArgs {
            no_ipv6: true,
            ..Default::default()
        };
        let settings = Settings::resolve(args, DEFAULT_ADMIN_SOCKET.into()).unwrap();
        assert!(settings.metadata.ipv6.is_empty(), "--no-ipv6");

        for (text, key) in [
            ("metadata_addrs6 = []\n", "ipv6 = false"),
            ("metadata_addrs6 = [\"ff02::1\"]\n", "metadata_addrs6"),
            (
                "metadata_addrs6 = [\"not an address\"]\n",
                "metadata_addrs6",
            ),
            ("metadata_addr = \"fe80::1\"\n", "metadata_addr"),
            ("metadata_addr = \"240.1.0.9\"\n", "metadata_addr"),
            ("ipv6 = \"no\"\n", "ipv6"),
        ] {
            let err = format!("{:#}", with_file(text).unwrap_err());
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn discover_from_flag_file_and_default() {
        use clap::Parser as _;
        let settings =
            Settings::resolve(ServeArgs::default(), DEFAULT_ADMIN_SOCKET.into()).unwrap();
        assert_eq!(settings.discover, None, "no discovery unless asked");
        assert_eq!(
            with_file("discover = \"libvirt\"\n").unwrap().discover,
            Some(DiscoverConfig::Libvirt {
                uri: "qemu:///system".into()
            })
        );
        let settings =
            with_file("discover = \"libvirt\"\nlibvirt_uri = \"qemu+ssh://h/system\"\n").unwrap();
        assert_eq!(
            settings.discover,
            Some(DiscoverConfig::Libvirt {
                uri: "qemu+ssh://h/system".into()
            })
        );
        let cli = crate::cli::Cli::try_parse_from([
            "metadata-redirector",
            "serve",
            "--discover",
            "libvirt",
            "--libvirt-uri",
            "test:///default",
        ])
        .unwrap();
        let crate::cli::Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        let settings = Settings::resolve(*args, DEFAULT_ADMIN_SOCKET.into()).unwrap();
        assert_eq!(
            settings.discover,
            Some(DiscoverConfig::Libvirt {
                uri: "test:///default".into()
            })
        );
        let err = format!(
            "{:#}",
            with_file("libvirt_uri = \"qemu:///system\"\n").unwrap_err()
        );
        assert!(err.contains("needs --discover libvirt"), "{err}");
        let err = format!("{:#}", with_file("discover = \"xen\"\n").unwrap_err());
        assert!(
            err.contains("discover") && err.contains("unknown variant"),
            "{err}"
        );
        let err = crate::cli::Cli::try_parse_from([
            "metadata-redirector",
            "serve",
            "--discover",
            "virsh",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--discover") && err.contains("libvirt"),
            "{err}"
        );
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
