//! Turning answers and errors into HTTP responses, with the headers and
//! bodies nova's stack (webob behind neutron) produces.
//!
//! Content types: nova sets `text/plain` or `application/json` on webob's
//! response, and webob appends `; charset=UTF-8` to `text/*` types only. The
//! password handler returns its string straight to `webob.dec.wsgify`, so it
//! keeps webob's default `text/html; charset=UTF-8`.
//!
//! Errors: nova raises `webob.exc.HTTPNotFound()` and friends, and the guest
//! sees webob's generated page, in HTML, JSON or plain text depending on its
//! `Accept` header (`WSGIHTTPException.generate_response`).
use std::ops::Range;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    HeaderMap, Method, Response, StatusCode,
    header::{self, HeaderValue},
};

use super::pyjson;
use crate::backend::watch::ETag;

pub const TEXT_PLAIN: &str = "text/plain; charset=UTF-8";
pub const APPLICATION_JSON: &str = "application/json";
/// webob's default response type, which the password handler keeps.
pub const TEXT_HTML: &str = "text/html; charset=UTF-8";
/// What AWS IMDS sends with tokens and the identity document (no charset).
pub const AWS_TEXT_PLAIN: &str = "text/plain";

pub type HttpResponse = Response<Full<Bytes>>;

/// A successful answer before it becomes a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    pub body: Bytes,
    pub content_type: &'static str,
    /// A span of `body` that is new in every answer (meta_data.json's
    /// random_seed), left out of the ETag.
    pub volatile: Option<Range<usize>>,
    /// The ETag when it is known already (a kept answer's): not computed
    /// again from the bytes.
    pub etag: Option<ETag>,
}

impl Document {
    pub fn new(body: impl Into<Bytes>, content_type: &'static str) -> Self {
        Self {
            body: body.into(),
            content_type,
            volatile: None,
            etag: None,
        }
    }

    /// With its ETag known (`etag` must be what [`Document::etag`] computes).
    pub fn with_etag(self, etag: ETag) -> Self {
        Self {
            etag: Some(etag),
            ..self
        }
    }

    pub fn text(body: impl Into<Bytes>) -> Self {
        Self::new(body, TEXT_PLAIN)
    }

    /// Derived from the bytes (volatile span excluded): a render cache can
    /// keep it next to them.
    pub fn etag(&self) -> ETag {
        match &self.etag {
            Some(known) => known.clone(),
            None => ETag::of(self.content_type, &self.body, self.volatile.clone()),
        }
    }

    pub fn into_response(self, method: &Method) -> HttpResponse {
        let mut response = body_response(StatusCode::OK, self.body, method);
        set_content_type(&mut response, self.content_type);
        response
    }

    /// A read (GET/HEAD) answer: the response with its ETag.
    pub fn into_read_response(self, method: &Method) -> HttpResponse {
        let etag = self.etag();
        let mut response = self.into_response(method);
        response
            .headers_mut()
            .insert(header::ETAG, etag.header_value());
        response
    }
}

