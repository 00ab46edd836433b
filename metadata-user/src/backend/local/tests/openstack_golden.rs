//! Golden answers of the OpenStack tree for the fixtures, per version.
//! Written from nova/api/metadata/base.py: `InstanceMetadata.lookup`,
//! `RouteConfiguration.handle_path`, `_handle_version`, `_metadata_as_json`,
//! `_get_device_metadata`, `_vendor_data`, `_vendor_data2`, `_network_data`,
//! `_user_data`; JSON as `json.dumps` writes it.
use hyper::{Method, StatusCode, header};

use super::*;

const ALL_VERSIONS: [&str; 11] = [
    "2012-08-10",
    "2013-04-04",
    "2013-10-17",
    "2015-10-15",
    "2016-06-30",
    "2016-10-06",
    "2017-02-22",
    "2018-08-27",
    "2020-10-14",
    "2025-04-04",
    "latest",
];

/// `lookup` for `/openstack`: every version not after today, then latest.
#[tokio::test]
async fn version_list() {
    let h = Harness::new();
    let expected = "2012-08-10\n2013-04-04\n2013-10-17\n2015-10-15\n2016-06-30\n2016-10-06\n2017-02-22\n2018-08-27\n2020-10-14\n2025-04-04\nlatest";
    for path in ["/openstack", "/openstack/", "//openstack//", "/openstack/."] {
        h.get(&rich_instance(), path)
            .await
            .assert_ok(TEXT, expected);
    }
}

/// `lookup`: "versions in the future are hidden from the listing, but can
/// still be requested explicitly".
#[tokio::test]
async fn future_versions_hidden_but_served() {
    let h = Harness::new();
    // 2025-04-03T12:00:00Z
    h.clock
        .store(1_743_681_600, std::sync::atomic::Ordering::SeqCst);
    let answer = h.get(&rich_instance(), "/openstack").await;
    assert!(
        answer.text().ends_with("2020-10-14\nlatest"),
        "{}",
        answer.text()
    );
    let answer = h
        .get(&rich_instance(), "/openstack/2025-04-04/meta_data.json")
        .await;
    assert_eq!(answer.status, StatusCode::OK);
}

/// `_handle_version` for each version, with user data present.
#[tokio::test]
async fn version_directory_listings() {
    let h = Harness::new();
    let folsom = "meta_data.json\nuser_data";
    let grizzly = "meta_data.json\nuser_data\npassword";
    let havana = "meta_data.json\nuser_data\npassword\nvendor_data.json";
    let liberty = "meta_data.json\nuser_data\npassword\nvendor_data.json\nnetwork_data.json";
    let newton_two = "meta_data.json\nuser_data\npassword\nvendor_data.json\nnetwork_data.json\nvendor_data2.json";
    let expected = [
        folsom, grizzly, havana, liberty, liberty, newton_two, newton_two, newton_two, newton_two,
        newton_two, newton_two,
    ];
    for (version, listing) in ALL_VERSIONS.iter().zip(expected) {
        for path in [
            format!("/openstack/{version}"),
            format!("/openstack/{version}/"),
            // RouteConfiguration maps "version" to the same handler.
            format!("/openstack/{version}/version"),
        ] {
            h.get(&rich_instance(), &path)
                .await
                .assert_ok(TEXT, listing);
        }
    }
}

#[tokio::test]
async fn listing_without_user_data() {
    let h = Harness::new();
    h.get(&bare_instance(), "/openstack/latest/")
        .await
        .assert_ok(
            TEXT,
            "meta_data.json\npassword\nvendor_data.json\nnetwork_data.json\nvendor_data2.json",
        );
    h.get(&bare_instance(), "/openstack/2012-08-10")
        .await
        .assert_ok(TEXT, "meta_data.json");
}

