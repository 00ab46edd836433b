//! The operator's identity key and certificate, read once at start. A bad
//! file stops `serve` with a line naming the flag; the key's bytes are
//! never logged or printed.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use openssl::{
    bn::BigNumContext,
    ecdsa::EcdsaSig,
    hash::MessageDigest,
    nid::Nid,
    pkey::{Id, PKey, Private, Public},
    sign::Signer,
    x509::X509,
};
use sha2::{Digest as _, Sha256};

/// Where the key and certificate are (flags or config keys).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityFiles {
    pub key: Option<PathBuf>,
    pub cert: Option<PathBuf>,
}

/// What kind of key signs, which decides the JWS algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA of at least 2048 bits: RS256.
    Rsa,
    /// ECDSA on P-256: ES256.
    EcP256,
}

impl KeyKind {
    pub fn jws_alg(self) -> &'static str {
        match self {
            Self::Rsa => "RS256",
            Self::EcP256 => "ES256",
        }
    }
}

/// The smallest RSA key accepted (AWS's rsa2048 is named after it).
const MIN_RSA_BITS: u32 = 2048;

/// The signing key with its certificate.
pub struct IdentityKey {
    key: PKey<Private>,
    cert: X509,
    kind: KeyKind,
    /// RFC 7638 thumbprint of the public key (the JWS `kid`).
    kid: String,
}

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityKey")
            .field("kind", &self.kind)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl IdentityKey {
    /// Loads both files; None when neither is given (identity paths 404).
    pub fn load(files: &IdentityFiles) -> anyhow::Result<Option<Self>> {
        let (key_path, cert_path) = match (&files.key, &files.cert) {
            (None, None) => return Ok(None),
            (Some(key), Some(cert)) => (key, cert),
            (Some(_), None) => bail!("--identity-key needs --identity-cert"),
            (None, Some(_)) => bail!("--identity-cert needs --identity-key"),
        };
        let key = read(key_path, "--identity-key")?;
        // The parse error is openssl's (it never contains key material).
        let key = PKey::private_key_from_pem(&key).map_err(|_| {
            anyhow::anyhow!(
                "--identity-key {}: not a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC)",
                key_path.display()
            )
        })?;
        let cert = read(cert_path, "--identity-cert")?;
        let cert = X509::from_pem(&cert).map_err(|_| {
            anyhow::anyhow!(
                "--identity-cert {}: not a PEM certificate",
                cert_path.display()
            )
        })?;
        Self::new(key, cert)
            .with_context(|| {
                format!(
                    "--identity-key {} / --identity-cert {}",
                    key_path.display(),
                    cert_path.display()
                )
            })
            .map(Some)
    }

    pub fn new(key: PKey<Private>, cert: X509) -> anyhow::Result<Self> {
        let kind = kind_of(&key)?;
        let public = cert.public_key().context("the certificate's public key")?;
        if !public.public_eq(&key) {
            bail!("the certificate is not for this key");
        }
        let kid = thumbprint(&public, kind)?;
        Ok(Self {
            key,
            cert,
            kind,
            kid,
        })
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn cert(&self) -> &X509 {
        &self.cert
    }

    pub(super) fn private(&self) -> &PKey<Private> {
        &self.key
    }

    pub fn public(&self) -> anyhow::Result<PKey<Public>> {
        Ok(self.cert.public_key()?)
    }

    /// SHA-256 signature over `data`: PKCS#1 v1.5 for RSA, DER ECDSA for
    /// EC (what `openssl dgst -sha256 -verify` checks).
    pub fn sign_der(&self, data: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut signer = Signer::new(MessageDigest::sha256(), &self.key)?;
        signer.update(data)?;
        Ok(signer.sign_to_vec()?)
    }

    /// The JWS signature over `data`: RS256's PKCS#1 v1.5 bytes, or ES256's
    /// fixed-size `r || s` (RFC 7518 3.4), not DER.
    pub fn sign_jws(&self, data: &[u8]) -> anyhow::Result<Vec<u8>> {
        let der = self.sign_der(data)?;
        match self.kind {
            KeyKind::Rsa => Ok(der),
            KeyKind::EcP256 => {
                let signature = EcdsaSig::from_der(&der)?;
                let mut raw = signature.r().to_vec_padded(32)?;
                raw.extend(signature.s().to_vec_padded(32)?);
                Ok(raw)
            }
        }
    }
}

fn read(path: &Path, flag: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag} {}", path.display()))
}

fn kind_of(key: &PKey<Private>) -> anyhow::Result<KeyKind> {
    match key.id() {
        Id::RSA => {
            let bits = key.bits();
            if bits < MIN_RSA_BITS {
                bail!("an RSA key of {bits} bits; at least {MIN_RSA_BITS} are needed");
            }
            Ok(KeyKind::Rsa)
        }
        Id::EC => {
            let curve = key.ec_key()?.group().curve_name();
            if curve != Some(Nid::X9_62_PRIME256V1) {
                bail!("an EC key on another curve than P-256 (prime256v1); ES256 needs P-256");
            }
            Ok(KeyKind::EcP256)
        }
        _ => bail!("the key must be RSA (2048 bits or more) or EC P-256"),
    }
}

