//! `cargo xtask`: set up, build, run and test metadata-redirector.
mod baseline;
mod bench;
mod build;
mod cmd;
mod demo;
mod fuzz;
mod guest_kernel;
mod install;
mod paths;
mod run;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run and test metadata-redirector"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: Debian packages, rust-src, bpf-linker, the
    /// test guest's kernel, the bpffs mount. Idempotent.
    Setup,
    /// Set up if needed, then build the release binary
    /// (target/release/metadata-redirector).
    Build,
    /// Build, then run `metadata-redirector serve` with its defaults.
    Run {
        /// Instead: run a sandboxed daemon with two guests that share an IP
        /// and a MAC, show both their answers, and serve until Ctrl-C.
        #[arg(long)]
        demo: bool,
        /// Extra arguments for `serve` (after `--`).
        #[arg(last = true)]
        serve_args: Vec<String>,
    },
    /// Unit tests, then the root-only integration tests (needs root).
    Test,
    /// Run each fuzz target of the daemon (instance documents, the admin
    /// API, guest requests over the wire, the neutron proxy's headers, a
    /// hostile nova) for a while; `cargo test` runs them briefly. A
    /// failure prints the smallest failing input and MDR_FUZZ_REPLAY to
    /// replay it.
    Fuzz {
        /// How long each of the five targets runs.
        #[arg(long, value_name = "N", default_value_t = 60)]
        seconds: u64,
    },
    /// Build, then install the binary (/usr/local/bin), the systemd unit
    /// (/etc/systemd/system/metadata-redirector.service) and, unless one is
    /// there, the commented config (/etc/metadata-redirector/config.toml).
    /// Starts and enables nothing.
    Install {
        /// Install under this directory instead of / (for packaging or a look).
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: std::path::PathBuf,
    },
    /// Build, then benchmark the daemon against the neutron-style path
    /// (haproxy per network) and the server alone; needs root. Writes
    /// target/bench/report.md, report.json and PNG plots.
    Bench {
        /// Tiny sizes and one repetition: checks every phase works.
        #[arg(long)]
        smoke: bool,
        /// Repetitions of every measurement (medians are reported) [default: 3].
        #[arg(long, value_name = "N")]
        reps: Option<usize>,
        /// Also measure the daemon built from this commit (in a temporary
        /// git worktree) on our path, side by side: the report compares
        /// CPU per request and throughput with it.
        #[arg(long, value_name = "REV")]
        baseline_rev: Option<String>,
        /// Extra arguments for mdr-bench (after `--`), e.g.
        /// `-- --phases storm --storm-guests 500`; see `mdr-bench --help`.
        #[arg(last = true)]
        bench_args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup::ensure(setup::Report::Everything),
        Task::Build => build::release().map(drop),
        Task::Run {
            demo: false,
            serve_args,
        } => run::serve(&serve_args),
        Task::Run {
            demo: true,
            serve_args,
        } => demo::run(&serve_args),
        Task::Test => test::run(),
        Task::Fuzz { seconds } => fuzz::run(seconds),
        Task::Install { root } => install::run(&root),
        Task::Bench {
            smoke,
            reps,
            baseline_rev,
            bench_args,
        } => bench::run(smoke, reps, baseline_rev.as_deref(), &bench_args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
