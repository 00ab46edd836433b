//! The nova backend's settings. Names follow neutron-metadata-agent's
//! options (`nova_metadata_host`, ...) so an operator can carry values over
//! from metadata_agent.ini. `--config` TOML keys are the same names in
//! snake_case; command-line flags win over the file.
//!
//! The shared secret is never taken on the command line (it would show in
//! `ps`): it comes from `--metadata-proxy-shared-secret-file` (flag or TOML),
//! else from the `METADATA_PROXY_SHARED_SECRET` environment variable.
use std::{
    ffi::OsString,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use super::tls;

pub const DEFAULT_NOVA_METADATA_PORT: u16 = 8775;
/// Seconds; as neutron's agent waits for nova, but shorter than a guest's patience.
pub const DEFAULT_NOVA_METADATA_TIMEOUT: f64 = 10.0;
/// Seconds; nova's own `metadata_cache_expiration` default.
pub const DEFAULT_METADATA_CACHE_EXPIRATION: u64 = 15;
pub const SECRET_ENV: &str = "METADATA_PROXY_SHARED_SECRET";
/// The longest `--stale-if-error`: an answer a day old is as stale as an
/// operator can mean.
pub const MAX_STALE_IF_ERROR: u64 = 86_400;

/// Where guests' requests are answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// From this daemon's own store (`instance put`).
    #[default]
    Local,
    /// Forwarded to nova-api-metadata, signed as neutron-metadata-agent signs.
    Nova,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http,
    Https,
}

/// The backend options as given, before defaults and checks: from the
/// command line or from the TOML file (see `or` for merging the two).
#[derive(Clone, Debug, Default)]
pub struct NovaOptions {
    pub backend: Option<BackendKind>,
    pub nova_metadata_host: Option<String>,
    pub nova_metadata_port: Option<u16>,
    pub nova_metadata_protocol: Option<Protocol>,
    pub nova_metadata_insecure: Option<bool>,
    pub nova_client_cert: Option<PathBuf>,
    pub nova_client_priv_key: Option<PathBuf>,
    pub auth_ca_cert: Option<PathBuf>,
    pub metadata_proxy_shared_secret_file: Option<PathBuf>,
    /// Seconds, fractions allowed.
    pub nova_metadata_timeout: Option<f64>,
    /// Seconds; 0 disables the cache.
    pub metadata_cache_expiration: Option<u64>,
    /// Seconds a kept answer may serve while nova fails; 0 turns it off.
    pub stale_if_error: Option<u64>,
}

impl NovaOptions {
    /// Each option from `self` when set, else from `fallback`.
    pub fn or(self, fallback: NovaOptions) -> NovaOptions {
        NovaOptions {
            backend: self.backend.or(fallback.backend),
            nova_metadata_host: self.nova_metadata_host.or(fallback.nova_metadata_host),
            nova_metadata_port: self.nova_metadata_port.or(fallback.nova_metadata_port),
            nova_metadata_protocol: self
                .nova_metadata_protocol
                .or(fallback.nova_metadata_protocol),
            nova_metadata_insecure: self
                .nova_metadata_insecure
                .or(fallback.nova_metadata_insecure),
            nova_client_cert: self.nova_client_cert.or(fallback.nova_client_cert),
            nova_client_priv_key: self.nova_client_priv_key.or(fallback.nova_client_priv_key),
            auth_ca_cert: self.auth_ca_cert.or(fallback.auth_ca_cert),
            metadata_proxy_shared_secret_file: self
                .metadata_proxy_shared_secret_file
                .or(fallback.metadata_proxy_shared_secret_file),
            nova_metadata_timeout: self
                .nova_metadata_timeout
                .or(fallback.nova_metadata_timeout),
            metadata_cache_expiration: self
                .metadata_cache_expiration
                .or(fallback.metadata_cache_expiration),
            stale_if_error: self.stale_if_error.or(fallback.stale_if_error),
        }
    }

