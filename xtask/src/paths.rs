//! Where things are in the workspace.
use std::path::PathBuf;

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .canonicalize()
        .expect("the workspace root exists")
}

pub fn target() -> PathBuf {
    mdr_harness::env::target_dir()
}

/// The daemon binary `cargo xtask build` makes.
pub fn release_bin() -> PathBuf {
    target().join("release/metadata-redirector")
}

/// The test guest's kernel and modules (see `guest_kernel`).
pub fn guest_dir() -> PathBuf {
    target().join("guest")
}

/// Where `run --demo` keeps its daemon's state.
pub fn demo_dir() -> PathBuf {
    target().join("demo")
}
