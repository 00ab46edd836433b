//! One instance as the API presents it: the document's values, and nova's
//! defaults where the document is silent. Both trees read only through here,
//! so the EC2 and OpenStack answers never disagree.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use super::ApiConfig;
use crate::{
    backend::guest::Guest,
    state::instance::{Ec2, InstanceDoc, TokenMode},
};

/// Root device of a KVM guest with virtio disks, which is what nova's
/// `block_device.instance_block_mapping` gives a libvirt instance (`ami` is the
/// root device without `/dev/`).
const DEFAULT_ROOT_DEVICE: &str = "/dev/vda";

pub struct InstanceView<'a> {
    pub doc: &'a InstanceDoc,
    pub guest: &'a Guest,
    pub config: &'a ApiConfig,
    ec2: &'a Ec2,
}

static NO_EC2: Ec2 = Ec2 {
    instance_id: None,
    instance_type: None,
    ami_id: None,
    reservation_id: None,
    local_ipv4: None,
    public_ipv4: None,
    security_groups: Vec::new(),
    block_device_mapping: BTreeMap::new(),
    kernel_id: None,
    ramdisk_id: None,
};

impl<'a> InstanceView<'a> {
    pub fn new(doc: &'a InstanceDoc, guest: &'a Guest, config: &'a ApiConfig) -> Self {
        Self {
            doc,
            guest,
            config,
            ec2: doc.ec2.as_ref().unwrap_or(&NO_EC2),
        }
    }

    /// nova's `_get_hostname`: the instance's hostname, plus `.<dhcp_domain>`
    /// when a domain is configured. nova derives the stored hostname from the
    /// display name at boot (`utils.sanitize_hostname`); we do the same when
    /// the document has none.
    pub fn hostname(&self) -> String {
        let short = match &self.doc.hostname {
            Some(hostname) => hostname.clone(),
            None => sanitize_hostname(&self.doc.name)
                .unwrap_or_else(|| format!("Server-{}", self.doc.uuid)),
        };
        if self.config.domain.is_empty() {
            short
        } else {
            format!("{short}.{}", self.config.domain)
        }
    }

    /// nova sets every instance's AZ at boot (`[DEFAULT]
    /// default_availability_zone`, "nova").
    pub fn availability_zone(&self) -> &str {
        self.doc
            .availability_zone
            .as_deref()
            .unwrap_or(&self.config.default_availability_zone)
    }

    pub fn launch_index(&self) -> u32 {
        self.doc.launch_index.unwrap_or(0)
    }

    /// The instance's project, else the one the port was registered with.
    pub fn project_id(&self) -> Option<&str> {
        self.doc
            .project_id
            .as_deref()
            .or(self.guest.port.spec.project_id.as_deref())
    }

    /// nova's EC2 ids are `i-%08x` of a per-cloud counter. Without a counter,
    /// the first 32 bits of the UUID give the same shape, stable for the
    /// instance's life and easy to match to it by eye.
    pub fn ec2_instance_id(&self) -> String {
        match &self.ec2.instance_id {
            Some(id) => id.clone(),
            None => format!("i-{}", &self.doc.uuid.simple().to_string()[..8]),
        }
    }

    /// nova's `ami-%08x` of the image's S3 mapping id; we know no image, so
    /// the first id that scheme can produce.
    pub fn ami_id(&self) -> &str {
        self.ec2.ami_id.as_deref().unwrap_or("ami-00000000")
    }

    /// nova's reservation ids are `r-` and 8 random `[a-z0-9]`; the next 32
    /// bits of the UUID (after the instance id's) keep ours stable.
    pub fn reservation_id(&self) -> String {
        match &self.ec2.reservation_id {
            Some(id) => id.clone(),
            None => format!("r-{}", &self.doc.uuid.simple().to_string()[8..16]),
        }
    }

    /// The flavor name in nova; empty when the operator gave none.
    pub fn instance_type(&self) -> &str {
        self.ec2.instance_type.as_deref().unwrap_or("")
    }

