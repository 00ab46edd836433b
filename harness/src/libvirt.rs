//! A private libvirt for the compute-node tests: Debian's `libvirtd` with
//! its qemu driver, started by the test itself (no systemd), and domains
//! shaped like the ones nova defines.
//!
//! [`Libvirtd`] never meets a libvirt the machine runs, nor leaves anything
//! behind on it:
//!
//! - it runs in the test's host namespace ([`Host`]), so the taps it
//!   creates, and every bridge its domains use, exist only there;
//! - it runs in a mount namespace of its own in which libvirt's fixed
//!   directories (`/etc/libvirt`, `/run/libvirt`, `/var/lib/libvirt`,
//!   `/var/log/libvirt`) are the test's temporary directories, and `/run`,
//!   `/var/lib` and `/var/log` are empty tmpfs mounts around them; its
//!   socket is in that temporary directory too, so its URI
//!   (`qemu:///system?socket=...`) reaches it and nothing else;
//! - the qemu driver refuses to start without a `libvirt-qemu` user (it
//!   looks it up before reading `qemu.conf`, which says `user = "root"`):
//!   that namespace sees a copy of `/etc/passwd` and `/etc/group` with one,
//!   and the machine's own files stay as they are;
//! - `qemu.conf` turns off what needs a full host: cgroups, security
//!   drivers, virtlogd (`stdio_handler = "file"`), file ownership changes.
//!
//! No libvirt network is defined, so no dnsmasq and no firewall rule ever
//! exists. QEMU's capabilities, which libvirtd probes from the binary (8 s
//! on these machines), are cached in `target/libvirt-cache/` and shared by
//! every private libvirtd (libvirt itself checks the cache is still valid).
//!
//! On drop, every domain is destroyed, libvirtd stops, and its directory
//! goes; the host namespace's own drop kills whatever might remain in it.
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::host::Host;
use crate::http::Reply;
use crate::netns::Netns;
use crate::tempdir::TempDir;
use crate::wait::{self, Poll};
use crate::{METADATA_ADDR, cmd, env};

/// nova's domain metadata namespaces.
pub const NOVA_NS_1_1: &str = "http://openstack.org/xmlns/libvirt/nova/1.1";
pub const NOVA_NS_1_0: &str = "http://openstack.org/xmlns/libvirt/nova/1.0";
/// Where a plain libvirt host keeps an instance document in a domain's
/// metadata for the daemon's local backend (the README's namespace, key and
/// element).
pub const DOCUMENT_NS: &str = "urn:metadata-redirector:instance:1";
pub const DOCUMENT_KEY: &str = "mdr";

/// How long libvirtd may take to answer after it starts (a cold
/// capabilities cache costs about 8 s).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A libvirtd of the test's own.
pub struct Libvirtd {
    host: Host,
    dir: TempDir,
    child: Option<Child>,
}

