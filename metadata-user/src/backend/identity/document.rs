//! AWS's instance identity document and the three signatures over its
//! exact bytes, in the formats AWS serves them, so that AWS's published
//! verification commands work with the operator's certificate:
//!
//! - `signature`: base64 of the SHA-256 signature (`openssl dgst -sha256
//!   -verify key -signature signature document`).
//! - `pkcs7`, `rsa2048`: PKCS#7 SignedData carrying the document, base64
//!   in 64-column lines without the PEM armour (`openssl smime -verify -in
//!   pkcs7 -inform PEM -certfile certificate -noverify` once the armour is
//!   added). AWS signs `pkcs7` with DSA/SHA-1; we sign both with the
//!   operator's key and SHA-256 (SHA-1 signatures are refused by current
//!   verifiers). `rsa2048` exists only under an RSA key. The signer's
//!   certificate is left out (as AWS does): a verifier must bring the
//!   operator's certificate, so a document signed by anyone else fails.
//!
//! AWS pretty-prints the document with two-space indents and `" : "`, keys
//! in alphabetical order except the product-code trio, and answers
//! `text/plain`. `architecture` and `pendingTime` are left out: the daemon
//! does not know them.
use anyhow::Context as _;
use base64::{Engine as _, engine::general_purpose::STANDARD};
use openssl::{
    pkcs7::{Pkcs7, Pkcs7Flags},
    stack::Stack,
};
use serde_json::Value;

use super::{IdentityKey, InstanceFacts, key::KeyKind};

/// The document's bytes: what `document` serves and every signature signs.
pub fn render(facts: &InstanceFacts) -> String {
    let string = |value: &str| Value::String(value.to_owned());
    let optional = |value: Option<&str>| value.map_or(Value::Null, string);
    let fields = [
        ("accountId", optional(facts.project_id.as_deref())),
        ("availabilityZone", string(&facts.availability_zone)),
        ("billingProducts", Value::Null),
        ("devpayProductCodes", Value::Null),
        ("marketplaceProductCodes", Value::Null),
        ("imageId", string(&facts.image_id)),
        ("instanceId", string(&facts.ec2_instance_id)),
        ("instanceType", string(&facts.instance_type)),
        ("kernelId", optional(facts.kernel_id.as_deref())),
        ("privateIp", string(&facts.private_ip)),
        ("ramdiskId", optional(facts.ramdisk_id.as_deref())),
        ("region", string(region_of(&facts.availability_zone))),
        ("version", string("2017-09-30")),
    ];
    let lines: Vec<String> = fields
        .iter()
        .map(|(key, value)| format!("  \"{key}\" : {value}"))
        .collect();
    format!("{{\n{}\n}}", lines.join(",\n"))
}

/// AWS zones are the region plus one letter (`us-west-2b`); any other zone
/// name (OpenStack's `nova`, `az1`) is its own region.
pub fn region_of(availability_zone: &str) -> &str {
    let bytes = availability_zone.as_bytes();
    match bytes {
        [.., digit, letter] if digit.is_ascii_digit() && letter.is_ascii_lowercase() => {
            &availability_zone[..availability_zone.len() - 1]
        }
        _ => availability_zone,
    }
}

/// `signature`: base64 of the SHA-256 signature over `document`.
pub fn signature(key: &IdentityKey, document: &[u8]) -> anyhow::Result<String> {
    Ok(STANDARD.encode(key.sign_der(document)?))
}

/// `pkcs7` (and `rsa2048`): SignedData with the document inside, as the
/// base64 lines between PEM's BEGIN and END lines, no final newline.
pub fn pkcs7(key: &IdentityKey, document: &[u8]) -> anyhow::Result<String> {
    let no_extra_certs = Stack::new()?;
    // BINARY: the bytes are signed as they are (no MIME CRLF canonicalisation).
    // NOCERTS: the verifier brings the operator's certificate (-certfile).
    let signed = Pkcs7::sign(
        key.cert(),
        key.private(),
        &no_extra_certs,
        document,
        Pkcs7Flags::BINARY | Pkcs7Flags::NOCERTS,
    )
    .context("PKCS#7 signing")?;
    let pem = String::from_utf8(signed.to_pem()?).context("PEM is ASCII")?;
    let body: Vec<&str> = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    Ok(body.join("\n"))
}

/// Whether `rsa2048` is offered under this key.
pub fn offers_rsa2048(key: &IdentityKey) -> bool {
    key.kind() == KeyKind::Rsa
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::identity::key::test_keys::{p256, rsa, self_signed};

    pub fn facts() -> InstanceFacts {
        InstanceFacts {
            uuid: uuid::Uuid::from_u128(0x1234),
            project_id: Some("p1".into()),
            availability_zone: "us-west-2b".into(),
            ec2_instance_id: "i-00001234".into(),
            image_id: "ami-00000000".into(),
            instance_type: "m1.small".into(),
            private_ip: "10.0.0.5".into(),
            kernel_id: None,
            ramdisk_id: None,
        }
    }

    #[test]
    fn region_comes_from_the_zone() {
        assert_eq!(region_of("us-west-2b"), "us-west-2");
        assert_eq!(region_of("eu-central-1a"), "eu-central-1");
        assert_eq!(region_of("nova"), "nova");
        assert_eq!(region_of("az1"), "az1");
        assert_eq!(region_of(""), "");
    }

    #[test]
    fn signatures_verify_over_the_exact_bytes_and_nothing_else() {
        use openssl::{hash::MessageDigest, sign::Verifier, x509::store::X509StoreBuilder};
        for private in [rsa(2048), p256()] {
            let key = IdentityKey::new(private.clone(), self_signed(&private)).unwrap();
            let document = render(&facts());
            let raw = STANDARD
                .decode(signature(&key, document.as_bytes()).unwrap())
                .unwrap();
            let public = key.public().unwrap();
            let mut verifier = Verifier::new(MessageDigest::sha256(), &public).unwrap();
            assert!(verifier.verify_oneshot(&raw, document.as_bytes()).unwrap());
            let mut verifier = Verifier::new(MessageDigest::sha256(), &public).unwrap();
            let other = render(&InstanceFacts {
                private_ip: "10.0.0.6".into(),
                ..facts()
            });
            assert!(!verifier.verify_oneshot(&raw, other.as_bytes()).unwrap());

            let body = pkcs7(&key, document.as_bytes()).unwrap();
            assert!(!body.ends_with('\n') && body.lines().all(|line| line.len() <= 64));
            let pem = format!("-----BEGIN PKCS7-----\n{body}\n-----END PKCS7-----\n");
            let signed = Pkcs7::from_pem(pem.as_bytes()).unwrap();
            let mut certs = Stack::new().unwrap();
            certs.push(key.cert().clone()).unwrap();
            let store = X509StoreBuilder::new().unwrap().build();
            let mut out = Vec::new();
            signed
                .verify(&certs, &store, None, Some(&mut out), Pkcs7Flags::NOVERIFY)
                .unwrap();
            assert_eq!(out, document.as_bytes(), "the exact bytes, carried inside");
            // Without the operator's certificate nothing verifies (NOCERTS).
            let none = Stack::new().unwrap();
            assert!(
                signed
                    .verify(&none, &store, None, None, Pkcs7Flags::NOVERIFY)
                    .is_err()
            );
        }
    }
}
