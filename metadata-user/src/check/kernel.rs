//! The kernel: its version, BTF, and TCX.
//!
//! The minimum is 6.6: the server end of the veth pair always carries a TCX
//! link (`tcx_egress`), which 6.6 introduced. With TCX there, `--tap-attach
//! tc` (cls_bpf filters on the taps) is the choice that attaches a tap in
//! 0.1 ms instead of an RCU grace period; `tcx` is the default.
use crate::datapath::TapAttach;

use super::Item;

/// The oldest kernel the daemon runs on: TCX.
pub const MIN_KERNEL: (u32, u32) = (6, 6);

/// Where the kernel exposes its BTF (CONFIG_DEBUG_INFO_BTF).
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The running kernel's release string (`uname -r`).
pub fn release() -> String {
    // SAFETY: uname fills the zeroed struct it is given.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut name) } != 0 {
        return String::new();
    }
    // SAFETY: the kernel NUL-terminates every field.
    unsafe { std::ffi::CStr::from_ptr(name.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// "6.18.44-fc" -> (6, 18).
pub fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The kernel item: the line `check` prints, and what `serve` refuses with.
pub fn version_item(release: &str) -> Item {
    let (min_major, min_minor) = MIN_KERNEL;
    match parse_version(release) {
        Some(version) if version >= MIN_KERNEL => Item::ok(
            "kernel",
            format!("{release} (at least {min_major}.{min_minor})"),
        ),
        Some(_) => Item::fail(
            "kernel",
            format!(
                "{release} is older than {min_major}.{min_minor}, the first with TCX, which the \
                 server end of the veth pair is attached with"
            ),
            format!("boot a {min_major}.{min_minor} or newer kernel"),
        ),
        None => Item::warn(
            "kernel",
            format!("cannot tell the version of {release:?}; {min_major}.{min_minor} is needed"),
        ),
    }
}

/// `serve` runs on no kernel this refuses.
pub fn require_supported() -> anyhow::Result<()> {
    let item = version_item(&release());
    if item.is_failure() {
        anyhow::bail!("{}", item.line());
    }
    Ok(())
}

pub fn items(tap_attach: TapAttach) -> Vec<Item> {
    let release = release();
    let version = version_item(&release);
    let tcx_ok = !version.is_failure();
    let btf = if std::path::Path::new(VMLINUX_BTF).exists() {
        Item::ok(
            "BTF",
            format!("{VMLINUX_BTF} (the pinned maps carry their types)"),
        )
    } else {
        Item::fail(
            "BTF",
            format!("{VMLINUX_BTF} is missing: the kernel has no BTF"),
            "a kernel built with CONFIG_DEBUG_INFO_BTF=y (every major distribution's is)",
        )
    };
    let tcx = if !tcx_ok {
        Item::fail(
            "TCX",
            "not available before 6.6",
            "boot a 6.6 or newer kernel (the server end needs TCX whatever --tap-attach says)",
        )
    } else {
        Item::ok(
            "TCX",
            match tap_attach {
                TapAttach::Tcx => {
                    "available; taps are attached with TCX links (--tap-attach tcx); \
                     --tap-attach tc attaches each in about 0.1 ms instead of 10-20 ms"
                }
                TapAttach::Tc => {
                    "available for the server end; taps get cls_bpf filters (--tap-attach tc)"
                }
                TapAttach::TcBlock => {
                    "available for the server end; taps share one tc filter block \
                     (--tap-attach tc-block)"
                }
            },
        )
    };
    vec![version, btf, tcx]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_and_compared() {
        assert_eq!(parse_version("6.18.44-fc-v595"), Some((6, 18)));
        assert_eq!(parse_version("6.6.0"), Some((6, 6)));
        assert_eq!(parse_version("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(parse_version("weird"), None);
        assert!(!version_item("6.6.1").is_failure());
        assert!(!version_item("7.0.0").is_failure());
        let old = version_item("6.1.0-18-amd64");
        assert!(old.is_failure());
        assert!(
            old.line().contains("6.1.0-18-amd64 is older than 6.6"),
            "{}",
            old.line()
        );
        assert!(
            old.line().contains("fix: boot a 6.6 or newer kernel"),
            "{}",
            old.line()
        );
    }
}
