//! CLI side of the admin API: one request per command over the daemon's
//! unix socket, answers printed as text tables or JSON.
use std::{
    fmt::Write as _,
    io::Read as _,
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

use super::wire::{ErrorBody, InstanceSummary, encode_segment};
use crate::{
    cli::{Command, InstanceCommand, PortCommand},
    instance::InstanceDoc,
    port::{Port, PortAddRequest},
};

/// How long the CLI waits for the daemon before giving up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

pub fn run(admin_socket: &Path, command: Command) -> anyhow::Result<ExitCode> {
    print!("{}", execute(admin_socket, command)?);
    Ok(ExitCode::SUCCESS)
}

/// Runs one command and returns what it prints. An error answer from the
/// daemon becomes `Err(<its one-line message>)`. Must not be called from
/// inside a tokio runtime (it runs its own).
fn execute(admin_socket: &Path, command: Command) -> anyhow::Result<String> {
    let admin = Admin::new(admin_socket)?;
    match command {
        Command::Serve(_) => bail!("serve is not an admin command"),
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
            let body = serde_json::to_vec(&PortAddRequest::from(args))?;
            let port: Port = admin.call(Method::POST, "/v1/ports", Some(body))?;
            Ok(format!(
                "added port {} for instance {} (slot {})\n",
                port.spec.ifname, port.spec.instance, port.slot
            ))
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
        Command::Status { json } => {
            let status: serde_json::Value = admin.call(Method::GET, "/v1/status", None)?;
            Ok(if json {
                pretty(&status)
            } else {
                status_summary(&status)
            })
        }
    }
}

/// The document for `instance put`: a file, or stdin for `-`.
fn read_input(file: &Path) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if file == Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read the document from stdin")?;
    } else {
        bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
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
        &["UUID", "NAME", "HOSTNAME", "PROJECT", "PORTS"],
        rows.iter()
            .map(|row| {
                vec![
                    row.uuid.to_string(),
                    row.name.clone(),
                    or_dash(row.hostname.as_deref()),
                    or_dash(row.project_id.as_deref()),
                    or_dash(Some(&row.ports.join(","))),
                ]
            })
            .collect(),
    )
}

fn port_table(ports: &[Port]) -> String {
    table(
        &["IFNAME", "SLOT", "INSTANCE", "MAC", "IPS"],
        ports
            .iter()
            .map(|port| {
                let ips: Vec<String> = port.spec.ips.iter().map(ToString::to_string).collect();
                vec![
                    port.spec.ifname.clone(),
                    port.slot.to_string(),
                    port.spec.instance.to_string(),
                    or_dash(port.spec.mac.as_deref()),
                    or_dash(Some(&ips.join(","))),
                ]
            })
            .collect(),
    )
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
