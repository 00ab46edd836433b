//! A watch on the local backend: the request is held until a new instance
//! document (`instance put`) changes the watched answer, the instance is
//! deleted (404), the timeout passes, or the daemon shuts down (both answer
//! the current content, as a timeout does).
//!
//! The registry publishes a snapshot on every write; a watcher wakes on
//! each, skips at once when its own instance's document is the same `Arc`
//! (a change elsewhere), and otherwise renders its path again and compares
//! ETags, so a change to a field the path does not show wakes no one.
use std::sync::Arc;

use hyper::{StatusCode, header, http::request::Parts};
use tokio::{sync::watch, time::Instant};

use super::{ApiContext, answer_read};
use crate::{
    backend::{
        guest::{Guest, Reply},
        watch::WatchQuery,
    },
    state::{Snapshot, instance::InstanceDoc},
};

/// What a local watch needs besides the request.
pub struct LocalWatch<'a> {
    pub ctx: &'a ApiContext,
    pub guest: &'a Guest,
    /// The registry's snapshots, from the moment the watch began.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Flips to true when the daemon shuts down.
    pub shutdown: watch::Receiver<bool>,
}

impl LocalWatch<'_> {
    pub async fn run(mut self, parts: &Parts, query: &WatchQuery) -> Reply {
        let uuid = self.guest.port.spec.instance;
        let mut doc = self.snapshots.borrow_and_update().instance(&uuid).cloned();
        let reply = self.render(doc.as_ref(), parts);
        if reply.response.status() != StatusCode::OK || !query.has(etag_of(&reply)) {
            return reply;
        }
        let last = etag_of(&reply).map(str::to_owned);
        let deadline = Instant::now() + query.timeout;
        let mut passwords = self.ctx.passwords_set.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = self.shutdown.wait_for(|down| *down) => break,
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let current = self.snapshots.borrow_and_update().instance(&uuid).cloned();
                    if same_document(&current, &doc) {
                        continue;
                    }
                    doc = current;
                }
                changed = passwords.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
            // Deleted: the watch ends with the 404 every request now gets.
            let reply = self.render(doc.as_ref(), parts);
            if etag_of(&reply) != last.as_deref() {
                return reply;
            }
        }
        self.render(doc.as_ref(), parts)
    }

    fn render(&self, doc: Option<&Arc<InstanceDoc>>, parts: &Parts) -> Reply {
        answer_read(self.ctx, self.guest, doc, parts)
    }
}

fn same_document(a: &Option<Arc<InstanceDoc>>, b: &Option<Arc<InstanceDoc>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

fn etag_of(reply: &Reply) -> Option<&str> {
    reply
        .response
        .headers()
        .get(header::ETAG)
        .and_then(|value| value.to_str().ok())
}
