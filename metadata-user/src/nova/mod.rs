//! OpenStack mode (`serve --backend nova`): guests' requests go to
//! nova-api-metadata the way neutron-metadata-agent sends them, signed with
//! the shared secret, so nova stays the source of truth.
//!
//! - `config`: the options (neutron-metadata-agent's names) and their checks.
//! - `sign`: the X-Instance-ID-Signature nova verifies.
//! - `tls`, `client`: the pooled keep-alive client to nova, plain or rustls.
//! - `forward`: which headers go up, which statuses come back.
//! - `cache`: GET answers kept per (instance, project, path), single flight.
//! - `backend`: `NovaBackend::forward`, tying those together.
//! - `neutron_agent`: a unix socket speaking neutron-metadata-agent's
//!   protocol, so existing haproxy namespace proxies keep working.
mod backend;
pub mod cache;
mod client;
pub mod config;
mod forward;
pub mod neutron_agent;
mod sign;
mod tls;

#[cfg(test)]
mod tests;

use std::net::Ipv4Addr;

pub use backend::NovaBackend;

use crate::metadata::conn::Guest;

/// Whom a request is forwarded for: what nova is told in X-Instance-ID,
/// X-Tenant-ID and X-Forwarded-For.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardTarget {
    pub instance_id: uuid::Uuid,
    pub project_id: String,
    /// The guest's own address, as it sent it.
    pub guest_addr: Ipv4Addr,
}

impl ForwardTarget {
    /// The target for a guest identified by the datapath (or the neutron
    /// socket): its port's instance, the project from `project_for_port`.
    pub fn for_guest(guest: &Guest, instance_project: Option<&str>) -> Result<Self, String> {
        let spec = &guest.port.spec;
        Ok(Self {
            instance_id: spec.instance,
            project_id: project_for_port(
                &spec.instance,
                spec.project_id.as_deref(),
                instance_project,
            )?,
            guest_addr: guest.guest_addr,
        })
    }
}

/// The project nova is told for a port: `port add --project-id`, else the
/// instance document's `project_id`. nova answers 404 when X-Tenant-ID does
/// not match the instance's project, so in nova mode a port without either
/// is refused (the error is what the CLI shows).
pub fn project_for_port(
    instance: &uuid::Uuid,
    spec_project: Option<&str>,
    instance_project: Option<&str>,
) -> Result<String, String> {
    let given = |p: Option<&str>| {
        p.map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
    };
    given(spec_project)
        .or_else(|| given(instance_project))
        .ok_or_else(|| {
            format!("--project-id is required in nova mode: instance {instance} has no project_id")
        })
}

#[cfg(test)]
mod project_tests {
    use super::*;

    #[test]
    fn port_project_then_instance_project_else_error() {
        let instance = uuid::Uuid::from_u128(7);
        assert_eq!(
            project_for_port(&instance, Some("a"), Some("b")).unwrap(),
            "a"
        );
        assert_eq!(project_for_port(&instance, None, Some("b")).unwrap(), "b");
        assert_eq!(
            project_for_port(&instance, Some(" "), Some("b")).unwrap(),
            "b"
        );
        assert_eq!(
            project_for_port(&instance, None, Some("")).unwrap_err(),
            "--project-id is required in nova mode: instance 00000000-0000-0000-0000-000000000007 has no project_id"
        );
    }
}
