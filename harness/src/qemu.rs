//! A real guest: Debian's kernel under qemu (TCG) with a busybox initramfs,
//! on a real tap (`ip tuntap`) on a tenant bridge. It configures its network,
//! fetches one metadata path with busybox `nc` (busybox `wget` crashes on
//! this kernel), prints the answer between markers on the serial console and
//! powers off.
use std::io::Read as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::host::Host;
use crate::http::Reply;
use crate::initramfs::Cpio;
use crate::tempdir::TempDir;
use crate::tenant::TenantNet;
use crate::wait::{self, Poll};
use crate::{METADATA_ADDR, cmd, env, names};

/// The start of every test guest's /init: busybox, the network modules,
/// eth0 up with `addr`/`prefix_len` and a default route via `gateway`.
pub fn init_prelude(
    addr: impl std::fmt::Display,
    prefix_len: impl std::fmt::Display,
    gateway: impl std::fmt::Display,
) -> String {
    let modules = GUEST_MODULES.join(" ");
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
for m in {modules}; do insmod /lib/modules/$m.ko || echo "insmod $m failed"; done
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do usleep 100000; i=$((i+1)); done
ip link set lo up
ip addr add {addr}/{prefix_len} dev eth0
ip link set eth0 up
ip route add default via {gateway}
"#
    )
}

/// The guest kernel's modules the network needs, in load order (each needs
/// the ones before it). `cargo xtask setup` unpacks them into
/// `<guest dir>/modules/<name>.ko`.
pub const GUEST_MODULES: [&str; 8] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
];

/// The initramfs every test guest (qemu's and libvirt's) boots: busybox,
/// the network modules from `cargo xtask setup`, /dev/console and `init`
/// as /init. The caller may add files before it finishes it.
pub fn guest_initramfs(init: &str) -> Result<Cpio> {
    let guest_dir = env::guest_dir();
    let busybox = which("busybox")?;
    let mut cpio = Cpio::new();
    for dir in ["bin", "dev", "proc", "sys", "lib", "lib/modules"] {
        cpio.dir(dir);
    }
    cpio.char_dev("dev/console", 5, 1);
    cpio.file(
        "bin/busybox",
        0o755,
        &std::fs::read(&busybox).with_context(|| format!("reading {}", busybox.display()))?,
    );
    for module in GUEST_MODULES {
        let path = guest_dir.join("modules").join(format!("{module}.ko"));
        let data = std::fs::read(&path)
            .with_context(|| format!("reading {} (run `cargo xtask setup`)", path.display()))?;
        cpio.file(&format!("lib/modules/{module}.ko"), 0o644, &data);
    }
    cpio.file("init", 0o755, init.as_bytes());
    Ok(cpio)
}

const BEGIN: &str = "MDR-ANSWER-BEGIN";
const END: &str = "MDR-ANSWER-END";
const LINK_UP: &str = "MDR-LINK-UP";

#[derive(Clone, Debug)]
pub struct QemuConfig {
    pub addr: Ipv4Addr,
    pub mac: String,
    /// The path to GET...
    pub fetch_path: String,
    /// ...from this host (busybox nc's syntax): 169.254.169.254 by default,
    /// or e.g. `fe80::a9fe:a9fe%eth0` to fetch over IPv6.
    pub fetch_host: String,
    /// Boot, fetch and power-off must end within this.
    pub timeout: Duration,
}

impl QemuConfig {
    pub fn new(addr: Ipv4Addr, mac: &str) -> Self {
        Self {
            addr,
            mac: mac.to_owned(),
            fetch_path: "/openstack/latest/meta_data.json".into(),
            fetch_host: METADATA_ADDR.to_string(),
            // About 8 s alone under TCG; leave room for a busy 2-core machine.
            timeout: Duration::from_secs(120),
        }
    }
}

pub struct QemuGuest {
    host: Host,
    tap: String,
    gateway: Ipv4Addr,
    prefix_len: u8,
    config: QemuConfig,
    console: Arc<Mutex<String>>,
    child: Option<Child>,
    dir: TempDir,
}

impl QemuGuest {
    /// Creates the guest's tap on `net`'s bridge; [`QemuGuest::boot`]
    /// starts the VM. The split lets a test register the tap first.
    pub fn new(net: &TenantNet, config: QemuConfig) -> Result<Self> {
        let host = net.host().clone();
        let gateway = net.gateway().context("a qemu guest needs a router")?;
        let tap = names::ifname("vm");
        host.ip(&["tuntap", "add", &tap, "mode", "tap"])?;
        let guest = Self {
            host,
            tap,
            gateway,
            prefix_len: net.prefix_len(),
            config,
            console: Arc::default(),
            child: None,
            dir: TempDir::new("qemu")?,
        };
        guest
            .host
            .ip(&["link", "set", &guest.tap, "master", net.bridge(), "up"])?;
        Ok(guest)
    }

    pub fn tap(&self) -> &str {
        &self.tap
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.config.addr
    }

    pub fn mac(&self) -> &str {
        &self.config.mac
    }

