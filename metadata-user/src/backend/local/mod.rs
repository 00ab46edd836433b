//! The guest-facing API: nova-compatible OpenStack and EC2 trees, plus AWS
//! IMDSv2 session tokens.
//!
//! The reference is nova's own metadata handler (`nova/api/metadata/base.py`,
//! `handler.py`, `password.py`) as a guest sees it behind neutron's proxy:
//! same paths, same listings, same bytes, same content types, same error
//! pages. Where we go beyond nova (IMDSv2, the identity document, 405s for
//! methods nova would blindly answer) the module that does it says so.
//!
//! Who the caller is comes only from [`Guest`] (the tap the packet arrived
//! on, via the BPF map). No request header changes it; the one header with
//! any effect is `X-Forwarded-For`, which makes a token request 403 as on AWS.
//!
//! Layout: `paths` routes a request path, `ec2`/`identity` and `openstack`
//! answer their trees, `watch` holds watches, `password` and `token` the
//! two endpoints with state,
//! `view` applies nova's defaults to the instance document, `pyjson` and
//! `response` produce nova's exact bytes and headers, `rendered` and
//! `answer_cache` keep what was rendered until the document changes.
//!
//! Where we knowingly differ from nova (behind neutron):
//! - Methods: only GET/HEAD, POST on `password`, PUT on the token path; any
//!   other is 405 with `Allow` (nova answers a POST anywhere like a GET, and
//!   a PUT on `password` with 400).
//! - A path that walks into a string or list is 404 (nova: 500). A leading
//!   `//` is collapsed like any other (nova: the EC2 version list).
//! - A deleted instance gets 404 everywhere, `/` included (nova lists the
//!   versions before looking the caller up).
//! - HEAD carries the Content-Length a GET would (neutron's proxy sends 0).
//! - JSON objects taken from the instance document (`vendor_data`,
//!   `network_data`, `meta`, unknown device keys) come out with sorted keys;
//!   nova keeps its source's order. Same members and values either way.
//! - Several public keys are all shown (nova shows the one keypair).
//! - Added: `PUT /latest/api/token` and `/<2009-04-04|latest>/dynamic/
//!   instance-identity/document`, not listed in `/latest/` (as in nova's
//!   listing, which has neither); with an identity key, the document's
//!   `signature`, `pkcs7`, `rsa2048` and `/openstack/identity` (a JWT).
//! - Added: an `ETag` on every read answer, and `?wait_for_change=true`
//!   (`watch`: held until `instance put` changes the answer).
mod answer_cache;
mod ec2;
mod identity;
mod openstack;
mod password;
pub mod paths;
mod pyjson;
mod rendered;
pub mod response;
pub mod token;
mod view;
pub mod watch;

pub use rendered::{SEED_BASE64_LEN, fill_random_seed};

#[cfg(test)]
mod tests;

use std::{
    pin::pin,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Empty};
use hyper::{
    HeaderMap, Method, Request,
    header::{self, HeaderValue},
    http::request::Parts,
};

use crate::{
    backend::{
        guest::{Answer, Guest, Repeat, Reply},
        identity::Identity,
    },
    state::instance::{InstanceDoc, TokenMode},
};
use answer_cache::AnswerCache;
use openstack::Resource;
use paths::Route;
use response::{ApiError, Document};
use token::{Binding, TokenKey};
use view::InstanceView;

/// Settings of the API (the daemon's config file feeds them).
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// nova's `[api] dhcp_domain`: appended to every hostname; empty for none.
    pub domain: String,
    /// Largest request body read (password POST); larger is 413. nova's own
    /// password limit (1020 bytes, 400) applies below it.
    pub max_body: usize,
    /// The zone of instances whose document names none (nova's
    /// `default_availability_zone`).
    pub default_availability_zone: String,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            domain: "novalocal".to_owned(),
            max_body: 16 * 1024,
            default_availability_zone: "nova".to_owned(),
        }
    }
}

/// Where guest-posted passwords live (persisted by the daemon's store).
pub trait PasswordStore: Send + Sync {
    /// The password the guest posted, None when it posted none. An error
    /// when the store cannot tell: the guest then gets a 500, not "none".
    fn password(&self, uuid: &uuid::Uuid) -> Result<Option<String>, PasswordError>;
    /// Sets the password unless one is already set.
    fn set_password(&self, uuid: &uuid::Uuid, password: &str) -> Result<(), PasswordError>;
}

/// Why a password was not read or stored. Only `AlreadySet` is the guest's
/// doing (409); a store that failed is ours (500), never a 409 that would
/// tell the guest a password is kept when none is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("the instance already has a password")]
    AlreadySet,
    #[error("the password store failed")]
    StoreFailed,
}

