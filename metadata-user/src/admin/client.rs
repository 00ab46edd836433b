//! CLI side of the admin API: one request per command over the daemon's
//! unix socket, answers printed as text tables or JSON.
use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use super::wire::{ErrorBody, InstanceSummary, PortStatus, TapState, encode_segment};
use crate::{
    cli::{Command, InstanceCommand, PortCommand},
    state::{
        Port, PortAddRequest, Source,
        instance::{InstanceDoc, MAX_DOCUMENT_BYTES},
    },
};

/// How long the CLI waits for the daemon before giving up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

pub fn run(admin_socket: &Path, command: Command) -> anyhow::Result<ExitCode> {
    let output = execute(admin_socket, command)?;
    // Not print!: it panics when stdout is a closed pipe (`... | head -1`).
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(output.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(err).context("writing to stdout")
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Runs one command and returns what it prints. An error answer from the
/// daemon becomes `Err(<its one-line message>)`. Must not be called from
/// inside a tokio runtime (it runs its own).
fn execute(admin_socket: &Path, command: Command) -> anyhow::Result<String> {
    let admin = Admin::new(admin_socket)?;
    match command {
        Command::Serve(_) | Command::Check(_) | Command::Identity(_) => {
            bail!("serve, check and identity are not admin commands")
        }
        Command::Instance(InstanceCommand::Put { file }) => {
            let doc: InstanceDoc =
                admin.call(Method::PUT, "/v1/instances", Some(read_input(&file)?))?;
            Ok(format!("stored instance {} ({})\n", doc.uuid, doc.name))
        }
        Command::Instance(InstanceCommand::Get { uuid }) => {
            let doc: serde_json::Value = admin.call(
                Method::GET,
                &format!("/v1/instances/{}", encode_segment(&uuid)),
                None,
            )?;
            Ok(pretty(&doc))
        }
        Command::Instance(InstanceCommand::List { json }) => {
            let rows: Vec<InstanceSummary> = admin.call(Method::GET, "/v1/instances", None)?;
            Ok(if json {
                pretty(&rows)
            } else {
                instance_table(&rows)
            })
        }
        Command::Instance(InstanceCommand::Del { uuid }) => {
            let _: serde_json::Value = admin.call(
                Method::DELETE,
                &format!("/v1/instances/{}", encode_segment(&uuid)),
                None,
            )?;
            Ok(format!("deleted instance {uuid}\n"))
        }
        Command::Port(PortCommand::Add(args)) => {
            let wait = args.wait;
            let body = serde_json::to_vec(&PortAddRequest::from(args))?;
            let Some(seconds) = wait else {
                let port: Port = admin.call(Method::POST, "/v1/ports", Some(body))?;
                return Ok(added(&port));
            };
            if !(seconds.is_finite() && seconds >= 0.0) {
                bail!("--wait: {seconds} is not a number of seconds");
            }
            let status: PortStatus = admin.call(
                Method::POST,
                &format!("/v1/ports?wait={seconds}"),
                Some(body),
            )?;
            let line = format!(
                "{}: {}\n",
                added(&status.port).trim_end(),
                tap_state(&status.datapath)
            );
            match status.datapath {
                TapState::Attached { .. } | TapState::NoTap => Ok(line),
                TapState::Pending => bail!(
                    "{}not attached within {seconds} s",
                    line.trim_end_matches("pending\n")
                ),
                TapState::Failing { .. } => bail!("{}", line.trim_end()),
            }
        }
        Command::Port(PortCommand::Show { ifname, json }) => {
            let status: PortStatus = admin.call(
                Method::GET,
                &format!("/v1/ports/{}", encode_segment(&ifname)),
                None,
            )?;
            Ok(if json {
                pretty(&status)
            } else {
                port_details(&status)
            })
        }
        Command::Port(PortCommand::Del { ifname }) => {
            let port: Port = admin.call(
                Method::DELETE,
                &format!("/v1/ports/{}", encode_segment(&ifname)),
                None,
            )?;
            Ok(format!(
                "deleted port {} (slot {})\n",
                port.spec.ifname, port.slot
            ))
        }
        Command::Port(PortCommand::List { json }) => {
            let ports: Vec<Port> = admin.call(Method::GET, "/v1/ports", None)?;
            Ok(if json {
                pretty(&ports)
            } else {
                port_table(&ports)
            })
        }
        Command::Status { json, taps } => {
            let path = if taps {
                "/v1/status?taps=true"
            } else {
                "/v1/status"
            };
            let status: serde_json::Value = admin.call(Method::GET, path, None)?;
            Ok(if json {
                pretty(&status)
            } else {
                status_summary(&status)
            })
        }
    }
}

/// The document for `instance put`: a file, or stdin for `-`. An oversized
/// one is refused here: the daemon would answer 413 without reading it, and
/// the CLI, still writing, would only see a closed connection.
fn read_input(file: &Path) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let limit = MAX_DOCUMENT_BYTES as u64 + 1;
    if file == Path::new("-") {
        std::io::stdin()
            .take(limit)
            .read_to_end(&mut bytes)
            .context("cannot read the document from stdin")?;
    } else {
        std::fs::File::open(file)
            .and_then(|f| f.take(limit).read_to_end(&mut bytes))
            .with_context(|| format!("cannot read {}", file.display()))?;
    }
    if bytes.len() > MAX_DOCUMENT_BYTES {
        bail!(
            "document: {} is larger than {MAX_DOCUMENT_BYTES} bytes",
            file.display()
        );
    }
    Ok(bytes)
}

/// A connection-per-request client of the admin socket.
struct Admin {
    socket: PathBuf,
    runtime: tokio::runtime::Runtime,
}

impl Admin {
    fn new(socket: &Path) -> anyhow::Result<Admin> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the client runtime")?;
        Ok(Admin {
            socket: socket.to_owned(),
            runtime,
        })
    }

    /// Sends one request and decodes the answer; an error answer becomes its
    /// message.
    fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<T> {
        let (status, bytes) = self.runtime.block_on(async {
            tokio::time::timeout(ANSWER_TIMEOUT, self.send(method, path, body))
                .await
                .map_err(|_| {
                    anyhow!(
                        "the daemon at {} did not answer within {} s",
                        self.socket.display(),
                        ANSWER_TIMEOUT.as_secs()
                    )
                })?
        })?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|body| body.error)
                .unwrap_or_else(|_| format!("the daemon answered {status}"));
            bail!("{message}");
        }
        serde_json::from_slice(&bytes).context("the daemon's answer does not parse")
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|err| {
                anyhow!(
                    "cannot reach the daemon at {}: {err} (is `metadata-redirector serve` running?)",
                    self.socket.display()
                )
            })?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "localhost");
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let answer = sender
            .send_request(request)
            .await
            .context("the daemon closed the connection")?;
        let status = answer.status();
        let bytes = answer.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }
}

