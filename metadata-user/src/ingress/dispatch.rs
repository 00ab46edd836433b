//! From an identified guest to the backend: the port's request rate first;
//! then what the operator sees of the answer (metrics, the audit log).
use std::{sync::Arc, time::Instant};

use hyper::{Method, Request, body::Incoming};

use super::{
    audit,
    ratelimit::{RateLimiter, too_many_requests},
};
use crate::{
    backend::{Guest, Reply, Responder, kind::PathKind},
    metrics::{Metrics, Tree},
};

/// The IMDSv2 token header (a request with it is not counted as tokenless).
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";

/// Hands an identified guest's request to the backend, unless the guest's
/// port is over its request rate (429). Both entry points share one, so a
/// port has one budget whichever way its requests come in, and every
/// request is counted and audited the same way.
pub struct Dispatcher {
    pub responder: Arc<Responder>,
    pub requests: RateLimiter,
    pub metrics: Arc<Metrics>,
}

impl Dispatcher {
    pub async fn dispatch(&self, guest: &Guest, request: Request<Incoming>) -> Reply {
        let started = Instant::now();
        let kind = PathKind::of(request.uri().path());
        let has_token = request.headers().contains_key(TOKEN_HEADER);
        // Kept only for what gets an audit record (a path is small, and
        // these requests are a handful per boot).
        let audited = kind.secret.map(|secret| {
            (
                secret,
                request.method().clone(),
                request.uri().path().to_owned(),
            )
        });
        let reply = match self.requests.check(guest.port.slot) {
            Ok(()) => self.responder.respond(guest, request).await,
            Err(retry_after) => Reply::new(too_many_requests(
                retry_after,
                request.method(),
                request.headers(),
            )),
        };
        let status = reply.response.status().as_u16();
        self.metrics
            .record_request(kind.tree, status, started.elapsed());
        // IMDSv1 use, as AWS's MetadataNoToken counts it: answered without a
        // token, not refused for the lack of one (401) or for the rate (429).
        if kind.tree == Tree::Ec2 && !has_token && status != 401 && status != 429 {
            self.metrics.record_tokenless(guest.port.spec.instance);
        }
        if let Some((secret, method, path)) = audited {
            if kind.tree == Tree::Token && method == Method::PUT && status == 200 {
                self.metrics.record_token_minted();
            }
            audit::record(guest, secret, &method, &path, status);
        }
        reply
    }
}
