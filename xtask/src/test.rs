//! `cargo xtask test`: unit tests, then the root-only integration tests.
use anyhow::Result;

use crate::cmd::{self, command};
use crate::{bench, build, install, paths, setup};

/// The test that runs alone (see `run`).
const ALONE: &str = "syn_floods_from_other_guests_do_not_evict_a_quiet_guests_flows";

pub fn run() -> Result<()> {
    // Checked first: the integration tests need root for namespaces, bpffs
    // and taps, and a failure after a long build would only waste time.
    setup::require_root("run the integration tests (network namespaces, bpffs, taps)")?;
    let bin = build::release()?;
    let fake_nova = build::fake_nova()?;
    mdr_harness::names::sweep_stale();

    // --release throughout: it reuses what `build` just compiled instead of
    // building every dependency a second time in the debug profile.
    cmd::run(command(&["cargo", "test", "--release", "--workspace"]).current_dir(paths::root()))?;

    // Two at a time: each test runs its own daemon (and maybe a VM) on a
    // 2-core machine. The SYN flood test times a quiet guest's p99 against
    // a flood and needs both cores to itself: it runs alone, afterwards.
    let integration = |extra: &[&str]| {
        let mut args = vec!["cargo", "test", "--release", "-p", "integration-tests"];
        args.extend_from_slice(extra);
        let mut command = command(&args);
        command
            .current_dir(paths::root())
            .env("MDR_BIN", &bin)
            .env("MDR_FAKE_NOVA", &fake_nova)
            .env("MDR_GUEST_DIR", paths::guest_dir());
        command
    };
    cmd::run(&mut integration(&[
        "--",
        "--include-ignored",
        "--test-threads=2",
        "--skip",
        ALONE,
    ]))?;
    cmd::run(&mut integration(&[
        "--test",
        "isolation",
        "--",
        "--include-ignored",
        "--exact",
        ALONE,
    ]))?;

    // The install as an operator runs it, into a scratch root, and the unit
    // it wrote checked by systemd's own verifier.
    let root = paths::target().join("install-check");
    let _ = std::fs::remove_dir_all(&root);
    cmd::run(
        command(&["cargo", "xtask", "install", "--root"])
            .arg(&root)
            .current_dir(paths::root()),
    )?;
    install::verify_unit(&root)?;
    println!(
        "ok: cargo xtask install --root {}: the unit verifies",
        root.display()
    );
    std::fs::remove_dir_all(&root)?;

    // Last, the benchmark's smoke mode: every phase once, with tiny sizes.
    bench::smoke(&bin)
}
