//! Limits through the datapath: a guest that floods gets 429s and slows no
//! one else; oversized heads and bodies are refused; slow or piled-up
//! connections are cut.
use std::net::Ipv4Addr;
use std::time::Duration;

use mdr_harness::fixtures::{GUEST_ADDR, GUEST_MAC};
use mdr_harness::{
    Daemon, Guest, GuestConfig, Host, Instance, Request, TenantNet, python, quiet_guest,
};
use serde_json::Value;

/// Two registered, served guests on one network.
struct Scene {
    noisy: Guest,
    quiet: Guest,
    noisy_instance: Instance,
    daemon: Daemon,
    _net: TenantNet,
    _host: Host,
}

fn scene(daemon_config: Option<&str>) -> Scene {
    let host = Host::new().unwrap();
    let net = TenantNet::with_router_and_decoy(&host).unwrap();
    let noisy = Guest::new(&net, GuestConfig::new(GUEST_ADDR, GUEST_MAC)).unwrap();
    let quiet = Guest::new(
        &net,
        GuestConfig::new(Ipv4Addr::new(10, 0, 0, 6), "fa:16:3e:00:00:06"),
    )
    .unwrap();
    let daemon = match daemon_config {
        Some(toml) => Daemon::start_with_config_file(&host, toml).unwrap(),
        None => Daemon::start(&host).unwrap(),
    };
    let (noisy_instance, quiet_instance) = (Instance::sample("noisy"), Instance::sample("quiet"));
    daemon.register(&noisy, &noisy_instance).unwrap();
    daemon.register(&quiet, &quiet_instance).unwrap();
    noisy.wait_served(&noisy_instance.uuid).unwrap();
    quiet.wait_served(&quiet_instance.uuid).unwrap();
    Scene {
        noisy,
        quiet,
        noisy_instance,
        daemon,
        _net: net,
        _host: host,
    }
}

/// CPU time (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// A low rate so that the flood certainly exceeds it: 10/s after a burst of
/// 200, which the quiet guest's requests (2 x 30 a round) stay within.
const RATE_LIMITED: &str = "rate_limit_per_sec = 10.0\nrate_limit_burst = 200\n";
/// The flood: 2000 requests over 4 keep-alive connections in 3 s, 70 times
/// the rate. Spread evenly rather than as fast as Python goes: a client
/// spinning flat out would be a guest burning its own vCPU, which here is
/// one of the machine's two cores, and the quiet guest's timings would
/// measure that instead of the daemon.
const FLOOD: [&str; 3] = ["2000", "4", "3"];
/// How many requests the quiet guest times, idle and under the flood.
const SAMPLES: &str = "30";
/// Rounds of (idle, flood) timings; one within bounds passes. Other work on
/// a shared 2-core machine can slow one round's timings by itself; a daemon
/// that lets a flood slow other guests fails every round.
const ROUNDS: usize = 3;

/// One guest floods over keep-alive connections and gets 429s with
/// Retry-After; meanwhile the other guest's median latency stays within
/// twice what it was just before the flood.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_flooding_guest_gets_429s_and_does_not_slow_another() {
    let scene = scene(Some(RATE_LIMITED));
    let path = "/latest/meta-data/instance-id";
    let limit = Duration::from_secs(30);
    let daemon_pid = scene.daemon.pid().unwrap();

    quiet_guest::assert_within_twice_in_a_round(
        ROUNDS,
        "the flood slowed the quiet guest beyond twice its idle median",
        |round| {
            let idle = quiet_guest::time_requests(scene.quiet.ns(), path, SAMPLES, limit).unwrap();
            let daemon_cpu_before = cpu_seconds(daemon_pid);
            let flood = python::spawn(
                scene.noisy.ns(),
                "hammer.py",
                &[&[path][..], &FLOOD[..]].concat(),
                limit,
            )
            .unwrap();
            // Let the flood get going, then time the quiet guest amid it.
            std::thread::sleep(Duration::from_millis(500));
            let busy = quiet_guest::time_requests(scene.quiet.ns(), path, SAMPLES, limit).unwrap();
            let flood = python::wait("hammer.py", flood).unwrap();
            eprintln!(
                "round {round}: flood {flood}; the daemon used {:.2} s of CPU meanwhile",
                cpu_seconds(daemon_pid) - daemon_cpu_before
            );
            check_flood(&flood);

            // The quiet guest was timed while the flood went on, and served.
            let (flood_start, flood_end) = (
                flood["start"].as_f64().unwrap(),
                flood["end"].as_f64().unwrap(),
            );
            assert!(
                flood_start < busy["start"].as_f64().unwrap()
                    && busy["end"].as_f64().unwrap() < flood_end,
                "the quiet guest was not timed during the flood: flood {flood}, quiet {busy}"
            );
            quiet_guest::assert_all_answered(&idle);
            quiet_guest::assert_all_answered(&busy);
            let (idle_median, busy_median) =
                (quiet_guest::median(&idle), quiet_guest::median(&busy));
            eprintln!(
                "round {round}: quiet guest median latency {:.3} ms idle, {:.3} ms amid the flood",
                idle_median * 1e3,
                busy_median * 1e3
            );
            (idle_median, busy_median)
        },
    );

    // Waiting as told is enough.
    std::thread::sleep(Duration::from_secs(1));
    let reply = scene.noisy.http_get(path).unwrap();
    assert_eq!(reply.status, 200, "after Retry-After: {reply}");
    assert_eq!(reply.body, scene.noisy_instance.ec2_id);
}

