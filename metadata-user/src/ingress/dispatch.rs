//! From an identified guest to the backend: the port's request rate first.
use std::sync::Arc;

use hyper::{Request, body::Incoming};

use super::ratelimit::{RateLimiter, too_many_requests};
use crate::backend::{Guest, Reply, Responder};

/// Hands an identified guest's request to the backend, unless the guest's
/// port is over its request rate (429). Both entry points share one, so a
/// port has one budget whichever way its requests come in.
pub struct Dispatcher {
    pub responder: Arc<Responder>,
    pub requests: RateLimiter,
}

impl Dispatcher {
    pub async fn dispatch(&self, guest: &Guest, request: Request<Incoming>) -> Reply {
        if let Err(retry_after) = self.requests.check(guest.port.slot) {
            return Reply::new(too_many_requests(
                retry_after,
                request.method(),
                request.headers(),
            ));
        }
        self.responder.respond(guest, request).await
    }
}
