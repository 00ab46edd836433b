//! What the daemon counts while it serves, kept where the layers can record
//! into it cheaply: each thread counts in tables of its own (`per_thread`),
//! summed when read, so the server's threads never pull a count's cache
//! line from each other's cores; no shared lock on the request path, and no
//! allocation but a thread's first (the one map, tokenless requests per
//! instance, is one per thread behind a lock only a scrape contends for,
//! and allocates the first time the thread sees an instance).
//!
//! Layers hold an `Arc<Metrics>` and call its `record_*` methods; they never
//! see how the numbers are exposed. `exporter/` reads them (with what it
//! reads from the datapath and the registry at scrape time) and renders the
//! Prometheus text format.
//!
//! A bottom layer like `state`: it depends on no other module of the daemon.
pub mod histogram;
pub mod per_thread;
pub mod requests;
pub mod tokenless;

use std::time::Duration;

pub use histogram::Histogram;
pub use per_thread::Counter;
pub use requests::{RequestCounts, Tree};
pub use tokenless::TokenlessCounts;

/// Which backend answers guests (a label on the request counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendLabel {
    Local,
    Nova,
}

impl BackendLabel {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendLabel::Local => "local",
            BackendLabel::Nova => "nova",
        }
    }
}

/// Everything recorded on the request path and by the reconciler.
#[derive(Debug)]
pub struct Metrics {
    pub backend: BackendLabel,
    /// Guest requests answered, by tree and status code.
    pub requests: RequestCounts,
    /// Guest-facing latency (request in, answer ready), one per tree.
    pub guest_latency: [Histogram; Tree::COUNT],
    /// Time nova-api-metadata took for a forwarded request (nova mode).
    pub upstream_latency: Histogram,
    /// Requests refused with 429 (over the port's request rate).
    pub rate_limited: Counter,
    /// IMDSv2 tokens minted.
    pub tokens_minted: Counter,
    /// EC2 requests answered without a token, per instance.
    pub tokenless: TokenlessCounts,
    /// Time one tap took to attach (port entry and program).
    pub attach_latency: Histogram,
}

impl Metrics {
    pub fn new(backend: BackendLabel) -> Self {
        Self {
            backend,
            requests: RequestCounts::default(),
            guest_latency: Default::default(),
            upstream_latency: Histogram::default(),
            rate_limited: Counter::default(),
            tokens_minted: Counter::default(),
            tokenless: TokenlessCounts::default(),
            attach_latency: Histogram::default(),
        }
    }

    /// One guest request answered with `status` after `elapsed`.
    pub fn record_request(&self, tree: Tree, status: u16, elapsed: Duration) {
        self.requests.add(tree, status);
        self.guest_latency[tree as usize].observe(elapsed);
        if status == 429 {
            self.rate_limited.add(1);
        }
    }

    pub fn record_token_minted(&self) {
        self.tokens_minted.add(1);
    }

    pub fn record_tokenless(&self, instance: uuid::Uuid) {
        self.tokenless.add(instance);
    }

    pub fn record_upstream(&self, elapsed: Duration) {
        self.upstream_latency.observe(elapsed);
    }

    pub fn record_attach(&self, elapsed: Duration) {
        self.attach_latency.observe(elapsed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_lands_in_its_tree_status_and_latency_and_429s_are_counted() {
        let metrics = Metrics::new(BackendLabel::Local);
        metrics.record_request(Tree::Ec2, 200, Duration::from_micros(300));
        metrics.record_request(Tree::Ec2, 429, Duration::from_micros(10));
        metrics.record_request(Tree::OpenStack, 404, Duration::from_millis(2));
        assert_eq!(metrics.requests.get(Tree::Ec2, 200), 1);
        assert_eq!(metrics.requests.get(Tree::Ec2, 429), 1);
        assert_eq!(metrics.requests.get(Tree::OpenStack, 404), 1);
        assert_eq!(metrics.requests.get(Tree::Token, 200), 0);
        assert_eq!(metrics.rate_limited.get(), 1);
        assert_eq!(
            metrics.guest_latency[Tree::Ec2 as usize].snapshot().count,
            2
        );
        assert_eq!(
            metrics.guest_latency[Tree::OpenStack as usize]
                .snapshot()
                .count,
            1
        );
    }
}
