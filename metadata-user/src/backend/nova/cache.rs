//! Keeps nova's GET answers for a while, and lets concurrent identical
//! requests share one upstream request (single flight), so a boot storm
//! reaches nova with at most one request per (instance, project, path) per
//! window.
//!
//! - Key: instance, project and path including the query. The project is in
//!   the key because nova's answer depends on it (a mismatch is 404). The
//!   guest's address is not: nova caches its metadata per instance too, so
//!   X-Forwarded-For does not change the answer (the first request's address
//!   is the one nova sees for a shared request).
//! - Kept: 200 and 404 answers (see `Answer::is_cacheable`), for the
//!   expiration time counted from when the answer arrived.
//! - Shared but not kept: everything else. Requests that arrived while the
//!   one upstream request was in flight all get its answer, errors included.
//! - Invalidated: an instance's password entries, after it POSTs one.
//! - Bounded: entries past their time are swept (at most once per window, or
//!   when the byte budget is reached); when the budget is still exceeded,
//!   a new answer is served but not kept.
use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{
    FutureExt as _,
    future::{BoxFuture, Shared},
};
use hyper::StatusCode;

use super::forward::Answer;

/// Default budget for cached answers. One instance's whole crawl is a few
/// tens of KiB; this keeps thousands of instances' crawls.
pub const DEFAULT_MAX_BYTES: usize = 64 << 20;
/// Bookkeeping per entry, counted against the budget with the body.
const ENTRY_OVERHEAD: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub instance: uuid::Uuid,
    pub project: String,
    /// Path and query, as the guest sent them.
    pub path_and_query: String,
}

impl CacheKey {
    /// nova serves the password under every version (`/openstack/<v>/password`).
    fn is_password(&self) -> bool {
        let path = self.path_and_query.split('?').next().unwrap_or_default();
        path.trim_end_matches('/').ends_with("/password")
    }

    fn size(&self, answer: &Answer) -> usize {
        ENTRY_OVERHEAD + self.project.len() + self.path_and_query.len() + answer.body.len()
    }
}

type SharedAnswer = Shared<BoxFuture<'static, Answer>>;

enum Slot {
    Ready {
        answer: Answer,
        expires_at: Instant,
        size: usize,
    },
    /// One upstream request in flight; `flight` tells it apart from a later
    /// one for the same key, so a result that was invalidated while in
    /// flight is not stored.
    Pending { flight: u64, answer: SharedAnswer },
}

#[derive(Default)]
struct Entries {
    slots: HashMap<CacheKey, Slot>,
    bytes: usize,
    next_flight: u64,
    next_sweep: Option<Instant>,
}

impl Entries {
    fn remove(&mut self, key: &CacheKey) {
        if let Some(Slot::Ready { size, .. }) = self.slots.remove(key) {
            self.bytes -= size;
        }
    }

    fn sweep(&mut self, now: Instant) {
        let mut freed = 0;
        self.slots.retain(|_, slot| match slot {
            Slot::Ready {
                expires_at, size, ..
            } if *expires_at <= now => {
                freed += *size;
                false
            }
            _ => true,
        });
        self.bytes -= freed;
    }
}

/// Counters for `status` and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Answered from a kept answer.
    pub hits: u64,
    /// Joined an upstream request already in flight.
    pub coalesced: u64,
    /// Started an upstream request.
    pub misses: u64,
    pub entries: usize,
    pub bytes: usize,
}

pub struct AnswerCache {
    ttl: Duration,
    max_bytes: usize,
    entries: Mutex<Entries>,
    hits: AtomicU64,
    coalesced: AtomicU64,
    misses: AtomicU64,
}

