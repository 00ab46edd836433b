//! Daemon side of the admin API: HTTP/1.1 + JSON on a root-only unix socket.
//!
//! Routes (bodies and answers are JSON; errors are `{"error": "<one line>"}`):
//!
//! | method | path | does |
//! | --- | --- | --- |
//! | PUT | /v1/instances | create or replace (body: the document) |
//! | GET | /v1/instances | list (`InstanceSummary` rows) |
//! | GET, DELETE | /v1/instances/{uuid} | show, delete |
//! | GET, POST | /v1/ports | list, add (body: `PortAddRequest`; `?wait=SECONDS`: answer `PortStatus` once the tap is attached, absent or failing) |
//! | GET, DELETE | /v1/ports/{ifname} | show (`PortStatus`), delete (ifname percent-encoded) |
//! | GET | /v1/status | version, pid, uptime, counts, datapath (`?taps=true`: every tap), discovery |
use std::{
    collections::HashMap,
    convert::Infallible,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{
    Method, Request, Response, StatusCode,
    header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::UnixListener;

use super::{
    error::AdminError,
    wire::{self, ErrorBody, InstanceSummary, MAX_BODY_BYTES, PortStatus, TapState},
};
use crate::private_socket;
use crate::state::{
    FieldError, Port, PortAddRequest, Registry, RegistryError, Snapshot, port::parse_uuid,
};

/// What the admin API asks the datapath, supplied by whoever runs it.
pub trait DatapathView: Send + Sync {
    /// The datapath's part of `GET /v1/status`: counts and counters, and
    /// every tap only when `taps` (thousands of lines on a dense host).
    fn status(&self, taps: bool) -> serde_json::Value;
    /// Where the datapath is with `port`'s tap.
    fn tap_state(&self, port: &Port) -> TapState;
    /// Resolves at the datapath's next change after this call.
    fn next_change(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// The longest `?wait=` a request may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// One section of `GET /v1/status` that another layer supplies (discovery's connection and domains), under its name.
pub type StatusFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Binds the admin socket at `path`, root only (0600), as
/// [`crate::private_socket`] does: a live socket at `path` (another daemon)
/// is never taken over, and the socket is never reachable with the umask's
/// mode. Must be called inside a tokio runtime.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    let listener = private_socket::bind(path, 0o600, "--admin-socket")?;
    listener.set_nonblocking(true)?;
    UnixListener::from_std(listener).context("registering the admin socket with tokio")
}

/// Serves the admin API on `listener` until the task is dropped.
pub async fn serve(
    listener: UnixListener,
    registry: Arc<Registry>,
    datapath: Arc<dyn DatapathView>,
    sections: Vec<(&'static str, StatusFn)>,
) {
    let context = Arc::new(Context::new(registry, datapath, sections));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!("admin socket accept: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let context = Arc::clone(&context);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let context = Arc::clone(&context);
                async move { Ok::<_, Infallible>(context.handle(request).await) }
            });
            if let Err(err) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("admin connection: {err}");
            }
        });
    }
}

/// What every admin request is answered from.
pub(crate) struct Context {
    registry: Arc<Registry>,
    datapath: Arc<dyn DatapathView>,
    sections: Vec<(&'static str, StatusFn)>,
    started: Instant,
}

pub(crate) type Answer = Response<Full<Bytes>>;

/// The methods a known path accepts (for 405's Allow header); None for an
/// unknown path.
fn allowed_methods(segments: &[&str]) -> Option<&'static str> {
    match segments {
        ["instances"] => Some("GET, PUT"),
        ["instances", _] => Some("GET, DELETE"),
        ["ports"] => Some("GET, POST"),
        ["ports", _] => Some("GET, DELETE"),
        ["status"] => Some("GET"),
        _ => None,
    }
}

