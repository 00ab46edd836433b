//! Boot storm: every guest runs cloud-init's first-boot metadata fetch at
//! the same moment, one request at a time, a new connection per request
//! (cloud-init's url_helper opens a fresh requests session per URL).
//!
//! The sequence is what cloud-init's OpenStack datasource reads: the
//! `/openstack` version list, the five files of the newest version it
//! knows, then the EC2 tree crawled from `/latest/meta-data/` (each listing,
//! then every leaf; `N=name` public keys become `N/openssh-key`).
//!
//! `MDR_BENCH_TRACE=1` prints every request slower than 5 ms, with how
//! much of it was the TCP connect.
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

use crate::conn::{Session, Target};
use crate::http1::{self, ConnMode};
use crate::load::new_histogram;

/// cloud-init's OpenStack versions, newest first (helpers/openstack.py).
const KNOWN_VERSIONS: [&str; 8] = [
    "2018-08-27",
    "2017-02-22",
    "2016-10-06",
    "2016-06-30",
    "2015-10-15",
    "2013-10-17",
    "2013-04-04",
    "2012-08-10",
];
const FILES: [&str; 5] = [
    "meta_data.json",
    "user_data",
    "vendor_data.json",
    "vendor_data2.json",
    "network_data.json",
];
/// A crawl never makes more requests than this (a bound on the loop).
const MAX_REQUESTS: usize = 200;

pub struct StormClient {
    pub target: Target,
    pub headers: Vec<String>,
}

pub struct StormResult {
    pub requests: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// From the common start until the last guest was done.
    pub makespan: Duration,
    /// When each guest was done, sorted.
    pub completions: Vec<Duration>,
    pub latency_us: Histogram<u64>,
}

struct GuestRun {
    requests: u64,
    errors: u64,
    first_error: Option<String>,
    done: Duration,
    latency_us: Histogram<u64>,
}

pub fn run(clients: Vec<StormClient>) -> Result<StormResult> {
    let guests = clients.len();
    let runtime = crate::load::runtime()?;
    let result = runtime.block_on(async {
        let start = Instant::now() + Duration::from_millis(50);
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|client| tokio::spawn(first_boot(client, start)))
            .collect();
        let mut total = StormResult {
            requests: 0,
            errors: 0,
            first_error: None,
            makespan: Duration::ZERO,
            completions: Vec::with_capacity(guests),
            latency_us: new_histogram(),
        };
        for task in tasks {
            let run = task.await.context("a boot-storm task panicked")?;
            total.requests += run.requests;
            total.errors += run.errors;
            total.first_error = total.first_error.or(run.first_error);
            total.makespan = total.makespan.max(run.done);
            total.completions.push(run.done);
            total.latency_us.add(&run.latency_us)?;
        }
        total.completions.sort();
        anyhow::Ok(total)
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

struct Fetcher {
    session: Session,
    headers: Vec<String>,
    run: GuestRun,
}

impl Fetcher {
    /// GETs `path`; the body on 200, None (counted as an error) otherwise.
    async fn get(&mut self, path: &str) -> Option<String> {
        if self.run.requests as usize >= MAX_REQUESTS {
            return None;
        }
        let request = http1::request(path, ConnMode::Close, &self.headers);
        let sent = Instant::now();
        let answer = self.session.request(&request, ConnMode::Close).await;
        self.run.requests += 1;
        match answer {
            Ok(answer) if answer.status == 200 => {
                let micros = (answer.done - sent).as_micros() as u64;
                if micros > 5_000 && std::env::var_os("MDR_BENCH_TRACE").is_some() {
                    eprintln!(
                        "slow: {path} {micros} µs (connect {} µs, request {})",
                        self.session.last_connect.as_micros(),
                        self.run.requests
                    );
                }
                self.run.latency_us.saturating_record(micros.max(1));
                Some(String::from_utf8_lossy(self.session.last_body()).into_owned())
            }
            other => {
                self.run.errors += 1;
                if self.run.first_error.is_none() {
                    self.run.first_error = Some(match other {
                        Ok(answer) => format!("{path}: HTTP {}", answer.status),
                        Err(err) => format!("{path}: {err}"),
                    });
                }
                None
            }
        }
    }
}

async fn first_boot(client: StormClient, start: Instant) -> GuestRun {
    tokio::time::sleep_until(start.into()).await;
    let mut fetcher = Fetcher {
        session: Session::new(client.target),
        headers: client.headers,
        run: GuestRun {
            requests: 0,
            errors: 0,
            first_error: None,
            done: Duration::ZERO,
            latency_us: new_histogram(),
        },
    };
    let listing = fetcher.get("/openstack").await.unwrap_or_default();
    let version = KNOWN_VERSIONS
        .iter()
        .find(|v| listing.lines().any(|line| line.trim() == **v))
        .copied()
        .unwrap_or("latest");
    for file in FILES {
        fetcher.get(&format!("/openstack/{version}/{file}")).await;
    }
    crawl(&mut fetcher, "/latest/meta-data/").await;
    fetcher.run.done = start.elapsed();
    fetcher.run
}

/// cloud-init's MetadataMaterializer, iteratively: a listing's entries
/// ending in `/` are listings, `N=name` is a key at `N/openssh-key`, the
/// rest are leaves.
async fn crawl(fetcher: &mut Fetcher, root: &str) {
    let mut listings = vec![root.to_owned()];
    while let Some(dir) = listings.pop() {
        let Some(body) = fetcher.get(&dir).await else {
            continue;
        };
        let (children, leaves) = parse_listing(&body);
        for leaf in leaves {
            fetcher.get(&format!("{dir}{leaf}")).await;
        }
        listings.extend(
            children
                .into_iter()
                .rev()
                .map(|child| format!("{dir}{child}")),
        );
    }
}

/// Splits a listing into child listings (with their `/`) and leaves.
fn parse_listing(body: &str) -> (Vec<String>, Vec<String>) {
    let mut children = Vec::new();
    let mut leaves = Vec::new();
    for line in body.lines().map(str::trim).filter(|line| !line.is_empty()) {
        if line.ends_with('/') {
            children.push(line.to_owned());
        } else if let Some((index, _name)) = line.split_once('=') {
            leaves.push(format!("{index}/openssh-key"));
        } else {
            leaves.push(line.to_owned());
        }
    }
    (children, leaves)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_split_like_cloud_init() {
        let (children, leaves) = parse_listing("ami-id\nplacement/\n0=key\n\n");
        assert_eq!(children, ["placement/"]);
        assert_eq!(leaves, ["ami-id", "0/openssh-key"]);
    }
}