    /// Applies defaults and checks everything the nova backend needs, so a
    /// mistake stops `serve` at once with a line naming the flag.
    /// `env_secret` is `METADATA_PROXY_SHARED_SECRET` (a parameter so tests
    /// need not touch the process environment).
    pub fn resolve(self, env_secret: Option<OsString>) -> anyhow::Result<BackendConfig> {
        if self.backend.unwrap_or_default() == BackendKind::Local {
            return Ok(BackendConfig::Local);
        }
        let host = match self.nova_metadata_host.as_deref().map(str::trim) {
            Some(host) if !host.is_empty() => host.to_owned(),
            _ => bail!("--nova-metadata-host is required with --backend nova"),
        };
        if host.contains(['/', '?', '#', '@', ' ']) {
            bail!("--nova-metadata-host {host:?}: expected a host name or an IP address");
        }
        let port = self
            .nova_metadata_port
            .unwrap_or(DEFAULT_NOVA_METADATA_PORT);
        if port == 0 {
            bail!("--nova-metadata-port must be between 1 and 65535");
        }
        let timeout_secs = self
            .nova_metadata_timeout
            .unwrap_or(DEFAULT_NOVA_METADATA_TIMEOUT);
        if !(timeout_secs.is_finite() && timeout_secs > 0.0 && timeout_secs <= 3600.0) {
            bail!(
                "--nova-metadata-timeout {timeout_secs}: expected seconds, more than 0 and at most 3600"
            );
        }
        let stale_if_error = self.stale_if_error.unwrap_or(0);
        if stale_if_error > MAX_STALE_IF_ERROR {
            bail!(
                "--stale-if-error {stale_if_error}: at most {MAX_STALE_IF_ERROR} seconds (a day); 0 turns it off"
            );
        }
        let secret = read_secret(
            self.metadata_proxy_shared_secret_file.as_deref(),
            env_secret,
        )?;
        let protocol = self.nova_metadata_protocol.unwrap_or_default();
        let insecure = self.nova_metadata_insecure.unwrap_or(false);
        let client_identity = match (self.nova_client_cert, self.nova_client_priv_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => bail!("--nova-client-cert needs --nova-client-priv-key"),
            (None, Some(_)) => bail!("--nova-client-priv-key needs --nova-client-cert"),
        };
        // TLS files only matter for https (neutron's agent ignores them for
        // http too); for https they are loaded now, so a bad file stops serve.
        let tls = match protocol {
            Protocol::Http => None,
            Protocol::Https => Some(tls::client_config(&tls::TlsFiles {
                ca_cert: self.auth_ca_cert.as_deref(),
                client_identity: client_identity
                    .as_ref()
                    .map(|(c, k)| (c.as_path(), k.as_path())),
                insecure,
            })?),
        };
        Ok(BackendConfig::Nova(NovaConfig {
            host,
            port,
            protocol,
            tls,
            secret: SharedSecret(Arc::from(secret)),
            timeout: Duration::from_secs_f64(timeout_secs),
            cache_expiration: Duration::from_secs(
                self.metadata_cache_expiration
                    .unwrap_or(DEFAULT_METADATA_CACHE_EXPIRATION),
            ),
            stale_if_error: Duration::from_secs(stale_if_error),
        }))
    }
}

/// The secret from the file (flag or TOML) if one is named, else from the
/// environment. One trailing newline is dropped (`echo secret > file`).
fn read_secret(file: Option<&Path>, env_secret: Option<OsString>) -> anyhow::Result<Vec<u8>> {
    let (mut secret, origin) = match (file, env_secret) {
        (Some(path), _) => (
            std::fs::read(path).with_context(|| {
                format!("--metadata-proxy-shared-secret-file {}", path.display())
            })?,
            format!("--metadata-proxy-shared-secret-file {}", path.display()),
        ),
        (None, Some(value)) => (value.into_encoded_bytes(), SECRET_ENV.to_owned()),
        (None, None) => bail!(
            "--metadata-proxy-shared-secret-file (or {SECRET_ENV} in the environment) is required with --backend nova"
        ),
    };
    if secret.ends_with(b"\n") {
        secret.pop();
        if secret.ends_with(b"\r") {
            secret.pop();
        }
    }
    if secret.is_empty() {
        bail!("{origin}: the shared secret is empty");
    }
    Ok(secret)
}

