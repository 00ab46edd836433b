//! A guest as a network namespace: its `eth0` is one end of a veth pair whose
//! other end, the "tap", sits on a tenant bridge in the host namespace, where
//! the daemon attaches to it exactly as to a VM's tap.
use std::net::Ipv4Addr;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::host::Host;
use crate::http::{self, Reply, Request};
use crate::netns::Netns;
use crate::tenant::TenantNet;
use crate::wait::{self, Poll};
use crate::{METADATA_ADDR, names};

/// How the guest reaches 169.254.169.254.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A default route via the tenant's router (the common case).
    ViaRouter,
    /// Only `169.254.169.254 dev eth0` and no default route: the guest ARPs
    /// for the metadata address itself, and only the datapath can answer.
    OnLink,
}

#[derive(Clone, Debug)]
pub struct GuestConfig {
    pub addr: Ipv4Addr,
    pub mac: String,
    pub route: Route,
    /// The tap's name; a fresh one when `None`.
    pub tap: Option<String>,
}

impl GuestConfig {
    pub fn new(addr: Ipv4Addr, mac: &str) -> Self {
        Self {
            addr,
            mac: mac.to_owned(),
            route: Route::ViaRouter,
            tap: None,
        }
    }

    /// A tap of this name (e.g. a port registered before its tap exists).
    pub fn with_tap(mut self, tap: &str) -> Self {
        self.tap = Some(tap.to_owned());
        self
    }

    pub fn on_link(mut self) -> Self {
        self.route = Route::OnLink;
        self
    }
}

pub struct Guest {
    host: Host,
    bridge: String,
    gateway: Option<Ipv4Addr>,
    prefix_len: u8,
    tap: String,
    config: GuestConfig,
    ns: Netns,
}

impl Guest {
    /// A guest on `net` behind the tap `config.tap` (a fresh name by default).
    pub fn new(net: &TenantNet, config: GuestConfig) -> Result<Self> {
        let guest = Self {
            host: net.host().clone(),
            bridge: net.bridge().to_owned(),
            gateway: net.gateway(),
            prefix_len: net.prefix_len(),
            tap: config.tap.clone().unwrap_or_else(|| names::ifname("tp")),
            config,
            ns: Netns::new("guest")?,
        };
        guest.plug()?;
        Ok(guest)
    }

    /// Creates the veth pair (tap in the host namespace, `eth0` in the
    /// guest's) and configures both ends.
    fn plug(&self) -> Result<()> {
        self.host.add_veth_to(&self.tap, &self.ns)?;
        self.host
            .ip(&["link", "set", &self.tap, "master", &self.bridge, "up"])?;
        self.configure()
    }

    /// (Re)applies the guest's address, MAC and routes to `eth0`.
    fn configure(&self) -> Result<()> {
        let ns = &self.ns;
        ns.ip(&["link", "set", "eth0", "down"])?;
        ns.ip(&["link", "set", "eth0", "address", &self.config.mac])?;
        ns.ip(&["addr", "flush", "dev", "eth0"])?;
        let cidr = format!("{}/{}", self.config.addr, self.prefix_len);
        ns.ip(&["addr", "add", &cidr, "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        match self.config.route {
            Route::ViaRouter => {
                let gateway = self
                    .gateway
                    .context("Route::ViaRouter on a network without a router")?;
                ns.ip(&["route", "add", "default", "via", &gateway.to_string()])?
            }
            Route::OnLink => ns.ip(&["route", "add", &METADATA_ADDR.to_string(), "dev", "eth0"])?,
        };
        Ok(())
    }

    /// The host-side interface name: what `port add --ifname` takes.
    pub fn tap(&self) -> &str {
        &self.tap
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.config.addr
    }

    pub fn mac(&self) -> &str {
        &self.config.mac
    }

    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// Runs a command inside the guest.
    pub fn exec(&self, args: &[&str]) -> Result<Output> {
        self.ns.exec(args)
    }

    /// Takes another address and MAC (a guest spoofing its neighbour).
    pub fn set_identity(&mut self, addr: Ipv4Addr, mac: &str) -> Result<()> {
        self.config.addr = addr;
        self.config.mac = mac.to_owned();
        self.configure()
    }

    /// Deletes the tap and creates it again under the same name, as when a
    /// VM is restarted: the new tap has a new ifindex.
    pub fn replug(&self) -> Result<()> {
        // Deleting one end of a veth pair deletes the guest's end too.
        self.host.ip(&["link", "del", &self.tap])?;
        self.plug()
    }

    /// GETs `http://169.254.169.254{path}` with a 5 s limit.
    pub fn http_get(&self, path: &str) -> Result<Reply> {
        self.http_get_with(path, &[], Duration::from_secs(5))
    }

    /// GETs `http://169.254.169.254{path}` with extra headers.
    pub fn http_get_with(&self, path: &str, headers: &[&str], timeout: Duration) -> Result<Reply> {
        http::get(
            &self.ns,
            &format!("http://{METADATA_ADDR}{path}"),
            headers,
            timeout,
        )
    }

    /// Sends any request from inside the guest.
    pub fn send(&self, request: &Request) -> Result<Reply> {
        request.send(&self.ns)
    }

    /// POSTs `body` to `http://169.254.169.254{path}` with a 5 s limit.
    pub fn http_post(&self, path: &str, body: &str) -> Result<Reply> {
        http::post(
            &self.ns,
            &format!("http://{METADATA_ADDR}{path}"),
            body,
            Duration::from_secs(5),
        )
    }

    /// GETs any URL from inside the guest.
    pub fn http_get_url(&self, url: &str) -> Result<Reply> {
        http::get(&self.ns, url, &[], Duration::from_secs(5))
    }

    /// Whether one ping to `addr` is answered within 2 s.
    pub fn ping(&self, addr: Ipv4Addr) -> Result<bool> {
        let out = self.exec(&["busybox", "ping", "-c", "1", "-W", "2", &addr.to_string()])?;
        Ok(out.status.success())
    }

    /// Waits (up to 20 s) until `path` gets any HTTP answer, and returns it:
    /// for networks where only the datapath can answer (no router, or one
    /// without a listener), once the tap is attached.
    pub fn wait_answer(&self, path: &str) -> Result<Reply> {
        wait::until(
            &format!("an answer to {path} on tap {}", self.tap),
            Duration::from_secs(20),
            || {
                let reply = self.http_get_with(path, &[], Duration::from_secs(2))?;
                Ok(if reply.status != 0 {
                    Poll::Ready(reply)
                } else {
                    Poll::Pending(reply.to_string())
                })
            },
        )
    }

    /// Waits (up to 20 s) until `meta_data.json` names `uuid`: the daemon
    /// attaches to taps asynchronously, after `port add` or a restart.
    pub fn wait_served(&self, uuid: &str) -> Result<Reply> {
        let path = "/openstack/latest/meta_data.json";
        wait::until(
            &format!("{path} of {uuid} on tap {}", self.tap),
            Duration::from_secs(20),
            || {
                let reply = self.http_get_with(path, &[], Duration::from_secs(2))?;
                let served =
                    reply.status == 200 && reply.json().is_some_and(|doc| doc["uuid"] == uuid);
                Ok(if served {
                    Poll::Ready(reply)
                } else {
                    Poll::Pending(reply.to_string())
                })
            },
        )
    }
}
