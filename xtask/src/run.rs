//! `cargo xtask run`: the daemon with its built-in defaults.
use std::os::unix::process::CommandExt as _;
use std::process::Command;

use anyhow::{Result, bail};

use crate::build;

pub fn serve(serve_args: &[String]) -> Result<()> {
    let bin = build::release()?;
    // exec: signals (Ctrl-C, SIGTERM) go straight to the daemon, and its exit
    // status is ours.
    let err = Command::new(&bin).arg("serve").args(serve_args).exec();
    bail!("cannot exec {}: {err}", bin.display())
}
