//! TLS to nova-api-metadata: rustls with the ring provider, trust from
//! `--auth-ca-cert` (or the system's CA store), an optional client
//! certificate, and `--nova-metadata-insecure` to skip verification, as
//! neutron's agent does with `verify=False`.
use std::{path::Path, sync::Arc};

use anyhow::{Context as _, bail};
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject as _},
};

/// The TLS files as configured.
pub struct TlsFiles<'a> {
    /// `--auth-ca-cert`: the only CAs trusted when given (as neutron's
    /// agent passes it to `requests` as `verify=`); else the system store.
    pub ca_cert: Option<&'a Path>,
    /// `--nova-client-cert`, `--nova-client-priv-key`.
    pub client_identity: Option<(&'a Path, &'a Path)>,
    /// `--nova-metadata-insecure`: accept any server certificate.
    pub insecure: bool,
}

/// The provider is named explicitly, so another crate enabling a second
/// provider in rustls can never make the process-wide default ambiguous.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn client_config(files: &TlsFiles<'_>) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("rustls protocol versions")?;
    let builder = if files.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider)))
    } else {
        builder.with_root_certificates(trusted_roots(files.ca_cert)?)
    };
    // No ALPN here: the hyper-rustls connector sets it (http/1.1).
    let config = match files.client_identity {
        Some((cert_path, key_path)) => {
            let certs = read_certs(cert_path)
                .with_context(|| format!("--nova-client-cert {}", cert_path.display()))?;
            let key = read_key(key_path)
                .with_context(|| format!("--nova-client-priv-key {}", key_path.display()))?;
            builder.with_client_auth_cert(certs, key).with_context(|| {
                format!(
                    "--nova-client-cert {} / --nova-client-priv-key {}",
                    cert_path.display(),
                    key_path.display()
                )
            })?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// For a connector whose TLS side is never used (plain http to nova).
pub fn trust_nothing_config() -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth()
}

fn trusted_roots(ca_cert: Option<&Path>) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match ca_cert {
        Some(path) => {
            let context = || format!("--auth-ca-cert {}", path.display());
            for cert in read_certs(path).with_context(context)? {
                roots.add(cert).with_context(context)?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                bail!("https to nova: no CA certificates in the system store; give --auth-ca-cert");
            }
        }
    }
    Ok(roots)
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        bail!("no certificate in it (expected PEM)");
    }
    Ok(certs)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|err| match err {
        rustls::pki_types::pem::Error::NoItemsFound => {
            anyhow::anyhow!("no private key in it (expected PEM)")
        }
        other => anyhow::anyhow!("{other}"),
    })
}

/// `--nova-metadata-insecure`: any certificate is accepted, but handshake
/// signatures are still checked (the peer must hold the key it presents).
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
