//! HTTP from inside a namespace, with curl: the same client a real guest
//! runs, and a hard timeout, so a request the datapath loses fails the test
//! instead of hanging it.
use std::fmt;
use std::time::Duration;

use anyhow::Result;

use crate::netns::Netns;

/// What curl got: a status (0 when no HTTP answer came) and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    /// curl's own complaint when the transfer failed (timeout, reset, ...).
    pub error: Option<String>,
}

impl Reply {
    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
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

/// The status code is written after the body on a line of its own.
const STATUS_SEPARATOR: &str = "\n--mdr-status--";

/// GETs `url` from inside `ns`, with extra `headers` ("Name: value").
pub fn get(ns: &Netns, url: &str, headers: &[&str], timeout: Duration) -> Result<Reply> {
    request(ns, url, headers, None, timeout)
}

/// POSTs `body` to `url` from inside `ns`.
pub fn post(ns: &Netns, url: &str, body: &str, timeout: Duration) -> Result<Reply> {
    request(ns, url, &[], Some(body), timeout)
}

/// A GET, or a POST of `body` (as is, with curl's form content type).
fn request(
    ns: &Netns,
    url: &str,
    headers: &[&str],
    body: Option<&str>,
    timeout: Duration,
) -> Result<Reply> {
    let max_time = format!("{:.1}", timeout.as_secs_f64());
    let write_out = format!("{STATUS_SEPARATOR}%{{http_code}}");
    // --noproxy: a proxy setting in the environment must never send a
    // guest's request anywhere but where the guest's routes lead.
    let mut args = vec![
        "curl",
        "-sS",
        "--noproxy",
        "*",
        "-m",
        &max_time,
        "-o",
        "-",
        "-w",
        &write_out,
    ];
    for header in headers {
        args.extend(["-H", header]);
    }
    if let Some(body) = body {
        args.extend(["--data-binary", body]);
    }
    args.push(url);
    let out = ns.exec(&args)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (body, status) = stdout
        .rsplit_once(STATUS_SEPARATOR)
        .unwrap_or((&stdout, "0"));
    Ok(Reply {
        status: status.trim().parse().unwrap_or(0),
        body: body.to_owned(),
        error: (!out.status.success())
            .then(|| String::from_utf8_lossy(&out.stderr).trim().to_owned()),
    })
}
