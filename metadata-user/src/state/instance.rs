//! The instance document: what the operator tells us about one guest.
//!
//! `instance put` sends it as JSON; the daemon validates it completely before
//! anything is stored (see `InstanceDoc::from_json`). Unknown keys are refused
//! so a typo never silently drops data.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::FieldError;

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
    /// Sessions on the EC2 tree.
    #[serde(default)]
    pub tokens: TokenMode,
    /// IP TTL of the token response (and of every answer when `openstack`
    /// is required), 1..=64.
    #[serde(default = "default_hop_limit")]
    pub hop_limit: u8,
    /// Sessions on the OpenStack tree. `optional` (the default) is nova's
    /// behaviour: no token needed, none checked (cloud-init's OpenStack
    /// datasource sends none). `required` asks for a token there too and
    /// sends every answer of the instance, either tree, with IP TTL
    /// `hop_limit`, so that nothing routed behind the guest (a container, a
    /// nested VM, an SSRF through NAT) reads user data, meta_data.json or the
    /// password. It needs `tokens = "required"`: otherwise the EC2 tree
    /// would stay open without one.
    #[serde(default, skip_serializing_if = "TokenMode::is_optional")]
    pub openstack: TokenMode,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenMode {
    #[default]
    Optional,
    Required,
}

impl Imds {
    fn validate(&self) -> Result<(), FieldError> {
        if !(1..=64).contains(&self.hop_limit) {
            return Err(FieldError::new(
                "imds.hop_limit",
                format!("must be 1 to 64 (got {})", self.hop_limit),
            ));
        }
        if self.openstack == TokenMode::Required && self.tokens != TokenMode::Required {
            return Err(FieldError::new(
                "imds.openstack",
                "\"required\" needs imds.tokens = \"required\" too (the EC2 tree would \
                 stay open without a token)",
            ));
        }
        Ok(())
    }
}

impl TokenMode {
    pub fn is_optional(&self) -> bool {
        *self == TokenMode::Optional
    }
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
/// The largest password a guest may post: nova's limit, the 4 chunks of 255
/// characters of system metadata it keeps the password in (`password.py`
/// `CHUNKS * CHUNK_LENGTH`). The guest API answers 400 beyond it, and the
/// registry refuses to store more.
pub const MAX_PASSWORD_BYTES: usize = 4 * 255;

impl InstanceDoc {
    /// Parses and validates a document as `instance put` sends it, and
    /// normalizes it (canonical UUID, unwrapped base64, IMDS defaults filled).
    /// The error is one line naming the offending field.
    pub fn from_json(bytes: &[u8]) -> Result<InstanceDoc, FieldError> {
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err(FieldError::new(
                "document",
                format!(
                    "larger than {MAX_DOCUMENT_BYTES} bytes ({} bytes)",
                    bytes.len()
                ),
            ));
        }
        let mut doc = parse(bytes)?;
        doc.validate()?;
        doc.normalize();
        Ok(doc)
    }

    /// The decoded user_data, if the document has any. Documents that went
    /// through `from_json` always decode.
    pub fn user_data_bytes(&self) -> Option<Vec<u8>> {
        use base64::Engine as _;
        let text = self.user_data.as_deref()?;
        base64::engine::general_purpose::STANDARD
            .decode(strip_ascii_whitespace(text))
            .ok()
    }

