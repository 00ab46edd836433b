//! IMDSv2: token issue rules, binding to the port, expiry, required mode,
//! and the IP TTL of the answers (AWS IMDS behaviour).
use hyper::{Method, StatusCode, header};

use super::*;
use crate::{backend::guest::DEFAULT_TTL, state::instance::TokenMode};

const TTL: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN: &str = "x-aws-ec2-metadata-token";

async fn put_token(
    h: &Harness,
    guest: &Guest,
    doc: &InstanceDoc,
    headers: &[(&str, &str)],
) -> Answer {
    h.send(
        guest,
        Some(doc),
        request(Method::PUT, "/latest/api/token", headers, ""),
    )
    .await
}

async fn mint(h: &Harness, guest: &Guest, doc: &InstanceDoc, ttl: &str) -> String {
    let answer = put_token(h, guest, doc, &[(TTL, ttl)]).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    answer.text().to_owned()
}

async fn get_with_token(
    h: &Harness,
    guest: &Guest,
    doc: &InstanceDoc,
    path: &str,
    token: Option<&str>,
) -> Answer {
    let headers: Vec<(&str, &str)> = token.map(|t| (TOKEN, t)).into_iter().collect();
    h.send(guest, Some(doc), request(Method::GET, path, &headers, ""))
        .await
}

#[tokio::test]
async fn token_is_issued_with_the_ttl_echoed() {
    let h = Harness::new();
    let doc = rich_instance();
    let answer = put_token(&h, &default_guest(), &doc, &[(TTL, "21600")]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.content_type(), "text/plain");
    assert_eq!(answer.headers[TTL], "21600");
    assert!(!answer.text().is_empty());
    // Usable right away, under either tree spelling.
    let token = answer.text().to_owned();
    let answer = get_with_token(
        &h,
        &default_guest(),
        &doc,
        "/latest/meta-data/instance-id",
        Some(&token),
    )
    .await;
    answer.assert_ok(TEXT, "i-0000abcd");
    let ec2 = h
        .send(
            &default_guest(),
            Some(&doc),
            request(Method::PUT, "/ec2/latest/api/token/", &[(TTL, "1")], ""),
        )
        .await;
    assert_eq!(ec2.status, StatusCode::OK);
}