fn pretty(value: &impl serde::Serialize) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

fn instance_table(rows: &[InstanceSummary]) -> String {
    table(
        &["UUID", "NAME", "HOSTNAME", "PROJECT", "SOURCE", "PORTS"],
        rows.iter()
            .map(|row| {
                vec![
                    row.uuid.to_string(),
                    row.name.clone(),
                    or_dash(row.hostname.as_deref()),
                    or_dash(row.project_id.as_deref()),
                    source_cell(&row.source),
                    or_dash(Some(&row.ports.join(","))),
                ]
            })
            .collect(),
    )
}

fn port_table(ports: &[Port]) -> String {
    table(
        &["IFNAME", "SLOT", "INSTANCE", "MAC", "SOURCE", "IPS"],
        ports
            .iter()
            .map(|port| {
                let ips: Vec<String> = port.spec.ips.iter().map(ToString::to_string).collect();
                vec![
                    port.spec.ifname.clone(),
                    port.slot.to_string(),
                    port.spec.instance.to_string(),
                    or_dash(port.spec.mac.as_deref()),
                    source_cell(&port.source),
                    or_dash(Some(&ips.join(","))),
                ]
            })
            .collect(),
    )
}

fn added(port: &Port) -> String {
    format!(
        "added port {} for instance {} (slot {})\n",
        port.spec.ifname, port.spec.instance, port.slot
    )
}