const RICH_HEAD: &str = concat!(
    r#"{"uuid": "8f2e5d1c-3b4a-4c6d-9e7f-0a1b2c3d4e5f", "meta": {"role": "web", "tier": "frontend"}, "#,
    r#""public_keys": {"mykey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHb4tP8bZ0ApUd1p user@host"}, "#,
    r#""keys": [{"name": "mykey", "type": "ssh", "data": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHb4tP8bZ0ApUd1p user@host"}], "#,
    r#""hostname": "web-01.novalocal", "name": "Web Server 01", "launch_index": 2, "availability_zone": "az1""#
);
const SEED: &str = r#", "random_seed": "<seed>""#;
const PROJECT: &str = r#", "project_id": "6c8e9f2a1b3d4e5f6a7b8c9d0e1f2a3b""#;
// Devices in `_get_device_metadata`'s key order: vlan, vf_trusted, type,
// mac / serial, path / share_id, tag, then bus, address, tags.
const NIC_A_NEWTON: &str = r#"{"type": "nic", "mac": "fa:16:3e:00:00:01", "bus": "pci", "address": "0000:00:03.0", "tags": ["nfv"]}"#;
const NIC_A_OCATA: &str = r#"{"vlan": 100, "type": "nic", "mac": "fa:16:3e:00:00:01", "bus": "pci", "address": "0000:00:03.0", "tags": ["nfv"]}"#;
const NIC_A_ROCKY: &str = r#"{"vlan": 100, "vf_trusted": true, "type": "nic", "mac": "fa:16:3e:00:00:01", "bus": "pci", "address": "0000:00:03.0", "tags": ["nfv"]}"#;
const NIC_B_OCATA: &str = r#"{"vlan": 200, "type": "nic", "mac": "fa:16:3e:00:00:02", "bus": "pci", "address": "0000:00:04.0"}"#;
const NIC_B_ROCKY: &str = r#"{"vlan": 200, "vf_trusted": false, "type": "nic", "mac": "fa:16:3e:00:00:02", "bus": "pci", "address": "0000:00:04.0"}"#;
const DISK: &str = r#"{"type": "disk", "serial": "vol-1", "path": "/dev/disk/by-id/virtio-vol-1", "bus": "scsi", "address": "0:0:0:1", "tags": ["db"]}"#;
const SHARE: &str =
    r#"{"type": "share", "share_id": "share-1", "tag": "data", "bus": "none", "address": "none"}"#;
const CPUS: &str = r#", "dedicated_cpus": [3, 4, 5]"#;

/// Replaces the random seed (512 random bytes, base64: 684 characters) with
/// `<seed>` so the rest can be compared exactly.
fn mask_seed(body: &str) -> String {
    let marker = r#""random_seed": ""#;
    let Some(start) = body.find(marker).map(|i| i + marker.len()) else {
        return body.to_owned();
    };
    let end = start + body[start..].find('"').unwrap();
    let seed = &body[start..end];
    assert_eq!(seed.len(), 684, "512 bytes of base64");
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(seed)
        .unwrap();
    assert_eq!(raw.len(), 512);
    format!("{}<seed>{}", &body[..start], &body[end..])
}

