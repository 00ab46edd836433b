//! The watch query parameters, as GCE's metadata server takes them:
//! `wait_for_change=true` holds the request, `last_etag` says which content
//! the guest already has, `timeout_sec` how long it will wait.
//!
//! Any other parameter is left alone: nova ignores query strings, and so do
//! we (and in nova mode they still go to nova).
use std::time::Duration;

/// How long a watch waits when the guest names no `timeout_sec`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest `timeout_sec` a guest may ask for.
pub const MAX_TIMEOUT_SECS: u64 = 3600;

const WAIT_FOR_CHANGE: &str = "wait_for_change";
const LAST_ETAG: &str = "last_etag";
const TIMEOUT_SEC: &str = "timeout_sec";

/// A request that asked to wait for a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchQuery {
    /// The ETag the guest has; None: answer at once.
    pub last_etag: Option<String>,
    pub timeout: Duration,
}

/// A watch parameter with a value we cannot use (a 400 naming it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchQueryError {
    WaitForChange,
    TimeoutSec,
}

impl WatchQueryError {
    /// The 400 page's explanation (a static string, as webob's are).
    pub fn explanation(self) -> &'static str {
        match self {
            Self::WaitForChange => "wait_for_change must be true or false.",
            Self::TimeoutSec => "timeout_sec must be a whole number of seconds from 1 to 3600.",
        }
    }
}

impl std::fmt::Display for WatchQueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.explanation())
    }
}

impl std::error::Error for WatchQueryError {}

impl WatchQuery {
    /// The watch a query string asks for: None when it asks for none
    /// (no query, no `wait_for_change`, or `wait_for_change=false`).
    /// `last_etag` and `timeout_sec` mean nothing without
    /// `wait_for_change=true` and are then ignored, as GCE does; a bad
    /// `timeout_sec` is refused only when it would be used.
    pub fn parse(query: Option<&str>) -> Result<Option<Self>, WatchQueryError> {
        let Some(query) = query else {
            return Ok(None);
        };
        let mut wait = None;
        let mut last_etag = None;
        let mut timeout = None;
        for (name, value) in pairs(query) {
            match name.as_str() {
                WAIT_FOR_CHANGE => wait = Some(value),
                LAST_ETAG => last_etag = Some(value),
                TIMEOUT_SEC => timeout = Some(value),
                _ => {}
            }
        }
        match wait.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("false") => return Ok(None),
            Some("true") => {}
            Some(_) => return Err(WatchQueryError::WaitForChange),
        }
        let timeout = match timeout {
            None => DEFAULT_TIMEOUT,
            Some(text) => Duration::from_secs(parse_timeout(&text)?),
        };
        Ok(Some(Self {
            last_etag: last_etag
                .map(|etag| normalise_etag(&etag).to_owned())
                .filter(|etag| !etag.is_empty()),
            timeout,
        }))
    }

    /// Whether the guest already has the answer whose ETag header is
    /// `current`, and so must wait for a change. An answer without an ETag
    /// (an error) never makes a guest wait.
    pub fn has(&self, current: Option<&str>) -> bool {
        match (&self.last_etag, current) {
            (Some(last), Some(current)) => normalise_etag(current) == last,
            _ => false,
        }
    }
}

fn parse_timeout(text: &str) -> Result<u64, WatchQueryError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(WatchQueryError::TimeoutSec);
    }
    let secs: u64 = text.parse().map_err(|_| WatchQueryError::TimeoutSec)?;
    if (1..=MAX_TIMEOUT_SECS).contains(&secs) {
        Ok(secs)
    } else {
        Err(WatchQueryError::TimeoutSec)
    }
}

/// `"abc"`, `W/"abc"` and `abc` name the same ETag (guests copy the header
/// value with or without its quotes).
fn normalise_etag(text: &str) -> &str {
    let text = text.trim();
    let text = text.strip_prefix("W/").unwrap_or(text);
    text.trim_matches('"')
}

/// `name=value` pairs of a query string, `+` and `%XX` decoded
/// (application/x-www-form-urlencoded, as every HTTP client writes them).
pub fn pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(name), form_decode(value))
        })
}

/// One form-urlencoded component: `+` is a space, `%XX` a byte; malformed
/// escapes stay literal, invalid UTF-8 becomes U+FFFD.
pub fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query without the watch parameters (what nova is asked, and what
/// its answers are cached under: watchers with different ETags share one
/// upstream request). None when nothing is left.
pub fn without_watch_params(query: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(name, _)| name);
            !pair.is_empty() && ![WAIT_FOR_CHANGE, LAST_ETAG, TIMEOUT_SEC].contains(&name)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<Option<WatchQuery>, WatchQueryError> {
        WatchQuery::parse(Some(query))
    }

    #[test]
    fn no_watch_without_wait_for_change_true() {
        assert_eq!(WatchQuery::parse(None), Ok(None));
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("recursive=true&alt=json"), Ok(None));
        assert_eq!(parse("wait_for_change=false&timeout_sec=0"), Ok(None));
        // Without wait_for_change, a bad timeout means nothing.
        assert_eq!(parse("timeout_sec=abc&last_etag=x"), Ok(None));
        assert_eq!(
            parse("wait_for_change=yes"),
            Err(WatchQueryError::WaitForChange)
        );
    }

    #[test]
    fn defaults_and_bounds() {
        let watch = parse("wait_for_change=true").unwrap().unwrap();
        assert_eq!(watch.timeout, DEFAULT_TIMEOUT);
        assert_eq!(watch.last_etag, None);
        let watch = parse("foo=1&wait_for_change=TRUE&timeout_sec=3600&last_etag=%22ab%22")
            .unwrap()
            .unwrap();
        assert_eq!(watch.timeout, Duration::from_secs(3600));
        assert_eq!(watch.last_etag.as_deref(), Some("ab"));
        for bad in [
            "0",
            "3601",
            "-1",
            "1.5",
            "",
            "abc",
            "99999999999999999999999",
        ] {
            assert_eq!(
                parse(&format!("wait_for_change=true&timeout_sec={bad}")),
                Err(WatchQueryError::TimeoutSec),
                "{bad}"
            );
        }
        assert_eq!(
            parse("wait_for_change=true&timeout_sec=1")
                .unwrap()
                .unwrap()
                .timeout,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn etags_compare_with_or_without_quotes() {
        let etag = crate::backend::watch::ETag::of("text/plain", b"x", None);
        let bare = etag.as_str().trim_matches('"').to_owned();
        for form in [
            etag.as_str().to_owned(),
            bare.clone(),
            format!("W/\"{bare}\""),
        ] {
            let watch = parse(&format!("wait_for_change=true&last_etag={form}"))
                .unwrap()
                .unwrap();
            assert!(watch.has(Some(etag.as_str())), "{form}");
        }
        let watch = parse("wait_for_change=true&last_etag=other")
            .unwrap()
            .unwrap();
        assert!(!watch.has(Some(etag.as_str())));
        assert!(!watch.has(None));
    }

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a+b%20c%2Fd"), "a b c/d");
        assert_eq!(form_decode("%zz%4"), "%zz%4");
        assert_eq!(form_decode("%"), "%");
        assert_eq!(
            form_decode("https%3A%2F%2Fvault.example"),
            "https://vault.example"
        );
    }

    #[test]
    fn watch_params_are_stripped_for_nova() {
        assert_eq!(
            without_watch_params("wait_for_change=true&last_etag=x"),
            None
        );
        assert_eq!(
            without_watch_params("a=1&wait_for_change=true&timeout_sec=5&b"),
            Some("a=1&b".to_owned())
        );
    }
}
