//! Per-port request rate limiting: one token bucket per port slot.
//!
//! A guest may burst (cloud-init's first boot makes ~35 requests at once) and
//! then sustain `rate_per_sec`; beyond that it gets 429 with `Retry-After`,
//! and only it: buckets are independent, so a noisy guest never slows
//! another. The map is split into shards, each behind its own short mutex,
//! so concurrent guests rarely contend. Memory stays bounded: a bucket that
//! has refilled completely is indistinguishable from no bucket, so shards
//! drop such entries when they grow past a threshold.
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use hyper::{
    HeaderMap, Method,
    header::{self, HeaderValue},
};

use crate::backend::local::response::{self, HttpResponse};

/// Rate limit settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimitConfig {
    /// Sustained requests per second per port.
    pub rate_per_sec: f64,
    /// Requests a port may make at once after being idle.
    pub burst: u32,
}

impl Default for RateLimitConfig {
    /// Room for cloud-init's first boot (~35 requests) three times over, and
    /// a sustained rate no well-behaved agent reaches.
    fn default() -> Self {
        Self {
            rate_per_sec: 20.0,
            burst: 100,
        }
    }
}

const SHARDS: usize = 16;
/// A shard prunes full buckets once it holds this many entries.
const PRUNE_THRESHOLD: usize = 256;

pub struct RateLimiter {
    rate_per_sec: f64,
    burst: f64,
    shards: [Mutex<HashMap<u32, Bucket>>; SHARDS],
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// `rate_per_sec` must be positive and `burst` at least 1 (a bucket that
    /// can never hold a whole token would refuse everything).
    pub fn new(rate_per_sec: f64, burst: u32) -> Self {
        assert!(rate_per_sec > 0.0, "rate must be positive");
        assert!(burst >= 1, "burst must be at least 1");
        Self {
            rate_per_sec,
            burst: f64::from(burst),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }

    pub fn from_config(config: RateLimitConfig) -> Self {
        Self::new(config.rate_per_sec, config.burst)
    }

    /// Takes one request from `key`'s bucket (`key`: the port slot) at
    /// `now` (the caller's clock read, or a test's), or says how long until
    /// one is available.
    pub fn check(&self, key: u32, now: Instant) -> Result<(), Duration> {
        let mut shard = self.shards[key as usize % SHARDS]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if shard.len() >= PRUNE_THRESHOLD && !shard.contains_key(&key) {
            shard.retain(|_, bucket| self.refilled(bucket, now) < self.burst);
        }
        let bucket = shard.entry(key).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        bucket.tokens = self.refilled(bucket, now);
        bucket.updated = now.max(bucket.updated);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.rate_per_sec;
            Err(Duration::from_secs_f64(wait))
        }
    }

    /// Drops every bucket that has refilled completely. `check` prunes
    /// crowded shards on its own; this sweeps all of them (tests).
    #[cfg(test)]
    pub fn prune(&self) {
        let now = Instant::now();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.retain(|_, bucket| self.refilled(bucket, now) < self.burst);
        }
    }

    /// Buckets held (tests).
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        (bucket.tokens + elapsed * self.rate_per_sec).min(self.burst)
    }
}

/// The 429 for a refused request: webob's page (chosen by the request's
/// Accept header, like every other error we send) with `Retry-After` in
/// whole seconds, rounded up so a client that obeys it is served.
pub fn too_many_requests(
    retry_after: Duration,
    method: &Method,
    request_headers: &HeaderMap,
) -> HttpResponse {
    let mut response = response::too_many_requests(method, request_headers);
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_with_retry_after() {
        let limiter = RateLimiter::new(20.0, 100);
        let start = Instant::now();
        for request in 0..100 {
            assert_eq!(limiter.check(7, start), Ok(()), "request {request}");
        }
        let wait = limiter.check(7, start).unwrap_err();
        // One token comes back every 1/20 s.
        assert!((wait.as_secs_f64() - 0.05).abs() < 1e-9, "{wait:?}");
    }

    #[test]
    fn refills_at_the_configured_rate() {
        let limiter = RateLimiter::new(10.0, 5);
        let start = Instant::now();
        for _ in 0..5 {
            limiter.check(1, start).unwrap();
        }
        assert!(limiter.check(1, start).is_err());
        // 0.35 s later: 3.5 tokens back, so 3 requests pass.
        let later = start + Duration::from_millis(350);
        for _ in 0..3 {
            assert_eq!(limiter.check(1, later), Ok(()));
        }
        let wait = limiter.check(1, later).unwrap_err();
        assert!((wait.as_secs_f64() - 0.05).abs() < 1e-9, "{wait:?}");
        // Never more than the burst, however long the idle time.
        let much_later = later + Duration::from_secs(3600);
        for _ in 0..5 {
            limiter.check(1, much_later).unwrap();
        }
        assert!(limiter.check(1, much_later).is_err());
    }

    #[test]
    fn a_noisy_port_does_not_drain_another() {
        let limiter = RateLimiter::new(1.0, 3);
        let now = Instant::now();
        for _ in 0..3 {
            limiter.check(1, now).unwrap();
        }
        assert!(limiter.check(1, now).is_err());
        // Slot 17 shares slot 1's shard, not its bucket.
        for _ in 0..3 {
            assert_eq!(limiter.check(17, now), Ok(()));
        }
    }

    #[test]
    fn cloud_init_first_boot_fits_the_default() {
        let limiter = RateLimiter::from_config(RateLimitConfig::default());
        let now = Instant::now();
        for _ in 0..35 {
            assert_eq!(limiter.check(0, now), Ok(()));
        }
    }

    #[test]
    fn idle_buckets_are_pruned() {
        let limiter = RateLimiter::new(100.0, 2);
        let start = Instant::now();
        // Fill one shard (keys ≡ 0 mod SHARDS) past the threshold.
        for n in 0..PRUNE_THRESHOLD as u32 {
            limiter.check(n * SHARDS as u32, start).unwrap();
        }
        assert_eq!(limiter.tracked(), PRUNE_THRESHOLD);
        // A second later every one of them is full again: a new key in that
        // shard sweeps them out.
        let later = start + Duration::from_secs(1);
        limiter
            .check(PRUNE_THRESHOLD as u32 * SHARDS as u32, later)
            .unwrap();
        assert_eq!(limiter.tracked(), 1);
        limiter.prune();
        assert_eq!(limiter.tracked(), 1, "the new bucket is not full yet");
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let headers = HeaderMap::new();
        let response = too_many_requests(Duration::from_millis(50), &Method::GET, &headers);
        assert_eq!(response.status(), hyper::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let response = too_many_requests(Duration::from_millis(2001), &Method::GET, &headers);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        let response = too_many_requests(Duration::from_secs(2), &Method::GET, &headers);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }
}
