//! Chaos under load: twelve guests on four tenant networks that overlap
//! (the same addresses and MACs on each) ask for their own metadata all the
//! time, while the daemon is SIGKILLed and restarted, taps are deleted and
//! created again, and ports are deleted and added again. Every answer must
//! be the asker's own; requests fail only while their guest's path is
//! actually broken (daemon down, its tap or port gone), and flows left
//! over afterwards are counted.
//!
//! `MDR_CHAOS_SECONDS=N` runs it for N seconds instead of the short run.
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mdr_harness::fixtures::{GATEWAY, PREFIX_LEN};
use mdr_harness::wait::{self, Poll};
use mdr_harness::{
    Daemon, Guest, GuestConfig, Host, Instance, TenantNet, check_own_answers, python,
};
use serde_json::Value;

const NETWORKS: usize = 4;
const GUESTS: usize = 12;
/// Each guest asks at most this often (50 requests a second each).
const INTERVAL: &str = "0.02";
/// The short run's length; `MDR_CHAOS_SECONDS` overrides it.
const DEFAULT_SECONDS: u64 = 40;
/// How long after its path is whole again a guest's failure still counts
/// as caused by the break: a request started during it may time out (2 s)
/// after it.
const SLACK: f64 = 2.5;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A time when some guests' path was broken on purpose.
struct Break {
    what: &'static str,
    /// None: every guest (the daemon was down).
    guest: Option<usize>,
    start: f64,
    end: f64,
}

impl Break {
    fn covers(&self, guest: usize, at: f64) -> bool {
        self.guest.is_none_or(|g| g == guest) && self.start <= at && at <= self.end + SLACK
    }
}

/// Waits until the daemon lists `tap` as attached with its current ifindex.
fn wait_attached(host: &Host, daemon: &Daemon, tap: &str) {
    wait::until(&format!("{tap} attached"), Duration::from_secs(20), || {
        let ifindex = host.ifindex(tap)?;
        let status = daemon.status()?;
        let attached = &status["datapath"]["attached_taps"][tap]["ifindex"];
        Ok(if attached.as_u64() == Some(u64::from(ifindex)) {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("ifindex {ifindex}, status {attached}"))
        })
    })
    .unwrap();
}