impl Libvirtd {
    /// Starts libvirtd in `host` and waits until it answers.
    pub fn start(host: &Host) -> Result<Self> {
        let dir = TempDir::new("libvirtd")?;
        for sub in ["etc", "run", "lib", "log", "sock"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let cache = env::target_dir().join("libvirt-cache");
        fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
        let root = dir.path().display().to_string();
        fs::write(
            dir.join("libvirtd.conf"),
            format!(
                "unix_sock_dir = \"{root}/sock\"\n\
                 unix_sock_rw_perms = \"0700\"\n\
                 auth_unix_rw = \"none\"\n\
                 auth_unix_ro = \"none\"\n\
                 log_outputs = \"3:file:{root}/libvirtd.log\"\n"
            ),
        )?;
        fs::write(
            dir.join("etc/qemu.conf"),
            "user = \"root\"\n\
             group = \"root\"\n\
             dynamic_ownership = 0\n\
             security_driver = \"none\"\n\
             cgroup_controllers = [ ]\n\
             stdio_handler = \"file\"\n",
        )?;
        let passwd = fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
        let group = fs::read_to_string("/etc/group").context("reading /etc/group")?;
        fs::write(
            dir.join("passwd"),
            format!(
                "{passwd}{}libvirt-qemu:x:64055:64055:libvirt qemu (test):/nonexistent:/usr/sbin/nologin\n",
                newline_unless_ends(&passwd)
            ),
        )?;
        fs::write(
            dir.join("group"),
            format!(
                "{group}{}libvirt-qemu:x:64055:\n",
                newline_unless_ends(&group)
            ),
        )?;
        let mut script = String::from("set -e\n");
        for tmpfs in ["/run", "/var/lib", "/var/log", "/var/cache"] {
            writeln!(script, "mount -t tmpfs -o mode=0755 mdr-test {tmpfs}")?;
        }
        for (inside, outside) in [
            ("/run/libvirt", format!("{root}/run")),
            ("/var/lib/libvirt", format!("{root}/lib")),
            ("/var/log/libvirt", format!("{root}/log")),
            ("/var/cache/libvirt", cache.display().to_string()),
        ] {
            writeln!(script, "mkdir -p {inside}\nmount --bind {outside} {inside}")?;
        }
        for (inside, outside) in [
            ("/etc/libvirt", format!("{root}/etc")),
            ("/etc/passwd", format!("{root}/passwd")),
            ("/etc/group", format!("{root}/group")),
        ] {
            writeln!(script, "mount --bind {outside} {inside}")?;
        }
        writeln!(
            script,
            "exec libvirtd --config {root}/libvirtd.conf --pid-file {root}/libvirtd.pid"
        )?;
        fs::write(dir.join("start.sh"), script)?;
        let mut libvirtd = Self {
            host: host.clone(),
            dir,
            child: None,
        };
        libvirtd.spawn()?;
        Ok(libvirtd)
    }

    fn spawn(&mut self) -> Result<()> {
        let out = fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("stdout.log"))?;
        let script = self.dir.join("start.sh").display().to_string();
        // unshare execs (no fork): the child's pid is libvirtd's.
        let child = self.host.spawn(
            &[
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                &script,
            ],
            Stdio::from(out.try_clone()?),
            Stdio::from(out),
        )?;
        self.child = Some(child);
        wait::until("the private libvirtd to answer", READY_TIMEOUT, || {
            if let Some(child) = self.child.as_mut()
                && let Some(exit) = child.try_wait()?
            {
                self.child = None;
                bail!("libvirtd exited ({exit}); {}", self.logs());
            }
            let out = self.virsh_output(&["version"])?;
            Ok(if out.status.success() {
                Poll::Ready(())
            } else {
                Poll::Pending(String::from_utf8_lossy(&out.stderr).trim().to_owned())
            })
        })
        .with_context(|| self.logs())
    }

    /// The URI that reaches this libvirtd and no other.
    pub fn uri(&self) -> String {
        format!(
            "qemu:///system?socket={}",
            self.dir.join("sock/libvirt-sock").display()
        )
    }

    /// A directory for the test's domain files (consoles, initramfs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `virsh -c URI args...`; the output whatever the exit status.
    pub fn virsh_output(&self, args: &[&str]) -> Result<Output> {
        let uri = self.uri();
        let mut command = cmd::command(&["virsh", "-q", "-c", &uri]);
        command.args(args).stdin(Stdio::null());
        cmd::output(&mut command)
    }

    /// `virsh -c URI args...`; its stdout, or an error with its stderr.
    pub fn virsh(&self, args: &[&str]) -> Result<String> {
        let uri = self.uri();
        let mut command = cmd::command(&["virsh", "-q", "-c", &uri]);
        command.args(args).stdin(Stdio::null());
        cmd::checked(&mut command)
    }

    /// Writes `xml` to a file and runs virsh with `args`, in which `{}`
    /// stands for the file (`["define", "{}"]`, `["attach-device", DOM,
    /// "{}", "--live"]`).
    pub fn virsh_with_file(&self, args: &[&str], xml: &str) -> Result<String> {
        let file = self
            .dir
            .join(&format!("{}.xml", crate::names::random_u64()));
        fs::write(&file, xml)?;
        let path = file.display().to_string();
        let args: Vec<&str> = args
            .iter()
            .map(|arg| if *arg == "{}" { path.as_str() } else { arg })
            .collect();
        let result = self.virsh(&args);
        let _ = fs::remove_file(&file);
        result
    }

