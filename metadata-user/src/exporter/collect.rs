//! One scrape: every metric, rendered with prometheus-client's encoders
//! from what [`Metrics`] holds and what [`Live`] reads now.
use std::sync::{Arc, atomic::Ordering};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use super::{Live, LiveFn};
use crate::metrics::{Histogram, Metrics, Tree};

/// Every metric's name starts with this.
pub const PREFIX: &str = "metadata_redirector";

/// The content type and body of one scrape. `accept` is the request's
/// Accept header: OpenMetrics when the scraper asks for it (Prometheus
/// does), the classic Prometheus text format (0.0.4) otherwise.
pub fn render(metrics: &Arc<Metrics>, live: &LiveFn, accept: &str) -> (&'static str, String) {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(Scrape {
        metrics: metrics.clone(),
        live: live(),
    }));
    let mut body = String::with_capacity(16 * 1024);
    if accept.contains("application/openmetrics-text") {
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut body, &registry);
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body,
        )
    } else {
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut body, &registry);
        (
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            body,
        )
    }
}

#[derive(Debug)]
struct Scrape {
    metrics: Arc<Metrics>,
    live: Live,
}

type Result = std::result::Result<(), std::fmt::Error>;

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result {
    let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn histogram_series(
    family: &mut prometheus_client::encoding::MetricEncoder,
    histogram: &Histogram,
) -> Result {
    let snapshot = histogram.snapshot();
    family.encode_histogram::<NoLabelSet>(
        snapshot.sum_seconds,
        snapshot.count,
        &snapshot.buckets,
        None,
    )
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result {
        let metrics = &self.metrics;
        let live = &self.live;

        let mut info = encoder.encode_descriptor(
            "build",
            "The daemon's version (always 1).",
            None,
            MetricType::Info,
        )?;
        info.encode_info(&[("version", env!("CARGO_PKG_VERSION"))])?;

        if let Some(datapath) = &live.datapath {
            let mut family = encoder.encode_descriptor(
                "datapath_events",
                "What the eBPF programs did, by reason, summed over CPUs: packets caught, \
                 answered, passed or dropped; flows_closed and flows_reset count flows.",
                None,
                MetricType::Counter,
            )?;
            for (reason, value) in datapath {
                ConstCounter::new(*value).encode(family.encode_family(&[("reason", *reason)])?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "requests",
            "Guest requests answered, by tree (openstack, ec2, token), status code and backend.",
            None,
            MetricType::Counter,
        )?;
        let backend = metrics.backend.as_str();
        for (tree, code, count) in metrics.requests.nonzero() {
            let code = code.to_string();
            let labels = [
                ("tree", tree.as_str()),
                ("code", code.as_str()),
                ("backend", backend),
            ];
            ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "request_duration_seconds",
            "Guest-facing time from a request's head to its answer, by tree.",
            None,
            MetricType::Histogram,
        )?;
        for tree in Tree::ALL {
            histogram_series(
                &mut family.encode_family(&[("tree", tree.as_str())])?,
                &metrics.guest_latency[tree as usize],
            )?;
        }

        counter(
            &mut encoder,
            "rate_limited_requests",
            "Guest requests refused with 429 (the port was over its request rate).",
            metrics.rate_limited.load(Ordering::Relaxed),
        )?;
        counter(
            &mut encoder,
            "tokens_minted",
            "IMDSv2 session tokens issued.",
            metrics.tokens_minted.load(Ordering::Relaxed),
        )?;
        let mut family = encoder.encode_descriptor(
            "ec2_tokenless_requests",
            "EC2 requests answered without an IMDSv2 token, per instance (AWS's \
             MetadataNoToken): the guests that still use IMDSv1.",
            None,
            MetricType::Counter,
        )?;
        for (instance, count) in metrics
            .tokenless
            .retain_and_read(&live.instances_with_ports)
        {
            let instance = instance.to_string();
            ConstCounter::new(count)
                .encode(family.encode_family(&[("instance", instance.as_str())])?)?;
        }

        histogram_series(
            &mut encoder.encode_descriptor(
                "tap_attach_duration_seconds",
                "Time to attach the datapath to one tap (port entry and program).",
                None,
                MetricType::Histogram,
            )?,
            &metrics.attach_latency,
        )?;
        gauge(
            &mut encoder,
            "ports_attached",
            "Registered taps the datapath is attached to now.",
            live.ports_attached,
        )?;
        gauge(
            &mut encoder,
            "store_instances",
            "Instance documents in the store.",
            live.store_instances,
        )?;
        gauge(
            &mut encoder,
            "store_ports",
            "Ports registered in the store.",
            live.store_ports,
        )?;
        gauge(
            &mut encoder,
            "watches_held",
            "Guest requests held waiting for a change (?wait_for_change=true), all ports.",
            live.watches_held,
        )?;
        if let Some(discovery) = &live.discovery {
            gauge(
                &mut encoder,
                "discovery_connected",
                "1 while --discover is connected to its source (libvirt); 0 while it retries.",
                u64::from(discovery.connected),
            )?;
            gauge(
                &mut encoder,
                "discovery_domains",
                "Running domains discovery sees (served or not).",
                discovery.domains_seen,
            )?;
            gauge(
                &mut encoder,
                "discovery_ports",
                "Ports discovery registered.",
                discovery.ports_owned,
            )?;
        }

        if let Some(nova) = &live.nova {
            histogram_series(
                &mut encoder.encode_descriptor(
                    "nova_request_duration_seconds",
                    "Time nova-api-metadata took to answer a forwarded request.",
                    None,
                    MetricType::Histogram,
                )?,
                &metrics.upstream_latency,
            )?;
            counter(
                &mut encoder,
                "nova_requests",
                "Requests sent to nova-api-metadata (including ones that got no answer).",
                nova.upstream_requests,
            )?;
            let mut family = encoder.encode_descriptor(
                "nova_cache_lookups",
                "GET requests for nova by how the cache served them: hit (a kept answer), \
                 coalesced (joined a request in flight), miss (asked nova).",
                None,
                MetricType::Counter,
            )?;
            for (result, value) in [
                ("hit", nova.cache_hits),
                ("coalesced", nova.cache_coalesced),
                ("miss", nova.cache_misses),
            ] {
                ConstCounter::new(value).encode(family.encode_family(&[("result", result)])?)?;
            }
            counter(
                &mut encoder,
                "nova_stale_answers",
                "GET answers served from a kept answer past its freshness because nova failed \
                 (--stale-if-error).",
                nova.cache_stale_served,
            )?;
            gauge(
                &mut encoder,
                "nova_cache_entries",
                "Answers the nova cache holds.",
                nova.cache_entries,
            )?;
            gauge(
                &mut encoder,
                "nova_cache_bytes",
                "Bytes the nova cache holds (bodies and bookkeeping).",
                nova.cache_bytes,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, time::Duration};

    use super::*;
    use crate::{
        exporter::{DiscoveryLive, NovaLive},
        metrics::BackendLabel,
    };

    fn scrape(metrics: &Arc<Metrics>, live: Live, accept: &str) -> (&'static str, String) {
        let live: LiveFn = Arc::new(move || live.clone());
        render(metrics, &live, accept)
    }

    #[test]
    fn every_series_is_prefixed_and_labelled() {
        let metrics = Arc::new(Metrics::new(BackendLabel::Nova));
        let instance = uuid::Uuid::from_u128(7);
        metrics.record_request(Tree::Ec2, 200, Duration::from_micros(200));
        metrics.record_request(Tree::Token, 429, Duration::from_micros(20));
        metrics.record_tokenless(instance);
        metrics.record_tokenless(uuid::Uuid::from_u128(8)); // no port: dropped
        metrics.record_upstream(Duration::from_millis(3));
        metrics.record_attach(Duration::from_millis(15));
        let live = Live {
            datapath: Some(vec![("caught", 5), ("replied", 4)]),
            ports_attached: 2,
            store_instances: 3,
            store_ports: 2,
            instances_with_ports: HashSet::from([instance]),
            watches_held: 3,
            nova: Some(NovaLive {
                cache_hits: 9,
                cache_stale_served: 4,
                ..NovaLive::default()
            }),
            discovery: Some(DiscoveryLive {
                connected: true,
                domains_seen: 5,
                ports_owned: 6,
            }),
        };
        let (content_type, text) = scrape(&metrics, live, "*/*");
        assert!(content_type.starts_with("text/plain; version=0.0.4"));
        for line in text.lines() {
            let name = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
                .unwrap_or(line);
            assert!(name.starts_with("metadata_redirector_"), "{line}");
        }
        for expected in [
            "metadata_redirector_datapath_events_total{reason=\"caught\"} 5",
            "metadata_redirector_requests_total{tree=\"ec2\",code=\"200\",backend=\"nova\"} 1",
            "metadata_redirector_requests_total{tree=\"token\",code=\"429\",backend=\"nova\"} 1",
            "metadata_redirector_rate_limited_requests_total 1",
            "metadata_redirector_ec2_tokenless_requests_total{instance=\"00000000-0000-0000-0000-000000000007\"} 1",
            "metadata_redirector_request_duration_seconds_bucket{tree=\"ec2\",le=\"0.00025\"} 1",
            "metadata_redirector_tap_attach_duration_seconds_count 1",
            "metadata_redirector_nova_request_duration_seconds_count 1",
            "metadata_redirector_nova_cache_lookups_total{result=\"hit\"} 9",
            "metadata_redirector_ports_attached 2",
            "metadata_redirector_store_instances 3",
            "metadata_redirector_watches_held 3",
            "metadata_redirector_nova_stale_answers_total 4",
            "metadata_redirector_discovery_connected 1",
            "metadata_redirector_discovery_domains 5",
            "metadata_redirector_discovery_ports 6",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(!text.contains("00000000-0000-0000-0000-000000000008"));

        let (content_type, text) = scrape(
            &metrics,
            Live::default(),
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        );
        assert!(content_type.starts_with("application/openmetrics-text"));
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            !text.contains("nova_"),
            "nova's series only in nova mode:\n{text}"
        );
        assert!(
            !text.contains("discovery_"),
            "discovery's series only with --discover:\n{text}"
        );
    }
}
