//! `cargo xtask bench [--smoke] [--reps N]`: builds the daemon and the
//! benchmark (crate `mdr-bench`, in bench/) in release mode and runs it as
//! root. The report lands in target/bench/ (a smoke run's in
//! target/bench/smoke/).
use std::os::unix::process::CommandExt as _;
use std::process::Command;

use anyhow::{Result, bail};

use crate::cmd::{self, command};
use crate::{build, paths, setup};

pub fn run(smoke: bool, reps: Option<usize>) -> Result<()> {
    setup::require_root("run the benchmark (network namespaces, bpffs, haproxy in namespaces)")?;
    let daemon = build::release()?;
    cmd::run(
        command(&["cargo", "build", "--release", "-p", "mdr-bench"]).current_dir(paths::root()),
    )?;
    let bench = paths::target().join("release/mdr-bench");
    let mut bench_cmd = Command::new(&bench);
    if smoke {
        bench_cmd.arg("--smoke");
    }
    if let Some(reps) = reps {
        bench_cmd.args(["--reps", &reps.to_string()]);
    }
    bench_cmd.env("MDR_BIN", &daemon);
    // exec: Ctrl-C goes to the benchmark alone, which then removes what it
    // made; xtask has nothing left to do.
    let err = bench_cmd.exec();
    bail!("cannot exec {}: {err}", bench.display())
}
