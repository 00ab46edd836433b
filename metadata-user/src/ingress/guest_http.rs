//! HTTP/1.1 on a guest connection: the plain request read and its answer
//! written here, anything else left to hyper.
//!
//! Nearly every guest request is plain: a GET (or HEAD, or the IMDSv2
//! token PUT) over HTTP/1.1 with no body, a few hundred bytes, answered at
//! once from kept bytes. For those, hyper's general machinery around the
//! parser (its dispatcher, buffered reader and writer, the request's future
//! moved through them, the encoder) was most of the 18% of the daemon's
//! CPU per keep-alive request that hyper took (DWARF profile,
//! docs/benchmark.md). Here such a head is parsed with httparse, the parser
//! hyper itself uses, into the same `http` types, and its answer goes out
//! in one sendmsg, head and body together.
//!
//! Everything else goes to hyper with the bytes read so far (in front of
//! the socket's), and hyper serves the rest of that connection: a request
//! with a body (the password POST, chunked or not) or `Expect`, an
//! upgrade, HTTP/1.0, and every head that is malformed, too large or has
//! too many headers, so hyper stays the one place that answers HTTP's
//! corner cases and errors.
//! Firecracker's MMDS makes the same trade with a small HTTP server of its
//! own; this one is smaller still because it can always hand over.
use std::{
    cell::RefCell,
    io,
    mem::MaybeUninit,
    pin::Pin,
    task::{Context, Poll, Waker},
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::{Bytes, BytesMut};
use http_body_util::{Empty, Full};
use hyper::{
    HeaderMap, Method, Request, Response, StatusCode, Uri, Version,
    body::Body as _,
    header::{CONNECTION, CONTENT_LENGTH, DATE, HeaderName, HeaderValue, TRANSFER_ENCODING},
};
use tokio::io::AsyncWrite;

/// Headers a plain head may have; a head with more goes to hyper (whose
/// limit is 100). Guests send about five.
const MAX_HEADERS: usize = 32;

/// A plain request, taken out of the connection's buffer.
pub(super) struct PlainRequest {
    pub request: Request<Empty<Bytes>>,
    /// The head's bytes as they came (the request's parts are slices of
    /// them).
    pub head: Bytes,
    /// The guest asked for the connection to end after this answer.
    pub closes: bool,
}

/// What the start of a connection's buffer holds.
#[allow(
    clippy::large_enum_variant,
    reason = "returned once per request and taken apart at once; a Box would be an allocation per request"
)]
pub(super) enum Head {
    Plain(PlainRequest),
    /// Not all of the head yet.
    Partial,
    /// A request for hyper; the buffer is as it was.
    Other,
}

/// Takes a plain request's head out of the front of `buffer` (heads over
/// `max_head` bytes are hyper's: it answers them 431).
pub(super) fn take_head(buffer: &mut BytesMut, max_head: usize) -> Head {
    if buffer.is_empty() {
        return Head::Partial;
    }
    // Uninitialised: httparse fills what it parses, and the array is not
    // zeroed for every request.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let head_len = match parsed.parse_with_uninit_headers(buffer, &mut headers) {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Partial) if buffer.len() < max_head => return Head::Partial,
        // Malformed, too many headers or too large: hyper's answer.
        _ => return Head::Other,
    };
    if parsed.version != Some(1) {
        return Head::Other;
    }
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return Head::Other;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Head::Other;
    };
    // Where each part lies in the buffer, so that the values can be
    // slices of it once it is frozen (no copy per header). A head is at
    // most `max_head` (8 KiB) long.
    let base = buffer.as_ptr() as usize;
    let span = |part: &[u8]| {
        let start = part.as_ptr() as usize - base;
        start..start + part.len()
    };
    let path = span(path.as_bytes());
    let mut closes = false;
    let mut spans = [const { (0..0, 0..0) }; MAX_HEADERS];
    let count = parsed.headers.len();
    for (index, header) in parsed.headers.iter().enumerate() {
        let name = header.name;
        if !is_plain_header(name, header.value) {
            return Head::Other;
        }
        if name.eq_ignore_ascii_case("connection") && has_token(header.value, b"close") {
            closes = true;
        }
        spans[index] = (span(name.as_bytes()), span(header.value));
    }
    // From here on the head is taken: it cannot go back to hyper as it was.
    let head = buffer.split_to(head_len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(path)) else {
        // A target httparse takes and `http` does not: hyper's 400.
        restore(buffer, &head);
        return Head::Other;
    };
    let mut map = HeaderMap::with_capacity(count);
    for (name, value) in spans.into_iter().take(count) {
        // httparse lets through the same bytes as `HeaderName` (a token)
        // and `HeaderValue` (visible ASCII, space, tab, obs-text), so
        // neither fails; if one did, hyper would decide.
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&head[name]),
            HeaderValue::from_maybe_shared(head.slice(value)),
        ) else {
            restore(buffer, &head);
            return Head::Other;
        };
        map.append(name, value);
    }
    let mut request = Request::new(Empty::new());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = map;
    Head::Plain(PlainRequest {
        request,
        head,
        closes,
    })
}

