//! The CPU time processes spend over exactly a measured interval: user and
//! system time from /proc/PID/stat (all threads, live and exited), sampled
//! by a thread of its own at the interval's two ends.
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

/// Which part of a path a process plays; the report sums by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// metadata-redirector answering guests (ours, or the baseline binary).
    Daemon,
    /// metadata-redirector as neutron-metadata-agent behind haproxy.
    Agent,
    /// The haproxies of the neutron-style path, summed.
    Haproxy,
    /// The minimal responder of the limit path.
    Responder,
}

/// Processes whose CPU a cell charges to `role`.
#[derive(Clone, Debug)]
pub struct Watched {
    pub role: Role,
    pub pids: Vec<u32>,
}

/// CPU seconds over an interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct CpuTime {
    pub user_s: f64,
    pub system_s: f64,
}

impl CpuTime {
    pub fn total_s(&self) -> f64 {
        self.user_s + self.system_s
    }

    fn minus(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user_s: self.user_s - earlier.user_s,
            system_s: self.system_s - earlier.system_s,
        }
    }

    fn plus(self, other: CpuTime) -> CpuTime {
        CpuTime {
            user_s: self.user_s + other.user_s,
            system_s: self.system_s + other.system_s,
        }
    }
}

/// One role's CPU over a cell.
#[derive(Clone, Debug, Serialize)]
pub struct RoleCpu {
    pub role: Role,
    pub cpu: CpuTime,
}

/// The clock ticks /proc counts in.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// utime and stime of `pid` (fields 14 and 15 of /proc/PID/stat).
pub fn process_time(pid: u32) -> Result<CpuTime> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat(&text).with_context(|| format!("parsing {path}"))
}

fn parse_stat(text: &str) -> Option<CpuTime> {
    // The command name (field 2) may hold spaces; it ends at the last ')'.
    let after_name = &text[text.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // Fields 3.. follow; utime and stime are the 12th and 13th of those.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = ticks_per_second();
    Some(CpuTime {
        user_s: utime as f64 / ticks,
        system_s: stime as f64 / ticks,
    })
}

fn sample(watched: &[Watched]) -> Result<Vec<CpuTime>> {
    watched
        .iter()
        .map(|w| {
            w.pids
                .iter()
                .map(|&pid| process_time(pid))
                .try_fold(CpuTime::default(), |sum, time| Ok(sum.plus(time?)))
        })
        .collect()
}

/// Samples `watched` at `from` and at `to` on a thread of its own; join the
/// handle for each role's CPU in between.
pub fn measure(
    watched: Vec<Watched>,
    from: Instant,
    to: Instant,
) -> std::thread::JoinHandle<Result<Vec<RoleCpu>>> {
    std::thread::spawn(move || {
        std::thread::sleep(from.saturating_duration_since(Instant::now()));
        let before = sample(&watched)?;
        std::thread::sleep(to.saturating_duration_since(Instant::now()));
        let after = sample(&watched)?;
        Ok(watched
            .iter()
            .zip(before.into_iter().zip(after))
            .map(|(w, (before, after))| RoleCpu {
                role: w.role,
                cpu: after.minus(before),
            })
            .collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_parse_even_with_spaces_in_the_name() {
        let ticks = ticks_per_second();
        let line =
            "1234 (tokio rt (1)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 100 0 0";
        let time = parse_stat(line).unwrap();
        assert_eq!(time.user_s, 250.0 / ticks);
        assert_eq!(time.system_s, 75.0 / ticks);
    }

    #[test]
    fn our_own_time_is_readable_and_grows() {
        let pid = std::process::id();
        let before = process_time(pid).unwrap();
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 50 {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = process_time(pid).unwrap();
        assert!(after.total_s() >= before.total_s());
    }
}
