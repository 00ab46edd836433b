//! Golden answers of the EC2 tree. Written from nova/api/metadata/base.py:
//! `get_ec2_metadata` (which keys exist at which version, their values),
//! `find_path_in_tree` (walking), `ec2_md_print` (sorted keys, `/` after
//! dicts, `_name` labels, lists one item per line, no trailing newline), and
//! handler.py `__call__` for `/`.
use hyper::{Method, StatusCode};

use super::*;

const VERSION_LIST: &str = "1.0\n2007-01-19\n2007-03-01\n2007-08-29\n2007-10-10\n2007-12-15\n2008-02-01\n2008-09-01\n2009-04-04\nlatest";

#[tokio::test]
async fn root_lists_ec2_versions() {
    let h = Harness::new();
    for path in ["/", "/ec2", "/ec2/", "/./", "/ec2/../"] {
        h.get(&rich_instance(), path)
            .await
            .assert_ok(TEXT, VERSION_LIST);
    }
}

#[tokio::test]
async fn version_directory_lists_meta_data_and_user_data() {
    let h = Harness::new();
    for version in VERSION_LIST.split('\n') {
        for prefix in ["", "/ec2"] {
            h.get(&rich_instance(), &format!("{prefix}/{version}/"))
                .await
                .assert_ok(TEXT, "meta-data/\nuser-data");
            h.get(&bare_instance(), &format!("{prefix}/{version}"))
                .await
                .assert_ok(TEXT, "meta-data/");
        }
    }
}

/// `get_ec2_metadata`'s keys for each version: the 1.0 set, then
/// local-hostname/public-hostname/public-ipv4 (2007-01-19), instance-type
/// (2007-08-29), block-device-mapping/kernel-id (2007-12-15), placement
/// (2008-02-01), instance-action (2008-09-01).
#[tokio::test]
async fn meta_data_listing_per_version() {
    let v1_0 = "ami-id\nami-launch-index\nami-manifest-path\nhostname\ninstance-id\nlocal-ipv4\npublic-keys/\nreservation-id\nsecurity-groups";
    let v2007_01_19 = "ami-id\nami-launch-index\nami-manifest-path\nhostname\ninstance-id\nlocal-hostname\nlocal-ipv4\npublic-hostname\npublic-ipv4\npublic-keys/\nreservation-id\nsecurity-groups";
    let v2007_08_29 = "ami-id\nami-launch-index\nami-manifest-path\nhostname\ninstance-id\ninstance-type\nlocal-hostname\nlocal-ipv4\npublic-hostname\npublic-ipv4\npublic-keys/\nreservation-id\nsecurity-groups";
    let v2007_12_15 = "ami-id\nami-launch-index\nami-manifest-path\nblock-device-mapping/\nhostname\ninstance-id\ninstance-type\nkernel-id\nlocal-hostname\nlocal-ipv4\npublic-hostname\npublic-ipv4\npublic-keys/\nreservation-id\nsecurity-groups";
    let v2008_02_01 = "ami-id\nami-launch-index\nami-manifest-path\nblock-device-mapping/\nhostname\ninstance-id\ninstance-type\nkernel-id\nlocal-hostname\nlocal-ipv4\nplacement/\npublic-hostname\npublic-ipv4\npublic-keys/\nreservation-id\nsecurity-groups";
    let v2008_09_01 = "ami-id\nami-launch-index\nami-manifest-path\nblock-device-mapping/\nhostname\ninstance-action\ninstance-id\ninstance-type\nkernel-id\nlocal-hostname\nlocal-ipv4\nplacement/\npublic-hostname\npublic-ipv4\npublic-keys/\nreservation-id\nsecurity-groups";
    let expected = [
        ("1.0", v1_0),
        ("2007-01-19", v2007_01_19),
        ("2007-03-01", v2007_01_19),
        ("2007-08-29", v2007_08_29),
        ("2007-10-10", v2007_08_29),
        ("2007-12-15", v2007_12_15),
        ("2008-02-01", v2008_02_01),
        ("2008-09-01", v2008_09_01),
        ("2009-04-04", v2008_09_01),
        ("latest", v2008_09_01),
    ];
    let h = Harness::new();
    for (version, listing) in expected {
        h.get(&rich_instance(), &format!("/{version}/meta-data/"))
            .await
            .assert_ok(TEXT, listing);
        h.get(&rich_instance(), &format!("/ec2/{version}/meta-data"))
            .await
            .assert_ok(TEXT, listing);
    }
}