    /// Defines a persistent domain.
    pub fn define(&self, domain: &DomainXml) -> Result<()> {
        self.virsh_with_file(&["define", "{}"], &domain.to_xml())
            .map(drop)
            .with_context(|| format!("defining {}", domain.name))
    }

    /// Starts a defined domain (`--paused`: its tap exists, no CPU runs).
    pub fn start_domain(&self, name: &str, paused: bool) -> Result<()> {
        let mut args = vec!["start", name];
        if paused {
            args.push("--paused");
        }
        self.virsh(&args)
            .map(drop)
            .with_context(|| format!("starting {name}; {}", self.logs()))
    }

    /// Defines and starts a domain.
    pub fn define_and_start(&self, domain: &DomainXml, paused: bool) -> Result<()> {
        self.define(domain)?;
        self.start_domain(&domain.name, paused)
    }

    /// Hot-plugs `nic` into the running domain.
    pub fn attach_nic(&self, name: &str, nic: &Nic) -> Result<()> {
        self.virsh_with_file(&["attach-device", name, "{}", "--live"], &nic.to_xml())
            .map(drop)
            .with_context(|| format!("hot-plugging {} into {name}", nic.mac))
    }

    /// Asks for the NIC with `mac` to be unplugged, and waits until the
    /// guest let it go (a guest kernel must acknowledge the ACPI eject: a
    /// paused or firmware-only domain never does).
    pub fn detach_nic(&self, name: &str, mac: &str, timeout: Duration) -> Result<()> {
        // virsh waits up to 5 s for the guest, then leaves the request
        // pending: either way, what counts is the NIC leaving the domain.
        let _ = self.virsh_output(&["detach-interface", name, "bridge", "--mac", mac, "--live"]);
        wait::until("the NIC to leave the domain", timeout, || {
            let nics = self.virsh(&["domiflist", name])?;
            Ok(if nics.contains(mac) {
                Poll::Pending(nics)
            } else {
                Poll::Ready(())
            })
        })
    }

    /// `virsh destroy` (the domain stays defined).
    pub fn destroy(&self, name: &str) -> Result<()> {
        self.virsh(&["destroy", name]).map(drop)
    }

    /// `virsh undefine` (a running domain becomes transient, and goes
    /// altogether when it stops).
    pub fn undefine(&self, name: &str) -> Result<()> {
        self.virsh(&["undefine", name]).map(drop)
    }

    /// The pid of the domain's qemu, from libvirtd's own record of it.
    pub fn qemu_pid(&self, name: &str) -> Result<u32> {
        let file = self.dir.join(&format!("run/qemu/{name}.pid"));
        let text =
            fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        text.trim()
            .parse()
            .with_context(|| format!("{}: {text:?} is not a pid", file.display()))
    }

    /// Whether libvirtd is running (it may have been killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether the domain is running (`virsh domstate`).
    pub fn domstate(&self, name: &str) -> Result<String> {
        Ok(self.virsh(&["domstate", name])?.trim().to_owned())
    }

    /// Sets (or with `None` removes) the instance document a domain
    /// carries for the local backend, live and in its persistent config.
    pub fn set_document(&self, name: &str, json: Option<&str>) -> Result<()> {
        let mut args = vec![
            "metadata",
            name,
            "--uri",
            DOCUMENT_NS,
            "--key",
            DOCUMENT_KEY,
            "--live",
            "--config",
        ];
        let element;
        match json {
            Some(json) => {
                element = format!("<instance>{}</instance>", xml_text(json));
                args.extend(["--set", &element]);
            }
            None => args.push("--remove"),
        }
        self.virsh(&args).map(drop)
    }

    /// SIGKILLs libvirtd (its domains keep running, as with a crash).
    pub fn kill9(&mut self) -> Result<()> {
        let mut child = self.child.take().context("libvirtd is not running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Starts libvirtd again on the same directories: it finds its running
    /// domains again, as after a restart.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("libvirtd is still running; kill9 it first");
        }
        self.spawn()
    }

