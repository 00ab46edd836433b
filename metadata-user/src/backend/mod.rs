//! Who answers a guest once ingress has identified it: the local store
//! (`local`, the nova-compatible OpenStack and EC2 trees) or
//! nova-api-metadata (`nova`, forwarded the way neutron's agent does).
//! The eBPF path and the neutron-agent socket share this.
//!
//! `kind` says which tree a path is in and whether it reaches a secret (for
//! metrics and the audit log).
//!
//! Depends on `state` (the instance document is looked up per request) and
//! records into `metrics` (nova's upstream latency).
pub mod guest;
pub mod kind;
pub mod local;
pub mod nova;

use std::sync::Arc;

use hyper::{Request, body::Incoming};

pub use guest::{Guest, Reply};
use local::ApiContext;
use nova::NovaBackend;

use crate::state::Registry;

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

    /// nova's counters (None with the local backend).
    pub fn nova_stats(&self) -> Option<nova::NovaStats> {
        match &self.backend {
            Backend::Local(_) => None,
            Backend::Nova(nova) => Some(nova.stats()),
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
