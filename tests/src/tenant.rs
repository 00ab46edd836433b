//! A tenant network: a bridge in the host namespace and a router namespace
//! on it, like a Neutron network with its router port.
//!
//! Several tenant networks may use the same subnet and gateway address: they
//! only meet in the host namespace as separate bridges.
use std::net::Ipv4Addr;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::host::Host;
use crate::netns::Netns;
use crate::tempdir::TempDir;
use crate::wait::{self, Poll};
use crate::{METADATA_ADDR, names};

/// What every page of a decoy listener contains.
pub const DECOY_MARK: &str = "DECOY";

pub struct TenantNet {
    host: Host,
    bridge: String,
    gateway: Ipv4Addr,
    prefix_len: u8,
    // Dropped in this order after `drop` removed the bridge: the listener
    // first, so nothing keeps the router namespace alive.
    decoy: Option<Decoy>,
    router: Netns,
}

impl TenantNet {
    /// A bridge and a router namespace whose `eth0` has `gateway/prefix_len`.
    pub fn new(host: &Host, gateway: Ipv4Addr, prefix_len: u8) -> Result<Self> {
        let bridge = names::ifname("br");
        host.ip(&["link", "add", &bridge, "type", "bridge"])?;
        let router = Netns::new("router")?;
        let net = Self {
            host: host.clone(),
            bridge,
            gateway,
            prefix_len,
            decoy: None,
            router,
        };
        net.host.ip(&["link", "set", &net.bridge, "up"])?;
        let uplink = names::ifname("rt");
        // Created straight into both namespaces: nothing of ours ever appears
        // in the machine's own namespace, not even for a moment.
        net.host.ip(&[
            "link", "add", &uplink, "type", "veth", "peer", "name", "eth0", "netns",
            net.router.name(),
        ])?;
        net.host
            .ip(&["link", "set", &uplink, "master", &net.bridge, "up"])?;
        let cidr = format!("{gateway}/{prefix_len}");
        net.router.ip(&["addr", "add", &cidr, "dev", "eth0"])?;
        net.router.ip(&["link", "set", "eth0", "up"])?;
        Ok(net)
    }

    /// Adds a decoy HTTP listener on port 80 in the router namespace, which
    /// also gets 169.254.169.254 on its loopback: a request that the datapath
    /// does not catch is routed to the router and answered with
    /// [`DECOY_MARK`], like a Neutron metadata proxy would answer it.
    pub fn with_decoy(mut self) -> Result<Self> {
        self.decoy = Some(Decoy::start(&self.router)?);
        Ok(self)
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    pub fn router(&self) -> &Netns {
        &self.router
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
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
    child: Child,
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
        router.ip(&["addr", "add", &format!("{METADATA_ADDR}/32"), "dev", "lo"])?;
        let docroot = TempDir::new("decoy")?;
        for path in Self::PATHS {
            let file = docroot.join(path);
            std::fs::create_dir_all(file.parent().expect("paths have a parent"))?;
            std::fs::write(&file, format!("{DECOY_MARK} from {}\n", router.name()))
                .with_context(|| format!("writing {}", file.display()))?;
        }
        let root = docroot.path().to_string_lossy().into_owned();
        let child = router.spawn(
            &["busybox", "httpd", "-f", "-p", "80", "-h", &root],
            Stdio::null(),
            Stdio::inherit(),
        )?;
        let decoy = Self {
            child,
            _docroot: docroot,
        };
        wait::until("the decoy listener", Duration::from_secs(10), || {
            let out = router.exec_ok(&["ss", "-Hltn", "sport = :80"])?;
            Ok(if out.trim().is_empty() {
                Poll::Pending("nothing listening on :80".into())
            } else {
                Poll::Ready(())
            })
        })?;
        Ok(decoy)
    }
}

impl Drop for Decoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