/// A header a plain request may have: none that announces a body (a
/// Content-Length other than 0, Transfer-Encoding), asks for a 100
/// Continue or an upgrade.
fn is_plain_header(name: &str, value: &[u8]) -> bool {
    if name.eq_ignore_ascii_case("content-length") {
        return value.trim_ascii() == b"0";
    }
    !(name.eq_ignore_ascii_case("transfer-encoding")
        || name.eq_ignore_ascii_case("expect")
        || name.eq_ignore_ascii_case("upgrade"))
}

/// Puts a taken head back in front of the rest, for hyper (rare: only for
/// what httparse takes and the `http` types do not).
fn restore(buffer: &mut BytesMut, head: &Bytes) {
    let mut whole = BytesMut::with_capacity(head.len() + buffer.len());
    whole.extend_from_slice(head);
    whole.extend_from_slice(buffer);
    *buffer = whole;
}

/// A comma-separated header value lists `token` (case-insensitive).
pub(super) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&byte| byte == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token))
}

/// An answer as it goes on the wire.
pub(super) struct Encoded {
    /// Status line and headers, with the blank line.
    pub head: Vec<u8>,
    pub body: Bytes,
    /// The answer itself ends the connection (`Connection: close`).
    pub closes: bool,
    /// Where the Date's value is in `head`, when it is ours (a response
    /// that brings its own has it as it is).
    pub date_at: Option<usize>,
}

