//! `/openstack/<version>/password`, from nova/api/metadata/password.py
//! `handle_password`: GET returns the stored value (or nothing), POST sets it
//! once (409 afterwards, checked before the size), more than
//! `CHUNKS * CHUNK_LENGTH` = 1020 bytes is 400 "Request is too large.".
use hyper::{Method, StatusCode, header};

use super::*;

/// webob's default response type, which nova's password answers keep.
const HTML: &str = "text/html; charset=UTF-8";
const PATH: &str = "/openstack/latest/password";

async fn post(h: &Harness, body: impl Into<Bytes>) -> Answer {
    h.send(
        &default_guest(),
        Some(&rich_instance()),
        request(Method::POST, PATH, &[], body),
    )
    .await
}

#[tokio::test]
async fn get_before_any_post_is_empty() {
    let h = Harness::new();
    h.get(&rich_instance(), PATH).await.assert_ok(HTML, "");
}

#[tokio::test]
async fn post_then_get_then_conflict() {
    let h = Harness::new();
    let secret = "c2VjcmV0LWVuY3J5cHRlZC13aXRoLXRoZS1rZXk=";
    let answer = post(&h, secret).await;
    answer.assert_ok(HTML, "");
    h.get(&rich_instance(), PATH).await.assert_ok(HTML, secret);
    h.get(&rich_instance(), "/openstack/2013-04-04/password")
        .await
        .assert_ok(HTML, secret);
    let uuid: uuid::Uuid = RICH_UUID.parse().unwrap();
    assert_eq!(
        h.passwords.password(&uuid).unwrap().as_deref(),
        Some(secret)
    );

    let again = post(&h, "another").await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    // The conflict comes first, even for a body that is too large.
    let again = post(&h, "x".repeat(2000)).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    h.get(&rich_instance(), PATH).await.assert_ok(HTML, secret);
}

/// A store that fails is the daemon's fault: 500, never the 409 that would
/// tell the guest its password is kept (nor an empty 200 that would say
/// none was posted).
#[tokio::test]
async fn a_failing_store_is_a_500_not_a_conflict() {
    let h = Harness::new();
    h.passwords.break_store();
    let answer = post(&h, "c2VjcmV0").await;
    assert_eq!(
        answer.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{answer:?}"
    );
    assert_eq!(
        answer.text(),
        "500 Internal Server Error\n\nThe server has either erred or is incapable of performing the requested operation.\n\n   "
    );
    let read = h.get(&rich_instance(), PATH).await;
    assert_eq!(read.status, StatusCode::INTERNAL_SERVER_ERROR, "{read:?}");
}

#[tokio::test]
async fn size_limit_is_1020_bytes() {
    let h = Harness::new();
    let answer = post(&h, "x".repeat(1021)).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer.text(),
        "400 Bad Request\n\nRequest is too large.\n\n   ",
        "nova's explanation, plain text for a request without Accept"
    );
    h.get(&rich_instance(), PATH).await.assert_ok(HTML, "");
    post(&h, "y".repeat(1020)).await.assert_ok(HTML, "");
    h.get(&rich_instance(), PATH)
        .await
        .assert_ok(HTML, &"y".repeat(1020));
}

#[tokio::test]
async fn bodies_over_max_body_are_413() {
    let h = Harness::with_config(ApiConfig {
        max_body: 2048,
        ..ApiConfig::default()
    });
    let answer = post(&h, "z".repeat(2049)).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    // A declared length over the limit is refused before reading.
    let answer = h
        .send(
            &default_guest(),
            Some(&rich_instance()),
            request(Method::POST, PATH, &[("content-length", "999999")], ""),
        )
        .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn empty_post_sets_nothing() {
    let h = Harness::new();
    post(&h, "").await.assert_ok(HTML, "");
    post(&h, "later").await.assert_ok(HTML, "");
    h.get(&rich_instance(), PATH).await.assert_ok(HTML, "later");
}

#[tokio::test]
async fn non_utf8_is_400() {
    let h = Harness::new();
    let answer = post(&h, Bytes::from_static(b"\xff\xfe")).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
}

/// `_password` only exists from GRIZZLY (2013-04-04) on.
#[tokio::test]
async fn not_before_grizzly() {
    let h = Harness::new();
    let answer = h
        .send(
            &default_guest(),
            Some(&rich_instance()),
            request(Method::POST, "/openstack/2012-08-10/password", &[], "pw"),
        )
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn head_and_other_methods() {
    let h = Harness::new();
    post(&h, "pw").await.assert_ok(HTML, "");
    let head = h
        .send(
            &default_guest(),
            Some(&rich_instance()),
            request(Method::HEAD, PATH, &[], ""),
        )
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(head.headers[header::CONTENT_LENGTH], "2");
    let put = h
        .send(
            &default_guest(),
            Some(&rich_instance()),
            request(Method::PUT, PATH, &[], "x"),
        )
        .await;
    assert_eq!(put.status, StatusCode::METHOD_NOT_ALLOWED);
}