/// Every leaf and directory of the rich fixture at `latest`.
#[tokio::test]
async fn meta_data_values() {
    let expected = [
        ("ami-id", "ami-00000007"),
        ("ami-launch-index", "2"),
        ("ami-manifest-path", "FIXME"),
        ("block-device-mapping", "ami\nephemeral0\nroot\nswap"),
        ("block-device-mapping/ami", "vda"),
        ("block-device-mapping/ephemeral0", "/dev/vdb"),
        ("block-device-mapping/root", "/dev/vda"),
        ("block-device-mapping/swap", "/dev/vdc"),
        ("hostname", "web-01.novalocal"),
        ("instance-action", "none"),
        ("instance-id", "i-0000abcd"),
        ("instance-type", "m1.small"),
        ("kernel-id", "aki-00000002"),
        ("local-hostname", "web-01.novalocal"),
        ("local-ipv4", "10.0.0.5"),
        ("placement", "availability-zone"),
        ("placement/availability-zone", "az1"),
        ("public-hostname", "web-01.novalocal"),
        ("public-ipv4", "203.0.113.10"),
        // "meta-data/public-keys/ : '0=%s' % keyname" ...
        ("public-keys", "0=mykey"),
        ("public-keys/0", "openssh-key"),
        ("public-keys/0/openssh-key", SSH_KEY),
        // `_name` is an ordinary key of nova's dict.
        ("public-keys/0/_name", "0=mykey"),
        ("reservation-id", "r-abc123de"),
        ("security-groups", "default\nweb"),
    ];
    let h = Harness::new();
    for (key, value) in expected {
        for path in [
            format!("/latest/meta-data/{key}"),
            format!("/latest/meta-data/{key}/"),
            format!("/ec2/2009-04-04/meta-data/{key}"),
        ] {
            let answer = h.get(&rich_instance(), &path).await;
            assert_eq!(answer.status, StatusCode::OK, "{path}");
            assert_eq!(answer.content_type(), TEXT, "{path}");
            assert_eq!(answer.text(), value, "{path}");
        }
    }
}

#[tokio::test]
async fn user_data_is_byte_exact() {
    let h = Harness::new();
    for path in [
        "/latest/user-data",
        "/1.0/user-data",
        "/ec2/2009-04-04/user-data/",
    ] {
        let answer = h.get(&rich_instance(), path).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.content_type(), TEXT);
        assert_eq!(&answer.body[..], USER_DATA);
    }
    let answer = h.get(&bare_instance(), "/latest/user-data").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}