/// The datapath's state of a tap, as the CLI prints it.
fn tap_state(state: &TapState) -> String {
    match state {
        TapState::Attached { ifindex, .. } => format!("attached (ifindex {ifindex})"),
        TapState::NoTap => "no such interface yet: attached when it appears".into(),
        TapState::Pending => "pending".into(),
        TapState::Failing { error } => format!("failing: {error}"),
    }
}

/// `port show`: one `key: value` line per field.
fn port_details(status: &PortStatus) -> String {
    let port = &status.port;
    let ips: Vec<String> = port.spec.ips.iter().map(ToString::to_string).collect();
    let mut out = String::new();
    for (key, value) in [
        ("ifname", port.spec.ifname.clone()),
        ("slot", port.slot.to_string()),
        ("instance", port.spec.instance.to_string()),
        (
            "port_id",
            or_dash(port.spec.port_id.map(|id| id.to_string()).as_deref()),
        ),
        ("mac", or_dash(port.spec.mac.as_deref())),
        ("ips", or_dash(Some(&ips.join(",")))),
        (
            "network_id",
            or_dash(port.spec.network_id.map(|id| id.to_string()).as_deref()),
        ),
        ("project_id", or_dash(port.spec.project_id.as_deref())),
        ("datapath", tap_state(&status.datapath)),
    ] {
        let _ = writeln!(out, "{key}: {value}");
    }
    out
}

/// `manual`, or `libvirt:DOMAIN`.
fn source_cell(source: &Source) -> String {
    match source {
        Source::Manual => "manual".into(),
        Source::Libvirt { domain, .. } => format!("libvirt:{domain}"),
    }
}

fn or_dash(value: Option<&str>) -> String {
    match value {
        Some(text) if !text.is_empty() => text.to_owned(),
        _ => "-".to_owned(),
    }
}

/// Left-aligned columns two spaces apart; the last column is not padded.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn status_summary(status: &serde_json::Value) -> String {
    let field = |name: &str| scalar(&status[name]);
    let mut out = format!(
        "daemon: running (pid {}, version {})\nuptime: {}\ninstances: {}\nports: {}\n",
        field("pid"),
        field("version"),
        status["uptime_seconds"]
            .as_u64()
            .map(human_duration)
            .unwrap_or_else(|| "-".into()),
        field("instances"),
        field("ports"),
    );
    if status["discovery"].is_object() {
        discovery_summary(&status["discovery"], &mut out);
    }
    out.push_str("datapath:");
    let mut lines = Vec::new();
    flatten("", &status["datapath"], &mut lines);
    if lines.is_empty() {
        out.push_str(" -\n");
    } else {
        out.push('\n');
        for (key, value) in lines {
            let _ = writeln!(out, "  {key}: {value}");
        }
    }
    out
}

/// `status`'s discovery part: the source and its connection, then one line
/// per domain seen, with what is not served and why.
fn discovery_summary(discovery: &serde_json::Value, out: &mut String) {
    let since = discovery["connection_since"].as_u64().and_then(|since| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        Some(human_duration(now.saturating_sub(since)))
    });
    let _ = writeln!(
        out,
        "discovery: {} {} ({}{})",
        scalar(&discovery["source"]),
        scalar(&discovery["uri"]),
        scalar(&discovery["connection"]),
        since.map(|s| format!(" for {s}")).unwrap_or_default(),
    );
    if let Some(error) = discovery["last_error"].as_str() {
        let _ = writeln!(out, "  last error: {error}");
    }
    let _ = writeln!(
        out,
        "  domains seen: {}, ports owned: {}",
        scalar(&discovery["domains_seen"]),
        scalar(&discovery["ports_owned"]),
    );
    for domain in discovery["domains"].as_array().into_iter().flatten() {
        let ports = scalar(&domain["ports"]);
        let _ = writeln!(
            out,
            "  {} ({}): {}",
            scalar(&domain["name"]),
            scalar(&domain["uuid"]),
            if ports.is_empty() { "no port" } else { &ports },
        );
        for problem in domain["problems"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "    problem: {}", scalar(problem));
        }
    }
}

