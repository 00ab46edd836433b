//! The "hypervisor": a namespace standing in for the compute node.
//!
//! The daemon, the bridges and the taps live here, so tests never put test
//! traffic (or the daemon's own veth pair) into the machine's real namespace.
//! Clones share the namespace; it is deleted when the last clone goes, so
//! networks, guests and daemons can hold on to it without lifetimes.
use std::ops::Deref;
use std::sync::Arc;

use anyhow::Result;

use crate::netns::Netns;

#[derive(Clone)]
pub struct Host(Arc<Netns>);

impl Host {
    pub fn new() -> Result<Self> {
        Ok(Self(Arc::new(Netns::new("host")?)))
    }

    /// The ifindex of an interface in this namespace (taps are keyed by it).
    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        let out = self.ip(&["-o", "link", "show", "dev", ifname])?;
        out.split(':')
            .next()
            .and_then(|index| index.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no ifindex in `ip link show {ifname}`: {out}"))
    }
}

impl Deref for Host {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.0
    }
}
