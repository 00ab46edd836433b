//! One request as the fake nova received it, and what it answered.
//!
//! `fake-nova` records these in memory and prints each as a JSON line;
//! the end-to-end harness reads them back. A crate of its own so that the
//! harness (and xtask, which builds on it) need not build the fake nova's
//! server and TLS stack to read its log.
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// 1, 2, 3, ... in arrival order; also in the answer body.
    pub seq: u64,
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    /// Every header line, names lower-case, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body (lossy UTF-8).
    pub body: String,
    /// The status the fake nova answered with.
    pub status: u16,
}

impl RecordedRequest {
    /// Every value of a header (name in any case), in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The header's value when it was sent exactly once.
    pub fn header(&self, name: &str) -> Option<&str> {
        match self.header_values(name).as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_reads_back_as_written() {
        let request = RecordedRequest {
            seq: 7,
            method: "GET".into(),
            path: "/openstack/latest/meta_data.json".into(),
            headers: vec![
                ("x-forwarded-for".into(), "10.0.0.5".into()),
                ("x-forwarded-for".into(), "10.0.0.6".into()),
                ("x-instance-id".into(), "i".into()),
            ],
            body: String::new(),
            status: 200,
        };
        let line = serde_json::to_string(&request).unwrap();
        let back: RecordedRequest = serde_json::from_str(&line).unwrap();
        assert_eq!(back, request);
        assert_eq!(
            back.header_values("X-Forwarded-For"),
            ["10.0.0.5", "10.0.0.6"]
        );
        assert_eq!(back.header("x-forwarded-for"), None);
        assert_eq!(back.header("X-Instance-ID"), Some("i"));
    }
}
