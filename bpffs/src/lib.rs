//! The bpf filesystem the daemon pins its maps, programs and links into.
//!
//! The daemon checks `--bpffs` and mounts bpffs when nobody has; the test
//! harness and `cargo xtask setup` make sure it is mounted before any daemon
//! starts. All of them ask the same question the same way, here. [`sys`]
//! holds the raw bpf(2) calls the daemon and the harness both make.
use std::{ffi::CString, io, path::Path};

pub mod sys;

/// Where bpffs is conventionally mounted (by iproute2, systemd, and us).
pub const ROOT: &str = "/sys/fs/bpf";

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Whether `path` is on a mounted bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs into a zeroed struct with a valid NUL-terminated path;
    // it writes only into `stat`, which outlives the call.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } == 0) && stat.f_type as i64 == BPF_FS_MAGIC
}

/// Mounts bpffs at [`ROOT`], creating the directory if needed. The caller
/// checks first ([`is_bpffs`]): mounting again would stack a second bpffs
/// over the first, hiding its pins.
pub fn mount_root() -> io::Result<()> {
    std::fs::create_dir_all(ROOT)?;
    let target = CString::new(ROOT)?;
    let fstype = CString::new("bpf")?;
    // SAFETY: plain mount(2) with valid NUL-terminated strings and no data.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_directories_are_not_bpffs() {
        assert!(!is_bpffs(Path::new("/")));
        assert!(!is_bpffs(Path::new("/nonexistent/path")));
        assert!(!is_bpffs(Path::new("bad\0path")));
    }
}