impl Context {
    pub(crate) fn new(
        registry: Arc<Registry>,
        datapath: Arc<dyn DatapathView>,
        sections: Vec<(&'static str, StatusFn)>,
    ) -> Self {
        Self {
            registry,
            datapath,
            sections,
            started: Instant::now(),
        }
    }

    /// Answers one request (any body type: hyper's on the socket, a plain
    /// one in tests).
    pub(crate) async fn handle<B>(&self, request: Request<B>) -> Answer
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: std::fmt::Display,
    {
        let segments = path_segments(request.uri().path());
        let allow = allowed_methods(&segments.iter().map(String::as_str).collect::<Vec<_>>());
        self.route(request).await.unwrap_or_else(|err| {
            let status = err.status();
            if status == StatusCode::INTERNAL_SERVER_ERROR {
                tracing::error!("admin request failed: {err}");
            }
            let mut answer = json(
                status,
                &ErrorBody {
                    error: err.to_string(),
                },
            );
            if let (StatusCode::METHOD_NOT_ALLOWED, Some(allow)) = (status, allow) {
                answer
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allow));
            }
            answer
        })
    }

    async fn route<B>(&self, request: Request<B>) -> Result<Answer, AdminError>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: std::fmt::Display,
    {
        let arrived = Instant::now();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or("").to_owned();
        let segments = path_segments(&path);
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let method = request.method().clone();
        match (segments.as_slice(), &method) {
            (["instances"], &Method::PUT) => {
                let body = read_body(request).await?;
                let doc = self
                    .blocking(move |registry| registry.put_instance(&body))
                    .await?;
                Ok(json(StatusCode::OK, &*doc))
            }
            (["instances"], &Method::GET) => Ok(json(
                StatusCode::OK,
                &instance_summaries(&self.registry.snapshot()),
            )),
            (["instances", id], &Method::GET) => {
                let uuid = path_uuid(id)?;
                let snapshot = self.registry.snapshot();
                let doc = snapshot
                    .instance(&uuid)
                    .ok_or_else(|| AdminError::NotFound(format!("no instance {uuid}")))?;
                Ok(json(StatusCode::OK, &**doc))
            }
            (["instances", id], &Method::DELETE) => {
                let id = path_segment(id)?;
                self.blocking(move |registry| registry.delete_instance(&id))
                    .await?;
                Ok(json(StatusCode::OK, &serde_json::json!({})))
            }
            (["ports"], &Method::GET) => {
                let snapshot = self.registry.snapshot();
                let ports: Vec<_> = snapshot.ports.values().map(|port| &**port).collect();
                Ok(json(StatusCode::OK, &ports))
            }
            (["ports"], &Method::POST) => {
                let wait = wait_parameter(&query)?;
                let body = read_body(request).await?;
                let request: PortAddRequest = serde_json::from_slice(&body)
                    .map_err(|err| FieldError::new("port request", err.to_string()))?;
                // Watching from before the write: a change that comes
                // before we look is not missed.
                let change = self.datapath.next_change();
                let port = self
                    .blocking(move |registry| registry.add_port(request))
                    .await?;
                match wait {
                    None => Ok(json(StatusCode::OK, &*port)),
                    Some(wait) => {
                        let status = self.wait_for_tap(port, change, arrived, wait).await;
                        Ok(json(StatusCode::OK, &status))
                    }
                }
            }
            (["ports", ifname], &Method::GET) => {
                let ifname = path_segment(ifname)?;
                let port = self
                    .registry
                    .snapshot()
                    .ports
                    .get(&ifname)
                    .cloned()
                    .ok_or_else(|| AdminError::NotFound(format!("no port {ifname}")))?;
                Ok(json(
                    StatusCode::OK,
                    &PortStatus {
                        datapath: self.datapath.tap_state(&port),
                        port: (*port).clone(),
                        waited_us: None,
                    },
                ))
            }
            (["ports", ifname], &Method::DELETE) => {
                let ifname = path_segment(ifname)?;
                let port = self
                    .blocking(move |registry| registry.delete_port(&ifname))
                    .await?;
                Ok(json(StatusCode::OK, &*port))
            }
            (["status"], &Method::GET) => {
                let taps = query_flag(&query, "taps")?;
                Ok(json(StatusCode::OK, &self.status(taps)))
            }
            _ if allowed_methods(&segments).is_some() => Err(AdminError::MethodNotAllowed {
                method: method.clone(),
                path,
            }),
            _ => Err(AdminError::NotFound(format!("no such endpoint: {path}"))),
        }
    }

    /// Registry writes wait for SQLite's fsync: keep them off the runtime's
    /// worker threads.
    async fn blocking<T: Send + 'static>(
        &self,
        write: impl FnOnce(&Registry) -> Result<T, RegistryError> + Send + 'static,
    ) -> Result<T, AdminError> {
        let registry = Arc::clone(&self.registry);
        tokio::task::spawn_blocking(move || write(&registry))
            .await
            .map_err(|err| RegistryError::Internal(err.into()))?
            .map_err(AdminError::from)
    }

    /// Waits (at most `wait`) until `port`'s tap is attached, absent or
    /// failing; `change` was made before the port was written.
    async fn wait_for_tap(
        &self,
        port: Arc<Port>,
        mut change: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
        arrived: Instant,
        wait: Duration,
    ) -> PortStatus {
        let deadline = tokio::time::Instant::from_std(arrived + wait);
        loop {
            let next = self.datapath.next_change();
            let state = self.datapath.tap_state(&port);
            let done = match &state {
                TapState::Attached { slot, .. } => *slot == port.slot,
                TapState::NoTap | TapState::Failing { .. } => true,
                TapState::Pending => false,
            };
            if done || tokio::time::timeout_at(deadline, change).await.is_err() {
                return PortStatus {
                    port: (*port).clone(),
                    datapath: state,
                    waited_us: Some(arrived.elapsed().as_micros() as u64),
                };
            }
            change = next;
        }
    }

    fn status(&self, taps: bool) -> serde_json::Value {
        let snapshot = self.registry.snapshot();
        let mut status = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "instances": snapshot.instances.len(),
            "ports": snapshot.ports.len(),
            "datapath": self.datapath.status(taps),
        });
        for (name, section) in &self.sections {
            status[*name] = section();
        }
        status
    }
}

