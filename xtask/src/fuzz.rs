//! `cargo xtask fuzz [--seconds N]`: the fuzz targets of metadata-user
//! (`src/fuzz/`), each run for N seconds with fresh seeds instead of the
//! few hundred cases an ordinary `cargo test` gives them. Needs no root.
use anyhow::Result;

use crate::cmd::{self, command};
use crate::paths;

pub fn run(seconds: u64) -> Result<()> {
    cmd::run(
        command(&[
            "cargo",
            "test",
            "--release",
            "-p",
            "metadata-user",
            "fuzz::",
            "--",
            "--nocapture",
            // Two at a time: the guest and nova targets run servers.
            "--test-threads=2",
        ])
        .current_dir(paths::root())
        .env("MDR_FUZZ_SECONDS", seconds.to_string()),
    )
}
