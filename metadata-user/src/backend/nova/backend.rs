//! `NovaBackend::forward`: one guest request to nova and back, through the
//! cache for GETs.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, http::uri::PathAndQuery};
use tokio::sync::watch;
use tracing::warn;

use super::{
    ForwardTarget,
    cache::{AnswerCache, CacheKey, CachePolicy, CacheStats, DEFAULT_MAX_BYTES},
    client::NovaClient,
    config::{DEFAULT_METADATA_CACHE_EXPIRATION, NovaConfig, SharedSecret},
    forward::{Answer, upstream_headers},
    outage::Outage,
    sign::sign_instance_id,
    watch::{Polls, Refetch},
};
use crate::{
    backend::{
        guest::Guest,
        identity::{Identity, IdentityRoute},
        watch::{WatchQuery, query},
    },
    metrics::{BackendLabel, Metrics},
};

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
    /// None when both `--metadata-cache-expiration` and `--stale-if-error`
    /// are 0.
    cache: Option<Arc<AnswerCache>>,
    /// How often watched paths are asked again.
    poll_interval: Duration,
    polls: Arc<Polls>,
    /// The signed identity's key; None: identity paths go to nova (404).
    identity: Option<Arc<Identity>>,
    upstream_requests: AtomicU64,
    /// Logs nova's outages once each.
    outage: Outage,
    /// Where the time nova takes is recorded.
    metrics: Arc<Metrics>,
}

/// Counters for `status` and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NovaStats {
    /// Requests sent to nova (including ones that got no answer).
    pub upstream_requests: u64,
    /// Paths being polled for watchers now.
    pub watched_paths: usize,
    pub cache: CacheStats,
}

/// A request to forward, taken apart: what the exchange with nova needs,
/// as often as it is made (a watch's polls make it again).
pub(super) struct Upstream {
    pub(super) method: Method,
    pub(super) headers: HeaderMap,
    pub(super) path_and_query: PathAndQuery,
    pub(super) body: Bytes,
}

impl NovaBackend {
    /// Needs no runtime until the first request.
    pub fn new(config: &NovaConfig) -> Self {
        let policy = CachePolicy {
            ttl: config.cache_expiration,
            stale_if_error: config.stale_if_error,
            max_bytes: DEFAULT_MAX_BYTES,
        };
        let cache = (!policy.ttl.is_zero() || !policy.stale_if_error.is_zero())
            .then(|| AnswerCache::with_policy(policy));
        let poll_interval = if config.cache_expiration.is_zero() {
            Duration::from_secs(DEFAULT_METADATA_CACHE_EXPIRATION)
        } else {
            config.cache_expiration
        };
        Self {
            inner: Arc::new(Inner {
                client: NovaClient::new(config),
                secret: config.secret.clone(),
                cache,
                poll_interval,
                polls: Arc::default(),
                identity: None,
                upstream_requests: AtomicU64::new(0),
                outage: Outage::default(),
                // Metrics of its own until the daemon hands in the shared ones.
                metrics: Arc::new(Metrics::new(BackendLabel::Nova)),
            }),
        }
    }

    /// Answers the identity paths with this key (`--identity-key`).
    pub fn with_identity(config: &NovaConfig, identity: Option<Arc<Identity>>) -> Self {
        let backend = Self::new(config);
        let inner = Arc::into_inner(backend.inner).expect("just made");
        Self {
            inner: Arc::new(Inner { identity, ..inner }),
        }
    }

