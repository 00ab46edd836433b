//! Running `metadata-redirector check` the way the tests do: in a host's
//! namespace, with a state directory, admin socket and bpffs directory of
//! the test's own, and finding one item's line in what it prints.
use std::process::Output;

use crate::{Host, Netns, bpffs, env, names, tempdir::TempDir};

/// `check` in `host`'s network namespace, with places under `dir` and the
/// server namespace `server` (the network items look there), run through
/// `wrapper` (e.g. a private mount namespace) when given, with `extra`
/// flags after the common ones.
pub fn run(host: &Host, server: &Netns, dir: &TempDir, wrapper: &[&str], extra: &[&str]) -> Output {
    let bin = env::mdr_bin();
    let bpffs_dir = std::path::Path::new(bpffs::ROOT).join(names::global("check"));
    let args = [
        bin.to_string_lossy().into_owned(),
        "check".into(),
        "--bpffs".into(),
        bpffs_dir.to_string_lossy().into_owned(),
        "--state-dir".into(),
        dir.join("state").to_string_lossy().into_owned(),
        "--admin-socket".into(),
        dir.join("run/admin.sock").to_string_lossy().into_owned(),
        "--server-netns".into(),
        server.name().to_owned(),
    ];
    let args: Vec<&str> = wrapper
        .iter()
        .copied()
        .chain(args.iter().map(String::as_str))
        .chain(extra.iter().copied())
        .collect();
    host.exec(&args).unwrap()
}

/// The line of `item` in `check`'s output `text` ("ok    NAME: ..." or
/// "FAIL  NAME: ..."); panics with the whole output when there is none.
pub fn item<'a>(text: &'a str, item: &str) -> &'a str {
    text.lines()
        .find(|line| {
            line.get(6..)
                .is_some_and(|rest| rest.starts_with(&format!("{item}:")))
        })
        .unwrap_or_else(|| panic!("no {item} line in:\n{text}"))
}