    /// Builds the initramfs and starts qemu inside the host namespace (where
    /// the tap is); a thread collects the serial console.
    pub fn boot(&mut self) -> Result<()> {
        let guest_dir = env::guest_dir();
        let kernel = guest_dir.join("vmlinuz");
        if !kernel.is_file() {
            bail!(
                "{} is missing: run `cargo xtask setup` (or set MDR_GUEST_DIR)",
                kernel.display()
            );
        }
        let initrd = self.dir.join("initrd.cpio");
        std::fs::write(&initrd, guest_initramfs(&self.init_script())?.finish())?;
        let netdev = format!("tap,id=n0,ifname={},script=no,downscript=no", self.tap);
        // romfile= : no iPXE option ROM (not needed for -kernel, and not
        // installed without recommends).
        let device = format!("virtio-net-pci,netdev=n0,romfile=,mac={}", self.config.mac);
        let (kernel, initrd) = (kernel.to_string_lossy(), initrd.to_string_lossy());
        // KVM is present on these machines but hangs; TCG is reliable.
        let mut child = self.host.spawn(
            &[
                "qemu-system-x86_64",
                "-accel",
                "tcg",
                "-m",
                "256",
                "-smp",
                "1",
                "-nodefaults",
                "-display",
                "none",
                "-serial",
                "stdio",
                "-monitor",
                "none",
                "-no-reboot",
                "-kernel",
                &kernel,
                "-initrd",
                &initrd,
                "-append",
                "console=ttyS0 panic=-1 quiet loglevel=3",
                "-netdev",
                &netdev,
                "-device",
                &device,
            ],
            Stdio::piped(),
            Stdio::piped(),
        )?;
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let console = Arc::clone(&self.console);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]);
                console.lock().expect("console lock").push_str(&text);
            }
        });
        let console = Arc::clone(&self.console);
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            if !text.is_empty() {
                console
                    .lock()
                    .expect("console lock")
                    .push_str(&format!("\n[qemu stderr] {text}"));
            }
        });
        self.child = Some(child);
        Ok(())
    }

    fn init_script(&self) -> String {
        let QemuConfig {
            addr,
            fetch_path,
            fetch_host,
            ..
        } = &self.config;
        let (gateway, prefix_len) = (self.gateway, self.prefix_len);
        // The fetch is retried: the daemon attaches to the tap
        // asynchronously, and an unanswered SYN only times out.
        let prelude = init_prelude(*addr, prefix_len, gateway);
        format!(
            r#"{prelude}echo {LINK_UP}
answer=
n=0
while [ -z "$answer" ] && [ $n -lt 15 ]; do
  answer=$(printf 'GET {fetch_path} HTTP/1.0\r\nHost: {METADATA_ADDR}\r\n\r\n' | nc -w 3 {fetch_host} 80)
  n=$((n+1))
  [ -z "$answer" ] && sleep 1
done
echo {BEGIN}
echo "$answer"
echo {END}
poweroff -f
"#
        )
    }

    /// Everything the serial console showed so far.
    pub fn console(&self) -> String {
        self.console.lock().expect("console lock").clone()
    }

    /// Waits for the guest's answer and returns it parsed. Fails with the
    /// console's text on a timeout or if qemu exits without an answer.
    pub fn wait_for_answer(&mut self) -> Result<Reply> {
        let timeout = self.config.timeout;
        let raw = wait::until("the qemu guest's answer", timeout, || {
            let console = self.console();
            if let Some(answer) = between_markers(&console) {
                return Ok(Poll::Ready(answer));
            }
            if let Some(child) = self.child.as_mut()
                && let Some(exit) = child.try_wait()?
            {
                // Let the reader threads drain what qemu wrote last.
                std::thread::sleep(Duration::from_millis(200));
                if let Some(answer) = between_markers(&self.console()) {
                    return Ok(Poll::Ready(answer));
                }
                bail!(
                    "qemu exited ({exit}) without an answer; console:\n{}",
                    self.console()
                );
            }
            Ok(Poll::Pending(String::new()))
        })
        .with_context(|| format!("console:\n{}", self.console()))?;
        Ok(parse_http(&raw))
    }

    /// Whether the guest reported its link configured.
    pub fn link_came_up(&self) -> bool {
        self.console().contains(LINK_UP)
    }
}

impl Drop for QemuGuest {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Err(err) = self.host.ip(&["link", "del", &self.tap]) {
            eprintln!("cleanup: {err:#}");
        }
    }
}

fn which(program: &str) -> Result<PathBuf> {
    let path = cmd::run(&["sh", "-c", &format!("command -v {program}")])?;
    Ok(PathBuf::from(path.trim()))
}

/// The text between the marker lines, without the console's carriage returns.
fn between_markers(console: &str) -> Option<String> {
    let text = console.replace('\r', "");
    let start = text.find(&format!("{BEGIN}\n"))? + BEGIN.len() + 1;
    let end = start + text[start..].find(&format!("\n{END}"))?;
    Some(text[start..end].to_owned())
}

/// Splits a raw HTTP/1.0 response (its CRs already gone) into status and body.
fn parse_http(raw: &str) -> Reply {
    let (head, body) = raw.split_once("\n\n").unwrap_or((raw, ""));
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        body: body.to_owned(),
        error: (status == 0).then(|| format!("no HTTP answer: {raw:?}")),
        // The console's answer is only ever checked for status and body.
        headers: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_is_cut_from_the_console() {
        let console = "boot noise\r\nMDR-ANSWER-BEGIN\r\nHTTP/1.0 200 OK\r\r\nContent-Type: application/json\r\r\n\r\r\n{\"uuid\":\"x\"}\r\nMDR-ANSWER-END\r\n[ 9.1] reboot: Power down\r\n";
        let raw = between_markers(console).unwrap();
        let reply = parse_http(&raw);
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "{\"uuid\":\"x\"}");
    }

    #[test]
    fn no_answer_is_status_0() {
        let reply = parse_http("");
        assert_eq!(reply.status, 0);
        assert!(reply.error.is_some());
        assert_eq!(between_markers("MDR-ANSWER-BEGIN without end"), None);
    }
}
