//! `cargo xtask test`: unit tests, then the root-only integration tests.
use anyhow::Result;

use crate::cmd::{self, command};
use crate::{bench, build, install, paths, setup};

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
    // 2-core machine.
    cmd::run(
        command(&[
            "cargo",
            "test",
            "--release",
            "-p",
            "integration-tests",
            "--",
            "--include-ignored",
            "--test-threads=2",
        ])
        .current_dir(paths::root())
        .env("MDR_BIN", &bin)
        .env("MDR_FAKE_NOVA", &fake_nova)
        .env("MDR_GUEST_DIR", paths::guest_dir()),
    )?;

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
