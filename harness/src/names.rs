//! Unique names for everything a test creates.
//!
//! Global names (network namespaces, bpffs directories, temporary
//! directories) look like `mdr-test-<pid>-<counter>-<random>-<role>`: the
//! process id lets [`sweep_stale`] recognise leftovers of a run that died
//! without unwinding (SIGKILL, Ctrl-C), the counter separates the objects of
//! one process, and the random part separates runs that reuse a pid.
//! Interface names only have 15 bytes: a short prefix, then the pid, the
//! counter and a random byte in hex.
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::cmd;

/// Prefix of every global name made by the tests.
pub const TEST_PREFIX: &str = "mdr-test";
/// Prefix of every global name made by `cargo xtask run --demo`.
pub const DEMO_PREFIX: &str = "mdr-demo";
/// Linux's limit for interface names (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

static PREFIX: OnceLock<&'static str> = OnceLock::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Chooses the prefix of this process's global names (default [`TEST_PREFIX`]).
/// Only the first call counts.
pub fn set_prefix(prefix: &'static str) {
    let _ = PREFIX.set(prefix);
}

fn prefix() -> &'static str {
    PREFIX.get_or_init(|| TEST_PREFIX)
}

/// A random value from std's randomly keyed hasher (no dependency needed for
/// a few bits of uniqueness).
pub fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(COUNTER.load(Ordering::Relaxed));
    hasher.finish()
}

fn next() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A global name: `<prefix>-<pid>-<counter>-<random>-<role>`.
pub fn global(role: &str) -> String {
    format!(
        "{}-{}-{}-{:04x}-{role}",
        prefix(),
        std::process::id(),
        next(),
        random_u64() as u16
    )
}

/// An interface name: `<short><pid hex><counter hex><random byte hex>`, at
/// most 15 bytes (`short` may have 3).
pub fn ifname(short: &str) -> String {
    let name = format!(
        "{short}{:x}{:x}{:02x}",
        std::process::id(),
        next(),
        random_u64() as u8
    );
    assert!(
        name.len() <= IFNAME_MAX,
        "interface name {name} is too long; use a shorter prefix"
    );
    name
}

/// The pid a global name of ours carries, if it is one.
fn owner_pid(name: &str) -> Option<u32> {
    [TEST_PREFIX, DEMO_PREFIX].iter().find_map(|prefix| {
        let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
        rest.split('-').next()?.parse().ok()
    })
}

fn is_stale(name: &str) -> bool {
    owner_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes namespaces, bpffs directories and temporary directories left by
/// test or demo processes that are gone. Objects of live processes are left
/// alone, so this is safe while other runs are going on.
pub fn sweep_stale() {
    if let Ok(list) = cmd::run(&["ip", "netns", "list"]) {
        for name in list
            .lines()
            .filter_map(|line| line.split_whitespace().next())
        {
            if is_stale(name) {
                eprintln!("removing stale network namespace {name}");
                crate::netns::kill_all_in(name);
                let _ = cmd::run(&["ip", "netns", "del", name]);
            }
        }
    }
    for dir in [Path::new(crate::bpffs::ROOT), &std::env::temp_dir()] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_stale(&name) {
                eprintln!("removing stale {}", entry.path().display());
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_names_carry_the_pid_and_differ() {
        let a = global("host");
        let b = global("host");
        assert_ne!(a, b);
        assert_eq!(owner_pid(&a), Some(std::process::id()));
        assert!(a.ends_with("-host"));
    }

    #[test]
    fn interface_names_fit_ifnamsiz() {
        let name = ifname("tp");
        assert!(name.len() <= IFNAME_MAX);
        assert_ne!(name, ifname("tp"));
    }

    #[test]
    fn only_our_names_of_dead_processes_are_stale() {
        assert!(!is_stale("cni-1234"));
        assert!(!is_stale(&global("x")));
        // pid_max is at most 2^22, so this pid cannot be running.
        assert!(is_stale("mdr-test-99999999-0-abcd-host"));
        assert!(is_stale("mdr-demo-99999999-3-0000-guest"));
    }
}
