//! A server process in a namespace: started, waited for until it listens on
//! its TCP port, and killed (and reaped) on drop.
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{Result, bail};

use crate::netns::Netns;
use crate::wait::{self, Poll};

/// How long a server may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Listener {
    child: Option<Child>,
    pid: u32,
}

impl Listener {
    /// Starts `args` in `ns`, its output going to `stdout` and `stderr`,
    /// and waits until something listens on TCP `port` there. Fails as soon
    /// as the process exits.
    pub fn start(
        ns: &Netns,
        args: &[&str],
        port: u16,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<Self> {
        Self::start_with_log(ns, args, port, stdout, stderr, None)
    }

    /// [`Listener::start`] with stdout and stderr written to `log`, which a
    /// failure to start shows.
    pub fn start_logged(ns: &Netns, args: &[&str], port: u16, log: &Path) -> Result<Self> {
        let file = std::fs::File::create(log)?;
        let (stdout, stderr) = (Stdio::from(file.try_clone()?), Stdio::from(file));
        Self::start_with_log(ns, args, port, stdout, stderr, Some(log.to_owned()))
    }

    fn start_with_log(
        ns: &Netns,
        args: &[&str],
        port: u16,
        stdout: Stdio,
        stderr: Stdio,
        log: Option<PathBuf>,
    ) -> Result<Self> {
        let what = args.first().copied().unwrap_or("the server");
        let child = ns.spawn(args, stdout, stderr)?;
        let mut listener = Self {
            pid: child.id(),
            child: Some(child),
        };
        let sport = format!("sport = :{port}");
        wait::until(&format!("{what} to listen"), LISTEN_TIMEOUT, || {
            if let Some(exit) = listener.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                let log = log.as_deref().map(|path| {
                    let text = std::fs::read_to_string(path).unwrap_or_default();
                    format!("; its log:\n{text}")
                });
                bail!("{what} exited ({exit}){}", log.unwrap_or_default());
            }
            let out = ns.exec_ok(&["ss", "-Hltn", &sport])?;
            Ok(if out.trim().is_empty() {
                Poll::Pending(format!("nothing listening on :{port}"))
            } else {
                Poll::Ready(())
            })
        })?;
        Ok(listener)
    }

    /// The server's pid (for its memory).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Kills the server and reaps it; nothing if it is stopped already.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop();
    }
}
