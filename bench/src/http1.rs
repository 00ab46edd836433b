//! Just enough HTTP/1.1 for a closed-loop load generator: prebuilt request
//! bytes out, one response in (status line, Content-Length body). hyper's
//! client would work too, but every microsecond the generator spends is
//! taken from the two cores the measured paths share with it.
use std::io;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Whether a request asks the server to close after answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnMode {
    KeepAlive,
    Close,
}

impl ConnMode {
    pub fn label(self) -> &'static str {
        match self {
            ConnMode::KeepAlive => "keep-alive",
            ConnMode::Close => "Connection: close",
        }
    }
}

/// `GET path` with `Host: 169.254.169.254`, as a guest sends it, plus
/// `extra` header lines ("Name: value").
pub fn request(path: &str, mode: ConnMode, extra: &[String]) -> Vec<u8> {
    let mut text = format!(
        "GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: mdr-bench\r\nAccept: */*\r\n"
    );
    if mode == ConnMode::Close {
        text.push_str("Connection: close\r\n");
    }
    for line in extra {
        text.push_str(line);
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    text.into_bytes()
}

/// One response: its status and where its body is in the read buffer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: std::ops::Range<usize>,
}

/// Largest response head accepted; anything bigger is an error, not a hang.
const MAX_HEAD: usize = 16 * 1024;
/// Largest body accepted (meta_data.json with keys is a few KiB).
const MAX_BODY: usize = 4 << 20;

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Sends `request` and reads one response into `buf` (cleared first).
pub async fn exchange<S>(stream: &mut S, request: &[u8], buf: &mut Vec<u8>) -> io::Result<Response>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(request).await?;
    buf.clear();
    let head_end = loop {
        if let Some(pos) = find(buf, b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(invalid("response head too large"));
        }
        if read_more(stream, buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| invalid("non-UTF-8 head"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("no status code"))?;
    let mut length = None;
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Neither the daemon nor haproxy in front of it chunk answers
            // they know the length of; refuse rather than mis-measure.
            return Err(invalid("chunked responses are not supported"));
        }
    }
    let length = length.ok_or_else(|| invalid("no Content-Length"))?;
    if length > MAX_BODY {
        return Err(invalid("body too large"));
    }
    while buf.len() < head_end + length {
        if read_more(stream, buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside the body",
            ));
        }
    }
    Ok(Response {
        status,
        body: head_end..head_end + length,
    })
}

/// Reads until the peer closes: with `Connection: close` the server closes
/// first, so the TIME_WAIT state stays on its side and the guest's port
/// range is never exhausted, as with a real client.
pub async fn drain_to_eof<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<()> {
    let mut scratch = [0u8; 512];
    while stream.read(&mut scratch).await? != 0 {}
    Ok(())
}

async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(8192);
    }
    stream.read_buf(buf).await
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_one_response_split_across_reads() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let answer = tokio::spawn(async move {
            let mut req = vec![0u8; 256];
            let n = server.read(&mut req).await.unwrap();
            assert!(req[..n].starts_with(b"GET /x HTTP/1.1\r\n"));
            for part in [
                &b"HTTP/1.1 200 OK\r\nContent-Len"[..],
                b"gth: 5\r\n\r\nhel",
                b"lo",
            ] {
                server.write_all(part).await.unwrap();
            }
        });
        let mut buf = Vec::new();
        let req = request("/x", ConnMode::KeepAlive, &[]);
        let response = exchange(&mut client, &req, &mut buf).await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(&buf[response.body], b"hello");
        answer.await.unwrap();
    }

    #[test]
    fn close_requests_say_so() {
        let text = String::from_utf8(request("/", ConnMode::Close, &["X-A: b".into()])).unwrap();
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("X-A: b\r\n\r\n"));
    }
}
