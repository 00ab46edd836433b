//! ETags derived from an answer's bytes: SHA-256 over the content type and
//! the body, the first 128 bits in hex, as a strong ETag (`"…"`). The same
//! content has the same ETag after a restart, on another daemon, and from
//! a render cache that keeps the ETag next to the bytes it was computed
//! from.
//!
//! A body may have a part that is new in every answer without the content
//! having changed: `meta_data.json`'s `random_seed`. That span is left out,
//! or a guest watching `meta_data.json` would be woken by every answer.
use std::{ops::Range, sync::Arc};

use hyper::header::HeaderValue;
use sha2::{Digest as _, Sha256};

/// An answer's ETag, quoted (`"0123…"`), kept as a header value: a kept
/// answer's tag goes into every response without being copied or checked
/// again. Behind an Arc, a pointer wide, so the answers that hold one stay
/// small.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ETag(Arc<HeaderValue>);

/// Hex digits kept of the digest (128 bits: no collision in practice).
const HEX_DIGITS: usize = 32;

impl ETag {
    /// The ETag of `body` served as `content_type`, without the bytes in
    /// `volatile` (a span of `body` that changes in every answer).
    pub fn of(content_type: &str, body: &[u8], volatile: Option<Range<usize>>) -> Self {
        let mut digest = Sha256::new();
        digest.update(content_type.as_bytes());
        digest.update([0]);
        match volatile.filter(|span| span.start <= span.end && span.end <= body.len()) {
            Some(span) => {
                digest.update(&body[..span.start]);
                // Marks where the span was, so that moving it changes the tag.
                digest.update([0]);
                digest.update(&body[span.end..]);
            }
            None => digest.update(body),
        }
        let hex = hex::encode(&digest.finalize()[..HEX_DIGITS / 2]);
        let quoted = format!("\"{hex}\"");
        Self(Arc::new(
            HeaderValue::from_str(&quoted).expect("quoted hex is a valid header value"),
        ))
    }

    /// As it appears in the `ETag` header, quotes included.
    pub fn as_str(&self) -> &str {
        self.0.to_str().expect("made from quoted hex")
    }

    pub fn header_value(&self) -> HeaderValue {
        (*self.0).clone()
    }
}

/// Where `value` first occurs in `body` (the span to leave out).
pub fn find(body: &[u8], value: &[u8]) -> Option<Range<usize>> {
    if value.is_empty() {
        return None;
    }
    body.windows(value.len())
        .position(|window| window == value)
        .map(|start| start..start + value.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_same_tag_and_any_change_shows() {
        let a = ETag::of("application/json", b"{\"a\": 1}", None);
        assert_eq!(a, ETag::of("application/json", b"{\"a\": 1}", None));
        assert_ne!(a, ETag::of("application/json", b"{\"a\": 2}", None));
        assert_ne!(a, ETag::of("text/plain", b"{\"a\": 1}", None));
        assert_eq!(a.as_str().len(), HEX_DIGITS + 2);
        assert!(a.as_str().starts_with('"') && a.as_str().ends_with('"'));
    }

    #[test]
    fn the_volatile_span_is_left_out() {
        let one = b"{\"seed\": \"AAAA\", \"b\": 1}";
        let two = b"{\"seed\": \"BBBB\", \"b\": 1}";
        let span = find(one, b"AAAA");
        assert_eq!(span, find(two, b"BBBB"));
        assert_eq!(
            ETag::of("t", one, span.clone()),
            ETag::of("t", two, span.clone())
        );
        let changed = b"{\"seed\": \"BBBB\", \"b\": 2}";
        assert_ne!(
            ETag::of("t", one, span.clone()),
            ETag::of("t", changed, span)
        );
        // A span outside the body is ignored rather than trusted.
        assert_eq!(ETag::of("t", one, Some(5..500)), ETag::of("t", one, None));
    }
}