    fn validate(&self) -> Result<(), FieldError> {
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
        if let Some(imds) = &self.imds {
            imds.validate()?;
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
    fn validate(&self) -> Result<(), FieldError> {
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
            return Err(FieldError::new(
                "ec2.security_groups",
                format!("more than {MAX_EC2_ENTRIES} entries"),
            ));
        }
        for group in &self.security_groups {
            check_line("ec2.security_groups", group, MAX_TEXT_BYTES)?;
        }
        if self.block_device_mapping.len() > MAX_EC2_ENTRIES {
            return Err(FieldError::new(
                "ec2.block_device_mapping",
                format!("more than {MAX_EC2_ENTRIES} entries"),
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
fn parse(bytes: &[u8]) -> Result<InstanceDoc, FieldError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|err| FieldError::new("document", format!("invalid JSON: {err}")))?;
    // serde also accepts a struct written as a JSON array (fields by
    // position); only the object form is a document.
    require_object("document", Some(&value))?;
    require_object("ec2", value.get("ec2"))?;
    require_object("imds", value.get("imds"))?;
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let message = err.inner().to_string();
        if let Some(missing) = missing_field(&message) {
            return FieldError::new(missing, "required field is missing");
        }
        let field = if path == "." { "document" } else { &path };
        FieldError::new(field, message)
    })
}

/// serde's "missing field `name`", turned around to name the field first.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.strip_suffix('`')
}

fn require_object(field: &str, value: Option<&serde_json::Value>) -> Result<(), FieldError> {
    match value {
        Some(value) if !value.is_object() => Err(FieldError::new(field, "must be a JSON object")),
        _ => Ok(()),
    }
}

/// A one-line text field: non-empty, at most `max` bytes, no control
/// characters (they would break the line-oriented EC2 listings and logs).
pub fn check_line(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(FieldError::new(
            field,
            format!("longer than {max} bytes ({} bytes)", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(field, "contains a control character"));
    }
    Ok(())
}

/// RFC 1123 host name: dot-separated labels of 1 to 63 letters, digits and
/// '-', no label starting or ending with '-'.
fn check_hostname(hostname: &str) -> Result<(), FieldError> {
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
        Err(FieldError::new(
            "hostname",
            format!(
                "{hostname:?} is not a valid host name (letters, digits, '-' and '.', \
                 labels of 1 to 63 characters not starting or ending with '-')"
            ),
        ))
    }
}

fn check_public_keys(keys: &BTreeMap<String, String>) -> Result<(), FieldError> {
    if keys.len() > MAX_PUBLIC_KEYS {
        return Err(FieldError::new(
            "public_keys",
            format!("more than {MAX_PUBLIC_KEYS} keys ({})", keys.len()),
        ));
    }
    for (name, key) in keys {
        check_line("public_keys: key name", name, MAX_TEXT_BYTES)?;
        let field = || format!("public_keys.{name}");
        if key.is_empty() {
            return Err(FieldError::new(field(), "must not be empty"));
        }
        if key.len() > MAX_PUBLIC_KEY_BYTES {
            return Err(FieldError::new(
                field(),
                format!(
                    "longer than {MAX_PUBLIC_KEY_BYTES} bytes ({} bytes)",
                    key.len()
                ),
            ));
        }
    }
    Ok(())
}

fn check_meta(meta: &BTreeMap<String, String>) -> Result<(), FieldError> {
    if meta.len() > MAX_META_ENTRIES {
        return Err(FieldError::new(
            "meta",
            format!("more than {MAX_META_ENTRIES} entries ({})", meta.len()),
        ));
    }
    for (key, value) in meta {
        check_line("meta: key", key, MAX_TEXT_BYTES)?;
        // Values may be empty or multi-line (nova allows both); only the size is bounded.
        if value.len() > MAX_TEXT_BYTES {
            return Err(FieldError::new(
                format!("meta.{key}"),
                format!("longer than {MAX_TEXT_BYTES} bytes ({} bytes)", value.len()),
            ));
        }
    }
    Ok(())
}

fn check_user_data(user_data: &str) -> Result<(), FieldError> {
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(strip_ascii_whitespace(user_data))
        .map_err(|err| {
            FieldError::new(
                "user_data",
                format!("not valid base64 (standard alphabet, padded): {err}"),
            )
        })?;
    if decoded.len() > MAX_USER_DATA_BYTES {
        return Err(FieldError::new(
            "user_data",
            format!(
                "decodes to more than {MAX_USER_DATA_BYTES} bytes ({} bytes)",
                decoded.len()
            ),
        ));
    }
    Ok(())
}

fn strip_ascii_whitespace(text: &str) -> String {
    text.chars().filter(|c| !c.is_ascii_whitespace()).collect()
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use serde_json::{Value, json};

    use super::*;

    pub(crate) const UUID: &str = "7c1b6e0e-3e4f-4e59-9d5e-0a5a8b0c1d2e";

    fn full_document() -> Value {
        json!({
            "uuid": UUID,
            "name": "web-1",
            "hostname": "web-1.example.org",
            "project_id": "p1",
            "availability_zone": "nova",
            "launch_index": 0,
            "public_keys": {"default": "ssh-ed25519 AAAA test"},
            "meta": {"role": "web", "empty": ""},
            "user_data": base64::engine::general_purpose::STANDARD.encode("#!/bin/sh\necho hi\n"),
            "vendor_data": {"a": 1},
            "network_data": {"links": []},
            "devices": [],
            "ec2": {"instance_id": "i-00000001", "local_ipv4": "10.0.0.5",
                    "public_ipv4": "203.0.113.5", "security_groups": ["default"],
                    "block_device_mapping": {"ami": "vda"}},
            "imds": {"tokens": "required", "hop_limit": 2}
        })
    }

    /// `full_document()` with `field` (a dotted path) set to `value`, or
    /// removed when `value` is None.
    fn with(field: &str, value: Option<Value>) -> Vec<u8> {
        let mut doc = full_document();
        let (parent, key) = match field.rsplit_once('.') {
            Some((parent, key)) => (
                doc.pointer_mut(&format!("/{}", parent.replace('.', "/")))
                    .unwrap(),
                key,
            ),
            None => (&mut doc, field),
        };
        let object = parent.as_object_mut().unwrap();
        match value {
            Some(value) => object.insert(key.to_owned(), value),
            None => object.remove(key),
        };
        serde_json::to_vec(&doc).unwrap()
    }

    fn error_for(bytes: &[u8]) -> String {
        let err = InstanceDoc::from_json(bytes)
            .expect_err("document should be refused")
            .to_string();
        assert!(!err.contains('\n'), "error is not one line: {err:?}");
        err
    }

    #[track_caller]
    fn assert_refused(bytes: &[u8], prefix: &str, mentions: &str) {
        let err = error_for(bytes);
        assert!(
            err.starts_with(prefix),
            "{err:?} should start with {prefix:?}"
        );
        assert!(
            err.contains(mentions),
            "{err:?} should mention {mentions:?}"
        );
    }

    #[test]
    fn a_full_document_is_accepted_and_normalized() {
        let doc = InstanceDoc::from_json(&serde_json::to_vec(&full_document()).unwrap()).unwrap();
        assert_eq!(doc.uuid.to_string(), UUID);
        assert_eq!(doc.imds.as_ref().unwrap().tokens, TokenMode::Required);
        assert_eq!(doc.user_data_bytes().unwrap(), b"#!/bin/sh\necho hi\n");
        // Normalized: canonical UUID, unwrapped base64, IMDS defaults.
        let wrapped = "IyEvYmluL3NoCmVj\naG8gaGkK\n";
        let doc = InstanceDoc::from_json(
            json!({"uuid": UUID.replace('-', "").to_uppercase(), "name": "n",
                   "user_data": wrapped, "imds": {}})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(doc.uuid.to_string(), UUID);
        assert_eq!(doc.user_data.as_deref(), Some("IyEvYmluL3NoCmVjaG8gaGkK"));
        assert_eq!(doc.user_data_bytes().unwrap(), b"#!/bin/sh\necho hi\n");
        assert_eq!(
            doc.imds,
            Some(Imds {
                tokens: TokenMode::Optional,
                hop_limit: 1,
                openstack: TokenMode::Optional,
            })
        );
        let stored = serde_json::to_string(&doc).unwrap();
        assert_eq!(InstanceDoc::from_json(stored.as_bytes()).unwrap(), doc);
    }

    #[test]
    fn malformed_json_is_refused() {
        assert_refused(b"{\"uuid\": ", "document: invalid JSON", "EOF");
        assert_refused(b"{} x", "document: invalid JSON", "trailing");
        assert_refused(b"", "document: invalid JSON", "EOF");
        assert_refused(b"[]", "document:", "object");
        assert_refused(
            format!(r#"["{UUID}", "n"]"#).as_bytes(),
            "document:",
            "object",
        );
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        assert_refused(
            &with("colour", Some(json!("red"))),
            "colour: unknown field `colour`",
            "expected one of",
        );
        assert_refused(
            &with("ec2.colour", Some(json!(1))),
            "ec2.colour: unknown field",
            "`instance_id`",
        );
        assert_refused(
            &with("imds.colour", Some(json!(1))),
            "imds.colour: unknown field",
            "`hop_limit`",
        );
    }

    #[test]
    fn required_fields_and_uuid() {
        assert_refused(&with("uuid", None), "uuid: required field is missing", "");
        assert_refused(&with("name", None), "name: required field is missing", "");
        assert_refused(&with("uuid", Some(json!("not-a-uuid"))), "uuid:", "UUID");
        assert_refused(&with("uuid", Some(json!(12))), "uuid:", "invalid type");
        assert_refused(
            &with("name", Some(json!(""))),
            "name: must not be empty",
            "",
        );
        assert_refused(&with("name", Some(json!(null))), "name:", "invalid type");
    }

    #[test]
    fn bad_types_name_the_field() {
        assert_refused(
            &with("launch_index", Some(json!("0"))),
            "launch_index:",
            "invalid type",
        );
        assert_refused(
            &with("launch_index", Some(json!(-1))),
            "launch_index:",
            "invalid value",
        );
        assert_refused(
            &with("meta.role", Some(json!(1))),
            "meta.role:",
            "invalid type",
        );
        assert_refused(
            &with("public_keys", Some(json!(["k"]))),
            "public_keys:",
            "invalid type",
        );
        assert_refused(
            &with("vendor_data", Some(json!([]))),
            "vendor_data:",
            "expected a map",
        );
        assert_refused(
            &with("network_data", Some(json!("x"))),
            "network_data:",
            "expected a map",
        );
        assert_refused(
            &with("devices", Some(json!({}))),
            "devices:",
            "expected a sequence",
        );
        assert_refused(
            &with("ec2", Some(json!(["i-1"]))),
            "ec2: must be a JSON object",
            "",
        );
        assert_refused(
            &with("imds", Some(json!(2))),
            "imds: must be a JSON object",
            "",
        );
        assert_refused(
            &with("ec2.security_groups", Some(json!("default"))),
            "ec2.security_groups:",
            "invalid type",
        );
    }

    #[test]
    fn text_fields_are_bounded() {
        let long = "x".repeat(256);
        for field in ["name", "project_id", "availability_zone"] {
            assert_refused(
                &with(field, Some(json!(long))),
                &format!("{field}: longer than 255 bytes"),
                "256",
            );
            assert_refused(
                &with(field, Some(json!(""))),
                &format!("{field}: must not be empty"),
                "",
            );
            assert_refused(
                &with(field, Some(json!("a\nb"))),
                &format!("{field}: contains a control character"),
                "",
            );
        }
        // Exactly at the limit is fine; the limit counts bytes, not characters.
        assert!(InstanceDoc::from_json(&with("name", Some(json!("x".repeat(255))))).is_ok());
        assert_refused(
            &with("name", Some(json!("é".repeat(128)))),
            "name: longer than 255 bytes",
            "256",
        );
        assert_refused(
            &with("ec2.instance_id", Some(json!(long))),
            "ec2.instance_id: longer than 255",
            "",
        );
        assert_refused(
            &with("ec2.security_groups", Some(json!([long]))),
            "ec2.security_groups: longer than 255",
            "",
        );
    }

    #[test]
    fn hostname_must_be_a_host_name() {
        for good in ["a", "web-1", "web-1.example.org", "x1.y2", &"a".repeat(63)] {
            assert!(
                InstanceDoc::from_json(&with("hostname", Some(json!(good)))).is_ok(),
                "{good}"
            );
        }
        for bad in [
            "web_1",
            "web 1",
            "-web",
            "web-",
            "a..b",
            ".a",
            "a.",
            "wéb",
            &"a".repeat(64),
        ] {
            assert_refused(
                &with("hostname", Some(json!(bad))),
                "hostname:",
                "not a valid host name",
            );
        }
        assert_refused(
            &with("hostname", Some(json!(""))),
            "hostname: must not be empty",
            "",
        );
        let long = vec!["a".repeat(63); 5].join(".");
        assert_refused(
            &with("hostname", Some(json!(long))),
            "hostname: longer than 255 bytes",
            "",
        );
    }

    #[test]
    fn meta_is_bounded_as_nova() {
        let many: serde_json::Map<String, Value> =
            (0..129).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert_refused(
            &with("meta", Some(Value::Object(many))),
            "meta: more than 128 entries",
            "129",
        );
        let enough: serde_json::Map<String, Value> =
            (0..128).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert!(InstanceDoc::from_json(&with("meta", Some(Value::Object(enough)))).is_ok());
        assert_refused(
            &with("meta", Some(json!({"x".repeat(256): "v"}))),
            "meta: key: longer than 255",
            "",
        );
        assert_refused(
            &with("meta", Some(json!({"": "v"}))),
            "meta: key: must not be empty",
            "",
        );
        assert_refused(
            &with("meta.role", Some(json!("v".repeat(256)))),
            "meta.role: longer than 255",
            "256",
        );
    }

    #[test]
    fn public_keys_are_bounded() {
        let many: serde_json::Map<String, Value> = (0..101)
            .map(|i| (format!("k{i}"), json!("ssh-rsa A")))
            .collect();
        assert_refused(
            &with("public_keys", Some(Value::Object(many))),
            "public_keys: more than 100 keys",
            "101",
        );
        assert_refused(
            &with("public_keys", Some(json!({"x".repeat(256): "k"}))),
            "public_keys: key name: longer than 255",
            "",
        );
        assert_refused(
            &with(
                "public_keys.default",
                Some(json!("k".repeat(16 * 1024 + 1))),
            ),
            "public_keys.default: longer than 16384",
            "",
        );
        assert!(
            InstanceDoc::from_json(&with(
                "public_keys.default",
                Some(json!("k".repeat(16 * 1024)))
            ))
            .is_ok()
        );
    }

    #[test]
    fn user_data_must_be_base64_of_at_most_65535_bytes() {
        let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        assert_refused(
            &with("user_data", Some(json!("not base64!"))),
            "user_data: not valid base64",
            "",
        );
        assert_refused(
            &with("user_data", Some(json!("YQ"))),
            "user_data: not valid base64",
            "",
        ); // unpadded
        assert_refused(
            &with("user_data", Some(json!("-_8="))),
            "user_data: not valid base64",
            "",
        ); // URL alphabet
        assert_refused(
            &with("user_data", Some(json!(encode(&[0; 65536])))),
            "user_data: decodes to more than 65535 bytes",
            "65536",
        );
        let doc =
            InstanceDoc::from_json(&with("user_data", Some(json!(encode(&[7; 65535]))))).unwrap();
        assert_eq!(doc.user_data_bytes().unwrap().len(), 65535);
    }

    #[test]
    fn ec2_addresses_must_be_ipv4() {
        assert_refused(
            &with("ec2.local_ipv4", Some(json!("10.0.0"))),
            "ec2.local_ipv4:",
            "IPv4",
        );
        assert_refused(
            &with("ec2.public_ipv4", Some(json!("2001:db8::1"))),
            "ec2.public_ipv4:",
            "IPv4",
        );
    }

    #[test]
    fn imds_settings_are_checked() {
        assert_refused(
            &with("imds.tokens", Some(json!("always"))),
            "imds.tokens:",
            "`optional` or `required`",
        );
        assert_refused(
            &with("imds.hop_limit", Some(json!(0))),
            "imds.hop_limit: must be 1 to 64",
            "0",
        );
        assert_refused(
            &with("imds.hop_limit", Some(json!(65))),
            "imds.hop_limit: must be 1 to 64",
            "65",
        );
        assert_refused(
            &with("imds.hop_limit", Some(json!(300))),
            "imds.hop_limit:",
            "300",
        );
        assert!(InstanceDoc::from_json(&with("imds.hop_limit", Some(json!(64)))).is_ok());
        assert_refused(
            &with("imds.openstack", Some(json!("always"))),
            "imds.openstack:",
            "`optional` or `required`",
        );
    }

    /// The OpenStack tree's mode: nova's (optional) unless set, stored only
    /// when set, and `required` only together with `tokens = "required"`.
    #[test]
    fn imds_openstack_mode_is_checked_and_kept() {
        let doc = InstanceDoc::from_json(&with("imds.openstack", Some(json!("required")))).unwrap();
        let imds = doc.imds.as_ref().unwrap();
        assert_eq!(imds.openstack, TokenMode::Required);
        let stored = serde_json::to_value(&doc).unwrap();
        assert_eq!(stored["imds"]["openstack"], "required");
        assert_eq!(
            InstanceDoc::from_json(stored.to_string().as_bytes()).unwrap(),
            doc
        );

        let doc = InstanceDoc::from_json(&serde_json::to_vec(&full_document()).unwrap()).unwrap();
        assert_eq!(doc.imds.as_ref().unwrap().openstack, TokenMode::Optional);
        let stored = serde_json::to_value(&doc).unwrap();
        assert!(stored["imds"].get("openstack").is_none(), "{stored}");

        let mut open_ec2 = full_document();
        open_ec2["imds"] = json!({"tokens": "optional", "openstack": "required"});
        assert_refused(
            &serde_json::to_vec(&open_ec2).unwrap(),
            "imds.openstack:",
            "imds.tokens = \"required\"",
        );
        open_ec2["imds"] = json!({"openstack": "required"});
        assert_refused(
            &serde_json::to_vec(&open_ec2).unwrap(),
            "imds.openstack:",
            "imds.tokens",
        );
    }

    #[test]
    fn documents_over_one_mib_are_refused() {
        // Mostly vendor_data, which has no limit of its own.
        let big = json!({"blob": "x".repeat(MAX_DOCUMENT_BYTES)});
        assert_refused(
            &with("vendor_data", Some(big)),
            "document: larger than 1048576 bytes",
            "",
        );
    }
}
