//! A network namespace of our own, deleted on Drop together with every
//! process still running in it.
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use anyhow::{Context, Result};

use crate::{cmd, names};

pub struct Netns {
    name: String,
    /// Ours to delete on Drop (false: someone else's, e.g. the daemon's
    /// server namespace, only entered).
    owned: bool,
}

impl Netns {
    /// Creates `<prefix>-<pid>-<n>-<rand>-<role>` with its loopback up.
    pub fn new(role: &str) -> Result<Self> {
        let name = names::global(role);
        cmd::run(&["ip", "netns", "add", &name])?;
        let ns = Self { name, owned: true };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A namespace someone else made and removes (the daemon's server
    /// namespace): entered, never deleted by us.
    pub fn existing(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            owned: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount `ip netns add` made; what `nsenter --net=` takes.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n NAME args...`, checked.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut cmd = cmd::command(&["ip", "-n", &self.name]);
        cmd.args(args);
        cmd::checked(&mut cmd)
    }

    /// A veth pair: `name` here, its peer `eth0` in `peer`. Created straight
    /// into both namespaces, so that nothing ever appears in the machine's
    /// own namespace, not even for a moment.
    pub fn add_veth_to(&self, name: &str, peer: &Netns) -> Result<()> {
        self.ip(&[
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            peer.name(),
        ])
        .map(drop)
    }

    /// A command that runs `args` inside this namespace.
    ///
    /// It uses `nsenter --net`, not `ip netns exec`: the latter also
    /// remounts /sys in a new mount namespace, which hides /sys/fs/bpf from
    /// the daemon. nsenter only switches the network namespace and then
    /// execs, so the pid of the child is the pid of the program.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .args(args);
        cmd
    }

    /// Runs `args` in the namespace; the output whatever the exit status.
    pub fn exec(&self, args: &[&str]) -> Result<Output> {
        cmd::output(self.command(args).stdin(Stdio::null()))
    }

    /// Runs `args` in the namespace; its stdout, or an error on failure.
    pub fn exec_ok(&self, args: &[&str]) -> Result<String> {
        cmd::checked(self.command(args).stdin(Stdio::null()))
    }

    /// Starts `args` in the namespace in the background. The child dies with
    /// the spawning thread, and with this namespace on Drop; the caller
    /// still waits for it to reap it.
    pub fn spawn(&self, args: &[&str], stdout: Stdio, stderr: Stdio) -> Result<Child> {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        cmd::die_with_parent(&mut cmd);
        cmd.spawn()
            .with_context(|| format!("cannot start {}", cmd::describe(&cmd)))
    }
}

/// SIGKILLs every process in the named namespace: a namespace only goes away
/// when nothing uses it any more, and a stray curl or listener would keep it
/// (and its interfaces) alive after `ip netns del`.
pub fn kill_all_in(name: &str) {
    if let Ok(pids) = cmd::run(&["ip", "netns", "pids", name]) {
        for pid in pids.split_whitespace().filter_map(|pid| pid.parse().ok()) {
            cmd::signal(pid, libc::SIGKILL);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        kill_all_in(&self.name);
        if let Err(err) = cmd::run(&["ip", "netns", "del", &self.name]) {
            eprintln!("cleanup: {err:#}");
        }
    }
}
