//! libvirt is loaded only by `serve --discover libvirt`: on a host without
//! libvirt's client library every other command works, and that one (and
//! `check`) fails at once naming the flag, the library and its package.
//!
//! "Without libvirt" is a private mount namespace of the test's own in
//! which `libvirt.so.0` reads as an empty file (`/dev/null` bound over
//! it): the machine's library stays as it is.
use std::process::Output;

use mdr_harness::{Daemon, Host, Netns, check, env, tempdir::TempDir};

/// Runs the rest of its arguments with libvirt's client library hidden.
const WITHOUT_LIBVIRT: &[&str] = &[
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "sh",
    "-c",
    "lib=$(ldconfig -p | awk '$1 == \"libvirt.so.0\" { print $NF; exit }'); \
     if [ -n \"$lib\" ]; then mount --bind /dev/null \"$(readlink -f \"$lib\")\" || exit 9; fi; \
     exec \"$@\"",
    "sh",
];

/// The daemon's binary with `args`, in `host`'s namespace, without libvirt.
fn without_libvirt(host: &Host, args: &[&str]) -> Output {
    let bin = env::mdr_bin();
    let bin = bin.to_string_lossy();
    let command: Vec<&str> = WITHOUT_LIBVIRT
        .iter()
        .copied()
        .chain([bin.as_ref()])
        .chain(args.iter().copied())
        .collect();
    host.exec(&command).unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn every_command_but_libvirt_discovery_runs_without_libvirt() {
    let host = Host::new().unwrap();

    // The binary starts: libvirt is not among what the loader maps.
    let out = without_libvirt(&host, &["--version"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("metadata-redirector "),
        "{}",
        text(&out)
    );

    // The CLI against a daemon (which has libvirt, and does not need it).
    let daemon = Daemon::start(&host).unwrap();
    let socket = daemon.admin_socket().to_string_lossy().into_owned();
    let out = without_libvirt(&host, &["--admin-socket", &socket, "status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(status["datapath"].is_object(), "{status}");
    drop(daemon);

    // `serve --discover libvirt` refuses to start, before touching anything.
    let dir = TempDir::new("nolibvirt").unwrap();
    let state = dir.join("state").to_string_lossy().into_owned();
    let admin = dir.join("run/admin.sock").to_string_lossy().into_owned();
    let out = without_libvirt(
        &host,
        &[
            "--admin-socket",
            &admin,
            "serve",
            "--state-dir",
            &state,
            "--discover",
            "libvirt",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(
            "error: --discover libvirt: cannot load libvirt's client library libvirt.so.0 \
             (Debian package libvirt0): "
        ),
        "{}",
        text(&out)
    );
    assert!(
        !dir.join("state").exists() && !dir.join("run/admin.sock").exists(),
        "serve touched its state or socket before refusing: {}",
        text(&out)
    );

    // `check --discover libvirt` names the item and the fix.
    let server = Netns::new("srv").unwrap();
    let out = check::run(
        &host,
        &server,
        &dir,
        WITHOUT_LIBVIRT,
        &["--discover", "libvirt"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let line = check::item(&String::from_utf8_lossy(&out.stdout), "libvirt").to_owned();
    assert!(
        line.starts_with("FAIL  libvirt: --discover libvirt: cannot load"),
        "{line}"
    );
    assert!(line.ends_with("; fix: apt-get install libvirt0"), "{line}");
}

/// With the library there, `check --discover libvirt` finds it.
#[test]
#[ignore = "root: run via cargo xtask test"]
fn check_finds_libvirt_where_it_is_installed() {
    let host = Host::new().unwrap();
    let server = Netns::new("srv").unwrap();
    let dir = TempDir::new("withlibvirt").unwrap();
    let out = check::run(&host, &server, &dir, &[], &["--discover", "libvirt"]);
    assert_eq!(
        check::item(&String::from_utf8_lossy(&out.stdout), "libvirt"),
        "ok    libvirt: libvirt.so.0 loads (--discover libvirt)",
        "{}",
        text(&out)
    );
}
