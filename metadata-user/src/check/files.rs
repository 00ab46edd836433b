//! Where the daemon keeps things: bpffs for its pins, the admin socket's
//! directory, the state directory.
use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::Path,
};

use super::Item;

/// The nearest part of `path` that exists (the filesystem it will be on).
fn nearest_existing(path: &Path) -> &Path {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
}

fn writable(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access(2) with a NUL-terminated path.
    unsafe { libc::access(c_path.as_ptr(), libc::W_OK) == 0 }
}

pub fn bpffs(dir: &Path) -> Item {
    let existing = nearest_existing(dir);
    if mdr_bpffs::is_bpffs(existing) {
        return Item::ok(
            "bpffs",
            format!(
                "{} is on bpffs (mounted at {})",
                dir.display(),
                mdr_bpffs::ROOT
            ),
        );
    }
    Item::fail(
        "bpffs",
        format!("{} is not on a mounted bpffs", dir.display()),
        format!(
            "mount -t bpf bpf {} (systemd's sys-fs-bpf.mount does it at boot); the pins must \
             live in the host's bpffs to outlive the daemon",
            mdr_bpffs::ROOT
        ),
    )
}

/// The admin socket's directory: there, or creatable; writable by root
/// alone, since whoever can write there can put another socket in its place.
pub fn admin_socket_dir(socket: &Path) -> Item {
    const NAME: &str = "admin socket";
    let Some(dir) = socket.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Item::fail(
            NAME,
            format!("{} has no directory", socket.display()),
            "give --admin-socket an absolute path",
        );
    };
    if let Some(item) = private_dir(NAME, dir) {
        return item;
    }
    let daemon = std::os::unix::net::UnixStream::connect(socket).is_ok();
    Item::ok(
        NAME,
        if daemon {
            format!("{} (a daemon answers there now)", socket.display())
        } else if dir.exists() {
            format!("{} can be bound in {}", socket.display(), dir.display())
        } else {
            format!("{} will be created by serve", dir.display())
        },
    )
}

pub fn state_dir(dir: &Path) -> Item {
    const NAME: &str = "state dir";
    if let Some(item) = private_dir(NAME, dir) {
        return item;
    }
    Item::ok(
        NAME,
        if dir.exists() {
            format!("{} is writable", dir.display())
        } else {
            format!("{} will be created by serve", dir.display())
        },
    )
}

/// A failure when `dir` is not a directory, cannot be written or created,
/// or others may write to it.
fn private_dir(name: &'static str, dir: &Path) -> Option<Item> {
    if !dir.exists() {
        let parent = nearest_existing(dir);
        return (!writable(parent)).then(|| {
            Item::fail(
                name,
                format!(
                    "{} does not exist and {} is not writable",
                    dir.display(),
                    parent.display()
                ),
                format!("create {} (root-owned, mode 0700)", dir.display()),
            )
        });
    }
    let Ok(meta) = std::fs::metadata(dir) else {
        return Some(Item::fail(
            name,
            format!("cannot read {}", dir.display()),
            "check its permissions",
        ));
    };
    if !meta.is_dir() {
        return Some(Item::fail(
            name,
            format!("{} is not a directory", dir.display()),
            "point the setting at a directory",
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Some(Item::fail(
            name,
            format!(
                "{} is writable by group or others (mode {:o})",
                dir.display(),
                meta.mode() & 0o7777
            ),
            format!("chmod go-w {}", dir.display()),
        ));
    }
    (!writable(dir)).then(|| {
        Item::fail(
            name,
            format!("{} is not writable", dir.display()),
            "run as root",
        )
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn directories_others_may_write_fail() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!state_dir(&private).is_failure());
        assert!(!admin_socket_dir(&private.join("admin.sock")).is_failure());
        assert!(!state_dir(&private.join("not-yet")).is_failure());

        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o777)).unwrap();
        let item = admin_socket_dir(&private.join("admin.sock"));
        assert!(item.line().contains("fix: chmod go-w"), "{}", item.line());

        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(state_dir(&file).is_failure());
        assert!(bpffs(dir.path()).is_failure(), "a tmpdir is not bpffs");
    }
}
