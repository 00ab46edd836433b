//! `mdr-bench`: metadata-redirector measured side by side with the
//! neutron-style path (router namespace, iptables REDIRECT, haproxy) and the
//! server alone, at hypervisor density, in one run on one machine.
//!
//! Run it through `cargo xtask bench [--smoke] [--reps N]`, as root. Every
//! namespace, process and bpffs pin it makes carries its pid in the name and
//! is removed on exit, on error and on Ctrl-C (the harness's types clean up
//! on drop; the run stops between measurements); leftovers of a killed run
//! are swept at the next start. No traffic is sent from the machine's own
//! network namespace: all load starts inside guest namespaces (or goes to
//! the daemon's unix socket).
mod admin_status;
mod baseline_store;
mod bpfstats;
mod conn;
mod cpu;
mod density;
mod discovery;
mod drops;
mod http1;
mod iperf;
mod load;
mod machine;
mod neutron;
mod nsnet;
mod parallel;
mod phases;
mod plan;
mod plot;
mod profile;
mod report;
/// The answers file the responder reads (its format is written once, there).
#[path = "responder/answers.rs"]
#[allow(dead_code)] // The responder's reading half.
mod responder_answers;
mod results;
mod stats;
mod storm;
mod world;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use mdr_harness::names;

use crate::plan::Plan;
use crate::results::Results;
use crate::world::{PathKind, World};

