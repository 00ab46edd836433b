//! `cargo xtask build`.
use std::path::PathBuf;

use anyhow::Result;

use crate::cmd::{self, command};
use crate::paths;
use crate::setup;

/// Sets up what is missing, then builds the release binary; returns its path.
/// metadata-user's build script builds the eBPF programs with nightly and
/// bpf-linker, which is why setup comes first.
pub fn release() -> Result<PathBuf> {
    setup::ensure(setup::Report::OnlyChanges)?;
    cmd::run(
        command(&["cargo", "build", "--release", "-p", "metadata-user"]).current_dir(paths::root()),
    )?;
    Ok(paths::release_bin())
}

/// Builds the fake nova-api-metadata the OpenStack-mode tests run; returns
/// its path.
pub fn fake_nova() -> Result<PathBuf> {
    cmd::run(
        command(&["cargo", "build", "--release", "-p", "fake-nova"]).current_dir(paths::root()),
    )?;
    Ok(paths::target().join("release/fake-nova"))
}
