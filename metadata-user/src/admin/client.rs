//! CLI side of the admin API (owned by the control-plane work).
use std::{path::Path, process::ExitCode};

use crate::cli::Command;

pub fn run(_admin_socket: &Path, _command: Command) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
