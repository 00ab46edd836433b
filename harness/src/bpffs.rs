//! The bpf filesystem the daemon pins into.
use std::sync::Mutex;

use anyhow::{Context, Result};

use crate::cmd;

pub const ROOT: &str = "/sys/fs/bpf";
/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Whether `path` is on a mounted bpffs.
pub fn is_mounted(path: &str) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path) else {
        return false;
    };
    // SAFETY: statfs writes only into `stat`, which outlives the call.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Mounts bpffs at /sys/fs/bpf unless it already is (some machines do not
/// mount it at boot; the daemon's pins need it).
pub fn ensure_mounted() -> Result<()> {
    // Two test threads must not both mount (that would stack two mounts).
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !is_mounted(ROOT) {
        cmd::run(&["mount", "-t", "bpf", "bpf", ROOT]).context("mounting bpffs")?;
    }
    Ok(())
}