    /// nova: the first fixed IPv4 address of the instance's network info,
    /// else the address the request came from (an IPv6 one for a guest that
    /// asked over IPv6 and has no IPv4 address). Ours: the document's, else
    /// the port's first fixed IPv4 address, else the guest's source address
    /// (which ingress looks up for every port without addresses; 0.0.0.0 if
    /// it could not).
    pub fn local_ipv4(&self) -> IpAddr {
        self.ec2
            .local_ipv4
            .or_else(|| {
                self.guest.port.spec.ips.iter().find_map(|ip| match ip {
                    IpAddr::V4(v4) => Some(*v4),
                    IpAddr::V6(_) => None,
                })
            })
            .map(IpAddr::V4)
            .or(self.guest.guest_addr)
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    /// The first floating IP in nova, empty without one.
    pub fn public_ipv4(&self) -> String {
        self.ec2
            .public_ipv4
            .map(|ip| ip.to_string())
            .unwrap_or_default()
    }

    pub fn security_groups(&self) -> &[String] {
        &self.ec2.security_groups
    }

    pub fn block_device_mapping(&self) -> BTreeMap<String, String> {
        if !self.ec2.block_device_mapping.is_empty() {
            return self.ec2.block_device_mapping.clone();
        }
        BTreeMap::from([
            (
                "ami".to_owned(),
                DEFAULT_ROOT_DEVICE.trim_start_matches("/dev/").to_owned(),
            ),
            ("root".to_owned(), DEFAULT_ROOT_DEVICE.to_owned()),
        ])
    }

    pub fn kernel_id(&self) -> Option<&str> {
        self.ec2.kernel_id.as_deref().filter(|id| !id.is_empty())
    }

    pub fn ramdisk_id(&self) -> Option<&str> {
        self.ec2.ramdisk_id.as_deref().filter(|id| !id.is_empty())
    }

    /// Key name -> OpenSSH key, in name order. nova shows one keypair; we
    /// show every key the operator gave (identical output for one key).
    pub fn public_keys(&self) -> &BTreeMap<String, String> {
        &self.doc.public_keys
    }

    pub fn token_mode(&self) -> TokenMode {
        self.doc
            .imds
            .as_ref()
            .map(|imds| imds.tokens)
            .unwrap_or_default()
    }

    /// Whether the OpenStack tree needs a token (`imds.openstack`; nova's
    /// tree needs none by default).
    pub fn openstack_token_mode(&self) -> TokenMode {
        self.doc
            .imds
            .as_ref()
            .map(|imds| imds.openstack)
            .unwrap_or_default()
    }

    /// IP TTL for the token response (AWS's hop limit, default 1).
    pub fn hop_limit(&self) -> u8 {
        self.doc
            .imds
            .as_ref()
            .map(|imds| imds.hop_limit)
            .unwrap_or(1)
    }
}

/// The IP TTL every answer to `doc`'s guest must leave with, when the
/// instance keeps all of its metadata (not only tokens) from anything routed
/// behind the guest: `imds.openstack = "required"`. None: only the token
/// answer is held back (`InstanceView::hop_limit`).
pub fn every_answer_hop_limit(doc: &InstanceDoc) -> Option<u8> {
    doc.imds
        .as_ref()
        .filter(|imds| imds.openstack == TokenMode::Required)
        .map(|imds| imds.hop_limit)
}

/// nova's `utils.sanitize_hostname` (without its default): drop characters
/// above U+00FF, keep 63, `[ _.]` -> `-`, drop anything not `[\w.-]`, lower
/// case, strip `.` and `-` from both ends. None when nothing is left.
pub fn sanitize_hostname(name: &str) -> Option<String> {
    let truncated: String = name.chars().filter(|c| *c <= '\u{ff}').take(63).collect();
    let mut hostname = String::with_capacity(truncated.len());
    for ch in truncated.chars() {
        match ch {
            ' ' | '_' | '.' => hostname.push('-'),
            // Python's `\w` on these code points is exactly Rust's
            // alphanumeric (letters and numbers) plus `_` (already mapped).
            ch if ch == '-' || ch.is_alphanumeric() => hostname.extend(ch.to_lowercase()),
            _ => {}
        }
    }
    let hostname = hostname.trim_matches(|c| c == '.' || c == '-');
    (!hostname.is_empty()).then(|| hostname.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_hostname_matches_nova() {
        // nova/tests/unit/test_utils.py, GenericUtilsTestCase.test_hostname_*.
        let cases = [
            ("\u{7684}myamazinghostname", "myamazinghostname"),
            ("....test.example.com...", "test-example-com"),
            ("----my-amazing-hostname---", "my-amazing-hostname"),
            (
                "(#@&$!(@*--#&91)(__=+--test-host.example!!.com-0+",
                "91----test-host-example-com-0",
            ),
            ("<}\x1fh\x10e\x08l\x02l\x05o\x12!{>", "hello"),
            (" a b c ", "a-b-c"),
        ];
        for (name, expected) in cases {
            assert_eq!(
                sanitize_hostname(name).as_deref(),
                Some(expected),
                "{name:?}"
            );
        }
        assert_eq!(sanitize_hostname("\u{7684}"), None);
        assert_eq!(sanitize_hostname("---..."), None);
        assert_eq!(sanitize_hostname(&"a".repeat(64)).unwrap().len(), 63);
        let truncated = sanitize_hostname(&format!("{}-a", "a".repeat(62))).unwrap();
        assert_eq!(truncated.len(), 62);
        // Latin-1 letters survive (\w), lower-cased.
        assert_eq!(
            sanitize_hostname("\u{c9}t\u{e9}").as_deref(),
            Some("\u{e9}t\u{e9}")
        );
    }
}