/// Everything we answer with other than 200, named by cause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiError {
    NotFound,
    /// The resource exists but not for this method; `allow` lists the ones it has.
    MethodNotAllowed {
        allow: &'static str,
    },
    /// 400 with webob's default explanation, or nova's own (`explanation`).
    BadRequest {
        explanation: Option<&'static str>,
    },
    Unauthorized,
    Forbidden,
    Conflict,
    PayloadTooLarge,
    /// Something of ours failed (signing, a store write, a socket option
    /// the answer needs); the log says what, and the guest gets no answer
    /// it could take for the real one.
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::Conflict => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The error page for a request with this method and headers.
    pub fn into_response(self, method: &Method, request_headers: &HeaderMap) -> HttpResponse {
        let page = match &self {
            Self::MethodNotAllowed { .. } => ErrorPage::method_not_allowed(method),
            Self::BadRequest {
                explanation: Some(explanation),
            } => ErrorPage::new(self.status(), explanation),
            other => ErrorPage::new(other.status(), default_explanation(other.status())),
        };
        let mut response = page.render(method, request_headers);
        if let Self::MethodNotAllowed { allow } = self {
            // webob leaves Allow out; RFC 9110 requires it on a 405.
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

/// webob's `explanation` for each status we produce (`webob/exc.py`).
fn default_explanation(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => {
            "The server could not comply with the request since it is either malformed or otherwise incorrect."
        }
        StatusCode::UNAUTHORIZED => {
            "This server could not verify that you are authorized to access the document you requested. Either you supplied the wrong credentials (e.g., bad password), or your browser does not understand how to supply the credentials required."
        }
        StatusCode::FORBIDDEN => "Access was denied to this resource.",
        StatusCode::NOT_FOUND => "The resource could not be found.",
        StatusCode::CONFLICT => "There was a conflict when trying to complete your request.",
        StatusCode::PAYLOAD_TOO_LARGE => "The body of your request was too large for this server.",
        StatusCode::TOO_MANY_REQUESTS => {
            "The client has sent too many requests in a given amount of time"
        }
        StatusCode::INTERNAL_SERVER_ERROR => {
            "The server has either erred or is incapable of performing the requested operation."
        }
        _ => "",
    }
}

/// One webob error page: the status line text, and the body template already
/// filled in (HTML-escaped for the HTML page, raw for the others).
pub struct ErrorPage {
    status: StatusCode,
    html_body: String,
    raw_body: String,
}

impl ErrorPage {
    /// The default template: `${explanation}<br /><br />\n${detail}\n${html_comment}\n`
    /// with no detail and no comment.
    pub fn new(status: StatusCode, explanation: &str) -> Self {
        Self {
            status,
            html_body: format!("{}<br /><br />\n\n\n", html_escape(explanation)),
            raw_body: format!("{explanation}<br /><br />\n\n\n"),
        }
    }

    /// HTTPMethodNotAllowed's own template, which names the method.
    fn method_not_allowed(method: &Method) -> Self {
        let template = |method: &str| {
            format!("The method {method} is not allowed for this resource. <br /><br />\n")
        };
        Self {
            status: StatusCode::METHOD_NOT_ALLOWED,
            html_body: template(&html_escape(method.as_str())),
            raw_body: template(method.as_str()),
        }
    }

    fn status_line(&self) -> String {
        format!(
            "{} {}",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or("")
        )
    }

    pub fn render(&self, method: &Method, request_headers: &HeaderMap) -> HttpResponse {
        let status_line = self.status_line();
        let (content_type, body) = match negotiate(request_headers.get(header::ACCEPT)) {
            ErrorFormat::Html => (
                TEXT_HTML,
                format!(
                    "<html>\n <head>\n  <title>{status_line}</title>\n </head>\n <body>\n  <h1>{status_line}</h1>\n  {}\n </body>\n</html>",
                    self.html_body
                ),
            ),
            ErrorFormat::Json => {
                let mut object = pyjson::Object::new();
                object.insert("message", self.raw_body.as_str());
                object.insert("code", status_line.as_str());
                object.insert("title", self.status.canonical_reason().unwrap_or(""));
                (
                    APPLICATION_JSON,
                    String::from_utf8(pyjson::dumps(&object)).expect("json.dumps output is ASCII"),
                )
            }
            ErrorFormat::Plain => (
                TEXT_PLAIN,
                format!("{status_line}\n\n{}", strip_tags(&self.raw_body)),
            ),
        };
        let mut response = body_response(self.status, Bytes::from(body), method);
        set_content_type(&mut response, content_type);
        response
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ErrorFormat {
    Html,
    Json,
    Plain,
}

/// webob's choice between its two offers, `text/html` then `application/json`:
/// each offer gets the quality of the most specific range matching it, the
/// best quality wins (HTML on a tie), nothing acceptable means plain text. A
/// missing header reads as empty (so plain text); an unparsable one accepts
/// everything (so HTML).
fn negotiate(accept: Option<&HeaderValue>) -> ErrorFormat {
    let Some(value) = accept.and_then(|value| value.to_str().ok()) else {
        return if accept.is_some() {
            ErrorFormat::Html
        } else {
            ErrorFormat::Plain
        };
    };
    let Some(ranges) = parse_accept(value) else {
        return ErrorFormat::Html;
    };
    let quality = |offer_type: &str, offer_subtype: &str| {
        ranges
            .iter()
            .filter_map(|(range_type, range_subtype, q)| {
                let specificity = match (range_type.as_str(), range_subtype.as_str()) {
                    (t, s) if t == offer_type && s == offer_subtype => 2,
                    (t, "*") if t == offer_type => 1,
                    ("*", "*") => 0,
                    _ => return None,
                };
                Some((specificity, *q))
            })
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, q)| q)
            .unwrap_or(0.0)
    };
    let html = quality("text", "html");
    let json = quality("application", "json");
    if html <= 0.0 && json <= 0.0 {
        ErrorFormat::Plain
    } else if json > html {
        ErrorFormat::Json
    } else {
        ErrorFormat::Html
    }
}

/// `type/subtype;q=x` ranges, lower-cased; None when the header is malformed.
fn parse_accept(value: &str) -> Option<Vec<(String, String, f32)>> {
    let mut ranges = Vec::new();
    for item in value.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let mut parts = item.split(';');
        let media = parts.next()?.trim().to_ascii_lowercase();
        let (range_type, range_subtype) = media.split_once('/')?;
        if range_type.is_empty() || range_subtype.is_empty() {
            return None;
        }
        let mut q = 1.0f32;
        for param in parts {
            if let Some((name, value)) = param.trim().split_once('=')
                && name.trim().eq_ignore_ascii_case("q")
            {
                q = value
                    .trim()
                    .parse()
                    .ok()
                    .filter(|q| (0.0..=1.0).contains(q))?;
            }
        }
        ranges.push((range_type.to_owned(), range_subtype.to_owned(), q));
    }
    Some(ranges)
}

