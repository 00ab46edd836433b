//! A boot storm in OpenStack mode: 200 guests crawl their metadata at once,
//! as cloud-init does on first boot, through the datapath to a (slow) fake
//! nova. Every crawl succeeds with the guest's own data, and the cache and
//! single flight keep nova's load to one request per (instance, path).
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use mdr_harness::names;
use mdr_harness::nova::NovaInstance;
use mdr_harness::tempdir::TempDir;
use mdr_harness::wait::{self, Poll};
use mdr_harness::{
    Daemon, FakeNova, FakeNovaConfig, Guest, GuestConfig, Host, Instance, METADATA_ADDR, TenantNet,
};

const SECRET: &str = "storm-secret";
/// Tenant networks (bridges); every instance has one port on each, so the
/// ports of one instance crawl the same paths at the same time.
const NETWORKS: usize = 4;
const INSTANCES: usize = 50;
/// Namespaces and links are made and removed this many at a time.
const WORKERS: usize = 8;
/// `--metadata-cache-expiration`: the whole storm fits in one window.
const CACHE_WINDOW: Duration = Duration::from_secs(120);
/// The fake nova takes this long per answer, so identical requests overlap.
const NOVA_DELAY: Duration = Duration::from_millis(20);

/// What cloud-init's OpenStack datasource fetches on first boot: the
/// OpenStack files, then the EC2 meta-data crawl, with the status the fake
/// nova answers (paths with `/missing` are 404, a key the instance lacks).
const CRAWL: &[(&str, u16)] = &[
    ("/openstack", 200),
    ("/openstack/2018-08-27/meta_data.json", 200),
    ("/openstack/2018-08-27/user_data", 200),
    ("/openstack/2018-08-27/vendor_data.json", 200),
    ("/openstack/2018-08-27/vendor_data2.json", 200),
    ("/openstack/2018-08-27/network_data.json", 200),
    ("/2009-04-04/meta-data/", 200),
    ("/2009-04-04/meta-data/ami-id", 200),
    ("/2009-04-04/meta-data/ami-launch-index", 200),
    ("/2009-04-04/meta-data/ami-manifest-path", 200),
    ("/2009-04-04/meta-data/block-device-mapping/", 200),
    ("/2009-04-04/meta-data/block-device-mapping/ami", 200),
    ("/2009-04-04/meta-data/block-device-mapping/root", 200),
    ("/2009-04-04/meta-data/hostname", 200),
    ("/2009-04-04/meta-data/instance-action", 200),
    ("/2009-04-04/meta-data/instance-id", 200),
    ("/2009-04-04/meta-data/instance-type", 200),
    ("/2009-04-04/meta-data/missing/kernel-id", 404),
    ("/2009-04-04/meta-data/local-hostname", 200),
    ("/2009-04-04/meta-data/local-ipv4", 200),
    ("/2009-04-04/meta-data/placement/", 200),
    ("/2009-04-04/meta-data/placement/availability-zone", 200),
    ("/2009-04-04/meta-data/public-hostname", 200),
    ("/2009-04-04/meta-data/public-ipv4", 200),
    ("/2009-04-04/meta-data/public-keys/", 200),
    ("/2009-04-04/meta-data/public-keys/0/", 200),
    ("/2009-04-04/meta-data/public-keys/0/openssh-key", 200),
    ("/2009-04-04/meta-data/reservation-id", 200),
    ("/2009-04-04/meta-data/security-groups", 200),
    ("/2009-04-04/user-data", 200),
];

/// Packets the kernel dropped because a CPU's input backlog was full
/// (/proc/net/softnet_stat, second column, summed over CPUs). veth pairs
/// deliver through that backlog: on a starved machine a synchronized burst
/// from hundreds of namespaces can overflow it.
fn backlog_drops() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok())
        .sum()
}

