//! From an identified guest to the backend: the port's request rate first;
//! then what the operator sees of the answer (metrics, the audit log).
use std::{sync::Arc, time::Instant};

use hyper::{Method, Request};

use super::{
    audit,
    ratelimit::{RateLimiter, too_many_requests},
};
use crate::{
    backend::{
        Answer, Guest, GuestBody, Reply, Responder,
        kind::{PathKind, Secret},
        local::token::TOKEN_HEADER,
    },
    metrics::{Metrics, Tree},
};

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
    /// The answer, counted and audited once it is there; at once when the
    /// backend answers at once (see [`Answer`]).
    pub fn dispatch<'a, B>(&'a self, guest: &'a Guest, request: Request<B>) -> Answer<'a>
    where
        B: GuestBody,
    {
        let kind = PathKind::of(request.uri().path());
        // One clock read for the rate and the latency.
        let started = Instant::now();
        let record = Record {
            started,
            kind,
            // A request with the IMDSv2 token header is not counted as tokenless.
            has_token: request.headers().contains_key(&TOKEN_HEADER),
            // Kept only for what gets an audit record (a path is small, and
            // these requests are a handful per boot).
            audited: kind.secret.map(|secret| {
                (
                    secret,
                    request.method().clone(),
                    request.uri().path().to_owned(),
                )
            }),
        };
        let answer = match self.requests.check(guest.port.slot, started) {
            Ok(()) => self.responder.respond(guest, request),
            Err(retry_after) => Answer::ready(Reply::new(too_many_requests(
                retry_after,
                request.method(),
                request.headers(),
            ))),
        };
        answer.map(move |mut reply| {
            // Every access to a secret leaves an audit record, which only
            // this path writes: such an answer is never replayed.
            if record.audited.is_some() {
                reply.repeat = None;
            }
            self.record(guest, record, &reply);
            reply
        })
    }

    /// A request answered again from what ingress kept of its first answer
    /// (`answer_replay`, a 200 without a token and without a secret): the
    /// port's rate and the metrics as `dispatch` keeps them, without the
    /// backend. False when the port is over its rate: the request then goes
    /// the whole way, for its 429 (a refused check takes nothing).
    pub fn replay(&self, guest: &Guest, tree: Tree, status: u16) -> bool {
        let started = Instant::now();
        if self.requests.check(guest.port.slot, started).is_err() {
            return false;
        }
        self.metrics.record_request(tree, status, started.elapsed());
        if is_tokenless_use(tree, false, status) {
            self.metrics.record_tokenless(guest.port.spec.instance);
        }
        true
    }

    /// What the operator sees of an answered request: metrics, audit log.
    fn record(&self, guest: &Guest, record: Record, reply: &Reply) {
        let status = reply.response.status().as_u16();
        let kind = record.kind;
        self.metrics
            .record_request(kind.tree, status, record.started.elapsed());
        if is_tokenless_use(kind.tree, record.has_token, status) {
            self.metrics.record_tokenless(guest.port.spec.instance);
        }
        if let Some((secret, method, path)) = record.audited {
            if kind.tree == Tree::Token && method == Method::PUT && status == 200 {
                self.metrics.record_token_minted();
            }
            audit::record(guest, secret, &method, &path, status);
        }
    }
}

/// IMDSv1 use, as AWS's MetadataNoToken counts it: an EC2 request
/// answered without a token, not refused for the lack of one (401) or for
/// the rate (429).
fn is_tokenless_use(tree: Tree, has_token: bool, status: u16) -> bool {
    tree == Tree::Ec2 && !has_token && status != 401 && status != 429
}

/// What is noted of a request before it is answered, for `record`.
struct Record {
    started: Instant,
    kind: PathKind,
    has_token: bool,
    audited: Option<(Secret, Method, String)>,
}