/// Python's `html.escape(s, quote=True)`.
fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            other => out.push(other),
        }
    }
    out
}

/// webob's `strip_tags` for the plain-text page: newlines become spaces,
/// `<br ...>` becomes a newline, other tags vanish.
fn strip_tags(text: &str) -> String {
    let flattened = text.replace('\n', " ").replace('\r', "");
    let mut out = String::with_capacity(flattened.len());
    let mut rest = flattened.as_str();
    while let Some(open) = rest.find('<') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('>') else {
            out.push_str(&rest[open..]);
            rest = "";
            break;
        };
        let tag = &rest[open..open + close + 1];
        if tag.len() >= 3 && tag[1..3].eq_ignore_ascii_case("br") {
            out.push('\n');
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

/// A response with `body`, or for HEAD no body but the Content-Length the
/// body would have had (what eventlet sends for nova; hyper keeps an explicit
/// Content-Length on HEAD responses).
///
/// Any other answer's length is its body's, which ingress writes (hyper
/// and `guest_http` alike): a header of its own here would be a value
/// allocated per answer and written only to be replaced.
pub fn body_response(status: StatusCode, body: Bytes, method: &Method) -> HttpResponse {
    if method != Method::HEAD {
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    response
}

pub fn set_content_type(response: &mut HttpResponse, content_type: &'static str) {
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
}

/// The 429 page for a rate-limited request (webob's HTTPTooManyRequests).
pub fn too_many_requests(method: &Method, request_headers: &HeaderMap) -> HttpResponse {
    ErrorPage::new(
        StatusCode::TOO_MANY_REQUESTS,
        default_explanation(StatusCode::TOO_MANY_REQUESTS),
    )
    .render(method, request_headers)
}

#[cfg(test)]
mod tests {
    //! Expected pages are webob 1.8's output for the same exception and
    //! Accept header (`WSGIHTTPException.generate_response`).
    use super::*;
    use http_body_util::BodyExt as _;

    fn headers(accept: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(accept) = accept {
            headers.insert(header::ACCEPT, HeaderValue::from_str(accept).unwrap());
        }
        headers
    }

    async fn page(error: ApiError, method: Method, accept: Option<&str>) -> (String, String) {
        let response = error.into_response(&method, &headers(accept));
        let content_type = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (content_type, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn not_found_page_follows_accept() {
        // HTTPNotFound() with Accept: */* (curl, python-requests).
        assert_eq!(
            page(ApiError::NotFound, Method::GET, Some("*/*")).await,
            (
                TEXT_HTML.to_owned(),
                "<html>\n <head>\n  <title>404 Not Found</title>\n </head>\n <body>\n  <h1>404 Not Found</h1>\n  The resource could not be found.<br /><br />\n\n\n\n </body>\n</html>".to_owned()
            )
        );
        // No Accept header at all.
        assert_eq!(
            page(ApiError::NotFound, Method::GET, None).await,
            (
                TEXT_PLAIN.to_owned(),
                "404 Not Found\n\nThe resource could not be found.\n\n   ".to_owned()
            )
        );
        assert_eq!(
            page(ApiError::NotFound, Method::GET, Some("text/plain"))
                .await
                .1,
            "404 Not Found\n\nThe resource could not be found.\n\n   "
        );
        let json = (
            APPLICATION_JSON.to_owned(),
            r#"{"message": "The resource could not be found.<br /><br />\n\n\n", "code": "404 Not Found", "title": "Not Found"}"#.to_owned(),
        );
        assert_eq!(
            page(ApiError::NotFound, Method::GET, Some("application/json")).await,
            json
        );
        assert_eq!(
            page(
                ApiError::NotFound,
                Method::GET,
                Some("application/json, text/html;q=0.5")
            )
            .await,
            json
        );
    }

    #[tokio::test]
    async fn other_pages_match_webob() {
        assert_eq!(
            page(
                ApiError::MethodNotAllowed { allow: "GET, HEAD" },
                Method::PUT,
                Some("*/*")
            )
            .await
            .1,
            "<html>\n <head>\n  <title>405 Method Not Allowed</title>\n </head>\n <body>\n  <h1>405 Method Not Allowed</h1>\n  The method PUT is not allowed for this resource. <br /><br />\n\n </body>\n</html>"
        );
        assert_eq!(
            page(
                ApiError::MethodNotAllowed { allow: "GET, HEAD" },
                Method::PUT,
                None
            )
            .await
            .1,
            "405 Method Not Allowed\n\nThe method PUT is not allowed for this resource. \n\n "
        );
        assert_eq!(
            page(
                ApiError::BadRequest {
                    explanation: Some("Request is too large.")
                },
                Method::POST,
                None
            )
            .await
            .1,
            "400 Bad Request\n\nRequest is too large.\n\n   "
        );
        assert_eq!(
            page(
                ApiError::BadRequest { explanation: None },
                Method::PUT,
                Some("application/json")
            )
            .await
            .1,
            r#"{"message": "The server could not comply with the request since it is either malformed or otherwise incorrect.<br /><br />\n\n\n", "code": "400 Bad Request", "title": "Bad Request"}"#
        );
        assert_eq!(
            page(ApiError::Conflict, Method::POST, Some("*/*")).await.1,
            "<html>\n <head>\n  <title>409 Conflict</title>\n </head>\n <body>\n  <h1>409 Conflict</h1>\n  There was a conflict when trying to complete your request.<br /><br />\n\n\n\n </body>\n</html>"
        );
        assert_eq!(
            page(ApiError::Forbidden, Method::PUT, Some("*/*")).await.1,
            "<html>\n <head>\n  <title>403 Forbidden</title>\n </head>\n <body>\n  <h1>403 Forbidden</h1>\n  Access was denied to this resource.<br /><br />\n\n\n\n </body>\n</html>"
        );
        assert_eq!(
            page(ApiError::Unauthorized, Method::GET, None).await.1,
            "401 Unauthorized\n\nThis server could not verify that you are authorized to access the document you requested. Either you supplied the wrong credentials (e.g., bad password), or your browser does not understand how to supply the credentials required.\n\n   "
        );
    }

    #[tokio::test]
    async fn method_not_allowed_names_the_allowed_methods() {
        let response = ApiError::MethodNotAllowed { allow: "PUT" }
            .into_response(&Method::GET, &HeaderMap::new());
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "PUT");
    }

    #[tokio::test]
    async fn too_many_requests_page() {
        let response = too_many_requests(&Method::GET, &headers(Some("*/*")));
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            body,
            "<html>\n <head>\n  <title>429 Too Many Requests</title>\n </head>\n <body>\n  <h1>429 Too Many Requests</h1>\n  The client has sent too many requests in a given amount of time<br /><br />\n\n\n\n </body>\n</html>"
        );
    }

    #[tokio::test]
    async fn head_keeps_the_length_and_drops_the_body() {
        let response = body_response(StatusCode::OK, Bytes::from_static(b"hello"), &Method::HEAD);
        assert_eq!(response.headers()[header::CONTENT_LENGTH], "5");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body.is_empty());
    }

    #[test]
    fn accept_negotiation() {
        let pick = |value: &str| negotiate(Some(&HeaderValue::from_str(value).unwrap()));
        assert_eq!(negotiate(None), ErrorFormat::Plain);
        assert_eq!(pick(""), ErrorFormat::Plain);
        assert_eq!(pick("*/*"), ErrorFormat::Html);
        assert_eq!(pick("text/*"), ErrorFormat::Html);
        assert_eq!(pick("application/*"), ErrorFormat::Json);
        assert_eq!(
            pick("text/plain, application/json;q=0.1"),
            ErrorFormat::Json
        );
        assert_eq!(pick("*/*;q=0.5, application/json"), ErrorFormat::Json);
        assert_eq!(pick("text/html;q=0, */*"), ErrorFormat::Json);
        assert_eq!(pick("image/png"), ErrorFormat::Plain);
        assert_eq!(pick("garbage"), ErrorFormat::Html);
    }
}
