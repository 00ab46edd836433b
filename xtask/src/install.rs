//! `cargo xtask install [--root DIR]`: the binary, the systemd unit and a
//! commented config file, under DIR (default `/`). Starts and enables
//! nothing: it prints the commands that do.
//!
//! The unit and the config come from `dist/`; `metadata-user`'s tests keep
//! the config listing every key with its default, and the unit's
//! capabilities equal to what `check` asks for.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{build, paths};

/// Where the binary goes, as the unit's ExecStart names it.
pub const BINDIR: &str = "/usr/local/bin";
const UNIT: &str = "/etc/systemd/system/metadata-redirector.service";
const CONFIG: &str = "/etc/metadata-redirector/config.toml";

/// What an install wrote, relative to the root it was given.
#[derive(Debug)]
pub struct Installed {
    pub binary: PathBuf,
    pub unit: PathBuf,
    pub config: PathBuf,
    /// False when a config file was already there (it is kept as it is).
    pub config_written: bool,
}

pub fn run(root: &Path) -> Result<()> {
    let bin = build::release()?;
    let installed = install(&bin, root)?;
    println!("installed {}", installed.binary.display());
    println!("installed {}", installed.unit.display());
    if installed.config_written {
        println!("installed {}", installed.config.display());
    } else {
        println!(
            "kept {} (the defaults are in {})",
            installed.config.display(),
            paths::root().join("dist/config.toml").display()
        );
    }
    println!(
        "next: systemctl daemon-reload; metadata-redirector check --config {CONFIG}; \
         systemctl enable --now metadata-redirector"
    );
    Ok(())
}

/// Copies `bin`, the unit and (unless one exists) the config under `root`.
pub fn install(bin: &Path, root: &Path) -> Result<Installed> {
    let dist = paths::root().join("dist");
    let under_root = |path: &str| root.join(path.trim_start_matches('/'));
    let installed = Installed {
        binary: under_root(&format!("{BINDIR}/metadata-redirector")),
        unit: under_root(UNIT),
        config: under_root(CONFIG),
        config_written: !under_root(CONFIG).exists(),
    };

    // A new file beside the old one, then renamed over it: a running daemon
    // keeps its binary, and nothing sees a half-written file.
    place(
        &installed.binary,
        &fs::read(bin).with_context(|| format!("reading {}", bin.display()))?,
        0o755,
    )?;
    let unit =
        fs::read_to_string(dist.join("metadata-redirector.service"))?.replace("@BINDIR@", BINDIR);
    place(&installed.unit, unit.as_bytes(), 0o644)?;
    if installed.config_written {
        place(
            &installed.config,
            &fs::read(dist.join("config.toml"))?,
            0o644,
        )?;
    }
    Ok(installed)
}

fn place(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().context("an install path has a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let staging = path.with_extension("installing");
    fs::write(&staging, contents).with_context(|| format!("writing {}", staging.display()))?;
    fs::set_permissions(&staging, fs::Permissions::from_mode(mode))?;
    fs::rename(&staging, path).with_context(|| format!("placing {}", path.display()))
}

/// `systemd-analyze verify` on the unit installed under `root`. The root
/// gets a copy of the host's own units first (the verifier resolves
/// sysinit.target and friends under `--root`). Any warning counts: systemd
/// ignores a line it cannot parse and says so only there.
pub fn verify_unit(root: &Path) -> Result<()> {
    let units = Path::new("/usr/lib/systemd/system");
    let copy = root.join("usr/lib/systemd");
    fs::create_dir_all(&copy)?;
    let status = Command::new("cp")
        .arg("-a")
        .arg(units)
        .arg(&copy)
        .status()
        .context("copying the host's systemd units")?;
    if !status.success() {
        bail!("copying {} failed", units.display());
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg("metadata-redirector.service")
        .output()
        .context("running systemd-analyze (cargo xtask setup installs it)")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || !said.trim().is_empty() {
        bail!("systemd-analyze verify: {}\n{said}", out.status);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_under_a_root_keeps_a_config_and_the_unit_verifies() {
        let root = std::env::temp_dir().join(format!("mdr-install-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        // Any executable stands in for the daemon here; `cargo xtask test`
        // installs the real one the same way.
        let installed = install(Path::new("/bin/true"), &root).unwrap();
        assert!(installed.config_written);
        let unit = fs::read_to_string(&installed.unit).unwrap();
        assert!(
            unit.contains(&format!("ExecStart={BINDIR}/metadata-redirector serve")),
            "{unit}"
        );
        assert!(!unit.contains('@'), "every placeholder is filled: {unit}");
        let mode = fs::metadata(&installed.binary)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);

        fs::write(&installed.config, "domain = \"mine\"\n").unwrap();
        let again = install(Path::new("/bin/true"), &root).unwrap();
        assert!(!again.config_written);
        assert_eq!(
            fs::read_to_string(&again.config).unwrap(),
            "domain = \"mine\"\n"
        );

        if Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .is_ok()
        {
            verify_unit(&root).unwrap();
            // And a unit with a line systemd cannot read fails the check.
            fs::write(
                &installed.unit,
                unit.replace("Restart=on-failure", "Restart=sometimes"),
            )
            .unwrap();
            assert!(verify_unit(&root).is_err());
        } else {
            eprintln!("systemd-analyze is missing (cargo xtask setup installs it); not verified");
        }
        fs::remove_dir_all(&root).unwrap();
    }
}
