//! The test guest's kernel: Debian's own, unpacked into target/guest.
//!
//! Only `vmlinuz` and the virtio network modules are kept (the package
//! unpacks to a few hundred MB); `VERSION` names the package they came from
//! and is written last, so its presence means the set is complete.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use mdr_harness::qemu::GUEST_MODULES;

use crate::cmd::{self, command, probe};
use crate::paths;
use crate::setup::Apt;

/// The package version in target/guest, if the kernel and all modules are there.
pub fn installed() -> Option<String> {
    let dir = paths::guest_dir();
    let complete = dir.join("vmlinuz").is_file()
        && GUEST_MODULES
            .iter()
            .all(|module| dir.join("modules").join(format!("{module}.ko")).is_file());
    let version = std::fs::read_to_string(dir.join("VERSION")).ok()?;
    complete.then(|| version.trim().to_owned())
}

/// Downloads the kernel package `linux-image-amd64` currently points at and
/// keeps what the test guest needs.
pub fn install(apt: &mut Apt) -> Result<()> {
    apt.update_once()?;
    let package = current_package()?;
    println!(
        "installing: guest kernel {package} into {}",
        paths::guest_dir().display()
    );
    let dir = paths::guest_dir();
    let unpack = dir.join("unpack");
    let _ = std::fs::remove_dir_all(&unpack);
    std::fs::create_dir_all(&unpack)?;
    cmd::run(Apt::get(&["download", &package]).current_dir(&unpack))?;
    let deb = find(&unpack, &|path| {
        path.extension().is_some_and(|ext| ext == "deb")
    })
    .context("apt-get download left no .deb")?;
    let root = unpack.join("root");
    cmd::run(command(&["dpkg", "-x"]).arg(&deb).arg(&root))?;

    let vmlinuz = find(&root.join("boot"), &|path| {
        file_name(path).starts_with("vmlinuz-")
    })
    .context("no /boot/vmlinuz-* in the package")?;
    std::fs::copy(&vmlinuz, dir.join("vmlinuz"))?;

    let modules = dir.join("modules");
    std::fs::create_dir_all(&modules)?;
    let tree = root.join("lib/modules");
    for module in GUEST_MODULES {
        let found = find(&tree, &|path| {
            let name = file_name(path);
            name.strip_prefix(module)
                .is_some_and(|rest| rest.starts_with(".ko"))
        })
        .with_context(|| format!("no {module}.ko* in the package (built in?)"))?;
        let target = modules.join(format!("{module}.ko"));
        // The guest's busybox insmod is given plain .ko files; newer Debian
        // kernels xz-compress their modules, so those are unpacked here once.
        match file_name(&found).rsplit_once(".ko") {
            Some((_, "")) => {
                std::fs::copy(&found, &target)?;
            }
            Some((_, ".xz")) => decompress(&["busybox", "xzcat"], &found, &target)?,
            _ => bail!("{} has a compression this does not know", found.display()),
        }
    }
    std::fs::remove_dir_all(&unpack)?;
    std::fs::write(dir.join("VERSION"), format!("{package}\n"))?;
    Ok(())
}

/// `linux-image-<version>-amd64`, what the metapackage depends on.
fn current_package() -> Result<String> {
    let depends = probe(&mut command(&["apt-cache", "depends", "linux-image-amd64"]))
        .context("apt-cache depends linux-image-amd64 failed")?;
    depends
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .find(|name| name.starts_with("linux-image-"))
        .map(str::to_owned)
        .context("linux-image-amd64 depends on no linux-image-* package")
}

fn decompress(tool: &[&str], from: &Path, to: &Path) -> Result<()> {
    let out = command(tool)
        .arg(from)
        .output()
        .with_context(|| format!("running {}", tool[0]))?;
    if !out.status.success() {
        bail!("{} {} failed", tool.join(" "), from.display());
    }
    std::fs::write(to, out.stdout)?;
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The first file below `dir` (depth first) that `wanted` accepts.
fn find(dir: &Path, wanted: &dyn Fn(&Path) -> bool) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let kind = entry.file_type().ok()?;
        if kind.is_dir() {
            if let Some(found) = find(&path, wanted) {
                return Some(found);
            }
        } else if kind.is_file() && wanted(&path) {
            return Some(path);
        }
    }
    None
}
