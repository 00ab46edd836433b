//! Binding a unix socket only root can reach: the admin API's and the
//! neutron-metadata-agent protocol's sockets are bound the same way.
//!
//! Two promises, whatever the umask and whoever else is on the host:
//!
//! - **Never take over a live socket.** A socket file already at the path is
//!   removed only when nothing answers on it (a daemon that was killed left
//!   it). If something answers, binding fails. The socket is then put in
//!   place with link(2), which fails if the name has appeared in between,
//!   instead of rename(2), which would silently replace it.
//! - **Never reachable with the umask's mode, not even for an instant.**
//!   bind(2) creates the socket file with mode `0777 & !umask`; it is bound
//!   inside a fresh directory of mode 0700, chmodded to `mode` there, and
//!   only then linked to its path. Nobody but root can enter the directory,
//!   so nobody can connect before the mode is right.
use std::{
    fs::{self, DirBuilder},
    io,
    os::unix::{
        fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

/// Binds a listening unix socket at `path` with permissions `mode`.
/// `what` names the socket in errors (its flag, e.g. `--admin-socket`).
///
/// Creates the parent directory (0755) when missing. The listener is
/// blocking; callers set it non-blocking for their runtime.
pub fn bind(path: &Path, mode: u32, what: &str) -> anyhow::Result<UnixListener> {
    let context = || format!("{what} {}", path.display());
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .with_context(|| format!("{}: the path has no file name", context()))?;
    if !parent.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .with_context(|| format!("{}: creating {}", context(), parent.display()))?;
    }
    remove_stale_socket(path).with_context(context)?;

    let staging = Staging::create(parent, file_name).with_context(context)?;
    let staged = staging.path.join("socket");
    let listener = UnixListener::bind(&staged)
        .with_context(|| format!("{}: binding {}", context(), staged.display()))?;
    fs::set_permissions(&staged, fs::Permissions::from_mode(mode))
        .with_context(|| format!("{}: chmod {mode:o}", context()))?;
    match fs::hard_link(&staged, path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => bail!(
            "{}: another process created it while we were binding; not replacing it",
            context()
        ),
        Err(err) => return Err(err).with_context(|| format!("{}: placing it", context())),
    }
    Ok(listener)
}

/// Removes a socket file nothing listens on any more. Fails for anything
/// else at `path`: a live socket (another daemon), or a file that is not a
/// socket.
fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).context("cannot inspect it"),
    };
    if !metadata.file_type().is_socket() {
        bail!("exists and is not a socket; not removing it");
    }
    match UnixStream::connect(path) {
        Ok(_) => bail!("another process is serving it; not taking it over"),
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
            fs::remove_file(path).context("cannot remove the stale socket")
        }
        Err(err) => Err(err).context("cannot check whether it is still served"),
    }
}

/// A directory of mode 0700 next to the socket's path (same filesystem, so
/// the socket can be linked from it), removed with whatever is in it on drop.
struct Staging {
    path: PathBuf,
}

impl Staging {
    fn create(parent: &Path, file_name: &std::ffi::OsStr) -> anyhow::Result<Self> {
        let path = parent.join(format!(
            ".{}.{}.binding",
            file_name.to_string_lossy(),
            std::process::id()
        ));
        // Left by a process of the same pid that died while binding.
        match fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("removing {}", path.display())),
        }
        DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use std::{ffi::CString, os::fd::AsRawFd as _};

    use super::*;

    /// What inotify saw happen in a directory: (event mask, entry name).
    struct DirWatch {
        fd: std::os::fd::OwnedFd,
    }

    impl DirWatch {
        fn new(dir: &Path) -> Self {
            // SAFETY: plain syscalls; the fd is checked and then owned.
            let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
            assert!(fd >= 0, "inotify_init1: {}", io::Error::last_os_error());
            let fd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
            let dir = CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
            let mask = libc::IN_CREATE | libc::IN_ATTRIB | libc::IN_MOVED_TO;
            // SAFETY: a valid inotify fd and NUL-terminated path.
            let wd = unsafe {
                libc::inotify_add_watch(std::os::fd::AsRawFd::as_raw_fd(&fd), dir.as_ptr(), mask)
            };
            assert!(wd >= 0, "inotify_add_watch: {}", io::Error::last_os_error());
            Self { fd }
        }

        fn events(&self) -> Vec<(u32, String)> {
            let mut buffer = vec![0u8; 64 * 1024];
            // SAFETY: reading into a buffer we own, of the length we pass.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                )
            };
            let mut events = Vec::new();
            let mut offset = 0;
            let header = std::mem::size_of::<libc::inotify_event>();
            while n > 0 && offset + header <= n as usize {
                // SAFETY: the kernel wrote a whole inotify_event here.
                let event: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buffer[offset..].as_ptr().cast()) };
                let name = &buffer[offset + header..offset + header + event.len as usize];
                let name = String::from_utf8_lossy(name)
                    .trim_end_matches('\0')
                    .to_owned();
                events.push((event.mask, name));
                offset += header + event.len as usize;
            }
            events
        }
    }

    /// The socket's file appears at its path once, already with its final
    /// mode: nothing is chmodded after it appears (the neutron socket used
    /// to be), and no socket appears in the directory under another name
    /// (the admin socket used to be bound as `.admin.sock.PID` with the
    /// umask's mode before the rename). Only the 0700 staging directory does.
    #[test]
    fn the_socket_appears_only_at_its_path_and_only_with_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let watch = DirWatch::new(dir.path());
        let _listener = bind(&path, 0o600, "--test-socket").unwrap();

        let events = watch.events();
        let mut socket_entries = Vec::new();
        for (mask, name) in &events {
            if mask & libc::IN_ISDIR != 0 {
                assert!(name.ends_with(".binding"), "{events:?}");
                continue;
            }
            assert_eq!(
                name, "agent.sock",
                "a socket appeared elsewhere: {events:?}"
            );
            socket_entries.push(*mask);
        }
        assert_eq!(
            socket_entries,
            [libc::IN_CREATE],
            "the socket should appear once and never change mode after: {events:?}"
        );
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "the staging directory is gone"
        );
        UnixStream::connect(&path).expect("the bound socket answers");
    }

    #[test]
    fn a_live_socket_is_never_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let live = UnixListener::bind(&path).unwrap();
        let err = bind(&path, 0o600, "--admin-socket").unwrap_err();
        assert!(
            format!("{err:#}").contains("another process is serving it"),
            "{err:#}"
        );
        // Still the live one's: a client reaches it.
        let _client = UnixStream::connect(&path).unwrap();
        live.set_nonblocking(true).unwrap();
        assert!(live.accept().is_ok(), "the live socket lost its path");
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/admin.sock");
        drop(bind(&path, 0o600, "--admin-socket").unwrap());
        // The listener is gone, its file stays: stale.
        let _listener = bind(&path, 0o600, "--admin-socket").unwrap();
        UnixStream::connect(&path).unwrap();

        let file = dir.path().join("file");
        fs::write(&file, "x").unwrap();
        let err = bind(&file, 0o600, "--admin-socket").unwrap_err();
        assert!(format!("{err:#}").contains("is not a socket"), "{err:#}");
        assert_eq!(fs::read_to_string(&file).unwrap(), "x");
    }
}
