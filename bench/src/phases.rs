//! The four measurements, each printing one progress line per step.
use std::sync::atomic::AtomicBool;

use anyhow::{Context as _, Result, ensure};

use crate::http1::ConnMode;
use crate::load::{self, Window};
use crate::plan::Plan;
use crate::results::{
    DaemonAfterLoad, FloodRun, LoadRun, ReceiveProfile, Results, StormRun, quantile_ms,
};
use crate::storm::{self, StormClient};
use crate::world::{PathKind, World};
use crate::{bpfstats, drops, profile};
use crate::{check_stop, iperf, machine, progress};

const MODES: [ConnMode; 2] = [ConnMode::KeepAlive, ConnMode::Close];

/// 1. Requests/s, latency and CPU per request on every path, interleaved
///    per repetition so that the machine's drifting load hits all alike.
pub fn metadata(
    world: &mut World,
    plan: &Plan,
    paths: &[PathKind],
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
        for &path in paths {
            for mode in MODES {
                world.prepare(path, mode)?;
                for &guests in &plan.load_guests {
                    check_stop()?;
                    let clients = world.clients(guests, path, mode, plan.url_path);
                    let bpffs = world.daemon.bpffs().to_path_buf();
                    let before = bpfstats::snapshot(&bpffs)?;
                    let drops_before = world.drop_counters()?;
                    let result = load::run(&clients, mode, window, stop, world.watched(path))?;
                    let drops = drops::grown(&drops_before, &world.drop_counters()?);
                    let bpf = if path != PathKind::Neutron {
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
                        cpu: result.cpu.clone(),
                    };
                    progress(
                        &(format!(
                            "metadata rep {rep}/{}: {:<13} {:<17} {guests:>3} guests: {:>8.0} req/s  p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  CPU {:.1} µs/req  errors {}{}",
                            plan.reps,
                            path.label(),
                            mode.label(),
                            run.rps,
                            run.p50_ms,
                            run.p99_ms,
                            run.p999_ms,
                            run.cpu_us_per_request(None),
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

/// How much of the daemon's CPU is the test guests' receive path: one
/// extra cell per mode at `guests` on our path, and on the baseline's when
/// `paths` has it, profiled with perf (not part of the measured cells, so
/// the profiler's cost never shows in them).
pub fn receive_profiles(
    world: &mut World,
    plan: &Plan,
    paths: &[PathKind],
    guests: usize,
    results: &mut Results,
    stop: &AtomicBool,
    scratch: &std::path::Path,
) -> Result<()> {
    if !profile::available() {
        progress("receive profile: perf not found, skipped");
        return Ok(());
    }
    let window = Window {
        warmup: plan.warmup,
        measure: plan.measure.min(std::time::Duration::from_secs(3)),
    };
    for path in [PathKind::Ours, PathKind::Baseline] {
        if !paths.contains(&path) {
            continue;
        }
        for mode in MODES {
            check_stop()?;
            world.prepare(path, mode)?;
            let pid = world.daemon.pid().context("the daemon is not running")?;
            let clients = world.clients(guests, path, mode, plan.url_path);
            // Kept for a closer look: `perf report -i <out>/profile-ours-...`
            // (or `profile-baseline-...`).
            let data = scratch.join(format!(
                "profile-{}-{}-{guests}.data",
                path.label(),
                match mode {
                    ConnMode::KeepAlive => "keep-alive",
                    ConnMode::Close => "close",
                }
            ));
            // Started during the warm-up, ends with the cell.
            let profiler = std::thread::spawn({
                let data = data.clone();
                let (delay, duration) = (window.warmup / 2, window.warmup / 2 + window.measure);
                move || {
                    std::thread::sleep(delay);
                    profile::record(pid, duration, &data)
                }
            });
            load::run(&clients, mode, window, stop, Vec::new())?;
            profiler
                .join()
                .map_err(|_| anyhow::anyhow!("the profiler thread panicked"))??;
            let share = profile::receive_share(&data)?;
            progress(&format!(
                "receive profile: {:<8} {:<17} {guests:>3} guests: {:.1}% of the daemon's samples under net_rx_action ({} samples)",
                path.label(),
                mode.label(),
                share.share() * 100.0,
                share.samples
            ));
            results.receive_profiles.push(ReceiveProfile {
                path,
                mode,
                guests,
                profile: share,
            });
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
            world.prepare(path, ConnMode::Close)?;
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
    world.prepare(PathKind::Neutron, ConnMode::KeepAlive)?;
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

/// 4. Guests 1..=N flood SYNs they never complete (from raw sockets, at a
///    fixed rate, niced by the script: a flooding guest burns its own
///    vCPUs) while guest 0
///    keeps a keep-alive connection idle and is timed making new
///    connections, first without the flood, then amid it.
pub fn flood(
    world: &mut World,
    plan: &Plan,
    results: &mut Results,
    stop: &AtomicBool,
) -> Result<()> {
    use std::process::Stdio;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    world.prepare(PathKind::Ours, ConnMode::Close)?;
    let window = Window {
        warmup: plan.warmup,
        measure: plan.measure,
    };
    let quiet = world.clients(1, PathKind::Ours, ConnMode::Close, plan.url_path);
    check_stop()?;
    // Once unmeasured: the first window after (re)registering the taps is
    // slower (attaching, neighbour entries, the server's first connections).
    load::run(&quiet, ConnMode::Close, window, stop, Vec::new())?;
    let calm = load::run(&quiet, ConnMode::Close, window, stop, Vec::new())?;
    let drops_before = world.drop_counters()?;

    // The flooders prepare their packets, then all start at `start`.
    let preparation = Duration::from_secs(5);
    let start = SystemTime::now().duration_since(UNIX_EPOCH)? + preparation;
    let script = mdr_harness::python::script("syn_flood.py");
    let (script, rate) = (script.to_string_lossy(), plan.flood_rate.to_string());
    let seconds = format!("{:.1}", plan.flood.as_secs_f64());
    let start_at = format!("{:.3}", start.as_secs_f64());
    let limit = format!("{:.0}", (preparation + plan.flood).as_secs_f64() + 30.0);
    let mut floods = Vec::new();
    for guest in &world.guests[1..=plan.flood_guests] {
        let args = [
            "timeout", "-s", "KILL", &limit, "python3", "-B", &script, &rate, &seconds, &start_at,
            "", "19",
        ];
        floods.push(
            guest
                .guest
                .ns()
                .spawn(&args, Stdio::piped(), Stdio::piped())?,
        );
    }
    std::thread::sleep(preparation + Duration::from_millis(500));
    // Idle through most of the flood, answered before it ends.
    let idle = plan
        .flood
        .saturating_sub(Duration::from_secs(3))
        .min(Duration::from_secs(8));
    let keepalive = mdr_harness::python::spawn(
        world.guests[0].guest.ns(),
        "idle_keepalive.py",
        &[plan.url_path, &format!("{:.1}", idle.as_secs_f64())],
        plan.flood + Duration::from_secs(30),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let busy = load::run(&quiet, ConnMode::Close, window, stop, Vec::new())?;
    let keepalive = mdr_harness::python::wait("idle_keepalive.py", keepalive)?;
    let mut syns_sent = 0;
    for flood in floods {
        let out = flood.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().last().unwrap_or_default();
        let report: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("syn_flood.py printed {text:?}: {e}"))?;
        syns_sent += report["sent"].as_u64().unwrap_or(0);
    }
    let drops = drops::grown(&drops_before, &world.drop_counters()?);
    let tables = mdr_harness::flows::tables(&world.daemon.pinned_map("FLOWS"))?;
    let run = FloodRun {
        flooders: plan.flood_guests,
        rate_per_guest: plan.flood_rate,
        seconds: plan.flood.as_secs_f64(),
        syns_sent,
        keepalive_idle_s: idle.as_secs_f64(),
        keepalive_answered: keepalive["statuses"] == serde_json::json!([200, 200]),
        calm_rps: calm.rps(),
        calm_p99_ms: quantile_ms(&calm.latency_us, 0.99),
        flood_rps: busy.rps(),
        flood_p99_ms: quantile_ms(&busy.latency_us, 0.99),
        errors: calm.errors + busy.errors,
        flows_per_port: tables
            .iter()
            .map(|t| (t.identity.to_string(), t.entries))
            .collect(),
        drops,
    };
    progress(&format!(
        "flood: {} guests x {} SYN/s for {:.0} s ({} SYNs): keep-alive idle {:.0} s {}; quiet guest \
         new connections {:.0} req/s p99 {:.2} ms without, {:.0} req/s p99 {:.2} ms amid it; errors {}",
        run.flooders,
        run.rate_per_guest,
        run.seconds,
        run.syns_sent,
        run.keepalive_idle_s,
        if run.keepalive_answered {
            "answered"
        } else {
            "LOST"
        },
        run.calm_rps,
        run.calm_p99_ms,
        run.flood_rps,
        run.flood_p99_ms,
        run.errors
    ));
    results.flood = Some(run);
    Ok(())
}

/// The load daemon's memory once everything ran through it.
pub fn daemon_after_load(world: &mut World, results: &mut Results) -> Result<()> {
    world.prepare(PathKind::Ours, ConnMode::KeepAlive)?;
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