#[tokio::test]
async fn bad_ttl_is_400() {
    let h = Harness::new();
    let doc = rich_instance();
    for headers in [
        vec![],
        vec![(TTL, "0")],
        vec![(TTL, "21601")],
        vec![(TTL, "-1")],
        vec![(TTL, "ten")],
    ] {
        let answer = put_token(&h, &default_guest(), &doc, &headers).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{headers:?}");
    }
    assert_eq!(
        put_token(&h, &default_guest(), &doc, &[(TTL, "1")])
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn forwarded_token_request_is_403() {
    let h = Harness::new();
    let answer = put_token(
        &h,
        &default_guest(),
        &rich_instance(),
        &[(TTL, "60"), ("X-Forwarded-For", "172.17.0.2")],
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn token_endpoint_only_takes_put() {
    let h = Harness::new();
    for method in [Method::GET, Method::POST, Method::HEAD] {
        let answer = h
            .send(
                &default_guest(),
                Some(&rich_instance()),
                request(method.clone(), "/latest/api/token", &[(TTL, "60")], ""),
            )
            .await;
        assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(answer.headers[header::ALLOW], "PUT");
    }
    // Only `latest` has the endpoint.
    let answer = h
        .send(
            &default_guest(),
            Some(&rich_instance()),
            request(Method::PUT, "/2009-04-04/api/token", &[(TTL, "60")], ""),
        )
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn token_from_another_port_is_401() {
    let h = Harness::new();
    let doc = rich_instance();
    let tap_a = guest(3, "tap-a", &[]);
    let token = mint(&h, &tap_a, &doc, "300").await;
    // Same instance, another tap (another slot and name).
    let tap_b = guest(4, "tap-b", &[]);
    let answer = get_with_token(&h, &tap_b, &doc, "/latest/meta-data/hostname", Some(&token)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    // The slot alone re-used under another name does not do either.
    let renamed = guest(3, "tap-c", &[]);
    let answer = get_with_token(
        &h,
        &renamed,
        &doc,
        "/latest/meta-data/hostname",
        Some(&token),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    // Nor the same tap once it serves another instance.
    let answer = get_with_token(
        &h,
        &tap_a,
        &bare_instance(),
        "/latest/meta-data/hostname",
        Some(&token),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let answer = get_with_token(&h, &tap_a, &doc, "/latest/meta-data/hostname", Some(&token)).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn expired_token_is_401() {
    let h = Harness::new();
    let doc = rich_instance();
    let token = mint(&h, &default_guest(), &doc, "60").await;
    h.advance(59);
    let answer = get_with_token(
        &h,
        &default_guest(),
        &doc,
        "/latest/meta-data/",
        Some(&token),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    h.advance(1);
    let answer = get_with_token(
        &h,
        &default_guest(),
        &doc,
        "/latest/meta-data/",
        Some(&token),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn invalid_token_is_401_even_when_optional() {
    let h = Harness::new();
    let doc = rich_instance();
    for token in [
        "",
        "garbage",
        "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let answer = get_with_token(
            &h,
            &default_guest(),
            &doc,
            "/latest/meta-data/",
            Some(token),
        )
        .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{token:?}");
    }
    // Without a token, optional mode answers.
    let answer = get_with_token(
        &h,
        &default_guest(),
        &doc,
        "/latest/meta-data/instance-id",
        None,
    )
    .await;
    answer.assert_ok(TEXT, "i-0000abcd");
}

#[tokio::test]
async fn required_mode_needs_a_token_on_ec2_paths() {
    let h = Harness::new();
    let doc = with_imds(rich_instance(), TokenMode::Required, 1);
    for path in [
        "/",
        "/latest/meta-data/instance-id",
        "/latest/user-data",
        "/latest/dynamic/instance-identity/document",
    ] {
        let answer = get_with_token(&h, &default_guest(), &doc, path, None).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let token = mint(&h, &default_guest(), &doc, "60").await;
    let answer = get_with_token(
        &h,
        &default_guest(),
        &doc,
        "/latest/meta-data/instance-id",
        Some(&token),
    )
    .await;
    answer.assert_ok(TEXT, "i-0000abcd");
    // The OpenStack tree is nova's, without sessions.
    let answer = get_with_token(
        &h,
        &default_guest(),
        &doc,
        "/openstack/latest/meta_data.json",
        None,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn tokens_survive_a_restart_with_the_same_key() {
    let doc = rich_instance();
    let before = Harness::with_key(ApiConfig::default(), [9; 32]);
    let token = mint(&before, &default_guest(), &doc, "600").await;
    let after = Harness::with_key(ApiConfig::default(), [9; 32]);
    let answer = get_with_token(
        &after,
        &default_guest(),
        &doc,
        "/latest/meta-data/hostname",
        Some(&token),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let other_key = Harness::with_key(ApiConfig::default(), [10; 32]);
    let answer = get_with_token(
        &other_key,
        &default_guest(),
        &doc,
        "/latest/meta-data/hostname",
        Some(&token),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
}

/// The token answer leaves with the hop limit; everything else with the
/// default (the connection keeps the lowest it was given: see
/// `ingress::conn`).
#[tokio::test]
async fn token_response_uses_the_hop_limit() {
    let h = Harness::new();
    let guest = default_guest();
    let doc = with_imds(rich_instance(), TokenMode::Optional, 3);
    let answer = get_with_token(&h, &guest, &doc, "/latest/meta-data/hostname", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.ip_ttl, DEFAULT_TTL);
    let answer = put_token(&h, &guest, &doc, &[(TTL, "60")]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.ip_ttl, 3);

    // Default hop limit: 1.
    let answer = put_token(&h, &guest, &rich_instance(), &[(TTL, "60")]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.ip_ttl, 1);
    // A refused token request leaves with the default.
    let answer = put_token(&h, &guest, &rich_instance(), &[(TTL, "0")]).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.ip_ttl, DEFAULT_TTL);
}

/// The OpenStack paths a container behind the guest must not read once the
/// instance requires tokens there (issue 16 item 3).
const OPENSTACK_SECRETS: [&str; 5] = [
    "/openstack",
    "/openstack/latest/meta_data.json",
    "/openstack/latest/user_data",
    "/openstack/latest/password",
    "/openstack/2012-08-10/meta_data.json",
];

/// By default the OpenStack tree is nova's: no token needed, none checked
/// (not even a bad one), and its answers travel as far as any packet, even
/// with tokens required on the EC2 tree.
#[tokio::test]
async fn the_openstack_tree_needs_no_token_by_default() {
    let h = Harness::new();
    let guest = default_guest();
    let doc = with_imds(rich_instance(), TokenMode::Required, 1);
    for path in OPENSTACK_SECRETS {
        for token in [None, Some("not-a-token")] {
            let answer = get_with_token(&h, &guest, &doc, path, token).await;
            assert_eq!(answer.status, StatusCode::OK, "{path} with {token:?}");
            assert_eq!(answer.ip_ttl, DEFAULT_TTL, "{path}");
        }
    }
}

/// `imds.openstack = "required"`: the OpenStack tree wants a valid token of
/// this port, for reading and for posting the password alike.
#[tokio::test]
async fn openstack_required_needs_a_token_of_this_port() {
    let h = Harness::new();
    let guest = default_guest();
    let doc = with_tokens_everywhere(rich_instance(), 1);
    for path in OPENSTACK_SECRETS {
        let answer = get_with_token(&h, &guest, &doc, path, None).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path}, no token");
        let answer = get_with_token(&h, &guest, &doc, path, Some("not-a-token")).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path}, garbage");
    }
    let post = |token: Option<&str>| {
        let headers: Vec<(&str, &str)> = token.map(|t| (TOKEN, t)).into_iter().collect();
        request(
            Method::POST,
            "/openstack/latest/password",
            &headers,
            "s3cret",
        )
    };
    let answer = h.send(&guest, Some(&doc), post(None)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "password POST");
    assert!(
        h.passwords.password(&doc.uuid).unwrap().is_none(),
        "stored anyway"
    );

    // Another port's token is no better than none.
    let other = super::guest(4, "tap-b", &[]);
    let foreign = mint(&h, &other, &doc, "60").await;
    let answer = get_with_token(
        &h,
        &guest,
        &doc,
        "/openstack/latest/meta_data.json",
        Some(&foreign),
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::UNAUTHORIZED,
        "another port's token"
    );

    // With its own token the guest reads everything, byte for byte.
    let token = mint(&h, &guest, &doc, "60").await;
    let answer = get_with_token(
        &h,
        &guest,
        &doc,
        "/openstack/latest/user_data",
        Some(&token),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(&answer.body[..], USER_DATA);
    let answer = get_with_token(
        &h,
        &guest,
        &doc,
        "/openstack/latest/meta_data.json",
        Some(&token),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.text().contains(RICH_UUID), "{}", answer.text());
    let answer = h.send(&guest, Some(&doc), post(Some(&token))).await;
    assert_eq!(answer.status, StatusCode::OK, "password POST with a token");
    assert_eq!(
        h.passwords.password(&doc.uuid).unwrap().as_deref(),
        Some("s3cret")
    );

    // Expired: refused again.
    h.advance(61);
    let answer = get_with_token(
        &h,
        &guest,
        &doc,
        "/openstack/latest/meta_data.json",
        Some(&token),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "expired token");
}

/// With `imds.openstack = "required"` every answer, both trees, refusals and
/// 404s included, leaves with the hop limit, not only the token.
#[tokio::test]
async fn openstack_required_puts_the_hop_limit_on_every_answer() {
    let h = Harness::new();
    let guest = default_guest();
    for hop_limit in [1, 3] {
        let doc = with_tokens_everywhere(rich_instance(), hop_limit);
        let token = mint(&h, &guest, &doc, "60").await;
        for (path, token, status) in [
            (
                "/openstack/latest/meta_data.json",
                Some(token.as_str()),
                StatusCode::OK,
            ),
            (
                "/openstack/latest/meta_data.json",
                None,
                StatusCode::UNAUTHORIZED,
            ),
            (
                "/openstack/latest/no_such_file",
                Some(token.as_str()),
                StatusCode::NOT_FOUND,
            ),
            (
                "/latest/meta-data/instance-id",
                Some(token.as_str()),
                StatusCode::OK,
            ),
            (
                "/latest/meta-data/instance-id",
                None,
                StatusCode::UNAUTHORIZED,
            ),
            ("/", Some(token.as_str()), StatusCode::OK),
        ] {
            let answer = get_with_token(&h, &guest, &doc, path, token).await;
            assert_eq!(answer.status, status, "{path} with {token:?}");
            assert_eq!(answer.ip_ttl, hop_limit, "{path} with {token:?}");
        }
        let answer = put_token(&h, &guest, &doc, &[(TTL, "0")]).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert_eq!(answer.ip_ttl, hop_limit, "a refused token request");
    }
}
