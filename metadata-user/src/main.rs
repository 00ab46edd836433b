//! metadata-redirector: one host-wide metadata service for the guests of a
//! hypervisor, fed by an eBPF program on each VM tap.
mod admin;
mod backend;
mod check;
mod cli;
mod datapath;
mod discovery;
mod exporter;
#[cfg(test)]
mod fuzz;
mod ingress;
mod logging;
mod metrics;
mod notify;
mod private_socket;
mod serve;
mod state;

use std::process::ExitCode;

use clap::Parser as _;

/// glibc's malloc arenas the daemon may use. Each thread that meets a
/// locked arena gets one of its own (up to 8 per core), and memory freed
/// into an arena stays resident there until trimmed; two bound how many
/// places freed registry snapshots can pile up in, at the cost of a little
/// lock contention. (mimalloc, tried instead, kept 40+ MiB of freed pages
/// committed: docs/benchmark.md.)
const MALLOC_ARENAS: libc::c_int = 2;

fn main() -> ExitCode {
    // SAFETY: mallopt before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        // No fastbins (the per-thread tcache stays). A guest's answer body
        // is often above 1 KiB (meta_data.json with its seed), and every
        // allocation that size first merged all fastbin chunks back
        // (malloc_consolidate): about 650 of the 22,700 instructions a new
        // connection's request cost (callgrind, docs/benchmark.md).
        libc::mallopt(libc::M_MXFAST, 0);
    }
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Serve(args) => serve::run(*args, cli.admin_socket),
        cli::Command::Check(args) => {
            cli::settings::Settings::resolve(*args, cli.admin_socket).and_then(check::run)
        }
        cli::Command::Identity(command) => cli::identity::run(command),
        command => admin::client::run(&cli.admin_socket, command),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // One line, naming what was wrong: scripts and operators read this.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
