//! Open guest connections are capped for the whole host as well as per
//! port, and guests that hold connections open without finishing a request
//! (slow headers) do not slow the others.
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use mdr_harness::fixtures::{GATEWAY, GUEST_ADDR, GUEST_MAC, PREFIX_LEN};
use mdr_harness::slow_clients::SlowClients;
use mdr_harness::wait::{self, Poll};
use mdr_harness::{Daemon, Guest, GuestConfig, Host, Instance, TenantNet, quiet_guest};
use serde_json::Value;

fn connections(daemon: &Daemon) -> Value {
    daemon.status().unwrap()["datapath"]["connections"].clone()
}

/// Waits until the daemon holds `open` guest connections.
fn wait_open(daemon: &Daemon, open: u64) {
    wait::until(
        &format!("{open} open guest connections"),
        Duration::from_secs(10),
        || {
            let now = connections(daemon);
            Ok(if now["open"] == open {
                Poll::Ready(())
            } else {
                Poll::Pending(now.to_string())
            })
        },
    )
    .unwrap();
}

/// With `max_connections = 8`, a guest's connection beyond the eighth of
/// the host is closed at once (even though its port has room), and counted;
/// once the others are gone it is served again.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn connections_over_the_host_cap_are_closed_and_counted() {
    let host = Host::new().unwrap();
    let net = TenantNet::with_router_and_decoy(&host).unwrap();
    let holder = Guest::new(&net, GuestConfig::new(GUEST_ADDR, GUEST_MAC)).unwrap();
    let latecomer = Guest::new(
        &net,
        GuestConfig::new(Ipv4Addr::new(10, 0, 0, 6), "fa:16:3e:00:00:06"),
    )
    .unwrap();
    let daemon = Daemon::start_with_config_file(
        &host,
        "max_connections = 8\nmax_connections_per_port = 6\n",
    )
    .unwrap();
    let (a, b) = (Instance::sample("holder"), Instance::sample("latecomer"));
    daemon.register(&holder, &a).unwrap();
    daemon.register(&latecomer, &b).unwrap();
    holder.wait_served(&a.uuid).unwrap();
    latecomer.wait_served(&b.uuid).unwrap();
    let caps = connections(&daemon);
    assert_eq!(
        (caps["max"].as_u64(), caps["max_per_port"].as_u64()),
        (Some(8), Some(6))
    );

    // 6 from the holder (its port's cap) and 2 from the latecomer: the host's 8.
    let mut held = SlowClients::start(&[holder.ns()], 6).unwrap();
    let mut second = SlowClients::start(&[latecomer.ns()], 2).unwrap();
    wait_open(&daemon, 8);

    let started = Instant::now();
    let refused = latecomer.http_get("/latest/meta-data/instance-id").unwrap();
    assert_eq!(refused.status, 0, "served over the host cap: {refused}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed only after {:?}",
        started.elapsed()
    );
    let now = connections(&daemon);
    assert!(now["refused_host_cap"].as_u64().unwrap() >= 1, "{now}");
    assert_eq!(now["refused_port_cap"], 0, "{now}");
    eprintln!("over the host cap: {refused}; counters {now}");

    drop(second.finish());
    drop(held.finish());
    wait_open(&daemon, 0);
    let reply = latecomer.http_get("/latest/meta-data/instance-id").unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, b.ec2_id.as_str())
    );
}

const SLOW_GUESTS: usize = 100;
/// Slow connections each slow guest holds (and reopens when cut off).
const SLOW_PER_GUEST: usize = 2;
/// Requests the quiet guest times, idle and amid the slow guests.
const SAMPLES: &str = "300";
/// Rounds of (idle, busy) timings; one within bounds passes (other work on
/// a shared 2-core machine can spoil a round by itself).
const ROUNDS: usize = 3;

/// 100 guests each hold slow-header connections open the whole time (and
/// reopen them when the server cuts them off after 10 s); a quiet guest's
/// p99 latency, a new connection per request, stays within twice what it is
/// without them.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_hundred_slow_header_guests_do_not_slow_a_quiet_one() {
    let host = Host::new().unwrap();
    // Four tenant networks, all with the same subnet, 25 slow guests each.
    let nets: Vec<TenantNet> = (0..4)
        .map(|_| TenantNet::new(&host, GATEWAY, PREFIX_LEN).unwrap())
        .collect();
    let quiet = Guest::new(&nets[0], GuestConfig::new(GUEST_ADDR, GUEST_MAC)).unwrap();
    let slow: Vec<Guest> = (0..SLOW_GUESTS)
        .map(|n| {
            let last = 10 + (n / nets.len()) as u8;
            let config = GuestConfig::new(
                Ipv4Addr::new(10, 0, 0, last),
                &format!("fa:16:3e:00:01:{last:02x}"),
            );
            Guest::new(&nets[n % nets.len()], config).unwrap()
        })
        .collect();
    // The quiet guest's 600 timed requests a round are over the default
    // request rate; this test is about connections, not the rate.
    let daemon = Daemon::start_with_config_file(&host, quiet_guest::NO_RATE_LIMIT).unwrap();
    let quiet_instance = Instance::sample("quiet");
    daemon.register(&quiet, &quiet_instance).unwrap();
    for (n, guest) in slow.iter().enumerate() {
        daemon
            .register(guest, &Instance::sample(&format!("slow{n}")))
            .unwrap();
    }
    quiet.wait_served(&quiet_instance.uuid).unwrap();
    wait::until("every tap attached", Duration::from_secs(30), || {
        let attached = daemon.status()?["datapath"]["attached_taps"]
            .as_object()
            .map_or(0, |taps| taps.len());
        Ok(if attached == SLOW_GUESTS + 1 {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("{attached} attached"))
        })
    })
    .unwrap();

    let path = "/latest/meta-data/instance-id";
    let limit = Duration::from_secs(60);
    let slow_namespaces: Vec<_> = slow.iter().map(Guest::ns).collect();
    quiet_guest::assert_within_twice_in_a_round(
        ROUNDS,
        "slow-header guests moved the quiet guest's p99 beyond twice its idle value",
        |round| {
            let idle = quiet_guest::time_requests(quiet.ns(), path, SAMPLES, limit).unwrap();
            let mut slow_clients = SlowClients::start(&slow_namespaces, SLOW_PER_GUEST).unwrap();
            let held = connections(&daemon)["open"].as_u64().unwrap();
            let busy = quiet_guest::time_requests(quiet.ns(), path, SAMPLES, limit).unwrap();
            let during = connections(&daemon)["open"].as_u64().unwrap();
            let stats = slow_clients.finish().unwrap();
            quiet_guest::assert_all_answered(&idle);
            quiet_guest::assert_all_answered(&busy);
            let expected = (SLOW_GUESTS * SLOW_PER_GUEST) as u64;
            assert!(
                held >= expected && during >= expected * 9 / 10,
                "the slow guests did not hold their connections: {held} then {during} open, {stats:?}"
            );
            let (idle_p99, busy_p99) = (quiet_guest::p99(&idle), quiet_guest::p99(&busy));
            eprintln!(
                "round {round}: quiet guest p99 {:.3} ms idle, {:.3} ms amid {held} slow connections \
                 of {SLOW_GUESTS} guests ({stats:?})",
                idle_p99 * 1e3,
                busy_p99 * 1e3
            );
            (idle_p99, busy_p99)
        },
    );
}
