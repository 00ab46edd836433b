//! IMDSv2 session tokens, stateless.
//!
//! A token is `base64url(version || expiry || HMAC-SHA256(key, binding ||
//! expiry))`. The binding is the port (its slot and tap name) and the
//! instance behind it, so a token minted on one tap is worthless on another,
//! and on the same tap once it serves another instance. Nothing is stored per
//! token: verifying needs only the key, which lives in the state dir, so
//! tokens survive a daemon restart and memory does not grow with them.
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use hyper::header::HeaderName;
use sha2::Sha256;

/// AWS's limits on `X-aws-ec2-metadata-token-ttl-seconds`.
pub const MIN_TTL_SECONDS: u64 = 1;
pub const MAX_TTL_SECONDS: u64 = 21_600;

// As `HeaderName`s: a map lookup by a `&str` parses and checks the name
// first, on every request.
pub const TTL_HEADER: HeaderName = HeaderName::from_static("x-aws-ec2-metadata-token-ttl-seconds");
pub const TOKEN_HEADER: HeaderName = HeaderName::from_static("x-aws-ec2-metadata-token");

/// Changes if the layout or the MAC input ever changes, so old tokens are
/// refused instead of misread.
const FORMAT_VERSION: u8 = 1;
/// Separates our MACs from any other use of the same key.
const MAC_CONTEXT: &[u8] = b"metadata-redirector IMDSv2 token\0";
const MAC_LEN: usize = 32;
const TOKEN_LEN: usize = 1 + 8 + MAC_LEN;

/// What a token is bound to.
#[derive(Clone, Copy, Debug)]
pub struct Binding<'a> {
    pub slot: u32,
    pub ifname: &'a str,
    pub instance: uuid::Uuid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token of ours, or one for another port or instance.
    Invalid,
    Expired,
}

/// The secret tokens are signed with.
pub struct TokenKey([u8; 32]);

impl TokenKey {
    pub fn new(key: [u8; 32]) -> Self {
        Self(key)
    }

    /// A token valid until `expires_at` (Unix seconds).
    pub fn mint(&self, binding: Binding<'_>, expires_at: u64) -> String {
        let mut raw = [0u8; TOKEN_LEN];
        raw[0] = FORMAT_VERSION;
        raw[1..9].copy_from_slice(&expires_at.to_be_bytes());
        raw[9..].copy_from_slice(&self.mac(binding, expires_at).finalize().into_bytes());
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Checks `token` for this binding at time `now` (Unix seconds). The MAC
    /// is compared in constant time before the expiry is believed.
    pub fn verify(&self, binding: Binding<'_>, token: &str, now: u64) -> Result<(), TokenError> {
        let raw = URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|_| TokenError::Invalid)?;
        if raw.len() != TOKEN_LEN || raw[0] != FORMAT_VERSION {
            return Err(TokenError::Invalid);
        }
        let expires_at = u64::from_be_bytes(raw[1..9].try_into().expect("8 bytes"));
        self.mac(binding, expires_at)
            .verify_slice(&raw[9..])
            .map_err(|_| TokenError::Invalid)?;
        if now >= expires_at {
            return Err(TokenError::Expired);
        }
        Ok(())
    }

    fn mac(&self, binding: Binding<'_>, expires_at: u64) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(MAC_CONTEXT);
        mac.update(&binding.slot.to_be_bytes());
        // Length-prefixed, so no two (ifname, uuid) pairs share an encoding.
        mac.update(&[binding.ifname.len() as u8]);
        mac.update(binding.ifname.as_bytes());
        mac.update(binding.instance.as_bytes());
        mac.update(&expires_at.to_be_bytes());
        mac
    }
}

/// Parses the TTL header: decimal seconds within AWS's range.
pub fn parse_ttl(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ttl: u64 = text.parse().ok()?;
    (MIN_TTL_SECONDS..=MAX_TTL_SECONDS)
        .contains(&ttl)
        .then_some(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn binding(slot: u32, ifname: &str) -> Binding<'_> {
        Binding {
            slot,
            ifname,
            instance: uuid::Uuid::from_u128(0x1234),
        }
    }

    #[test]
    fn round_trip() {
        let key = TokenKey::new([7; 32]);
        let token = key.mint(binding(3, "tap0"), NOW + 60);
        assert_eq!(key.verify(binding(3, "tap0"), &token, NOW), Ok(()));
        assert_eq!(key.verify(binding(3, "tap0"), &token, NOW + 59), Ok(()));
    }

    #[test]
    fn expired_at_the_deadline() {
        let key = TokenKey::new([7; 32]);
        let token = key.mint(binding(3, "tap0"), NOW + 60);
        assert_eq!(
            key.verify(binding(3, "tap0"), &token, NOW + 60),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn bound_to_slot_ifname_instance_and_key() {
        let key = TokenKey::new([7; 32]);
        let token = key.mint(binding(3, "tap0"), NOW + 60);
        assert_eq!(
            key.verify(binding(4, "tap0"), &token, NOW),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            key.verify(binding(3, "tap1"), &token, NOW),
            Err(TokenError::Invalid)
        );
        let other_instance = Binding {
            instance: uuid::Uuid::from_u128(0x5678),
            ..binding(3, "tap0")
        };
        assert_eq!(
            key.verify(other_instance, &token, NOW),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            TokenKey::new([8; 32]).verify(binding(3, "tap0"), &token, NOW),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn a_forged_expiry_breaks_the_mac() {
        let key = TokenKey::new([7; 32]);
        let token = key.mint(binding(3, "tap0"), NOW - 1);
        let mut raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        raw[1..9].copy_from_slice(&(NOW + 1000).to_be_bytes());
        let forged = URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(
            key.verify(binding(3, "tap0"), &forged, NOW),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn garbage_is_invalid() {
        let key = TokenKey::new([7; 32]);
        for token in ["", "abc", "!!!!", &"A".repeat(55), &"A".repeat(200)] {
            assert_eq!(
                key.verify(binding(3, "tap0"), token, NOW),
                Err(TokenError::Invalid),
                "{token}"
            );
        }
    }

    #[test]
    fn ttl_range() {
        assert_eq!(parse_ttl(b"1"), Some(1));
        assert_eq!(parse_ttl(b"21600"), Some(21_600));
        assert_eq!(parse_ttl(b" 60 "), Some(60));
        for bad in [
            &b"0"[..],
            b"21601",
            b"-1",
            b"+5",
            b"1.5",
            b"",
            b"abc",
            b"99999999999999999999999",
        ] {
            assert_eq!(parse_ttl(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
