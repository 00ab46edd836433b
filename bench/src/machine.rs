//! Facts about the machine and processes, from /proc.
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct MachineInfo {
    pub date: String,
    pub kernel: String,
    pub cores: usize,
    pub cpu_model: String,
    pub mem_total_mib: u64,
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn info() -> MachineInfo {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or("unknown".into(), |(_, model)| model.trim().to_owned());
    MachineInfo {
        date: command_line(&["date", "-u", "+%Y-%m-%d %H:%M UTC"]),
        kernel: command_line(&["uname", "-r"]),
        cores: cores(),
        cpu_model,
        mem_total_mib: meminfo_kib("MemTotal").unwrap_or(0) / 1024,
    }
}

fn command_line(args: &[&str]) -> String {
    mdr_harness::cmd::run(args)
        .map(|out| out.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// A `/proc/meminfo` field in KiB.
pub fn meminfo_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    kib_field(&text, field)
}

/// A `/proc/PID/status` field (VmRSS, VmHWM) in KiB.
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    kib_field(&text, field).with_context(|| format!("no {field} in {path}"))
}

/// Proportional set size in KiB: shared library pages split among the
/// processes that map them, so a hundred haproxies are not charged a
/// hundred times for one libc.
pub fn pss_kib(pid: u32) -> Result<u64> {
    let path = Path::new("/proc")
        .join(pid.to_string())
        .join("smaps_rollup");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    kib_field(&text, "Pss").with_context(|| format!("no Pss in {}", path.display()))
}

/// The `count` mappings of `pid` with the most resident memory, from
/// /proc/PID/smaps: (what is mapped, or the address range of an anonymous
/// mapping; its Rss in KiB), largest first.
pub fn largest_mappings(pid: u32, count: usize) -> Result<Vec<(String, u64)>> {
    let path = format!("/proc/{pid}/smaps");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let mut mappings: Vec<(String, u64)> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: range perms offset dev inode [path].
            let name = words.nth(4).map_or_else(|| first.to_owned(), str::to_owned);
            mappings.push((name, 0));
        } else if first == "Rss:"
            && let Some(last) = mappings.last_mut()
        {
            last.1 = words.next().and_then(|kib| kib.parse().ok()).unwrap_or(0);
        }
    }
    mappings.sort_by_key(|mapping| std::cmp::Reverse(mapping.1));
    mappings.truncate(count);
    Ok(mappings)
}

fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Kernel memory that namespaces, interfaces and iptables tables take:
/// slab, per-cpu areas, kernel stacks, page tables (KiB).
pub fn kernel_kib() -> u64 {
    ["Slab", "Percpu", "KernelStack", "PageTables"]
        .iter()
        .filter_map(|field| meminfo_kib(field))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_largest_mappings_are_listed() {
        let mappings = largest_mappings(std::process::id(), 3).unwrap();
        assert!(!mappings.is_empty());
        assert!(mappings.windows(2).all(|w| w[0].1 >= w[1].1));
    }

    #[test]
    fn fields_parse() {
        let text = "VmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(kib_field(text, "VmRSS"), Some(1024));
        assert_eq!(kib_field(text, "VmHWM"), Some(2048));
        assert_eq!(kib_field(text, "Vm"), None);
    }
}
