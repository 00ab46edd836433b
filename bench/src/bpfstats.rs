//! What the datapath's programs cost per run, from the kernel's own
//! run-time statistics: BPF_ENABLE_STATS turns them on for as long as its
//! file descriptor is open (so nothing stays switched on after the bench),
//! and `bpftool prog show` reports run_cnt and run_time_ns per program.
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use mdr_harness::cmd;
use serde::Serialize;

/// `BPF_ENABLE_STATS` command and `BPF_STATS_RUN_TIME` type (linux/bpf.h).
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

/// Statistics are collected while this lives.
pub struct Enabled {
    _fd: OwnedFd,
}

pub fn enable() -> Result<Enabled> {
    // union bpf_attr's enable_stats member: one u32; the rest must be 0.
    let mut attr = [0u8; 16];
    attr[..4].copy_from_slice(&BPF_STATS_RUN_TIME.to_ne_bytes());
    // SAFETY: the bpf syscall reads `attr` (16 bytes, live for the call).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            attr.as_ptr(),
            attr.len() as u32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("bpf(BPF_ENABLE_STATS)");
    }
    // SAFETY: a fresh fd the kernel just gave us.
    Ok(Enabled {
        _fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
    })
}

/// run_cnt and run_time_ns of the programs pinned in `<bpffs>/progs`.
#[derive(Clone, Debug, Default)]
pub struct Snapshot(Vec<(String, u64, u64)>);

pub fn snapshot(bpffs: &Path) -> Result<Snapshot> {
    let dir = bpffs.join("progs");
    let mut progs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    progs.sort();
    let mut out = Vec::new();
    for path in progs {
        let text = cmd::run(&[
            "bpftool",
            "-j",
            "prog",
            "show",
            "pinned",
            &path.to_string_lossy(),
        ])?;
        let info: serde_json::Value =
            serde_json::from_str(&text).context("bpftool -j prog show")?;
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        out.push((
            name,
            info["run_cnt"].as_u64().unwrap_or(0),
            info["run_time_ns"].as_u64().unwrap_or(0),
        ));
    }
    Ok(Snapshot(out))
}

/// One program over one measurement.
#[derive(Clone, Debug, Serialize)]
pub struct ProgCost {
    pub program: String,
    pub runs: u64,
    pub ns_per_run: f64,
}

/// Per-program runs and average run time between two snapshots.
pub fn between(before: &Snapshot, after: &Snapshot) -> Vec<ProgCost> {
    after
        .0
        .iter()
        .map(|(name, cnt, ns)| {
            let (cnt0, ns0) = before
                .0
                .iter()
                .find(|(n, _, _)| n == name)
                .map_or((0, 0), |(_, c, t)| (*c, *t));
            let runs = cnt.saturating_sub(cnt0);
            ProgCost {
                program: name.clone(),
                runs,
                ns_per_run: if runs == 0 {
                    0.0
                } else {
                    ns.saturating_sub(ns0) as f64 / runs as f64
                },
            }
        })
        .collect()
}
