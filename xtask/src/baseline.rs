//! `cargo xtask bench --baseline-rev REV`: the daemon as built from another
//! commit, for the benchmark to measure side by side with this one.
//!
//! REV is checked out into a temporary git worktree (removed afterwards,
//! also on failure) and built there with a target directory of its own,
//! `target/baseline/target`, which is kept: the next baseline build is
//! incremental. The first one is seeded with a copy of `target/release`,
//! so third-party crates are not compiled again. The binary is kept as
//! `target/baseline/metadata-redirector-<commit>` and reused as it is.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::cmd::{self, command};
use crate::paths;

/// The baseline binary for `rev`, and the label the report gives it.
pub fn build(rev: &str) -> Result<(PathBuf, String)> {
    let root = paths::root();
    let commit = cmd::probe(
        command(&["git", "rev-parse", "--verify", &format!("{rev}^{{commit}}")]).current_dir(&root),
    )
    .map(|out| out.trim().to_owned())
    .with_context(|| format!("--baseline-rev {rev}: no such commit"))?;
    let short = &commit[..12];
    let label = if rev.starts_with(short) || short.starts_with(rev) {
        short.to_owned()
    } else {
        format!("{rev} ({short})")
    };
    let dir = paths::target().join("baseline");
    let bin = dir.join(format!("metadata-redirector-{short}"));
    if bin.is_file() {
        eprintln!("baseline {label}: {} (built before)", bin.display());
        return Ok((bin, label));
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let target_dir = dir.join("target");
    seed(&target_dir)?;
    let worktree = Worktree::add(
        &root,
        &dir.join(format!("src-{short}-{}", std::process::id())),
        &commit,
    )?;
    cmd::run(
        command(&["cargo", "build", "--release", "-p", "metadata-user"])
            .current_dir(&worktree.path)
            .env("CARGO_TARGET_DIR", &target_dir),
    )?;
    let built = target_dir.join("release/metadata-redirector");
    std::fs::copy(&built, &bin)
        .with_context(|| format!("copying {} to {}", built.display(), bin.display()))?;
    eprintln!("baseline {label}: {}", bin.display());
    Ok((bin, label))
}

/// A first baseline build starts from a copy of this checkout's release
/// artifacts: cargo reuses what the two commits build alike.
fn seed(target_dir: &Path) -> Result<()> {
    let release = paths::target().join("release");
    if target_dir.exists() || !release.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(target_dir)?;
    cmd::run(&mut command(&[
        "cp",
        "-a",
        &release.to_string_lossy(),
        &target_dir.to_string_lossy(),
    ]))
}

/// A detached git worktree, removed on drop.
struct Worktree {
    root: PathBuf,
    path: PathBuf,
}

impl Worktree {
    fn add(root: &Path, path: &Path, commit: &str) -> Result<Self> {
        cmd::run(
            command(&[
                "git",
                "worktree",
                "add",
                "--detach",
                &path.to_string_lossy(),
                commit,
            ])
            .current_dir(root),
        )?;
        if !path.is_dir() {
            bail!("git worktree add made no {}", path.display());
        }
        Ok(Self {
            root: root.to_owned(),
            path: path.to_owned(),
        })
    }
}

impl Drop for Worktree {
    fn drop(&mut self) {
        let removed = cmd::run(
            command(&[
                "git",
                "worktree",
                "remove",
                "--force",
                &self.path.to_string_lossy(),
            ])
            .current_dir(&self.root),
        );
        if removed.is_err() {
            let _ = std::fs::remove_dir_all(&self.path);
            let _ = cmd::run(command(&["git", "worktree", "prune"]).current_dir(&self.root));
        }
    }
}
