//! A fake nova-api-metadata (the `fake-nova` binary) on the loopback of the
//! test's host namespace, where the daemon forwards guests' requests.
//!
//! The process prints one JSON line per request it answered; a reader thread
//! collects them, so a test sees exactly what reached "nova": headers,
//! path, and the status it answered (a bad signature is 403, as from nova).
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
pub use fake_nova_record::RecordedRequest;
use serde_json::Value;

use crate::host::Host;
use crate::tempdir::TempDir;
use crate::{cmd, env, fixtures, names};

/// Where the daemon finds the fake nova: its port on the host's loopback.
pub const NOVA_HOST: &str = "127.0.0.1";
/// nova-api-metadata's usual port; every test has a loopback of its own.
pub const NOVA_PORT: u16 = 8775;

/// An instance as nova knows it: the daemon has no document for it, only
/// ports registered with `--project-id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NovaInstance {
    pub uuid: String,
    pub project: String,
}

impl NovaInstance {
    /// A new instance in a new project.
    pub fn new() -> Self {
        Self {
            uuid: fixtures::random_uuid(),
            project: format!("{:016x}{:016x}", names::random_u64(), names::random_u64()),
        }
    }
}

impl Default for NovaInstance {
    fn default() -> Self {
        Self::new()
    }
}

/// How long the request log must stay unchanged to count as caught up.
const QUIET_PERIOD: Duration = Duration::from_millis(100);

/// How long the fake nova may take to say it listens.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The files of a throw-away CA with a server certificate (for 127.0.0.1
/// and localhost) and a client certificate, from `fake-nova --write-test-pki`.
pub struct TestPki {
    dir: TempDir,
}

impl TestPki {
    pub fn new() -> Result<Self> {
        let dir = TempDir::new("pki")?;
        let out_dir = dir.path().to_string_lossy().into_owned();
        let bin = env::fake_nova_bin();
        cmd::run(&[&bin.to_string_lossy(), "--write-test-pki", &out_dir])?;
        Ok(Self { dir })
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client-key.pem")
    }
}

/// How to run a fake nova.
#[derive(Clone, Debug)]
pub struct FakeNovaConfig {
    pub listen: SocketAddr,
    /// nova's `metadata_proxy_shared_secret`.
    pub secret: String,
    /// (certificate, key) to serve HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Require a client certificate signed by this CA (HTTPS only).
    pub client_ca: Option<PathBuf>,
    /// (instance, project): another X-Tenant-ID for that instance is 404.
    pub projects: Vec<(String, String)>,
    /// Wait this long before each answer.
    pub delay: Duration,
    /// User data answered from this file at each request (see
    /// `fake-nova --user-data-file`).
    pub user_data_file: Option<PathBuf>,
}

