//! Throw-away certificates for TLS tests: one CA that signs a server
//! certificate (for the names or IPs given) and a client certificate.
use std::{
    io,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// PEM text of a test CA and what it signed.
#[derive(Clone, Debug)]
pub struct TestPki {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

/// Where `TestPki::write_to` put each file.
#[derive(Clone, Debug)]
pub struct PkiFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestPki {
    /// A fresh CA, a server certificate valid for `server_names` (DNS names
    /// or IP addresses, e.g. "127.0.0.1"), and a client certificate.
    pub fn generate(server_names: &[&str]) -> Self {
        let ca_key = KeyPair::generate().expect("key generation");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("empty SAN list");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "fake-nova test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-signed CA");
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().expect("key generation");
        let names: Vec<String> = server_names.iter().map(|n| n.to_string()).collect();
        let mut server_params = CertificateParams::new(names).expect("valid server names");
        server_params
            .distinguished_name
            .push(DnType::CommonName, "fake-nova");
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .expect("server certificate");

        let client_key = KeyPair::generate().expect("key generation");
        let mut client_params =
            CertificateParams::new(Vec::<String>::new()).expect("empty SAN list");
        client_params
            .distinguished_name
            .push(DnType::CommonName, "metadata-redirector");
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client_params
            .signed_by(&client_key, &issuer)
            .expect("client certificate");

        Self {
            ca_pem: ca_cert.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
        }
    }

    /// Writes ca.pem, server.pem, server-key.pem, client.pem and client-key.pem into `dir`.
    pub fn write_to(&self, dir: &Path) -> io::Result<PkiFiles> {
        let files = PkiFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
        };
        std::fs::write(&files.ca, &self.ca_pem)?;
        std::fs::write(&files.server_cert, &self.server_cert_pem)?;
        std::fs::write(&files.server_key, &self.server_key_pem)?;
        std::fs::write(&files.client_cert, &self.client_cert_pem)?;
        std::fs::write(&files.client_key, &self.client_key_pem)?;
        Ok(files)
    }

    /// The server side of this PKI as a fake nova TLS configuration.
    pub fn server_tls(&self, require_client_cert: bool) -> crate::TlsConfig {
        crate::TlsConfig {
            cert_pem: self.server_cert_pem.clone(),
            key_pem: self.server_key_pem.clone(),
            client_ca_pem: require_client_cert.then(|| self.ca_pem.clone()),
        }
    }
}
