//! The in-memory view of the store that the servers and the datapath read.
//!
//! Readers take a `Snapshot` (an `Arc`, cheap to clone, never changes under
//! them) or subscribe to new ones. Writers go through `Registry`'s methods,
//! which validate, write the store in one transaction and only then publish
//! the next snapshot; the store's mutex serializes writers, so snapshots are
//! published in the order the writes happened.
use std::{
    collections::{BTreeMap, HashMap},
    io::Read as _,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
};

use anyhow::Context as _;
use tokio::sync::watch;

use crate::{
    instance::InstanceDoc,
    port::{MAX_SLOT, Port, PortAddRequest, PortSpec},
    store::{PortRow, Store},
};

/// The largest password a guest may post (nova's limit).
pub const MAX_PASSWORD_BYTES: usize = 256;

/// What the admin API answers with; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// 400: the request is malformed; nothing was stored.
    #[error("{0}")]
    Invalid(String),
    /// 404
    #[error("{0}")]
    NotFound(String),
    /// 409: the request conflicts with the stored state.
    #[error("{0}")]
    Conflict(String),
    /// 500: the store failed.
    #[error("{0:#}")]
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for AdminError {
    fn from(err: anyhow::Error) -> Self {
        AdminError::Internal(err)
    }
}

/// Everything the daemon serves, at one point in time.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub instances: HashMap<uuid::Uuid, Arc<InstanceDoc>>,
    /// By interface name.
    pub ports: BTreeMap<String, Arc<Port>>,
    /// The same ports by slot: the server's lookup for every connection.
    by_slot: HashMap<u32, Arc<Port>>,
}

impl Snapshot {
    #[allow(dead_code)] // called by the guest server
    pub fn port_by_slot(&self, slot: u32) -> Option<&Arc<Port>> {
        self.by_slot.get(&slot)
    }

    pub fn instance(&self, uuid: &uuid::Uuid) -> Option<&Arc<InstanceDoc>> {
        self.instances.get(uuid)
    }

    fn insert_port(&mut self, port: Arc<Port>) {
        self.by_slot.insert(port.slot, Arc::clone(&port));
        self.ports.insert(port.spec.ifname.clone(), port);
    }

    fn remove_port(&mut self, ifname: &str) -> Option<Arc<Port>> {
        let port = self.ports.remove(ifname)?;
        self.by_slot.remove(&port.slot);
        Some(port)
    }

    /// The smallest slot >= 1 no port holds.
    fn free_slot(&self) -> Option<u32> {
        (1..=MAX_SLOT).find(|slot| !self.by_slot.contains_key(slot))
    }

    /// A copy to modify into the next snapshot (the documents are shared).
    fn next(&self) -> Snapshot {
        Snapshot {
            instances: self.instances.clone(),
            ports: self.ports.clone(),
            by_slot: self.by_slot.clone(),
        }
    }
}

pub struct Registry {
    store: Mutex<Store>,
    snapshot: watch::Sender<Arc<Snapshot>>,
}

impl Registry {
    /// Opens the store under `state_dir` and loads it. Fails on a row that
    /// does not parse: that is a damaged database, not something to skip.
    #[allow(dead_code)] // called by serve.rs
    pub fn open(state_dir: &Path) -> anyhow::Result<Arc<Registry>> {
        let store = Store::open(state_dir)?;
        let snapshot = load(&store)?;
        Ok(Arc::new(Registry {
            store: Mutex::new(store),
            snapshot: watch::Sender::new(Arc::new(snapshot)),
        }))
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// For whoever reacts to changes (the datapath attaching new ports).
    #[allow(dead_code)] // called by serve.rs / the datapath
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.subscribe()
    }

    /// Creates or replaces an instance from its JSON document.
    pub fn put_instance(&self, json: &[u8]) -> Result<Arc<InstanceDoc>, AdminError> {
        let doc = Arc::new(InstanceDoc::from_json(json).map_err(AdminError::Invalid)?);
        let stored = serde_json::to_string(&*doc).context("serializing the instance")?;
        let mut store = self.lock_store();
        store.put_instance(&doc.uuid.to_string(), &stored)?;
        let mut next = self.snapshot().next();
        next.instances.insert(doc.uuid, Arc::clone(&doc));
        self.publish(next);
        Ok(doc)
    }

    /// Deletes an instance and its password. Its ports stay registered (the
    /// tap keeps its slot); their guests get 404 until the instance is back.
    pub fn delete_instance(&self, uuid: &str) -> Result<(), AdminError> {
        let uuid = parse_uuid("uuid", uuid)?;
        let mut store = self.lock_store();
        if !store.delete_instance(&uuid.to_string())? {
            return Err(AdminError::NotFound(format!("no instance {uuid}")));
        }
        let mut next = self.snapshot().next();
        next.instances.remove(&uuid);
        self.publish(next);
        Ok(())
    }

