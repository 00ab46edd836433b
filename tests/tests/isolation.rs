//! What one guest sends cannot hurt another guest's traffic, and what the
//! datapath must not serve it leaves alone or drops, counted:
//!
//! - five guests flooding SYNs that never complete do not evict a quiet
//!   guest's idle keep-alive connection, nor slow its new connections;
//! - VLAN-tagged frames (802.1Q, and 802.1ad with an inner 802.1Q tag) from
//!   a registered tap pass untouched to whatever listens on that VLAN;
//! - a request whose packets carry IPv4 options is dropped, not served.
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use mdr_harness::fixtures::{GUEST_ADDR, GUEST_MAC};
use mdr_harness::tenant::DECOY_MARK;
use mdr_harness::{Daemon, Guest, GuestConfig, Host, Instance, TenantNet, python, quiet_guest};
use serde_json::Value;

/// The daemon's default identity range: a port's IPv4 identity address is
/// this plus its slot.
const IDENTITY_NET: Ipv4Addr = Ipv4Addr::new(240, 1, 0, 0);

fn counters(daemon: &Daemon) -> Value {
    daemon.status().unwrap()["datapath"]["counters"].clone()
}

/// How much `name` grew between two `counters` snapshots (0 if absent).
fn grown(before: &Value, after: &Value, name: &str) -> u64 {
    after[name].as_u64().unwrap_or(0) - before[name].as_u64().unwrap_or(0)
}

/// A registered, served guest on a network with a router and a decoy.
struct Scene {
    guest: Guest,
    daemon: Daemon,
    net: TenantNet,
    _host: Host,
}

fn scene(name: &str) -> Scene {
    let host = Host::new().unwrap();
    let net = TenantNet::with_router_and_decoy(&host).unwrap();
    let guest = Guest::new(&net, GuestConfig::new(GUEST_ADDR, GUEST_MAC)).unwrap();
    let daemon = Daemon::start(&host).unwrap();
    let instance = Instance::sample(name);
    daemon.register(&guest, &instance).unwrap();
    guest.wait_served(&instance.uuid).unwrap();
    Scene {
        guest,
        daemon,
        net,
        _host: host,
    }
}

impl Scene {
    /// The guest's plain request is answered, by the daemon (not the decoy).
    fn assert_served(&self) {
        let reply = self
            .guest
            .http_get("/latest/meta-data/instance-id")
            .unwrap();
        assert_eq!(reply.status, 200, "{reply}");
        assert!(!reply.body.contains(DECOY_MARK), "{reply}");
    }
}

/// Flooding guests.
const FLOODERS: usize = 5;
/// SYNs per second each flooder sends: the five together insert 30,000 new
/// flows a second, enough to turn a shared 131,072-entry table over in
/// about 4.4 s, while staying within each port's SYN budget (10,000/s), so
/// that every SYN reaches the flow table.
const FLOOD_RATE: &str = "6000";
const FLOOD_SECONDS: f64 = 20.0;
/// When the flood starts, after the flooders are spawned.
const FLOOD_PREPARATION: Duration = Duration::from_secs(6);
/// How long the quiet guest's keep-alive connection idles amid the flood.
const IDLE_SECONDS: &str = "8";
/// New connections the quiet guest times in a round, and rounds, without
/// and amid the flood. The p99s compared are the median round's: one round
/// slowed by something else on this shared 2-core machine (another test)
/// does not decide.
const SAMPLES: &str = "200";
const ROUNDS: usize = 5;
/// Whole floods tried until one keeps the quiet guest's p99 within 2x.
/// Every one must keep its keep-alive connection: eviction is the failure
/// this test is about, and it shows in every attempt. The p99 compares
/// timings taken 20 s apart on a shared 2-core machine, where a parallel
/// test can slow either side by itself (as in api_limits.rs).
const ATTEMPTS: usize = 3;
/// SYNs a flood must send to count: enough that, spread over the flood,
/// the idle time alone sees as many new flows as the old shared flow table
/// held (131,072), i.e. what evicted the quiet guest's flow before flows
/// were kept per port. (A machine too busy to send that proves nothing.)
const MIN_SYNS: u64 = 131_072 * 20 / 8;

