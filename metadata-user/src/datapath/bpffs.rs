//! The filesystem the datapath pins into: `--bpffs` must be on bpffs, which
//! is mounted at /sys/fs/bpf when nobody has yet (as iproute2 and systemd
//! do), so pins work on a bare host.
use std::path::Path;

use anyhow::{Context as _, bail};
use tracing::info;

pub fn ensure_bpffs(dir: &Path) -> anyhow::Result<()> {
    // The nearest existing ancestor tells which filesystem `dir` will be on.
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if mdr_bpffs::is_bpffs(existing) {
        return Ok(());
    }
    if !dir.starts_with(mdr_bpffs::ROOT) {
        bail!(
            "{} is not on a bpffs (mount one, or use a directory under {})",
            dir.display(),
            mdr_bpffs::ROOT
        );
    }
    mdr_bpffs::mount_root().context("mounting bpffs at /sys/fs/bpf")?;
    info!("mounted bpffs at {}", mdr_bpffs::ROOT);
    Ok(())
}
