//! Who answers a guest once ingress has identified it: the local store
//! (`local`, the nova-compatible OpenStack and EC2 trees) or
//! nova-api-metadata (`nova`, forwarded the way neutron's agent does).
//! The eBPF path and the neutron-agent socket share this.
//!
//! Depends on `state` only (the instance document is looked up per request).
pub mod guest;
pub mod local;
pub mod nova;

use std::sync::Arc;

use hyper::{Request, body::Incoming};

pub use guest::{Guest, Reply};
use local::ApiContext;
use nova::NovaBackend;

use crate::state::{Port, Registry};

pub enum Backend {
    Local(ApiContext),
    Nova(NovaBackend),
}

/// Everything needed to answer an identified guest's request.
pub struct Responder {
    pub backend: Backend,
    pub registry: Arc<Registry>,
}

impl Responder {
    pub async fn respond(&self, guest: &Guest, request: Request<Incoming>) -> Reply {
        // Looked up per request: `instance put` and `instance del` take
        // effect on the next request, even on an open connection.
        let instance = self
            .registry
            .snapshot()
            .instance(&guest.port.spec.instance)
            .cloned();
        match &self.backend {
            Backend::Local(api) => local::handle(api, guest, instance, request).await,
            Backend::Nova(nova) => {
                let project = instance.as_ref().and_then(|i| i.project_id.as_deref());
                Reply::new(nova.serve_guest(guest, project, request).await)
            }
        }
    }

    /// Whether answers to a guest on `port` may need the guest's own
    /// address (`Guest::guest_addr`), which costs ingress a datapath lookup
    /// per connection: always for nova (X-Forwarded-For); locally only for
    /// a port registered without addresses, whose EC2 `local-ipv4` falls
    /// back to it.
    pub fn needs_guest_addr(&self, port: &Port) -> bool {
        match &self.backend {
            Backend::Local(_) => port.spec.ips.is_empty(),
            Backend::Nova(_) => true,
        }
    }

    /// What the status command shows about the backend.
    pub fn status(&self) -> serde_json::Value {
        match &self.backend {
            Backend::Local(_) => serde_json::json!({ "kind": "local" }),
            Backend::Nova(nova) => serde_json::json!({
                "kind": "nova",
                "stats": serde_json::to_value(nova.stats()).unwrap_or_default(),
            }),
        }
    }
}
