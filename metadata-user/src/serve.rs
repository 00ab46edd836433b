//! `metadata-redirector serve`: wires the store, datapath, admin API and guest server together.
use std::process::ExitCode;

use crate::cli::ServeArgs;

pub fn run(_args: ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