/// Writes `response`, the answer to a `method` request, the way hyper
/// would: its headers, then Content-Length and Date where it has none;
/// no body for HEAD, 204 and 304 (a HEAD answer keeps the length the
/// body would have had). `head` is reused from answer to answer.
pub(super) fn encode(
    response: Response<Full<Bytes>>,
    method: &Method,
    mut head: Vec<u8>,
) -> Encoded {
    let (parts, body) = response.into_parts();
    let status = parts.status;
    let body = full_bytes(body);
    head.clear();
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    // Statuses that never have a body, and so no length unless one is
    // given for the representation (a 304's).
    let bodiless_status = status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status.is_informational();
    let no_body = *method == Method::HEAD || bodiless_status;
    // A length of its own is kept only where no body follows (HEAD, 304):
    // otherwise the body's real length frames it.
    let keeps_own_length = no_body && status != StatusCode::NO_CONTENT;
    let mut has_length = false;
    let mut closes = false;
    for (name, value) in &parts.headers {
        if *name == CONTENT_LENGTH {
            if !keeps_own_length || has_length {
                continue;
            }
            has_length = true;
        }
        // The body is whole and framed by its length.
        if *name == TRANSFER_ENCODING {
            continue;
        }
        if *name == CONNECTION && has_token(value.as_bytes(), b"close") {
            closes = true;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if !has_length && !bodiless_status {
        head.extend_from_slice(b"content-length: ");
        head.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    let mut date_at = None;
    if !parts.headers.contains_key(DATE) {
        head.extend_from_slice(b"date: ");
        date_at = Some(head.len());
        http_date(|date| head.extend_from_slice(date));
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    Encoded {
        head,
        body: if no_body { Bytes::new() } else { body },
        closes,
        date_at,
    }
}

/// The bytes of a whole body, which holds them already.
fn full_bytes(mut body: Full<Bytes>) -> Bytes {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(&mut body).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        // Full is ready at once, with one data frame or none (empty).
        _ => Bytes::new(),
    }
}

/// An HTTP date's length (IMF-fixdate is always 29 bytes).
pub(super) const HTTP_DATE_LEN: usize = 29;

thread_local! {
    /// The Date header's value for the current second, per thread (as
    /// hyper keeps it): formatted once a second, not once an answer.
    static DATE_VALUE: RefCell<(u64, [u8; HTTP_DATE_LEN])> =
        const { RefCell::new((u64::MAX, [0; HTTP_DATE_LEN])) };
}

/// Calls `with` with the current time as an HTTP date (IMF-fixdate).
pub(super) fn http_date(with: impl FnOnce(&[u8; HTTP_DATE_LEN])) {
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    DATE_VALUE.with_borrow_mut(|(cached_second, value)| {
        if *cached_second != second {
            let formatted = httpdate::fmt_http_date(now);
            if formatted.len() == value.len() {
                value.copy_from_slice(formatted.as_bytes());
                *cached_second = second;
            }
        }
        with(value);
    });
}

/// Writes `head` and then `body`, vectored, until all of both is out.
pub(super) async fn write_answer(
    stream: &mut (impl AsyncWrite + Unpin),
    head: &[u8],
    body: &[u8],
) -> io::Result<()> {
    write_parts(stream, [head, body]).await
}

/// Writes `parts` one after the other, vectored, until all are out.
pub(super) async fn write_parts<const N: usize>(
    stream: &mut (impl AsyncWrite + Unpin),
    parts: [&[u8]; N],
) -> io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let mut slices = [io::IoSlice::new(&[]); N];
    // Empty parts are left out (advance_slices keeps a leading empty
    // slice).
    let mut count = 0;
    for part in parts.into_iter().filter(|part| !part.is_empty()) {
        slices[count] = io::IoSlice::new(part);
        count += 1;
    }
    let mut parts = &mut slices[..count];
    while !parts.is_empty() {
        let written = stream.write_vectored(parts).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        io::IoSlice::advance_slices(&mut parts, written);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;

    use super::*;

    const MAX_HEAD: usize = 8 * 1024;

    fn buffer(text: &str) -> BytesMut {
        BytesMut::from(text.as_bytes())
    }

    fn plain(buffer: &mut BytesMut) -> PlainRequest {
        match take_head(buffer, MAX_HEAD) {
            Head::Plain(plain) => plain,
            Head::Partial => panic!("partial"),
            Head::Other => panic!("other"),
        }
    }

    #[test]
    fn a_plain_get_is_taken_with_its_headers_and_the_rest_stays() {
        let mut buf = buffer(concat!(
            "GET /latest/meta-data/?x=1 HTTP/1.1\r\nHost: 169.254.169.254\r\n",
            "X-aws-ec2-metadata-token: abc\r\nAccept: */*\r\nAccept: text/plain\r\n\r\n",
            "GET /next"
        ));
        let PlainRequest {
            request,
            head,
            closes,
        } = plain(&mut buf);
        assert!(!closes);
        assert!(head.starts_with(b"GET /latest/meta-data/?x=1 HTTP/1.1\r\n"));
        assert!(
            head.ends_with(b"Accept: text/plain\r\n\r\n"),
            "the whole head"
        );
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), "/latest/meta-data/");
        assert_eq!(request.uri().query(), Some("x=1"));
        assert_eq!(request.version(), Version::HTTP_11);
        let headers = request.headers();
        assert_eq!(headers["host"], "169.254.169.254");
        assert_eq!(headers["x-aws-ec2-metadata-token"], "abc");
        let accepts: Vec<_> = headers.get_all("accept").iter().collect();
        assert_eq!(accepts, ["*/*", "text/plain"]);
        assert_eq!(&buf[..], b"GET /next", "the next request is left");
        assert!(matches!(take_head(&mut buf, MAX_HEAD), Head::Partial));
    }

    #[test]
    fn connection_close_is_noted() {
        for (value, closes) in [
            ("close", true),
            ("Keep-Alive, CLOSE ", true),
            ("keep-alive", false),
            ("closed, x-close", false),
        ] {
            let mut buf = buffer(&format!("GET / HTTP/1.1\r\nConnection: {value}\r\n\r\n"));
            assert_eq!(plain(&mut buf).closes, closes, "{value}");
        }
    }

    /// Everything hyper must answer leaves the buffer as it was, for hyper
    /// to read from the start.
    #[test]
    fn requests_for_hyper_leave_the_buffer_untouched() {
        let many_headers: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        let cases = [
            "POST /openstack/latest/password HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc".to_owned(),
            "POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".into(),
            "PUT /latest/api/token HTTP/1.1\r\nExpect: 100-continue\r\n\r\n".into(),
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n".into(),
            "GET / HTTP/1.0\r\n\r\n".into(),
            "GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n".into(),
            "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n".into(),
            "\x16\x03\x01\x02\x00garbage\r\n\r\n".into(),
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".into(),
            format!("GET / HTTP/1.1\r\n{many_headers}\r\n"),
            format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD)),
            format!("GET /{}", "a".repeat(MAX_HEAD)),
        ];
        for case in cases {
            let mut buf = buffer(&case);
            assert!(
                matches!(take_head(&mut buf, MAX_HEAD), Head::Other),
                "{case:.60}"
            );
            assert_eq!(&buf[..], case.as_bytes(), "{case:.60}");
        }
    }

    #[test]
    fn an_incomplete_head_waits_for_more() {
        for case in ["", "GET", "GET / HTTP/1.1\r\nHost: x\r\n"] {
            let mut buf = buffer(case);
            assert!(
                matches!(take_head(&mut buf, MAX_HEAD), Head::Partial),
                "{case}"
            );
            assert_eq!(&buf[..], case.as_bytes());
        }
    }

    #[test]
    fn a_zero_content_length_is_plain() {
        let mut buf = buffer("PUT /latest/api/token HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(plain(&mut buf).request.method(), Method::PUT);
    }

    fn response(
        status: StatusCode,
        body: &'static str,
        headers: &[(&str, &str)],
    ) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = status;
        for (name, value) in headers {
            response.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        response
    }

    fn head_text(encoded: &Encoded) -> String {
        String::from_utf8(encoded.head.clone()).unwrap()
    }

    #[test]
    fn an_answer_is_written_with_its_length_and_date() {
        let encoded = encode(
            response(StatusCode::OK, "web-01", &[("content-type", "text/plain")]),
            &Method::GET,
            Vec::new(),
        );
        let head = head_text(&encoded);
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"),
            "{head}"
        );
        assert!(head.contains("content-length: 6\r\n"), "{head}");
        let date = head
            .split("date: ")
            .nth(1)
            .unwrap()
            .split("\r\n")
            .next()
            .unwrap();
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
        assert!(head.ends_with("\r\n\r\n"));
        assert_eq!(encoded.body, "web-01");
        assert!(!encoded.closes);
    }

    #[test]
    fn a_head_answer_keeps_its_length_and_drops_its_body() {
        let own = encode(
            response(StatusCode::OK, "", &[("content-length", "16")]),
            &Method::HEAD,
            Vec::new(),
        );
        assert!(head_text(&own).contains("content-length: 16\r\n"));
        assert_eq!(head_text(&own).matches("content-length").count(), 1);
        let measured = encode(
            response(StatusCode::OK, "abc", &[]),
            &Method::HEAD,
            Vec::new(),
        );
        assert!(head_text(&measured).contains("content-length: 3\r\n"));
        assert!(measured.body.is_empty());
    }

    /// A body is framed by its real length, whatever a header claims.
    #[test]
    fn a_body_is_framed_by_its_own_length() {
        let encoded = encode(
            response(
                StatusCode::OK,
                "abc",
                &[("content-length", "99"), ("transfer-encoding", "chunked")],
            ),
            &Method::GET,
            Vec::new(),
        );
        let head = head_text(&encoded);
        assert!(head.contains("content-length: 3\r\n"), "{head}");
        assert!(!head.contains("99") && !head.contains("chunked"), "{head}");
    }

    #[test]
    fn no_content_has_no_length_and_no_body() {
        let encoded = encode(
            response(StatusCode::NO_CONTENT, "x", &[]),
            &Method::GET,
            Vec::new(),
        );
        let head = head_text(&encoded);
        assert!(head.starts_with("HTTP/1.1 204 No Content\r\n"), "{head}");
        assert!(!head.contains("content-length"), "{head}");
        assert!(encoded.body.is_empty());
        let not_modified = encode(
            response(StatusCode::NOT_MODIFIED, "", &[]),
            &Method::GET,
            Vec::new(),
        );
        assert!(not_modified.body.is_empty());
        assert!(!head_text(&not_modified).contains("content-length"));
    }

    #[test]
    fn an_answer_that_closes_says_so() {
        let encoded = encode(
            response(
                StatusCode::SERVICE_UNAVAILABLE,
                "",
                &[("connection", "close")],
            ),
            &Method::GET,
            Vec::new(),
        );
        assert!(encoded.closes);
        assert!(head_text(&encoded).starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
    }

    #[tokio::test]
    async fn an_answer_is_written_whole_through_short_writes() {
        let (client, mut server) = tokio::io::duplex(7);
        let body = "b".repeat(100);
        let reader = tokio::spawn(async move {
            let mut client = client;
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        });
        write_answer(&mut server, b"head\r\n", body.as_bytes())
            .await
            .unwrap();
        drop(server);
        let all = reader.await.unwrap();
        assert_eq!(all, [b"head\r\n".as_slice(), body.as_bytes()].concat());
    }
}