/// The median of the rounds' p99s; the rounds must all have been answered.
fn median_p99(rounds: &[Value]) -> f64 {
    let mut p99s: Vec<f64> = rounds
        .iter()
        .map(|run| {
            quiet_guest::assert_all_answered(run);
            quiet_guest::p99(run)
        })
        .collect();
    p99s.sort_by(f64::total_cmp);
    p99s[p99s.len() / 2]
}

/// Five guests flood SYNs that never complete for 20 s. A quiet guest's
/// keep-alive connection, opened once the flood runs and idle for 8 s amid
/// it, still gets its answer; its new connections' p99 stays within twice
/// what it was without the flood (in one of `ATTEMPTS` floods).
#[test]
#[ignore = "root: run via cargo xtask test"]
fn syn_floods_from_other_guests_do_not_evict_a_quiet_guests_flows() {
    let host = Host::new().unwrap();
    let net = TenantNet::with_router_and_decoy(&host).unwrap();
    let quiet = Guest::new(&net, GuestConfig::new(GUEST_ADDR, GUEST_MAC)).unwrap();
    let flooders: Vec<Guest> = (0..FLOODERS)
        .map(|i| {
            let addr = Ipv4Addr::new(10, 0, 0, 11 + i as u8);
            let mac = format!("fa:16:3e:00:01:{:02x}", 11 + i);
            Guest::new(&net, GuestConfig::new(addr, &mac)).unwrap()
        })
        .collect();
    // Per-port request limits out of the way: the quiet guest's timed
    // requests must all be answered.
    let daemon = Daemon::start_with_config_file(&host, quiet_guest::NO_RATE_LIMIT).unwrap();
    let quiet_instance = Instance::sample("quiet");
    daemon.register(&quiet, &quiet_instance).unwrap();
    for (i, flooder) in flooders.iter().enumerate() {
        let instance = Instance::sample(&format!("flooder{i}"));
        daemon.register(flooder, &instance).unwrap();
        flooder.wait_served(&instance.uuid).unwrap();
    }
    quiet.wait_served(&quiet_instance.uuid).unwrap();

    let mut attempts = Vec::new();
    for attempt in 1..=ATTEMPTS {
        let (ratio, syns) = flood_once(&daemon, &quiet, &flooders);
        eprintln!("attempt {attempt}: {syns} SYNs, p99 amid the flood / without it {ratio:.2}");
        attempts.push((ratio, syns));
        if ratio <= 2.0 && syns >= MIN_SYNS {
            break;
        }
    }
    assert!(
        attempts.iter().any(|(_, syns)| *syns >= MIN_SYNS),
        "no flood reached {MIN_SYNS} SYNs (the machine was too busy to test this): \
         (p99 ratio, SYNs) {attempts:?}"
    );
    assert!(
        attempts
            .iter()
            .any(|(ratio, syns)| *ratio <= 2.0 && *syns >= MIN_SYNS),
        "the flood slowed the quiet guest's new connections beyond twice their p99 in every \
         attempt: (p99 amid / without, SYNs) {attempts:?}"
    );
}

/// The CPUs this process may run on.
fn allowed_cpus() -> libc::cpu_set_t {
    // SAFETY: a zeroed cpu_set_t is an empty set, filled by the kernel for
    // this thread (pid 0) within its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::sched_getaffinity(0, size, &mut set) }, 0);
    set
}

/// The CPU the flooders share: the highest this process may run on. The
/// quiet guest's clients run on the others (on a 1-CPU machine, on that
/// one too). On a hypervisor each guest has vCPUs of its own, and a
/// flood's kernel work (the datapath, the server's SYN handling, the
/// SYN-ACKs) runs on the flooding guests' vCPUs and their taps' vhost
/// threads; here guests are processes that would otherwise take turns on
/// every core, and the test would time the scheduler instead of the shared
/// datapath and server. The daemon runs where the scheduler puts it, the
/// flooders' CPU included.
fn flood_cpu() -> usize {
    let set = allowed_cpus();
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: cpu is below CPU_SETSIZE, within the set.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .max()
        .expect("this process may run on some CPU")
}

