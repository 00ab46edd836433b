//! Operating the daemon: the Prometheus endpoint moves with guest requests
//! (parsed by prometheus_client's own parsers), the JSON log parses line by
//! line, and the audit log records every access to a secret without ever
//! containing one. In nova mode, nova's time and the cache are counted.
use std::{collections::BTreeMap, time::Duration};

use base64::Engine as _;
use mdr_harness::{
    Daemon, FakeNova, FakeNovaConfig, Guest, GuestConfig, Host, Instance, Request, TenantNet,
    fixtures::{GUEST_ADDR, GUEST_MAC},
    names::random_u64,
    nova::NovaInstance,
    python,
};
use serde_json::Value;

const METRICS: &str = "127.0.0.1:9640";

/// A scrape: (name, labels) -> value, and the families' types.
struct Scrape {
    samples: BTreeMap<(String, BTreeMap<String, String>), f64>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn take(host: &Host) -> Self {
        let url = format!("http://{METRICS}/metrics");
        let out = python::run(
            host,
            "prometheus_scrape.py",
            &[&url],
            Duration::from_secs(20),
        )
        .expect("the endpoint answers and both parsers accept it");
        assert!(
            out["content_type"]
                .as_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4"),
            "{out}"
        );
        assert!(
            out["openmetrics_content_type"]
                .as_str()
                .unwrap()
                .starts_with("application/openmetrics-text"),
            "{out}"
        );
        let mut samples = BTreeMap::new();
        for sample in out["samples"].as_array().unwrap() {
            let name = sample["name"].as_str().unwrap().to_owned();
            assert!(name.starts_with("metadata_redirector_"), "{name}");
            let labels = sample["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            samples.insert((name, labels), sample["value"].as_f64().unwrap());
        }
        let types = out["types"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        Self { samples, types }
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .get(&(name.to_owned(), labels))
            .copied()
            .unwrap_or(0.0)
    }
}

fn secret_instance() -> (Instance, String) {
    let mut instance = Instance::sample("audited");
    let user_data = format!("#cloud-config\n# user-data-secret-{:016x}\n", random_u64());
    instance.doc["user_data"] = base64::engine::general_purpose::STANDARD
        .encode(&user_data)
        .into();
    (instance, user_data)
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn metrics_move_with_guest_requests_and_logs_audit_without_secrets() {
    let host = Host::new().unwrap();
    let net = TenantNet::with_router_and_decoy(&host).unwrap();
    let guest = Guest::new(&net, GuestConfig::new(GUEST_ADDR, GUEST_MAC)).unwrap();
    let (mut config, dir) = Daemon::fresh_config().unwrap();
    let config_file = dir.join("config.toml");
    // A burst of 40 and a slow refill: the flood below meets 429s.
    std::fs::write(
        &config_file,
        format!(
            "metrics_listen = \"{METRICS}\"\nlog_format = \"json\"\n\
             rate_limit_burst = 40\nrate_limit_per_sec = 0.5\n"
        ),
    )
    .unwrap();
    config.extra_args = vec!["--config".into(), config_file.to_string_lossy().into()];
    // Every level: no debug line may carry a secret either.
    config.env = vec![(
        "RUST_LOG".into(),
        "debug,netlink_packet_route=error,netlink_proto=error".into(),
    )];
    let daemon = Daemon::start_with(&host, config, Some(dir)).unwrap();
    let (instance, user_data) = secret_instance();
    daemon.register(&guest, &instance).unwrap();
    guest.wait_served(&instance.uuid).unwrap();

    let before = Scrape::take(&host);
    assert_eq!(before.get("metadata_redirector_ports_attached", &[]), 1.0);
    assert_eq!(before.get("metadata_redirector_store_instances", &[]), 1.0);
    assert_eq!(before.get("metadata_redirector_store_ports", &[]), 1.0);
    assert!(before.get("metadata_redirector_tap_attach_duration_seconds_count", &[]) >= 1.0);
    assert_eq!(
        before
            .types
            .get("metadata_redirector_request_duration_seconds")
            .map(String::as_str),
        Some("histogram")
    );

    // The guest's requests: three OpenStack documents, user data in both
    // trees, two EC2 keys without a token, a token and one key with it, a
    // password set and read.
    for _ in 0..3 {
        assert_eq!(
            guest
                .http_get("/openstack/latest/meta_data.json")
                .unwrap()
                .status,
            200
        );
    }
    let reply = guest.http_get("/openstack/latest/user_data").unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, user_data.as_str())
    );
    assert_eq!(guest.http_get("/latest/user-data").unwrap().status, 200);
    for _ in 0..2 {
        assert_eq!(
            guest
                .http_get("/latest/meta-data/instance-id")
                .unwrap()
                .status,
            200
        );
    }
    let token = guest
        .send(
            &Request::metadata("PUT", "/latest/api/token")
                .header("X-aws-ec2-metadata-token-ttl-seconds: 60"),
        )
        .unwrap();
    assert_eq!(token.status, 200, "{token}");
    let token = token.body;
    let with_token = format!("X-aws-ec2-metadata-token: {token}");
    let reply = guest
        .send(&Request::metadata("GET", "/latest/meta-data/hostname").header(with_token))
        .unwrap();
    assert_eq!(reply.status, 200, "{reply}");
    let password = format!("password-secret-{:016x}", random_u64());
    assert_eq!(
        guest
            .http_post("/openstack/latest/password", &password)
            .unwrap()
            .status,
        200
    );
    let reply = guest.http_get("/openstack/2013-04-04/password").unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, password.as_str())
    );

    let after = Scrape::take(&host);
    let delta =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    let requests = "metadata_redirector_requests_total";
    let ok = |tree| [("tree", tree), ("code", "200"), ("backend", "local")];
    assert_eq!(
        delta(requests, &ok("openstack")),
        6.0,
        "3 documents, user data, password twice"
    );
    assert_eq!(
        delta(requests, &ok("ec2")),
        4.0,
        "user-data, instance-id twice, hostname"
    );
    assert_eq!(delta(requests, &ok("token")), 1.0);
    assert_eq!(delta("metadata_redirector_tokens_minted_total", &[]), 1.0);
    assert_eq!(
        delta(
            "metadata_redirector_ec2_tokenless_requests_total",
            &[("instance", &instance.uuid)]
        ),
        3.0,
        "user-data and instance-id twice came without a token; hostname had one"
    );
    assert!(
        delta(
            "metadata_redirector_request_duration_seconds_count",
            &[("tree", "openstack")]
        ) >= 6.0
    );
    assert!(
        delta(
            "metadata_redirector_request_duration_seconds_bucket",
            &[("tree", "ec2"), ("le", "+Inf")]
        ) >= 4.0
    );
    // Every request above came in on a connection of its own through the
    // datapath.
    let caught = delta(
        "metadata_redirector_datapath_events_total",
        &[("reason", "caught")],
    );
    assert!(caught >= 11.0, "caught {caught}");
    assert!(
        delta(
            "metadata_redirector_datapath_events_total",
            &[("reason", "replied")]
        ) >= 11.0
    );

    // A flood past the burst: 429s, counted as such.
    let mut refused = 0;
    for _ in 0..45 {
        if guest.http_get("/latest/meta-data/").unwrap().status == 429 {
            refused += 1;
        }
    }
    assert!(refused > 0, "the flood met the rate limit");
    let flooded = Scrape::take(&host);
    let limited = flooded.get("metadata_redirector_rate_limited_requests_total", &[])
        - after.get("metadata_redirector_rate_limited_requests_total", &[]);
    assert_eq!(limited, f64::from(refused));
    assert_eq!(
        flooded.get(
            requests,
            &[("tree", "ec2"), ("code", "429"), ("backend", "local")]
        ),
        f64::from(refused)
    );

    // The log: every line one JSON object with a time, a level and a target.
    let log = daemon.log();
    let mut audit = Vec::new();
    for line in log.lines().filter(|line| !line.trim().is_empty()) {
        let record: Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("not a JSON log line ({err}): {line}"));
        for field in ["timestamp", "level", "target"] {
            assert!(record[field].is_string(), "{field} missing: {line}");
        }
        if record["target"] == "audit" {
            audit.push(record);
        }
    }
    let records: Vec<(String, String, String, u64)> = audit
        .iter()
        .map(|record| {
            assert_eq!(record["instance"], instance.uuid.as_str(), "{record}");
            assert_eq!(record["tap"], guest.tap(), "{record}");
            assert!(record["timestamp"].as_str().unwrap().len() > 10, "{record}");
            (
                record["secret"].as_str().unwrap().to_owned(),
                record["method"].as_str().unwrap().to_owned(),
                record["path"].as_str().unwrap().to_owned(),
                record["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("user_data", "GET", "/openstack/latest/user_data", 200),
        ("user_data", "GET", "/latest/user-data", 200),
        ("token", "PUT", "/latest/api/token", 200),
        ("password", "POST", "/openstack/latest/password", 200),
        ("password", "GET", "/openstack/2013-04-04/password", 200),
    ];
    let expected: Vec<(String, String, String, u64)> = expected
        .iter()
        .map(|(s, m, p, c)| (s.to_string(), m.to_string(), p.to_string(), *c))
        .collect();
    assert_eq!(records, expected, "one audit record per access, in order");

    // No secret anywhere in the log, at any level.
    let user_data_line = user_data.lines().nth(1).unwrap();
    for (what, secret) in [
        ("the user data", user_data_line),
        ("the password", password.as_str()),
        ("the token", token.as_str()),
    ] {
        assert!(!secret.is_empty());
        assert!(!log.contains(secret), "{what} appears in the log");
    }
}

/// In nova mode: nova's answer time, the requests sent to it and how the
/// cache served the guest's requests.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn nova_mode_counts_upstream_time_and_the_cache() {
    let host = Host::new().unwrap();
    let instance = NovaInstance::new();
    let config =
        FakeNovaConfig::new("a secret shared with nova").project(&instance.uuid, &instance.project);
    let nova = FakeNova::start(&host, config).unwrap();
    let net = TenantNet::with_router_and_decoy(&host).unwrap();
    let guest = Guest::new(&net, GuestConfig::new(GUEST_ADDR, GUEST_MAC)).unwrap();
    let mut args = nova.daemon_args(&nova.secret_file());
    args.extend(["--metrics-listen".into(), METRICS.into()]);
    let daemon = Daemon::start_with_args(&host, &args).unwrap();
    daemon
        .add_nova_port(guest.tap(), &instance, GUEST_MAC, GUEST_ADDR, None)
        .unwrap();
    guest.wait_served(&instance.uuid).unwrap();

    let before = Scrape::take(&host);
    // A path nothing asked for yet: the first GET goes to nova, the next
    // two are answered from the cache (15 s by default).
    for _ in 0..3 {
        let reply = guest.http_get("/latest/meta-data/instance-id").unwrap();
        assert_eq!(reply.status, 200, "{reply}");
    }
    let after = Scrape::take(&host);
    let delta =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    assert_eq!(
        delta(
            "metadata_redirector_nova_cache_lookups_total",
            &[("result", "miss")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "metadata_redirector_nova_cache_lookups_total",
            &[("result", "hit")]
        ),
        2.0
    );
    assert_eq!(delta("metadata_redirector_nova_requests_total", &[]), 1.0);
    assert_eq!(
        delta(
            "metadata_redirector_nova_request_duration_seconds_count",
            &[]
        ),
        1.0
    );
    assert_eq!(
        after
            .types
            .get("metadata_redirector_nova_request_duration_seconds")
            .map(String::as_str),
        Some("histogram")
    );
    assert_eq!(
        delta(
            "metadata_redirector_requests_total",
            &[("tree", "ec2"), ("code", "200"), ("backend", "nova")]
        ),
        3.0
    );
    assert_eq!(
        delta(
            "metadata_redirector_ec2_tokenless_requests_total",
            &[("instance", &instance.uuid)]
        ),
        3.0
    );
    assert!(after.get("metadata_redirector_nova_cache_entries", &[]) >= 1.0);
}
