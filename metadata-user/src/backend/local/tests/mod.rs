//! End-to-end tests of `handle`: fixtures, request helpers, and one module
//! per area. Expected outputs are written from nova's code (the function is
//! named next to each), never captured from our own output.
mod ec2_golden;
mod http_wire;
mod imdsv2;
mod openstack_golden;
mod password_endpoint;
mod signed_identity;
mod watch;

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};

use super::{ApiConfig, ApiContext, PasswordError, PasswordStore, handle};
use crate::{
    backend::guest::Guest,
    state::{
        Port,
        instance::{Imds, InstanceDoc, TokenMode},
        port::PortSpec,
    },
};

pub const RICH_UUID: &str = "8f2e5d1c-3b4a-4c6d-9e7f-0a1b2c3d4e5f";
pub const SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHb4tP8bZ0ApUd1p user@host";
/// `#cloud-config\nruncmd: [echo hi]\n` followed by the bytes ff 00 01 and
/// `binary`: user data must come back byte for byte.
pub const USER_DATA_B64: &str = "I2Nsb3VkLWNvbmZpZwpydW5jbWQ6IFtlY2hvIGhpXQr/AAFiaW5hcnk=";
pub const USER_DATA: &[u8] = b"#cloud-config\nruncmd: [echo hi]\n\xff\x00\x01binary";

/// An instance with every field set.
pub fn rich_instance() -> InstanceDoc {
    let json = serde_json::json!({
        "uuid": RICH_UUID,
        "name": "Web Server 01",
        "hostname": "web-01",
        "project_id": "6c8e9f2a1b3d4e5f6a7b8c9d0e1f2a3b",
        "availability_zone": "az1",
        "launch_index": 2,
        "public_keys": {"mykey": SSH_KEY},
        "meta": {"role": "web", "tier": "frontend"},
        "user_data": USER_DATA_B64,
        "vendor_data": {"cloud": "example", "nested": {"a": [true, null, 1.5], "b": 1}},
        "network_data": {
            "links": [{"id": "tap0", "type": "phy", "ethernet_mac_address": "fa:16:3e:00:00:01", "mtu": 1450}],
            "networks": [{"id": "network0", "link": "tap0", "type": "ipv4_dhcp"}],
            "services": []
        },
        "devices": [
            {"type": "nic", "mac": "fa:16:3e:00:00:01", "bus": "pci", "address": "0000:00:03.0",
             "tags": ["nfv"], "vlan": 100, "vf_trusted": true},
            {"type": "nic", "mac": "fa:16:3e:00:00:02", "bus": "pci", "address": "0000:00:04.0",
             "vlan": 200, "vf_trusted": false},
            {"type": "disk", "serial": "vol-1", "path": "/dev/disk/by-id/virtio-vol-1",
             "bus": "scsi", "address": "0:0:0:1", "tags": ["db"]},
            {"type": "share", "share_id": "share-1", "tag": "data", "bus": "none", "address": "none"}
        ],
        "dedicated_cpus": [5, 3, 4],
        "ec2": {
            "instance_id": "i-0000abcd",
            "instance_type": "m1.small",
            "ami_id": "ami-00000007",
            "reservation_id": "r-abc123de",
            "local_ipv4": "10.0.0.5",
            "public_ipv4": "203.0.113.10",
            "security_groups": ["default", "web"],
            "block_device_mapping": {"ami": "vda", "root": "/dev/vda", "ephemeral0": "/dev/vdb", "swap": "/dev/vdc"},
            "kernel_id": "aki-00000002"
        }
    });
    serde_json::from_value(json).expect("fixture is a valid instance document")
}

/// An instance with only the required fields: nova's defaults show.
pub fn bare_instance() -> InstanceDoc {
    serde_json::from_value(serde_json::json!({
        "uuid": "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
        "name": "Bare_Box.01",
    }))
    .unwrap()
}

pub fn with_imds(mut doc: InstanceDoc, tokens: TokenMode, hop_limit: u8) -> InstanceDoc {
    doc.imds = Some(Imds {
        tokens,
        hop_limit,
        openstack: TokenMode::Optional,
    });
    doc
}

/// Tokens required on both trees, every answer at `hop_limit`
/// (`imds.openstack = "required"`).
pub fn with_tokens_everywhere(mut doc: InstanceDoc, hop_limit: u8) -> InstanceDoc {
    doc.imds = Some(Imds {
        tokens: TokenMode::Required,
        hop_limit,
        openstack: TokenMode::Required,
    });
    doc
}

pub fn guest(slot: u32, ifname: &str, ips: &[Ipv4Addr]) -> Guest {
    Guest {
        port: Arc::new(Port {
            spec: PortSpec {
                ifname: ifname.to_owned(),
                instance: RICH_UUID.parse().unwrap(),
                port_id: None,
                mac: Some("fa:16:3e:00:00:01".to_owned()),
                ips: ips.iter().copied().map(Into::into).collect(),
                network_id: None,
                project_id: Some("port-project".to_owned()),
            },
            slot,
            source: Default::default(),
        }),
        guest_addr: Some(Ipv4Addr::new(192, 168, 50, 7).into()),
    }
}