impl From<PasswordError> for ApiError {
    fn from(err: PasswordError) -> Self {
        match err {
            PasswordError::AlreadySet => ApiError::Conflict,
            PasswordError::StoreFailed => ApiError::Internal,
        }
    }
}

/// Wall clock, injectable so tests can expire tokens and move the date.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Everything `handle` needs besides the request: built once per daemon.
pub struct ApiContext {
    config: ApiConfig,
    token_key: TokenKey,
    passwords: Arc<dyn PasswordStore>,
    /// Counts passwords set, so that watches of `password` wake.
    passwords_set: tokio::sync::watch::Sender<u64>,
    /// The signed identity's key; None: its paths are 404 (the document
    /// itself is still served).
    identity: Option<Arc<Identity>>,
    clock: Clock,
    answers: AnswerCache,
}

impl ApiContext {
    /// `token_key` signs IMDSv2 tokens; keep it across restarts so tokens
    /// stay valid.
    pub fn new(config: ApiConfig, token_key: [u8; 32], passwords: Arc<dyn PasswordStore>) -> Self {
        Self {
            config,
            token_key: TokenKey::new(token_key),
            passwords,
            passwords_set: tokio::sync::watch::Sender::new(0),
            identity: None,
            clock: Arc::new(SystemTime::now),
            answers: AnswerCache::default(),
        }
    }

    /// Signs identities with this key (`--identity-key`).
    pub fn with_identity(mut self, identity: Option<Arc<Identity>>) -> Self {
        self.identity = identity;
        self
    }

    /// Replaces the wall clock (tests).
    #[cfg(test)]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn now(&self) -> SystemTime {
        (self.clock)()
    }

    fn now_unix(&self) -> u64 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs())
    }
}

/// Answers one guest request. `instance` is the current document for the
/// guest's port (None: the instance was deleted -> 404 for everything).
/// At once, except a password POST, which waits for its body.
pub fn handle<'a, B>(
    ctx: &'a ApiContext,
    guest: &'a Guest,
    instance: Option<Arc<InstanceDoc>>,
    req: Request<B>,
) -> Answer<'a>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'a,
    B::Error: std::fmt::Display,
{
    let (parts, body) = req.into_parts();
    let Some(doc) = instance else {
        return Answer::ready(finish(Err(ApiError::NotFound), None, &parts));
    };
    match answer(ctx, guest, &doc, &parts, body) {
        Ok(Step::Done(reply)) => Answer::ready(finish(Ok(reply), Some(&doc), &parts)),
        Err(error) => Answer::ready(finish(Err(error), Some(&doc), &parts)),
        Ok(Step::SetPassword(body)) => Answer::later(async move {
            let reply = set_password(ctx, &doc, &parts, body).await;
            finish(reply, Some(&doc), &parts)
        }),
    }
}

/// What is left to answer a request once its head is looked at.
enum Step<B> {
    Done(Reply),
    /// A password POST: its body is still to be read (a wait), then stored.
    SetPassword(B),
}

/// The answer as it leaves: an error rendered, and the IP TTL. The TTL is
/// decided per response; ingress keeps a lowered one for the rest of the
/// connection, so what follows a token on a keep-alive connection goes no
/// further than the token could. An instance that keeps all of its metadata
/// from anything behind the guest (`imds.openstack = "required"`) has every
/// answer at the hop limit, refusals included.
fn finish(reply: Result<Reply, ApiError>, instance: Option<&InstanceDoc>, parts: &Parts) -> Reply {
    let mut reply = reply
        .unwrap_or_else(|error| Reply::new(error.into_response(&parts.method, &parts.headers)));
    if let Some(hop_limit) = instance.and_then(view::every_answer_hop_limit) {
        reply.ip_ttl = reply.ip_ttl.min(hop_limit);
    }
    reply
}

/// A document answer, which travels as far as any other packet. Reads
/// carry the document's ETag.
fn document_reply(document: Document, method: &Method) -> Reply {
    if is_read(method) {
        Reply::new(document.into_read_response(method))
    } else {
        Reply::new(document.into_response(method))
    }
}

fn is_read(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD
}

/// A document answer that a repeat of the request gets again, with a new
/// seed (`Reply::repeat`): for a request that sent no token, since a
/// token's check depends on the clock.
fn repeatable_reply(document: Document, parts: &Parts) -> Reply {
    let seed = document.volatile.clone();
    let mut reply = document_reply(document, &parts.method);
    if !parts.headers.contains_key(&token::TOKEN_HEADER) {
        reply.repeat = Some(Repeat { seed });
    }
    reply
}

