//! What the run measured, per repetition, and the medians the report shows.
use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cpu::{Role, RoleCpu};
use crate::density::{NeutronDensity, OursDensity};
use crate::discovery::DiscoveryRun;
use crate::http1::ConnMode;
use crate::machine::MachineInfo;
use crate::plan::Plan;
use crate::profile::ReceiveShare;
use crate::stats::median;
use crate::world::PathKind;

/// Microseconds in a histogram to milliseconds.
pub fn quantile_ms(hist: &Histogram<u64>, q: f64) -> f64 {
    hist.value_at_quantile(q) as f64 / 1e3
}

#[derive(Clone, Debug, Serialize)]
pub struct LoadRun {
    pub path: PathKind,
    pub mode: ConnMode,
    pub guests: usize,
    pub rep: usize,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub requests: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Ours only: what the eBPF programs ran in this cell.
    pub bpf: Vec<crate::bpfstats::ProgCost>,
    /// Loss counters that grew during the cell (hypervisor namespace TCP,
    /// datapath); the neutron path's own namespaces are not watched.
    pub drops: crate::drops::Counters,
    /// CPU of the path's processes over the measured interval, by role.
    pub cpu: Vec<RoleCpu>,
}

impl LoadRun {
    /// CPU µs per answered request: of `role`, or of all roles (None).
    pub fn cpu_us_per_request(&self, role: Option<Role>) -> f64 {
        let seconds: f64 = self
            .cpu
            .iter()
            .filter(|c| role.is_none_or(|role| c.role == role))
            .map(|c| c.cpu.total_s())
            .sum();
        seconds * 1e6 / (self.requests.max(1) as f64)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct LoadSummary {
    pub path: PathKind,
    pub mode: ConnMode,
    pub guests: usize,
    /// Medians over the repetitions.
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Summed over the repetitions.
    pub errors: u64,
    /// CPU µs per request of all the path's processes (median).
    pub cpu_us: f64,
    /// The same by role (medians).
    pub cpu_us_by_role: BTreeMap<Role, f64>,
    /// User-space share of the path's CPU (median).
    pub cpu_user_share: f64,
}

/// The share of the daemon's CPU that is network receive work in its
/// context (the test guests' receive path), from an extra profiled cell.
#[derive(Clone, Debug, Serialize)]
pub struct ReceiveProfile {
    /// Ours, or the baseline build's daemon.
    pub path: PathKind,
    pub mode: ConnMode,
    pub guests: usize,
    pub profile: ReceiveShare,
}

/// A daemon's CPU per request split by a receive profile: what is the
/// test guests' receive path and what stays its own.
#[derive(Clone, Copy, Debug)]
pub struct OwnCpu {
    /// Median CPU µs per request, all of it.
    pub total_us: f64,
    pub profile: ReceiveShare,
}

impl OwnCpu {
    /// µs per request that are the guests' receive path.
    pub fn receive_us(&self) -> f64 {
        self.total_us * self.profile.share()
    }

    /// µs per request without it: the daemon's own.
    pub fn own_us(&self) -> f64 {
        self.total_us * (1.0 - self.profile.share())
    }
}

/// The flood phase: guests flooding SYNs they never complete (each port's
/// own flow table must keep the quiet guest's flows) while a quiet guest
/// keeps a keep-alive connection idle and makes new connections.
#[derive(Clone, Debug, Serialize)]
pub struct FloodRun {
    pub flooders: usize,
    pub rate_per_guest: u32,
    pub seconds: f64,
    pub syns_sent: u64,
    /// The quiet guest's keep-alive connection, idle for most of the flood,
    /// still answered afterwards.
    pub keepalive_idle_s: f64,
    pub keepalive_answered: bool,
    /// The quiet guest's new connections (one request each, closed loop).
    pub calm_rps: f64,
    pub calm_p99_ms: f64,
    pub flood_rps: f64,
    pub flood_p99_ms: f64,
    pub errors: u64,
    /// Flows each port's table held after the flood: (identity, entries).
    pub flows_per_port: Vec<(String, usize)>,
    pub drops: crate::drops::Counters,
}

#[derive(Clone, Debug, Serialize)]
pub struct StormRun {
    pub path: PathKind,
    pub guests: usize,
    pub rep: usize,
    pub makespan_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub requests: u64,
    pub requests_per_guest: f64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub drops: crate::drops::Counters,
    /// When each guest was done (ms), sorted: the completion curve.
    pub completions_ms: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StormSummary {
    pub path: PathKind,
    pub guests: usize,
    pub makespan_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests_per_guest: f64,
    pub errors: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Iperf {
    pub with_program_bps: Vec<f64>,
    pub without_program_bps: Vec<f64>,
}

impl Iperf {
    pub fn ratio(&self) -> f64 {
        median(&self.with_program_bps) / median(&self.without_program_bps)
    }
}

/// The daemon of the load phases, after them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DaemonAfterLoad {
    pub ports: usize,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// The haproxies' median RSS after the same load.
    pub haproxy_rss_kib: f64,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub machine: MachineInfo,
    pub plan: Plan,
    pub daemon_config: &'static str,
    pub load_runs: Vec<LoadRun>,
    pub storm_runs: Vec<StormRun>,
    pub iperf: Iperf,
    pub daemon_after_load: DaemonAfterLoad,
    /// The baseline build the `baseline` path ran, if any (e.g. a commit).
    pub baseline: Option<String>,
    /// The guests' receive share of the daemon's CPU (empty without perf).
    pub receive_profiles: Vec<ReceiveProfile>,
    /// One per `--tap-attach` mode measured (tcx first).
    pub density_ours: Vec<OursDensity>,
    pub density_neutron: Option<NeutronDensity>,
    pub flood: Option<FloodRun>,
    /// `serve --discover libvirt` following libvirt's domain starts.
    pub discovery: Option<DiscoveryRun>,
    pub duration_s: f64,
    /// Phases that failed, with why (the report shows what the others measured).
    pub failures: Vec<String>,
    /// Latency histograms merged over repetitions, for the plots.
    #[serde(skip)]
    pub histograms: BTreeMap<(PathKind, ConnMode, usize), Histogram<u64>>,
}

impl Results {
    pub fn load_summaries(&self) -> Vec<LoadSummary> {
        let mut keys: Vec<(PathKind, ConnMode, usize)> = Vec::new();
        for run in &self.load_runs {
            let key = (run.path, run.mode, run.guests);
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        keys.into_iter()
            .map(|(path, mode, guests)| {
                let runs: Vec<&LoadRun> = self
                    .load_runs
                    .iter()
                    .filter(|r| r.path == path && r.mode == mode && r.guests == guests)
                    .collect();
                let med = |f: &dyn Fn(&LoadRun) -> f64| {
                    median(&runs.iter().map(|r| f(r)).collect::<Vec<_>>())
                };
                let roles: Vec<Role> = runs
                    .iter()
                    .flat_map(|r| r.cpu.iter().map(|c| c.role))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                LoadSummary {
                    path,
                    mode,
                    guests,
                    rps: med(&|r| r.rps),
                    p50_ms: med(&|r| r.p50_ms),
                    p99_ms: med(&|r| r.p99_ms),
                    p999_ms: med(&|r| r.p999_ms),
                    errors: runs.iter().map(|r| r.errors).sum(),
                    cpu_us: med(&|r| r.cpu_us_per_request(None)),
                    cpu_us_by_role: roles
                        .into_iter()
                        .map(|role| (role, med(&|r| r.cpu_us_per_request(Some(role)))))
                        .collect(),
                    cpu_user_share: med(&|r| {
                        let user: f64 = r.cpu.iter().map(|c| c.cpu.user_s).sum();
                        let total: f64 = r.cpu.iter().map(|c| c.cpu.total_s()).sum();
                        user / total
                    }),
                }
            })
            .collect()
    }

    pub fn load_summary(
        &self,
        path: PathKind,
        mode: ConnMode,
        guests: usize,
    ) -> Option<LoadSummary> {
        self.load_summaries()
            .into_iter()
            .find(|s| s.path == path && s.mode == mode && s.guests == guests)
    }

    /// `path`'s CPU per request in `mode` at the guests it was profiled
    /// at, split by its receive profile (None without one).
    pub fn own_cpu(&self, path: PathKind, mode: ConnMode) -> Option<(usize, OwnCpu)> {
        let profile = self
            .receive_profiles
            .iter()
            .find(|p| p.path == path && p.mode == mode)?;
        let summary = self.load_summary(path, mode, profile.guests)?;
        Some((
            profile.guests,
            OwnCpu {
                total_us: summary.cpu_us,
                profile: profile.profile,
            },
        ))
    }

    pub fn storm_summaries(&self) -> Vec<StormSummary> {
        let mut keys: Vec<(PathKind, usize)> = Vec::new();
        for run in &self.storm_runs {
            if !keys.contains(&(run.path, run.guests)) {
                keys.push((run.path, run.guests));
            }
        }
        keys.into_iter()
            .map(|(path, guests)| {
                let runs: Vec<&StormRun> = self
                    .storm_runs
                    .iter()
                    .filter(|r| r.path == path && r.guests == guests)
                    .collect();
                let med = |f: fn(&StormRun) -> f64| {
                    median(&runs.iter().map(|r| f(r)).collect::<Vec<_>>())
                };
                StormSummary {
                    path,
                    guests,
                    makespan_ms: med(|r| r.makespan_ms),
                    p50_ms: med(|r| r.p50_ms),
                    p99_ms: med(|r| r.p99_ms),
                    requests_per_guest: med(|r| r.requests_per_guest),
                    errors: runs.iter().map(|r| r.errors).sum(),
                }
            })
            .collect()
    }

    /// The repetition with the median makespan (its curve is plotted).
    pub fn median_storm_run(&self, path: PathKind, guests: usize) -> Option<&StormRun> {
        let mut runs: Vec<&StormRun> = self
            .storm_runs
            .iter()
            .filter(|r| r.path == path && r.guests == guests)
            .collect();
        runs.sort_by(|a, b| a.makespan_ms.total_cmp(&b.makespan_ms));
        runs.get(runs.len() / 2).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_is_the_total_without_the_receive_share() {
        let cpu = OwnCpu {
            total_us: 20.0,
            profile: ReceiveShare {
                samples: 1000,
                net_rx_samples: 250,
            },
        };
        assert!((cpu.receive_us() - 5.0).abs() < 1e-9);
        assert!((cpu.own_us() - 15.0).abs() < 1e-9);
        // No samples: no split, rather than a made-up one.
        let unknown = OwnCpu {
            total_us: 20.0,
            profile: ReceiveShare::default(),
        };
        assert!(unknown.own_us().is_nan());
    }
}
