//! 10,000 registered ports on one daemon: what they cost (the daemon's
//! memory, the BPF maps', `port list`), measured, and held within bounds.
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use mdr_harness::{Daemon, Host, Instance, cmd};
use serde_json::{Value, json};

const PORTS: usize = 10_000;

/// A keep-alive connection to the admin socket: a CLI process per port
/// would measure process start-up ten thousand times.
struct Admin {
    reader: BufReader<UnixStream>,
}

impl Admin {
    fn connect(socket: &Path) -> Self {
        let stream = UnixStream::connect(socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Self {
            reader: BufReader::new(stream),
        }
    }

    /// One request; the status and body.
    fn request(&mut self, method: &str, path: &str, body: &Value) -> (u16, String) {
        let body = body.to_string();
        write!(
            self.reader.get_mut(),
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut length = 0;
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        (status, String::from_utf8(body).unwrap())
    }
}

/// VmRSS of `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The memory the kernel charges for each map pinned under `bpffs/maps`.
fn map_memory(bpffs: &Path) -> Vec<(String, u64)> {
    let mut maps = Vec::new();
    for entry in std::fs::read_dir(bpffs.join("maps")).unwrap() {
        let entry = entry.unwrap();
        let pin = entry.path().to_string_lossy().into_owned();
        let out = cmd::checked(&mut cmd::command(&[
            "bpftool", "-j", "map", "show", "pinned", &pin,
        ]))
        .unwrap();
        let info: Value = serde_json::from_str(&out).unwrap();
        maps.push((
            entry.file_name().to_string_lossy().into_owned(),
            info["bytes_memlock"].as_u64().unwrap_or(0),
        ));
    }
    maps.sort();
    maps
}

/// The median time of three runs of `args`.
fn timed(daemon: &Daemon, args: &[&str]) -> (Duration, String) {
    let mut runs = Vec::new();
    let mut output = String::new();
    for _ in 0..3 {
        let started = Instant::now();
        output = daemon.cli_ok(args).unwrap();
        runs.push(started.elapsed());
    }
    runs.sort();
    (runs[1], output)
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn ten_thousand_registered_ports() {
    let host = Host::new().unwrap();
    let daemon = Daemon::start(&host).unwrap();
    let pid = daemon.pid().unwrap();
    let instance = Instance::sample("many");
    daemon.put_instance(&instance).unwrap();
    let rss_before = rss_kib(pid);
    let maps_before = map_memory(daemon.bpffs());

    let mut admin = Admin::connect(daemon.admin_socket());
    let started = Instant::now();
    for n in 0..PORTS {
        let (status, body) = admin.request(
            "POST",
            "/v1/ports",
            &json!({
                "ifname": format!("p{n}"),
                "instance": instance.uuid,
                "mac": format!("fa:16:3e:00:{:02x}:{:02x}", n / 256, n % 256),
                "ips": [format!("10.{}.{}.{}", n / 65536, (n / 256) % 256, n % 256)],
            }),
        );
        assert_eq!(status, 200, "port {n}: {body}");
    }
    let add_all = started.elapsed();
    let rss_after = rss_kib(pid);
    let maps_after = map_memory(daemon.bpffs());

    let (list, output) = timed(&daemon, &["port", "list", "--json"]);
    let listed: Value = serde_json::from_str(&output).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), PORTS);
    let (list_table, _) = timed(&daemon, &["port", "list"]);
    let (status, _) = timed(&daemon, &["status", "--json"]);

    let map_total: u64 = maps_after.iter().map(|(_, bytes)| bytes).sum();
    eprintln!(
        "{PORTS} ports: added in {:.1} s ({:.2} ms each over one admin connection); \
         daemon RSS {:.1} MiB before, {:.1} MiB after (+{:.2} KiB per port); \
         BPF maps {:.1} MiB ({maps_after:?}, before {maps_before:?}); \
         port list --json {:.0} ms, port list {:.0} ms, status --json {:.0} ms",
        add_all.as_secs_f64(),
        add_all.as_secs_f64() * 1e3 / PORTS as f64,
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        (rss_after.saturating_sub(rss_before)) as f64 / PORTS as f64,
        map_total as f64 / (1 << 20) as f64,
        list.as_secs_f64() * 1e3,
        list_table.as_secs_f64() * 1e3,
        status.as_secs_f64() * 1e3,
    );
    // Bounds with room for a loaded 2-core machine; the figures above are
    // what docs/reliability.md reports.
    assert!(
        rss_after < 150 * 1024,
        "daemon RSS {rss_after} KiB with {PORTS} ports"
    );
    assert!(list < Duration::from_secs(3), "port list took {list:?}");
    // Every map but FLOWS is preallocated. FLOWS holds a table per port
    // whose tap exists (none here) plus the spare tables made ahead for the
    // next slots: a bound that does not grow with the ports registered
    // (10,000 tables would be over 100 MiB).
    let without_flows = |maps: &[(String, u64)]| -> Vec<(String, u64)> {
        maps.iter()
            .filter(|(name, _)| name != "FLOWS")
            .cloned()
            .collect()
    };
    assert_eq!(
        without_flows(&maps_before),
        without_flows(&maps_after),
        "the maps are preallocated: registering ports must not grow them"
    );
    let flows_of = |maps: &[(String, u64)]| {
        maps.iter()
            .find(|(name, _)| name == "FLOWS")
            .map_or(0, |(_, bytes)| *bytes)
    };
    let flows_growth = flows_of(&maps_after).saturating_sub(flows_of(&maps_before));
    assert!(
        flows_growth < 8 << 20,
        "FLOWS grew by {flows_growth} bytes with {PORTS} ports registered and no tap"
    );
}