/// A key that is not there yet at a version is a 404 (InvalidMetadataPath).
#[tokio::test]
async fn gated_keys_are_404_before_their_version() {
    let h = Harness::new();
    for path in [
        "/1.0/meta-data/local-hostname",
        "/1.0/meta-data/public-ipv4",
        "/2007-03-01/meta-data/instance-type",
        "/2007-10-10/meta-data/block-device-mapping/root",
        "/2007-10-10/meta-data/kernel-id",
        "/2007-12-15/meta-data/placement/availability-zone",
        "/2008-02-01/meta-data/instance-action",
    ] {
        assert_eq!(
            h.get(&rich_instance(), path).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let h = Harness::new();
    for path in [
        "/2009-04-05/meta-data/",
        "/latest/foo",
        "/latest/meta-data/iam/info",
        "/latest/meta-data/ramdisk-id",
        "/latest/meta-data/public-keys/1",
        "/latest/meta-data/public-keys/0/_name/x",
        // nova fails with a 500 walking into strings and lists; we say 404.
        "/latest/meta-data/hostname/x",
        "/latest/meta-data/security-groups/default",
        "/latest/user-data/x",
        "/ec2/foo",
    ] {
        assert_eq!(
            h.get(&rich_instance(), path).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
}

/// What nova shows for an instance without EC2 details, and our defaults
/// for what nova always knows (documented in view.rs).
#[tokio::test]
async fn defaults_for_a_bare_instance() {
    let h = Harness::new();
    let doc = bare_instance();
    h.get(&doc, "/latest/meta-data/").await.assert_ok(
        TEXT,
        "ami-id\nami-launch-index\nami-manifest-path\nblock-device-mapping/\nhostname\ninstance-action\ninstance-id\ninstance-type\nlocal-hostname\nlocal-ipv4\nplacement/\npublic-hostname\npublic-ipv4\nreservation-id\nsecurity-groups",
    );
    let expected = [
        ("ami-id", "ami-00000000"),
        ("ami-launch-index", "0"),
        ("block-device-mapping", "ami\nroot"),
        ("block-device-mapping/ami", "vda"),
        ("block-device-mapping/root", "/dev/vda"),
        ("hostname", "bare-box-01.novalocal"),
        ("local-hostname", "bare-box-01.novalocal"),
        ("public-hostname", "bare-box-01.novalocal"),
        // i- and the first 8 hex digits of the UUID; r- and the next 8.
        ("instance-id", "i-0a1b2c3d"),
        ("reservation-id", "r-4e5f4a6b"),
        ("instance-type", ""),
        // The port's first fixed IP.
        ("local-ipv4", "10.0.0.99"),
        ("public-ipv4", ""),
        ("security-groups", ""),
        ("placement/availability-zone", "nova"),
    ];
    for (key, value) in expected {
        h.get(&doc, &format!("/latest/meta-data/{key}"))
            .await
            .assert_ok(TEXT, value);
    }
    for key in ["kernel-id", "ramdisk-id", "public-keys"] {
        let answer = h.get(&doc, &format!("/latest/meta-data/{key}")).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{key}");
    }
}

/// nova's `fixed_ip or self.address`: without any fixed IP, the address the
/// request came from.
#[tokio::test]
async fn local_ipv4_falls_back_to_the_source_address() {
    let h = Harness::new();
    let guest = guest(9, "tap-z", &[]);
    let answer = h
        .send(
            &guest,
            Some(&bare_instance()),
            request(Method::GET, "/latest/meta-data/local-ipv4", &[], ""),
        )
        .await;
    answer.assert_ok(TEXT, "192.168.50.7");
}

/// More than one key: indexes in key-name order (nova only ever has one).
#[tokio::test]
async fn several_public_keys() {
    let h = Harness::new();
    let mut doc = bare_instance();
    doc.public_keys = map(&[("zeta", "ssh-rsa AAAAz"), ("alpha", "ssh-rsa AAAAa")]);
    h.get(&doc, "/latest/meta-data/public-keys/")
        .await
        .assert_ok(TEXT, "0=alpha\n1=zeta");
    h.get(&doc, "/latest/meta-data/public-keys/1/openssh-key")
        .await
        .assert_ok(TEXT, "ssh-rsa AAAAz");
}

#[tokio::test]
async fn ramdisk_id_only_when_set() {
    let h = Harness::new();
    let mut doc = rich_instance();
    doc.ec2.as_mut().unwrap().ramdisk_id = Some("ari-00000003".to_owned());
    h.get(&doc, "/latest/meta-data/ramdisk-id")
        .await
        .assert_ok(TEXT, "ari-00000003");
    assert!(
        h.get(&doc, "/latest/meta-data/")
            .await
            .text()
            .contains("\nramdisk-id\n")
    );
    assert_eq!(
        h.get(&doc, "/2007-10-10/meta-data/ramdisk-id").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn methods_other_than_get_and_head_are_405() {
    let h = Harness::new();
    let doc = rich_instance();
    for method in [Method::POST, Method::PUT, Method::DELETE] {
        let answer = h
            .send(
                &default_guest(),
                Some(&doc),
                request(method.clone(), "/latest/meta-data/hostname", &[], ""),
            )
            .await;
        assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(answer.headers[hyper::header::ALLOW], "GET, HEAD");
    }
    let head = h
        .send(
            &default_guest(),
            Some(&doc),
            request(Method::HEAD, "/latest/meta-data/hostname", &[], ""),
        )
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(head.headers[hyper::header::CONTENT_LENGTH], "16");
}

/// `/latest/dynamic/instance-identity/document`: AWS's shape and keys.
#[tokio::test]
async fn instance_identity_document() {
    let h = Harness::new();
    h.get(&rich_instance(), "/latest/dynamic/")
        .await
        .assert_ok(TEXT, "instance-identity/");
    h.get(&rich_instance(), "/latest/dynamic/instance-identity")
        .await
        .assert_ok(TEXT, "document");
    let mut doc = rich_instance();
    doc.availability_zone = Some("us-west-2b".to_owned());
    h.get(&doc, "/latest/dynamic/instance-identity/document")
        .await
        .assert_ok(
            "text/plain",
            concat!(
                "{\n",
                "  \"accountId\" : \"6c8e9f2a1b3d4e5f6a7b8c9d0e1f2a3b\",\n",
                "  \"availabilityZone\" : \"us-west-2b\",\n",
                "  \"billingProducts\" : null,\n",
                "  \"devpayProductCodes\" : null,\n",
                "  \"marketplaceProductCodes\" : null,\n",
                "  \"imageId\" : \"ami-00000007\",\n",
                "  \"instanceId\" : \"i-0000abcd\",\n",
                "  \"instanceType\" : \"m1.small\",\n",
                "  \"kernelId\" : \"aki-00000002\",\n",
                "  \"privateIp\" : \"10.0.0.5\",\n",
                "  \"ramdiskId\" : null,\n",
                "  \"region\" : \"us-west-2\",\n",
                "  \"version\" : \"2017-09-30\"\n",
                "}"
            ),
        );
    for path in [
        "/2008-09-01/dynamic/instance-identity/document",
        "/latest/dynamic/instance-identity/pkcs7",
        "/latest/dynamic/fws",
    ] {
        assert_eq!(
            h.get(&rich_instance(), path).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
}
