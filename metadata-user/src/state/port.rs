//! A port: one tap on this host, bound to one instance.
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{
    FieldError, Source,
    instance::{MAX_TEXT_BYTES, check_line},
};

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
    /// Fixed IPs, IPv4 or IPv6 (the neutron-agent socket matches a proxy's
    /// X-Forwarded-For against them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_id: Option<uuid::Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
}

/// A registered port: the spec plus the slot the daemon gave it, and who
/// it belongs to. The slot is stable for the port's life (it survives
/// restarts and tap re-creation) and is what the datapath encodes in the
/// identity address.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Port {
    #[serde(flatten)]
    pub spec: PortSpec,
    pub slot: u32,
    /// `"source": "manual"` or `"source": "libvirt", "domain": ...,
    /// "domain_uuid": ...`.
    #[serde(flatten)]
    pub source: Source,
}

/// The longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_BYTES: usize = 15;
/// Slots index the default identity range 240.1.0.0/16, whose first and
/// last addresses are not used; 0 means "none".
pub const MAX_SLOT: u32 = 65534;

/// `port add` as the CLI sends it to the daemon: the flags' strings, not yet
/// validated (the daemon validates, so every client gets the same answers).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortAddRequest {
    pub ifname: String,
    pub instance: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
}

impl PortAddRequest {
    /// Checks every field's syntax and normalizes it (canonical UUIDs,
    /// lower-case MAC). Whether the instance exists is the registry's
    /// question. The error is one line naming the CLI flag.
    pub fn validate(&self) -> Result<PortSpec, FieldError> {
        check_ifname(&self.ifname)?;
        let ips = self
            .ips
            .iter()
            .map(|ip| {
                ip.parse::<IpAddr>()
                    .map_err(|_| FieldError::new("--ip", format!("{ip:?} is not an IP address")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(project_id) = &self.project_id {
            check_line("--project-id", project_id, MAX_TEXT_BYTES)?;
        }
        Ok(PortSpec {
            ifname: self.ifname.clone(),
            instance: parse_uuid("--instance", &self.instance)?,
            port_id: self
                .port_id
                .as_deref()
                .map(|id| parse_uuid("--port-id", id))
                .transpose()?,
            mac: self.mac.as_deref().map(parse_mac).transpose()?,
            ips,
            network_id: self
                .network_id
                .as_deref()
                .map(|id| parse_uuid("--network-id", id))
                .transpose()?,
            project_id: self.project_id.clone(),
        })
    }
}

/// What Linux accepts as an interface name (net/core/dev.c dev_valid_name),
/// plus ':' which would make an alias name.
pub fn check_ifname(ifname: &str) -> Result<(), FieldError> {
    let refused = |reason: String| Err(FieldError::new("--ifname", reason));
    if ifname.is_empty() {
        return refused("must not be empty".to_string());
    }
    if ifname.len() > MAX_IFNAME_BYTES {
        return refused(format!(
            "{ifname:?} is longer than {MAX_IFNAME_BYTES} bytes ({} bytes)",
            ifname.len()
        ));
    }
    if ifname == "." || ifname == ".." {
        return refused(format!("{ifname:?} is not an interface name"));
    }
    if let Some(bad) = ifname
        .chars()
        .find(|&c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        return refused(format!(
            "{ifname:?} contains {bad:?} (no '/', ':', whitespace or NUL)"
        ));
    }
    Ok(())
}

/// `text` as a UUID, or an error naming `field` (a flag or a path part).
pub fn parse_uuid(field: &str, text: &str) -> Result<uuid::Uuid, FieldError> {
    uuid::Uuid::parse_str(text)
        .map_err(|err| FieldError::new(field, format!("{text:?} is not a UUID ({err})")))
}

/// Six hex pairs separated by ':', unicast and not all zero (what Linux
/// accepts as a device's address); returned lower-case.
fn parse_mac(text: &str) -> Result<String, FieldError> {
    let refused = |reason: String| FieldError::new("--mac", reason);
    let octets: Vec<u8> = text
        .split(':')
        .map(|pair| {
            if pair.len() == 2 && pair.bytes().all(|b| b.is_ascii_hexdigit()) {
                u8::from_str_radix(pair, 16).ok()
            } else {
                None
            }
        })
        .collect::<Option<_>>()
        .filter(|octets: &Vec<u8>| octets.len() == 6)
        .ok_or_else(|| {
            refused(format!(
                "{text:?} is not a MAC address (six hex pairs separated by ':')"
            ))
        })?;
    if octets[0] & 1 == 1 {
        return Err(refused(format!("{text:?} is a multicast address")));
    }
    if octets.iter().all(|&b| b == 0) {
        return Err(refused(format!("{text:?} is the all-zero address")));
    }
    Ok(text.to_ascii_lowercase())
}

/// The project nova is told for a port: `port add --project-id`, else the
/// instance document's `project_id`. nova answers 404 when X-Tenant-ID does
/// not match the instance's project, so in nova mode a port without either
/// is refused (the error is what the CLI shows).
pub fn project_for_port(
    instance: &uuid::Uuid,
    spec_project: Option<&str>,
    instance_project: Option<&str>,
) -> Result<String, NoProject> {
    let given = |p: Option<&str>| {
        p.map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
    };
    given(spec_project)
        .or_else(|| given(instance_project))
        .ok_or(NoProject {
            instance: *instance,
        })
}

/// A port that nova could not be asked for: neither it nor its instance
/// names a project.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("--project-id is required in nova mode: instance {instance} has no project_id")]
pub struct NoProject {
    pub instance: uuid::Uuid,
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "7c1b6e0e-3e4f-4e59-9d5e-0a5a8b0c1d2e";

    fn request() -> PortAddRequest {
        PortAddRequest {
            ifname: "tap0".into(),
            instance: UUID.into(),
            ..Default::default()
        }
    }

    #[track_caller]
    fn assert_refused(req: PortAddRequest, prefix: &str) {
        let err = req
            .validate()
            .expect_err("request should be refused")
            .to_string();
        assert!(!err.contains('\n'), "not one line: {err:?}");
        assert!(
            err.starts_with(prefix),
            "{err:?} should start with {prefix:?}"
        );
    }

    #[test]
    fn a_port_is_flat_json_with_its_source() {
        let spec = request().validate().unwrap();
        let manual = Port {
            spec: spec.clone(),
            slot: 3,
            source: Source::Manual,
        };
        let json = serde_json::to_value(&manual).unwrap();
        assert_eq!(json["source"], "manual");
        assert_eq!(json["ifname"], "tap0");
        assert_eq!(json["slot"], 3);
        assert_eq!(serde_json::from_value::<Port>(json).unwrap(), manual);
        let discovered = Port {
            spec,
            slot: 4,
            source: Source::Libvirt {
                domain: "vm-1".into(),
                domain_uuid: UUID.parse().unwrap(),
            },
        };
        let json = serde_json::to_value(&discovered).unwrap();
        assert_eq!(json["source"], "libvirt");
        assert_eq!(json["domain"], "vm-1");
        assert_eq!(json["domain_uuid"], UUID);
        assert_eq!(serde_json::from_value::<Port>(json).unwrap(), discovered);
    }

    #[test]
    fn a_full_request_is_normalized() {
        let spec = PortAddRequest {
            ifname: "tap-1.x".into(),
            instance: UUID.to_uppercase(),
            port_id: Some("urn:uuid:11111111-2222-3333-4444-555555555555".into()),
            mac: Some("FA:16:3E:0A:0B:0C".into()),
            ips: vec!["10.0.0.5".into(), "192.0.2.1".into(), "FD00::5".into()],
            network_id: Some("{aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee}".into()),
            project_id: Some("p1".into()),
        }
        .validate()
        .unwrap();
        assert_eq!(spec.instance.to_string(), UUID);
        assert_eq!(
            spec.port_id.unwrap().to_string(),
            "11111111-2222-3333-4444-555555555555"
        );
        assert_eq!(spec.mac.as_deref(), Some("fa:16:3e:0a:0b:0c"));
        let expected: Vec<IpAddr> = ["10.0.0.5", "192.0.2.1", "fd00::5"]
            .iter()
            .map(|ip| ip.parse().unwrap())
            .collect();
        assert_eq!(spec.ips, expected);
        assert_eq!(
            spec.network_id.unwrap().to_string(),
            "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
        );
    }

    #[test]
    fn ifname_follows_linux_rules() {
        assert!(
            PortAddRequest {
                ifname: "a".repeat(15),
                ..request()
            }
            .validate()
            .is_ok()
        );
        assert_refused(
            PortAddRequest {
                ifname: "a".repeat(16),
                ..request()
            },
            "--ifname:",
        );
        assert_refused(
            PortAddRequest {
                ifname: "".into(),
                ..request()
            },
            "--ifname: must not be empty",
        );
        for bad in ["ta/p", "ta p", "tap:1", "ta\0p", "ta\tp", ".", ".."] {
            assert_refused(
                PortAddRequest {
                    ifname: bad.into(),
                    ..request()
                },
                "--ifname:",
            );
        }
    }

    #[test]
    fn uuids_are_checked_per_flag() {
        assert_refused(
            PortAddRequest {
                instance: "web-1".into(),
                ..request()
            },
            "--instance:",
        );
        assert_refused(
            PortAddRequest {
                port_id: Some("x".into()),
                ..request()
            },
            "--port-id:",
        );
        assert_refused(
            PortAddRequest {
                network_id: Some("".into()),
                ..request()
            },
            "--network-id:",
        );
    }

    #[test]
    fn mac_must_be_six_hex_pairs_unicast() {
        for bad in [
            "fa:16:3e:0a:0b",
            "fa:16:3e:0a:0b:0c:0d",
            "fa-16-3e-0a-0b-0c",
            "fa:16:3e:0a:0b:0g",
            "fa:16:3e:0a:0b:c",
            "fa163e0a0b0c",
            "+a:16:3e:0a:0b:0c",
            "",
        ] {
            assert_refused(
                PortAddRequest {
                    mac: Some(bad.into()),
                    ..request()
                },
                "--mac:",
            );
        }
        assert_refused(
            PortAddRequest {
                mac: Some("01:00:5e:00:00:01".into()),
                ..request()
            },
            "--mac: \"01:00:5e:00:00:01\" is a multicast",
        );
        assert_refused(
            PortAddRequest {
                mac: Some("ff:ff:ff:ff:ff:ff".into()),
                ..request()
            },
            "--mac: \"ff:ff:ff:ff:ff:ff\" is a multicast",
        );
        assert_refused(
            PortAddRequest {
                mac: Some("00:00:00:00:00:00".into()),
                ..request()
            },
            "--mac:",
        );
    }

    #[test]
    fn ips_must_be_ip_addresses() {
        for bad in [
            "10.0.0",
            "10.0.0.256",
            "2001:db8::1::2",
            "fe80::1%eth0",
            "10.0.0.1/24",
            "fd00::/64",
            "",
        ] {
            assert_refused(
                PortAddRequest {
                    ips: vec!["10.0.0.1".into(), bad.into()],
                    ..request()
                },
                "--ip:",
            );
        }
    }

    #[test]
    fn project_id_is_bounded_and_printable() {
        assert_refused(
            PortAddRequest {
                project_id: Some("p".repeat(256)),
                ..request()
            },
            "--project-id: longer than 255",
        );
        assert_refused(
            PortAddRequest {
                project_id: Some("a\u{7}b".into()),
                ..request()
            },
            "--project-id: contains a control",
        );
        assert_refused(
            PortAddRequest {
                project_id: Some("".into()),
                ..request()
            },
            "--project-id: must not be empty",
        );
    }

    #[test]
    fn port_project_then_instance_project_else_error() {
        let instance = uuid::Uuid::from_u128(7);
        assert_eq!(
            project_for_port(&instance, Some("a"), Some("b")).unwrap(),
            "a"
        );
        assert_eq!(project_for_port(&instance, None, Some("b")).unwrap(), "b");
        assert_eq!(
            project_for_port(&instance, Some(" "), Some("b")).unwrap(),
            "b"
        );
        assert_eq!(
            project_for_port(&instance, None, Some(""))
                .unwrap_err()
                .to_string(),
            "--project-id is required in nova mode: instance 00000000-0000-0000-0000-000000000007 has no project_id"
        );
    }
}