    /// Records nova's answer times into `metrics` (the daemon's).
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Self {
        let inner = Arc::into_inner(self.inner).expect("not shared yet");
        Self {
            inner: Arc::new(Inner { metrics, ..inner }),
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
        match Self::take_apart(request, None).await {
            Ok(upstream) => self.exchange_cached(target, upstream).await.into_response(),
            Err(refusal) => refusal.into_response(),
        }
    }

    /// The request's parts and whole body (413 over [`MAX_REQUEST_BODY`]);
    /// `path_and_query` replaces the request's own when given.
    async fn take_apart<B>(
        request: Request<B>,
        path_and_query: Option<PathAndQuery>,
    ) -> Result<Upstream, Answer>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(Answer::local(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Request is too large.",
                ));
            }
            Err(_) => {
                return Err(Answer::local(
                    StatusCode::BAD_REQUEST,
                    "The request body could not be read.",
                ));
            }
        };
        let path_and_query = path_and_query.unwrap_or_else(|| {
            parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"))
        });
        Ok(Upstream {
            method: parts.method,
            headers: parts.headers,
            path_and_query,
            body,
        })
    }

    fn cache_key(target: &ForwardTarget, path_and_query: &PathAndQuery) -> CacheKey {
        CacheKey {
            instance: target.instance_id,
            project: target.project_id.clone(),
            path_and_query: path_and_query.as_str().to_owned(),
        }
    }

    /// One exchange with nova, made again each time the returned closure
    /// is called.
    fn refetch(&self, target: &ForwardTarget, upstream: Upstream) -> Refetch {
        let inner = self.inner.clone();
        let target = target.clone();
        let upstream = Arc::new(upstream);
        Arc::new(move || {
            let inner = inner.clone();
            let target = target.clone();
            let upstream = upstream.clone();
            Box::pin(async move {
                let signature = sign_instance_id(&inner.secret.0, &target.instance_id.to_string());
                let mut request = Request::new(Full::new(upstream.body.clone()));
                *request.method_mut() = upstream.method.clone();
                *request.headers_mut() = upstream_headers(&upstream.headers, &target, &signature);
                match inner.client.uri(&upstream.path_and_query) {
                    Ok(uri) => *request.uri_mut() = uri,
                    Err(err) => {
                        warn!(path = %upstream.path_and_query, "cannot build the nova URI: {err}");
                        return Answer::local(StatusCode::BAD_REQUEST, "Bad request path.");
                    }
                }
                inner.upstream_requests.fetch_add(1, Ordering::Relaxed);
                let started = std::time::Instant::now();
                let result = inner.client.send(request).await;
                inner.metrics.record_upstream(started.elapsed());
                Answer::from_nova(&target, result, &inner.outage)
            })
        })
    }

    /// GETs through the cache, anything else straight to nova.
    pub(super) async fn exchange_cached(
        &self,
        target: &ForwardTarget,
        upstream: Upstream,
    ) -> Answer {
        let method = upstream.method.clone();
        let cacheable = method == Method::GET && upstream.body.is_empty();
        let key = Self::cache_key(target, &upstream.path_and_query);
        let refetch = self.refetch(target, upstream);
        let cache = self.inner.cache.as_ref();
        if let Some(cache) = cache
            && cacheable
        {
            return cache.get_or_fetch(key, || refetch()).await;
        }
        let answer = refetch().await;
        if method == Method::POST
            && let Some(cache) = cache
        {
            // Whatever nova made of it, the next GET must ask nova again.
            cache.invalidate_password(&target.instance_id);
        }
        answer
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
        let target = match Self::target_for(guest, instance_project) {
            Ok(target) => target,
            Err(refusal) => return refusal.into_response(),
        };
        if let Some(identity) = &self.inner.identity
            && let Some(route) = IdentityRoute::from_path(request.uri().path())
        {
            if request.method() != Method::GET && request.method() != Method::HEAD {
                return Answer::local(StatusCode::METHOD_NOT_ALLOWED, "GET only.").into_response();
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_secs());
            return self
                .identity_answer(identity, &target, route, request.uri().query(), now)
                .await
                .into_response();
        }
        self.forward(&target, request).await
    }

    fn target_for(guest: &Guest, instance_project: Option<&str>) -> Result<ForwardTarget, Answer> {
        ForwardTarget::for_guest(guest, instance_project).map_err(|err| {
            warn!(port = %guest.port.spec.ifname, "cannot forward to nova: {err}");
            Answer::local(
                StatusCode::INTERNAL_SERVER_ERROR,
                "This port has no project; see the daemon's log.",
            )
        })
    }

    /// A GET with `?wait_for_change=true`: nova is asked without the watch
    /// parameters (so every watcher of a path shares one cache entry and
    /// one poll); the guest is answered at once unless it already has the
    /// current answer, else when a poll finds another, at its timeout, or
    /// at shutdown.
    pub async fn watch_guest<B>(
        &self,
        guest: &Guest,
        instance_project: Option<&str>,
        request: Request<B>,
        query: &WatchQuery,
        shutdown: watch::Receiver<bool>,
    ) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match Self::target_for(guest, instance_project) {
            Ok(target) => self.watch(&target, request, query, shutdown).await,
            Err(refusal) => refusal.into_response(),
        }
    }

    /// [`watch_guest`](Self::watch_guest) for a resolved target.
    pub async fn watch<B>(
        &self,
        target: &ForwardTarget,
        request: Request<B>,
        query: &WatchQuery,
        mut shutdown: watch::Receiver<bool>,
    ) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path_and_query = without_watch_query(request.uri());
        let upstream = match Self::take_apart(request, Some(path_and_query)).await {
            Ok(upstream) => upstream,
            Err(refusal) => return refusal.into_response(),
        };
        let key = Self::cache_key(target, &upstream.path_and_query);
        let refetch = self.refetch(target, upstream);
        let current = match &self.inner.cache {
            Some(cache) => cache.get_or_fetch(key.clone(), || refetch()).await,
            None => refetch().await,
        };
        if current.status != StatusCode::OK
            || !query.has(current.etag.as_ref().map(|etag| etag.as_str()))
        {
            return current.into_response();
        }
        let mut watching = self.inner.polls.join(
            key,
            current.clone(),
            self.inner.poll_interval,
            self.inner.cache.clone(),
            refetch,
        );
        let deadline = tokio::time::Instant::now() + query.timeout;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shutdown.wait_for(|down| *down) => break,
                changed = watching.latest.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let latest = watching.latest.borrow_and_update().clone();
                    if latest.status != current.status || latest.etag != current.etag {
                        return latest.into_response();
                    }
                }
            }
        }
        let latest = watching.latest.borrow().clone();
        latest.into_response()
    }

    pub fn stats(&self) -> NovaStats {
        NovaStats {
            upstream_requests: self.inner.upstream_requests.load(Ordering::Relaxed),
            watched_paths: self.inner.polls.polled(),
            cache: self
                .inner
                .cache
                .as_ref()
                .map(|c| c.stats())
                .unwrap_or_default(),
        }
    }
}

/// The request's path and query without the watch parameters.
fn without_watch_query(uri: &hyper::Uri) -> PathAndQuery {
    let path = uri.path();
    let text = match uri.query().and_then(query::without_watch_params) {
        Some(rest) => format!("{path}?{rest}"),
        None => path.to_owned(),
    };
    text.parse()
        .unwrap_or_else(|_| PathAndQuery::from_static("/"))
}