    /// libvirtd's log and stdout, and each domain's qemu log.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for file in ["stdout.log", "libvirtd.log"] {
            let content = fs::read_to_string(self.dir.join(file)).unwrap_or_default();
            // The daemon complains about what a test machine lacks (DMI,
            // dnsmasq, D-Bus, ifb devices): not worth reading.
            let content: String = content
                .lines()
                .filter(|line| !is_noise(line))
                .map(|line| format!("{line}\n"))
                .collect();
            let _ = write!(text, "--- {file} ---\n{content}");
        }
        if let Ok(entries) = fs::read_dir(self.dir.join("log/qemu")) {
            for entry in entries.flatten() {
                let content = fs::read_to_string(entry.path()).unwrap_or_default();
                let _ = write!(text, "--- {} ---\n{content}", entry.path().display());
            }
        }
        text
    }

    fn stop(&mut self) {
        if self.child.is_none() {
            return;
        }
        if let Ok(names) = self.virsh(&["list", "--name"]) {
            for name in names.lines().map(str::trim).filter(|n| !n.is_empty()) {
                if let Err(err) = self.destroy(name) {
                    eprintln!("cleanup: destroying {name}: {err:#}");
                }
            }
        }
        let Some(mut child) = self.child.take() else {
            return;
        };
        cmd::signal(child.id(), libc::SIGTERM);
        let exited = wait::until("libvirtd to exit", Duration::from_secs(10), || {
            Ok(match child.try_wait()? {
                Some(_) => Poll::Ready(()),
                None => Poll::Pending("still running".into()),
            })
        });
        if exited.is_err() {
            eprintln!("cleanup: libvirtd ignored SIGTERM for 10 s; killing it");
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        self.stop();
        // A libvirtd the test killed and did not restart could not destroy
        // its domains: their qemus are in the host namespace (whose drop
        // would kill them too); kill them now.
        if let Ok(pids) = cmd::run(&["ip", "netns", "pids", self.host.name()]) {
            for pid in pids.split_whitespace() {
                let Ok(comm) = fs::read_to_string(format!("/proc/{pid}/comm")) else {
                    continue;
                };
                if comm.trim().starts_with("qemu-system")
                    && let Ok(pid) = pid.parse()
                {
                    cmd::signal(pid, libc::SIGKILL);
                }
            }
        }
    }
}

fn newline_unless_ends(text: &str) -> &'static str {
    if text.is_empty() || text.ends_with('\n') {
        ""
    } else {
        "\n"
    }
}

fn is_noise(line: &str) -> bool {
    [
        "dmidecode",
        "udevGetDMIData",
        "dnsmasq",
        "virGDBusGetSystemBus",
        "DBus not available",
        "ethtool ioctl error",
        "/dev/mem",
    ]
    .iter()
    .any(|noise| line.contains(noise))
        || line.trim().is_empty()
}

