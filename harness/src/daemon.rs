//! The daemon under test, running `serve` inside the host namespace.
use std::fs::File;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::fixtures::Instance;
use crate::guest::Guest;
use crate::host::Host;
use crate::nova::NovaInstance;
use crate::tempdir::TempDir;
use crate::wait::{self, Poll};
use crate::{bpffs, cmd, env, names};

/// How long the daemon may take until `status` answers.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Where one daemon keeps everything. Tests get a fresh set per daemon
/// ([`Daemon::start`]); the demo chooses its own.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub bin: PathBuf,
    pub state_dir: PathBuf,
    pub admin_socket: PathBuf,
    pub bpffs: PathBuf,
    /// The network namespace the daemon puts its server in
    /// (`--server-netns`): a global name of ours, so that a run killed
    /// before it could remove it is swept by the next one.
    pub server_netns: String,
    /// The daemon's stdout and stderr.
    pub log: PathBuf,
    /// More arguments for `serve`.
    pub extra_args: Vec<String>,
    /// Environment variables for the daemon (e.g. RUST_LOG, NOTIFY_SOCKET).
    pub env: Vec<(String, String)>,
    /// A command the daemon runs under (e.g. `setpriv` with a trimmed
    /// capability set); empty for none.
    pub command_prefix: Vec<String>,
    /// Start the daemon in a process group of its own, so a Ctrl-C in the
    /// terminal reaches only the caller, which then stops it in order.
    pub own_process_group: bool,
    /// Print the log when the daemon is dropped. libtest shows what a test
    /// printed only when it fails, so tests always want this.
    pub print_log_on_drop: bool,
    /// A listener handed to every daemon started, as fd 3 with
    /// `LISTEN_FDS=1` (socket activation): it stays open across restarts.
    pub handed_over: Option<std::sync::Arc<std::net::TcpListener>>,
}

impl DaemonConfig {
    /// Everything under `dir`, pins under `/sys/fs/bpf/<unique>`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            bin: env::mdr_bin(),
            state_dir: dir.join("state"),
            admin_socket: dir.join("admin.sock"),
            bpffs: Path::new(bpffs::ROOT).join(names::global("bpffs")),
            server_netns: names::global("srv"),
            log: dir.join("daemon.log"),
            extra_args: Vec::new(),
            env: Vec::new(),
            command_prefix: Vec::new(),
            own_process_group: false,
            print_log_on_drop: true,
            handed_over: None,
        }
    }
}

pub struct Daemon {
    host: Host,
    config: DaemonConfig,
    child: Option<Child>,
    _dir: Option<TempDir>,
}

impl Daemon {
    /// Starts `$MDR_BIN serve` in `host` with its own state dir, admin socket
    /// and bpffs dir, and waits until `status` answers.
    pub fn start(host: &Host) -> Result<Self> {
        let dir = TempDir::new("daemon")?;
        let config = DaemonConfig::in_dir(dir.path());
        Self::start_with(host, config, Some(dir))
    }

    /// [`Daemon::start`] with more arguments for `serve` (e.g. the nova
    /// backend's).
    pub fn start_with_args(host: &Host, args: &[String]) -> Result<Self> {
        let dir = TempDir::new("daemon")?;
        let config = DaemonConfig {
            extra_args: args.to_vec(),
            ..DaemonConfig::in_dir(dir.path())
        };
        Self::start_with(host, config, Some(dir))
    }

    /// [`start`](Self::start), with `toml` as the daemon's `--config` file
    /// (rate limits and other `serve` settings without a flag).
    pub fn start_with_config_file(host: &Host, toml: &str) -> Result<Self> {
        let dir = TempDir::new("daemon")?;
        let file = dir.join("config.toml");
        std::fs::write(&file, toml).with_context(|| format!("writing {}", file.display()))?;
        let config = DaemonConfig {
            extra_args: vec!["--config".into(), file.to_string_lossy().into_owned()],
            ..DaemonConfig::in_dir(dir.path())
        };
        Self::start_with(host, config, Some(dir))
    }

