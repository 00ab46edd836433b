//! Per-port request rate limiting: one bucket per port slot.
//!
//! A guest may burst (cloud-init's first boot makes ~35 requests at once) and
//! then sustain `rate_per_sec`; beyond that it gets 429 with `Retry-After`,
//! and only it: buckets are independent, so a noisy guest never slows
//! another.
//!
//! A bucket is one atomic word, kept the way GCRA (the generic cell rate
//! algorithm) keeps a token bucket: not a token count and a time, but the
//! instant the bucket will be full again. At `now` such a bucket holds
//! `burst - (full_at - now) / interval` tokens, so a request passes while
//! `full_at - now <= (burst - 1) * interval`, and passing moves `full_at`
//! one interval on. Exactly the token bucket's answers, with one load and
//! one compare-and-swap per request: no lock, no float arithmetic.
//!
//! Slots are small and dense (1..=`MAX_SLOT`), so the buckets are a table
//! indexed by slot: no hashing, no map. It is allocated zeroed, so the
//! kernel backs only the pages of slots in use (512 KiB if all are), and
//! zero, a time long past, is a full bucket: a bucket that has refilled
//! needs no removing, and memory is the table's whatever guests do. A key
//! beyond 16 bits (no port has one; `check` takes any u32) gets a bucket in
//! a small map under a lock, which drops full buckets when it grows.
//!
//! Neighbouring slots are not neighbours in the table: ports get slots in
//! turn, so the guests active at once mostly have nearby slots, and their
//! connections land on either server thread. Eight buckets side by side
//! on a cache line would have the threads pull it from each other's cores
//! (the same cost as one shared bucket: ~15 ns a request measured with two
//! threads on alternate slots). `index` puts consecutive slots 128 bytes
//! apart (x86 cores fetch lines in pairs) and has a line shared only by
//! slots 4096 apart, without padding every bucket (8 MiB).
use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hyper::{
    HeaderMap, Method,
    header::{self, HeaderValue},
};

use crate::{
    backend::local::response::{self, HttpResponse},
    state::port::MAX_SLOT,
};

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

/// Buckets in the table: every 16-bit key, so every slot a port can have.
const TABLE: usize = 1 << 16;
const _: () = assert!((MAX_SLOT as usize) < TABLE);
/// The map of keys beyond the table drops full buckets once it holds this
/// many.
const PRUNE_THRESHOLD: usize = 256;

pub struct RateLimiter {
    /// Nanoseconds between two tokens (1 / rate, at least 1).
    interval: u64,
    /// How far ahead of `now` a bucket's `full_at` may be and still give a
    /// token: (burst - 1) intervals.
    tolerance: u64,
    /// The instant times are counted from: `full_at` values are nanoseconds
    /// since then (u64: 584 years).
    epoch: Instant,
    /// `full_at` per slot; 0 (or any past time) is a full bucket.
    table: Box<[AtomicU64]>,
    /// `full_at` per key beyond the table.
    beyond: Mutex<HashMap<u32, AtomicU64>>,
}

