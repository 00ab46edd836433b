//! The bpf filesystem the daemon pins into, checked the daemon's own way
//! (`mdr-bpffs`).
use std::{path::Path, sync::Mutex};

use anyhow::{Context, Result};

pub use mdr_bpffs::ROOT;

/// Whether `path` is on a mounted bpffs.
pub fn is_mounted(path: &str) -> bool {
    mdr_bpffs::is_bpffs(Path::new(path))
}

/// Mounts bpffs at /sys/fs/bpf unless it already is (some machines do not
/// mount it at boot; the daemon's pins need it).
pub fn ensure_mounted() -> Result<()> {
    // Two test threads must not both mount (that would stack two mounts).
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !is_mounted(ROOT) {
        mdr_bpffs::mount_root().context("mounting bpffs")?;
    }
    Ok(())
}