impl AnswerCache {
    pub fn new(ttl: Duration, max_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            ttl,
            max_bytes,
            entries: Mutex::default(),
            hits: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// The kept answer for `key`, or the answer of the upstream request in
    /// flight for it, or the answer of a new one made with `fetch`.
    ///
    /// The upstream request runs in its own task: a guest that hangs up does
    /// not cancel it for the others waiting on it.
    pub async fn get_or_fetch<F, Fut>(self: &Arc<Self>, key: CacheKey, fetch: F) -> Answer
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Answer> + Send + 'static,
    {
        let in_flight = {
            let mut entries = self.entries.lock().unwrap();
            match entries.slots.get(&key) {
                Some(Slot::Ready {
                    answer, expires_at, ..
                }) if *expires_at > Instant::now() => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return answer.clone();
                }
                Some(Slot::Pending { answer, .. }) => {
                    self.coalesced.fetch_add(1, Ordering::Relaxed);
                    answer.clone()
                }
                _ => {
                    self.misses.fetch_add(1, Ordering::Relaxed);
                    entries.remove(&key);
                    let flight = entries.next_flight;
                    entries.next_flight += 1;
                    let cache = self.clone();
                    let task_key = key.clone();
                    let upstream = fetch();
                    // `complete` needs the lock we hold, so the task cannot
                    // finish before its Pending slot is in place.
                    let task = tokio::spawn(async move {
                        let answer = upstream.await;
                        cache.complete(&task_key, flight, &answer);
                        answer
                    });
                    let answer = async move {
                        task.await.unwrap_or_else(|_| {
                            Answer::local(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "The metadata request failed.",
                            )
                        })
                    }
                    .boxed()
                    .shared();
                    entries.slots.insert(
                        key,
                        Slot::Pending {
                            flight,
                            answer: answer.clone(),
                        },
                    );
                    answer
                }
            }
        };
        in_flight.await
    }

    /// Stores the answer of flight `flight` if it is still the one wanted.
    fn complete(&self, key: &CacheKey, flight: u64, answer: &Answer) {
        let mut entries = self.entries.lock().unwrap();
        match entries.slots.get(key) {
            Some(Slot::Pending {
                flight: current, ..
            }) if *current == flight => {}
            // Invalidated (or replaced) while in flight: leave it alone.
            _ => return,
        }
        entries.slots.remove(key);
        if !answer.is_cacheable() || self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let size = key.size(answer);
        let sweep_due = entries.next_sweep.is_none_or(|at| now >= at);
        if sweep_due || entries.bytes + size > self.max_bytes {
            entries.sweep(now);
            entries.next_sweep = Some(now + self.ttl);
        }
        if entries.bytes + size > self.max_bytes {
            return;
        }
        entries.bytes += size;
        entries.slots.insert(
            key.clone(),
            Slot::Ready {
                answer: answer.clone(),
                expires_at: now + self.ttl,
                size,
            },
        );
    }

    /// Forgets `instance`'s password answers (kept or in flight), after it
    /// POSTed a new password.
    pub fn invalidate_password(&self, instance: &uuid::Uuid) {
        let mut entries = self.entries.lock().unwrap();
        let mut freed = 0;
        entries.slots.retain(|key, slot| {
            if key.instance != *instance || !key.is_password() {
                return true;
            }
            if let Slot::Ready { size, .. } = slot {
                freed += *size;
            }
            false
        });
        entries.bytes -= freed;
    }

