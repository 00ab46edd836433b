//! `fake-nova`: runs the fake nova-api-metadata and prints, on stdout, one
//! JSON line `{"listening": "ADDR"}` and then one JSON line per request
//! (see `fake_nova::RecordedRequest`). End-to-end tests read that log.
use std::{io::Write as _, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use fake_nova::{Config, FakeNova, TlsConfig, pki::TestPki};

#[derive(Debug, Parser)]
#[command(name = "fake-nova", version)]
struct Args {
    /// Address to listen on (port 0 picks one; the log's first line says which).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8775")]
    listen: SocketAddr,
    /// File holding the shared secret (one trailing newline is ignored).
    #[arg(long, value_name = "FILE", required_unless_present = "write_test_pki")]
    secret_file: Option<PathBuf>,
    /// Serve HTTPS with this certificate (PEM) ...
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// ... and this private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require a client certificate signed by this CA (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// INSTANCE=PROJECT: requests for INSTANCE with another X-Tenant-ID get 404 (repeatable).
    #[arg(long = "project", value_name = "INSTANCE=PROJECT")]
    projects: Vec<String>,
    /// Answer user data (`.../user_data`, `.../user-data`) with this file's
    /// content at each request (404 while it does not exist).
    #[arg(long, value_name = "FILE")]
    user_data_file: Option<PathBuf>,
    /// Wait this many milliseconds before each answer.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    delay_ms: u64,
    /// Write a throw-away CA, server and client certificate for NAME (see
    /// --pki-name) into DIR as ca.pem, server.pem, server-key.pem,
    /// client.pem, client-key.pem, and exit.
    #[arg(long, value_name = "DIR")]
    write_test_pki: Option<PathBuf>,
    /// Server name or IP for --write-test-pki (repeatable).
    #[arg(long, value_name = "NAME", default_values_t = ["127.0.0.1".to_string(), "localhost".to_string()])]
    pki_name: Vec<String>,
}

fn read(path: &PathBuf, flag: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{flag} {}", path.display()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.write_test_pki {
        let names: Vec<&str> = args.pki_name.iter().map(String::as_str).collect();
        TestPki::generate(&names)
            .write_to(dir)
            .with_context(|| format!("--write-test-pki {}", dir.display()))?;
        return Ok(());
    }
    let secret_file = args
        .secret_file
        .as_ref()
        .context("--secret-file is required")?;
    let mut secret = read(secret_file, "--secret-file")?;
    if secret.ends_with('\n') {
        secret.pop();
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsConfig {
            cert_pem: read(cert, "--tls-cert")?,
            key_pem: read(key, "--tls-key")?,
            client_ca_pem: args
                .client_ca
                .as_ref()
                .map(|ca| read(ca, "--client-ca"))
                .transpose()?,
        }),
        _ => None,
    };
    let print = |line: String| {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    };
    let config = Config {
        secret: secret.into_bytes(),
        tls,
        on_request: Some(Arc::new(move |request| {
            print(serde_json::to_string(request).expect("requests serialize"));
        })),
        user_data_file: args.user_data_file.clone(),
    };
    let nova = FakeNova::start(args.listen, config)
        .await
        .context("--listen")?;
    for pair in &args.projects {
        let (instance, project) = pair
            .split_once('=')
            .with_context(|| format!("--project {pair:?}: expected INSTANCE=PROJECT"))?;
        nova.set_project(instance, project);
    }
    nova.set_delay(Duration::from_millis(args.delay_ms));
    print(serde_json::json!({ "listening": nova.addr().to_string() }).to_string());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
