//! An answer rendered once and kept: its bytes, whole or around the one
//! part that differs per request (meta_data.json's random seed), its
//! content type, and its ETag (a SHA-256 of the bytes: computed once here,
//! not for every answer).
use bytes::{Bytes, BytesMut};
use rand::Rng as _;

use super::response::{APPLICATION_JSON, Document, TEXT_PLAIN};
use crate::backend::watch::ETag;

/// Random bytes in each `random_seed` (nova: `os.urandom(512)`).
const SEED_BYTES: usize = 512;
/// Their length in base64.
pub const SEED_BASE64_LEN: usize = SEED_BYTES.div_ceil(3) * 4;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    body: RenderedBody,
    content_type: &'static str,
    /// Of the bytes without the seed, as `Document::etag` would compute it.
    etag: ETag,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RenderedBody {
    Whole(Bytes),
    /// A JSON document with a fresh random seed between the two parts.
    AroundSeed {
        prefix: Bytes,
        suffix: Bytes,
    },
}

impl Rendered {
    pub fn new(body: RenderedBody, content_type: &'static str) -> Self {
        let mut rendered = Self {
            body,
            content_type,
            etag: ETag::of(content_type, &[], None),
        };
        // The tag of a document as served (the seed left out), so it is
        // the one every answer carries whichever way it was made.
        rendered.etag = rendered.fresh_document().etag();
        rendered
    }

    pub fn text(body: impl Into<Bytes>) -> Self {
        Self::new(RenderedBody::Whole(body.into()), TEXT_PLAIN)
    }

    pub fn json(body: impl Into<Bytes>) -> Self {
        Self::new(RenderedBody::Whole(body.into()), APPLICATION_JSON)
    }

    /// The document for one answer: the kept bytes, with a new seed where
    /// there is one, and the kept ETag.
    pub fn document(&self) -> Document {
        self.fresh_document().with_etag(self.etag.clone())
    }

    fn fresh_document(&self) -> Document {
        match &self.body {
            RenderedBody::Whole(bytes) => Document::new(bytes.clone(), self.content_type),
            RenderedBody::AroundSeed { prefix, suffix } => {
                let mut body =
                    BytesMut::with_capacity(prefix.len() + SEED_BASE64_LEN + suffix.len());
                body.extend_from_slice(prefix);
                append_random_seed(&mut body);
                body.extend_from_slice(suffix);
                Document {
                    body: body.freeze(),
                    content_type: self.content_type,
                    // New in every answer: left out of the ETag.
                    volatile: Some(prefix.len()..prefix.len() + SEED_BASE64_LEN),
                    etag: None,
                }
            }
        }
    }
}

/// A new seed appended to `out`.
fn append_random_seed(out: &mut BytesMut) {
    let start = out.len();
    out.resize(start + SEED_BASE64_LEN, 0);
    let seed: &mut [u8; SEED_BASE64_LEN] = (&mut out[start..])
        .try_into()
        .expect("resized to the seed's length");
    fill_random_seed(seed);
}

/// 512 random bytes from the thread's CSPRNG (ChaCha12, seeded and
/// reseeded from the OS every 64 KiB), base64, written over `out`: a
/// seed as every meta_data.json answer gets one (also a replayed answer's,
/// `ingress::answer_replay`).
pub fn fill_random_seed(out: &mut [u8; SEED_BASE64_LEN]) {
    let mut seed = [0u8; SEED_BYTES];
    rand::rng().fill_bytes(&mut seed);
    // Vectorized (AVX2 where the CPU has it): the scalar engine of the
    // `base64` crate was 2.7% of the daemon's CPU with keep-alive.
    let written = base64_simd::STANDARD
        .encode(&seed, base64_simd::Out::from_slice(out))
        .len();
    debug_assert_eq!(written, SEED_BASE64_LEN);
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    #[test]
    fn every_document_gets_its_own_seed_between_the_kept_parts() {
        let rendered = Rendered::new(
            RenderedBody::AroundSeed {
                prefix: Bytes::from_static(b"{\"random_seed\": \""),
                suffix: Bytes::from_static(b"\"}"),
            },
            APPLICATION_JSON,
        );
        let first = rendered.document();
        let second = rendered.document();
        assert_ne!(first.body, second.body);
        let text = std::str::from_utf8(&first.body).unwrap();
        let seed = text
            .strip_prefix("{\"random_seed\": \"")
            .and_then(|rest| rest.strip_suffix("\"}"))
            .unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(seed)
            .unwrap();
        assert_eq!(raw.len(), SEED_BYTES);
        assert_eq!(first.content_type, APPLICATION_JSON);
        // The seed is the volatile span: both answers share one ETag.
        assert_eq!(
            &first.body[first.volatile.clone().unwrap()],
            seed.as_bytes()
        );
        assert_eq!(first.etag(), second.etag());
    }

    /// The kept ETag is the one computed from an answer's bytes.
    #[test]
    fn the_kept_etag_is_the_documents_own() {
        for rendered in [
            Rendered::text("hostname"),
            Rendered::new(
                RenderedBody::AroundSeed {
                    prefix: Bytes::from_static(b"{\"a\": 1, \"random_seed\": \""),
                    suffix: Bytes::from_static(b"\"}"),
                },
                APPLICATION_JSON,
            ),
        ] {
            let document = rendered.document();
            let computed = Document {
                etag: None,
                ..document.clone()
            }
            .etag();
            assert_eq!(document.etag(), computed);
        }
    }

    #[test]
    fn whole_bodies_are_shared_not_copied() {
        let rendered = Rendered::text("hostname");
        let RenderedBody::Whole(kept) = &rendered.body else {
            unreachable!()
        };
        assert_eq!(rendered.document().body.as_ptr(), kept.as_ptr());
    }
}