impl FakeNovaConfig {
    /// Plain HTTP on [`NOVA_HOST`]:[`NOVA_PORT`], answering at once.
    pub fn new(secret: &str) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], NOVA_PORT)),
            secret: secret.to_owned(),
            tls: None,
            client_ca: None,
            projects: Vec::new(),
            delay: Duration::ZERO,
            user_data_file: None,
        }
    }

    pub fn user_data_file(mut self, file: &Path) -> Self {
        self.user_data_file = Some(file.to_owned());
        self
    }

    pub fn https(mut self, pki: &TestPki) -> Self {
        self.tls = Some((pki.server_cert(), pki.server_key()));
        self
    }

    pub fn require_client_cert(mut self, pki: &TestPki) -> Self {
        self.client_ca = Some(pki.ca());
        self
    }

    pub fn project(mut self, instance: &str, project: &str) -> Self {
        self.projects
            .push((instance.to_owned(), project.to_owned()));
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// A running `fake-nova` in a namespace. Dropping it kills it (nova gone,
/// every connection closed at once), as does [`FakeNova::stop`].
pub struct FakeNova {
    host: Host,
    config: FakeNovaConfig,
    child: Option<Child>,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    dir: TempDir,
}

impl FakeNova {
    /// Starts `$MDR_FAKE_NOVA` in `host` and waits until it listens.
    pub fn start(host: &Host, config: FakeNovaConfig) -> Result<Self> {
        let mut nova = Self {
            host: host.clone(),
            config,
            child: None,
            requests: Arc::default(),
            dir: TempDir::new("nova")?,
        };
        nova.spawn()?;
        Ok(nova)
    }

    /// The file holding the shared secret this nova checks.
    pub fn secret_file(&self) -> PathBuf {
        self.dir.join("secret")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("fake-nova.log")
    }

    fn spawn(&mut self) -> Result<()> {
        let bin = env::fake_nova_bin();
        if !bin.is_file() {
            bail!(
                "{} does not exist: build it with `cargo build --release -p fake-nova` or set MDR_FAKE_NOVA",
                bin.display()
            );
        }
        std::fs::write(self.secret_file(), format!("{}\n", self.config.secret))?;
        let config = &self.config;
        let mut args: Vec<String> = vec![
            bin.to_string_lossy().into_owned(),
            "--listen".into(),
            config.listen.to_string(),
            "--secret-file".into(),
            path_arg(&self.secret_file()),
            "--delay-ms".into(),
            config.delay.as_millis().to_string(),
        ];
        if let Some((cert, key)) = &config.tls {
            args.extend(["--tls-cert".into(), path_arg(cert)]);
            args.extend(["--tls-key".into(), path_arg(key)]);
        }
        if let Some(ca) = &config.client_ca {
            args.extend(["--client-ca".into(), path_arg(ca)]);
        }
        if let Some(file) = &config.user_data_file {
            args.extend(["--user-data-file".into(), path_arg(file)]);
        }
        for (instance, project) in &config.projects {
            args.extend(["--project".into(), format!("{instance}={project}")]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut child = self.host.spawn(&args, Stdio::piped(), Stdio::from(log))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        self.child = Some(child);

        let (listening_tx, listening_rx) = mpsc::channel();
        let requests = self.requests.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if let Some(addr) = value["listening"].as_str() {
                    let _ = listening_tx.send(addr.to_owned());
                } else if let Ok(request) = serde_json::from_value::<RecordedRequest>(value) {
                    requests.lock().expect("requests lock").push(request);
                }
            }
        });
        match listening_rx.recv_timeout(START_TIMEOUT) {
            Ok(_) => Ok(()),
            Err(_) => {
                self.stop();
                bail!(
                    "fake-nova did not listen on {} within {START_TIMEOUT:?}; its log:\n{}",
                    self.config.listen,
                    self.log()
                )
            }
        }
    }

    /// Kills the fake nova (connections reset, the port closed).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again, with the same configuration and port.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    /// Every request answered so far, in order (across restarts).
    ///
    /// The fake nova prints each request before it answers, but a test may
    /// hold the answer before the reader thread has taken the line from the
    /// pipe: this waits until the log has been quiet for a moment.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.settled_requests(0)
    }

    /// [`FakeNova::requests`] once there are at least `at_least` of them
    /// (or 10 s have passed) and the log has been quiet for 100 ms.
    pub fn settled_requests(&self, at_least: usize) -> Vec<RecordedRequest> {
        let count = || self.requests.lock().expect("requests lock").len();
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut seen, mut since) = (count(), Instant::now());
        while Instant::now() < deadline && (seen < at_least || since.elapsed() < QUIET_PERIOD) {
            std::thread::sleep(Duration::from_millis(10));
            let now = count();
            if now != seen {
                (seen, since) = (now, Instant::now());
            }
        }
        self.requests.lock().expect("requests lock").clone()
    }

    /// The requests for `path` (path and query, exactly as sent), once the
    /// log is quiet.
    pub fn requests_for(&self, path: &str) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|request| request.path == path)
            .collect()
    }

    /// What the fake nova wrote on stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The `serve` arguments that forward to this nova (plain HTTP; add
    /// the TLS flags for HTTPS).
    pub fn daemon_args(&self, secret_file: &Path) -> Vec<String> {
        let protocol = if self.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        [
            "--backend",
            "nova",
            "--nova-metadata-host",
            &self.config.listen.ip().to_string(),
            "--nova-metadata-port",
            &self.config.listen.port().to_string(),
            "--nova-metadata-protocol",
            protocol,
            "--metadata-proxy-shared-secret-file",
            &path_arg(secret_file),
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

impl Drop for FakeNova {
    fn drop(&mut self) {
        self.stop();
    }
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