/// Answers a GET or HEAD from its request head alone: what a watch renders
/// again when the instance changes.
pub fn answer_read(
    ctx: &ApiContext,
    guest: &Guest,
    instance: Option<&Arc<InstanceDoc>>,
    parts: &Parts,
) -> Reply {
    let reply = match instance {
        Some(doc) => match answer(ctx, guest, doc, parts, Empty::<Bytes>::new()) {
            Ok(Step::Done(reply)) => Ok(reply),
            // Only a POST sets a password, and a read is no POST.
            Ok(Step::SetPassword(_)) => Err(ApiError::MethodNotAllowed {
                allow: ALLOW_PASSWORD,
            }),
            Err(error) => Err(error),
        },
        None => Err(ApiError::NotFound),
    };
    let mut reply = finish(reply, instance.map(Arc::as_ref), parts);
    // A watch's answer: a repeat of its request is held again, not
    // answered with this.
    reply.repeat = None;
    reply
}

const ALLOW_READ: &str = "GET, HEAD";
const ALLOW_PASSWORD: &str = "GET, HEAD, POST";
const ALLOW_TOKEN: &str = "PUT";

fn answer<B>(
    ctx: &ApiContext,
    guest: &Guest,
    doc: &Arc<InstanceDoc>,
    parts: &Parts,
    body: B,
) -> Result<Step<B>, ApiError> {
    let view = InstanceView::new(doc, guest, &ctx.config);
    let method = &parts.method;
    match Route::from_request_path(parts.uri.path()) {
        Route::Ec2(segments) if is_token_path(&segments) => {
            issue_token(ctx, &view, method, &parts.headers).map(Step::Done)
        }
        Route::Ec2(segments) => {
            check_session(ctx, &view, &parts.headers, view.token_mode())?;
            let (document, repeatable) = ec2_document(ctx, &view, doc, &segments)?;
            require_read(method, ALLOW_READ)?;
            Ok(Step::Done(match repeatable {
                Repeatable::Yes => repeatable_reply(document, parts),
                Repeatable::No => document_reply(document, method),
            }))
        }
        Route::OpenStack(segments) if segments == ["identity"] => {
            // A credential like the EC2 tree's: the same IMDSv2 rules.
            check_session(ctx, &view, &parts.headers, view.token_mode())?;
            require_read(method, ALLOW_READ)?;
            let document = identity::jwt(ctx, &view, parts.uri.query())?;
            Ok(Step::Done(document_reply(document, method)))
        }
        Route::OpenStack(segments) => {
            // nova's tree knows no sessions, unless the instance asks for
            // them there too; a token is then required, whatever the method.
            let mode = view.openstack_token_mode();
            if mode == TokenMode::Required {
                check_session(ctx, &view, &parts.headers, mode)?;
            }
            answer_openstack(ctx, doc, &view, &segments, parts, body)
        }
    }
}

/// The OpenStack tree: documents, and the password endpoint.
fn answer_openstack<B>(
    ctx: &ApiContext,
    doc: &Arc<InstanceDoc>,
    view: &InstanceView<'_>,
    segments: &[String],
    parts: &Parts,
    body: B,
) -> Result<Step<B>, ApiError> {
    let method = &parts.method;
    let reply = match openstack::resolve(segments)? {
        Resource::Versions => {
            require_read(method, ALLOW_READ)?;
            document_reply(openstack::versions(ctx.now()), method)
        }
        Resource::File(version, file) => {
            let answers = ctx.answers.for_guest(view.guest, doc);
            let rendered = answers.openstack(version, file, || {
                openstack::render(view, version, file, answers.user_data())
            })?;
            require_read(method, ALLOW_READ)?;
            repeatable_reply(rendered.document(), parts)
        }
        Resource::Password => {
            let store = ctx.passwords.as_ref();
            if *method == Method::POST {
                password::check_unset(store, &doc.uuid)?;
                return Ok(Step::SetPassword(body));
            }
            require_read(method, ALLOW_PASSWORD)?;
            document_reply(password::read(store, &doc.uuid)?, method)
        }
    };
    Ok(Step::Done(reply))
}

/// A password POST, once `answer` has let it through: reads its body and
/// stores the password.
async fn set_password<B>(
    ctx: &ApiContext,
    doc: &InstanceDoc,
    parts: &Parts,
    body: B,
) -> Result<Reply, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: std::fmt::Display,
{
    let store = ctx.passwords.as_ref();
    let body = read_body(body, &parts.headers, ctx.config.max_body).await?;
    let document = password::write(store, &doc.uuid, &body)?;
    // Wakes watchers of the password (the registry publishes no snapshot
    // for it).
    ctx.passwords_set.send_modify(|count| *count += 1);
    Ok(document_reply(document, &parts.method))
}