    /// [`start_with_config_file`](Self::start_with_config_file), socket
    /// activated: the server namespace is made first, and a listener on the
    /// daemon's server address in it is held by this `Daemon` and handed to
    /// every daemon it starts (as systemd does with a socket unit).
    pub fn start_socket_activated(host: &Host, toml: &str) -> Result<Self> {
        let dir = TempDir::new("daemon")?;
        let file = dir.join("config.toml");
        std::fs::write(&file, toml).with_context(|| format!("writing {}", file.display()))?;
        let mut config = DaemonConfig {
            extra_args: vec!["--config".into(), file.to_string_lossy().into_owned()],
            ..DaemonConfig::in_dir(dir.path())
        };
        cmd::run(&["ip", "netns", "add", &config.server_netns])?;
        let listener = crate::held_listener::bind_in(
            &config.server_netns,
            crate::held_listener::SERVER_ADDR,
            crate::held_listener::SERVER_PORT,
        );
        match listener {
            Ok(listener) => config.handed_over = Some(std::sync::Arc::new(listener)),
            Err(err) => {
                remove_netns_if_present(&config.server_netns);
                return Err(err);
            }
        }
        Self::start_with(host, config, Some(dir))
    }

    /// A fresh set of places for one daemon, and the directory holding them
    /// (removed with the daemon), for tests that adjust the config before
    /// [`start_with`](Self::start_with).
    pub fn fresh_config() -> Result<(DaemonConfig, TempDir)> {
        let dir = TempDir::new("daemon")?;
        Ok((DaemonConfig::in_dir(dir.path()), dir))
    }

    /// Starts a daemon as `config` says; `dir` (if any) is removed on Drop.
    pub fn start_with(host: &Host, config: DaemonConfig, dir: Option<TempDir>) -> Result<Self> {
        bpffs::ensure_mounted()?;
        let mut daemon = Self {
            host: host.clone(),
            config,
            child: None,
            _dir: dir,
        };
        daemon.spawn()?;
        Ok(daemon)
    }

    fn spawn(&mut self) -> Result<()> {
        if !self.config.bin.is_file() {
            bail!(
                "{} does not exist: build it with `cargo xtask build` or set MDR_BIN",
                self.config.bin.display()
            );
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.config.log)
            .with_context(|| format!("opening {}", self.config.log.display()))?;
        let config = &self.config;
        let bin = config.bin.to_string_lossy();
        let state_dir = config.state_dir.to_string_lossy();
        let admin_socket = config.admin_socket.to_string_lossy();
        let bpffs = config.bpffs.to_string_lossy();
        let prefix: Vec<&str> = config.command_prefix.iter().map(String::as_str).collect();
        let mut args: Vec<&str> = [
            &prefix[..],
            &[
                &bin,
                "serve",
                "--state-dir",
                &state_dir,
                "--admin-socket",
                &admin_socket,
                "--bpffs",
                &bpffs,
            ],
        ]
        .concat();
        // An older build (the benchmark's baseline) has no server namespace:
        // it serves in the namespace it runs in, and refuses the flag.
        if serves_in_own_netns(&config.bin)? {
            args.extend(["--server-netns", &config.server_netns]);
        }
        if config.handed_over.is_some() {
            // sd_listen_fds(3) wants LISTEN_PID to be the daemon's own pid:
            // the shell's, which exec keeps (after any prefix's own exec).
            args.splice(
                0..0,
                ["sh", "-c", r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@""#],
            );
        }
        let mut command = self.host.command(&args);
        if let Some(listener) = &config.handed_over {
            hand_over_as_fd3(&mut command, listener);
        }
        command
            .args(&config.extra_args)
            .envs(config.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("RUST_BACKTRACE", "1");
        cmd::die_with_parent(&mut command);
        if config.own_process_group {
            use std::os::unix::process::CommandExt as _;
            command.process_group(0);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", cmd::describe(&command)))?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Waits until `status` exits 0, or fails early if the daemon exits.
    fn wait_ready(&mut self) -> Result<()> {
        wait::until("the daemon to answer `status`", READY_TIMEOUT, || {
            if let Some(child) = self.child.as_mut()
                && let Some(exit) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "the daemon exited ({exit}) before it answered; its log:\n{}",
                    self.log()
                );
            }
            let out = self.cli(&["status"])?;
            Ok(if out.status.success() {
                Poll::Ready(())
            } else {
                Poll::Pending(String::from_utf8_lossy(&out.stderr).trim().to_owned())
            })
        })
        .with_context(|| format!("daemon log:\n{}", self.log()))
    }

    /// The bpffs directory the daemon pins into.
    pub fn bpffs(&self) -> &Path {
        &self.config.bpffs
    }

    /// The name of the network namespace the daemon's server lives in.
    pub fn server_netns(&self) -> &str {
        &self.config.server_netns
    }

    /// `ip -n <server namespace> args...`, checked: a look at the server's
    /// side of the datapath.
    pub fn server_ns_ip(&self, args: &[&str]) -> Result<String> {
        let mut command = cmd::command(&["ip", "-n", &self.config.server_netns]);
        command.args(args);
        cmd::checked(&mut command)
    }

    /// Runs `args` inside the server's namespace; its output whatever the
    /// exit status.
    pub fn server_ns_exec(&self, args: &[&str]) -> Result<Output> {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.config.server_netns))
            .arg("--")
            .args(args)
            .stdin(Stdio::null());
        cmd::output(&mut command)
    }

