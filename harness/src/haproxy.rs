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
use std::io::Write as _;
use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, Result, bail};

use crate::METADATA_ADDR;
use crate::listener::Listener;
use crate::netns::Netns;
use crate::tempdir::TempDir;

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
    haproxy: Listener,
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
        let config_arg = config.to_string_lossy().into_owned();
        let haproxy = Listener::start_logged(
            router,
            &["haproxy", "-db", "-f", &config_arg],
            METADATA_PROXY_PORT,
            &dir.join("haproxy.log"),
        )?;
        Ok(Self { haproxy, dir })
    }

    /// What haproxy logged (one line per request, `option httplog`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for NeutronProxy {
    fn drop(&mut self) {
        self.haproxy.stop();
        eprintln!(
            "--- haproxy log ---\n{}--- end of haproxy log ---",
            self.log()
        );
    }
}

/// The L3 agent's rules for the metadata proxy, as `iptables-restore`
/// input (`metadata_nat_rules`, `metadata_filter_rules` and the mangle rule
/// that marks metadata requests, `qr-+` being `router_port`): mark what
/// arrives for 169.254.169.254:80 on a router port, redirect it to the
/// proxy, and let only marked packets reach the proxy port. The e2e tests
/// and the benchmark share them.
pub fn iptables_rules(router_port: &str) -> String {
    format!(
        "*mangle
-A PREROUTING -d {METADATA_ADDR}/32 -i {router_port} -p tcp -m tcp --dport 80 -j MARK --set-xmark {METADATA_ACCESS_MARK}
COMMIT
*nat
-A PREROUTING -d {METADATA_ADDR}/32 -i {router_port} -p tcp -m tcp --dport 80 -j REDIRECT --to-ports {METADATA_PROXY_PORT}
COMMIT
*filter
-A INPUT -m mark --mark {METADATA_ACCESS_MARK} -j ACCEPT
-A INPUT -p tcp -m tcp --dport {METADATA_PROXY_PORT} -j DROP
COMMIT
"
    )
}

/// Adds [`iptables_rules`] for `router_port` to `router`'s tables.
pub fn install_rules(router: &Netns, router_port: &str) -> Result<()> {
    let mut cmd = router.command(&["iptables-restore", "--noflush"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("starting iptables-restore")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(iptables_rules(router_port).as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "iptables-restore in {} failed: {}",
            router.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_the_l3_agents_for_one_router_port() {
        let rules = iptables_rules("qr-1");
        for line in [
            "-A PREROUTING -d 169.254.169.254/32 -i qr-1 -p tcp -m tcp --dport 80 -j MARK --set-xmark 0x1/0xffff",
            "-A PREROUTING -d 169.254.169.254/32 -i qr-1 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 9697",
            "-A INPUT -m mark --mark 0x1/0xffff -j ACCEPT",
            "-A INPUT -p tcp -m tcp --dport 9697 -j DROP",
        ] {
            assert!(rules.lines().any(|l| l == line), "missing {line:?}");
        }
        assert_eq!(rules.matches("COMMIT").count(), 3);
    }
}
