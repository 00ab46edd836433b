//! What the admin server and client agree on besides the routes: body
//! limits, the error body, list rows, and how a name travels in a path.
use serde::{Deserialize, Serialize};

use crate::state::Source;

/// The largest request body the server reads (an instance document is at
/// most 1 MiB; the rest is headroom for JSON escaping).
pub const MAX_BODY_BYTES: usize = 2 << 20;

/// Every error answer's body.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// One row of `GET /v1/instances`: enough for a table, not the whole
/// document (user_data alone may be 87 KiB).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceSummary {
    pub uuid: uuid::Uuid,
    pub name: String,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// Interface names of the ports bound to it.
    #[serde(default)]
    pub ports: Vec<String>,
    /// Who the document belongs to: `manual`, or the libvirt domain whose
    /// metadata it is in.
    #[serde(flatten)]
    pub source: Source,
}

/// Where the datapath is with one registered port's tap.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TapState {
    /// The program runs on the tap, for this slot.
    Attached { ifindex: u32, slot: u32 },
    /// No interface of that name exists: attached when it appears.
    NoTap,
    /// The tap exists and the datapath has not got to it yet.
    Pending,
    /// Attaching failed; it is retried with a growing delay.
    Failing { error: String },
}

/// `GET /v1/ports/{ifname}`, and `POST /v1/ports?wait=SECONDS`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PortStatus {
    pub port: crate::state::Port,
    pub datapath: TapState,
    /// With `?wait`: microseconds from the request's arrival to `datapath`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waited_us: Option<u64>,
}

/// Percent-encodes a path segment: interface names may hold '%', '?', '#'.
pub fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The inverse of `encode_segment`; None if malformed or not UTF-8.
pub fn decode_segment(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip() {
        for name in ["tap0", "a%b?c#d", "tä p/x", ""] {
            let encoded = encode_segment(name);
            assert!(!encoded.contains(['/', '?', '#', ' ']), "{encoded}");
            assert_eq!(decode_segment(&encoded).as_deref(), Some(name));
        }
        assert_eq!(decode_segment("%zz"), None);
        assert_eq!(decode_segment("%4"), None);
        assert_eq!(decode_segment("%+4"), None);
    }
}
