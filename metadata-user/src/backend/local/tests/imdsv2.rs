//! IMDSv2: token issue rules, binding to the port, expiry, required mode,
//! and the IP TTL of the answers (AWS IMDS behaviour).
use hyper::{Method, StatusCode, header};

use super::*;
use crate::{backend::guest::DEFAULT_TTL, state::instance::TokenMode};

const TTL: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN: &str = "x-aws-ec2-metadata-token";

/// One guest (its port) asking for one instance's metadata.
struct Session<'a> {
    h: &'a Harness,
    guest: &'a Guest,
    doc: &'a InstanceDoc,
}

impl<'a> Session<'a> {
    fn new(h: &'a Harness, guest: &'a Guest, doc: &'a InstanceDoc) -> Self {
        Self { h, guest, doc }
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> Answer {
        self.h.send(self.guest, Some(self.doc), request).await
    }

    async fn put_token(&self, headers: &[(&str, &str)]) -> Answer {
        self.send(request(Method::PUT, "/latest/api/token", headers, ""))
            .await
    }

    /// A token valid for `ttl` seconds (asserted issued).
    async fn mint(&self, ttl: &str) -> String {
        let answer = self.put_token(&[(TTL, ttl)]).await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        answer.text().to_owned()
    }

    /// A GET of `path`, with `token` if given.
    async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        let headers: Vec<(&str, &str)> = token.map(|t| (TOKEN, t)).into_iter().collect();
        self.send(request(Method::GET, path, &headers, "")).await
    }
}

#[tokio::test]
async fn token_is_issued_with_the_ttl_echoed() {
    let h = Harness::new();
    let (guest, doc) = (default_guest(), rich_instance());
    let s = Session::new(&h, &guest, &doc);
    let answer = s.put_token(&[(TTL, "21600")]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.content_type(), "text/plain");
    assert_eq!(answer.headers[TTL], "21600");
    assert!(!answer.text().is_empty());
    // Usable right away, under either tree spelling.
    let token = answer.text().to_owned();
    let answer = s.get("/latest/meta-data/instance-id", Some(&token)).await;
    answer.assert_ok(TEXT, "i-0000abcd");
    let ec2 = s
        .send(request(
            Method::PUT,
            "/ec2/latest/api/token/",
            &[(TTL, "1")],
            "",
        ))
        .await;
    assert_eq!(ec2.status, StatusCode::OK);
}

