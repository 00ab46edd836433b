//! A quiet guest's request timings, taken idle and amid what other guests
//! do (a request flood, slow headers, a SYN flood): the latency.py runs,
//! their percentiles, and the rounds that retry a comparison which other
//! work on a shared 2-core machine can spoil by itself.
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use crate::netns::Netns;
use crate::python;

/// A daemon config that keeps the per-port request rate out of the way, for
/// tests that time many requests and are about something else.
pub const NO_RATE_LIMIT: &str = "rate_limit_per_sec = 1000000.0\nrate_limit_burst = 1000000\n";

/// Times `samples` GETs of `path` from `ns`, each on a new connection
/// (latency.py): its statuses, latencies (seconds), start and end.
pub fn time_requests(ns: &Netns, path: &str, samples: &str, limit: Duration) -> Result<Value> {
    python::run(ns, "latency.py", &[path, samples], limit)
}

/// Asserts that every request of a latency.py run was answered 200.
pub fn assert_all_answered(run: &Value) {
    assert!(
        run["statuses"].as_array().unwrap().iter().all(|s| s == 200),
        "the quiet guest was refused: {run}"
    );
}

/// A latency.py run's latencies (seconds), smallest first.
fn sorted_latencies(run: &Value) -> Vec<f64> {
    let mut values: Vec<f64> = run["latencies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    values.sort_by(f64::total_cmp);
    values
}

/// The median latency of a latency.py run, in seconds (the upper one of an
/// even count).
pub fn median(run: &Value) -> f64 {
    let values = sorted_latencies(run);
    values[values.len() / 2]
}

/// The 99th percentile latency of a latency.py run, in seconds (nearest
/// rank).
pub fn p99(run: &Value) -> f64 {
    let values = sorted_latencies(run);
    values[(values.len() * 99).div_ceil(100).max(1) - 1]
}

/// Times up to `rounds` rounds, each giving an (idle, busy) figure, and
/// stops at the first whose busy figure is at most twice its idle one;
/// panics if none was, saying `what` went wrong. One good round passes:
/// other work on a shared machine can slow a round by itself, while a
/// daemon that lets the noise slow the quiet guest fails every round.
pub fn assert_within_twice_in_a_round(
    rounds: usize,
    what: &str,
    mut round: impl FnMut(usize) -> (f64, f64),
) {
    let mut figures = Vec::new();
    for number in 1..=rounds {
        let (idle, busy) = round(number);
        figures.push((idle, busy));
        if busy <= 2.0 * idle {
            return;
        }
    }
    panic!("{what} in every round (idle, busy seconds): {figures:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(latencies: &[f64]) -> Value {
        serde_json::json!({ "latencies": latencies })
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(p99(&run(&hundred)), 99.0);
        assert_eq!(median(&run(&hundred)), 51.0);
        let three = run(&[3.0, 1.0, 2.0]);
        assert_eq!((p99(&three), median(&three)), (3.0, 2.0));
        assert_eq!(p99(&run(&[7.0])), 7.0);
    }

    #[test]
    fn one_round_within_twice_is_enough() {
        let mut seen = Vec::new();
        assert_within_twice_in_a_round(3, "slowed", |n| {
            seen.push(n);
            if n == 1 { (1.0, 5.0) } else { (1.0, 2.0) }
        });
        assert_eq!(seen, [1, 2]);
    }

    #[test]
    #[should_panic(expected = "slowed in every round")]
    fn every_round_beyond_twice_fails() {
        assert_within_twice_in_a_round(2, "slowed", |_| (1.0, 2.5));
    }

    #[test]
    #[should_panic(expected = "the quiet guest was refused")]
    fn a_refused_request_fails() {
        assert_all_answered(&serde_json::json!({ "statuses": [200, 429] }));
    }
}
