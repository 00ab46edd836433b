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
//! - Kept: 200 and 404 answers (see `Answer::is_cacheable`), fresh for the
//!   expiration time counted from when the answer arrived.
//! - Stale if error (`--stale-if-error`): a kept answer stays in memory up
//!   to that limit; when the upstream request for its key fails (nova
//!   unreachable, too slow, or a 5xx) the guest gets it, with `Age`. Only
//!   GETs come here, and the key holds the instance: never for a POST, never
//!   another instance's answer.
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
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{
    FutureExt as _,
    future::{BoxFuture, Shared},
};
use hyper::StatusCode;
use tracing::{info, warn};

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
    /// Path and query, as the guest sent them (less the watch parameters).
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

/// A kept answer and when it arrived.
struct Kept {
    answer: Answer,
    fetched_at: Instant,
    size: usize,
}

enum Slot {
    Ready(Kept),
    /// One upstream request in flight; `flight` tells it apart from a later
    /// one for the same key, so a result that was invalidated while in
    /// flight is not stored. `previous` is the answer it replaces, kept for
    /// stale-if-error.
    Pending {
        flight: u64,
        answer: SharedAnswer,
        previous: Option<Kept>,
    },
}

impl Slot {
    fn kept_size(&self) -> usize {
        match self {
            Slot::Ready(kept)
            | Slot::Pending {
                previous: Some(kept),
                ..
            } => kept.size,
            Slot::Pending { previous: None, .. } => 0,
        }
    }
}

#[derive(Default)]
struct Entries {
    slots: HashMap<CacheKey, Slot>,
    bytes: usize,
    next_flight: u64,
    next_sweep: Option<Instant>,
}

impl Entries {
    fn remove(&mut self, key: &CacheKey) -> Option<Slot> {
        let slot = self.slots.remove(key)?;
        self.bytes -= slot.kept_size();
        Some(slot)
    }

    /// Drops kept answers older than `keep`.
    fn sweep(&mut self, now: Instant, keep: Duration) {
        let mut freed = 0;
        self.slots.retain(|_, slot| match slot {
            Slot::Ready(kept) if now.duration_since(kept.fetched_at) >= keep => {
                freed += kept.size;
                false
            }
            _ => true,
        });
        self.bytes -= freed;
    }
}

/// Counters for `status` and tests (and the metrics hook: the `ops`
/// branch's Prometheus exporter reads these same fields).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Answered from a kept answer.
    pub hits: u64,
    /// Joined an upstream request already in flight.
    pub coalesced: u64,
    /// Started an upstream request.
    pub misses: u64,
    /// Answered from a kept answer past its freshness because nova failed
    /// (`--stale-if-error`).
    pub stale_served: u64,
    pub entries: usize,
    pub bytes: usize,
}

/// How long answers are fresh, and how long they may serve when nova fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachePolicy {
    /// Fresh for this long (`--metadata-cache-expiration`); zero: never.
    pub ttl: Duration,
    /// Served while nova fails, up to this age (`--stale-if-error`); zero: never.
    pub stale_if_error: Duration,
    pub max_bytes: usize,
}

impl CachePolicy {
    /// How long a kept answer is of any use.
    fn keep(&self) -> Duration {
        self.ttl.max(self.stale_if_error)
    }
}

pub struct AnswerCache {
    policy: CachePolicy,
    entries: Mutex<Entries>,
    hits: AtomicU64,
    coalesced: AtomicU64,
    misses: AtomicU64,
    stale_served: AtomicU64,
    /// Set while stale answers are being served: logged once per outage.
    in_outage: AtomicBool,
}

impl AnswerCache {
    #[cfg(test)]
    pub fn new(ttl: Duration, max_bytes: usize) -> Arc<Self> {
        Self::with_policy(CachePolicy {
            ttl,
            stale_if_error: Duration::ZERO,
            max_bytes,
        })
    }