/// Whether a document comes from the instance document and the port alone,
/// so that a repeat of its request may get it again (`Reply::repeat`).
enum Repeatable {
    Yes,
    /// The signed identity, whose signature and key the registry does not
    /// hold: left out rather than reasoned about.
    No,
}

/// A GET on the EC2 tree (any method: the caller checks it afterwards, as
/// nova looks the path up first).
fn ec2_document(
    ctx: &ApiContext,
    view: &InstanceView<'_>,
    doc: &Arc<InstanceDoc>,
    segments: &[String],
) -> Result<(Document, Repeatable), ApiError> {
    let document = match ec2::resolve(segments)? {
        ec2::Resource::Versions => Document::text(ec2::versions_listing()),
        ec2::Resource::Version => ec2::version_listing(view),
        ec2::Resource::Dynamic(version, rest) => {
            return Ok((identity::lookup(ctx, view, version, rest)?, Repeatable::No));
        }
        ec2::Resource::MetaData(version, path) => {
            let answers = ctx.answers.for_guest(view.guest, doc);
            let tree = answers.ec2_tree(version, || ec2::meta_data(view, version));
            ec2::meta_data_node(tree, path)?
        }
        ec2::Resource::UserData => {
            let answers = ctx.answers.for_guest(view.guest, doc);
            Document::text(answers.user_data().ok_or(ApiError::NotFound)?.clone())
        }
    };
    Ok((document, Repeatable::Yes))
}

fn require_read(method: &Method, allow: &'static str) -> Result<(), ApiError> {
    if is_read(method) {
        Ok(())
    } else {
        Err(ApiError::MethodNotAllowed { allow })
    }
}

/// AWS's token endpoint, `/latest/api/token` (also under `/ec2`).
fn is_token_path(segments: &[String]) -> bool {
    segments == ["latest", "api", "token"]
}

/// `PUT /latest/api/token`: 403 when proxied (X-Forwarded-For), 400 without a
/// TTL of 1..=21600 s; the answer leaves with the instance's hop limit as IP
/// TTL, so it dies one router away from the guest as on AWS.
fn issue_token(
    ctx: &ApiContext,
    view: &InstanceView<'_>,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Reply, ApiError> {
    if *method != Method::PUT {
        return Err(ApiError::MethodNotAllowed { allow: ALLOW_TOKEN });
    }
    if headers.contains_key("x-forwarded-for") {
        return Err(ApiError::Forbidden);
    }
    let ttl = headers
        .get(&token::TTL_HEADER)
        .and_then(|value| token::parse_ttl(value.as_bytes()))
        .ok_or(ApiError::BadRequest { explanation: None })?;
    let token = ctx
        .token_key
        .mint(binding(view), ctx.now_unix().saturating_add(ttl));
    let mut response = Document::new(token, response::AWS_TEXT_PLAIN).into_response(method);
    response
        .headers_mut()
        .insert(token::TTL_HEADER, HeaderValue::from(ttl));
    Ok(Reply {
        response,
        ip_ttl: view.hop_limit(),
        repeat: None,
    })
}

/// IMDSv2 rules for EC2 paths (and OpenStack paths with `imds.openstack =
/// "required"`): a token, when sent, must be valid (401 otherwise, in either
/// mode); `required` mode also refuses requests without.
fn check_session(
    ctx: &ApiContext,
    view: &InstanceView<'_>,
    headers: &HeaderMap,
    mode: TokenMode,
) -> Result<(), ApiError> {
    match headers.get(&token::TOKEN_HEADER) {
        Some(value) => {
            let token = value.to_str().map_err(|_| ApiError::Unauthorized)?;
            ctx.token_key
                .verify(binding(view), token, ctx.now_unix())
                .map_err(|_| ApiError::Unauthorized)
        }
        None if mode == TokenMode::Required => Err(ApiError::Unauthorized),
        None => Ok(()),
    }
}

fn binding<'a>(view: &'a InstanceView<'_>) -> Binding<'a> {
    Binding {
        slot: view.guest.port.slot,
        ifname: &view.guest.port.spec.ifname,
        instance: view.doc.uuid,
    }
}

/// Reads a request body of at most `limit` bytes (413 beyond).
async fn read_body<B>(body: B, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ApiError::PayloadTooLarge);
    }
    let mut body = pin!(body);
    let mut collected = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| {
            tracing::debug!("request body: {err}");
            ApiError::BadRequest { explanation: None }
        })?;
        if let Ok(data) = frame.into_data() {
            if collected.len() + data.len() > limit {
                return Err(ApiError::PayloadTooLarge);
            }
            collected.extend_from_slice(&data);
        }
    }
    Ok(collected.freeze())
}
