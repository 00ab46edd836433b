//! Sample instance documents for tests and the demo.
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Result, ensure};
use serde_json::{Value, json};

use crate::guest::Guest;
use crate::names::random_u64;

/// The tenant subnet the tests and the demo use (every tenant the same one:
/// overlapping subnets are the point).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const PREFIX_LEN: u8 = 24;
/// The address and MAC a guest has unless a test needs several.
pub const GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
pub const GUEST_MAC: &str = "fa:16:3e:00:00:05";

/// An instance document and the values tests compare answers with.
#[derive(Clone, Debug)]
pub struct Instance {
    pub uuid: String,
    pub name: String,
    /// `ec2.instance_id`, what `/latest/meta-data/instance-id` answers.
    pub ec2_id: String,
    pub doc: Value,
}

impl Instance {
    /// A complete document whose every identifying value is new.
    pub fn sample(name: &str) -> Self {
        let uuid = random_uuid();
        let ec2_id = format!("i-{:08x}", random_u64() as u32);
        let doc = json!({
            "uuid": uuid,
            "name": name,
            "hostname": name,
            "project_id": format!("{:032x}", u128::from(random_u64())),
            "availability_zone": "nova",
            "launch_index": 0,
            "public_keys": { format!("{name}-key"): format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{name} {name}@test") },
            "meta": { "role": name },
            "ec2": { "instance_id": ec2_id },
        });
        Self::from_doc(doc).expect("the sample has uuid, name and ec2.instance_id")
    }

    /// Wraps an existing document (the demo ships its own).
    pub fn from_doc(doc: Value) -> Option<Self> {
        Some(Self {
            uuid: doc["uuid"].as_str()?.to_owned(),
            name: doc["name"].as_str()?.to_owned(),
            ec2_id: doc["ec2"]["instance_id"].as_str()?.to_owned(),
            doc,
        })
    }
}

/// Checks that `guest` gets `instance`'s own `meta_data.json` (uuid, name,
/// project and meta all from this document, not another) and instance-id.
pub fn check_own_answers(guest: &Guest, instance: &Instance) -> Result<()> {
    check_own_answers_with(guest, instance, &[])
}

/// [`check_own_answers`], with extra request headers ("Name: value").
pub fn check_own_answers_with(guest: &Guest, instance: &Instance, headers: &[&str]) -> Result<()> {
    let get = |path| guest.http_get_with(path, headers, Duration::from_secs(5));
    let who = format!("guest on tap {} (expecting {})", guest.tap(), instance.name);
    let reply = get("/openstack/latest/meta_data.json")?;
    ensure!(reply.status == 200, "{who}: meta_data.json: {reply}");
    let doc = reply
        .json()
        .ok_or_else(|| anyhow::anyhow!("{who}: meta_data.json is not JSON: {reply}"))?;
    for field in ["uuid", "name", "project_id", "meta"] {
        ensure!(
            doc[field] == instance.doc[field],
            "{who}: meta_data.json has {field} {}, not {}",
            doc[field],
            instance.doc[field]
        );
    }
    let reply = get("/latest/meta-data/instance-id")?;
    ensure!(
        reply.status == 200 && reply.body.trim() == instance.ec2_id,
        "{who}: instance-id should be {}: {reply}",
        instance.ec2_id
    );
    Ok(())
}

/// A random (version 4) UUID in canonical form.
pub fn random_uuid() -> String {
    let value = (u128::from(random_u64()) << 64 | u128::from(random_u64()))
        & !(0xf000 << 64 | 0xc000 << 48)
        | (0x4000 << 64 | 0x8000 << 48);
    let hex = format!("{value:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_canonical_version_4() {
        let uuid = random_uuid();
        assert_eq!(uuid.len(), 36);
        assert_eq!(&uuid[14..15], "4");
        assert!(matches!(&uuid[19..20], "8" | "9" | "a" | "b"), "{uuid}");
        assert_ne!(uuid, random_uuid());
    }

    #[test]
    fn samples_differ() {
        let (a, b) = (Instance::sample("a"), Instance::sample("b"));
        assert_ne!(a.uuid, b.uuid);
        assert_eq!(a.doc["uuid"], a.uuid.as_str());
        assert_eq!(a.doc["ec2"]["instance_id"], a.ec2_id.as_str());
    }
}
