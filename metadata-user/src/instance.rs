//! The instance document: what the operator tells us about one guest.
//!
//! `instance put` sends it as JSON; the daemon validates it completely before
//! anything is stored (see `InstanceDoc::from_json`). Unknown keys are refused
//! so a typo never silently drops data.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One instance, as stored and served.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceDoc {
    /// Required, a UUID (canonical hyphenated form once stored).
    pub uuid: uuid::Uuid,
    /// Required, the display name.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_index: Option<u32>,
    /// Key name -> OpenSSH public key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub public_keys: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    /// Base64 in the document; at most 65535 bytes once decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_data: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<serde_json::Value>>,
    /// Host CPUs pinned to the guest (nova's NUMA topology `pcpuset`s), for
    /// meta_data.json `dedicated_cpus` (2020-10-14 and later; `[]` if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedicated_cpus: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2: Option<Ec2>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imds: Option<Imds>,
}

/// EC2-compatible fields (what `/latest/meta-data/` shows).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ec2 {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ami_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_ipv4: Option<std::net::Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ipv4: Option<std::net::Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
    /// Virtual name (ami, root, ephemeral0, ...) -> device.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub block_device_mapping: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramdisk_id: Option<String>,
}

/// IMDSv2 behaviour for this instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Imds {
    #[serde(default)]
    pub tokens: TokenMode,
    /// IP TTL of the token response, 1..=64.
    #[serde(default = "default_hop_limit")]
    pub hop_limit: u8,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenMode {
    #[default]
    Optional,
    Required,
}

fn default_hop_limit() -> u8 {
    1
}