/// What serves guests, resolved.
#[derive(Clone, Debug, Default)]
pub enum BackendConfig {
    #[default]
    Local,
    Nova(NovaConfig),
}

/// Everything the nova backend needs, checked.
#[derive(Clone, Debug)]
pub struct NovaConfig {
    /// Host name or IP address (an IPv6 address without brackets is fine).
    pub host: String,
    pub port: u16,
    pub protocol: Protocol,
    /// The rustls client configuration; `Some` exactly for https.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub secret: SharedSecret,
    /// Whole exchange with nova: connect, request, answer.
    pub timeout: Duration,
    /// How long a GET answer is reused; zero disables the cache.
    pub cache_expiration: Duration,
    /// How old a kept answer may be and still serve while nova fails
    /// (unreachable, too slow, 5xx); zero: never.
    pub stale_if_error: Duration,
}

/// The metadata proxy shared secret. Its Debug output never shows it.
#[derive(Clone)]
pub struct SharedSecret(pub Arc<[u8]>);

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nova(host: &str) -> NovaOptions {
        NovaOptions {
            backend: Some(BackendKind::Nova),
            nova_metadata_host: Some(host.into()),
            ..Default::default()
        }
    }

    fn secret_env() -> Option<OsString> {
        Some("s3cret\n".into())
    }

    fn resolve_nova(options: NovaOptions, env: Option<OsString>) -> anyhow::Result<NovaConfig> {
        match options.resolve(env)? {
            BackendConfig::Nova(config) => Ok(config),
            BackendConfig::Local => panic!("expected the nova backend"),
        }
    }

    #[test]
    fn local_is_the_default_and_ignores_nova_options() {
        let options = NovaOptions {
            nova_metadata_port: Some(0),
            ..Default::default()
        };
        assert!(matches!(
            options.resolve(None).unwrap(),
            BackendConfig::Local
        ));
    }

    #[test]
    fn nova_defaults() {
        let config = resolve_nova(nova("10.0.0.5"), secret_env()).unwrap();
        assert_eq!(config.host, "10.0.0.5");
        assert_eq!(config.port, 8775);
        assert_eq!(config.protocol, Protocol::Http);
        assert!(config.tls.is_none());
        assert_eq!(&*config.secret.0, b"s3cret");
        assert_eq!(config.timeout, Duration::from_secs(10));
        assert_eq!(config.cache_expiration, Duration::from_secs(15));
        assert_eq!(config.stale_if_error, Duration::ZERO, "off by default");
        assert!(
            !format!("{config:?}").contains("s3cret"),
            "the secret must not be printed"
        );
    }

    #[test]
    fn missing_host_or_secret_is_named() {
        let err = NovaOptions {
            backend: Some(BackendKind::Nova),
            ..Default::default()
        }
        .resolve(secret_env())
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "--nova-metadata-host is required with --backend nova"
        );
        let err = nova("nova").resolve(None).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "--metadata-proxy-shared-secret-file (or METADATA_PROXY_SHARED_SECRET"
            ),
            "{err}"
        );
        let err = nova("nova").resolve(Some("\n".into())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "METADATA_PROXY_SHARED_SECRET: the shared secret is empty"
        );
    }

    #[test]
    fn secret_file_wins_over_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "from-file\r\n").unwrap();
        let options = NovaOptions {
            metadata_proxy_shared_secret_file: Some(path.clone()),
            ..nova("nova")
        };
        assert_eq!(
            &*resolve_nova(options, secret_env()).unwrap().secret.0,
            b"from-file"
        );
        let options = NovaOptions {
            metadata_proxy_shared_secret_file: Some(dir.path().join("absent")),
            ..nova("nova")
        };
        let err = format!("{:#}", options.resolve(secret_env()).unwrap_err());
        assert!(
            err.starts_with("--metadata-proxy-shared-secret-file ") && err.contains("absent"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            (
                NovaOptions {
                    nova_metadata_port: Some(0),
                    ..nova("nova")
                },
                "--nova-metadata-port",
            ),
            (
                NovaOptions {
                    nova_metadata_timeout: Some(0.0),
                    ..nova("nova")
                },
                "--nova-metadata-timeout",
            ),
            (
                NovaOptions {
                    nova_metadata_timeout: Some(f64::NAN),
                    ..nova("nova")
                },
                "--nova-metadata-timeout",
            ),
            (nova("http://nova:8775/"), "--nova-metadata-host"),
            (
                NovaOptions {
                    stale_if_error: Some(86_401),
                    ..nova("nova")
                },
                "--stale-if-error",
            ),
            (
                NovaOptions {
                    nova_client_cert: Some("c.pem".into()),
                    ..nova("nova")
                },
                "--nova-client-cert needs",
            ),
            (
                NovaOptions {
                    nova_client_priv_key: Some("k.pem".into()),
                    ..nova("nova")
                },
                "--nova-client-priv-key needs",
            ),
        ];
        for (options, expected) in cases {
            let err = format!("{:#}", options.resolve(secret_env()).unwrap_err());
            assert!(err.starts_with(expected), "{err}");
        }
    }

    #[test]
    fn https_loads_tls_files_now() {
        let dir = tempfile::tempdir().unwrap();
        let pki = fake_nova::pki::TestPki::generate(&["127.0.0.1"])
            .write_to(dir.path())
            .unwrap();
        let https =
            |ca: Option<PathBuf>, cert: Option<PathBuf>, key: Option<PathBuf>| NovaOptions {
                nova_metadata_protocol: Some(Protocol::Https),
                auth_ca_cert: ca,
                nova_client_cert: cert,
                nova_client_priv_key: key,
                ..nova("127.0.0.1")
            };
        let config = resolve_nova(
            https(
                Some(pki.ca.clone()),
                Some(pki.client_cert.clone()),
                Some(pki.client_key.clone()),
            ),
            secret_env(),
        )
        .unwrap();
        assert!(config.tls.is_some());

        let missing = dir.path().join("missing.pem");
        let err = format!(
            "{:#}",
            https(Some(missing.clone()), None, None)
                .resolve(secret_env())
                .unwrap_err()
        );
        assert!(
            err.starts_with("--auth-ca-cert ") && err.contains("missing.pem"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            https(
                Some(pki.ca.clone()),
                Some(missing),
                Some(pki.client_key.clone())
            )
            .resolve(secret_env())
            .unwrap_err()
        );
        assert!(err.starts_with("--nova-client-cert "), "{err}");
        // A certificate where the key should be: no private key in it.
        let err = format!(
            "{:#}",
            https(
                Some(pki.ca.clone()),
                Some(pki.client_cert.clone()),
                Some(pki.client_cert.clone())
            )
            .resolve(secret_env())
            .unwrap_err()
        );
        assert!(err.starts_with("--nova-client-priv-key "), "{err}");
        // A key where the CA should be: no certificate in it.
        let err = format!(
            "{:#}",
            https(Some(pki.client_key.clone()), None, None)
                .resolve(secret_env())
                .unwrap_err()
        );
        assert!(
            err.starts_with("--auth-ca-cert ") && err.contains("no certificate"),
            "{err}"
        );
        // http ignores TLS files, as neutron's agent does.
        let options = NovaOptions {
            nova_metadata_protocol: Some(Protocol::Http),
            ..https(Some(dir.path().join("x")), None, None)
        };
        assert!(resolve_nova(options, secret_env()).unwrap().tls.is_none());
    }

    #[test]
    fn flags_win_over_file() {
        let flags = NovaOptions {
            nova_metadata_port: Some(9000),
            ..Default::default()
        };
        let file = NovaOptions {
            nova_metadata_port: Some(8000),
            nova_metadata_host: Some("nova".into()),
            ..Default::default()
        };
        let merged = flags.or(file);
        assert_eq!(merged.nova_metadata_port, Some(9000));
        assert_eq!(merged.nova_metadata_host.as_deref(), Some("nova"));
    }
}
