//! `cargo xtask setup`: installs what a fresh machine lacks, idempotently.
//!
//! Every prerequisite is checked first and installed only when missing, one
//! line per item ("ok: ..." / "installing: ..."). `build`, `run` and `test`
//! call the same checks quietly, so a fresh clone needs no manual step.
use std::process::Command;

use anyhow::{Result, bail};
use mdr_harness::bpffs;

use crate::cmd::{self, command, probe};
use crate::guest_kernel;

/// Debian packages and why they are needed.
const APT_PACKAGES: &[(&str, &str)] = &[
    // bpf-linker links against Debian's LLVM 22 and its dependencies.
    ("llvm-22-dev", "bpf-linker"),
    ("libpolly-22-dev", "bpf-linker"),
    ("zlib1g-dev", "bpf-linker"),
    ("libzstd-dev", "bpf-linker"),
    ("libxml2-dev", "bpf-linker"),
    ("bpftool", "inspecting pinned maps"),
    ("qemu-system-x86", "the test guest"),
    (
        "busybox-static",
        "the test guest's initramfs, decoy listener, ping",
    ),
    ("curl", "guests' HTTP client"),
    ("iproute2", "ip, ss"),
    (
        "haproxy",
        "neutron's metadata proxy, in the neutron-agent socket test and the benchmark's neutron-style path",
    ),
    (
        "iptables",
        "neutron's REDIRECT to haproxy in their router namespaces",
    ),
    ("util-linux", "nsenter"),
    ("iperf3", "the benchmark's other-traffic measurement"),
    ("fonts-dejavu-core", "the benchmark's plots"),
    ("linux-perf", "profiling the benchmark's misses"),
    (
        "systemd",
        "systemd-analyze verify of the installed unit (nothing is started)",
    ),
    (
        "libssl-dev",
        "the daemon's signed identity (libssl.a and libcrypto.a, linked statically: .cargo/config.toml)",
    ),
    (
        "pkg-config",
        "finding libssl for the openssl crate on other targets than x86_64",
    ),
    (
        "openssl",
        "the identity test verifies signatures with AWS's published openssl commands",
    ),
    // `serve --discover libvirt`: the daemon loads libvirt's client library
    // at run time (nothing to build against); the tests and the benchmark
    // run a private libvirtd of their own (no systemd unit is installed or
    // started: libvirt-daemon-system is not among these) with qemu domains.
    (
        "libvirt0",
        "libvirt's client library: the discovery's unit tests (libvirt's test driver) and serve --discover libvirt",
    ),
    (
        "libvirt-daemon",
        "the libvirt discovery tests' private libvirtd",
    ),
    (
        "libvirt-daemon-driver-qemu",
        "the libvirt discovery tests' qemu domains",
    ),
    ("libvirt-clients", "virsh, which the libvirt tests drive"),
];

/// Python packages (from PyPI, for the machine's `python3`): the name pip
/// installs, the module Python imports, and why.
const PYTHON_PACKAGES: &[(&str, &str, &str)] = &[
    (
        "botocore",
        "botocore",
        "the end-to-end test of an AWS SDK's IMDSv2 client",
    ),
    (
        "prometheus-client",
        "prometheus_client",
        "parsing the /metrics exposition in the metrics test",
    ),
    (
        "PyJWT",
        "jwt",
        "verifying the daemon's identity tokens against its JWKS",
    ),
    ("cryptography", "cryptography", "PyJWT's RS256 and ES256"),
];

/// The bpf-linker release verified with LLVM 22 and rustc 1.95.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Whether to print the items that are already in place.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Report {
    Everything,
    OnlyChanges,
}

impl Report {
    fn ok(self, what: &str) {
        if self == Report::Everything {
            println!("ok: {what}");
        }
    }
}

/// Runs `apt-get update` at most once per xtask run, and only if something
/// is to be installed: package lists of a fresh machine are empty or stale.
#[derive(Default)]
pub struct Apt {
    updated: bool,
}

impl Apt {
    pub fn update_once(&mut self) -> Result<()> {
        if !self.updated {
            cmd::run(&mut command(&["apt-get", "update"]))?;
            self.updated = true;
        }
        Ok(())
    }

