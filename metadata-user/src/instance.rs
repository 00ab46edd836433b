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

/// The largest instance document `instance put` accepts.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// The largest user_data, once decoded (nova's limit).
pub const MAX_USER_DATA_BYTES: usize = 65535;
/// Limit for the short text fields (names, IDs, meta keys and values), as nova.
pub const MAX_TEXT_BYTES: usize = 255;
pub const MAX_META_ENTRIES: usize = 128;
pub const MAX_PUBLIC_KEYS: usize = 100;
pub const MAX_PUBLIC_KEY_BYTES: usize = 16 * 1024;
/// Limit on list and map fields of the ec2 section (security groups, block devices).
pub const MAX_EC2_ENTRIES: usize = 100;

impl InstanceDoc {
    /// Parses and validates a document as `instance put` sends it, and
    /// normalizes it (canonical UUID, unwrapped base64, IMDS defaults filled).
    /// The error is one line naming the offending field.
    pub fn from_json(bytes: &[u8]) -> Result<InstanceDoc, String> {
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err(format!(
                "document: larger than {MAX_DOCUMENT_BYTES} bytes ({} bytes)",
                bytes.len()
            ));
        }
        let mut doc = parse(bytes)?;
        doc.validate()?;
        doc.normalize();
        Ok(doc)
    }

    /// The decoded user_data, if the document has any. Documents that went
    /// through `from_json` always decode.
    #[allow(dead_code)] // called by the guest API
    pub fn user_data_bytes(&self) -> Option<Vec<u8>> {
        use base64::Engine as _;
        let text = self.user_data.as_deref()?;
        base64::engine::general_purpose::STANDARD
            .decode(strip_ascii_whitespace(text))
            .ok()
    }

    fn validate(&self) -> Result<(), String> {
        check_line("name", &self.name, MAX_TEXT_BYTES)?;
        if let Some(hostname) = &self.hostname {
            check_hostname(hostname)?;
        }
        if let Some(project_id) = &self.project_id {
            check_line("project_id", project_id, MAX_TEXT_BYTES)?;
        }
        if let Some(zone) = &self.availability_zone {
            check_line("availability_zone", zone, MAX_TEXT_BYTES)?;
        }
        check_public_keys(&self.public_keys)?;
        check_meta(&self.meta)?;
        if let Some(user_data) = &self.user_data {
            check_user_data(user_data)?;
        }
        if let Some(ec2) = &self.ec2 {
            ec2.validate()?;
        }
        if let Some(imds) = &self.imds
            && !(1..=64).contains(&imds.hop_limit)
        {
            return Err(format!(
                "imds.hop_limit: must be 1 to 64 (got {})",
                imds.hop_limit
            ));
        }
        Ok(())
    }

    fn normalize(&mut self) {
        // `base64 FILE` wraps its output; the stored form is one unwrapped line.
        if let Some(user_data) = &mut self.user_data {
            *user_data = strip_ascii_whitespace(user_data);
        }
    }
}

impl Ec2 {
    fn validate(&self) -> Result<(), String> {
        let single_values = [
            ("ec2.instance_id", &self.instance_id),
            ("ec2.instance_type", &self.instance_type),
            ("ec2.ami_id", &self.ami_id),
            ("ec2.reservation_id", &self.reservation_id),
            ("ec2.kernel_id", &self.kernel_id),
            ("ec2.ramdisk_id", &self.ramdisk_id),
        ];
        for (field, value) in single_values {
            if let Some(value) = value {
                check_line(field, value, MAX_TEXT_BYTES)?;
            }
        }
        if self.security_groups.len() > MAX_EC2_ENTRIES {
            return Err(format!(
                "ec2.security_groups: more than {MAX_EC2_ENTRIES} entries"
            ));
        }
        for group in &self.security_groups {
            check_line("ec2.security_groups", group, MAX_TEXT_BYTES)?;
        }
        if self.block_device_mapping.len() > MAX_EC2_ENTRIES {
            return Err(format!(
                "ec2.block_device_mapping: more than {MAX_EC2_ENTRIES} entries"
            ));
        }
        for (name, device) in &self.block_device_mapping {
            check_line("ec2.block_device_mapping key", name, MAX_TEXT_BYTES)?;
            check_line(
                &format!("ec2.block_device_mapping.{name}"),
                device,
                MAX_TEXT_BYTES,
            )?;
        }
        Ok(())
    }
}