/// `text` escaped for XML character data.
pub fn xml_text(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `text` escaped for an XML attribute in single quotes.
fn xml_attr(text: &str) -> String {
    xml_text(text)
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// nova's `<nova:instance>` for a domain.
#[derive(Clone, Debug)]
pub struct NovaMeta {
    /// [`NOVA_NS_1_1`] (with ports) or [`NOVA_NS_1_0`] (without).
    pub namespace: &'static str,
    pub name: String,
    pub project_id: String,
    pub project_name: String,
    /// Port id and its fixed IPv4 addresses (1.1 only).
    pub ports: Vec<(String, Vec<Ipv4Addr>)>,
}

impl NovaMeta {
    fn to_xml(&self) -> String {
        let mut xml = format!(
            "<nova:instance xmlns:nova='{}'>\
               <nova:package version='30.0.0'/>\
               <nova:name>{}</nova:name>\
               <nova:creationTime>2026-11-30 07:00:00</nova:creationTime>\
               <nova:flavor name='m1.test'><nova:memory>64</nova:memory><nova:disk>0</nova:disk>\
                 <nova:swap>0</nova:swap><nova:ephemeral>0</nova:ephemeral><nova:vcpus>1</nova:vcpus></nova:flavor>\
               <nova:owner>\
                 <nova:user uuid='0e2d6c3b9a8f4e7d8c6b5a4f3e2d1c0b'>tester</nova:user>\
                 <nova:project uuid='{}'>{}</nova:project>\
               </nova:owner>\
               <nova:root type='image' uuid='7a6b5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d'/>",
            self.namespace,
            xml_text(&self.name),
            xml_attr(&self.project_id),
            xml_text(&self.project_name),
        );
        if self.namespace == NOVA_NS_1_1 {
            xml += "<nova:ports>";
            for (id, ips) in &self.ports {
                let _ = write!(xml, "<nova:port uuid='{}'>", xml_attr(id));
                for ip in ips {
                    let _ = write!(xml, "<nova:ip type='fixed' address='{ip}' ipVersion='4'/>");
                }
                xml += "</nova:port>";
            }
            xml += "</nova:ports>";
        }
        xml + "</nova:instance>"
    }
}

/// nova's tap name for a port: `tap` + the port id, 14 bytes in all.
pub fn nova_tap_name(port_id: &str) -> String {
    format!("tap{port_id}").chars().take(14).collect()
}

/// One NIC of a domain.
#[derive(Clone, Debug)]
pub struct Nic {
    pub mac: String,
    /// `Some(bridge)`: `<interface type='bridge'>` on that bridge (libvirt
    /// creates the tap and enslaves it); `None`: `type='ethernet'` (libvirt
    /// creates the tap and leaves it alone).
    pub bridge: Option<String>,
    /// `<target dev=.../>`; `None` lets libvirt name it `vnetN`.
    pub tap: Option<String>,
}

impl Nic {
    pub fn to_xml(&self) -> String {
        let kind = if self.bridge.is_some() {
            "bridge"
        } else {
            "ethernet"
        };
        let mut xml = format!(
            "<interface type='{kind}'><mac address='{}'/>",
            xml_attr(&self.mac)
        );
        if let Some(bridge) = &self.bridge {
            let _ = write!(xml, "<source bridge='{}'/>", xml_attr(bridge));
        }
        if let Some(tap) = &self.tap {
            let _ = write!(xml, "<target dev='{}'/>", xml_attr(tap));
        }
        // No option ROM: not installed without recommends, not needed with
        // a direct kernel boot.
        xml + "<model type='virtio'/><rom enabled='no'/></interface>"
    }
}

/// What a domain boots.
#[derive(Clone, Debug)]
pub enum Boot {
    /// Nothing (the firmware, if it ever runs): for domains started paused.
    Nothing,
    /// The test guest kernel with this initramfs, its console to `console`.
    Kernel { initrd: PathBuf, console: PathBuf },
}

/// A qemu (TCG) domain shaped like what nova defines. ACPI is on: without
/// it the `pc` machine's PCI bus takes no hot-plugged NIC.
#[derive(Clone, Debug)]
pub struct DomainXml {
    pub name: String,
    pub uuid: String,
    pub nova: Option<NovaMeta>,
    /// More XML inside `<metadata>` (a document, broken nova metadata).
    pub extra_metadata: String,
    pub nics: Vec<Nic>,
    pub boot: Boot,
    pub memory_mib: u32,
}

impl DomainXml {
    pub fn new(name: &str, uuid: &str) -> Self {
        Self {
            name: name.to_owned(),
            uuid: uuid.to_owned(),
            nova: None,
            extra_metadata: String::new(),
            nics: Vec::new(),
            boot: Boot::Nothing,
            memory_mib: 64,
        }
    }

    /// `extra_metadata` holding `json` as the domain's instance document.
    pub fn with_document(mut self, json: &str) -> Self {
        let _ = write!(
            self.extra_metadata,
            "<mdr:instance xmlns:mdr='{DOCUMENT_NS}'>{}</mdr:instance>",
            xml_text(json)
        );
        self
    }

    pub fn to_xml(&self) -> String {
        let mut metadata = String::new();
        if let Some(nova) = &self.nova {
            metadata += &nova.to_xml();
        }
        metadata += &self.extra_metadata;
        let os = match &self.boot {
            Boot::Nothing => String::new(),
            Boot::Kernel { initrd, .. } => format!(
                "<kernel>{}</kernel><initrd>{}</initrd>\
                 <cmdline>console=ttyS0 panic=-1 quiet loglevel=3</cmdline>",
                xml_text(&env::guest_dir().join("vmlinuz").display().to_string()),
                xml_text(&initrd.display().to_string()),
            ),
        };
        let console = match &self.boot {
            Boot::Nothing => String::new(),
            Boot::Kernel { console, .. } => format!(
                "<serial type='file'><source path='{}'/><target port='0'/></serial>",
                xml_attr(&console.display().to_string())
            ),
        };
        let nics: String = self.nics.iter().map(Nic::to_xml).collect();
        format!(
            "<domain type='qemu'>\
               <name>{name}</name>\
               <uuid>{uuid}</uuid>\
               <metadata>{metadata}</metadata>\
               <memory unit='MiB'>{memory}</memory>\
               <vcpu>1</vcpu>\
               <features><acpi/></features>\
               <os><type arch='x86_64' machine='pc'>hvm</type>{os}</os>\
               <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>\
               <devices>\
                 <emulator>/usr/bin/qemu-system-x86_64</emulator>\
                 {nics}{console}\
                 <memballoon model='none'/>\
               </devices>\
             </domain>",
            name = xml_text(&self.name),
            uuid = xml_text(&self.uuid),
            memory = self.memory_mib,
        )
    }
}

const BEGIN: &str = "MDR-ANSWER-BEGIN";
const END: &str = "MDR-ANSWER-END";

/// The port a guest that stays up takes requests on: a line with a path,
/// answered with what 169.254.169.254 answered for it ([`ask`]).
pub const ASK_PORT: u16 = 7777;

/// The guest a booting domain runs: busybox, the virtio-net modules, and an
/// /init that configures `eth0`, sends one request for `path` to
/// 169.254.169.254 (once: a retry would hide a tap attached too late),
/// prints the answer between markers on the console and powers off, or
/// stays up and fetches, for whoever connects to [`ASK_PORT`], the path
/// they send.
pub struct GuestImage {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub path: String,
    /// Keep running after the answer (to take hot-plugged NICs and let
    /// them go) instead of powering off.
    pub stay_up: bool,
}

impl GuestImage {
    /// Writes the initramfs to `file`.
    pub fn write(&self, file: &Path) -> Result<()> {
        let mut cpio = crate::qemu::guest_initramfs(&self.init_script())?;
        cpio.file("bin/ask", 0o755, ASK_SCRIPT.as_bytes());
        let mut out = fs::File::create(file)?;
        out.write_all(&cpio.finish())?;
        Ok(())
    }

    fn init_script(&self) -> String {
        let Self {
            addr,
            prefix_len,
            gateway,
            path,
            stay_up,
        } = self;
        let end = if *stay_up {
            format!("while true; do nc -ll -p {ASK_PORT} -e /bin/ask; sleep 1; done")
        } else {
            "poweroff -f".to_owned()
        };
        let prelude = crate::qemu::init_prelude(addr, prefix_len, gateway);
        format!(
            r#"{prelude}answer=$(printf 'GET {path} HTTP/1.0\r\nHost: {METADATA_ADDR}\r\n\r\n' | nc -w 10 {METADATA_ADDR} 80 2>&1 || echo "nc failed: $?")
echo {BEGIN}
echo "$answer"
echo {END}
{end}
"#
        )
    }
}

/// What `/bin/ask` runs for each connection to [`ASK_PORT`]: one path in,
/// the metadata service's whole answer out (one request, no retry).
const ASK_SCRIPT: &str = r#"#!/bin/busybox sh
read -r path
printf 'GET %s HTTP/1.0\r\nHost: 169.254.169.254\r\n\r\n' "$path" | nc -w 10 169.254.169.254 80 2>&1 || echo "nc failed: $?"
"#;

/// The answer a booted guest printed on its console, once it has.
pub fn console_answer(console: &Path) -> Option<Reply> {
    let text = fs::read_to_string(console).ok()?.replace('\r', "");
    let start = text.find(&format!("{BEGIN}\n"))? + BEGIN.len() + 1;
    let end = start + text[start..].find(&format!("\n{END}"))?;
    Some(parse_reply(&text[start..end]))
}

/// A raw HTTP answer (CRs removed) as a [`Reply`].
fn parse_reply(raw: &str) -> Reply {
    let (head, body) = raw.split_once("\n\n").unwrap_or((raw, ""));
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Reply {
        status,
        body: body.to_owned(),
        error: (status == 0).then(|| format!("no HTTP answer: {raw:?}")),
        headers,
    }
}

/// Has the booted guest at `addr` (one that stays up) fetch `path` from
/// 169.254.169.254 now, once, and returns what it got. Asked from `ns`,
/// a namespace on the guest's network (its router). A guest that does not
/// take the connection (it is still sending its first request, or its
/// listener is between two connections) is tried again: it fetched
/// nothing for that one.
pub fn ask(ns: &Netns, addr: Ipv4Addr, path: &str) -> Result<Reply> {
    wait::until(
        &format!("the guest at {addr} to answer on port {ASK_PORT}"),
        Duration::from_secs(20),
        || {
            let mut command = ns.command(&[
                "busybox",
                "nc",
                "-w",
                "20",
                &addr.to_string(),
                &ASK_PORT.to_string(),
            ]);
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = command.spawn().context("starting busybox nc")?;
            child
                .stdin
                .take()
                .expect("stdin is piped")
                .write_all(format!("{path}\n").as_bytes())?;
            let out = child.wait_with_output()?;
            let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            if !text.is_empty() {
                return Ok(Poll::Ready(parse_reply(&text)));
            }
            // Refused, or taken and closed at once: the guest's listener
            // was between two connections (busybox nc re-listens after
            // each), and nothing was fetched.
            Ok(Poll::Pending(format!("{}: {stderr}", out.status)))
        },
    )
}

/// Waits for [`console_answer`].
pub fn wait_for_console_answer(console: &Path, timeout: Duration) -> Result<Reply> {
    wait::until("the guest's answer on its console", timeout, || {
        Ok(match console_answer(console) {
            Some(reply) => Poll::Ready(reply),
            None => Poll::Pending(fs::read_to_string(console).unwrap_or_default()),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_xml_has_nova_metadata_and_nics() {
        let mut domain = DomainXml::new("vm-1", "6f1c2b9e-54b4-4c0e-9d0b-2b3c1e0f7a10");
        domain.nova = Some(NovaMeta {
            namespace: NOVA_NS_1_1,
            name: "web <1>".into(),
            project_id: "p1".into(),
            project_name: "demo".into(),
            ports: vec![(
                "3d6f8a1e-2c4b-4e9a-8f7d-1a2b3c4d5e6f".into(),
                vec![Ipv4Addr::new(10, 0, 0, 5)],
            )],
        });
        domain.nics.push(Nic {
            mac: "fa:16:3e:00:00:05".into(),
            bridge: Some("br0".into()),
            tap: Some(nova_tap_name("3d6f8a1e-2c4b-4e9a-8f7d-1a2b3c4d5e6f")),
        });
        let domain = domain.with_document(r#"{"name": "a & b"}"#);
        let xml = domain.to_xml();
        assert!(
            xml.contains("<nova:name>web &lt;1&gt;</nova:name>"),
            "{xml}"
        );
        assert!(
            xml.contains("<nova:project uuid='p1'>demo</nova:project>"),
            "{xml}"
        );
        assert!(
            xml.contains("<nova:ip type='fixed' address='10.0.0.5' ipVersion='4'/>"),
            "{xml}"
        );
        assert!(xml.contains("<target dev='tap3d6f8a1e-2c'/>"), "{xml}");
        assert!(xml.contains("<source bridge='br0'/>"), "{xml}");
        assert!(
            xml.contains(r#"{"name": "a &amp; b"}</mdr:instance>"#),
            "{xml}"
        );
    }

    #[test]
    fn console_answers_are_cut_out() {
        let dir = TempDir::new("console").unwrap();
        let file = dir.join("console.log");
        fs::write(
            &file,
            "noise\r\nMDR-ANSWER-BEGIN\r\nHTTP/1.0 200 OK\r\nX: y\r\n\r\n{}\r\nMDR-ANSWER-END\r\n",
        )
        .unwrap();
        let reply = console_answer(&file).unwrap();
        assert_eq!((reply.status, reply.body.as_str()), (200, "{}"));
        fs::write(&file, "MDR-ANSWER-BEGIN\n").unwrap();
        assert!(console_answer(&file).is_none());
    }
}
