//! Who answers a guest once it is identified: the local store (the
//! nova-compatible API in `api`) or nova-api-metadata behind the `nova`
//! forwarder. The eBPF path and the neutron-agent socket share this.
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming};

use super::{
    api::{self, ApiContext},
    conn::Guest,
    ratelimit::{RateLimiter, too_many_requests},
};
use crate::{nova::NovaBackend, state::Registry};

pub enum Backend {
    Local(ApiContext),
    Nova(NovaBackend),
}

/// Everything needed to answer an identified guest's request.
pub struct Responder {
    pub backend: Backend,
    pub registry: Arc<Registry>,
    pub requests: RateLimiter,
}

impl Responder {
    pub async fn respond(
        &self,
        guest: &Guest,
        request: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        if let Err(retry_after) = self.requests.check(guest.port.slot) {
            return too_many_requests(retry_after, request.method(), request.headers());
        }
        // Looked up per request: `instance put` and `instance del` take
        // effect on the next request, even on an open connection.
        let instance = self
            .registry
            .snapshot()
            .instance(&guest.port.spec.instance)
            .cloned();
        match &self.backend {
            Backend::Local(api) => api::handle(api, guest, instance, request).await,
            Backend::Nova(nova) => {
                let project = instance.as_ref().and_then(|i| i.project_id.as_deref());
                nova.serve_guest(guest, project, request).await
            }
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