impl RateLimiter {
    /// `rate_per_sec` must be positive and `burst` at least 1 (a bucket that
    /// can never hold a whole token would refuse everything).
    pub fn new(rate_per_sec: f64, burst: u32) -> Self {
        assert!(rate_per_sec > 0.0, "rate must be positive");
        assert!(burst >= 1, "burst must be at least 1");
        // A whole number of nanoseconds: a rate's error is below one part in
        // 10^7 for any rate up to 100 per second (the float cast saturates).
        let interval = ((1e9 / rate_per_sec).round() as u64).max(1);
        Self {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst - 1)),
            epoch: Instant::now(),
            table: zeroed_table(),
            beyond: Mutex::new(HashMap::new()),
        }
    }

    pub fn from_config(config: RateLimitConfig) -> Self {
        Self::new(config.rate_per_sec, config.burst)
    }

    /// Takes one request from `key`'s bucket (`key`: the port slot) at
    /// `now` (the caller's clock read, or a test's), or says how long until
    /// one is available.
    pub fn check(&self, key: u32, now: Instant) -> Result<(), Duration> {
        // Before the epoch (a clock read older than the limiter) counts as
        // the epoch.
        let now =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        if let Ok(slot) = u16::try_from(key) {
            return self.take(&self.table[index(slot)], now);
        }
        let mut beyond = self.beyond.lock().unwrap_or_else(|p| p.into_inner());
        if beyond.len() >= PRUNE_THRESHOLD && !beyond.contains_key(&key) {
            beyond.retain(|_, full_at| full_at.load(Ordering::Relaxed) > now);
        }
        self.take(beyond.entry(key).or_default(), now)
    }

    /// One token from the bucket that is full at `full_at`, if it has one
    /// at `now`. Requests of one port on two threads race on the word: the
    /// compare-and-swap lets exactly one of them move it, and the other
    /// looks again.
    fn take(&self, full_at: &AtomicU64, now: u64) -> Result<(), Duration> {
        let mut current = full_at.load(Ordering::Relaxed);
        loop {
            // A full bucket (refilled in the past) starts from now.
            let ahead = current.saturating_sub(now);
            if ahead > self.tolerance {
                // Less than one token: the wait is until `ahead` is back
                // within the tolerance, i.e. (1 - tokens) / rate.
                return Err(Duration::from_nanos(ahead - self.tolerance));
            }
            let next = current.max(now).saturating_add(self.interval);
            match full_at.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(actual) => current = actual,
            }
        }
    }

    /// Buckets held in the map of keys beyond the table (tests): the memory
    /// that grows with keys; the table's is fixed.
    #[cfg(test)]
    pub fn beyond_held(&self) -> usize {
        self.beyond.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Where a slot's bucket is in the table: its 16 bits rotated left by 4.
/// Slots s and s + 1 are 16 words (128 bytes) apart, and the 16 words of
/// an aligned 128 bytes hold slots s + 4096 k. A bijection on 16 bits.
fn index(slot: u16) -> usize {
    usize::from(slot.rotate_left(4))
}

/// `TABLE` zeroed words, from the allocator's zeroed memory: fresh pages
/// from the kernel, backed only once a slot in them is used. Building it
/// atomic by atomic would write (and back) all 512 KiB.
fn zeroed_table() -> Box<[AtomicU64]> {
    let table = Box::<[AtomicU64]>::new_zeroed_slice(TABLE);
    // SAFETY: an AtomicU64 is a u64 in memory, and all-zero bytes are the
    // u64 0, a valid value.
    unsafe { table.assume_init() }
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
        // Other slots, 4097 (which shares slot 1's cache line, not its
        // bucket), and keys beyond the table (which share its map's lock).
        for key in [2, 4097, MAX_SLOT, TABLE as u32, TABLE as u32 + 1] {
            for _ in 0..3 {
                assert_eq!(limiter.check(key, now), Ok(()), "key {key}");
            }
            assert!(limiter.check(key, now).is_err(), "key {key}");
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
    fn idle_buckets_beyond_the_table_are_pruned() {
        let limiter = RateLimiter::new(100.0, 2);
        let start = Instant::now();
        let beyond = |n: u32| TABLE as u32 + n;
        // Fill the map of keys beyond the table up to the threshold.
        for n in 0..PRUNE_THRESHOLD as u32 {
            limiter.check(beyond(n), start).unwrap();
        }
        assert_eq!(limiter.beyond_held(), PRUNE_THRESHOLD);
        // A second later every one of them is full again: a new key sweeps
        // them out.
        let later = start + Duration::from_secs(1);
        limiter
            .check(beyond(PRUNE_THRESHOLD as u32), later)
            .unwrap();
        assert_eq!(limiter.beyond_held(), 1);
        // A key that still owes tokens survives a sweep.
        for n in 1..PRUNE_THRESHOLD as u32 {
            limiter.check(beyond(n), later).unwrap();
        }
        limiter
            .check(beyond(PRUNE_THRESHOLD as u32 + 1), later)
            .unwrap();
        assert_eq!(limiter.beyond_held(), PRUNE_THRESHOLD + 1, "none full yet");
    }

    #[test]
    fn memory_stays_bounded_however_many_keys_come_and_go() {
        let limiter = RateLimiter::new(1000.0, 5);
        let mut now = Instant::now();
        // 100,000 distinct keys, slots and beyond, each used once, one every
        // 10 ms: a bucket is full again 1 ms after its one request.
        for n in 0..100_000u32 {
            limiter.check(n.wrapping_mul(7919), now).unwrap();
            now += Duration::from_millis(10);
        }
        assert!(
            limiter.beyond_held() <= PRUNE_THRESHOLD,
            "{}",
            limiter.beyond_held()
        );
        assert_eq!(limiter.table.len(), 1 << 16);
    }

    #[test]
    fn every_slot_has_a_bucket_of_its_own_away_from_its_neighbours() {
        let mut seen = vec![false; TABLE];
        for slot in 0..=u16::MAX {
            let at = index(slot);
            assert!(!seen[at], "slot {slot} shares {at}");
            seen[at] = true;
            // Neighbours are on different 128-byte blocks.
            assert_ne!(at / 16, index(slot.wrapping_add(1)) / 16, "slot {slot}");
        }
    }

    #[test]
    fn a_bucket_refilled_in_the_past_is_a_new_one() {
        let limiter = RateLimiter::new(2.0, 3);
        let start = Instant::now();
        limiter.check(5, start).unwrap();
        // A minute later: full (3), not 1 + 120 tokens' worth.
        let later = start + Duration::from_secs(60);
        for _ in 0..3 {
            limiter.check(5, later).unwrap();
        }
        let wait = limiter.check(5, later).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
    }

    #[test]
    fn a_clock_read_before_the_limiter_counts_as_its_start() {
        let before = Instant::now();
        let limiter = RateLimiter::new(1.0, 1);
        limiter.check(3, before).unwrap();
        assert!(limiter.check(3, before).is_err());
    }

    #[test]
    fn two_threads_on_one_port_share_its_budget_exactly() {
        // Both server threads may serve one port: every token is taken once.
        let limiter = RateLimiter::new(1.0, 10_000);
        let now = Instant::now();
        let passed: usize = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| {
                        (0..20_000)
                            .filter(|_| limiter.check(9, now).is_ok())
                            .count()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).sum()
        });
        assert_eq!(passed, 10_000);
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
