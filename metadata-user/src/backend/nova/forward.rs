//! What crosses between a guest and nova: which request headers go up
//! (never the guest's claims about who it is), and which answers come back
//! (the statuses neutron's agent passes on; anything else is our 500).
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    HeaderMap, Response, StatusCode,
    header::{self, HeaderName, HeaderValue},
};
use tracing::warn;

use super::{ForwardTarget, client::UpstreamError, outage::Outage};
use crate::backend::watch::{ETag, etag::find};

pub const X_INSTANCE_ID: HeaderName = HeaderName::from_static("x-instance-id");
pub const X_TENANT_ID: HeaderName = HeaderName::from_static("x-tenant-id");
pub const X_INSTANCE_ID_SIGNATURE: HeaderName = HeaderName::from_static("x-instance-id-signature");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Headers that say who the requester is, or that nova's handler switches
/// on (`X-Metadata-Provider` selects its load-balancer identity path). A
/// guest's values are dropped; we set the ones nova needs ourselves.
const IDENTITY_HEADERS: &[&str] = &[
    "x-instance-id",
    "x-tenant-id",
    "x-instance-id-signature",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "forwarded",
    "x-metadata-provider",
    "x-metadata-provider-signature",
];

/// Per-connection headers (RFC 9110 7.6.1), plus `host` (the client sets
/// nova's) and `content-length` (recomputed from the body we send).
const HOP_BY_HOP_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// Headers that would make nova's answer depend on the single request: a
/// compressed body (we pass no Content-Encoding back), 304/206 answers
/// (which we would turn into 500), or a 100-continue dance for a body we
/// already hold. Without them every answer is a whole, plain one that any
/// guest of the instance may share from the cache.
const PER_REQUEST_HEADERS: &[&str] = &[
    "accept-encoding",
    "expect",
    "range",
    "if-range",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
];

/// True for a header a guest (or the proxy in front of it) may not pass on.
pub fn is_dropped_header(name: &HeaderName) -> bool {
    let name = name.as_str();
    IDENTITY_HEADERS.contains(&name)
        || HOP_BY_HOP_HEADERS.contains(&name)
        || PER_REQUEST_HEADERS.contains(&name)
        || name.starts_with("x-neutron-")
}

/// The guest's headers minus the dropped ones (and any it named in
/// `Connection`), plus the four nova trusts: the instance, its project,
/// the signature, and the guest's own address.
pub fn upstream_headers(guest: &HeaderMap, target: &ForwardTarget, signature: &str) -> HeaderMap {
    let named_in_connection: Vec<String> = guest
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    let mut headers = HeaderMap::with_capacity(guest.len() + 4);
    for (name, value) in guest {
        if is_dropped_header(name) || named_in_connection.iter().any(|n| n == name.as_str()) {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    let value = |text: &str| {
        HeaderValue::from_str(text).expect("UUIDs, hex and IP addresses are valid header values")
    };
    headers.insert(X_INSTANCE_ID, value(&target.instance_id.to_string()));
    // The project comes from the operator; a value that cannot be a header
    // is sent empty, which nova answers with 404 (project mismatch).
    headers.insert(
        X_TENANT_ID,
        HeaderValue::from_str(&target.project_id).unwrap_or(HeaderValue::from_static("")),
    );
    headers.insert(X_INSTANCE_ID_SIGNATURE, value(signature));
    headers.insert(X_FORWARDED_FOR, value(&target.guest_addr.to_string()));
    headers
}

/// An answer for a guest. Cheap to clone: the cache hands out copies.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
    /// 200 answers: derived from the content (computed once, when nova's
    /// answer arrives, and kept with it in the cache).
    pub etag: Option<ETag>,
    /// A kept answer served because nova failed (`--stale-if-error`): its
    /// age in seconds, sent as `Age`.
    pub age: Option<u64>,
}

/// What nova may answer that reaches the guest as it is (neutron's agent
/// passes the same set); anything else becomes 500.
const PASSED_STATUSES: [u16; 9] = [200, 400, 403, 404, 409, 500, 502, 503, 504];

impl Answer {
    /// An answer with this status and content; 200s get their ETag.
    pub fn new(status: StatusCode, content_type: Option<HeaderValue>, body: Bytes) -> Self {
        let etag = (status == StatusCode::OK).then(|| nova_etag(content_type.as_ref(), &body));
        Self {
            status,
            content_type,
            body,
            etag,
            age: None,
        }
    }

    /// One of our own answers (never cached).
    pub fn local(status: StatusCode, message: &str) -> Self {
        Self {
            status,
            content_type: Some(HeaderValue::from_static("text/plain; charset=UTF-8")),
            body: Bytes::from(format!(
                "{} {}\n\n{message}\n",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            )),
            etag: None,
            age: None,
        }
    }

    /// The same answer, served `age` seconds after it arrived.
    pub fn aged(mut self, age: u64) -> Self {
        self.age = Some(age);
        self
    }

    /// nova could not be asked or failed: unreachable or too slow (our 503),
    /// or a 5xx of its own. What `--stale-if-error` covers.
    pub fn is_upstream_failure(&self) -> bool {
        matches!(self.status.as_u16(), 500 | 502 | 503 | 504)
    }

    /// nova's answer, or why there was none, as the guest will see it.
    /// Failures (no answer, or a 5xx) go to `outage`, which logs each
    /// outage once rather than every request in it.
    pub fn from_nova(
        target: &ForwardTarget,
        result: Result<Response<Bytes>, UpstreamError>,
        outage: &Outage,
    ) -> Self {
        let instance = &target.instance_id;
        let response = match result {
            Ok(response) => response,
            Err(err) => {
                outage.failed(instance, &err);
                return Self::local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The remote metadata server is temporarily unavailable. Please try again later.",
                );
            }
        };
        let status = response.status();
        if status.is_server_error() {
            outage.failed(instance, &format_args!("it answered {status}"));
        } else {
            outage.answered();
        }
        if !PASSED_STATUSES.contains(&status.as_u16()) {
            if !status.is_server_error() {
                warn!(%instance, %status, "unexpected status from nova metadata; answering 500");
            }
            return Self::local(
                StatusCode::INTERNAL_SERVER_ERROR,
                "An unknown error has occurred. Please try your request again.",
            );
        }
        if status == StatusCode::FORBIDDEN {
            warn!(
                %instance,
                "nova metadata answered 403 Forbidden: the shared secrets (metadata_proxy_shared_secret) probably differ"
            );
        }
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        Self::new(status, content_type, response.into_body())
    }

    /// Only answers that say something about the metadata itself are worth
    /// keeping: 200, and 404 (a path this instance does not have; a boot
    /// crawl probes many). Errors and refusals are never cached.
    pub fn is_cacheable(&self) -> bool {
        matches!(self.status, StatusCode::OK | StatusCode::NOT_FOUND)
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        if let Some(content_type) = self.content_type {
            headers.insert(header::CONTENT_TYPE, content_type);
        }
        if let Some(etag) = self.etag {
            headers.insert(header::ETAG, etag.header_value());
        }
        if let Some(age) = self.age {
            headers.insert(header::AGE, HeaderValue::from(age));
        }
        response
    }
}

