//! `NovaBackend::forward`: one guest request to nova and back, through the
//! cache for GETs.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::{Method, Request, Response, StatusCode, http::uri::PathAndQuery};
use tracing::warn;

use super::{
    ForwardTarget,
    cache::{AnswerCache, CacheKey, CacheStats, DEFAULT_MAX_BYTES},
    client::NovaClient,
    config::{NovaConfig, SharedSecret},
    forward::{Answer, upstream_headers},
    sign::sign_instance_id,
};
use crate::{backend::guest::Guest, metrics::Metrics};

/// Largest request body passed to nova. nova's only POST is the password
/// (at most 1020 bytes); this leaves room without buffering floods.
pub const MAX_REQUEST_BODY: usize = 64 << 10;

/// The nova backend: shared by every guest connection (cheap to clone).
#[derive(Clone)]
pub struct NovaBackend {
    inner: Arc<Inner>,
}

struct Inner {
    client: NovaClient,
    secret: SharedSecret,
    /// None when `--metadata-cache-expiration 0`.
    cache: Option<Arc<AnswerCache>>,
    upstream_requests: AtomicU64,
    /// Where the time nova takes is recorded.
    metrics: Arc<Metrics>,
}

/// Counters for `status` and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NovaStats {
    /// Requests sent to nova (including ones that got no answer).
    pub upstream_requests: u64,
    pub cache: CacheStats,
}

impl NovaBackend {
    /// Needs no runtime until the first request. Records into metrics of
    /// its own (tests); the daemon uses [`with_metrics`](Self::with_metrics).
    #[cfg(test)]
    pub fn new(config: &NovaConfig) -> Self {
        Self::with_metrics(
            config,
            Arc::new(Metrics::new(crate::metrics::BackendLabel::Nova)),
        )
    }

    /// Records nova's latency into `metrics`.
    pub fn with_metrics(config: &NovaConfig, metrics: Arc<Metrics>) -> Self {
        let cache = (!config.cache_expiration.is_zero())
            .then(|| AnswerCache::new(config.cache_expiration, DEFAULT_MAX_BYTES));
        Self {
            inner: Arc::new(Inner {
                client: NovaClient::new(config),
                secret: config.secret.clone(),
                cache,
                upstream_requests: AtomicU64::new(0),
                metrics,
            }),
        }
    }

    /// Sends the guest's request to nova on behalf of `target` and returns
    /// what the guest should see. Never fails: nova unreachable or too slow
    /// is 503, an unexpected status is 500, a body over 64 KiB is 413.
    pub async fn forward<B>(
        &self,
        target: &ForwardTarget,
        request: Request<B>,
    ) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => {
                return Answer::local(StatusCode::PAYLOAD_TOO_LARGE, "Request is too large.")
                    .into_response();
            }
            Err(_) => {
                return Answer::local(
                    StatusCode::BAD_REQUEST,
                    "The request body could not be read.",
                )
                .into_response();
            }
        };
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let method = parts.method.clone();
        let cache_key = CacheKey {
            instance: target.instance_id,
            project: target.project_id.clone(),
            path_and_query: path_and_query.as_str().to_owned(),
        };
        let body_is_empty = body.is_empty();
        let inner = self.inner.clone();
        let upstream_target = target.clone();
        let exchange = move || async move {
            let signature =
                sign_instance_id(&inner.secret.0, &upstream_target.instance_id.to_string());
            let mut request = Request::new(Full::new(body));
            *request.method_mut() = parts.method;
            *request.headers_mut() = upstream_headers(&parts.headers, &upstream_target, &signature);
            match inner.client.uri(&path_and_query) {
                Ok(uri) => *request.uri_mut() = uri,
                Err(err) => {
                    warn!(path = %path_and_query, "cannot build the nova URI: {err}");
                    return Answer::local(StatusCode::BAD_REQUEST, "Bad request path.");
                }
            }
            inner.upstream_requests.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let result = inner.client.send(request).await;
            inner.metrics.record_upstream(started.elapsed());
            Answer::from_nova(&upstream_target, result)
        };

        let cache = self.inner.cache.as_ref();
        if let Some(cache) = cache
            && method == Method::GET
            && body_is_empty
        {
            return cache
                .get_or_fetch(cache_key, exchange)
                .await
                .into_response();
        }
        let answer = exchange().await;
        if method == Method::POST
            && let Some(cache) = cache
        {
            // Whatever nova made of it, the next GET must ask nova again.
            cache.invalidate_password(&target.instance_id);
        }
        answer.into_response()
    }

    /// For the guest server: forwards a request from a guest identified by
    /// the datapath (or the neutron socket). `instance_project` is the
    /// instance document's project_id, if the daemon has the document.
    pub async fn serve_guest<B>(
        &self,
        guest: &Guest,
        instance_project: Option<&str>,
        request: Request<B>,
    ) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match ForwardTarget::for_guest(guest, instance_project) {
            Ok(target) => self.forward(&target, request).await,
            Err(err) => {
                warn!(port = %guest.port.spec.ifname, "cannot forward to nova: {err}");
                Answer::local(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "This port has no project; see the daemon's log.",
                )
                .into_response()
            }
        }
    }

    pub fn stats(&self) -> NovaStats {
        NovaStats {
            upstream_requests: self.inner.upstream_requests.load(Ordering::Relaxed),
            cache: self
                .inner
                .cache
                .as_ref()
                .map(|c| c.stats())
                .unwrap_or_default(),
        }
    }
}
