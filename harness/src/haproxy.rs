//! Neutron's metadata path, as the L3 agent builds it in a router namespace:
//! iptables REDIRECTs guests' requests for 169.254.169.254:80 to port 9697,
//! where a real haproxy (Debian's) adds the network's ID and the guest's
//! address and passes the request to neutron-metadata-agent's unix socket.
//! Here that socket is the daemon's `--neutron-agent-socket`.
//!
//! The configuration is neutron's template (neutron/common/metadata.py,
//! neutron/agent/metadata/driver.py) with these changes only: haproxy logs
//! to stderr instead of /dev/log, runs as root (the daemon's socket is 0600)
//! and stays in the foreground (`-db`), so the test owns the process.
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::Result;

use crate::METADATA_ADDR;
use crate::netns::Netns;
use crate::tempdir::TempDir;
use crate::wait::{self, Poll};

/// neutron's `metadata_port`: where the router's REDIRECT sends guests.
pub const METADATA_PROXY_PORT: u16 = 9697;
/// The mark neutron's mangle rule sets on metadata requests
/// (`metadata_access_mark`) and the mask it uses (ROUTER_MARK_MASK).
const METADATA_ACCESS_MARK: &str = "0x1/0xffff";

/// How haproxy names the network to the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderStyle {
    /// Today's template: any Router-ID the guest sent is deleted and the
    /// Network-ID is set, replacing the guest's.
    SetHeader,
    /// Older releases: `http-request add-header`, after whatever the guest
    /// sent (the agent must trust the last value).
    AddHeader,
}

/// haproxy in a router namespace with neutron's rules in front of it.
pub struct NeutronProxy {
    child: Option<Child>,
    dir: TempDir,
}

impl NeutronProxy {
    /// Installs neutron's metadata rules for requests arriving on `iface` in
    /// `router` and starts haproxy there for `network_id`, forwarding to
    /// the unix socket at `socket`.
    pub fn start(
        router: &Netns,
        iface: &str,
        network_id: &str,
        socket: &Path,
        style: HeaderStyle,
    ) -> Result<Self> {
        install_rules(router, iface)?;
        let dir = TempDir::new("haproxy")?;
        let config = dir.join("haproxy.cfg");
        std::fs::write(&config, config_text(network_id, socket, &dir, style))?;
        let log = std::fs::File::create(dir.join("haproxy.log"))?;
        let config_arg = config.to_string_lossy().into_owned();
        let child = router.spawn(
            &["haproxy", "-db", "-f", &config_arg],
            Stdio::from(log.try_clone()?),
            Stdio::from(log),
        )?;
        let mut proxy = Self {
            child: Some(child),
            dir,
        };
        let port = format!("sport = :{METADATA_PROXY_PORT}");
        wait::until("haproxy to listen", Duration::from_secs(10), || {
            if let Some(exit) = proxy.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                anyhow::bail!("haproxy exited ({exit}); its log:\n{}", proxy.log());
            }
            let out = router.exec_ok(&["ss", "-Hltn", &port])?;
            Ok(if out.trim().is_empty() {
                Poll::Pending(format!("nothing listening on :{METADATA_PROXY_PORT}"))
            } else {
                Poll::Ready(())
            })
        })?;
        Ok(proxy)
    }

    /// What haproxy logged (one line per request, `option httplog`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for NeutronProxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        eprintln!(
            "--- haproxy log ---\n{}--- end of haproxy log ---",
            self.log()
        );
    }
}

/// The L3 agent's rules (`metadata_nat_rules`, `metadata_filter_rules` and
/// the mangle rule that marks metadata requests), `qr-+` being `iface`:
/// only redirected requests reach port 9697.
fn install_rules(router: &Netns, iface: &str) -> Result<()> {
    let metadata = format!("{METADATA_ADDR}/32");
    let port = METADATA_PROXY_PORT.to_string();
    let matches = [
        "-d", &metadata, "-i", iface, "-p", "tcp", "-m", "tcp", "--dport", "80",
    ];
    let rules: [Vec<&str>; 4] = [
        [
            &["-t", "mangle", "-A", "PREROUTING"][..],
            &matches,
            &["-j", "MARK", "--set-xmark", METADATA_ACCESS_MARK],
        ]
        .concat(),
        [
            &["-t", "nat", "-A", "PREROUTING"][..],
            &matches,
            &["-j", "REDIRECT", "--to-ports", &port],
        ]
        .concat(),
        vec![
            "-t",
            "filter",
            "-A",
            "INPUT",
            "-m",
            "mark",
            "--mark",
            METADATA_ACCESS_MARK,
            "-j",
            "ACCEPT",
        ],
        vec![
            "-t", "filter", "-A", "INPUT", "-p", "tcp", "-m", "tcp", "--dport", &port, "-j", "DROP",
        ],
    ];
    for rule in rules {
        router.exec_ok(&[&["iptables", "-w"][..], &rule].concat())?;
    }
    Ok(())
}

fn config_text(network_id: &str, socket: &Path, dir: &TempDir, style: HeaderStyle) -> String {
    neutron_config(
        network_id,
        socket,
        "stderr format raw",
        &dir.join("haproxy.pid"),
        style,
    )
}

/// haproxy's configuration as neutron generates it for one network
/// (neutron/common/metadata.py METADATA_HAPROXY_GLOBAL, the unlimited
/// listener, and the network-ID header lines of agent/metadata/driver.py),
/// with our paths: `socket` is the agent's unix socket, `log_target` what
/// follows `log` (neutron's is /dev/log). The e2e tests and the benchmark
/// share it, so both run the proxy a compute node would.
pub fn neutron_config(
    network_id: &str,
    socket: &Path,
    log_target: &str,
    pidfile: &Path,
    style: HeaderStyle,
) -> String {
    let socket = socket.display();
    let pidfile = pidfile.display();
    let port = METADATA_PROXY_PORT;
    let headers = match style {
        HeaderStyle::SetHeader => format!(
            "    http-request del-header X-Neutron-Router-ID\n    http-request set-header X-Neutron-Network-ID {network_id}\n"
        ),
        HeaderStyle::AddHeader => {
            format!("    http-request add-header X-Neutron-Network-ID {network_id}\n")
        }
    };
    format!(
        r#"
global
    log         {log_target} local0 info
    log-tag     haproxy-metadata-proxy-{network_id}
    user        root
    group       root
    maxconn     1024
    nbthread    2
    pidfile     {pidfile}
    daemon

defaults
    log global
    mode http
    option httplog
    option dontlognull
    option http-server-close
    option forwardfor
    retries                 3
    timeout http-request    30s
    timeout connect         30s
    timeout client          32s
    timeout server          32s
    timeout http-keep-alive 30s

listen listener
    bind 0.0.0.0:{port}
    
    server metadata {socket}

{headers}"#
    )
}