/// The flood got mostly 429s, each with a Retry-After in whole seconds, and
/// no more 200s than the bucket allows (burst + rate x duration).
fn check_flood(flood: &Value) {
    let statuses = flood["statuses"].as_object().unwrap();
    let count = |status: &str| statuses.get(status).and_then(Value::as_u64).unwrap_or(0);
    let (ok, refused) = (count("200"), count("429"));
    assert_eq!(
        ok + refused,
        flood["sent"].as_u64().unwrap(),
        "only 200 and 429 expected: {flood}"
    );
    assert_eq!(flood["errors"], 0, "{flood}");
    assert!(refused > 1000, "too few 429s for the flood: {flood}");
    let seconds = flood["end"].as_f64().unwrap() - flood["start"].as_f64().unwrap();
    assert!(
        (ok as f64) <= 200.0 + 10.0 * (seconds + 1.0),
        "{ok} requests passed in {seconds:.1} s: {flood}"
    );
    for (retry_after, _) in flood["retry_after"].as_object().unwrap() {
        // At 10/s a token is at most 0.1 s away: rounded up, 1 s.
        assert_eq!(
            retry_after, "1",
            "429 with Retry-After {retry_after:?}: {flood}"
        );
    }
}

/// `DEFAULT_MAX_PER_PORT` in the daemon's ingress/limits.rs.
const CONNECTIONS_PER_PORT: usize = 64;
/// `HEADER_READ_TIMEOUT` in the daemon's metadata/server.rs.
const HEADER_READ_TIMEOUT: f64 = 10.0;

/// Request heads over 8 KiB are 431; password bodies over nova's 1020 bytes
/// are 400 and over the body limit 413, and neither stores anything; a
/// client that never finishes its head is cut off after the header read
/// timeout; a port's connections beyond its cap are closed at once, without
/// touching another port.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn oversized_and_slow_requests_are_cut_off() {
    let scene = scene(None);
    let guest = &scene.noisy;

    // The quiet guest opens one connection more than its cap allows and
    // sends none of them a whole head; it runs while the rest of the test
    // goes on.
    let wait = format!("{}", HEADER_READ_TIMEOUT + 8.0);
    let count = format!("{}", CONNECTIONS_PER_PORT + 1);
    let slow = python::spawn(
        scene.quiet.ns(),
        "slow_headers.py",
        &[&wait, &count],
        Duration::from_secs(40),
    )
    .unwrap();

    // Heads: just under 8 KiB passes, over it is 431.
    let path = "/latest/meta-data/instance-id";
    let reply = guest
        .send(&Request::metadata("GET", path).header(format!("X-Big: {}", "a".repeat(7 * 1024))))
        .unwrap();
    assert_eq!(reply.status, 200, "a 7 KiB header: {reply}");
    let reply = guest
        .send(&Request::metadata("GET", path).header(format!("X-Big: {}", "a".repeat(9 * 1024))))
        .unwrap();
    assert_eq!(reply.status, 431, "a 9 KiB header: {reply}");

    // Password bodies.
    let password = "/openstack/latest/password";
    let post = |body: Vec<u8>| {
        guest
            .send(&Request::metadata("POST", password).body(body))
            .unwrap()
    };
    let reply = post(vec![b'p'; 1021]);
    assert_eq!(reply.status, 400, "1021-byte password: {reply}");
    let reply = post(vec![b'p'; 17 * 1024]);
    assert_eq!(reply.status, 413, "17 KiB password: {reply}");
    let reply = guest.http_get(password).unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, ""),
        "nothing stored: {reply}"
    );
    let reply = post(vec![b'p'; 1020]);
    assert_eq!(reply.status, 200, "1020-byte password: {reply}");
    let reply = guest.http_get(password).unwrap();
    assert_eq!(reply.body, "p".repeat(1020), "{reply}");
    let reply = post(b"another".to_vec());
    assert_eq!(reply.status, 409, "second password: {reply}");

    // The quiet guest's connections: 64 held until the header read
    // timeout, the one over the cap closed at once. Which one is over the
    // cap is the one accepted last, not necessarily the one opened last:
    // the daemon accepts on one listener per core, each with its own queue.
    // The noisy guest was served all along (above) despite them.
    let slow = python::wait("slow_headers.py", slow).unwrap();
    let conns = slow.as_array().unwrap();
    assert_eq!(conns.len(), CONNECTIONS_PER_PORT + 1, "{slow}");
    let closed_after: Vec<f64> = conns
        .iter()
        .enumerate()
        .map(|(index, conn)| {
            conn["closed_after"]
                .as_f64()
                .unwrap_or_else(|| panic!("connection {index} was never closed: {slow}"))
        })
        .collect();
    for (index, conn) in conns.iter().enumerate() {
        assert_eq!(
            conn["received"], 0,
            "connection {index} got an answer: {slow}"
        );
    }
    let (over, held): (Vec<f64>, Vec<f64>) = closed_after
        .iter()
        .partition(|after| **after < HEADER_READ_TIMEOUT - 1.0);
    assert_eq!(
        over.len(),
        1,
        "exactly one connection (the one over the cap) closed before the header read timeout: {slow}"
    );
    assert!(
        over[0] < 2.0,
        "the connection over the cap lived {:.1} s: {slow}",
        over[0]
    );
    for after in &held {
        assert!(
            *after <= HEADER_READ_TIMEOUT + 5.0,
            "a held connection closed after {after:.1} s: {slow}"
        );
    }
    eprintln!(
        "held connections closed after {:.2} to {:.2} s, the one over the cap after {:.3} s",
        held.iter().copied().fold(f64::INFINITY, f64::min),
        held.iter().copied().fold(0.0, f64::max),
        over[0],
    );
}