#[tokio::test]
async fn bad_ttl_is_400() {
    let h = Harness::new();
    let (guest, doc) = (default_guest(), rich_instance());
    let s = Session::new(&h, &guest, &doc);
    for headers in [
        vec![],
        vec![(TTL, "0")],
        vec![(TTL, "21601")],
        vec![(TTL, "-1")],
        vec![(TTL, "ten")],
    ] {
        let answer = s.put_token(&headers).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{headers:?}");
    }
    assert_eq!(s.put_token(&[(TTL, "1")]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn forwarded_token_request_is_403() {
    let h = Harness::new();
    let (guest, doc) = (default_guest(), rich_instance());
    let answer = Session::new(&h, &guest, &doc)
        .put_token(&[(TTL, "60"), ("X-Forwarded-For", "172.17.0.2")])
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn token_endpoint_only_takes_put() {
    let h = Harness::new();
    let (guest, doc) = (default_guest(), rich_instance());
    let s = Session::new(&h, &guest, &doc);
    for method in [Method::GET, Method::POST, Method::HEAD] {
        let answer = s
            .send(request(
                method.clone(),
                "/latest/api/token",
                &[(TTL, "60")],
                "",
            ))
            .await;
        assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(answer.headers[header::ALLOW], "PUT");
    }
    // Only `latest` has the endpoint.
    let answer = s
        .send(request(
            Method::PUT,
            "/2009-04-04/api/token",
            &[(TTL, "60")],
            "",
        ))
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn token_from_another_port_is_401() {
    let h = Harness::new();
    let doc = rich_instance();
    let tap_a = guest(3, "tap-a", &[]);
    let token = Session::new(&h, &tap_a, &doc).mint("300").await;
    let (h, token) = (&h, token.as_str());
    let hostname = |guest, doc| async move {
        Session::new(h, guest, doc)
            .get("/latest/meta-data/hostname", Some(token))
            .await
            .status
    };
    // Same instance, another tap (another slot and name).
    let tap_b = guest(4, "tap-b", &[]);
    assert_eq!(hostname(&tap_b, &doc).await, StatusCode::UNAUTHORIZED);
    // The slot alone re-used under another name does not do either.
    let renamed = guest(3, "tap-c", &[]);
    assert_eq!(hostname(&renamed, &doc).await, StatusCode::UNAUTHORIZED);
    // Nor the same tap once it serves another instance.
    let bare = bare_instance();
    assert_eq!(hostname(&tap_a, &bare).await, StatusCode::UNAUTHORIZED);
    assert_eq!(hostname(&tap_a, &doc).await, StatusCode::OK);
}

#[tokio::test]
async fn expired_token_is_401() {
    let h = Harness::new();
    let (guest, doc) = (default_guest(), rich_instance());
    let s = Session::new(&h, &guest, &doc);
    let token = s.mint("60").await;
    h.advance(59);
    let answer = s.get("/latest/meta-data/", Some(&token)).await;
    assert_eq!(answer.status, StatusCode::OK);
    h.advance(1);
    let answer = s.get("/latest/meta-data/", Some(&token)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn invalid_token_is_401_even_when_optional() {
    let h = Harness::new();
    let (guest, doc) = (default_guest(), rich_instance());
    let s = Session::new(&h, &guest, &doc);
    for token in [
        "",
        "garbage",
        "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let answer = s.get("/latest/meta-data/", Some(token)).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{token:?}");
    }
    // Without a token, optional mode answers.
    let answer = s.get("/latest/meta-data/instance-id", None).await;
    answer.assert_ok(TEXT, "i-0000abcd");
}

#[tokio::test]
async fn required_mode_needs_a_token_on_ec2_paths() {
    let h = Harness::new();
    let guest = default_guest();
    let doc = with_imds(rich_instance(), TokenMode::Required, 1);
    let s = Session::new(&h, &guest, &doc);
    for path in [
        "/",
        "/latest/meta-data/instance-id",
        "/latest/user-data",
        "/latest/dynamic/instance-identity/document",
    ] {
        let answer = s.get(path, None).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let token = s.mint("60").await;
    let answer = s.get("/latest/meta-data/instance-id", Some(&token)).await;
    answer.assert_ok(TEXT, "i-0000abcd");
    // The OpenStack tree is nova's, without sessions.
    let answer = s.get("/openstack/latest/meta_data.json", None).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn tokens_survive_a_restart_with_the_same_key() {
    let (guest, doc) = (default_guest(), rich_instance());
    let before = Harness::with_key(ApiConfig::default(), [9; 32]);
    let token = Session::new(&before, &guest, &doc).mint("600").await;
    let (guest, doc, token) = (&guest, &doc, token.as_str());
    let hostname = |h| async move {
        Session::new(&h, guest, doc)
            .get("/latest/meta-data/hostname", Some(token))
            .await
            .status
    };
    let after = Harness::with_key(ApiConfig::default(), [9; 32]);
    assert_eq!(hostname(after).await, StatusCode::OK);
    let other_key = Harness::with_key(ApiConfig::default(), [10; 32]);
    assert_eq!(hostname(other_key).await, StatusCode::UNAUTHORIZED);
}

/// The token answer leaves with the hop limit; everything else with the
/// default (the connection keeps the lowest it was given: see
/// `ingress::conn`).
#[tokio::test]
async fn token_response_uses_the_hop_limit() {
    let h = Harness::new();
    let guest = default_guest();
    let doc = with_imds(rich_instance(), TokenMode::Optional, 3);
    let s = Session::new(&h, &guest, &doc);
    let answer = s.get("/latest/meta-data/hostname", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.ip_ttl, DEFAULT_TTL);
    let answer = s.put_token(&[(TTL, "60")]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.ip_ttl, 3);

    // Default hop limit: 1.
    let rich = rich_instance();
    let s = Session::new(&h, &guest, &rich);
    let answer = s.put_token(&[(TTL, "60")]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.ip_ttl, 1);
    // A refused token request leaves with the default.
    let answer = s.put_token(&[(TTL, "0")]).await;
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
    let s = Session::new(&h, &guest, &doc);
    for path in OPENSTACK_SECRETS {
        for token in [None, Some("not-a-token")] {
            let answer = s.get(path, token).await;
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
    let s = Session::new(&h, &guest, &doc);
    for path in OPENSTACK_SECRETS {
        let answer = s.get(path, None).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path}, no token");
        let answer = s.get(path, Some("not-a-token")).await;
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
    let answer = s.send(post(None)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "password POST");
    assert!(
        h.passwords.password(&doc.uuid).unwrap().is_none(),
        "stored anyway"
    );

    // Another port's token is no better than none.
    let other = super::guest(4, "tap-b", &[]);
    let foreign = Session::new(&h, &other, &doc).mint("60").await;
    let answer = s
        .get("/openstack/latest/meta_data.json", Some(&foreign))
        .await;
    assert_eq!(
        answer.status,
        StatusCode::UNAUTHORIZED,
        "another port's token"
    );

    // With its own token the guest reads everything, byte for byte.
    let token = s.mint("60").await;
    let answer = s.get("/openstack/latest/user_data", Some(&token)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(&answer.body[..], USER_DATA);
    let answer = s
        .get("/openstack/latest/meta_data.json", Some(&token))
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.text().contains(RICH_UUID), "{}", answer.text());
    let answer = s.send(post(Some(&token))).await;
    assert_eq!(answer.status, StatusCode::OK, "password POST with a token");
    assert_eq!(
        h.passwords.password(&doc.uuid).unwrap().as_deref(),
        Some("s3cret")
    );

    // Expired: refused again.
    h.advance(61);
    let answer = s
        .get("/openstack/latest/meta_data.json", Some(&token))
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
        let s = Session::new(&h, &guest, &doc);
        let token = s.mint("60").await;
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
            let answer = s.get(path, token).await;
            assert_eq!(answer.status, status, "{path} with {token:?}");
            assert_eq!(answer.ip_ttl, hop_limit, "{path} with {token:?}");
        }
        let answer = s.put_token(&[(TTL, "0")]).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert_eq!(answer.ip_ttl, hop_limit, "a refused token request");
    }
}