    /// The daemon's state dir (the SQLite store).
    pub fn state_dir(&self) -> &Path {
        &self.config.state_dir
    }

    /// The daemon's admin socket (for clients other than the CLI).
    pub fn admin_socket(&self) -> &Path {
        &self.config.admin_socket
    }

    /// A pinned map: `<bpffs>/maps/<NAME>`.
    pub fn pinned_map(&self, name: &str) -> PathBuf {
        self.config.bpffs.join("maps").join(name)
    }

    /// The pid of the running daemon.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the daemon is still running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        let exited = self
            .child
            .as_mut()
            .is_none_or(|child| !matches!(child.try_wait(), Ok(None)));
        if exited {
            self.child = None;
        }
        !exited
    }

    /// A CLI invocation against this daemon's admin socket. The socket is a
    /// path, so the CLI works from any network namespace.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.config.bin);
        command
            .arg("--admin-socket")
            .arg(&self.config.admin_socket)
            .args(args)
            .stdin(Stdio::null());
        command
    }

    /// Runs the CLI; its output whatever the exit status.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        cmd::output(&mut self.cli_command(args))
    }

    /// Runs the CLI; its stdout, or an error with its stderr.
    pub fn cli_ok(&self, args: &[&str]) -> Result<String> {
        cmd::checked(&mut self.cli_command(args))
    }

    /// `instance put -` with `doc` on stdin; the output whatever the status.
    pub fn put_instance_doc(&self, doc: &str) -> Result<Output> {
        let mut command = self.cli_command(&["instance", "put", "-"]);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().context("starting `instance put -`")?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin.write_all(doc.as_bytes())?;
        drop(stdin);
        Ok(child.wait_with_output()?)
    }

    /// Stores `instance`, failing if the daemon refuses it.
    pub fn put_instance(&self, instance: &Instance) -> Result<()> {
        let out = self.put_instance_doc(&instance.doc.to_string())?;
        if !out.status.success() {
            bail!(
                "instance put {} failed: {}",
                instance.uuid,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// `port add --ifname TAP --instance UUID --mac MAC --ip ADDR`.
    pub fn add_port(
        &self,
        tap: &str,
        instance: &Instance,
        mac: &str,
        addr: Ipv4Addr,
    ) -> Result<()> {
        let addr = addr.to_string();
        let args = ["port", "add", "--ifname", tap, "--instance", &instance.uuid];
        self.cli_ok(&[&args[..], &["--mac", mac, "--ip", &addr]].concat())?;
        Ok(())
    }

    /// In nova mode: `port add --ifname TAP --instance UUID --project-id
    /// PROJECT --mac MAC --ip ADDR [--network-id NET]` (no instance document).
    pub fn add_nova_port(
        &self,
        tap: &str,
        instance: &NovaInstance,
        mac: &str,
        addr: Ipv4Addr,
        network_id: Option<&str>,
    ) -> Result<()> {
        let addr = addr.to_string();
        let mut args = vec![
            "port",
            "add",
            "--ifname",
            tap,
            "--instance",
            &instance.uuid,
            "--project-id",
            &instance.project,
            "--mac",
            mac,
            "--ip",
            &addr,
        ];
        if let Some(network_id) = network_id {
            args.extend(["--network-id", network_id]);
        }
        self.cli_ok(&args)?;
        Ok(())
    }

    /// `status --json --taps` (with every attached tap), parsed.
    pub fn status(&self) -> Result<serde_json::Value> {
        let out = self.cli_ok(&["status", "--json", "--taps"])?;
        serde_json::from_str(&out)
            .with_context(|| format!("`status --json --taps` printed {out:?}"))
    }

    /// Stores `instance` and binds `guest`'s tap to it.
    pub fn register(&self, guest: &Guest, instance: &Instance) -> Result<()> {
        self.put_instance(instance)?;
        self.add_port(guest.tap(), instance, guest.mac(), guest.addr())
    }

    /// SIGKILLs the daemon (no cleanup of its own runs) and reaps it.
    pub fn kill9(&mut self) -> Result<()> {
        let mut child = self.child.take().context("the daemon is not running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Starts the daemon again on the same state dir, socket and bpffs dir.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("the daemon is still running; kill9 or terminate it first");
        }
        self.spawn()
    }

    /// SIGKILLs the daemon, checks that `guest`'s request is still caught
    /// while it is down (refused at once, nobody listens, rather than
    /// answered by the decoy router: what the daemon attached outlives it),
    /// then starts it again and waits until `guest` is served as `uuid`.
    pub fn kill9_keeps_guest_caught_and_restart(
        &mut self,
        guest: &Guest,
        uuid: &str,
    ) -> Result<()> {
        self.kill9()?;
        let reply = guest.http_get_with("/", &[], Duration::from_secs(2))?;
        if reply.body.contains(crate::tenant::DECOY_MARK) {
            bail!("with the daemon down the guest reached its router: {reply}");
        }
        self.restart()?;
        guest.wait_served(uuid)?;
        Ok(())
    }

    /// Stops the daemon as an operator would (SIGTERM; SIGKILL after 5 s)
    /// and reaps it. The datapath stays pinned for the next
    /// [`restart`](Self::restart), as in production.
    pub fn terminate(&mut self) {
        self.stop();
    }

    /// Sends SIGTERM and waits up to `limit` for the daemon to exit on its
    /// own, its shutdown run (what `--detach-on-exit` removes, say); an
    /// error if it is still running then. Nothing is killed.
    pub fn sigterm_and_wait(&mut self, limit: Duration) -> Result<()> {
        let pid = self.pid().context("the daemon is not running")?;
        cmd::signal(pid, libc::SIGTERM);
        wait::until("the daemon to exit", limit, || {
            Ok(if self.is_running() {
                Poll::Pending("running".into())
            } else {
                Poll::Ready(())
            })
        })
    }

    /// Runs another build of the daemon from the next
    /// [`restart`](Self::restart) on (the same state, socket and pins).
    pub fn set_bin(&mut self, bin: &Path) {
        self.config.bin = bin.to_owned();
    }

    /// Replaces the extra `serve` arguments for the next [`restart`](Self::restart)
    /// (a daemon restarted with other options on the same state and pins).
    pub fn set_extra_args(&mut self, args: &[String]) {
        self.config.extra_args = args.to_vec();
    }

    /// What the daemon has written to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.config.log).unwrap_or_default()
    }

    /// SIGTERM, then SIGKILL if it has not exited within 5 s.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        cmd::signal(child.id(), libc::SIGTERM);
        let exited = wait::until("the daemon to exit", Duration::from_secs(5), || {
            Ok(match child.try_wait()? {
                Some(_) => Poll::Ready(()),
                None => Poll::Pending("still running".into()),
            })
        });
        if exited.is_err() {
            eprintln!("cleanup: the daemon ignored SIGTERM for 5 s; killing it");
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether the daemon at `bin` puts its server in a network namespace of
/// its own (`serve --server-netns`, every build since that flag came); an
/// older build listens in the namespace it runs in.
pub fn serves_in_own_netns(bin: &Path) -> Result<bool> {
    let out = cmd::output(Command::new(bin).args(["serve", "--help"]))?;
    if !out.status.success() {
        bail!(
            "`{} serve --help` failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).contains("--server-netns"))
}

/// Makes `listener` the child's fd 3 (without close-on-exec), where
/// socket activation puts the first socket.
fn hand_over_as_fd3(command: &mut Command, listener: &std::net::TcpListener) {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::process::CommandExt as _;
    let fd = listener.as_raw_fd();
    // SAFETY: dup2 and fcntl are async-signal-safe; fd is open in the
    // parent (held by the Daemon) and so in the forked child.
    unsafe {
        command.pre_exec(move || {
            if fd == 3 {
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
}

/// `ip netns del NAME` unless it is gone already (a daemon run with
/// `--detach-on-exit` removes its own).
fn remove_netns_if_present(name: &str) {
    if !Path::new("/run/netns").join(name).exists() {
        return;
    }
    crate::netns::kill_all_in(name);
    if let Err(err) = cmd::run(&["ip", "netns", "del", name]) {
        eprintln!("cleanup: {err:#}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        // Removing the pins releases the programs, links and maps the daemon
        // left pinned (a SIGTERMed daemon may keep the datapath on purpose).
        if let Err(err) = std::fs::remove_dir_all(&self.config.bpffs)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("cleanup: removing {}: {err}", self.config.bpffs.display());
        }
        // The daemon keeps its server namespace for the next daemon; nothing
        // else runs in it, so removing it frees it (and the veth pair).
        remove_netns_if_present(&self.config.server_netns);
        if self.config.print_log_on_drop {
            eprintln!(
                "--- daemon log ({}) ---\n{}--- end of daemon log ---",
                self.config.log.display(),
                self.log()
            );
        }
    }
}
