//! Who answers a guest once ingress has identified it: the local store
//! (`local`, the nova-compatible OpenStack and EC2 trees) or
//! nova-api-metadata (`nova`, forwarded the way neutron's agent does).
//! The eBPF path and the neutron-agent socket share this.
//!
//! `kind` says which tree a path is in and whether it reaches a secret (for
//! metrics and the audit log). `watch` (held `?wait_for_change=true`
//! requests) and `identity` (signed instance identity) serve both backends.
//!
//! Depends on `state` (the instance document is looked up per request) and
//! records into `metrics` (nova's upstream latency).
pub mod guest;
pub mod identity;
pub mod kind;
pub mod local;
pub mod nova;
pub mod watch;

use std::sync::Arc;

use hyper::{Method, Request};
use tokio::sync::watch as signal;

pub use guest::{Answer, Guest, GuestBody, Reply};
use local::{
    ApiContext,
    response::{ApiError, too_many_requests},
    watch::LocalWatch,
};
use nova::NovaBackend;
use watch::{WatchLimiter, WatchQuery};

use crate::state::{Port, Registry};

pub enum Backend {
    Local(ApiContext),
    Nova(NovaBackend),
}

/// Everything needed to answer an identified guest's request.
pub struct Responder {
    pub backend: Backend,
    pub registry: Arc<Registry>,
    /// Held watches per port (`?wait_for_change=true`).
    pub watches: Arc<WatchLimiter>,
    /// Flips to true at shutdown: held watches answer at once.
    pub shutdown: signal::Receiver<bool>,
}

impl Responder {
    /// The answer to an identified guest's request: at once from the
    /// local store, later for a watch or a nova round trip.
    /// `B`: hyper's body on a connection it serves, an empty one for a
    /// plain request read without it (`ingress::guest_http`).
    pub fn respond<'a, B>(&'a self, guest: &'a Guest, request: Request<B>) -> Answer<'a>
    where
        B: GuestBody,
    {
        // Only a request with a query string pays for this. GETs only: in
        // nova mode a watch's answer is cached, and a HEAD's has no body.
        let watch = match WatchQuery::parse(request.uri().query()) {
            Ok(watch) => watch.filter(|_| request.method() == Method::GET),
            Err(err) => {
                return Answer::ready(Reply::new(
                    ApiError::BadRequest {
                        explanation: Some(err.explanation()),
                    }
                    .into_response(request.method(), request.headers()),
                ));
            }
        };
        if let Some(watch) = watch {
            return Answer::later(async move { self.watch(guest, request, &watch).await });
        }
        // Looked up per request: `instance put` and `instance del` take
        // effect on the next request, even on an open connection.
        let instance = self
            .registry
            .snapshot()
            .instance(&guest.port.spec.instance)
            .cloned();
        match &self.backend {
            Backend::Local(api) => local::handle(api, guest, instance, request),
            Backend::Nova(nova) => Answer::later(async move {
                let project = instance.as_ref().and_then(|i| i.project_id.as_deref());
                Reply::new(nova.serve_guest(guest, project, request).await)
            }),
        }
    }

    /// A watch: one of the port's [`watch::MAX_WATCHES_PER_PORT`] places
    /// (429 beyond), held until the backend says the answer changed.
    async fn watch<B>(&self, guest: &Guest, request: Request<B>, query: &WatchQuery) -> Reply
    where
        B: GuestBody,
    {
        let Some(_permit) = self.watches.acquire(guest.port.slot) else {
            return Reply::new(too_many_requests(request.method(), request.headers()));
        };
        match &self.backend {
            Backend::Local(api) => {
                // Subscribed before the first look, so no change is missed.
                let watch = LocalWatch {
                    ctx: api,
                    guest,
                    snapshots: self.registry.subscribe(),
                    shutdown: self.shutdown.clone(),
                };
                let (parts, _body) = request.into_parts();
                watch.run(&parts, query).await
            }
            Backend::Nova(nova) => {
                let instance = self
                    .registry
                    .snapshot()
                    .instance(&guest.port.spec.instance)
                    .cloned();
                let project = instance.as_ref().and_then(|i| i.project_id.as_deref());
                Reply::new(
                    nova.watch_guest(guest, project, request, query, self.shutdown.clone())
                        .await,
                )
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
        let watches = self.watches.held();
        match &self.backend {
            Backend::Local(_) => serde_json::json!({ "kind": "local", "watches": watches }),
            Backend::Nova(nova) => serde_json::json!({
                "kind": "nova",
                "watches": watches,
                "stats": serde_json::to_value(nova.stats()).unwrap_or_default(),
            }),
        }
    }
}
