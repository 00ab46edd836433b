//! A port: one tap on this host, bound to one instance.
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// What `port add` asks for (the admin API's request body).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// Tap interface name, 1..=15 bytes, no '/', whitespace or NUL.
    pub ifname: String,
    /// The instance's UUID; it must exist when the port is added.
    pub instance: uuid::Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_id: Option<uuid::Uuid>,
    /// Lower-case colon form once validated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_id: Option<uuid::Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
}

/// A registered port: the spec plus the slot the daemon gave it. The slot is
/// stable for the port's life (it survives restarts and tap re-creation) and
/// is what the datapath encodes in the identity address.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Port {
    #[serde(flatten)]
    pub spec: PortSpec,
    pub slot: u32,
}