    pub fn with_policy(policy: CachePolicy) -> Arc<Self> {
        Arc::new(Self {
            policy,
            entries: Mutex::default(),
            hits: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            stale_served: AtomicU64::new(0),
            in_outage: AtomicBool::new(false),
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
        self.lookup(key, fetch, false).await
    }

    /// Asks nova again for `key` even if a fresh answer is kept (joining a
    /// request already in flight), and keeps what it answers: a watch's
    /// poll, one per key per interval however many guests watch.
    pub async fn refresh<F, Fut>(self: &Arc<Self>, key: CacheKey, fetch: F) -> Answer
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Answer> + Send + 'static,
    {
        self.lookup(key, fetch, true).await
    }

    async fn lookup<F, Fut>(self: &Arc<Self>, key: CacheKey, fetch: F, force: bool) -> Answer
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Answer> + Send + 'static,
    {
        let in_flight = {
            let mut entries = self.entries.lock().unwrap();
            match entries.slots.get(&key) {
                Some(Slot::Ready(kept))
                    if !force && kept.fetched_at.elapsed() < self.policy.ttl =>
                {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return kept.answer.clone();
                }
                Some(Slot::Pending { answer, .. }) => {
                    self.coalesced.fetch_add(1, Ordering::Relaxed);
                    answer.clone()
                }
                _ => {
                    self.misses.fetch_add(1, Ordering::Relaxed);
                    let previous = match entries.remove(&key) {
                        Some(Slot::Ready(kept))
                            if kept.fetched_at.elapsed() < self.policy.stale_if_error =>
                        {
                            Some(kept)
                        }
                        _ => None,
                    };
                    if let Some(kept) = &previous {
                        entries.bytes += kept.size;
                    }
                    let flight = entries.next_flight;
                    entries.next_flight += 1;
                    let cache = self.clone();
                    let task_key = key.clone();
                    let upstream = fetch();
                    // `complete` needs the lock we hold, so the task cannot
                    // finish before its Pending slot is in place.
                    let task = tokio::spawn(async move {
                        let answer = upstream.await;
                        cache.complete(&task_key, flight, answer)
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
                            previous,
                        },
                    );
                    answer
                }
            }
        };
        let answer = in_flight.await;
        if answer.age.is_some() {
            self.stale_served.fetch_add(1, Ordering::Relaxed);
        }
        answer
    }

    /// Ends flight `flight`: keeps its answer if it is still the one wanted,
    /// or, when nova failed, answers with the previous one if it is young
    /// enough (and keeps that for the next failure).
    fn complete(&self, key: &CacheKey, flight: u64, answer: Answer) -> Answer {
        let mut entries = self.entries.lock().unwrap();
        match entries.slots.get(key) {
            Some(Slot::Pending {
                flight: current, ..
            }) if *current == flight => {}
            // Invalidated (or replaced) while in flight: leave it alone.
            _ => return answer,
        }
        let previous = match entries.remove(key) {
            Some(Slot::Pending { previous, .. }) => previous,
            _ => None,
        };
        let now = Instant::now();
        if answer.is_upstream_failure() {
            if let Some(kept) = previous
                && now.duration_since(kept.fetched_at) < self.policy.stale_if_error
            {
                let age = now.duration_since(kept.fetched_at).as_secs();
                let stale = kept.answer.clone().aged(age);
                self.log_outage_start();
                entries.bytes += kept.size;
                entries.slots.insert(key.clone(), Slot::Ready(kept));
                return stale;
            }
            return answer;
        }
        self.log_outage_end();
        if !answer.is_cacheable() || self.policy.keep().is_zero() {
            return answer;
        }
        let size = key.size(&answer);
        let sweep_due = entries.next_sweep.is_none_or(|at| now >= at);
        if sweep_due || entries.bytes + size > self.policy.max_bytes {
            entries.sweep(now, self.policy.keep());
            entries.next_sweep = Some(now + self.policy.keep());
        }
        if entries.bytes + size > self.policy.max_bytes {
            return answer;
        }
        entries.bytes += size;
        entries.slots.insert(
            key.clone(),
            Slot::Ready(Kept {
                answer: answer.clone(),
                fetched_at: now,
                size,
            }),
        );
        answer
    }

    fn log_outage_start(&self) {
        if !self.in_outage.swap(true, Ordering::Relaxed) {
            warn!(
                limit_secs = self.policy.stale_if_error.as_secs(),
                "nova metadata is failing: answering GETs from kept answers younger than the --stale-if-error limit, marked with Age"
            );
        }
    }

    fn log_outage_end(&self) {
        if self.in_outage.swap(false, Ordering::Relaxed) {
            info!("nova metadata answers again: stale answers stopped");
        }
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
            freed += slot.kept_size();
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
            stale_served: self.stale_served.load(Ordering::Relaxed),
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
        Answer::new(status, None, Bytes::from_static(body.as_bytes()))
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