/// nova's meta_data.json carries a `random_seed` that is new in every
/// answer nova renders; it is left out of the ETag, as the local backend
/// leaves out its own (see `watch::etag`). Only bodies that name it are
/// parsed.
fn nova_etag(content_type: Option<&HeaderValue>, body: &[u8]) -> ETag {
    let content_type = content_type
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let seed = (find(body, b"\"random_seed\"").is_some())
        .then(|| serde_json::from_slice::<serde_json::Value>(body).ok())
        .flatten()
        .and_then(|doc| doc.get("random_seed")?.as_str().map(str::to_owned));
    let volatile = seed.and_then(|seed| find(body, seed.as_bytes()));
    ETag::of(content_type, body, volatile)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn target() -> ForwardTarget {
        ForwardTarget {
            instance_id: "6c8a3b0e-1d6f-4d2b-9a57-0f4ad3a7e001".parse().unwrap(),
            project_id: "p1".into(),
            guest_addr: Ipv4Addr::new(10, 0, 0, 5).into(),
        }
    }

    #[test]
    fn guest_identity_and_hop_by_hop_headers_are_replaced() {
        let mut guest = HeaderMap::new();
        for (name, value) in [
            ("x-instance-id", "someone-else"),
            ("x-instance-id", "and-another"),
            ("x-tenant-id", "their-project"),
            ("x-instance-id-signature", "forged"),
            ("x-forwarded-for", "10.9.9.9"),
            ("x-neutron-network-id", "n"),
            ("x-neutron-router-id", "r"),
            ("x-metadata-provider", "lb"),
            ("forwarded", "for=10.9.9.9"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "hop"),
            ("transfer-encoding", "chunked"),
            ("host", "169.254.169.254"),
            ("content-length", "5"),
            ("accept-encoding", "gzip"),
            ("if-none-match", "\"etag\""),
            ("range", "bytes=0-1"),
            ("expect", "100-continue"),
            ("accept", "application/json"),
            ("user-agent", "cloud-init"),
        ] {
            guest.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let headers = upstream_headers(&guest, &target(), "sig");
        let mut seen: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                ("accept", "application/json"),
                ("user-agent", "cloud-init"),
                ("x-forwarded-for", "10.0.0.5"),
                ("x-instance-id", "6c8a3b0e-1d6f-4d2b-9a57-0f4ad3a7e001"),
                ("x-instance-id-signature", "sig"),
                ("x-tenant-id", "p1"),
            ]
            .map(|(n, v)| (n.to_string(), v.to_string()))
        );
    }

    #[test]
    fn statuses_map_as_neutron_agent() {
        for code in [
            200u16, 400, 403, 404, 409, 500, 502, 503, 504, 201, 301, 401, 418, 501,
        ] {
            let response = Response::builder()
                .status(code)
                .body(Bytes::from_static(b"x"))
                .unwrap();
            let answer = Answer::from_nova(&target(), Ok(response), &Outage::default());
            let expected = if PASSED_STATUSES.contains(&code) {
                code
            } else {
                500
            };
            assert_eq!(answer.status.as_u16(), expected, "nova {code}");
        }
        let answer = Answer::from_nova(
            &target(),
            Err(UpstreamError::Unreachable("refused".into())),
            &Outage::default(),
        );
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!answer.is_cacheable());
    }
}