/// Runs `f` as the quiet guest: this thread off the flooders' CPU (see
/// `flood_cpu`) and at a higher CPU priority (nice -10), so that what it
/// starts, the quiet guest's clients, inherits both. The flooders keep the
/// default priority, so they reach their rate on a busy machine.
fn as_quiet_guest<T>(f: impl FnOnce() -> T) -> T {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    let all = allowed_cpus();
    let mut quiet = all;
    // SAFETY: flood_cpu is below CPU_SETSIZE; the sets are this thread's
    // own, and who 0 is the calling thread (Linux).
    unsafe {
        libc::CPU_CLR(flood_cpu(), &mut quiet);
        if libc::CPU_COUNT(&quiet) > 0 {
            assert_eq!(libc::sched_setaffinity(0, size, &quiet), 0);
        }
        libc::setpriority(libc::PRIO_PROCESS, 0, -10);
    }
    let result = f();
    // SAFETY: as above, back to what this thread had.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 0);
        assert_eq!(libc::sched_setaffinity(0, size, &all), 0);
    }
    result
}

/// One flood of `FLOOD_SECONDS` by `flooders` while `quiet`'s keep-alive
/// connection idles (asserted answered) and its new connections are timed;
/// the ratio of their median-round p99 amid the flood to without it, and
/// the SYNs the flood sent.
fn flood_once(daemon: &Daemon, quiet: &Guest, flooders: &[Guest]) -> (f64, u64) {
    let path = "/latest/meta-data/instance-id";
    let limit = Duration::from_secs(60);
    let timed = || quiet_guest::time_requests(quiet.ns(), path, SAMPLES, limit).unwrap();
    let calm: Vec<Value> = as_quiet_guest(|| (0..ROUNDS).map(|_| timed()).collect());
    let before = counters(daemon);

    // Each flooder starts at `start_at` and says so with a file.
    let script = python::script("syn_flood.py");
    let seconds = FLOOD_SECONDS.to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let start_at = format!("{:.3}", (now + FLOOD_PREPARATION).as_secs_f64());
    let ready = mdr_harness::tempdir::TempDir::new("flood").unwrap();
    let ready_files: Vec<_> = (0..flooders.len())
        .map(|i| ready.join(&format!("flooder{i}")))
        .collect();
    let cpu = flood_cpu().to_string();
    let floods: Vec<_> = flooders
        .iter()
        .zip(&ready_files)
        .map(|(flooder, ready_file)| {
            let args = [
                "timeout",
                "-s",
                "KILL",
                "120",
                "python3",
                "-B",
                &script.to_string_lossy(),
                FLOOD_RATE,
                &seconds,
                &start_at,
                &ready_file.to_string_lossy(),
                "0",
                &cpu,
            ];
            flooder
                .ns()
                .spawn(&args, Stdio::piped(), Stdio::piped())
                .unwrap()
        })
        .collect();
    // The keep-alive connection opens once every flooder sends, a second in.
    mdr_harness::wait::until("every flooder to start", Duration::from_secs(60), || {
        let waiting = ready_files.iter().filter(|file| !file.exists()).count();
        Ok(if waiting == 0 {
            mdr_harness::wait::Poll::Ready(())
        } else {
            mdr_harness::wait::Poll::Pending(format!("{waiting} not started"))
        })
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let (keepalive, busy) = as_quiet_guest(|| {
        let keepalive = python::spawn(
            quiet.ns(),
            "idle_keepalive.py",
            &[path, IDLE_SECONDS],
            limit,
        )
        .unwrap();
        std::thread::sleep(Duration::from_secs(1));
        let busy: Vec<Value> = (0..ROUNDS).map(|_| timed()).collect();
        (keepalive, busy)
    });
    let keepalive = python::wait("idle_keepalive.py", keepalive).unwrap();
    let floods: Vec<Value> = floods
        .into_iter()
        .map(|flood| python::wait("syn_flood.py", flood).unwrap())
        .collect();
    let after = counters(daemon);
    eprintln!("floods: {floods:?}");
    eprintln!("keep-alive: {keepalive}");

    // The flood ran all through the idle time.
    let sent: Vec<f64> = keepalive["sent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_f64().unwrap())
        .collect();
    for flood in &floods {
        assert_eq!(flood["errors"], 0, "{flood}");
        let (start, end) = (
            flood["start"].as_f64().unwrap(),
            flood["end"].as_f64().unwrap(),
        );
        assert!(
            start < sent[0] && sent.last().unwrap() < &end,
            "the keep-alive connection did not idle amid the flood: {flood} {keepalive}"
        );
    }
    let syns: u64 = floods.iter().map(|f| f["sent"].as_u64().unwrap()).sum();
    assert_eq!(
        keepalive["statuses"],
        serde_json::json!([200, 200]),
        "the quiet guest's keep-alive connection lost its answer after {IDLE_SECONDS} s idle \
         amid {syns} SYNs from {FLOODERS} other guests: {keepalive}"
    );

    let (calm_p99, busy_p99) = (median_p99(&calm), median_p99(&busy));
    let p99s = |runs: &[Value]| -> Vec<String> {
        runs.iter()
            .map(|run| format!("{:.2}", quiet_guest::p99(run) * 1e3))
            .collect()
    };
    eprintln!(
        "p99 per round (ms): without {:?}, amid {:?}",
        p99s(&calm),
        p99s(&busy)
    );
    let last_busy = busy.last().unwrap()["end"].as_f64().unwrap();
    for flood in &floods {
        assert!(
            last_busy < flood["end"].as_f64().unwrap(),
            "the quiet guest's timings outlasted the flood: {flood}"
        );
    }
    eprintln!(
        "{syns} SYNs from {FLOODERS} guests in {FLOOD_SECONDS} s; quiet guest new-connection \
         p99 {:.2} ms without the flood, {:.2} ms amid it ({:.2}x)",
        calm_p99 * 1e3,
        busy_p99 * 1e3,
        busy_p99 / calm_p99
    );
    for name in [
        "caught",
        "replied",
        "dropped_syn_budget",
        "dropped_flow_table",
        "dropped_no_flow",
        "dropped_no_flow_late",
    ] {
        eprintln!("{name} +{}", grown(&before, &after, name));
    }
    let tables = mdr_harness::flows::tables(&daemon.pinned_map("FLOWS")).unwrap();
    let held: Vec<String> = tables
        .iter()
        .map(|t| format!("{} {}/{}", t.identity, t.entries, t.max_entries))
        .collect();
    eprintln!("flows per port after the flood: {held:?}");
    (busy_p99 / calm_p99, syns)
}

/// RFC 1071 Internet checksum.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn mac_bytes(mac: &str) -> Vec<u8> {
    mac.split(':')
        .map(|byte| u8::from_str_radix(byte, 16).unwrap())
        .collect()
}

/// A frame from the guest to `dst_mac` with `tags` (TPID, TCI) after the
/// MAC addresses, carrying `ethertype` and `payload`.
fn frame(dst_mac: &[u8], tags: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = dst_mac.to_vec();
    frame.extend(mac_bytes(GUEST_MAC));
    for (tpid, tci) in tags {
        frame.extend(tpid.to_be_bytes());
        frame.extend(tci.to_be_bytes());
    }
    frame.extend(ethertype.to_be_bytes());
    frame.extend(payload);
    frame
}

/// A SYN from the guest to 169.254.169.254:80 with sequence number `seq`.
fn syn_to_metadata(seq: u32) -> Vec<u8> {
    let (src, dst) = (GUEST_ADDR.octets(), [169, 254, 169, 254]);
    let mut ip = vec![0x45, 0, 0, 40, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0];
    ip.extend(src);
    ip.extend(dst);
    let ip_check = checksum(&ip);
    ip[10..12].copy_from_slice(&ip_check.to_be_bytes());
    let mut tcp = Vec::new();
    tcp.extend(40000u16.to_be_bytes());
    tcp.extend(80u16.to_be_bytes());
    tcp.extend(seq.to_be_bytes());
    tcp.extend([0, 0, 0, 0, 5 << 4, 0x02, 0xfa, 0xf0, 0, 0, 0, 0]);
    let mut pseudo = [&src[..], &dst[..], &[0, 6, 0, 20]].concat();
    pseudo.extend(&tcp);
    let tcp_check = checksum(&pseudo);
    tcp[16..18].copy_from_slice(&tcp_check.to_be_bytes());
    [ip, tcp].concat()
}

/// An ARP who-has 169.254.169.254 from the guest; `marker` goes where the
/// target MAC is (unused in a request).
fn arp_for_metadata(marker: [u8; 6]) -> Vec<u8> {
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend(mac_bytes(GUEST_MAC));
    arp.extend(GUEST_ADDR.octets());
    arp.extend(marker);
    arp.extend([169, 254, 169, 254]);
    arp
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A registered guest's tagged frames (a trunk subport's traffic) are not
/// the datapath's: a SYN to 169.254.169.254:80 and an ARP for it, tagged
/// 802.1Q, and the SYN tagged 802.1ad over 802.1Q (QinQ), all reach the
/// router's side of the bridge as sent, and each is counted as
/// `passed_vlan`. (The test kernel has no 8021q module, so the guest sends
/// the frames with a packet socket and the router captures them.)
#[test]
#[ignore = "root: run via cargo xtask test"]
fn vlan_tagged_frames_from_a_registered_tap_pass_untouched() {
    let scene = scene("trunk");
    let router = scene.net.router().unwrap();
    let link: Value =
        serde_json::from_str(&router.ip(&["-j", "link", "show", "dev", "eth0"]).unwrap()).unwrap();
    let router_mac = mac_bytes(link[0]["address"].as_str().unwrap());
    let run = mdr_harness::names::random_u64() as u32;
    let (seq_q, seq_qinq) = (run, run.wrapping_add(1));
    let arp_marker = [
        0x4d,
        0x44,
        0x52,
        (run >> 16) as u8,
        (run >> 8) as u8,
        run as u8,
    ];
    let frames = [
        frame(
            &router_mac,
            &[(0x8100, 100)],
            0x0800,
            &syn_to_metadata(seq_q),
        ),
        frame(
            &router_mac,
            &[(0x88a8, 200), (0x8100, 300)],
            0x0800,
            &syn_to_metadata(seq_qinq),
        ),
        frame(
            &[0xff; 6],
            &[(0x8100, 100)],
            0x0806,
            &arp_for_metadata(arp_marker),
        ),
    ];
    let markers = [
        seq_q.to_be_bytes().to_vec(),
        seq_qinq.to_be_bytes().to_vec(),
        arp_marker.to_vec(),
    ];

    let before = counters(&scene.daemon);
    let mut captures = Vec::new();
    for marker in &markers {
        let marker = hex(marker);
        let capture = python::spawn(
            router,
            "raw_frames.py",
            &["capture", "eth0", "3", &marker],
            Duration::from_secs(20),
        )
        .unwrap();
        captures.push(capture);
    }
    std::thread::sleep(Duration::from_millis(800));
    let hexes: Vec<String> = frames.iter().map(|f| hex(f)).collect();
    let mut args = vec!["send", "eth0"];
    args.extend(hexes.iter().map(String::as_str));
    python::run(
        scene.guest.ns(),
        "raw_frames.py",
        &args,
        Duration::from_secs(20),
    )
    .unwrap();
    let captured: Vec<Value> = captures
        .into_iter()
        .map(|capture| python::wait("raw_frames.py", capture).unwrap())
        .collect();
    let after = counters(&scene.daemon);

    for (sent, capture) in hexes.iter().zip(&captured) {
        let frames = capture["frames"].as_array().unwrap();
        assert_eq!(frames.len(), 1, "sent {sent}, the router saw {capture}");
        // The router's kernel took the outer tag off into metadata, as the
        // tap's did: put it back to compare with what the guest sent.
        let got = frames[0]["hex"].as_str().unwrap();
        let got = match frames[0]["vlan_tci"].as_u64() {
            Some(tci) => {
                let tpid = frames[0]["vlan_tpid"].as_u64().unwrap();
                format!("{}{tpid:04x}{tci:04x}{}", &got[..24], &got[24..])
            }
            None => got.to_owned(),
        };
        assert_eq!(&got, sent, "the frame was changed on the way: {capture}");
    }
    // Nothing answered the tagged ARP, and exactly the three tagged frames
    // were passed as such. (`caught` may grow by the tail of the request
    // that found the guest served: the frames' arrival is the check.)
    for (name, expected) in [("arp_answered", 0), ("passed_vlan", 3)] {
        let grew = grown(&before, &after, name);
        eprintln!("{name} +{grew}");
        assert_eq!(grew, expected, "{name}");
    }

    // Untagged traffic from the same tap is still served.
    scene.assert_served();
}

/// A request to the metadata service whose packets carry IPv4 options
/// (Record Route) is dropped and counted, not served: no answer, not even
/// the decoy's.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn requests_with_ip_options_are_dropped_and_counted() {
    let scene = scene("options");
    let before = counters(&scene.daemon);
    let out = python::run(
        scene.guest.ns(),
        "ip_options.py",
        &["/latest/meta-data/instance-id", "3"],
        Duration::from_secs(20),
    )
    .unwrap();
    let after = counters(&scene.daemon);
    assert_eq!(
        out["status"],
        Value::Null,
        "answered despite IP options: {out}"
    );
    assert!(
        out["error"].as_str().unwrap_or("").contains("timed out"),
        "{out}"
    );
    // (`caught` may still grow by the tail of the request that found the
    // guest served, so the answer, not that counter, is the check.)
    let dropped = grown(&before, &after, "dropped_ip_options");
    eprintln!("dropped_ip_options +{dropped}: {out}");
    assert!(dropped >= 1, "dropped_ip_options grew by {dropped}");

    // The same guest without options is served as before.
    scene.assert_served();
}

/// Each attached port has a flow table of its own in the pinned FLOWS map;
/// a restarted daemon (even after SIGKILL) keeps using the same tables, so
/// the flows in them survive; `port del` removes the port's table.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn each_port_has_its_own_flow_table_kept_across_restarts() {
    let host = Host::new().unwrap();
    let net = TenantNet::with_router_and_decoy(&host).unwrap();
    let guests: Vec<Guest> = (0..2)
        .map(|i| {
            let addr = Ipv4Addr::new(10, 0, 0, 5 + i as u8);
            Guest::new(
                &net,
                GuestConfig::new(addr, &format!("fa:16:3e:00:00:0{}", 5 + i)),
            )
            .unwrap()
        })
        .collect();
    let mut daemon = Daemon::start(&host).unwrap();
    let instances: Vec<Instance> = (0..2)
        .map(|i| Instance::sample(&format!("own{i}")))
        .collect();
    for (guest, instance) in guests.iter().zip(&instances) {
        daemon.register(guest, instance).unwrap();
        guest.wait_served(&instance.uuid).unwrap();
    }
    let flows = daemon.pinned_map("FLOWS");
    let ids = |tables: &[mdr_harness::flows::FlowTable]| -> Vec<(Ipv4Addr, u32)> {
        let mut ids: Vec<_> = tables.iter().map(|t| (t.identity, t.map_id)).collect();
        ids.sort();
        ids
    };
    // The two ports' tables; FLOWS also holds spare tables for the slots
    // handed out next, made ahead of any port.
    let identities: Vec<Ipv4Addr> = {
        let status = daemon.status().unwrap();
        guests
            .iter()
            .map(|guest| {
                let slot = status["datapath"]["attached_taps"][guest.tap()]["slot"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no slot for {} in {status}", guest.tap()));
                Ipv4Addr::from(u32::from(IDENTITY_NET) + slot as u32)
            })
            .collect()
    };
    let ports_tables =
        |flows: &std::path::Path| -> anyhow::Result<Vec<mdr_harness::flows::FlowTable>> {
            Ok(mdr_harness::flows::tables(flows)?
                .into_iter()
                .filter(|table| identities.contains(&table.identity))
                .collect())
        };
    let before = ports_tables(&flows).unwrap();
    assert_eq!(before.len(), 2, "{before:?}");
    for table in &before {
        assert_eq!(
            table.max_entries,
            u64::from(metadata_ebpf::MAX_FLOWS_PER_PORT)
        );
        eprintln!(
            "{}: table {} holds {} flows, memlock {} bytes",
            table.identity, table.map_id, table.entries, table.memlock_bytes
        );
    }

    daemon.kill9().unwrap();
    daemon.restart().unwrap();
    for (guest, instance) in guests.iter().zip(&instances) {
        guest.wait_served(&instance.uuid).unwrap();
    }
    let after = ports_tables(&flows).unwrap();
    assert_eq!(
        ids(&after),
        ids(&before),
        "the restarted daemon replaced the tables"
    );

    daemon
        .cli_ok(&["port", "del", "--ifname", guests[0].tap()])
        .unwrap();
    let gone = mdr_harness::wait::until(
        "the deleted port's flow table to go",
        Duration::from_secs(10),
        || {
            let tables = ports_tables(&flows)?;
            Ok(if tables.len() == 1 {
                mdr_harness::wait::Poll::Ready(tables)
            } else {
                mdr_harness::wait::Poll::Pending(format!("{tables:?}"))
            })
        },
    )
    .unwrap();
    // The other port keeps its table, and is served.
    assert!(ids(&before).contains(&ids(&gone)[0]), "{gone:?} {before:?}");
    guests[1].wait_served(&instances[1].uuid).unwrap();
}