pub fn default_guest() -> Guest {
    guest(3, "tap-a", &[Ipv4Addr::new(10, 0, 0, 99)])
}

/// In-memory passwords, as the store keeps them; `break_store` makes every
/// read and write fail, as a store with a full or damaged disk would.
#[derive(Default)]
pub struct MemoryPasswords {
    map: Mutex<HashMap<uuid::Uuid, String>>,
    broken: std::sync::atomic::AtomicBool,
}

impl MemoryPasswords {
    pub fn break_store(&self) {
        self.broken.store(true, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), PasswordError> {
        if self.broken.load(Ordering::SeqCst) {
            Err(PasswordError::StoreFailed)
        } else {
            Ok(())
        }
    }
}

impl PasswordStore for MemoryPasswords {
    fn password(&self, uuid: &uuid::Uuid) -> Result<Option<String>, PasswordError> {
        self.check()?;
        Ok(self.map.lock().unwrap().get(uuid).cloned())
    }

    fn set_password(&self, uuid: &uuid::Uuid, password: &str) -> Result<(), PasswordError> {
        self.check()?;
        let mut map = self.map.lock().unwrap();
        if map.contains_key(uuid) {
            return Err(PasswordError::AlreadySet);
        }
        map.insert(*uuid, password.to_owned());
        Ok(())
    }
}

/// 2026-01-01T00:00:00Z: after every OpenStack version's date.
pub const TEST_EPOCH: u64 = 1_767_225_600;

/// A context with a settable clock (Unix seconds).
pub struct Harness {
    pub ctx: ApiContext,
    pub clock: Arc<AtomicU64>,
    pub passwords: Arc<MemoryPasswords>,
}

impl Harness {
    pub fn new() -> Self {
        Self::with_config(ApiConfig::default())
    }

    pub fn with_config(config: ApiConfig) -> Self {
        Self::with_key(config, [42; 32])
    }

    pub fn with_key(config: ApiConfig, key: [u8; 32]) -> Self {
        let clock = Arc::new(AtomicU64::new(TEST_EPOCH));
        let passwords = Arc::new(MemoryPasswords::default());
        let reading = clock.clone();
        let ctx = ApiContext::new(config, key, passwords.clone()).with_clock(Arc::new(move || {
            SystemTime::UNIX_EPOCH + Duration::from_secs(reading.load(Ordering::SeqCst))
        }));
        Self {
            ctx,
            clock,
            passwords,
        }
    }

    /// The same harness, signing identities with `identity`.
    pub fn with_identity(self, identity: Arc<crate::backend::identity::Identity>) -> Self {
        let Harness {
            ctx,
            clock,
            passwords,
        } = self;
        Harness {
            ctx: ctx.with_identity(Some(identity)),
            clock,
            passwords,
        }
    }

    pub fn advance(&self, seconds: u64) {
        self.clock.fetch_add(seconds, Ordering::SeqCst);
    }

    pub async fn send(
        &self,
        guest: &Guest,
        doc: Option<&InstanceDoc>,
        request: Request<Full<Bytes>>,
    ) -> Answer {
        let reply = handle(&self.ctx, guest, doc.cloned().map(Arc::new), request).await;
        let status = reply.response.status();
        let headers = reply.response.headers().clone();
        let body = reply
            .response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        Answer {
            status,
            headers,
            body,
            ip_ttl: reply.ip_ttl,
        }
    }

    pub async fn get(&self, doc: &InstanceDoc, path: &str) -> Answer {
        self.send(
            &default_guest(),
            Some(doc),
            request(Method::GET, path, &[], ""),
        )
        .await
    }
}

pub fn request(
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(body.into())).unwrap()
}

#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
    /// The IP TTL the answer must leave with.
    pub ip_ttl: u8,
}

impl Answer {
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get(hyper::header::CONTENT_TYPE)
            .map(|value| value.to_str().unwrap())
            .unwrap_or("")
    }

    /// Asserts a 200 with this content type and body.
    #[track_caller]
    pub fn assert_ok(&self, content_type: &str, body: &str) {
        assert_eq!(self.status, StatusCode::OK, "body: {:?}", self.body);
        assert_eq!(self.content_type(), content_type);
        assert_eq!(self.text(), body);
    }
}

pub const TEXT: &str = "text/plain; charset=UTF-8";
pub const JSON: &str = "application/json";

/// Sorted map literal for readable fixtures.
pub fn map(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The server spawns a task per connection, so `handle`'s future must be
/// Send for hyper's own body type (checked at compile time).
#[allow(dead_code)]
fn handle_future_is_send(ctx: &ApiContext, guest: &Guest, req: Request<hyper::body::Incoming>) {
    fn assert_send<T: Send>(_: &T) {}
    let future = handle(ctx, guest, None, req);
    assert_send(&future);
}
