//! The control plane refuses bad input precisely and keeps the store intact;
//! the pinned maps are readable with bpftool.

use base64::Engine as _;
use mdr_harness::fixtures::{GATEWAY, GUEST_ADDR, GUEST_MAC};
use mdr_harness::{Daemon, Guest, GuestConfig, Host, Instance, TenantNet, cmd, fixtures};
use serde_json::{Value, json};

/// The store as the CLI shows it.
fn store(daemon: &Daemon) -> (String, String) {
    (
        daemon.cli_ok(&["instance", "list", "--json"]).unwrap(),
        daemon.cli_ok(&["port", "list", "--json"]).unwrap(),
    )
}

/// A refusal: non-zero exit, one line on stderr that names `field`.
fn assert_refused(out: &std::process::Output, field: &str, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let message = stderr.trim();
    assert!(!out.status.success(), "{what} was accepted: {message}");
    assert!(!message.is_empty(), "{what}: no error message");
    assert!(
        !message.contains('\n'),
        "{what}: the error is not one line:\n{message}"
    );
    assert!(
        message.contains(field),
        "{what}: the error does not name `{field}`: {message}"
    );
}

/// The base64 of `n` zero bytes.
fn base64_of_zeros(n: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(vec![0u8; n])
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn bad_instance_documents_are_refused_naming_the_field_and_nothing_is_stored() {
    let host = Host::new().unwrap();
    let daemon = Daemon::start(&host).unwrap();
    let kept = Instance::sample("kept");
    daemon.put_instance(&kept).unwrap();
    let before = store(&daemon);
    let kept_doc = daemon.cli_ok(&["instance", "get", &kept.uuid]).unwrap();

    // Each case replaces the stored instance (same uuid) with one bad field,
    // so "nothing is stored" also covers a half-applied replacement.
    let with = |field: &str, value: Value| {
        let mut doc = kept.doc.clone();
        doc[field] = value;
        doc
    };
    let without = |field: &str| {
        let mut doc = kept.doc.clone();
        doc.as_object_mut().unwrap().remove(field);
        doc
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        ("unknown key", with("flavor", json!("m1.small")), "flavor"),
        ("bad uuid", with("uuid", json!("not-a-uuid")), "uuid"),
        ("missing name", without("name"), "name"),
        (
            "wrong type",
            with("launch_index", json!("three")),
            "launch_index",
        ),
        (
            "wrong value type in meta",
            with("meta", json!({"k": 1})),
            "meta",
        ),
        (
            "oversized user_data",
            with("user_data", json!(base64_of_zeros(65536))),
            "user_data",
        ),
        (
            "hop_limit out of range",
            with("imds", json!({"hop_limit": 65})),
            "hop_limit",
        ),
        (
            "unknown token mode",
            with("imds", json!({"tokens": "sometimes"})),
            "tokens",
        ),
        (
            "unknown ec2 key",
            with("ec2", json!({"instance_idd": "i-1"})),
            "instance_idd",
        ),
    ];
    for (what, doc, field) in cases {
        let out = daemon.put_instance_doc(&doc.to_string()).unwrap();
        assert_refused(&out, field, &format!("instance put with {what}"));
        assert_eq!(
            store(&daemon),
            before,
            "instance put with {what} changed the store"
        );
    }
    let out = daemon.put_instance_doc("{ not json").unwrap();
    assert!(
        !out.status.success(),
        "a document that is not JSON was accepted"
    );
    assert_eq!(store(&daemon), before);
    assert_eq!(
        daemon.cli_ok(&["instance", "get", &kept.uuid]).unwrap(),
        kept_doc
    );

    // The largest user_data allowed is accepted, so the limit is exact.
    let at_limit = with("user_data", json!(base64_of_zeros(65535)));
    let out = daemon.put_instance_doc(&at_limit.to_string()).unwrap();
    assert!(
        out.status.success(),
        "65535 bytes of user_data refused: {out:?}"
    );
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn bad_port_add_is_refused_naming_the_field_and_nothing_is_stored() {
    let host = Host::new().unwrap();
    let daemon = Daemon::start(&host).unwrap();
    let instance = Instance::sample("owner");
    daemon.put_instance(&instance).unwrap();
    // A port may be added before its tap exists.
    daemon
        .cli_ok(&[
            "port",
            "add",
            "--ifname",
            "tapkept0",
            "--instance",
            &instance.uuid,
        ])
        .unwrap();
    let before = store(&daemon);

    let unknown = fixtures::random_uuid();
    let cases: [(&str, &[&str], &str); 5] = [
        (
            "an unknown instance",
            &["--ifname", "tapx0", "--instance", &unknown],
            "instance",
        ),
        (
            "a malformed instance",
            &["--ifname", "tapx0", "--instance", "nope"],
            "instance",
        ),
        (
            "a bad MAC",
            &[
                "--ifname",
                "tapx0",
                "--instance",
                &instance.uuid,
                "--mac",
                "fa:16:3e:zz:00:01",
            ],
            "mac",
        ),
        (
            "a short MAC",
            &[
                "--ifname",
                "tapx0",
                "--instance",
                &instance.uuid,
                "--mac",
                "fa:16:3e",
            ],
            "mac",
        ),
        (
            "a 16-byte interface name",
            &["--ifname", "tap0123456789abc", "--instance", &instance.uuid],
            "ifname",
        ),
    ];
    for (what, args, field) in cases {
        let out = daemon.cli(&[&["port", "add"], args].concat()).unwrap();
        assert_refused(&out, field, &format!("port add with {what}"));
        assert_eq!(
            store(&daemon),
            before,
            "port add with {what} changed the store"
        );
    }
}

/// The port map is pinned with BTF: bpftool prints its fields by name, and
/// the registered tap's ifindex is a key.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn bpftool_dumps_the_pinned_port_map_with_named_fields() {
    let host = Host::new().unwrap();
    let net = TenantNet::new(&host, GATEWAY, 24).unwrap();
    let guest = Guest::new(&net, GuestConfig::new(GUEST_ADDR, GUEST_MAC)).unwrap();
    let daemon = Daemon::start(&host).unwrap();
    let instance = Instance::sample("mapped");
    daemon.register(&guest, &instance).unwrap();
    guest.wait_served(&instance.uuid).unwrap();

    let map = daemon.pinned_map("PORTS");
    let dump = cmd::run(&["bpftool", "map", "dump", "pinned", &map.to_string_lossy()]).unwrap();
    for field in ["slot", "identity_addr"] {
        assert!(
            dump.contains(&format!("\"{field}\"")),
            "no `{field}` in:\n{dump}"
        );
    }
    let ifindex = host.ifindex(guest.tap()).unwrap();
    assert!(
        dump.contains(&format!("\"key\": {ifindex},")),
        "no entry for tap {} (ifindex {ifindex}) in:\n{dump}",
        guest.tap()
    );
    // The other maps are pinned beside it.
    for name in ["FLOWS", "CONFIG", "COUNTERS"] {
        assert!(daemon.pinned_map(name).exists(), "{name} is not pinned");
    }
}

/// With a /24 identity network the daemon has 254 addresses for ports: the
/// 255th `port add` is refused with a message that says so, and nothing is
/// stored (before, it was stored, given a slot the network has no address
/// for, and then failed to attach).
#[test]
#[ignore = "root: run via cargo xtask test"]
fn port_add_beyond_the_identity_networks_addresses_is_refused() {
    let host = Host::new().unwrap();
    let daemon =
        Daemon::start_with_config_file(&host, "identity_net = \"240.1.0.0/24\"\n").unwrap();
    let instance = Instance::sample("many");
    daemon.put_instance(&instance).unwrap();
    for n in 1..=254 {
        let ifname = format!("slot{n}");
        daemon
            .cli_ok(&[
                "port",
                "add",
                "--ifname",
                &ifname,
                "--instance",
                &instance.uuid,
            ])
            .unwrap_or_else(|err| panic!("port {n} of 254: {err:#}"));
    }
    let before = store(&daemon);
    let out = daemon
        .cli(&[
            "port",
            "add",
            "--ifname",
            "slot255",
            "--instance",
            &instance.uuid,
        ])
        .unwrap();
    assert_refused(&out, "--ifname", "the 255th port of a /24");
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(
        message.contains("addresses for 254 ports") && message.contains("identity_net"),
        "{message}"
    );
    assert_eq!(store(&daemon), before, "the refused port was stored");
    let ports: Value = serde_json::from_str(&before.1).unwrap();
    assert_eq!(ports.as_array().unwrap().len(), 254);
    assert!(
        ports
            .as_array()
            .unwrap()
            .iter()
            .all(|port| (1..=254).contains(&port["slot"].as_u64().unwrap())),
        "a slot outside the /24: {ports}"
    );
}
