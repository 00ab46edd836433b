//! Real guest software inside a namespace: the Python scripts in `harness/py/`
//! replay what cloud-init and botocore send, or load the server the way a
//! noisy guest would. Each prints one JSON object as its last line of output.
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::cmd;
use crate::netns::Netns;

/// `harness/py/<name>`.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("py")
        .join(name)
}

/// A command running `python3 harness/py/<name> args...` in `ns`, killed by
/// coreutils' `timeout` after `limit` so a hung client fails the test instead
/// of hanging it. Proxy settings are removed: the clients must talk to
/// whatever the guest's routes reach, nothing else.
pub fn command(ns: &Netns, name: &str, args: &[&str], limit: Duration) -> Command {
    let path = script(name);
    let path = path.to_string_lossy();
    let seconds = format!("{:.1}", limit.as_secs_f64());
    // -B: no __pycache__ next to the scripts in the source tree.
    let mut command = ns.command(
        &[
            &["timeout", "-s", "KILL", &seconds, "python3", "-B", &path],
            args,
        ]
        .concat(),
    );
    for var in [
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ] {
        command.env_remove(var);
    }
    command.env("NO_PROXY", "*").env("no_proxy", "*");
    command
}

/// Runs a script to completion; the JSON object on its last line.
pub fn run(ns: &Netns, name: &str, args: &[&str], limit: Duration) -> Result<Value> {
    let mut command = command(ns, name, args, limit);
    command.stdin(Stdio::null());
    let out = cmd::output(&mut command)?;
    result(name, &out)
}

/// Starts a script in the background (it dies with the test); collect its
/// answer with [`wait`].
pub fn spawn(ns: &Netns, name: &str, args: &[&str], limit: Duration) -> Result<Child> {
    let mut command = command(ns, name, args, limit);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd::die_with_parent(&mut command);
    command
        .spawn()
        .with_context(|| format!("starting {}", cmd::describe(&command)))
}

/// Waits for a script started with [`spawn`]; the JSON object on its last line.
pub fn wait(name: &str, child: Child) -> Result<Value> {
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {name}"))?;
    result(name, &out)
}

fn result(name: &str, out: &std::process::Output) -> Result<Value> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "{name} failed ({}):\n{stderr}\nstdout:\n{stdout}",
            out.status
        );
    }
    let last = stdout.lines().rev().find(|line| !line.trim().is_empty());
    last.and_then(|line| serde_json::from_str(line).ok())
        .with_context(|| format!("{name} printed no JSON result:\n{stdout}\nstderr:\n{stderr}"))
}