/// The public key's JWK members, base64url without padding.
pub fn jwk_members(
    public: &PKey<Public>,
    kind: KeyKind,
) -> anyhow::Result<Vec<(&'static str, String)>> {
    Ok(match kind {
        KeyKind::Rsa => {
            let rsa = public.rsa()?;
            vec![
                ("e", URL_SAFE_NO_PAD.encode(rsa.e().to_vec())),
                ("kty", "RSA".to_owned()),
                ("n", URL_SAFE_NO_PAD.encode(rsa.n().to_vec())),
            ]
        }
        KeyKind::EcP256 => {
            let ec = public.ec_key()?;
            let mut ctx = BigNumContext::new()?;
            let (mut x, mut y) = (openssl::bn::BigNum::new()?, openssl::bn::BigNum::new()?);
            ec.public_key()
                .affine_coordinates(ec.group(), &mut x, &mut y, &mut ctx)?;
            vec![
                ("crv", "P-256".to_owned()),
                ("kty", "EC".to_owned()),
                ("x", URL_SAFE_NO_PAD.encode(x.to_vec_padded(32)?)),
                ("y", URL_SAFE_NO_PAD.encode(y.to_vec_padded(32)?)),
            ]
        }
    })
}

/// RFC 7638: SHA-256 over the required members in lexical order, no
/// whitespace; the same key always has the same ID.
fn thumbprint(public: &PKey<Public>, kind: KeyKind) -> anyhow::Result<String> {
    let members = jwk_members(public, kind)?;
    let object: serde_json::Map<String, serde_json::Value> = members
        .into_iter()
        .map(|(name, value)| (name.to_owned(), serde_json::Value::String(value)))
        .collect();
    let canonical = serde_json::to_vec(&object)?;
    Ok(URL_SAFE_NO_PAD.encode(Sha256::digest(&canonical)))
}

#[cfg(test)]
pub mod test_keys {
    //! Keys and self-signed certificates made on the fly for unit tests.
    use openssl::{
        asn1::Asn1Time,
        ec::{EcGroup, EcKey},
        hash::MessageDigest,
        nid::Nid,
        pkey::{PKey, Private},
        rsa::Rsa,
        x509::{X509, X509NameBuilder},
    };

    pub fn rsa(bits: u32) -> PKey<Private> {
        PKey::from_rsa(Rsa::generate(bits).unwrap()).unwrap()
    }

    pub fn p256() -> PKey<Private> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
    }

    pub fn self_signed(key: &PKey<Private>) -> X509 {
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "metadata-redirector test")
            .unwrap();
        let name = name.build();
        let mut builder = X509::builder().unwrap();
        builder.set_version(2).unwrap();
        let serial = openssl::bn::BigNum::from_u32(1).unwrap();
        builder
            .set_serial_number(&serial.to_asn1_integer().unwrap())
            .unwrap();
        builder.set_subject_name(&name).unwrap();
        builder.set_issuer_name(&name).unwrap();
        builder.set_pubkey(key).unwrap();
        builder
            .set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        builder
            .set_not_after(&Asn1Time::days_from_now(30).unwrap())
            .unwrap();
        builder.sign(key, MessageDigest::sha256()).unwrap();
        builder.build()
    }
}

#[cfg(test)]
mod tests {
    use super::{test_keys::*, *};

    #[test]
    fn kinds_and_refusals() {
        let rsa_key = rsa(2048);
        let key = IdentityKey::new(rsa_key.clone(), self_signed(&rsa_key)).unwrap();
        assert_eq!(key.kind().jws_alg(), "RS256");
        let ec = p256();
        let key = IdentityKey::new(ec.clone(), self_signed(&ec)).unwrap();
        assert_eq!(key.kind().jws_alg(), "ES256");
        assert_eq!(key.sign_jws(b"x").unwrap().len(), 64);

        let small = rsa(1024);
        let err = IdentityKey::new(small.clone(), self_signed(&small)).unwrap_err();
        assert!(err.to_string().contains("2048"), "{err}");
        let err = IdentityKey::new(rsa_key.clone(), self_signed(&ec)).unwrap_err();
        assert!(err.to_string().contains("not for this key"), "{err}");
    }

    #[test]
    fn files_are_named_in_errors_and_both_are_needed() {
        let dir = tempfile::tempdir().unwrap();
        let key = p256();
        let (key_path, cert_path) = (dir.path().join("k.pem"), dir.path().join("c.pem"));
        std::fs::write(&key_path, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        std::fs::write(&cert_path, self_signed(&key).to_pem().unwrap()).unwrap();
        let files = |key: Option<&Path>, cert: Option<&Path>| IdentityFiles {
            key: key.map(Path::to_path_buf),
            cert: cert.map(Path::to_path_buf),
        };
        assert!(IdentityKey::load(&files(None, None)).unwrap().is_none());
        assert!(
            IdentityKey::load(&files(Some(&key_path), Some(&cert_path)))
                .unwrap()
                .is_some()
        );
        let err = IdentityKey::load(&files(Some(&key_path), None)).unwrap_err();
        assert_eq!(err.to_string(), "--identity-key needs --identity-cert");
        let err = format!(
            "{:#}",
            IdentityKey::load(&files(Some(&cert_path), Some(&cert_path))).unwrap_err()
        );
        assert!(
            err.starts_with("--identity-key ") && err.contains("c.pem"),
            "{err}"
        );
        let missing = dir.path().join("missing.pem");
        let err = format!(
            "{:#}",
            IdentityKey::load(&files(Some(&key_path), Some(&missing))).unwrap_err()
        );
        assert!(
            err.starts_with("--identity-cert ") && err.contains("missing.pem"),
            "{err}"
        );
        // The key's bytes never show, not even in Debug.
        let loaded = IdentityKey::load(&files(Some(&key_path), Some(&cert_path)))
            .unwrap()
            .unwrap();
        assert!(!format!("{loaded:?}").contains("BEGIN"));
    }
}
