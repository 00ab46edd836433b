//! `cargo xtask setup`: installs what a fresh machine lacks, idempotently.
//!
//! Every prerequisite is checked first and installed only when missing, one
//! line per item ("ok: ..." / "installing: ..."). `build`, `run` and `test`
//! call the same checks quietly, so a fresh clone needs no manual step.
use std::process::Command;

use anyhow::{Result, bail};
use integration_tests::bpffs;

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
    ("util-linux", "nsenter"),
];

/// The bpf-linker release verified with LLVM 22 and rustc 1.95.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Whether to print the items that are already in place.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Report {
    Everything,
    OnlyChanges,
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
    let say_ok = |what: &str| {
        if report == Report::Everything {
            println!("ok: {what}");
        }
    };
    let mut apt = Apt::default();

    let mut missing = Vec::new();
    for (package, _why) in APT_PACKAGES {
        match installed_version(package) {
            Some(version) => say_ok(&format!("{package} {version}")),
            None => missing.push(*package),
        }
    }
    if !missing.is_empty() {
        for package in &missing {
            let why = APT_PACKAGES
                .iter()
                .find(|(p, _)| p == package)
                .map(|(_, w)| *w);
            println!("installing: {package} (for {})", why.unwrap_or("?"));
        }
        require_root("install Debian packages")?;
        apt.update_once()?;
        let mut args = vec!["install", "-y", "--no-install-recommends"];
        args.extend(&missing);
        cmd::run(&mut Apt::get(&args))?;
    }

    if nightly_has_rust_src() {
        say_ok("rust-src (nightly)");
    } else {
        println!("installing: rust-src for the nightly toolchain (eBPF builds core from source)");
        // Adding the component to an existing nightly keeps that nightly
        // (`toolchain install` would move it to today's).
        let has_nightly = probe(&mut command(&["rustup", "toolchain", "list"]))
            .is_some_and(|list| list.lines().any(|line| line.starts_with("nightly")));
        cmd::run(&mut if has_nightly {
            command(&[
                "rustup",
                "component",
                "add",
                "rust-src",
                "--toolchain",
                "nightly",
            ])
        } else {
            command(&[
                "rustup",
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ])
        })?;
    }

    match probe(&mut command(&["bpf-linker", "--version"])) {
        Some(version) => say_ok(version.trim()),
        None => {
            println!(
                "installing: bpf-linker {BPF_LINKER_VERSION} (cargo install, about 4 minutes)"
            );
            // Without LLVM_PREFIX the build looks for -lLLVM in the wrong place.
            cmd::run(
                command(&[
                    "cargo",
                    "install",
                    "bpf-linker",
                    "--version",
                    BPF_LINKER_VERSION,
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ])
                .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
            )?;
        }
    }

    match guest_kernel::installed() {
        Some(version) => say_ok(&format!("guest kernel {version}")),
        None => {
            require_root("download the guest kernel")?;
            guest_kernel::install(&mut apt)?;
        }
    }

    if bpffs::is_mounted(bpffs::ROOT) {
        say_ok(&format!("bpffs at {}", bpffs::ROOT));
    } else {
        println!("installing: bpffs mount at {}", bpffs::ROOT);
        require_root("mount bpffs")?;
        bpffs::ensure_mounted()?;
    }
    Ok(())
}

/// The installed version of a Debian package, if it is installed.
fn installed_version(package: &str) -> Option<String> {
    let out = probe(&mut command(&[
        "dpkg-query",
        "-W",
        "-f",
        "${db:Status-Status} ${Version}",
        package,
    ]))?;
    out.strip_prefix("installed ").map(str::to_owned)
}

fn nightly_has_rust_src() -> bool {
    probe(&mut command(&[
        "rustup",
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .is_some_and(|list| list.lines().any(|line| line.starts_with("rust-src")))
}

/// Fails with a clear message unless running as root.
pub fn require_root(to: &str) -> Result<()> {
    if !cmd::is_root() {
        bail!("root is needed to {to}: run it as root (e.g. with sudo)");
    }
    Ok(())
}
