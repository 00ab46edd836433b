//! The four measurements, each printing one progress line per step.
use std::sync::atomic::AtomicBool;

use anyhow::{Result, ensure};

use crate::http1::ConnMode;
use crate::load::{self, Window};
use crate::plan::Plan;
use crate::results::{DaemonAfterLoad, LoadRun, Results, StormRun, quantile_ms};
use crate::storm::{self, StormClient};
use crate::world::{PathKind, World};
use crate::{bpfstats, drops};
use crate::{check_stop, iperf, machine, progress};

const MODES: [ConnMode; 2] = [ConnMode::KeepAlive, ConnMode::Close];

/// 1. Requests/s and latency on the three paths, interleaved per
///    repetition so that the machine's drifting load hits all alike.
pub fn metadata(
    world: &mut World,
    plan: &Plan,
    results: &mut Results,
    stop: &AtomicBool,
) -> Result<()> {
    // The kernel counts program run time only while this is held.
    let _stats = bpfstats::enable()?;
    let window = Window {
        warmup: plan.warmup,
        measure: plan.measure,
    };
    for rep in 1..=plan.reps {
        for path in PathKind::ALL {
            world.prepare(path)?;
            for mode in MODES {
                for &guests in &plan.load_guests {
                    check_stop()?;
                    let clients = world.clients(guests, path, mode, plan.url_path);
                    let bpffs = world.daemon.bpffs().to_path_buf();
                    let before = bpfstats::snapshot(&bpffs)?;
                    let drops_before = world.drop_counters()?;
                    let result = load::run(&clients, mode, window, stop)?;
                    let drops = drops::grown(&drops_before, &world.drop_counters()?);
                    let bpf = if path == PathKind::Ours {
                        bpfstats::between(&before, &bpfstats::snapshot(&bpffs)?)
                    } else {
                        Vec::new()
                    };
                    let run = LoadRun {
                        path,
                        mode,
                        guests,
                        rep,
                        rps: result.rps(),
                        p50_ms: quantile_ms(&result.latency_us, 0.50),
                        p99_ms: quantile_ms(&result.latency_us, 0.99),
                        p999_ms: quantile_ms(&result.latency_us, 0.999),
                        requests: result.ok,
                        errors: result.errors,
                        first_error: result.first_error.clone(),
                        bpf,
                        drops,
                    };
                    progress(
                        &(format!(
                            "metadata rep {rep}/{}: {:<13} {:<17} {guests:>3} guests: {:>8.0} req/s  p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  errors {}{}",
                            plan.reps,
                            path.label(),
                            mode.label(),
                            run.rps,
                            run.p50_ms,
                            run.p99_ms,
                            run.p999_ms,
                            run.errors,
                            run.first_error
                                .as_deref()
                                .map(|e| format!(" (first: {e})"))
                                .unwrap_or_default(),
                        ) + &lost(&run.drops)),
                    );
                    results
                        .histograms
                        .entry((path, mode, guests))
                        .or_insert_with(load::new_histogram)
                        .add(&result.latency_us)?;
                    results.load_runs.push(run);
                }
            }
        }
    }
    Ok(())
}

/// " | lost: ..." when loss counters grew.
fn lost(drops: &drops::Counters) -> String {
    if drops.is_empty() {
        String::new()
    } else {
        format!(" | {}", drops::describe(drops))
    }
}

/// 2. Boot storms on our path and the neutron-style one.
pub fn boot_storm(world: &mut World, plan: &Plan, results: &mut Results) -> Result<()> {
    for rep in 1..=plan.reps {
        for path in [PathKind::Ours, PathKind::Neutron] {
            world.prepare(path)?;
            for &guests in &plan.storm_guests {
                check_stop()?;
                let clients = (0..guests)
                    .map(|index| {
                        let (target, headers) = world.target(index, path);
                        StormClient { target, headers }
                    })
                    .collect();
                let drops_before = world.drop_counters()?;
                let result = storm::run(clients)?;
                let drops = drops::grown(&drops_before, &world.drop_counters()?);
                let run = StormRun {
                    path,
                    guests,
                    rep,
                    makespan_ms: result.makespan.as_secs_f64() * 1e3,
                    p50_ms: quantile_ms(&result.latency_us, 0.50),
                    p99_ms: quantile_ms(&result.latency_us, 0.99),
                    max_ms: result.latency_us.max() as f64 / 1e3,
                    requests: result.requests,
                    requests_per_guest: result.requests as f64 / guests as f64,
                    errors: result.errors,
                    first_error: result.first_error.clone(),
                    drops,
                    completions_ms: result
                        .completions
                        .iter()
                        .map(|d| d.as_secs_f64() * 1e3)
                        .collect(),
                };
                progress(
                    &(format!(
                        "boot storm rep {rep}/{}: {:<13} {guests:>3} guests x {:.0} requests: all done in {:.0} ms, p99 {:.2} ms, errors {}{}",
                        plan.reps,
                        path.label(),
                        run.requests_per_guest,
                        run.makespan_ms,
                        run.p99_ms,
                        run.errors,
                        run.first_error
                            .as_deref()
                            .map(|e| format!(" (first: {e})"))
                            .unwrap_or_default(),
                    ) + &lost(&run.drops)),
                );
                results.storm_runs.push(run);
            }
        }
    }
    Ok(())
}

/// 3. iperf3 from guest 0 to its router, with and without the program on
///    its tap; the order alternates per repetition.
pub fn other_traffic(world: &mut World, plan: &Plan, results: &mut Results) -> Result<()> {
    // Only guest 0's tap matters; the rest stay as they are.
    world.set_ours(false)?;
    let _server = iperf::Server::start(world.router_of(0))?;
    let gateway = mdr_harness::fixtures::GATEWAY.to_string();
    for rep in 1..=plan.reps {
        let order = if rep % 2 == 1 {
            [true, false]
        } else {
            [false, true]
        };
        for with_program in order {
            check_stop()?;
            world.set_guest_registered(0, with_program)?;
            let bps = iperf::throughput(world.guests[0].guest.ns(), &gateway, plan.iperf_seconds)?;
            progress(&format!(
                "other traffic rep {rep}/{}: iperf3 guest -> router, {} the program: {:.2} Gbit/s",
                plan.reps,
                if with_program { "with   " } else { "without" },
                bps / 1e9
            ));
            if with_program {
                results.iperf.with_program_bps.push(bps);
            } else {
                results.iperf.without_program_bps.push(bps);
            }
        }
    }
    world.set_guest_registered(0, false)?;
    Ok(())
}

/// The load daemon's memory once everything ran through it.
pub fn daemon_after_load(world: &mut World, results: &mut Results) -> Result<()> {
    world.set_ours(true)?;
    let pid = world.daemon.pid();
    ensure!(pid.is_some(), "the daemon is not running");
    let pid = pid.unwrap_or_default();
    results.daemon_after_load = DaemonAfterLoad {
        // Real taps plus the neutron-identity ports.
        ports: world.guests.len() * 2,
        rss_kib: machine::status_kib(pid, "VmRSS")?,
        hwm_kib: machine::status_kib(pid, "VmHWM")?,
        haproxy_rss_kib: crate::stats::median_u64(
            &world
                .proxy_pids()
                .into_iter()
                .map(|pid| machine::status_kib(pid, "VmRSS"))
                .collect::<Result<Vec<_>>>()?,
        ),
    };
    Ok(())
}
