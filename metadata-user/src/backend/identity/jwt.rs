//! `GET /openstack/identity?audience=AUD`: a compact JWS (RFC 7515) the
//! guest hands to a verifier, who checks it against the JWKS
//! (`metadata-redirector identity jwks`).
//!
//! Claims: `iss` (`--identity-issuer`), `sub` (the instance UUID), `aud`,
//! `iat`, `exp` (an hour later), `project_id`, `availability_zone`, and
//! `host` (the hypervisor this daemon runs on).
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::json;

use super::{IdentityKey, InstanceFacts};

/// How long a token is valid (the issue's upper bound; verifiers that want
/// less can check `iat`).
pub const LIFETIME_SECS: u64 = 3600;
/// The longest audience accepted (a URL or a name; anything longer is a
/// mistake or an attempt to make us sign junk).
pub const MAX_AUDIENCE_BYTES: usize = 256;

/// The default `iss` when the operator names none.
pub const DEFAULT_ISSUER: &str = "metadata-redirector";

/// Who issues the tokens, and from where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issuer {
    /// `iss`
    pub name: String,
    /// `host`: this hypervisor's name.
    pub host: String,
}

/// A signed token for `audience`, issued at `now` (Unix seconds).
pub fn issue(
    key: &IdentityKey,
    issuer: &Issuer,
    facts: &InstanceFacts,
    audience: &str,
    now: u64,
) -> anyhow::Result<String> {
    let header = json!({ "alg": key.kind().jws_alg(), "kid": key.kid(), "typ": "JWT" });
    let claims = json!({
        "iss": issuer.name,
        "sub": facts.uuid.hyphenated().to_string(),
        "aud": audience,
        "iat": now,
        "exp": now + LIFETIME_SECS,
        "project_id": facts.project_id,
        "availability_zone": facts.availability_zone,
        "host": issuer.host,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?)
    );
    let signature = key.sign_jws(signing_input.as_bytes())?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

/// The audience a request asks for, or why it cannot have a token.
pub fn audience(query: Option<&str>) -> Result<String, &'static str> {
    let audience = query
        .into_iter()
        .flat_map(crate::backend::watch::query::pairs)
        .find(|(name, _)| name == "audience")
        .map(|(_, value)| value);
    match audience {
        None => Err("audience is required: GET /openstack/identity?audience=AUDIENCE."),
        Some(value) if value.is_empty() => Err("audience must not be empty."),
        Some(value) if value.len() > MAX_AUDIENCE_BYTES => {
            Err("audience must be at most 256 bytes.")
        }
        Some(value) if value.chars().any(char::is_control) => {
            Err("audience must not contain control characters.")
        }
        Some(value) => Ok(value),
    }
}

/// This machine's host name (the JWT's `host`).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::identity::key::test_keys::{p256, rsa, self_signed};
    use openssl::{hash::MessageDigest, sign::Verifier};

    fn facts() -> InstanceFacts {
        InstanceFacts {
            uuid: uuid::Uuid::from_u128(0xabcd),
            project_id: Some("proj".into()),
            availability_zone: "az1".into(),
            ec2_instance_id: "i-1".into(),
            image_id: "ami-1".into(),
            instance_type: String::new(),
            private_ip: "10.0.0.5".into(),
            kernel_id: None,
            ramdisk_id: None,
        }
    }

    #[test]
    fn token_parts_and_signature() {
        let issuer = Issuer {
            name: "https://mdr.example".into(),
            host: "hv1".into(),
        };
        for private in [rsa(2048), p256()] {
            let key = IdentityKey::new(private.clone(), self_signed(&private)).unwrap();
            let token = issue(&key, &issuer, &facts(), "vault", 1_800_000_000).unwrap();
            let parts: Vec<&str> = token.split('.').collect();
            assert_eq!(parts.len(), 3);
            let decode = |part: &str| -> serde_json::Value {
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
            };
            let header = decode(parts[0]);
            assert_eq!(header["alg"], key.kind().jws_alg());
            assert_eq!(header["kid"], key.kid());
            let claims = decode(parts[1]);
            assert_eq!(claims["sub"], "00000000-0000-0000-0000-00000000abcd");
            assert_eq!(claims["aud"], "vault");
            assert_eq!(claims["iss"], "https://mdr.example");
            assert_eq!(claims["exp"], 1_800_000_000u64 + 3600);
            assert_eq!(claims["project_id"], "proj");
            assert_eq!(claims["availability_zone"], "az1");
            assert_eq!(claims["host"], "hv1");
            let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
            if header["alg"] == "RS256" {
                let public = key.public().unwrap();
                let mut verifier = Verifier::new(MessageDigest::sha256(), &public).unwrap();
                let signed = format!("{}.{}", parts[0], parts[1]);
                assert!(
                    verifier
                        .verify_oneshot(&signature, signed.as_bytes())
                        .unwrap()
                );
            } else {
                assert_eq!(signature.len(), 64, "ES256 is r || s");
            }
        }
    }

    #[test]
    fn audience_is_required_and_bounded() {
        assert!(audience(None).is_err());
        assert!(audience(Some("x=1")).is_err());
        assert!(audience(Some("audience=")).is_err());
        assert!(audience(Some(&format!("audience={}", "a".repeat(257)))).is_err());
        assert!(audience(Some("audience=a%0Ab")).is_err());
        assert_eq!(
            audience(Some("x=1&audience=https%3A%2F%2Fvault.example%2F")),
            Ok("https://vault.example/".to_owned())
        );
    }
}
