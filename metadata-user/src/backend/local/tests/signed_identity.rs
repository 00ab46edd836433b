//! The signed identity paths of the local backend: 404 without a key,
//! signatures over the exact bytes `document` serves, the JWT's audience,
//! and IMDSv2 in `required` mode.
use std::sync::Arc;

use base64::Engine as _;
use hyper::{Method, StatusCode};
use openssl::{hash::MessageDigest, sign::Verifier};

use super::*;
use crate::backend::identity::{
    Identity, IdentityKey,
    jwt::Issuer,
    key::test_keys::{p256, rsa, self_signed},
};

fn identity(private: openssl::pkey::PKey<openssl::pkey::Private>) -> Arc<Identity> {
    Arc::new(Identity {
        key: IdentityKey::new(private.clone(), self_signed(&private)).unwrap(),
        issuer: Issuer {
            name: "test-issuer".into(),
            host: "hv-test".into(),
        },
    })
}

#[tokio::test]
async fn without_a_key_only_the_document_is_served() {
    let h = Harness::new();
    let rich = rich_instance();
    h.get(&rich, "/latest/dynamic/instance-identity/")
        .await
        .assert_ok(TEXT, "document");
    for path in [
        "/latest/dynamic/instance-identity/signature",
        "/latest/dynamic/instance-identity/pkcs7",
        "/latest/dynamic/instance-identity/rsa2048",
        "/openstack/identity?audience=vault",
    ] {
        assert_eq!(
            h.get(&rich, path).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
}

#[tokio::test]
async fn signatures_cover_the_served_document_of_this_guest_only() {
    let rsa_identity = identity(rsa(2048));
    let h = Harness::new().with_identity(rsa_identity.clone());
    let rich = rich_instance();
    h.get(&rich, "/latest/dynamic/instance-identity/")
        .await
        .assert_ok(TEXT, "document\npkcs7\nrsa2048\nsignature");
    let document = h
        .get(&rich, "/latest/dynamic/instance-identity/document")
        .await;
    let signature = h
        .get(&rich, "/latest/dynamic/instance-identity/signature")
        .await;
    assert_eq!(signature.content_type(), "text/plain");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(signature.text())
        .unwrap();
    let public = rsa_identity.key.public().unwrap();
    let verify = |data: &[u8]| {
        Verifier::new(MessageDigest::sha256(), &public)
            .unwrap()
            .verify_oneshot(&raw, data)
            .unwrap()
    };
    assert!(verify(&document.body));
    // Another guest's document (another port, other address) never verifies.
    let other_guest = guest(9, "tap-b", &[std::net::Ipv4Addr::new(10, 0, 0, 42)]);
    let mut other = rich.clone();
    other.ec2 = None;
    let theirs = h
        .send(
            &other_guest,
            Some(&other),
            request(
                Method::GET,
                "/latest/dynamic/instance-identity/document",
                &[],
                "",
            ),
        )
        .await;
    assert_ne!(theirs.body, document.body);
    assert!(!verify(&theirs.body));

    // Under an EC key there is no rsa2048.
    let h = Harness::new().with_identity(identity(p256()));
    h.get(&rich, "/latest/dynamic/instance-identity/")
        .await
        .assert_ok(TEXT, "document\npkcs7\nsignature");
    assert_eq!(
        h.get(&rich, "/latest/dynamic/instance-identity/rsa2048")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn jwt_needs_an_audience_and_names_this_instance() {
    let h = Harness::new().with_identity(identity(p256()));
    let rich = rich_instance();
    let answer = h.get(&rich, "/openstack/identity").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.text().contains("audience"), "{}", answer.text());
    let answer = h.get(&rich, "/openstack/identity?audience=vault").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.content_type(), "application/jwt");
    let claims = answer.text().split('.').nth(1).unwrap().to_owned();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["sub"], RICH_UUID);
    assert_eq!(claims["aud"], "vault");
    assert_eq!(claims["iat"], TEST_EPOCH);
    assert_eq!(claims["exp"], TEST_EPOCH + 3600);
    assert_eq!(claims["project_id"], "6c8e9f2a1b3d4e5f6a7b8c9d0e1f2a3b");
    assert_eq!(claims["availability_zone"], "az1");
    assert_eq!(claims["host"], "hv-test");
    assert_eq!(claims["iss"], "test-issuer");
}

#[tokio::test]
async fn required_tokens_cover_the_identity_paths() {
    let h = Harness::new().with_identity(identity(p256()));
    let doc = with_imds(rich_instance(), TokenMode::Required, 1);
    for path in [
        "/latest/dynamic/instance-identity/pkcs7",
        "/openstack/identity?audience=vault",
    ] {
        assert_eq!(
            h.get(&doc, path).await.status,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
    let token = h
        .send(
            &default_guest(),
            Some(&doc),
            request(
                Method::PUT,
                "/latest/api/token",
                &[("x-aws-ec2-metadata-token-ttl-seconds", "60")],
                "",
            ),
        )
        .await;
    let header = ("x-aws-ec2-metadata-token", token.text());
    for path in [
        "/latest/dynamic/instance-identity/pkcs7",
        "/openstack/identity?audience=vault",
    ] {
        let answer = h
            .send(
                &default_guest(),
                Some(&doc),
                request(Method::GET, path, &[header], ""),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
    }
}
