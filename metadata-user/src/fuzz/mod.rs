//! Property tests of everything users and guests feed the daemon, run as
//! fuzzers: random (seeded, shrinking) inputs, thousands per target, and
//! two properties throughout: nothing panics, and no answer to one guest
//! carries another guest's data.
//!
//! | target | what is generated | what must hold |
//! | --- | --- | --- |
//! | `instance_doc` | instance documents (well-formed and not) and raw bytes | the parser refuses or accepts, never panics; an accepted document reloads unchanged and every path of both trees answers 200 or 404 |
//! | `admin_api` | admin requests: methods, paths, JSON and other bodies | never a 500; a refused request changes nothing |
//! | `guest_wire` | raw HTTP/1.1 from guest A to the real guest server over TCP: paths, headers (identity claims, B's own token), bodies, garbage | no panic; no answer carries B's data |
//! | `neutron_headers` | the proxy headers of the neutron-agent socket | a port is picked only when its address and network match |
//! | `nova_answers` | a hostile nova: any status line, headers, body, framing | no panic; the guest sees a status neutron's agent passes or our 500/503; A never gets an answer meant for B |
//!
//! Each target runs [`DEFAULT_CASES`] cases in an ordinary `cargo test`
//! (a few seconds in all). For a longer run (`cargo xtask fuzz --seconds
//! N`, or the environment below) each target goes on with fresh seeds
//! until its time is up:
//!
//! - `MDR_FUZZ_SECONDS=N`: run each target for N seconds;
//! - `MDR_FUZZ_CASES=N`: cases per round (default [`DEFAULT_CASES`]);
//! - `MDR_FUZZ_REPLAY=<64 hex digits>`: replay the round a failure printed.
mod admin_api;
mod guest_wire;
mod instance_doc;
mod neutron_headers;
mod nova_answers;

use std::{
    fmt::Debug,
    sync::{
        Once,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use proptest::{
    strategy::Strategy,
    test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner},
};

/// Cases per target in an ordinary test run.
pub const DEFAULT_CASES: u32 = 256;

/// Runs `test` on values of `strategy` as the environment says (see the
/// module doc), and panics with the smallest failing value and the seed
/// that reproduces it.
pub fn check<S>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    let cases = env_number("MDR_FUZZ_CASES").unwrap_or(u64::from(DEFAULT_CASES)) as u32;
    let deadline = env_number("MDR_FUZZ_SECONDS").map(|s| Instant::now() + Duration::from_secs(s));
    let fixed_seed = std::env::var("MDR_FUZZ_REPLAY")
        .ok()
        .map(|hex| parse_seed(&hex));
    let started = Instant::now();
    let mut total = 0u64;
    loop {
        let seed = fixed_seed.unwrap_or_else(random_seed);
        let config = Config {
            cases,
            failure_persistence: None,
            max_shrink_iters: 2048,
            ..Config::default()
        };
        let mut runner =
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
        match runner.run(&strategy, &test) {
            Ok(()) => {}
            Err(TestError::Fail(reason, value)) => panic!(
                "fuzz target {name}: {reason}\nsmallest failing input: {value:#?}\n\
                 replay with MDR_FUZZ_REPLAY={}",
                hex::encode(seed)
            ),
            Err(TestError::Abort(reason)) => {
                panic!(
                    "fuzz target {name}: aborted: {reason} (seed {})",
                    hex::encode(seed)
                )
            }
        }
        total += u64::from(cases);
        if fixed_seed.is_some() || deadline.is_none_or(|deadline| Instant::now() >= deadline) {
            break;
        }
    }
    eprintln!(
        "fuzz target {name}: {total} cases in {:.1} s, all held",
        started.elapsed().as_secs_f64()
    );
}

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a whole number")),
    )
}

fn parse_seed(hex_text: &str) -> [u8; 32] {
    hex::decode(hex_text.trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .unwrap_or_else(|| panic!("MDR_FUZZ_REPLAY={hex_text:?} is not 64 hex digits"))
}

fn random_seed() -> [u8; 32] {
    rand::random()
}

/// The name of the runtime threads the targets that run servers use: a
/// panic on one of them (inside a spawned connection task, where tokio
/// would otherwise swallow it) is counted by [`panics_on_server_threads`].
pub const SERVER_THREAD: &str = "mdr-fuzz-server";

static SERVER_PANICS: AtomicUsize = AtomicUsize::new(0);

/// Panics so far on [`SERVER_THREAD`] threads (installs the hook that
/// counts them on first use).
pub fn panics_on_server_threads() -> usize {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(SERVER_THREAD) {
                SERVER_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
    SERVER_PANICS.load(Ordering::SeqCst)
}

/// A runtime for a target that runs servers, its threads named
/// [`SERVER_THREAD`].
pub fn server_runtime() -> tokio::runtime::Runtime {
    panics_on_server_threads();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(SERVER_THREAD)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}