fn instance_summaries(snapshot: &Snapshot) -> Vec<InstanceSummary> {
    let mut ports_of: HashMap<uuid::Uuid, Vec<String>> = HashMap::new();
    for port in snapshot.ports.values() {
        ports_of
            .entry(port.spec.instance)
            .or_default()
            .push(port.spec.ifname.clone());
    }
    let mut rows: Vec<InstanceSummary> = snapshot
        .instances
        .values()
        .map(|doc| InstanceSummary {
            uuid: doc.uuid,
            name: doc.name.clone(),
            hostname: doc.hostname.clone(),
            project_id: doc.project_id.clone(),
            availability_zone: doc.availability_zone.clone(),
            ports: ports_of.remove(&doc.uuid).unwrap_or_default(),
            source: snapshot.instance_source(&doc.uuid).clone(),
        })
        .collect();
    rows.sort_by(|a, b| (&a.name, a.uuid).cmp(&(&b.name, b.uuid)));
    rows
}

/// `?wait=SECONDS` (at most `MAX_WAIT`); None without it.
fn wait_parameter(query: &str) -> Result<Option<Duration>, AdminError> {
    let Some(value) = query_value(query, "wait") else {
        return Ok(None);
    };
    let seconds: f64 = value
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| FieldError::new("wait", format!("{value:?} is not a number of seconds")))?;
    Ok(Some(Duration::from_secs_f64(seconds).min(MAX_WAIT)))
}

/// `?NAME=true` / `?NAME=1` / `?NAME`; false without it.
fn query_flag(query: &str, name: &str) -> Result<bool, AdminError> {
    match query_value(query, name) {
        None | Some("false" | "0") => Ok(false),
        Some("" | "true" | "1") => Ok(true),
        Some(other) => Err(FieldError::new(name, format!("{other:?} is not true or false")).into()),
    }
}

fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// Reads the whole body, refusing (413) more than `MAX_BODY_BYTES`.
async fn read_body<B>(request: Request<B>) -> Result<Bytes, AdminError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(AdminError::TooLarge);
    }
    let mut body = std::pin::pin!(request.into_body());
    let mut collected = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| FieldError::new("request body", err.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if collected.len() + data.len() > MAX_BODY_BYTES {
                return Err(AdminError::TooLarge);
            }
            collected.extend_from_slice(&data);
        }
    }
    Ok(collected.freeze())
}

/// `/v1/a/b/` -> ["a", "b"]; anything outside /v1/ -> [].
fn path_segments(path: &str) -> Vec<String> {
    path.strip_prefix("/v1/")
        .map(|rest| {
            rest.trim_end_matches('/')
                .split('/')
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn path_segment(raw: &str) -> Result<String, AdminError> {
    wire::decode_segment(raw).ok_or_else(|| {
        FieldError::new(
            "path",
            format!("{raw:?} is not a valid percent-encoded name"),
        )
        .into()
    })
}

fn path_uuid(raw: &str) -> Result<uuid::Uuid, AdminError> {
    let text = path_segment(raw)?;
    Ok(parse_uuid("uuid", &text)?)
}

fn json(status: StatusCode, body: &impl Serialize) -> Answer {
    let mut bytes = serde_json::to_vec(body).unwrap_or_else(|err| {
        serde_json::json!({ "error": format!("serializing the answer: {err}") })
            .to_string()
            .into_bytes()
    });
    bytes.push(b'\n');
    let mut answer = Response::new(Full::new(Bytes::from(bytes)));
    *answer.status_mut() = status;
    answer
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    answer
}
