//! metadata-redirector: one host-wide metadata service for the guests of a
//! hypervisor, fed by an eBPF program on each VM tap.
mod admin;
mod backend;
mod check;
mod cli;
mod datapath;
mod exporter;
mod ingress;
mod logging;
mod metrics;
mod notify;
mod serve;
mod state;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
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
