//! The network namespace the server lives in, so that nothing but the
//! server's own veth can reach it.
//!
//! Were the server address an address of the host's namespace, the host
//! would answer ARP for it on every tenant bridge (`arp_ignore=0`) and accept
//! TCP for it from any interface: any guest could reach the listener around
//! the datapath. In a namespace of its own, the server end of the veth pair
//! is its only interface, and only the datapath sends into the pair.
//!
//! The namespace is persisted as `ip netns add` does it, a bind mount at
//! `/run/netns/NAME`: it outlives the daemon, so the pinned datapath keeps
//! its server end while no daemon runs and a restarted daemon finds it again,
//! and `ip netns exec NAME ...` works on it. Threads enter it with setns(2),
//! which changes only the calling thread: [`ServerNetns::run`] runs a closure
//! on a thread of its own that is inside, and whatever that closure creates
//! (the listening socket, a netlink socket) stays in the namespace for good.
use std::{
    fs::{self, File},
    io,
    os::fd::{AsFd, BorrowedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use nix::{
    errno::Errno,
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
    sys::statfs::{NSFS_MAGIC, fstatfs},
};
use tracing::info;

/// Where `ip netns` keeps its namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Longest name accepted: a file name under `/run/netns`.
const MAX_NAME_BYTES: usize = 255;

/// A namespace under `/run/netns`, held open.
#[derive(Debug)]
pub struct ServerNetns {
    name: String,
    /// The namespace itself (nsfs): keeps it alive while we run, and is what
    /// setns(2) takes.
    file: File,
}

impl ServerNetns {
    /// Opens the namespace `name`, creating (and persisting) it if there is
    /// none.
    pub fn ensure(name: &str) -> anyhow::Result<Self> {
        check_name(name)?;
        let path = path_of(name);
        if let Some(file) = open_netns(&path)? {
            return Ok(Self {
                name: name.to_owned(),
                file,
            });
        }
        create(&path).with_context(|| format!("creating network namespace {name}"))?;
        info!(netns = name, "server namespace created");
        let file = open_netns(&path)?
            .with_context(|| format!("{} is not a namespace after creating it", path.display()))?;
        Ok(Self {
            name: name.to_owned(),
            file,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Runs `task` on a new thread that has entered the namespace, and
    /// returns what it returned. Sockets it creates belong to the namespace.
    pub fn run<T: Send>(&self, task: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        std::thread::scope(|scope| {
            let inside = std::thread::Builder::new()
                .name("server-netns".into())
                .spawn_scoped(scope, || {
                    setns(self.fd(), CloneFlags::CLONE_NEWNET)?;
                    Ok::<T, Errno>(task())
                })
                .context("starting a thread for the server namespace")?;
            match inside.join() {
                Ok(result) => {
                    result.with_context(|| format!("entering network namespace {}", self.name))
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

/// Removes the namespace `name` as `ip netns del` does: its bind mount and
/// file. The namespace itself goes once nothing holds it any more, and its
/// interfaces with it (deleting a veth end deletes its peer).
pub fn delete(name: &str) -> anyhow::Result<()> {
    check_name(name)?;
    let path = path_of(name);
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
        Err(err) => return Err(err).with_context(|| format!("unmounting {}", path.display())),
    }
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("removing {}", path.display())),
    }
}

/// A name `ip netns` would accept: one file name under `/run/netns`.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > MAX_NAME_BYTES
        || name == "."
        || name == ".."
        || name.contains(['/', '\0'])
    {
        bail!(
            "{name:?} is not a usable network namespace name (1-{MAX_NAME_BYTES} bytes, \
             a file name under {NETNS_RUN_DIR}: no '/', not '.' or '..')"
        );
    }
    Ok(())
}

fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// The namespace at `path`, or None when there is none: no file, or a file
/// with nothing mounted on it (left by a creation that was cut short).
fn open_netns(path: &Path) -> anyhow::Result<Option<File>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("opening {}", path.display())),
    };
    let fs = fstatfs(&file).with_context(|| format!("statfs {}", path.display()))?;
    Ok((fs.filesystem_type() == NSFS_MAGIC).then_some(file))
}

/// Makes a new namespace and bind-mounts it at `path`, as `ip netns add`.
fn create(path: &Path) -> anyhow::Result<()> {
    prepare_run_dir()?;
    // The mount point; a file left by an earlier attempt is reused.
    File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let target = path.to_owned();
    let made = std::thread::Builder::new()
        .name("new-netns".into())
        .spawn(move || -> nix::Result<()> {
            // Only this thread moves into the new namespace; it ends right
            // after, and the bind mount keeps the namespace.
            unshare(CloneFlags::CLONE_NEWNET)?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        })
        .context("starting a thread to create the namespace")?
        .join()
        .map_err(|_| anyhow::anyhow!("the thread creating the namespace panicked"))?;
    if let Err(err) = made {
        let _ = fs::remove_file(path);
        return Err(err).with_context(|| format!("unshare and bind-mount at {}", path.display()));
    }
    Ok(())
}

/// `/run/netns` as iproute2 sets it up: a shared mount, so that a namespace
/// mounted there shows in mount namespaces made later (`ip netns exec`,
/// services with private mounts) and its removal too.
fn prepare_run_dir() -> anyhow::Result<()> {
    fs::create_dir_all(NETNS_RUN_DIR).with_context(|| format!("creating {NETNS_RUN_DIR}"))?;
    let shared = || {
        mount(
            None::<&str>,
            NETNS_RUN_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        // Not a mount point yet: make it one (bound onto itself), then share it.
        Err(Errno::EINVAL) => {
            mount(
                Some(NETNS_RUN_DIR),
                NETNS_RUN_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .with_context(|| format!("bind-mounting {NETNS_RUN_DIR} onto itself"))?;
            shared().with_context(|| format!("making {NETNS_RUN_DIR} a shared mount"))
        }
        Err(err) => Err(err).with_context(|| format!("making {NETNS_RUN_DIR} a shared mount")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_one_file_name() {
        for good in [
            "metadata-redirector",
            "mdr-test-1-2-ab-srv",
            "a",
            &"x".repeat(255),
        ] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "/abs", "nul\0", &"x".repeat(256)] {
            let err = check_name(bad).unwrap_err().to_string();
            assert!(err.contains(NETNS_RUN_DIR), "{bad:?}: {err}");
        }
    }
}