/// Runs `f` on every item with `workers` threads; the results in order.
fn parallel_map<T: Send, R: Send>(
    items: Vec<T>,
    workers: usize,
    f: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    let items: Vec<Mutex<Option<T>>> = items.into_iter().map(|i| Mutex::new(Some(i))).collect();
    let results: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(slot) = items.get(index) else { break };
                    let item = slot.lock().unwrap().take().expect("each item once");
                    let result = f(item);
                    *results[index].lock().unwrap() = Some(result);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|r| r.into_inner().unwrap().expect("every item ran"))
        .collect()
}

/// The guests, removed in parallel (also when the test fails).
struct Guests(Vec<Guest>);

impl Drop for Guests {
    fn drop(&mut self) {
        let start = Instant::now();
        let count = self.0.len();
        parallel_map(std::mem::take(&mut self.0), WORKERS, drop);
        eprintln!("removed {count} guests in {:?}", start.elapsed());
    }
}

/// One guest's port: which network, which instance, its address and MAC.
struct PortPlan {
    tap: String,
    network: usize,
    instance: usize,
    addr: Ipv4Addr,
    mac: String,
}

fn plan() -> Vec<PortPlan> {
    (0..NETWORKS)
        .flat_map(|network| {
            (0..INSTANCES).map(move |instance| PortPlan {
                tap: names::ifname("tp"),
                network,
                instance,
                addr: Ipv4Addr::new(10, 0, 0, 10 + instance as u8),
                mac: format!("fa:16:3e:{network:02x}:00:{instance:02x}"),
            })
        })
        .collect()
}

/// One transfer of a crawl: what curl got for `url`.
struct Fetched {
    url: String,
    status: u16,
    body: String,
    /// curl's timings: "connected after S s, total T s".
    timing: String,
}

/// Marks the end of each transfer in curl's output.
const TRANSFER_END: &str = "\n--mdr-transfer--";

/// One curl for the whole crawl, as cloud-init fetches: one request after
/// the other, each on a connection of its own (`Connection: close`). Also
/// what curl said on stderr.
fn crawl(guest: &Guest) -> Result<(Vec<Fetched>, String)> {
    let urls: Vec<String> = CRAWL
        .iter()
        .map(|(path, _)| format!("http://{METADATA_ADDR}{path}"))
        .collect();
    let write_out = format!(
        "{TRANSFER_END}%{{http_code}} %{{url_effective}} connected after %{{time_connect}} s, total %{{time_total}} s\n"
    );
    let mut args = vec![
        "curl",
        "-sS",
        "--noproxy",
        "*",
        "-m",
        "20",
        "-A",
        "Cloud-Init/23.1",
        "-H",
        "Connection: close",
        "-w",
        &write_out,
    ];
    args.extend(urls.iter().map(String::as_str));
    let out = guest.exec(&args)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    // body1 END "code url\n" body2 END "code url\n" ... END "code url\n"
    let mut parts = stdout.split(TRANSFER_END);
    let mut body = parts.next().unwrap_or_default().to_owned();
    let mut fetched = Vec::new();
    for part in parts {
        let (line, next_body) = part.split_once('\n').unwrap_or((part, ""));
        let mut fields = line.splitn(3, ' ');
        let (status, url) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
        fetched.push(Fetched {
            url: url.to_owned(),
            status: status.parse().unwrap_or(0),
            timing: fields.next().unwrap_or("").to_owned(),
            body: std::mem::replace(&mut body, next_body.to_owned()),
        });
    }
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if fetched.len() != CRAWL.len() {
        bail!(
            "curl made {} of {} transfers: {stderr}\n{stdout}",
            fetched.len(),
            CRAWL.len(),
        );
    }
    Ok((fetched, stderr))
}

