//! The neutron-style path, built as neutron builds it: in the router
//! namespace, iptables steers 169.254.169.254:80 to port 9697, where one
//! haproxy per network adds `X-Forwarded-For` and `X-Neutron-Network-ID` and
//! forwards to the metadata agent's unix socket (here: the daemon's
//! `--neutron-agent-socket`, so both paths end in the same server).
//!
//! The haproxy configuration is neutron's (neutron/common/metadata.py
//! METADATA_HAPROXY_GLOBAL + the unlimited listener + the network-ID header
//! lines of agent/metadata/driver.py), with three deliberate differences,
//! none of which makes haproxy do less work per request:
//! - `-db` on the command line keeps it in the foreground (the config still
//!   says `daemon`), so it is our child and dies with us;
//! - user and group are root, since the agent socket is root-only (0600);
//! - `log` goes to a datagram socket of ours that is drained and discarded,
//!   instead of /dev/log (this machine has no syslog); haproxy formats and
//!   sends every `option httplog` line as it would on a compute node.
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use mdr_harness::listener::Listener;
use mdr_harness::{Netns, haproxy};

/// neutron's `metadata_port` default.
pub const PROXY_PORT: u16 = haproxy::METADATA_PROXY_PORT;

/// neutron's configuration (shared with the e2e tests), logging to our
/// datagram socket.
pub fn haproxy_config(
    network_id: &str,
    agent_socket: &Path,
    log_socket: &Path,
    pidfile: &Path,
) -> String {
    haproxy::neutron_config(
        network_id,
        agent_socket,
        &log_socket.display().to_string(),
        pidfile,
        haproxy::HeaderStyle::SetHeader,
    )
}

/// One network's metadata proxy: the haproxy serving it (the rules in its
/// router namespace are [`apply_rules`]'s).
pub struct Proxy {
    haproxy: Listener,
}

impl Proxy {
    /// Starts haproxy in `router` (whose rules [`apply_rules`] set up).
    pub fn start(
        router: &Netns,
        network_id: &str,
        agent_socket: &Path,
        logs: &LogSink,
        dir: &Path,
    ) -> Result<Self> {
        let config_path = dir.join(format!("{network_id}.conf"));
        let pidfile = dir.join(format!("{network_id}.pid"));
        std::fs::write(
            &config_path,
            haproxy_config(network_id, agent_socket, &logs.path, &pidfile),
        )
        .with_context(|| format!("writing {}", config_path.display()))?;
        let config = config_path.to_string_lossy();
        let haproxy = Listener::start_logged(
            router,
            &["haproxy", "-db", "-f", &config],
            PROXY_PORT,
            &dir.join(format!("{network_id}.stderr")),
        )?;
        Ok(Self { haproxy })
    }

    /// The haproxy process (for its memory).
    pub fn pid(&self) -> u32 {
        self.haproxy.pid()
    }
}

/// Installs neutron's metadata rules (the e2e tests' own,
/// [`haproxy::iptables_rules`]) for the router port `eth0` in `router`.
pub fn apply_rules(router: &Netns) -> Result<()> {
    haproxy::install_rules(router, "eth0")
}

/// Stands in for /dev/log: a datagram socket every haproxy logs to, read
/// and thrown away by a thread (a syslog daemon would do more with it).
pub struct LogSink {
    pub path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogSink {
    pub fn start(path: PathBuf) -> Result<Self> {
        let _ = std::fs::remove_file(&path);
        let socket =
            UnixDatagram::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut buf = [0u8; 4096];
                // Ends when told to; the read timeout bounds each wait.
                while !stop.load(Ordering::Relaxed) {
                    let _ = socket.recv(&mut buf);
                }
            }
        });
        Ok(Self {
            path,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for LogSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_neutrons_with_our_paths() {
        let text = haproxy_config(
            "net-1",
            Path::new("/a/agent.sock"),
            Path::new("/a/log"),
            Path::new("/a/pid"),
        );
        for line in [
            "mode http",
            "option http-server-close",
            "option forwardfor",
            "maxconn     1024",
            "nbthread    2",
            "bind 0.0.0.0:9697",
            "server metadata /a/agent.sock",
            "http-request del-header X-Neutron-Router-ID",
            "http-request set-header X-Neutron-Network-ID net-1",
        ] {
            assert!(text.contains(line), "missing {line:?}");
        }
    }
}
