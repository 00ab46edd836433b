//! `cargo xtask run --demo`: two guests with the same IP and MAC, on two
//! tenant networks, each answered with its own metadata.
//!
//! Everything lives in namespaces made for the demo (the daemon, its veth
//! pair, the bridges and taps in a "hypervisor" namespace), and the daemon
//! gets its own state dir, admin socket and bpffs dir, so the demo never
//! meets a real daemon or the machine's own network. Ctrl-C (or an error)
//! tears it all down: the harness's types clean up on Drop.
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mdr_harness::fixtures::{GATEWAY, GUEST_ADDR, GUEST_MAC, PREFIX_LEN};
use mdr_harness::{
    Daemon, DaemonConfig, Guest, GuestConfig, Host, Instance, TenantNet, bpffs, names,
};

use crate::{build, paths, setup};

const PATHS: [&str; 2] = [
    "/openstack/latest/meta_data.json",
    "/latest/meta-data/instance-id",
];

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn stop_requested() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

pub fn run(serve_args: &[String]) -> Result<()> {
    setup::require_root("run the demo (network namespaces, bpffs)")?;
    names::set_prefix(names::DEMO_PREFIX);
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
    let bin = build::release()?;
    names::sweep_stale();

    let dir = paths::demo_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = sandbox(DaemonConfig {
        bin,
        state_dir: dir.join("state"),
        admin_socket: dir.join("admin.sock"),
        bpffs: std::path::Path::new(bpffs::ROOT).join(names::global("bpffs")),
        server_netns: names::global("srv"),
        log: dir.join("daemon.log"),
        extra_args: serve_args.to_vec(),
        env: Vec::new(),
        command_prefix: Vec::new(),
        own_process_group: true,
        print_log_on_drop: false,
        handed_over: None,
    });
    if result.is_err() {
        let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
        eprintln!("--- daemon log ---\n{log}--- end of daemon log ---");
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Builds the sandbox, shows the answers and serves until told to stop. The
/// locals drop in reverse order: daemon, guests, networks, host namespace.
fn sandbox(config: DaemonConfig) -> Result<()> {
    let host = Host::new()?;
    let net_a = TenantNet::new(&host, GATEWAY, PREFIX_LEN)?;
    let net_b = TenantNet::new(&host, GATEWAY, PREFIX_LEN)?;
    let guest_a = Guest::new(&net_a, GuestConfig::new(GUEST_ADDR, GUEST_MAC))?;
    let guest_b = Guest::new(&net_b, GuestConfig::new(GUEST_ADDR, GUEST_MAC))?;
    stop_requested()?;

    let admin_socket = config.admin_socket.clone();
    let bin = config.bin.clone();
    let daemon = Daemon::start_with(&host, config, None)?;
    let alpha = demo_instance(include_str!("../demo/alpha.json"))?;
    let beta = demo_instance(include_str!("../demo/beta.json"))?;
    daemon.register(&guest_a, &alpha)?;
    daemon.register(&guest_b, &beta)?;
    for (guest, instance) in [(&guest_a, &alpha), (&guest_b, &beta)] {
        stop_requested()?;
        guest.wait_served(&instance.uuid)?;
    }

    let title = |guest: &Guest, name: &str| {
        format!(
            "{name}: tap {}, {} {}",
            guest.tap(),
            guest.addr(),
            guest.mac()
        )
    };
    println!();
    for path in PATHS {
        let left = pretty(&guest_a.http_get(path)?.body);
        let right = pretty(&guest_b.http_get(path)?.body);
        println!("GET http://169.254.169.254{path}");
        print_side_by_side(
            &title(&guest_a, &alpha.name),
            &left,
            &title(&guest_b, &beta.name),
            &right,
        );
        println!();
    }
    println!("Both guests are {GUEST_ADDR} with MAC {GUEST_MAC}; the tap tells them apart.");
    println!("Try it yourself:");
    for guest in [&guest_a, &guest_b] {
        println!(
            "  ip netns exec {} curl http://169.254.169.254/openstack/latest/meta_data.json",
            guest.ns().name()
        );
    }
    println!(
        "  {} --admin-socket {} port list",
        bin.display(),
        admin_socket.display()
    );
    println!("Serving until Ctrl-C.");

    let mut daemon = daemon;
    while !STOP.load(Ordering::SeqCst) {
        if !daemon.is_running() {
            bail!("the daemon exited");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("\nstopping: removing the daemon, guests, bridges and namespaces");
    Ok(())
}

fn demo_instance(json: &str) -> Result<Instance> {
    let doc = serde_json::from_str(json).context("demo instance document")?;
    Instance::from_doc(doc).context("demo instances need uuid, name and ec2.instance_id")
}

/// Pretty-printed JSON where the body is JSON, the body as is otherwise.
fn pretty(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .and_then(|value| serde_json::to_string_pretty(&value))
        .unwrap_or_else(|_| body.to_owned())
}

/// Prints two texts in columns. Long lines (keys, random_seed) are cut so
/// the two columns stay readable in a normal terminal.
fn print_side_by_side(left_title: &str, left: &str, right_title: &str, right: &str) {
    const MAX_WIDTH: usize = 58;
    let width = std::iter::once(left_title)
        .chain(left.lines())
        .chain(std::iter::once(right_title))
        .chain(right.lines())
        .map(|line| line.chars().count())
        .max()
        .unwrap_or(0)
        .min(MAX_WIDTH);
    let cut = |line: &str| -> String {
        if line.chars().count() <= width {
            line.to_owned()
        } else {
            line.chars().take(width - 1).chain(['…']).collect()
        }
    };
    let (left, right): (Vec<_>, Vec<_>) = (left.lines().collect(), right.lines().collect());
    println!("  {:<width$} | {}", cut(left_title), cut(right_title));
    println!("  {:-<width$}-+-{:-<width$}", "", "");
    for row in 0..left.len().max(right.len()) {
        let l = cut(left.get(row).copied().unwrap_or(""));
        let r = cut(right.get(row).copied().unwrap_or(""));
        println!("  {l:<width$} | {r}");
    }
}
