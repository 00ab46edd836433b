//! `serve --metrics-listen ADDR:PORT`: the Prometheus exposition.
//!
//! - `collect`: renders, at each scrape, what the layers recorded into
//!   [`Metrics`](crate::metrics::Metrics) and what is read live (the
//!   datapath's counters, the registry's size, nova's cache), every name
//!   prefixed `metadata_redirector_`.
//! - `http`: the listener (`GET /metrics`), bound where the operator says.
//!
//! The live values come through [`LiveFn`], which serve.rs builds: the
//! exporter knows no other layer, and no layer knows the exporter.
pub mod collect;
pub mod http;

use std::{collections::HashSet, sync::Arc};

/// What is read at each scrape rather than recorded as it happens.
#[derive(Clone, Debug, Default)]
pub struct Live {
    /// The datapath's counters by name, summed over CPUs (None when the
    /// map could not be read).
    pub datapath: Option<Vec<(&'static str, u64)>>,
    pub ports_attached: u64,
    pub store_instances: u64,
    pub store_ports: u64,
    /// Instances with at least one registered port: the tokenless counts of
    /// any other are dropped, so that series stays bounded.
    pub instances_with_ports: HashSet<uuid::Uuid>,
    /// Guest requests held by `?wait_for_change=true`, all ports.
    pub watches_held: u64,
    /// nova mode only.
    pub nova: Option<NovaLive>,
    /// `--discover` only.
    pub discovery: Option<DiscoveryLive>,
}

/// What `--discover libvirt` sees now.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiscoveryLive {
    /// Connected to libvirt (false: retrying, ports stay as last seen).
    pub connected: bool,
    /// Running domains seen, served or not.
    pub domains_seen: u64,
    /// Ports discovery registered.
    pub ports_owned: u64,
}

/// nova's counters (nova mode).
#[derive(Clone, Copy, Debug, Default)]
pub struct NovaLive {
    pub upstream_requests: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_coalesced: u64,
    /// Answers served past their freshness because nova failed.
    pub cache_stale_served: u64,
    pub cache_entries: u64,
    pub cache_bytes: u64,
}

pub type LiveFn = Arc<dyn Fn() -> Live + Send + Sync>;