/// Deserializes, naming the field of a bad value (`ec2.local_ipv4: ...`).
fn parse(bytes: &[u8]) -> Result<InstanceDoc, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|err| format!("document: invalid JSON: {err}"))?;
    // serde also accepts a struct written as a JSON array (fields by
    // position); only the object form is a document.
    require_object("document", Some(&value))?;
    require_object("ec2", value.get("ec2"))?;
    require_object("imds", value.get("imds"))?;
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let message = err.inner().to_string();
        if let Some(missing) = missing_field(&message) {
            return format!("{missing}: required field is missing");
        }
        let field = if path == "." { "document" } else { &path };
        format!("{field}: {message}")
    })
}

/// serde's "missing field `name`", turned around to name the field first.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.strip_suffix('`')
}

fn require_object(field: &str, value: Option<&serde_json::Value>) -> Result<(), String> {
    match value {
        Some(value) if !value.is_object() => Err(format!("{field}: must be a JSON object")),
        _ => Ok(()),
    }
}

/// A one-line text field: non-empty, at most `max` bytes, no control
/// characters (they would break the line-oriented EC2 listings and logs).
pub(crate) fn check_line(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{field}: must not be empty"));
    }
    if value.len() > max {
        return Err(format!(
            "{field}: longer than {max} bytes ({} bytes)",
            value.len()
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{field}: contains a control character"));
    }
    Ok(())
}

/// RFC 1123 host name: dot-separated labels of 1 to 63 letters, digits and
/// '-', no label starting or ending with '-'.
fn check_hostname(hostname: &str) -> Result<(), String> {
    check_line("hostname", hostname, MAX_TEXT_BYTES)?;
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if hostname.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!(
            "hostname: {hostname:?} is not a valid host name (letters, digits, '-' and '.', \
             labels of 1 to 63 characters not starting or ending with '-')"
        ))
    }
}

fn check_public_keys(keys: &BTreeMap<String, String>) -> Result<(), String> {
    if keys.len() > MAX_PUBLIC_KEYS {
        return Err(format!(
            "public_keys: more than {MAX_PUBLIC_KEYS} keys ({})",
            keys.len()
        ));
    }
    for (name, key) in keys {
        check_line("public_keys: key name", name, MAX_TEXT_BYTES)?;
        if key.is_empty() {
            return Err(format!("public_keys.{name}: must not be empty"));
        }
        if key.len() > MAX_PUBLIC_KEY_BYTES {
            return Err(format!(
                "public_keys.{name}: longer than {MAX_PUBLIC_KEY_BYTES} bytes ({} bytes)",
                key.len()
            ));
        }
    }
    Ok(())
}

fn check_meta(meta: &BTreeMap<String, String>) -> Result<(), String> {
    if meta.len() > MAX_META_ENTRIES {
        return Err(format!(
            "meta: more than {MAX_META_ENTRIES} entries ({})",
            meta.len()
        ));
    }
    for (key, value) in meta {
        check_line("meta: key", key, MAX_TEXT_BYTES)?;
        // Values may be empty or multi-line (nova allows both); only the size is bounded.
        if value.len() > MAX_TEXT_BYTES {
            return Err(format!(
                "meta.{key}: longer than {MAX_TEXT_BYTES} bytes ({} bytes)",
                value.len()
            ));
        }
    }
    Ok(())
}

fn check_user_data(user_data: &str) -> Result<(), String> {
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(strip_ascii_whitespace(user_data))
        .map_err(|err| format!("user_data: not valid base64 (standard alphabet, padded): {err}"))?;
    if decoded.len() > MAX_USER_DATA_BYTES {
        return Err(format!(
            "user_data: decodes to more than {MAX_USER_DATA_BYTES} bytes ({} bytes)",
            decoded.len()
        ));
    }
    Ok(())
}

fn strip_ascii_whitespace(text: &str) -> String {
    text.chars().filter(|c| !c.is_ascii_whitespace()).collect()
}
