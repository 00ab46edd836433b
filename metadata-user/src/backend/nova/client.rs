//! The connection pool to nova-api-metadata: one hyper client, keep-alive,
//! plain HTTP or rustls, and one deadline for the whole exchange.
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Request, Response, Uri, http::uri::PathAndQuery};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use super::config::{NovaConfig, Protocol};

/// Idle connections to nova are kept this long (nova's eventlet/uwsgi
/// servers keep theirs longer, so we are the ones who close).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Enough for a boot storm's concurrency without hoarding sockets.
const POOL_MAX_IDLE: usize = 64;
/// nova's answers are small (user_data is at most 64 KiB); a larger one is
/// refused rather than buffered.
pub const MAX_ANSWER_BYTES: usize = 4 << 20;

/// Why no answer came from nova.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Unreachable(String),
    #[error("answer body: {0}")]
    Body(String),
}

pub struct NovaClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    scheme: &'static str,
    /// "host:port", with brackets around an IPv6 address.
    authority: String,
    timeout: Duration,
}

impl NovaClient {
    pub fn new(config: &NovaConfig) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.timeout));
        let connector = match (&config.protocol, &config.tls) {
            (Protocol::Https, Some(tls)) => HttpsConnectorBuilder::new()
                .with_tls_config((**tls).clone())
                .https_only()
                .enable_http1()
                .wrap_connector(http),
            // Plain http: the connector's TLS side is never used (the URIs
            // are http://), so it gets a config that trusts nothing.
            _ => HttpsConnectorBuilder::new()
                .with_tls_config(super::tls::trust_nothing_config())
                .https_or_http()
                .enable_http1()
                .wrap_connector(http),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        let authority = if config.host.contains(':') && !config.host.starts_with('[') {
            format!("[{}]:{}", config.host, config.port)
        } else {
            format!("{}:{}", config.host, config.port)
        };
        Self {
            client,
            scheme: match config.protocol {
                Protocol::Http => "http",
                Protocol::Https => "https",
            },
            authority,
            timeout: config.timeout,
        }
    }

    /// The URI of `path_and_query` on nova.
    pub fn uri(&self, path_and_query: &PathAndQuery) -> Result<Uri, hyper::http::Error> {
        Uri::builder()
            .scheme(self.scheme)
            .authority(self.authority.as_str())
            .path_and_query(path_and_query.clone())
            .build()
    }

    /// Sends the request and reads the whole answer, all within the timeout.
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Bytes>, UpstreamError> {
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|err| UpstreamError::Unreachable(error_chain(&err)))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|err| UpstreamError::Body(err.to_string()))?
                .to_bytes();
            Ok(Response::from_parts(parts, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or(Err(UpstreamError::Timeout(self.timeout)))
    }
}

/// hyper's client errors say little at the top ("client error (Connect)");
/// the causes say what happened (refused, certificate, ...).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
