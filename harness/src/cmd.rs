//! Running commands: one place that turns a failed command into an error that
//! shows what ran and what it said.
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

/// A command from an argument list (`args[0]` is the program).
pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    cmd
}

/// Runs a command to completion and returns its output, whatever its status.
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.output()
        .with_context(|| format!("cannot run {}", describe(cmd)))
}

/// Runs a command and returns its stdout; a non-zero exit is an error that
/// carries the command line and its stderr.
pub fn checked(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// [`checked`] for an argument list.
pub fn run(args: &[&str]) -> Result<String> {
    checked(&mut command(args))
}

/// The command line, with the environment and directory it sets, for
/// messages and logs.
pub fn describe(cmd: &Command) -> String {
    let mut line = String::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            line += &format!("{}={} ", key.to_string_lossy(), value.to_string_lossy());
        }
    }
    if let Some(dir) = cmd.get_current_dir() {
        line += &format!("(in {}) ", dir.display());
    }
    let args: Vec<_> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|arg| arg.to_string_lossy())
        .collect();
    line + &args.join(" ")
}

/// Makes a spawned process die with the thread that spawned it, so a test
/// process that is killed outright (no unwinding, no Drop) leaves no daemon,
/// listener or VM running behind it.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Sends `signal` to a process we started.
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill has no memory effects; the pid is one of our children.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}
