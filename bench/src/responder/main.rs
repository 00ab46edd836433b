//! `mdr-responder`: the benchmark's "limit". A minimal HTTP responder that
//! answers each guest with bytes captured from the daemon before, reached
//! through the same eBPF redirect as the daemon (it listens on the server
//! address while the daemon is stopped; the datapath is pinned and keeps
//! redirecting). It parses nothing beyond the request line: no headers, no
//! routing, no identity beyond the peer address, no allocation per request.
//! What the daemon costs above it is what hyper, tokio, the backend and
//! our own code cost.
//!
//! ```text
//! mdr-responder --listen ADDR:PORT --answers FILE --path PATH --mode keep-alive|close [--threads N]
//! ```
//!
//! The answers file holds records of a peer IPv4 address (4 bytes), a
//! little-endian u32 length and that many response bytes. In `close` mode
//! the connection is closed after each answer (the load generator's
//! requests then say `Connection: close`, and the captured answers do too).
mod answers;
mod event_loop;

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::ExitCode;

use answers::Answers;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    KeepAlive,
    Close,
}

struct Args {
    listen: SocketAddrV4,
    answers: PathBuf,
    path: String,
    mode: Mode,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut listen = None;
    let mut answers = None;
    let mut path = None;
    let mut mode = None;
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => {
                listen = Some(value()?.parse().map_err(|err| format!("--listen: {err}"))?)
            }
            "--answers" => answers = Some(PathBuf::from(value()?)),
            "--path" => path = Some(value()?),
            "--mode" => {
                mode = Some(match value()?.as_str() {
                    "keep-alive" => Mode::KeepAlive,
                    "close" => Mode::Close,
                    other => return Err(format!("--mode keep-alive|close, not {other}")),
                })
            }
            "--threads" => {
                threads = value()?
                    .parse()
                    .map_err(|err| format!("--threads: {err}"))?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        listen: listen.ok_or("--listen is required")?,
        answers: answers.ok_or("--answers is required")?,
        path: path.ok_or("--path is required")?,
        mode: mode.ok_or("--mode is required")?,
        threads: threads.max(1),
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("mdr-responder: {err}");
            return ExitCode::from(2);
        }
    };
    // Loaded once and kept for the life of the process.
    let answers: &'static Answers = match Answers::load(&args.answers) {
        Ok(answers) => Box::leak(Box::new(answers)),
        Err(err) => {
            eprintln!("mdr-responder: {}: {err}", args.answers.display());
            return ExitCode::FAILURE;
        }
    };
    let request_line_start: &'static [u8] = format!("GET {} HTTP/1.1\r\n", args.path)
        .into_bytes()
        .leak();
    // One listener per thread (SO_REUSEPORT): the kernel spreads connections
    // over them, and a connection stays on the thread that accepted it.
    let mut threads = Vec::new();
    for _ in 0..args.threads {
        let listener = match event_loop::listen(args.listen) {
            Ok(listener) => listener,
            Err(err) => {
                eprintln!("mdr-responder: listening on {}: {err}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        let mode = args.mode;
        threads.push(std::thread::spawn(move || {
            event_loop::serve(listener, answers, request_line_start, mode)
        }));
    }
    for thread in threads {
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                eprintln!("mdr-responder: {err}");
                return ExitCode::FAILURE;
            }
            Err(_) => return ExitCode::FAILURE,
        }
    }
    ExitCode::SUCCESS
}