/// Nested objects become dotted `key: value` lines.
fn flatten(prefix: &str, value: &serde_json::Value, lines: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&key, value, lines);
            }
        }
        serde_json::Value::Null if prefix.is_empty() => {}
        other if prefix.is_empty() => lines.push(("value".into(), scalar(other))),
        other => lines.push((prefix.to_owned(), scalar(other))),
    }
}

/// A JSON value on one line: strings bare, lists comma-joined, null as '-'.
fn scalar(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(text) => text.clone(),
        serde_json::Value::Array(items)
            if items.iter().all(|v| !v.is_object() && !v.is_array()) =>
        {
            items.iter().map(scalar).collect::<Vec<_>>().join(", ")
        }
        other => other.to_string(),
    }
}

fn human_duration(seconds: u64) -> String {
    let (days, rest) = (seconds / 86400, seconds % 86400);
    let (hours, rest) = (rest / 3600, rest % 3600);
    let (minutes, seconds) = (rest / 60, rest % 60);
    if days > 0 {
        format!("{days}d {hours}h {minutes:02}m {seconds:02}s")
    } else if hours > 0 {
        format!("{hours}h {minutes:02}m {seconds:02}s")
    } else if minutes > 0 {
        format!("{minutes}m {seconds:02}s")
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt as _, sync::Arc};

    use serde_json::json;

    use super::*;
    use crate::{
        admin::{
            server::{self, DatapathView},
            wire::{MAX_BODY_BYTES, TapState},
        },
        cli::PortAddArgs,
        state::Registry,
    };

    const A: &str = "7c1b6e0e-3e4f-4e59-9d5e-0a5a8b0c1d2e";

    /// A daemon's admin side on a socket in a temp dir, served by its own
    /// runtime's worker thread while the test thread plays the CLI.
    struct Daemon {
        dir: tempfile::TempDir,
        socket: PathBuf,
        registry: Arc<Registry>,
        _runtime: tokio::runtime::Runtime,
    }

    fn start_daemon() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/admin.sock");
        let registry = Registry::open(&dir.path().join("state")).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(async { server::bind(&socket) }).unwrap();
        runtime.spawn(server::serve(
            listener,
            Arc::clone(&registry),
            Arc::new(FakeDatapath),
            vec![],
        ));
        Daemon {
            dir,
            socket,
            registry,
            _runtime: runtime,
        }
    }

    /// A datapath with two attached taps; the list only when asked for.
    struct FakeDatapath;

    impl DatapathView for FakeDatapath {
        fn status(&self, taps: bool) -> serde_json::Value {
            let mut status = json!({"taps": {"attached": 2, "failing": 0}, "bpffs": "/sys/fs/bpf/x", "counters": {"caught": 5, "arp": [1, 2]}});
            if taps {
                status["attached_taps"] =
                    json!({"tap0": {"ifindex": 7, "slot": 1}, "tap1": {"ifindex": 8, "slot": 2}});
            }
            status
        }

        fn tap_state(&self, port: &Port) -> TapState {
            TapState::Attached {
                ifindex: 7,
                slot: port.slot,
            }
        }

        fn next_change(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
            Box::pin(std::future::pending())
        }
    }

    impl Daemon {
        fn run(&self, command: Command) -> anyhow::Result<String> {
            execute(&self.socket, command)
        }

        fn write_file(&self, name: &str, contents: &[u8]) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }

        /// One raw request, for what the CLI never sends.
        fn raw(
            &self,
            method: Method,
            path: &str,
            body: Option<Vec<u8>>,
        ) -> (StatusCode, serde_json::Value) {
            let admin = Admin::new(&self.socket).unwrap();
            let (status, bytes) = admin
                .runtime
                .block_on(admin.send(method, path, body))
                .unwrap();
            (status, serde_json::from_slice(&bytes).unwrap())
        }
    }

    impl Daemon {
        /// Writes `request` as is (a daemon that answers early may stop
        /// reading it) and returns the whole answer.
        fn raw_exchange(&self, request: &[u8]) -> String {
            use std::io::{Read as _, Write as _};
            let mut stream = std::os::unix::net::UnixStream::connect(&self.socket).unwrap();
            // No half-close: hyper drops a connection whose read side hits
            // EOF before it has answered. The requests ask for Connection:
            // close instead, so the answer ends at EOF.
            let _ = stream.write_all(request);
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            answer
        }
    }

    fn put(file: PathBuf) -> Command {
        Command::Instance(InstanceCommand::Put { file })
    }

    fn port_add(ifname: &str, instance: &str) -> PortAddArgs {
        PortAddArgs {
            ifname: ifname.into(),
            instance: instance.into(),
            port_id: None,
            mac: None,
            ips: vec![],
            network_id: None,
            project_id: None,
            wait: None,
        }
    }

    #[test]
    fn cli_round_trip() {
        let daemon = start_daemon();
        let doc = json!({"uuid": A, "name": "web-1", "hostname": "web-1", "project_id": "p1"});
        let file = daemon.write_file("a.json", doc.to_string().as_bytes());
        assert_eq!(
            daemon.run(put(file)).unwrap(),
            format!("stored instance {A} (web-1)\n")
        );

        let shown: serde_json::Value = serde_json::from_str(
            &daemon
                .run(Command::Instance(InstanceCommand::Get { uuid: A.into() }))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(shown, doc);

        let added = daemon
            .run(Command::Port(PortCommand::Add(PortAddArgs {
                mac: Some("FA:16:3E:00:00:01".into()),
                ips: vec!["10.0.0.5".into(), "10.0.0.6".into()],
                ..port_add("tap%1", A)
            })))
            .unwrap();
        assert_eq!(
            added,
            format!("added port tap%1 for instance {A} (slot 1)\n")
        );
        daemon
            .run(Command::Port(PortCommand::Add(port_add(
                "tap-long-name",
                A,
            ))))
            .unwrap();

        let table = daemon
            .run(Command::Port(PortCommand::List { json: false }))
            .unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "IFNAME         SLOT  INSTANCE                              MAC                SOURCE  IPS"
        );
        assert_eq!(
            lines[1],
            format!("tap%1          1     {A}  fa:16:3e:00:00:01  manual  10.0.0.5,10.0.0.6")
        );
        assert_eq!(
            lines[2],
            format!("tap-long-name  2     {A}  -                  manual  -")
        );
        let ports: Vec<Port> = serde_json::from_str(
            &daemon
                .run(Command::Port(PortCommand::List { json: true }))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0], *daemon.registry.snapshot().ports["tap%1"]);

        let table = daemon
            .run(Command::Instance(InstanceCommand::List { json: false }))
            .unwrap();
        assert_eq!(
            table,
            format!(
                "UUID                                  NAME   HOSTNAME  PROJECT  SOURCE  PORTS\n{A}  web-1  web-1     p1       manual  tap%1,tap-long-name\n"
            )
        );
        let rows: Vec<InstanceSummary> = serde_json::from_str(
            &daemon
                .run(Command::Instance(InstanceCommand::List { json: true }))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(rows[0].ports, vec!["tap%1", "tap-long-name"]);

        let status = daemon
            .run(Command::Status {
                json: false,
                taps: false,
            })
            .unwrap();
        assert!(
            status.starts_with(&format!(
                "daemon: running (pid {}, version ",
                std::process::id()
            )),
            "{status}"
        );
        assert!(status.contains("\ninstances: 1\nports: 2\n"), "{status}");
        assert!(
            status.ends_with(
                "\ndatapath:\n  bpffs: /sys/fs/bpf/x\n  counters.arp: 1, 2\n  counters.caught: 5\n  taps.attached: 2\n  taps.failing: 0\n"
            ),
            "{status}"
        );
        // The per-tap list only on request: a dense host has thousands.
        let with_taps = daemon
            .run(Command::Status {
                json: false,
                taps: true,
            })
            .unwrap();
        assert!(
            with_taps.contains("\n  attached_taps.tap0.slot: 1\n"),
            "{with_taps}"
        );
        assert!(!status.contains("tap0"), "{status}");
        let status: serde_json::Value = serde_json::from_str(
            &daemon
                .run(Command::Status {
                    json: true,
                    taps: false,
                })
                .unwrap(),
        )
        .unwrap();
        assert_eq!(status["ports"], 2);
        assert_eq!(status["datapath"]["taps"]["attached"], 2);
        assert!(status["datapath"].get("attached_taps").is_none());
        let (_, status) = daemon.raw(Method::GET, "/v1/status?taps=true", None);
        assert_eq!(status["datapath"]["attached_taps"]["tap1"]["ifindex"], 8);
        let (code, error) = daemon.raw(Method::GET, "/v1/status?taps=maybe", None);
        assert_eq!(code, StatusCode::BAD_REQUEST, "{error}");

        // The percent sign survives the trip through the URL path.
        assert_eq!(
            daemon
                .run(Command::Port(PortCommand::Del {
                    ifname: "tap%1".into()
                }))
                .unwrap(),
            "deleted port tap%1 (slot 1)\n"
        );
        assert_eq!(
            daemon
                .run(Command::Instance(InstanceCommand::Del { uuid: A.into() }))
                .unwrap(),
            format!("deleted instance {A}\n")
        );
        assert!(daemon.registry.snapshot().instances.is_empty());
        assert_eq!(daemon.registry.snapshot().ports.len(), 1);
    }

    #[test]
    fn discovered_ports_show_their_domain() {
        let daemon = start_daemon();
        let problems = daemon
            .registry
            .sync_domain(crate::state::DomainSync {
                source: Source::Libvirt {
                    domain: "vm-1".into(),
                    domain_uuid: A.parse().unwrap(),
                },
                document: Some(json!({"uuid": A, "name": "web"}).to_string().into_bytes()),
                ports: vec![PortAddRequest {
                    ifname: "vnet0".into(),
                    instance: A.into(),
                    ..Default::default()
                }],
            })
            .unwrap();
        assert_eq!(problems, []);
        let table = daemon
            .run(Command::Port(PortCommand::List { json: false }))
            .unwrap();
        assert_eq!(
            table.lines().nth(1).unwrap(),
            format!("vnet0   1     {A}  -    libvirt:vm-1  -")
        );
        let ports: serde_json::Value = serde_json::from_str(
            &daemon
                .run(Command::Port(PortCommand::List { json: true }))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(ports[0]["source"], "libvirt");
        assert_eq!(ports[0]["domain"], "vm-1");
        assert_eq!(ports[0]["domain_uuid"], A);
        let table = daemon
            .run(Command::Instance(InstanceCommand::List { json: false }))
            .unwrap();
        assert!(table.contains(" libvirt:vm-1  vnet0"), "{table}");
        // The operator's commands are refused, naming the domain.
        let err = daemon
            .run(Command::Port(PortCommand::Add(port_add("vnet0", A))))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "--ifname: vnet0 is the tap of libvirt domain vm-1 ({A})"
            )),
            "{err}"
        );
    }

    #[test]
    fn the_discovery_status_in_words() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut out = String::new();
        discovery_summary(
            &json!({
                "source": "libvirt",
                "uri": "qemu:///system",
                "connection": "connected",
                "connection_since": now - 65,
                "domains_seen": 2,
                "ports_owned": 1,
                "domains": [
                    {"uuid": A, "name": "vm-1", "ports": ["vnet0"]},
                    {"uuid": A, "name": "vm-2", "ports": [], "problems": ["no instance document"]},
                ],
            }),
            &mut out,
        );
        assert_eq!(
            out,
            format!(
                "discovery: libvirt qemu:///system (connected for 1m 05s)\n  \
                 domains seen: 2, ports owned: 1\n  vm-1 ({A}): vnet0\n  \
                 vm-2 ({A}): no port\n    problem: no instance document\n"
            )
        );
    }

    #[test]
    fn error_answers_become_one_line_errors() {
        let daemon = start_daemon();
        let message = |command| daemon.run(command).expect_err("should fail").to_string();

        let bad = daemon.write_file("bad.json", br#"{"uuid": "x", "name": "a"}"#);
        assert!(message(put(bad)).starts_with("uuid: "));
        let unknown = daemon.write_file(
            "unknown.json",
            format!(r#"{{"uuid": "{A}", "name": "a", "nmae": 1}}"#).as_bytes(),
        );
        assert!(message(put(unknown)).starts_with("nmae: unknown field `nmae`"));
        let huge = daemon.write_file("huge.json", &vec![b' '; MAX_DOCUMENT_BYTES + 1]);
        let err = message(put(huge.clone()));
        assert_eq!(
            err,
            format!("document: {} is larger than 1048576 bytes", huge.display())
        );
        let missing = daemon.dir.path().join("missing.json");
        let err = message(put(missing.clone()));
        assert!(
            err.starts_with(&format!("cannot read {}", missing.display())),
            "{err}"
        );

        assert_eq!(
            message(Command::Port(PortCommand::Add(port_add("tap0", A)))),
            format!("--instance: no instance {A}")
        );
        assert!(
            message(Command::Port(PortCommand::Add(port_add(
                "tap-name-too-long",
                A
            ))))
            .starts_with("--ifname:")
        );
        assert_eq!(
            message(Command::Instance(InstanceCommand::Get { uuid: A.into() })),
            format!("no instance {A}")
        );
        assert!(
            message(Command::Instance(InstanceCommand::Get {
                uuid: "nope".into()
            }))
            .starts_with("uuid: ")
        );
        assert_eq!(
            message(Command::Port(PortCommand::Del {
                ifname: "tap0".into()
            })),
            "--ifname: no port tap0"
        );
        assert!(daemon.registry.snapshot().instances.is_empty());
        assert!(daemon.registry.snapshot().ports.is_empty());
    }

    #[test]
    fn an_absent_daemon_is_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let err = execute(
            &socket,
            Command::Status {
                json: false,
                taps: false,
            },
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            format!(
                "cannot reach the daemon at {}: No such file or directory (os error 2) (is `metadata-redirector serve` running?)",
                socket.display()
            )
        );
    }

    #[test]
    fn http_details() {
        let daemon = start_daemon();
        let (status, body) = daemon.raw(Method::POST, "/v1/instances", None);
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["error"], "POST is not allowed on /v1/instances");
        let answer = daemon
            .raw_exchange(b"DELETE /v1/ports HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
        assert!(answer.contains("\r\nallow: GET, POST\r\n"), "{answer}");
        let (status, _) = daemon.raw(Method::GET, "/v1/nothing", None);
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = daemon.raw(Method::GET, "/v2/status", None);
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, body) = daemon.raw(
            Method::POST,
            "/v1/ports",
            Some(br#"{"ifname": "t", "instance": "x", "colour": 1}"#.to_vec()),
        );
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("unknown field `colour`")
        );
        let declared = format!(
            "PUT /v1/instances HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        assert!(
            daemon
                .raw_exchange(declared.as_bytes())
                .starts_with("HTTP/1.1 413 ")
        );
        let mut chunked = format!(
            "PUT /v1/instances HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            MAX_BODY_BYTES + 1
        )
        .into_bytes();
        chunked.extend(std::iter::repeat_n(b' ', MAX_BODY_BYTES + 1));
        chunked.extend(b"\r\n0\r\n\r\n");
        let answer = daemon.raw_exchange(&chunked);
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
        assert!(
            answer.contains(r#"{"error":"request body: larger than 2097152 bytes"}"#),
            "{answer}"
        );
        let (status, _) = daemon.raw(
            Method::PUT,
            "/v1/instances",
            Some(format!(r#"{{"uuid":"{A}","name":"a"}}"#).into_bytes()),
        );
        assert_eq!(status, StatusCode::OK);
        let (status, _) = daemon.raw(Method::GET, &format!("/v1/instances/{A}/"), None);
        assert_eq!(status, StatusCode::OK);
    }

    #[test]
    fn bind_refuses_a_live_socket_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("sub/admin.sock");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();

        let live = server::bind(&socket).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&socket), 0o600);
        assert_eq!(mode(socket.parent().unwrap()), 0o755);
        let err = format!("{:#}", server::bind(&socket).unwrap_err());
        assert!(err.contains("another process is serving it"), "{err}");

        // The listener goes away but its socket file stays behind: stale.
        drop(live);
        assert!(socket.exists());
        let _again = server::bind(&socket).unwrap();

        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, "x").unwrap();
        let err = format!("{:#}", server::bind(&file).unwrap_err());
        assert!(err.contains("is not a socket"), "{err}");
        assert!(file.exists());
    }
}
