//! `cargo xtask bench [--smoke] [--reps N] [--baseline-rev REV] [-- MDR_BENCH_ARGS...]`:
//! builds the daemon and the benchmark (crate `mdr-bench`, in bench/) in
//! release mode, and the daemon of REV as the baseline (see `baseline`),
//! and runs it as root. The report lands in target/bench/ (a smoke run's
//! in target/bench/smoke/).
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};

use crate::cmd::{self, command};
use crate::{baseline, build, paths, setup};

pub fn run(
    smoke: bool,
    reps: Option<usize>,
    baseline_rev: Option<&str>,
    bench_args: &[String],
) -> Result<()> {
    setup::require_root("run the benchmark (network namespaces, bpffs, haproxy in namespaces)")?;
    let daemon = build::release()?;
    let bench = build_bench()?;
    let baseline = baseline_rev.map(baseline::build).transpose()?;
    let mut bench_cmd = Command::new(&bench);
    if let Some((bin, label)) = &baseline {
        bench_cmd.arg("--baseline-bin").arg(bin);
        bench_cmd.args(["--baseline-label", label]);
    }
    if smoke {
        bench_cmd.arg("--smoke");
    }
    if let Some(reps) = reps {
        bench_cmd.args(["--reps", &reps.to_string()]);
    }
    bench_cmd.args(bench_args);
    bench_cmd.env("MDR_BIN", &daemon);
    // exec: Ctrl-C goes to the benchmark alone, which then removes what it
    // made; xtask has nothing left to do.
    let err = bench_cmd.exec();
    bail!("cannot exec {}: {err}", bench.display())
}

fn build_bench() -> Result<PathBuf> {
    cmd::run(
        command(&["cargo", "build", "--release", "-p", "mdr-bench"]).current_dir(paths::root()),
    )?;
    Ok(paths::target().join("release/mdr-bench"))
}

/// The benchmark with tiny sizes, as part of `cargo xtask test`: it proves
/// every phase still runs end to end (its numbers mean nothing). It writes
/// to target/bench/smoke so a full report in target/bench stays.
pub fn smoke(daemon: &Path) -> Result<()> {
    let bench = build_bench()?;
    let out = paths::target().join("bench/smoke");
    cmd::run(
        Command::new(&bench)
            .arg("--smoke")
            .arg("--out")
            .arg(&out)
            .env("MDR_BIN", daemon),
    )
}
