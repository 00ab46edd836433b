//! A tenant network: a bridge in the host namespace and a router namespace
//! on it, like a Neutron network with its router port.
//!
//! Several tenant networks may use the same subnet and gateway address: they
//! only meet in the host namespace as separate bridges.
use std::net::Ipv4Addr;
use std::process::Stdio;

use anyhow::{Context, Result};

use crate::host::Host;
use crate::listener::Listener;
use crate::netns::Netns;
use crate::tempdir::TempDir;
use crate::{METADATA_ADDR, names};

/// What every page of a decoy listener contains.
pub const DECOY_MARK: &str = "DECOY";

pub struct TenantNet {
    host: Host,
    bridge: String,
    prefix_len: u8,
    // Dropped after `drop` removed the bridge.
    router: Option<Router>,
}

/// The router namespace: `eth0` on the bridge with the gateway address.
pub struct Router {
    gateway: Ipv4Addr,
    // Dropped before the namespace, so nothing keeps it alive.
    decoy: Option<Decoy>,
    ns: Netns,
}

impl TenantNet {
    /// A bridge and a router namespace whose `eth0` has `gateway/prefix_len`.
    pub fn new(host: &Host, gateway: Ipv4Addr, prefix_len: u8) -> Result<Self> {
        let mut net = Self::without_router(host, prefix_len)?;
        let ns = Netns::new("router")?;
        let uplink = names::ifname("rt");
        net.host.add_veth_to(&uplink, &ns)?;
        net.host
            .ip(&["link", "set", &uplink, "master", &net.bridge, "up"])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("{gateway}/{prefix_len}"),
            "dev",
            "eth0",
        ])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        net.router = Some(Router {
            gateway,
            decoy: None,
            ns,
        });
        Ok(net)
    }

    /// Only a bridge: guests on it have no router anywhere.
    pub fn without_router(host: &Host, prefix_len: u8) -> Result<Self> {
        let bridge = names::ifname("br");
        host.ip(&["link", "add", &bridge, "type", "bridge"])?;
        let net = Self {
            host: host.clone(),
            bridge,
            prefix_len,
            router: None,
        };
        net.host.ip(&["link", "set", &net.bridge, "up"])?;
        Ok(net)
    }

    /// The network most tests use: a router at `fixtures::GATEWAY`/24 with a
    /// decoy, so a request the datapath misses gets a wrong answer instead of
    /// none.
    pub fn with_router_and_decoy(host: &Host) -> Result<Self> {
        Self::new(host, crate::fixtures::GATEWAY, 24)?.with_decoy()
    }

    /// Adds a decoy HTTP listener on port 80 in the router namespace, which
    /// also gets 169.254.169.254 on its loopback: a request that the datapath
    /// does not catch and that is routed to the router is answered with
    /// [`DECOY_MARK`], as a Neutron metadata proxy would answer it.
    pub fn with_decoy(mut self) -> Result<Self> {
        let router = self
            .router
            .as_mut()
            .context("a decoy needs a router namespace")?;
        router.decoy = Some(Decoy::start(&router.ns)?);
        Ok(self)
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The router namespace, if the network has one.
    pub fn router(&self) -> Option<&Netns> {
        self.router.as_ref().map(|router| &router.ns)
    }

    /// The router's address, if the network has one.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.router.as_ref().map(|router| router.gateway)
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }
}

impl Drop for TenantNet {
    fn drop(&mut self) {
        if let Err(err) = self.host.ip(&["link", "del", &self.bridge]) {
            eprintln!("cleanup: {err:#}");
        }
    }
}

/// busybox httpd serving [`DECOY_MARK`] pages at the paths the tests ask for.
struct Decoy {
    _httpd: Listener,
    _docroot: TempDir,
}

impl Decoy {
    const PATHS: [&str; 4] = [
        "index.html",
        "openstack/latest/meta_data.json",
        "latest/meta-data/instance-id",
        "latest/meta-data/hostname",
    ];

    fn start(router: &Netns) -> Result<Self> {
        // Reachable by routing only: with arp_ignore=1 the router does not
        // answer ARP for 169.254.169.254 (an address of its loopback), so a
        // guest with an on-link route gets an answer from the datapath or
        // none at all.
        router.exec_ok(&["busybox", "sysctl", "-w", "net.ipv4.conf.all.arp_ignore=1"])?;
        router.ip(&["addr", "add", &format!("{METADATA_ADDR}/32"), "dev", "lo"])?;
        let docroot = TempDir::new("decoy")?;
        for path in Self::PATHS {
            let file = docroot.join(path);
            std::fs::create_dir_all(file.parent().expect("paths have a parent"))?;
            std::fs::write(&file, format!("{DECOY_MARK} from {}\n", router.name()))
                .with_context(|| format!("writing {}", file.display()))?;
        }
        let root = docroot.path().to_string_lossy().into_owned();
        let httpd = Listener::start(
            router,
            &["busybox", "httpd", "-f", "-p", "80", "-h", &root],
            80,
            Stdio::null(),
            Stdio::inherit(),
        )?;
        Ok(Self {
            _httpd: httpd,
            _docroot: docroot,
        })
    }
}
