//! Signed identity: a guest proves who it is to a third party (Vault,
//! SPIRE, a CI system) with no pre-shared secret, under a key and
//! certificate the operator gives (`--identity-key`, `--identity-cert`).
//!
//! - `key`: loading and checking the key and certificate; the key ID.
//! - `facts`: what an identity says about an instance, from either backend.
//! - `document`: AWS's instance identity document, and its three
//!   signatures (`signature`, `pkcs7`, `rsa2048`) over its exact bytes.
//! - `jwt`: `/openstack/identity?audience=AUD`, a compact JWS.
//! - `jwks`: the public key as a JWK Set, for verifiers.
//!
//! The crypto is the `openssl` crate over the system's libssl (Debian's
//! libssl-dev, installed by `cargo xtask setup`; linked statically, see
//! .cargo/config.toml): PKCS#7 SignedData is what
//! AWS's verification command (`openssl smime -verify`) reads, and the same
//! library signing it is the surest way to match it; RustCrypto's `cms`
//! crate can build it too, but with far more code of ours around it. JWS is
//! built by hand on the same signer (a JWT library would bring a second
//! crypto stack for two base64 joins and one signature).
//!
//! Who the instance is comes from the tap, never from the request or from
//! nova: both backends fill `InstanceFacts` with the port's instance.
pub mod document;
pub mod facts;
pub mod jwks;
pub mod jwt;
pub mod key;

pub use facts::InstanceFacts;
pub use key::{IdentityFiles, IdentityKey};

/// Which identity resource a request names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityResource {
    /// `instance-identity/` (the listing)
    Listing,
    Document,
    /// base64 of the signature over the document's bytes (`openssl dgst`).
    Signature,
    /// PKCS#7 SignedData carrying the document, SHA-256.
    Pkcs7,
    /// The same, offered only under an RSA key (AWS's RSA-2048 signature).
    Rsa2048,
}

impl IdentityResource {
    /// The segments after `dynamic/instance-identity`.
    pub fn from_segments(segments: &[&str]) -> Option<Self> {
        match segments {
            [] => Some(Self::Listing),
            ["document"] => Some(Self::Document),
            ["signature"] => Some(Self::Signature),
            ["pkcs7"] => Some(Self::Pkcs7),
            ["rsa2048"] => Some(Self::Rsa2048),
            _ => None,
        }
    }
}

/// The key with who issues under it: everything the identity paths need.
#[derive(Debug)]
pub struct Identity {
    pub key: IdentityKey,
    pub issuer: jwt::Issuer,
}

/// The JWT's content type (RFC 7519 section 10.3.1).
pub const APPLICATION_JWT: &str = "application/jwt";

impl Identity {
    /// The body of an AWS identity resource for `facts`, None when there is
    /// none (404): a signature needs a key, `rsa2048` an RSA one.
    pub fn aws(
        identity: Option<&Self>,
        resource: IdentityResource,
        facts: &InstanceFacts,
    ) -> anyhow::Result<Option<String>> {
        let signed = |sign: fn(&IdentityKey, &[u8]) -> anyhow::Result<String>| match identity {
            Some(identity) => sign(&identity.key, document::render(facts).as_bytes()).map(Some),
            None => Ok(None),
        };
        match resource {
            IdentityResource::Listing => {
                let mut listing = vec!["document"];
                if let Some(identity) = identity {
                    listing.push("pkcs7");
                    if document::offers_rsa2048(&identity.key) {
                        listing.push("rsa2048");
                    }
                    listing.push("signature");
                }
                Ok(Some(listing.join("\n")))
            }
            IdentityResource::Document => Ok(Some(document::render(facts))),
            IdentityResource::Signature => signed(document::signature),
            IdentityResource::Pkcs7 => signed(document::pkcs7),
            IdentityResource::Rsa2048 => match identity {
                Some(identity) if document::offers_rsa2048(&identity.key) => {
                    signed(document::pkcs7)
                }
                _ => Ok(None),
            },
        }
    }

    /// A JWT for `facts` and `audience`, issued at `now`.
    pub fn jwt(&self, facts: &InstanceFacts, audience: &str, now: u64) -> anyhow::Result<String> {
        jwt::issue(&self.key, &self.issuer, facts, audience, now)
    }
}

/// An identity request, recognised from the raw path (the nova backend's
/// router: nova has none of these paths, so the daemon answers them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityRoute {
    Aws(IdentityResource),
    Jwt,
}

impl IdentityRoute {
    /// `/[ec2/]<2009-04-04|latest>/dynamic/instance-identity/...` or
    /// `/openstack/identity` (empty and `.` segments ignored).
    pub fn from_path(path: &str) -> Option<Self> {
        let segments: Vec<&str> = path
            .split('/')
            .filter(|segment| !segment.is_empty() && *segment != ".")
            .collect();
        match segments.as_slice() {
            ["openstack", "identity"] => Some(Self::Jwt),
            ["ec2", rest @ ..] | rest => match rest {
                [version, "dynamic", "instance-identity", resource @ ..]
                    if ["2009-04-04", "latest"].contains(version) =>
                {
                    IdentityResource::from_segments(resource).map(Self::Aws)
                }
                _ => None,
            },
        }
    }
}

#[cfg(test)]
mod route_tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            IdentityRoute::from_path("/openstack/identity"),
            Some(IdentityRoute::Jwt)
        );
        assert_eq!(
            IdentityRoute::from_path("/latest/dynamic/instance-identity/pkcs7"),
            Some(IdentityRoute::Aws(IdentityResource::Pkcs7))
        );
        assert_eq!(
            IdentityRoute::from_path("/ec2/2009-04-04/dynamic/instance-identity/"),
            Some(IdentityRoute::Aws(IdentityResource::Listing))
        );
        assert_eq!(
            IdentityRoute::from_path("/2008-09-01/dynamic/instance-identity/document"),
            None
        );
        assert_eq!(
            IdentityRoute::from_path("/latest/meta-data/instance-id"),
            None
        );
        assert_eq!(IdentityRoute::from_path("/openstack/latest/identity"), None);
    }
}
