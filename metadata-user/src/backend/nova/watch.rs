//! Watches in nova mode: nova cannot tell us when something changed, so
//! while guests watch a path the daemon asks nova again once per interval
//! (the cache expiration), one poll per (instance, project, path) however
//! many guests watch it, and wakes them when the answer's ETag changed.
//!
//! A poll goes through the cache (`AnswerCache::refresh`), so it also keeps
//! the cache fresh for ordinary requests. A failed poll wakes no one: an
//! outage is not a change of content.
use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::watch;

use super::{
    cache::{AnswerCache, CacheKey},
    forward::Answer,
};

/// Makes the upstream request for a watched key, as often as needed.
pub type Refetch = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Answer> + Send>> + Send + Sync>;

/// The polls running now, one per watched key.
#[derive(Default)]
pub struct Polls {
    running: Mutex<HashMap<CacheKey, Arc<Poll>>>,
}

struct Poll {
    /// The newest answer the poll got (the one watchers compare with).
    latest: watch::Sender<Answer>,
    watchers: AtomicUsize,
}

/// A guest's place among the watchers of a key; leaving ends the poll once
/// no one is left.
pub struct Watching {
    poll: Arc<Poll>,
    pub latest: watch::Receiver<Answer>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.poll.watchers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Polls {
    /// Joins the watchers of `key`, starting its poll if there is none.
    /// `current` is the answer the guest is waiting to see change.
    pub fn join(
        self: &Arc<Self>,
        key: CacheKey,
        current: Answer,
        interval: Duration,
        cache: Option<Arc<AnswerCache>>,
        refetch: Refetch,
    ) -> Watching {
        let mut running = self.running.lock().unwrap();
        if let Some(poll) = running.get(&key) {
            poll.watchers.fetch_add(1, Ordering::AcqRel);
            return Watching {
                poll: poll.clone(),
                latest: poll.latest.subscribe(),
            };
        }
        let poll = Arc::new(Poll {
            latest: watch::Sender::new(current),
            watchers: AtomicUsize::new(1),
        });
        running.insert(key.clone(), poll.clone());
        tokio::spawn(
            self.clone()
                .poll(key, poll.clone(), interval, cache, refetch),
        );
        Watching {
            latest: poll.latest.subscribe(),
            poll,
        }
    }

    async fn poll(
        self: Arc<Self>,
        key: CacheKey,
        poll: Arc<Poll>,
        interval: Duration,
        cache: Option<Arc<AnswerCache>>,
        refetch: Refetch,
    ) {
        loop {
            tokio::time::sleep(interval).await;
            {
                // Under the lock, so that a guest joining now either finds
                // this poll still running or starts a new one.
                let mut running = self.running.lock().unwrap();
                if poll.watchers.load(Ordering::Acquire) == 0 {
                    if running.get(&key).is_some_and(|p| Arc::ptr_eq(p, &poll)) {
                        running.remove(&key);
                    }
                    return;
                }
            }
            let answer = match &cache {
                Some(cache) => cache.refresh(key.clone(), || refetch()).await,
                None => refetch().await,
            };
            if !answer.is_cacheable() {
                continue;
            }
            poll.latest.send_if_modified(|latest| {
                let changed = latest.status != answer.status || latest.etag != answer.etag;
                if changed {
                    *latest = answer;
                }
                changed
            });
        }
    }

    /// Keys polled now (for `status`).
    pub fn polled(&self) -> usize {
        self.running.lock().unwrap().len()
    }
}
