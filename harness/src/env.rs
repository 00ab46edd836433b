//! Where the tests find the daemon binary and the guest kernel.
//!
//! `cargo xtask test` sets `MDR_BIN` (the release binary), `MDR_FAKE_NOVA`
//! (the fake nova-api-metadata) and `MDR_GUEST_DIR` (what `cargo xtask
//! setup` unpacked); without them, the workspace's own `target/` is used, so
//! `cargo test -p integration-tests -- --ignored` works after a `cargo
//! build --release -p metadata-user -p fake-nova`.
use std::path::PathBuf;

/// The workspace's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let harness_crate = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
            harness_crate
                .parent()
                .unwrap_or(harness_crate)
                .join("target")
        })
}

/// The `metadata-redirector` binary under test.
pub fn mdr_bin() -> PathBuf {
    std::env::var_os("MDR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("release/metadata-redirector"))
}

/// The `fake-nova` binary (crate `fake-nova`) the OpenStack-mode tests run.
pub fn fake_nova_bin() -> PathBuf {
    std::env::var_os("MDR_FAKE_NOVA")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("release/fake-nova"))
}

/// The directory with `vmlinuz` and `modules/*.ko` for [`crate::QemuGuest`].
pub fn guest_dir() -> PathBuf {
    std::env::var_os("MDR_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("guest"))
}
