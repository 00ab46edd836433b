//! OpenStack mode (`serve --backend nova`): guests' requests go to
//! nova-api-metadata the way neutron-metadata-agent sends them, signed with
//! the shared secret, so nova stays the source of truth.
//!
//! - `config`: the options (neutron-metadata-agent's names) and their checks.
//! - `sign`: the X-Instance-ID-Signature nova verifies.
//! - `tls`, `client`: the pooled keep-alive client to nova, plain or rustls.
//! - `forward`: which headers go up, which statuses come back.
//! - `outage`: nova's failures logged once per outage, not per request.
//! - `cache`: GET answers kept per (instance, project, path), single flight,
//!   and served stale while nova fails (`--stale-if-error`).
//! - `identity`: the signed identity paths, answered here (nova has none).
//! - `watch`: one poll per watched (instance, path), waking its watchers.
//! - `backend`: `NovaBackend::forward`, tying those together.
//!
//! neutron-metadata-agent's unix socket, which haproxy proxies talk to, is
//! an entry point and lives in `ingress::neutron_agent`.
mod backend;
pub mod cache;
mod client;
pub mod config;
mod forward;
mod identity;
mod outage;
mod sign;
mod tls;
mod watch;

#[cfg(test)]
mod tests;

use std::net::IpAddr;

pub use backend::{NovaBackend, NovaStats};

use crate::{
    backend::guest::Guest,
    state::port::{NoProject, project_for_port},
};

/// Whom a request is forwarded for: what nova is told in X-Instance-ID,
/// X-Tenant-ID and X-Forwarded-For.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardTarget {
    pub instance_id: uuid::Uuid,
    pub project_id: String,
    /// The guest's own address, as it sent it (IPv4 or IPv6).
    pub guest_addr: IpAddr,
}

impl ForwardTarget {
    /// The target for a guest identified by the datapath (or the neutron
    /// socket): its port's instance, the project from `project_for_port`.
    pub fn for_guest(guest: &Guest, instance_project: Option<&str>) -> Result<Self, NoProject> {
        let spec = &guest.port.spec;
        Ok(Self {
            instance_id: spec.instance,
            project_id: project_for_port(
                &spec.instance,
                spec.project_id.as_deref(),
                instance_project,
            )?,
            // Ingress always asks the datapath for it in nova mode
            // (`Responder::needs_guest_addr`).
            guest_addr: guest
                .guest_addr
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
        })
    }
}