    /// `apt-get` with the options every call here wants.
    pub fn get(args: &[&str]) -> Command {
        let mut cmd = command(&["apt-get"]);
        // Root downloads into our own directories; the _apt sandbox user
        // could not write there.
        cmd.args(["-o", "APT::Sandbox::User=root"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }
}

pub fn ensure(report: Report) -> Result<()> {
    let mut apt = Apt::default();
    apt_packages(report, &mut apt)?;
    python_packages(report)?;
    rust_src(report)?;
    bpf_linker(report)?;
    guest_kernel(report, &mut apt)?;
    bpffs_mount(report)
}

fn apt_packages(report: Report, apt: &mut Apt) -> Result<()> {
    let mut missing = Vec::new();
    for (package, why) in APT_PACKAGES {
        match installed_version(package) {
            Some(version) => report.ok(&format!("{package} {version}")),
            None => {
                println!("installing: {package} (for {why})");
                missing.push(*package);
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    require_root("install Debian packages")?;
    apt.update_once()?;
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(&missing);
    cmd::run(&mut Apt::get(&args))
}

/// The installed version of a Debian package, if it is installed.
fn installed_version(package: &str) -> Option<String> {
    let format = "${db:Status-Status} ${Version}";
    let out = probe(&mut command(&["dpkg-query", "-W", "-f", format, package]))?;
    out.strip_prefix("installed ").map(str::to_owned)
}

/// The tests run real guest software (`harness/py/`) with the `python3` on the
/// PATH, so that is the one whose packages are checked and installed.
fn python_packages(report: Report) -> Result<()> {
    for (package, module, why) in PYTHON_PACKAGES {
        let version =
            format!("import importlib.metadata as m, {module}; print(m.version({package:?}))");
        if let Some(version) = probe(&mut command(&["python3", "-c", &version])) {
            report.ok(&format!("{package} {} (python3)", version.trim()));
            continue;
        }
        println!("installing: {package} (for {why})");
        cmd::run(&mut command(&[
            "python3",
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            package,
        ]))?;
    }
    Ok(())
}

/// The eBPF crate builds `core` from source with the nightly toolchain.
fn rust_src(report: Report) -> Result<()> {
    let installed = |args: &[&str]| probe(&mut command(args)).unwrap_or_default();
    let components = installed(&[
        "rustup",
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]);
    if components.lines().any(|line| line.starts_with("rust-src")) {
        report.ok("rust-src (nightly)");
        return Ok(());
    }
    println!("installing: rust-src for the nightly toolchain (eBPF builds core from source)");
    let toolchains = installed(&["rustup", "toolchain", "list"]);
    // Adding the component to an existing nightly keeps that nightly
    // (`toolchain install` would move it to today's).
    cmd::run(
        &mut if toolchains.lines().any(|line| line.starts_with("nightly")) {
            command(&[
                "rustup",
                "component",
                "add",
                "rust-src",
                "--toolchain",
                "nightly",
            ])
        } else {
            let args = [
                "rustup",
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ];
            let mut cmd = command(&args);
            cmd.args(["--component", "rust-src"]);
            cmd
        },
    )
}

fn bpf_linker(report: Report) -> Result<()> {
    if let Some(version) = probe(&mut command(&["bpf-linker", "--version"])) {
        report.ok(version.trim());
        return Ok(());
    }
    println!("installing: bpf-linker {BPF_LINKER_VERSION} (cargo install, about 4 minutes)");
    let mut cmd = command(&[
        "cargo",
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
    ]);
    cmd.args(["--no-default-features", "--features", "llvm-22"])
        // Without it the build looks for -lLLVM in the wrong place.
        .env("LLVM_PREFIX", "/usr/lib/llvm-22");
    cmd::run(&mut cmd)
}

fn guest_kernel(report: Report, apt: &mut Apt) -> Result<()> {
    if let Some(version) = guest_kernel::installed() {
        report.ok(&format!("guest kernel {version}"));
        return Ok(());
    }
    require_root("download the guest kernel")?;
    guest_kernel::install(apt)
}

/// The daemon pins into bpffs; some machines do not mount it at boot.
fn bpffs_mount(report: Report) -> Result<()> {
    if bpffs::is_mounted(bpffs::ROOT) {
        report.ok(&format!("bpffs at {}", bpffs::ROOT));
        return Ok(());
    }
    println!("installing: bpffs mount at {}", bpffs::ROOT);
    require_root("mount bpffs")?;
    bpffs::ensure_mounted()
}

/// Fails with a clear message unless running as root.
pub fn require_root(to: &str) -> Result<()> {
    if !cmd::is_root() {
        bail!("root is needed to {to}: run it as root (e.g. with sudo)");
    }
    Ok(())
}