#[derive(Parser)]
#[command(
    name = "mdr-bench",
    about = "Benchmark metadata-redirector against the neutron-style path"
)]
struct Args {
    /// Tiny sizes, one repetition: checks every phase works (well under a minute).
    #[arg(long)]
    smoke: bool,
    /// Repetitions of every measurement; the report shows medians [default: 3, smoke: 1].
    #[arg(long)]
    reps: Option<usize>,
    /// Where report.md, report.json and the plots go [default: target/bench,
    /// smoke: target/bench/smoke].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Only these phases (for investigating one of them).
    #[arg(long, value_delimiter = ',', value_name = "PHASE,...")]
    phases: Option<Vec<Phase>>,
    /// Override the concurrent guest counts of the metadata phase.
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    load_guests: Option<Vec<usize>>,
    /// Override the boot-storm sizes.
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    storm_guests: Option<Vec<usize>>,
    /// Override the numbers of taps of the density phase, comma-separated
    /// (each a row of its own: e.g. 100,1000,10000).
    #[arg(long, value_name = "N,...", value_delimiter = ',')]
    density_taps: Option<Vec<usize>>,
    /// The `--tap-attach` modes the density phase measures, comma-separated
    /// [default: tcx,tc,tc-block].
    #[arg(long, value_name = "MODE,...", value_delimiter = ',', value_enum)]
    density_attach: Option<Vec<world::TapAttach>>,
    /// Leave out the density phase's neutron-style networks (when only our
    /// rows are rerun, e.g. at 10,000 ports).
    #[arg(long)]
    density_no_neutron: bool,
    /// Override the number of domains of the discovery phase.
    #[arg(long, value_name = "N")]
    discovery_domains: Option<usize>,
    /// Override the measured seconds per metadata cell.
    #[arg(long, value_name = "SECONDS")]
    seconds: Option<f64>,
    /// Another build of the daemon (e.g. an older commit's) to measure on
    /// our path in the same run, as the `baseline` path: CPU per request
    /// and throughput side by side (`cargo xtask bench --baseline-rev REV`
    /// builds one).
    #[arg(long, value_name = "PATH")]
    baseline_bin: Option<PathBuf>,
    /// What the report calls the baseline build [default: its file name].
    #[arg(long, value_name = "NAME", requires = "baseline_bin")]
    baseline_label: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    Metadata,
    Storm,
    Iperf,
    Flood,
    Density,
    Discovery,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Fails once Ctrl-C (or SIGTERM/SIGHUP) came: the error unwinds through
/// everything built so far, whose Drops remove it.
pub fn check_stop() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// One line per step, flushed at once (the run takes minutes).
pub fn progress(line: &str) {
    println!("[bench] {line}");
}

fn main() -> ExitCode {
    let args = Args::parse();
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mdr-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("mdr-bench needs root (network namespaces, bpffs): run `cargo xtask bench`");
    }
    let started = Instant::now();
    let mut plan = Plan::new(args.smoke, args.reps)?;
    if let Some(sizes) = args.load_guests {
        plan.load_guests = sizes;
    }
    if let Some(sizes) = args.storm_guests {
        plan.storm_guests = sizes;
    }
    if let Some(taps) = args.density_taps {
        plan.density_taps = taps;
    }
    if let Some(modes) = args.density_attach {
        plan.density_attach = modes;
    }
    if args.density_no_neutron {
        plan.density_networks = 0;
    }
    if let Some(domains) = args.discovery_domains {
        plan.discovery_domains = domains;
    }
    if let Some(seconds) = args.seconds {
        plan.measure = std::time::Duration::from_secs_f64(seconds);
    }
    let phases = args.phases.unwrap_or_else(|| {
        vec![
            Phase::Metadata,
            Phase::Storm,
            Phase::Iperf,
            Phase::Flood,
            Phase::Density,
            Phase::Discovery,
        ]
    });
    let out = args.out.unwrap_or_else(|| {
        // A smoke run never overwrites the last full run's report.
        let bench = mdr_harness::env::target_dir().join("bench");
        if plan.smoke {
            bench.join("smoke")
        } else {
            bench
        }
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    names::sweep_stale();
    let machine = machine::info();
    progress(&format!(
        "{} run, {} repetition(s), on {} ({} cores, {}), kernel {}",
        if plan.smoke { "smoke" } else { "full" },
        plan.reps,
        machine.cpu_model,
        machine.cores,
        machine.date,
        machine.kernel
    ));
    let mut results = Results {
        machine,
        plan: plan.clone(),
        daemon_config: world::DAEMON_CONFIG,
        load_runs: Vec::new(),
        storm_runs: Vec::new(),
        iperf: Default::default(),
        daemon_after_load: Default::default(),
        baseline: args.baseline_bin.as_ref().map(|bin| {
            args.baseline_label.clone().unwrap_or_else(|| {
                bin.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
        }),
        receive_profiles: Vec::new(),
        density_ours: Vec::new(),
        density_neutron: None,
        flood: None,
        discovery: None,
        duration_s: 0.0,
        failures: Vec::new(),
        histograms: BTreeMap::new(),
    };
    // A failing phase is recorded and the others still run, so a long run
    // always leaves a report; the exit status says it failed.
    if let Some(bin) = &args.baseline_bin
        && !bin.is_file()
    {
        bail!("--baseline-bin {} does not exist", bin.display());
    }
    if phases
        .iter()
        .any(|p| !matches!(p, Phase::Density | Phase::Discovery))
    {
        let outcome = measure_paths(&plan, &phases, args.baseline_bin, &mut results, &out);
        record("metadata/storm/iperf/flood", outcome, &mut results)?;
    }
    if phases.contains(&Phase::Density) {
        let outcome = density(&plan, &mut results, &out);
        record("density", outcome, &mut results)?;
    }
    if phases.contains(&Phase::Discovery) {
        let outcome = discovery(&plan, &mut results, &out);
        record("discovery", outcome, &mut results)?;
    }
    results.duration_s = started.elapsed().as_secs_f64();
    report::write(&results, &out)?;
    plot::write_all(&results, &out)?;
    progress(&format!(
        "done in {:.0} s: {} (and report.json, *.png)",
        results.duration_s,
        out.join("report.md").display()
    ));
    if !results.failures.is_empty() {
        bail!(
            "{} phase(s) failed: {}",
            results.failures.len(),
            results.failures.join("; ")
        );
    }
    Ok(())
}

/// Notes a failed phase in the results; an interruption ends the run.
fn record(phase: &str, outcome: Result<()>, results: &mut Results) -> Result<()> {
    if let Err(err) = outcome {
        check_stop()?;
        progress(&format!("FAILED {phase}: {err:#}"));
        results.failures.push(format!("{phase}: {err:#}"));
    }
    Ok(())
}

/// Keeps a daemon's log next to the report when its phase failed.
fn keep_log(daemon: &mdr_harness::Daemon, out: &std::path::Path, name: &str) {
    let path = out.join(name);
    if std::fs::write(&path, daemon.log()).is_ok() {
        progress(&format!("daemon log kept in {}", path.display()));
    }
}

/// 4. Density, each side in a world of its own.
fn density(plan: &Plan, results: &mut Results, out: &std::path::Path) -> Result<()> {
    check_stop()?;
    // Each size and both attach modes, each with a fresh daemon and fresh
    // taps, so they are compared on the same machine in the same run.
    for &taps in &plan.density_taps {
        progress(&format!("density: attaching {taps} taps one by one"));
        for &tap_attach in &plan.density_attach {
            check_stop()?;
            let ours = density::ours(taps, tap_attach, |daemon| {
                keep_log(
                    daemon,
                    out,
                    &format!("daemon-density-{}-{taps}.log", tap_attach.flag()),
                )
            })?;
            progress(&format!(
                "density ({}, {} ports): instance put API median {:.2} ms; attach median {:.2} ms, p99 {:.2} ms (API {:.2} / {:.2} ms); at {} ports CLI {:.2} / {:.2} ms, API {:.2} / {:.2} ms; daemon RSS {:.1} MiB; BPF maps {:.1} MiB; port list {:.1} ms; restart to served {:.0} ms",
                tap_attach.flag(),
                ours.taps,
                ours.api_instance_put_median_ms(),
                ours.attach_median_ms(),
                ours.attach_p99_ms(),
                ours.api_attach_median_ms(),
                ours.api_attach_p99_ms(),
                ours.taps,
                ours.at_size_cli_median_ms(),
                ours.at_size_cli_p99_ms(),
                ours.at_size_api_median_ms(),
                ours.at_size_api_p99_ms(),
                ours.rss_after_kib as f64 / 1024.0,
                ours.bpf_memlock_bytes() as f64 / 1048576.0,
                ours.port_list_ms,
                ours.restart_served_ms,
            ));
            results.density_ours.push(ours);
        }
    }
    check_stop()?;
    if plan.density_networks == 0 {
        return Ok(());
    }
    progress(&format!(
        "density: {} neutron-style networks (namespace + iptables + haproxy)",
        plan.density_networks
    ));
    let neutron = density::neutron(plan.density_networks)?;
    progress(&format!(
        "density: haproxy RSS median {:.1} MiB (PSS {:.1} MiB), kernel {:.0} KiB per network",
        stats::median_u64(&neutron.haproxy_rss_kib) / 1024.0,
        stats::median_u64(&neutron.haproxy_pss_kib) / 1024.0,
        neutron.namespaces_kernel_kib as f64 / neutron.networks as f64
    ));
    results.density_neutron = Some(neutron);
    Ok(())
}

/// 5. Discovery: libvirt starts domains, the daemon serves them unasked.
fn discovery(plan: &Plan, results: &mut Results, out: &std::path::Path) -> Result<()> {
    check_stop()?;
    progress(&format!(
        "discovery: {} nova-shaped domains started paused by a private libvirtd, served by --discover libvirt",
        plan.discovery_domains
    ));
    let run = discovery::measure(plan.discovery_domains, world::TapAttach::Tcx, |daemon| {
        keep_log(daemon, out, "daemon-discovery.log")
    })?;
    progress(&format!(
        "discovery: start event -> port attached median {:.1} ms, p99 {:.1} ms ({} attached before the event); daemon RSS {:.1} MiB with {} domains",
        run.median_ms(),
        run.p99_ms(),
        run.attached_before_event(),
        run.rss_after_kib as f64 / 1024.0,
        run.domains
    ));
    results.discovery = Some(run);
    Ok(())
}

/// Phases 1-3 share one world of guests, networks and one daemon.
fn measure_paths(
    plan: &Plan,
    phases: &[Phase],
    baseline_bin: Option<PathBuf>,
    results: &mut Results,
    out: &std::path::Path,
) -> Result<()> {
    let guests = plan.world_guests();
    progress(&format!(
        "setup: daemon, {guests} guests on {} networks (router namespace + iptables + haproxy each)",
        guests.div_ceil(plan.guests_per_net)
    ));
    let mut paths = vec![
        PathKind::Ours,
        PathKind::Ours6,
        PathKind::Neutron,
        PathKind::Limit,
    ];
    if baseline_bin.is_some() {
        paths.push(PathKind::Baseline);
    }
    let mut world = World::build(guests, plan.guests_per_net, plan.url_path, baseline_bin)?;
    let outcome = run_paths(&mut world, plan, phases, &paths, results, out);
    if outcome.is_err() && !STOP.load(Ordering::SeqCst) {
        keep_log(&world.daemon, out, "daemon-paths.log");
    }
    progress("teardown: guests, networks, daemon");
    outcome
}

fn run_paths(
    world: &mut World,
    plan: &Plan,
    phases: &[Phase],
    paths: &[PathKind],
    results: &mut Results,
    out: &std::path::Path,
) -> Result<()> {
    let guests = plan.world_guests();
    check_stop()?;
    progress("verify: every guest gets its own meta_data.json on every path");
    for &path in paths {
        world.verify(path, guests)?;
    }
    if phases.contains(&Phase::Metadata) {
        phases::metadata(world, plan, paths, results, &STOP)?;
        let guests = report::target_guests(results);
        phases::receive_profiles(world, plan, paths, guests, results, &STOP, out)?;
    }
    if phases.contains(&Phase::Storm) {
        progress("boot storm: cloud-init's first-boot fetch on every guest at once");
        phases::boot_storm(world, plan, results)?;
    }
    if phases.contains(&Phase::Iperf) {
        progress("other traffic: iperf3 with and without the program");
        phases::other_traffic(world, plan, results)?;
    }
    if phases.contains(&Phase::Flood) {
        progress("flood: guests flooding SYNs, a quiet guest timed");
        phases::flood(world, plan, results, &STOP)?;
    }
    phases::daemon_after_load(world, results)
}