    /// Registers a port, or replaces the spec of the port with that ifname
    /// (which keeps its slot).
    pub fn add_port(&self, req: PortAddRequest) -> Result<Arc<Port>, AdminError> {
        let spec: PortSpec = req.validate().map_err(AdminError::Invalid)?;
        let mut store = self.lock_store();
        let current = self.snapshot();
        if current.instance(&spec.instance).is_none() {
            return Err(AdminError::NotFound(format!(
                "--instance: no instance {}",
                spec.instance
            )));
        }
        let slot = match current.ports.get(&spec.ifname) {
            Some(existing) => existing.slot,
            None => current.free_slot().ok_or_else(|| {
                AdminError::Conflict(format!(
                    "--ifname: no free slot, all {MAX_SLOT} slots are taken"
                ))
            })?,
        };
        let port = Arc::new(Port { spec, slot });
        store.put_port(&PortRow {
            ifname: port.spec.ifname.clone(),
            slot,
            spec: serde_json::to_string(&port.spec).context("serializing the port")?,
        })?;
        let mut next = current.next();
        next.remove_port(&port.spec.ifname);
        next.insert_port(Arc::clone(&port));
        self.publish(next);
        Ok(port)
    }

    /// Unregisters a port; its slot becomes free for the next one.
    pub fn delete_port(&self, ifname: &str) -> Result<Arc<Port>, AdminError> {
        crate::port::check_ifname(ifname).map_err(AdminError::Invalid)?;
        let mut store = self.lock_store();
        let mut next = self.snapshot().next();
        let port = next
            .remove_port(ifname)
            .ok_or_else(|| AdminError::NotFound(format!("--ifname: no port {ifname}")))?;
        store.delete_port(ifname)?;
        self.publish(next);
        Ok(port)
    }

    /// The password the guest posted, if any. A store failure reads as "none"
    /// (and is logged): a guest asking for its password is not worth a 500.
    #[allow(dead_code)] // called by the guest API
    pub fn password(&self, uuid: &uuid::Uuid) -> Option<String> {
        self.lock_store()
            .password(&uuid.to_string())
            .inspect_err(|err| tracing::error!("reading the password of {uuid}: {err:#}"))
            .ok()
            .flatten()
    }

    /// Stores the password a guest posts once (nova's semantics: the first
    /// one stays until the instance is deleted).
    #[allow(dead_code)] // called by the guest API
    pub fn set_password(&self, uuid: &uuid::Uuid, password: &str) -> Result<(), AdminError> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(AdminError::Invalid(format!(
                "password: longer than {MAX_PASSWORD_BYTES} bytes ({} bytes)",
                password.len()
            )));
        }
        let mut store = self.lock_store();
        if self.snapshot().instance(uuid).is_none() {
            return Err(AdminError::NotFound(format!("no instance {uuid}")));
        }
        if store.set_password_if_absent(&uuid.to_string(), password)? {
            Ok(())
        } else {
            Err(AdminError::Conflict(format!(
                "instance {uuid} already has a password"
            )))
        }
    }

    /// A 32-byte secret, random on first use and the same ever after (across
    /// restarts): the IMDSv2 token keys.
    #[allow(dead_code)] // called by the guest API
    pub fn secret(&self, name: &str) -> anyhow::Result<[u8; 32]> {
        let mut fresh = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut urandom| urandom.read_exact(&mut fresh))
            .context("reading /dev/urandom")?;
        let stored = self.lock_store().secret_or_insert(name, &fresh)?;
        stored.try_into().map_err(|value: Vec<u8>| {
            anyhow::anyhow!("secret {name:?} has {} bytes, not 32", value.len())
        })
    }

    fn lock_store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave the database half
        // written (transactions roll back), so a poisoned lock is still usable.
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish(&self, next: Snapshot) {
        self.snapshot.send_replace(Arc::new(next));
    }
}

fn load(store: &Store) -> anyhow::Result<Snapshot> {
    let mut snapshot = Snapshot::default();
    for (uuid, doc) in store.instances()? {
        let doc: InstanceDoc = serde_json::from_str(&doc)
            .with_context(|| format!("state.db: instance {uuid} does not parse"))?;
        snapshot.instances.insert(doc.uuid, Arc::new(doc));
    }
    for row in store.ports()? {
        let spec: PortSpec = serde_json::from_str(&row.spec)
            .with_context(|| format!("state.db: port {} does not parse", row.ifname))?;
        snapshot.insert_port(Arc::new(Port {
            spec,
            slot: row.slot,
        }));
    }
    Ok(snapshot)
}

fn parse_uuid(field: &str, text: &str) -> Result<uuid::Uuid, AdminError> {
    crate::port::parse_uuid(field, text).map_err(AdminError::Invalid)
}