/// `_metadata_as_json` at every version: random_seed from GRIZZLY,
/// project_id from LIBERTY, devices from NEWTON_ONE (vlan from OCATA,
/// vf_trusted from ROCKY, shares from EPOXY; a NIC with neither tags nor
/// vlan nor vf_trusted is left out), dedicated_cpus (sorted) from VICTORIA.
#[tokio::test]
async fn meta_data_json_per_version() {
    let devices = |list: &[&str]| format!(r#", "devices": [{}]"#, list.join(", "));
    let newton = devices(&[NIC_A_NEWTON, DISK]);
    let ocata = devices(&[NIC_A_OCATA, NIC_B_OCATA, DISK]);
    let rocky = devices(&[NIC_A_ROCKY, NIC_B_ROCKY, DISK]);
    let epoxy = devices(&[NIC_A_ROCKY, NIC_B_ROCKY, DISK, SHARE]);
    let expected = [
        ("2012-08-10", format!("{RICH_HEAD}}}")),
        ("2013-04-04", format!("{RICH_HEAD}{SEED}}}")),
        ("2013-10-17", format!("{RICH_HEAD}{SEED}}}")),
        ("2015-10-15", format!("{RICH_HEAD}{SEED}{PROJECT}}}")),
        (
            "2016-06-30",
            format!("{RICH_HEAD}{SEED}{PROJECT}{newton}}}"),
        ),
        (
            "2016-10-06",
            format!("{RICH_HEAD}{SEED}{PROJECT}{newton}}}"),
        ),
        ("2017-02-22", format!("{RICH_HEAD}{SEED}{PROJECT}{ocata}}}")),
        ("2018-08-27", format!("{RICH_HEAD}{SEED}{PROJECT}{rocky}}}")),
        (
            "2020-10-14",
            format!("{RICH_HEAD}{SEED}{PROJECT}{rocky}{CPUS}}}"),
        ),
        (
            "2025-04-04",
            format!("{RICH_HEAD}{SEED}{PROJECT}{epoxy}{CPUS}}}"),
        ),
        (
            "latest",
            format!("{RICH_HEAD}{SEED}{PROJECT}{epoxy}{CPUS}}}"),
        ),
    ];
    let h = Harness::new();
    for (version, json) in expected {
        let answer = h
            .get(
                &rich_instance(),
                &format!("/openstack/{version}/meta_data.json"),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{version}");
        assert_eq!(answer.content_type(), JSON, "{version}");
        assert_eq!(mask_seed(answer.text()), json, "{version}");
    }
}

/// Defaults where the document is silent: hostname from the display name
/// (nova's `sanitize_hostname` at boot) plus dhcp_domain, launch_index 0,
/// AZ "nova", the port's project, no meta/keys, empty devices and CPUs.
#[tokio::test]
async fn meta_data_json_defaults() {
    let h = Harness::new();
    let answer = h
        .get(&bare_instance(), "/openstack/latest/meta_data.json")
        .await;
    assert_eq!(answer.content_type(), JSON);
    assert_eq!(
        mask_seed(answer.text()),
        concat!(
            r#"{"uuid": "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "hostname": "bare-box-01.novalocal", "#,
            r#""name": "Bare_Box.01", "launch_index": 0, "availability_zone": "nova", "random_seed": "<seed>", "#,
            r#""project_id": "port-project", "devices": [], "dedicated_cpus": []}"#
        )
    );
}

/// `_get_hostname` without a dhcp_domain: the bare hostname.
#[tokio::test]
async fn hostname_without_domain() {
    let h = Harness::with_config(ApiConfig {
        domain: String::new(),
        ..ApiConfig::default()
    });
    let answer = h
        .get(&rich_instance(), "/openstack/2012-08-10/meta_data.json")
        .await;
    assert!(
        answer.text().contains(r#""hostname": "web-01", "#),
        "{}",
        answer.text()
    );
}

#[tokio::test]
async fn random_seed_is_new_every_time() {
    let h = Harness::new();
    let first = h
        .get(&rich_instance(), "/openstack/latest/meta_data.json")
        .await;
    let second = h
        .get(&rich_instance(), "/openstack/latest/meta_data.json")
        .await;
    assert_ne!(first.body, second.body);
    assert_eq!(mask_seed(first.text()), mask_seed(second.text()));
}

/// `json.dumps` escapes non-ASCII in names and metadata.
#[tokio::test]
async fn non_ascii_is_escaped_like_python() {
    let mut doc = bare_instance();
    doc.name = "caf\u{e9} \u{2603}".to_owned();
    doc.meta.insert("k".to_owned(), "\u{1F600}".to_owned());
    let h = Harness::new();
    let answer = h.get(&doc, "/openstack/2012-08-10/meta_data.json").await;
    assert_eq!(
        answer.text(),
        r#"{"uuid": "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "meta": {"k": "\ud83d\ude00"}, "hostname": "caf\u00e9.novalocal", "name": "caf\u00e9 \u2603", "launch_index": 0, "availability_zone": "nova"}"#
    );
}

/// `_vendor_data` (HAVANA+), `_vendor_data2` (NEWTON_TWO+, StaticJSON only),
/// `_network_data` (no version check, and no mimetype: served as
/// `text/plain; charset=UTF-8`), with the document's objects.
#[tokio::test]
async fn vendor_and_network_data() {
    let h = Harness::new();
    let vendor = r#"{"cloud": "example", "nested": {"a": [true, null, 1.5], "b": 1}}"#;
    let network = concat!(
        r#"{"links": [{"ethernet_mac_address": "fa:16:3e:00:00:01", "id": "tap0", "mtu": 1450, "type": "phy"}], "#,
        r#""networks": [{"id": "network0", "link": "tap0", "type": "ipv4_dhcp"}], "services": []}"#
    );
    let rich = rich_instance();
    for version in ALL_VERSIONS {
        let index = ALL_VERSIONS.iter().position(|v| *v == version).unwrap();
        let vd = h
            .get(&rich, &format!("/openstack/{version}/vendor_data.json"))
            .await;
        if index >= 2 {
            vd.assert_ok(JSON, vendor);
        } else {
            assert_eq!(vd.status, StatusCode::NOT_FOUND, "{version}");
        }
        let vd2 = h
            .get(&rich, &format!("/openstack/{version}/vendor_data2.json"))
            .await;
        if index >= 5 {
            vd2.assert_ok(JSON, &format!(r#"{{"static": {vendor}}}"#));
        } else {
            assert_eq!(vd2.status, StatusCode::NOT_FOUND, "{version}");
        }
        // nova sets no mimetype for network_data.json: webob's text/plain.
        h.get(&rich, &format!("/openstack/{version}/network_data.json"))
            .await
            .assert_ok(TEXT, network);
    }
    let bare = bare_instance();
    h.get(&bare, "/openstack/latest/vendor_data.json")
        .await
        .assert_ok(JSON, "{}");
    h.get(&bare, "/openstack/latest/vendor_data2.json")
        .await
        .assert_ok(JSON, r#"{"static": {}}"#);
    h.get(&bare, "/openstack/latest/network_data.json")
        .await
        .assert_ok(TEXT, "{}");
}

/// `_user_data`: the raw bytes (text/plain), 404 when there are none.
#[tokio::test]
async fn user_data_is_byte_exact() {
    let h = Harness::new();
    for version in ALL_VERSIONS {
        let answer = h
            .get(&rich_instance(), &format!("/openstack/{version}/user_data"))
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.content_type(), TEXT);
        assert_eq!(&answer.body[..], USER_DATA);
    }
    let answer = h.get(&bare_instance(), "/openstack/latest/user_data").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}

/// Everything `lookup` turns into InvalidMetadataPath (404).
#[tokio::test]
async fn unknown_paths_are_404() {
    let h = Harness::new();
    for path in [
        "/openstack/2099-01-01/meta_data.json",
        "/openstack/2012-08-11",
        "/openstack/latest/foo",
        "/openstack/latest/meta_data.json/uuid",
        "/openstack/latest/META_DATA.JSON",
        "/openstack/content",
        "/openstack/latest/content/0000",
        "/openstack/2012-08-10/password",
        "/openstack/2013-04-04/vendor_data.json",
        "/openstack/2016-06-30/vendor_data2.json",
    ] {
        let answer = h.get(&rich_instance(), path).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
    }
}

/// HEAD is GET without the body; the length stays.
#[tokio::test]
async fn head_is_get_without_body() {
    let h = Harness::new();
    let guest = default_guest();
    let doc = rich_instance();
    let get = h.get(&doc, "/openstack/latest/vendor_data.json").await;
    let head = h
        .send(
            &guest,
            Some(&doc),
            request(Method::HEAD, "/openstack/latest/vendor_data.json", &[], ""),
        )
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.content_type(), JSON);
    assert!(head.body.is_empty());
    assert_eq!(
        head.headers[header::CONTENT_LENGTH],
        get.body.len().to_string()
    );
    let missing = h
        .send(
            &guest,
            Some(&doc),
            request(Method::HEAD, "/openstack/latest/nope", &[], ""),
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.is_empty());
}

#[tokio::test]
async fn other_methods_are_405() {
    let h = Harness::new();
    let guest = default_guest();
    let doc = rich_instance();
    for method in [
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
    ] {
        let answer = h
            .send(
                &guest,
                Some(&doc),
                request(method.clone(), "/openstack/latest/meta_data.json", &[], "x"),
            )
            .await;
        assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(answer.headers[header::ALLOW], "GET, HEAD");
    }
    let answer = h
        .send(
            &guest,
            Some(&doc),
            request(Method::DELETE, "/openstack/latest/password", &[], ""),
        )
        .await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(answer.headers[header::ALLOW], "GET, HEAD, POST");
}

/// A deleted instance: 404 for everything, listings included.
#[tokio::test]
async fn deleted_instance_is_404_everywhere() {
    let h = Harness::new();
    for path in [
        "/",
        "/openstack",
        "/openstack/latest/meta_data.json",
        "/latest/meta-data/instance-id",
    ] {
        let answer = h
            .send(&default_guest(), None, request(Method::GET, path, &[], ""))
            .await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
    }
}

/// Identity is the tap's, whatever the headers say.
#[tokio::test]
async fn identity_headers_are_ignored() {
    let h = Harness::new();
    let spoofing = [
        ("X-Instance-ID", "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"),
        ("X-Instance-ID-Signature", "deadbeef"),
        ("X-Tenant-ID", "someone-else"),
        ("X-Forwarded-For", "10.0.0.42"),
        ("X-Neutron-Network-ID", "net"),
        ("X-Neutron-Router-ID", "router"),
        ("X-Metadata-Provider", "provider"),
    ];
    let answer = h
        .send(
            &default_guest(),
            Some(&rich_instance()),
            request(
                Method::GET,
                "/openstack/latest/meta_data.json",
                &spoofing,
                "",
            ),
        )
        .await;
    assert!(
        answer
            .text()
            .starts_with(r#"{"uuid": "8f2e5d1c-3b4a-4c6d-9e7f-0a1b2c3d4e5f""#)
    );
    let answer = h
        .send(
            &default_guest(),
            Some(&rich_instance()),
            request(Method::GET, "/latest/meta-data/local-ipv4", &spoofing, ""),
        )
        .await;
    answer.assert_ok(TEXT, "10.0.0.5");
}

/// nova's 404 is webob's page, chosen by the Accept header.
#[tokio::test]
async fn error_pages_follow_accept() {
    let h = Harness::new();
    let answer = h
        .send(
            &default_guest(),
            Some(&rich_instance()),
            request(Method::GET, "/openstack/nope", &[("Accept", "*/*")], ""),
        )
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.content_type(), "text/html; charset=UTF-8");
    assert!(answer.text().contains("<title>404 Not Found</title>"));
}