/// Flows in all the ports' tables of the pinned FLOWS (a map of maps).
fn flows(daemon: &Daemon) -> usize {
    mdr_harness::flows::count(&daemon.pinned_map("FLOWS")).unwrap()
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn guests_get_their_own_answers_through_kills_tap_and_port_churn() {
    let seconds: u64 = std::env::var("MDR_CHAOS_SECONDS")
        .ok()
        .map(|s| s.parse().expect("MDR_CHAOS_SECONDS: a number of seconds"))
        .unwrap_or(DEFAULT_SECONDS);
    let host = Host::new().unwrap();
    let nets: Vec<TenantNet> = (0..NETWORKS)
        .map(|_| TenantNet::new(&host, GATEWAY, PREFIX_LEN).unwrap())
        .collect();
    // Guest n: network n % 4, address and MAC shared with the guests of
    // the same index on the other three networks.
    let guests: Vec<Guest> = (0..GUESTS)
        .map(|n| {
            let last = 10 + (n / NETWORKS) as u8;
            let config = GuestConfig::new(
                Ipv4Addr::new(10, 0, 0, last),
                &format!("fa:16:3e:00:00:{last:02x}"),
            );
            Guest::new(&nets[n % NETWORKS], config).unwrap()
        })
        .collect();
    // 50 requests a second per guest is over the default request rate.
    let mut daemon = Daemon::start_with_config_file(
        &host,
        "rate_limit_per_sec = 1000.0\nrate_limit_burst = 1000\n",
    )
    .unwrap();
    let instances: Vec<Instance> = (0..GUESTS)
        .map(|n| Instance::sample(&format!("chaos{n}")))
        .collect();
    for (guest, instance) in guests.iter().zip(&instances) {
        daemon.register(guest, instance).unwrap();
    }
    for (guest, instance) in guests.iter().zip(&instances) {
        guest.wait_served(&instance.uuid).unwrap();
    }

    let run = format!("{seconds}");
    let limit = Duration::from_secs(seconds + 30);
    let clients: Vec<_> = guests
        .iter()
        .zip(&instances)
        .map(|(guest, instance)| {
            python::spawn(
                guest.ns(),
                "own_answers.py",
                &[&instance.ec2_id, &run, INTERVAL],
                limit,
            )
            .unwrap()
        })
        .collect();

    let started = Instant::now();
    let mut breaks: Vec<Break> = Vec::new();
    let (mut kills, mut replugs, mut readds) = (0, 0, 0);
    std::thread::sleep(Duration::from_secs(2));
    let mut step = 0usize;
    while started.elapsed() + Duration::from_secs(5) < Duration::from_secs(seconds) {
        let guest = step % GUESTS;
        let tap = guests[guest].tap().to_owned();
        let start = now();
        let (what, whom) = match step % 3 {
            0 => {
                daemon.kill9().unwrap();
                daemon.restart().unwrap();
                // Served again once every tap is back (the reconciler
                // attaches after the daemon answers `status`).
                for guest in &guests {
                    wait_attached(&host, &daemon, guest.tap());
                }
                kills += 1;
                ("daemon SIGKILLed and restarted", None)
            }
            1 => {
                guests[guest].replug().unwrap();
                wait_attached(&host, &daemon, &tap);
                replugs += 1;
                ("tap deleted and created again", Some(guest))
            }
            _ => {
                daemon.cli_ok(&["port", "del", "--ifname", &tap]).unwrap();
                std::thread::sleep(Duration::from_millis(300));
                let g = &guests[guest];
                daemon
                    .add_port(&tap, &instances[guest], g.mac(), g.addr())
                    .unwrap();
                wait_attached(&host, &daemon, &tap);
                readds += 1;
                ("port deleted and added again", Some(guest))
            }
        };
        breaks.push(Break {
            what,
            guest: whom,
            start,
            end: now(),
        });
        step += 1;
        std::thread::sleep(Duration::from_millis(1500));
    }

    let results: Vec<Value> = clients
        .into_iter()
        .map(|client| python::wait("own_answers.py", client).unwrap())
        .collect();
    // Connections still closing when the clients stopped.
    std::thread::sleep(Duration::from_secs(2));
    let flows_left = flows(&daemon);

    let (mut ok, mut wrong, mut failed, mut during_breaks, mut outside) = (0, 0, 0, 0, 0);
    let mut unexplained = Vec::new();
    for (guest, result) in results.iter().enumerate() {
        ok += result["ok"].as_u64().unwrap();
        wrong += result["wrong"].as_u64().unwrap();
        failed += result["failed"].as_u64().unwrap();
        assert!(
            result["ok"].as_u64().unwrap() > 0,
            "guest {guest} never served: {result}"
        );
        for at in result["failure_times"].as_array().unwrap() {
            let at = at.as_f64().unwrap();
            if breaks.iter().any(|b| b.covers(guest, at)) {
                during_breaks += 1;
            } else {
                outside += 1;
                unexplained.push((guest, at));
            }
        }
    }
    let down: f64 = breaks
        .iter()
        .filter(|b| b.guest.is_none())
        .map(|b| b.end - b.start)
        .sum();
    eprintln!(
        "chaos for {seconds} s, {GUESTS} guests on {NETWORKS} overlapping networks: \
         {kills} SIGKILL+restart ({down:.1} s down in all), {replugs} taps re-created, \
         {readds} ports re-added; answers: {ok} own, {wrong} wrong, {failed} failed \
         ({during_breaks} while the guest's path was broken, {outside} otherwise); \
         flows left afterwards: {flows_left}"
    );
    for result in &results {
        eprintln!("  {}", {
            let mut r = result.clone();
            r.as_object_mut().unwrap().remove("failure_times");
            r
        });
    }
    assert_eq!(wrong, 0, "a guest got another's answer: {results:?}");
    let timeline: Vec<String> = breaks
        .iter()
        .map(|b| {
            let whom = b.guest.map_or("all".to_owned(), |g| format!("guest {g}"));
            format!("{:.2}..{:.2} {whom}: {}", b.start, b.end, b.what)
        })
        .collect();
    assert!(
        unexplained.is_empty(),
        "requests failed while their path was whole (guest, time): {unexplained:?}; breaks: {timeline:#?}"
    );
    // A connection cut by its tap's deletion leaves its flow until the LRU
    // needs the room; nothing else should.
    assert!(
        flows_left <= replugs + readds + kills * GUESTS,
        "{flows_left} flows left after {replugs} tap deletions, {readds} port deletions and {kills} kills"
    );
    for (guest, instance) in guests.iter().zip(&instances) {
        check_own_answers(guest, instance).unwrap();
    }
}
