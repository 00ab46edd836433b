//! HTTP from inside a namespace, with curl: the same client a real guest
//! runs, and a hard timeout, so a request the datapath loses fails the test
//! instead of hanging it.
use std::fmt;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::METADATA_ADDR;
use crate::netns::Netns;
use crate::tempdir::TempDir;

/// What curl got: a status (0 when no HTTP answer came) and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    /// curl's own complaint when the transfer failed (timeout, reset, ...).
    pub error: Option<String>,
    /// Response headers, names lower-cased, in the order received (empty
    /// when no answer came).
    pub headers: Vec<(String, String)>,
}

impl Reply {
    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// The first value of response header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {} {:?}", self.status, self.body)?;
        if let Some(error) = &self.error {
            write!(f, " (curl: {error})")?;
        }
        Ok(())
    }
}

/// One request for curl to make: method, URL, headers, optional body.
#[derive(Clone, Debug)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<String>,
    body: Option<Vec<u8>>,
    timeout: Duration,
}

impl Request {
    /// `method url`, no body, a 5 s limit.
    pub fn new(method: &str, url: &str) -> Self {
        Self {
            method: method.to_owned(),
            url: url.to_owned(),
            headers: Vec::new(),
            body: None,
            timeout: Duration::from_secs(5),
        }
    }

    /// `method http://169.254.169.254{path}`.
    pub fn metadata(method: &str, path: &str) -> Self {
        Self::new(method, &format!("http://{METADATA_ADDR}{path}"))
    }

    /// Adds a request header ("Name: value").
    pub fn header(mut self, header: impl Into<String>) -> Self {
        self.headers.push(header.into());
        self
    }

    /// Sends `body` (byte for byte) with the request.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// How long curl may take in all (connect, send, wait, receive).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs curl inside `ns`. A missing answer is not an error: it is a
    /// [`Reply`] with status 0 and curl's complaint.
    pub fn send(&self, ns: &Netns) -> Result<Reply> {
        let max_time = format!("{:.1}", self.timeout.as_secs_f64());
        let write_out =
            format!("{STATUS_SEPARATOR}%{{http_code}}{HEADERS_SEPARATOR}%{{header_json}}");
        // The body goes through a file: curl reads it byte for byte, and
        // the command line stays short whatever its size.
        let body_dir = match &self.body {
            Some(body) => {
                let dir = TempDir::new("body")?;
                std::fs::write(dir.join("body"), body).context("writing the request body")?;
                Some(dir)
            }
            None => None,
        };
        let body_arg = body_dir
            .as_ref()
            .map(|dir| format!("@{}", dir.join("body").display()));
        // --noproxy: a proxy setting in the environment must never send a
        // guest's request anywhere but where the guest's routes lead.
        let mut args = vec![
            "curl",
            "-sS",
            // -g: brackets are IPv6 literals ([fe80::a9fe:a9fe%eth0]), never globs.
            "-g",
            "--noproxy",
            "*",
            "-m",
            &max_time,
            "-X",
            &self.method,
            "-o",
            "-",
            "-w",
            &write_out,
        ];
        for header in &self.headers {
            args.extend(["-H", header.as_str()]);
        }
        if let Some(body_arg) = &body_arg {
            args.extend(["--data-binary", body_arg.as_str()]);
        }
        args.push(&self.url);
        let out = ns.exec(&args)?;
        Ok(parse_curl_output(
            &String::from_utf8_lossy(&out.stdout),
            (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        ))
    }
}

/// The status code is written after the body on a line of its own...
const STATUS_SEPARATOR: &str = "\n--mdr-status--";
/// ...and the headers (curl's `%{header_json}`) after it.
const HEADERS_SEPARATOR: &str = "\n--mdr-headers--";

fn parse_curl_output(stdout: &str, error: Option<String>) -> Reply {
    let (rest, headers_json) = stdout
        .rsplit_once(HEADERS_SEPARATOR)
        .unwrap_or((stdout, "{}"));
    let (body, status) = rest.rsplit_once(STATUS_SEPARATOR).unwrap_or((rest, "0"));
    let mut headers = Vec::new();
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str(headers_json) {
        for (name, values) in map {
            for value in values.as_array().into_iter().flatten() {
                if let Some(value) = value.as_str() {
                    headers.push((name.clone(), value.to_owned()));
                }
            }
        }
    }
    Reply {
        status: status.trim().parse().unwrap_or(0),
        body: body.to_owned(),
        error,
        headers,
    }
}

/// GETs `url` from inside `ns`, with extra `headers` ("Name: value").
pub fn get(ns: &Netns, url: &str, headers: &[&str], timeout: Duration) -> Result<Reply> {
    let mut request = Request::new("GET", url).timeout(timeout);
    for header in headers {
        request = request.header(*header);
    }
    request.send(ns)
}

/// POSTs `body` to `url` from inside `ns` (as is, with curl's form content
/// type).
pub fn post(ns: &Netns, url: &str, body: &str, timeout: Duration) -> Result<Reply> {
    Request::new("POST", url)
        .body(body)
        .timeout(timeout)
        .send(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_headers_and_body_are_split() {
        let out = "line1\n--mdr-status--x\nbody\n--mdr-status--429\n--mdr-headers--{\"retry-after\":[\"1\"],\"x\":[\"a\",\"b\"]}";
        let reply = parse_curl_output(out, None);
        assert_eq!(reply.status, 429);
        assert_eq!(reply.body, "line1\n--mdr-status--x\nbody");
        assert_eq!(reply.header("Retry-After"), Some("1"));
        assert_eq!(reply.headers.len(), 3);
    }

    #[test]
    fn no_answer_is_status_0() {
        let reply = parse_curl_output("", Some("timeout".into()));
        assert_eq!(reply.status, 0);
        assert!(reply.headers.is_empty());
    }
}
