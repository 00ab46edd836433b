//! `/<version>/dynamic/instance-identity/document`, AWS's instance identity
//! document (nova has no `dynamic` tree; this is the IMDS extension SDKs use
//! to learn their region and account).
//!
//! AWS pretty-prints the document with two-space indents and `" : "`, keys in
//! alphabetical order except the product-code trio, and answers `text/plain`.
//! We give every key we can fill; `architecture` and `pendingTime` are left
//! out because the document does not know them, the signature keys (`pkcs7`,
//! `signature`, `rsa2048`) because we cannot sign for AWS.
use serde_json::Value;

use super::{
    paths::Ec2Version,
    response::{AWS_TEXT_PLAIN, ApiError, Document},
    view::InstanceView,
};

/// Answers the segments after `dynamic`.
pub fn lookup(
    view: &InstanceView<'_>,
    version: Ec2Version,
    segments: &[String],
) -> Result<Document, ApiError> {
    // AWS added the dynamic category in 2009-04-04.
    if version < Ec2Version::V2009_04_04 {
        return Err(ApiError::NotFound);
    }
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segments.as_slice() {
        [] => Ok(Document::text("instance-identity/")),
        ["instance-identity"] => Ok(Document::text("document")),
        ["instance-identity", "document"] => Ok(Document {
            body: document(view).into(),
            content_type: AWS_TEXT_PLAIN,
        }),
        _ => Err(ApiError::NotFound),
    }
}

fn document(view: &InstanceView<'_>) -> String {
    let availability_zone = view.availability_zone();
    let string = |value: &str| Value::String(value.to_owned());
    let optional = |value: Option<&str>| value.map_or(Value::Null, string);
    let fields = [
        ("accountId", optional(view.project_id())),
        ("availabilityZone", string(availability_zone)),
        ("billingProducts", Value::Null),
        ("devpayProductCodes", Value::Null),
        ("marketplaceProductCodes", Value::Null),
        ("imageId", string(view.ami_id())),
        ("instanceId", string(&view.ec2_instance_id())),
        ("instanceType", string(view.instance_type())),
        ("kernelId", optional(view.kernel_id())),
        ("privateIp", string(&view.local_ipv4().to_string())),
        ("ramdiskId", optional(view.ramdisk_id())),
        ("region", string(region_of(availability_zone))),
        ("version", string("2017-09-30")),
    ];
    let lines: Vec<String> = fields
        .iter()
        .map(|(key, value)| format!("  \"{key}\" : {value}"))
        .collect();
    format!("{{\n{}\n}}", lines.join(",\n"))
}

/// AWS zones are the region plus one letter (`us-west-2b`); any other zone
/// name (OpenStack's `nova`, `az1`) is its own region.
pub fn region_of(availability_zone: &str) -> &str {
    let bytes = availability_zone.as_bytes();
    match bytes {
        [.., digit, letter] if digit.is_ascii_digit() && letter.is_ascii_lowercase() => {
            &availability_zone[..availability_zone.len() - 1]
        }
        _ => availability_zone,
    }
}

#[cfg(test)]
mod tests {
    use super::region_of;

    #[test]
    fn region_comes_from_the_zone() {
        assert_eq!(region_of("us-west-2b"), "us-west-2");
        assert_eq!(region_of("eu-central-1a"), "eu-central-1");
        assert_eq!(region_of("nova"), "nova");
        assert_eq!(region_of("az1"), "az1");
        assert_eq!(region_of(""), "");
    }
}