    pub fn stats(&self) -> CacheStats {
        let entries = self.entries.lock().unwrap();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            coalesced: self.coalesced.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: entries.slots.len(),
            bytes: entries.bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use bytes::Bytes;

    use super::*;

    fn key(path: &str) -> CacheKey {
        CacheKey {
            instance: uuid::Uuid::from_u128(1),
            project: "p".into(),
            path_and_query: path.into(),
        }
    }

    fn answer(status: StatusCode, body: &'static str) -> Answer {
        Answer {
            status,
            content_type: None,
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    /// A fetch that counts its calls and answers after `delay`.
    fn counting(
        calls: &Arc<AtomicUsize>,
        status: StatusCode,
        delay: Duration,
    ) -> impl FnOnce() -> BoxFuture<'static, Answer> + use<> {
        let calls = calls.clone();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(delay).await;
                answer(status, "body")
            }
            .boxed()
        }
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_fetch_and_then_hit() {
        let cache = AnswerCache::new(Duration::from_secs(60), DEFAULT_MAX_BYTES);
        let calls = Arc::new(AtomicUsize::new(0));
        let waiters: Vec<_> = (0..50)
            .map(|_| {
                let cache = cache.clone();
                let fetch = counting(&calls, StatusCode::OK, Duration::from_millis(100));
                tokio::spawn(async move { cache.get_or_fetch(key("/a"), fetch).await })
            })
            .collect();
        for waiter in waiters {
            assert_eq!(waiter.await.unwrap().status, StatusCode::OK);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        cache
            .get_or_fetch(key("/a"), counting(&calls, StatusCode::OK, Duration::ZERO))
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let stats = cache.stats();
        assert_eq!((stats.misses, stats.coalesced + stats.hits), (1, 50));
    }

    #[tokio::test]
    async fn errors_are_shared_but_not_kept() {
        let cache = AnswerCache::new(Duration::from_secs(60), DEFAULT_MAX_BYTES);
        let calls = Arc::new(AtomicUsize::new(0));
        for status in [
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::FORBIDDEN,
            StatusCode::INTERNAL_SERVER_ERROR,
        ] {
            let got = cache
                .get_or_fetch(key("/e"), counting(&calls, status, Duration::ZERO))
                .await;
            assert_eq!(got.status, status);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(cache.stats().entries, 0);
        cache
            .get_or_fetch(
                key("/nf"),
                counting(&calls, StatusCode::NOT_FOUND, Duration::ZERO),
            )
            .await;
        cache
            .get_or_fetch(
                key("/nf"),
                counting(&calls, StatusCode::NOT_FOUND, Duration::ZERO),
            )
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 4, "404 is kept");
    }

    #[tokio::test]
    async fn entries_expire_and_are_swept() {
        let cache = AnswerCache::new(Duration::from_millis(100), DEFAULT_MAX_BYTES);
        let calls = Arc::new(AtomicUsize::new(0));
        for path in ["/a", "/b", "/c"] {
            cache
                .get_or_fetch(key(path), counting(&calls, StatusCode::OK, Duration::ZERO))
                .await;
        }
        assert_eq!(cache.stats().entries, 3);
        tokio::time::sleep(Duration::from_millis(150)).await;
        cache
            .get_or_fetch(key("/a"), counting(&calls, StatusCode::OK, Duration::ZERO))
            .await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "expired entry fetched again"
        );
        // The store after expiry swept /b and /c.
        assert_eq!(cache.stats().entries, 1);
    }

    #[tokio::test]
    async fn byte_budget_bounds_memory() {
        let budget = 3 * (ENTRY_OVERHEAD + 1 + 2 + 4);
        let cache = AnswerCache::new(Duration::from_secs(60), budget);
        let calls = Arc::new(AtomicUsize::new(0));
        for path in ["/a", "/b", "/c", "/d", "/e"] {
            cache
                .get_or_fetch(key(path), counting(&calls, StatusCode::OK, Duration::ZERO))
                .await;
        }
        let stats = cache.stats();
        assert_eq!(stats.entries, 3);
        assert!(stats.bytes <= budget);
        cache
            .get_or_fetch(key("/e"), counting(&calls, StatusCode::OK, Duration::ZERO))
            .await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            6,
            "over budget: served, not kept"
        );
    }

    #[tokio::test]
    async fn password_invalidation_covers_kept_and_in_flight() {
        let cache = AnswerCache::new(Duration::from_secs(60), DEFAULT_MAX_BYTES);
        let calls = Arc::new(AtomicUsize::new(0));
        for path in [
            "/openstack/latest/password",
            "/openstack/2013-04-04/password/",
            "/openstack/latest/meta_data.json",
        ] {
            cache
                .get_or_fetch(key(path), counting(&calls, StatusCode::OK, Duration::ZERO))
                .await;
        }
        // Another instance's password stays.
        let other = CacheKey {
            instance: uuid::Uuid::from_u128(2),
            ..key("/openstack/latest/password")
        };
        cache
            .get_or_fetch(
                other.clone(),
                counting(&calls, StatusCode::OK, Duration::ZERO),
            )
            .await;
        // One in flight while the POST lands: its answer is not kept.
        let slow = {
            let cache = cache.clone();
            let fetch = counting(&calls, StatusCode::OK, Duration::from_millis(100));
            tokio::spawn(async move {
                cache
                    .get_or_fetch(key("/openstack/latest/password?x=1"), fetch)
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        cache.invalidate_password(&uuid::Uuid::from_u128(1));
        slow.await.unwrap();
        assert_eq!(
            cache.stats().entries,
            2,
            "meta_data.json and the other instance's password"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        cache
            .get_or_fetch(other, counting(&calls, StatusCode::OK, Duration::ZERO))
            .await;
        cache
            .get_or_fetch(
                key("/openstack/latest/password"),
                counting(&calls, StatusCode::OK, Duration::ZERO),
            )
            .await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            6,
            "only the invalidated one is fetched again"
        );
    }
}