/// Every transfer got the expected status, and every document names the
/// guest's own instance.
fn check_crawl((fetched, stderr): &(Vec<Fetched>, String), instance: &NovaInstance) -> Result<()> {
    let failed = fetched
        .iter()
        .zip(CRAWL)
        .filter(|(got, (_, status))| got.status != *status)
        .count();
    for (got, (path, status)) in fetched.iter().zip(CRAWL) {
        ensure!(
            got.url.ends_with(path) && got.status == *status,
            "{path}: expected {status}, got {} {:?} from {}, {} ({failed} of {} failed; curl: {})",
            got.status,
            got.body,
            got.url,
            got.timing,
            CRAWL.len(),
            stderr.trim()
        );
        if *status != 200 {
            continue;
        }
        let doc: serde_json::Value = serde_json::from_str(&got.body)
            .with_context(|| format!("{path}: not JSON: {:?}", got.body))?;
        let named = doc.get("uuid").or_else(|| doc.get("instance_id"));
        ensure!(
            named.and_then(|n| n.as_str()) == Some(instance.uuid.as_str()),
            "{path}: another instance's answer: {:?}",
            got.body
        );
    }
    Ok(())
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_boot_storm_of_200_guests_reaches_nova_once_per_instance_and_path() {
    let started = Instant::now();
    let host = Host::new().unwrap();
    let instances: Vec<NovaInstance> = (0..INSTANCES).map(|_| NovaInstance::new()).collect();
    let nova = FakeNova::start(&host, FakeNovaConfig::new(SECRET).delay(NOVA_DELAY)).unwrap();
    let mut args = nova.daemon_args(&nova.secret_file());
    args.extend([
        "--metadata-cache-expiration".to_owned(),
        CACHE_WINDOW.as_secs().to_string(),
    ]);
    let daemon = Daemon::start_with_args(&host, &args).unwrap();
    let nets: Vec<TenantNet> = (0..NETWORKS)
        .map(|_| TenantNet::without_router(&host, 24).unwrap())
        .collect();

    // As in a cloud: the ports are bound (registered with the CLI) before
    // the VMs start and their taps appear; the daemon attaches to each tap
    // when the kernel announces it.
    let plan = plan();
    let t = Instant::now();
    let registered: Vec<Result<()>> = parallel_map(plan.iter().collect(), WORKERS, |port| {
        daemon.add_nova_port(
            &port.tap,
            &instances[port.instance],
            &port.mac,
            port.addr,
            None,
        )
    });
    registered.into_iter().collect::<Result<()>>().unwrap();
    let registered = t.elapsed();

    let t = Instant::now();
    let guests = Guests(
        parallel_map(plan.iter().collect(), WORKERS, |port| {
            let config = GuestConfig::new(port.addr, &port.mac)
                .on_link()
                .with_tap(&port.tap);
            Guest::new(&nets[port.network], config)
        })
        .into_iter()
        .collect::<Result<_>>()
        .unwrap(),
    );
    let made = t.elapsed();
    wait::until("every tap attached", Duration::from_secs(30), || {
        let status = daemon.status()?;
        let attached = status["datapath"]["attached_taps"]
            .as_object()
            .map_or(0, |taps| taps.len());
        Ok(if attached == plan.len() {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("{attached} of {} attached", plan.len()))
        })
    })
    .unwrap();
    let attached = t.elapsed();

    // The storm: every guest starts its crawl at the same moment.
    let backlog_drops_before = backlog_drops();
    let t = Instant::now();
    let barrier = Barrier::new(guests.0.len());
    let crawls: Vec<Result<(Vec<Fetched>, String)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = guests
            .0
            .iter()
            .map(|guest| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    crawl(guest)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let crawled = t.elapsed();
    eprintln!(
        "{} ports registered (CLI, {WORKERS} at a time) in {registered:?}; their guests made in \
         {made:?}, all attached after {attached:?}; crawl of {} requests each: {crawled:?}",
        plan.len(),
        CRAWL.len()
    );

    let mut failures = Vec::new();
    for ((guest, port), fetched) in guests.0.iter().zip(&plan).zip(crawls) {
        let instance = &instances[port.instance];
        if let Err(err) = fetched.and_then(|fetched| check_crawl(&fetched, instance)) {
            let neigh = guest
                .ns()
                .ip(&["neigh", "show", "dev", "eth0"])
                .unwrap_or_default();
            failures.push(format!(
                "guest on tap {}: {err:#}; its neighbours: {}",
                guest.tap(),
                neigh.trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} crawls failed; the first:\n{}\nthe datapath's counters: {}\n\
         packets the kernel dropped from its input backlog meanwhile (all namespaces; \
         a starved CPU): {}",
        failures.len(),
        plan.len(),
        failures[..failures.len().min(3)].join("\n"),
        daemon.status().unwrap()["datapath"]["counters"],
        backlog_drops() - backlog_drops_before,
    );
    assert!(
        crawled < CACHE_WINDOW,
        "the storm outlasted the cache window"
    );

    // nova saw each (instance, path) exactly once.
    let requests = nova.settled_requests(INSTANCES * CRAWL.len());
    let mut per_key: HashMap<(String, String), usize> = HashMap::new();
    for request in &requests {
        let instance = request.header("x-instance-id").unwrap_or("?").to_owned();
        *per_key.entry((instance, request.path.clone())).or_default() += 1;
    }
    let repeated: Vec<_> = per_key.iter().filter(|(_, count)| **count > 1).collect();
    assert!(
        repeated.is_empty(),
        "nova was asked more than once for {} (instance, path) pairs, e.g. {:?}",
        repeated.len(),
        &repeated[..repeated.len().min(5)]
    );
    assert_eq!(per_key.len(), INSTANCES * CRAWL.len());
    assert_eq!(requests.len(), INSTANCES * CRAWL.len());

    let stats = &daemon.status().unwrap()["datapath"]["backend"]["stats"];
    eprintln!("daemon's nova stats after the storm: {stats}");
    let cache = &stats["cache"];
    let answered_locally = cache["hits"].as_u64().unwrap() + cache["coalesced"].as_u64().unwrap();
    assert_eq!(
        answered_locally as usize,
        (plan.len() - INSTANCES) * CRAWL.len(),
        "{stats}"
    );
    drop(guests);
    eprintln!("whole test: {:?}", started.elapsed());
}

/// Taps appearing faster than the daemon reads link events: the kernel
/// drops events once the daemon's netlink socket buffer is full, and every
/// registered tap must still be attached (the daemon lists the links again).
/// The 400 "taps" are veth pairs made by one `ip -batch`, far faster than
/// guests boot.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn a_burst_of_400_taps_appearing_at_once_is_all_attached() {
    const TAPS: usize = 400;
    let host = Host::new().unwrap();
    let daemon = Daemon::start(&host).unwrap();
    let instance = Instance::sample("burst");
    daemon.put_instance(&instance).unwrap();
    let taps: Vec<String> = (0..TAPS).map(|_| names::ifname("bu")).collect();
    let registered: Vec<Result<String>> = parallel_map(taps.iter().collect(), WORKERS, |tap| {
        daemon.cli_ok(&["port", "add", "--ifname", tap, "--instance", &instance.uuid])
    });
    registered.into_iter().collect::<Result<Vec<_>>>().unwrap();

    let batch = TempDir::new("batch").unwrap();
    let script: String = taps
        .iter()
        .map(|tap| format!("link add {tap} type veth peer name {tap}p\nlink set {tap} up\n"))
        .collect();
    std::fs::write(batch.join("taps"), script).unwrap();
    let t = Instant::now();
    host.exec_ok(&["ip", "-batch", &batch.join("taps").to_string_lossy()])
        .unwrap();
    wait::until("every tap attached", Duration::from_secs(30), || {
        let status = daemon.status()?;
        let attached = status["datapath"]["attached_taps"]
            .as_object()
            .map_or(0, |taps| taps.len());
        Ok(if attached == TAPS {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("{attached} of {TAPS} attached"))
        })
    })
    .unwrap();
    eprintln!(
        "{TAPS} taps made and attached in {:?}; link events lost on the way: {}",
        t.elapsed(),
        daemon.log().contains("link events were lost")
    );
}
