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
    sync::atomic::Ordering,
    sync::{Arc, Mutex, MutexGuard},
};

use anyhow::Context as _;
use tokio::sync::watch;

use super::{
    FieldError, Source, StoreSync,
    instance::{InstanceDoc, MAX_PASSWORD_BYTES},
    port::{self, MAX_SLOT, NoProject, Port, PortAddRequest, PortSpec},
    store::{InstanceRow, PortRow, SourceColumns, Store, Write},
};

/// Why a write was refused. Callers branch on the kind (the admin API maps
/// each to an HTTP status); the message is one line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The request is malformed; nothing was stored.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// In nova mode, a port whose project nova could not be told.
    #[error(transparent)]
    NoProject(#[from] NoProject),
    /// What the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the stored state.
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

/// Everything the daemon serves, at one point in time.
///
/// The maps are persistent (`imbl`): the next snapshot starts as a copy that
/// shares every node with this one, and a write copies only the path to the
/// entry it changes, O(log N), where a std map's copy was O(N) per write
/// (10,000 ports and instances: every `port add` copied all of them).
#[derive(Debug, Default)]
pub struct Snapshot {
    pub instances: imbl::HashMap<uuid::Uuid, Arc<InstanceDoc>>,
    /// Who each instance document belongs to, for those that came from a
    /// domain's metadata; the others are manual.
    pub instance_sources: imbl::HashMap<uuid::Uuid, Source>,
    /// By interface name.
    pub ports: imbl::OrdMap<String, Arc<Port>>,
    /// The same ports by slot: the server's lookup for every connection.
    by_slot: imbl::HashMap<u32, Arc<Port>>,
    /// The slot handed out last: where the next port's slot is looked for.
    last_slot: u32,
}

impl Snapshot {
    pub fn port_by_slot(&self, slot: u32) -> Option<&Arc<Port>> {
        self.by_slot.get(&slot)
    }

    pub fn instance(&self, uuid: &uuid::Uuid) -> Option<&Arc<InstanceDoc>> {
        self.instances.get(uuid)
    }

    /// Who the instance document belongs to (manual if there is none).
    pub fn instance_source(&self, uuid: &uuid::Uuid) -> &Source {
        static MANUAL: Source = Source::Manual;
        self.instance_sources.get(uuid).unwrap_or(&MANUAL)
    }

    /// The domains discovery holds ports or documents for, with their
    /// ports' taps (none for a domain that holds only its document).
    pub fn discovered(&self) -> BTreeMap<uuid::Uuid, Vec<String>> {
        let mut owned: BTreeMap<uuid::Uuid, Vec<String>> = self
            .instance_sources
            .values()
            .filter_map(Source::domain_uuid)
            .map(|uuid| (uuid, Vec::new()))
            .collect();
        for port in self.ports.values() {
            if let Some(uuid) = port.source.domain_uuid() {
                owned
                    .entry(uuid)
                    .or_default()
                    .push(port.spec.ifname.clone());
            }
        }
        owned
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

    /// The first slot in 1..=`max` after `last` (wrapping round) that no
    /// port holds.
    ///
    /// Slots go round rather than reusing the smallest free one: a slot is
    /// the guest's source address at the server, and the server keeps a
    /// closed connection's TIME_WAIT state for 60 s. A new guest given a
    /// just-freed slot would hit those with older TCP timestamps, and PAWS
    /// would drop its SYNs (seen in `cargo xtask bench`).
    fn free_slot(&self, last: u32, max: u32) -> Option<u32> {
        (last + 1..=max)
            .chain(1..=last.min(max))
            .find(|slot| !self.by_slot.contains_key(slot))
    }

    /// The slots the next ports will get, in order (as long as no port is
    /// deleted in between): the datapath prepares their flow tables.
    pub fn upcoming_slots(&self, count: usize) -> impl Iterator<Item = u32> + '_ {
        (self.last_slot + 1..=MAX_SLOT)
            .chain(1..=self.last_slot.min(MAX_SLOT))
            .filter(|slot| !self.by_slot.contains_key(slot))
            .take(count)
    }

    /// The interface names of the ports added, removed or changed since
    /// `older`.
    pub fn changed_ports<'a>(&'a self, older: &'a Snapshot) -> impl Iterator<Item = &'a str> + 'a {
        // `diff` skips the subtrees both snapshots share: the cost is the
        // changes', not the ports' (a walk of every port per write was
        // 10,000 comparisons per `port add` at 10,000 ports).
        older.ports.diff(&self.ports).map(|change| match change {
            imbl::ordmap::DiffItem::Add(ifname, _)
            | imbl::ordmap::DiffItem::Remove(ifname, _)
            | imbl::ordmap::DiffItem::Update {
                new: (ifname, _), ..
            } => ifname.as_str(),
        })
    }

    /// The highest slot in use, where allocation resumes after a restart.
    fn highest_slot(&self) -> u32 {
        self.by_slot.keys().copied().max().unwrap_or(0)
    }

    /// A copy to modify into the next snapshot: O(1), the maps' nodes are
    /// shared until written.
    fn next(&self) -> Snapshot {
        Snapshot {
            instances: self.instances.clone(),
            instance_sources: self.instance_sources.clone(),
            ports: self.ports.clone(),
            by_slot: self.by_slot.clone(),
            last_slot: self.last_slot,
        }
    }

    fn insert_instance(&mut self, doc: Arc<InstanceDoc>, source: Source) {
        if source.is_manual() {
            self.instance_sources.remove(&doc.uuid);
        } else {
            self.instance_sources.insert(doc.uuid, source);
        }
        self.instances.insert(doc.uuid, doc);
    }

    fn remove_instance(&mut self, uuid: &uuid::Uuid) {
        self.instances.remove(uuid);
        self.instance_sources.remove(uuid);
    }
}

/// What discovery wants served for one domain: [`Registry::sync_domain`].
#[derive(Clone, Debug)]
pub struct DomainSync {
    /// The owner: its `domain_uuid` is the instance its ports are bound to.
    pub source: Source,
    /// The instance document the domain carries (`instance put`'s JSON),
    /// if it carries one.
    pub document: Option<Vec<u8>>,
    /// One per tap; their `instance` is the domain's UUID.
    pub ports: Vec<PortAddRequest>,
}

/// What [`Registry::sync_domain`] could not serve as asked, and why; the
/// rest is served.
#[derive(Clone, Debug, PartialEq)]
pub enum SyncProblem {
    /// The tap is a manual port: left as the operator made it.
    ManualPort {
        ifname: String,
        instance: uuid::Uuid,
    },
    /// A port request that does not validate (a bad MAC, tap name, ...).
    InvalidPort { ifname: String, error: FieldError },
    /// The operator put the instance by hand: the domain's document is not
    /// used.
    ManualInstance,
    /// The domain's document does not validate: no document is served.
    InvalidDocument(FieldError),
    /// Local backend: there is no document for the domain's UUID, so its
    /// guests get 404.
    NoDocument,
    /// nova backend: neither the domain nor a document names the project
    /// nova must be told (X-Tenant-ID).
    NoProject,
}

/// What a port must be bound to, which depends on who answers its guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PortPolicy {
    /// The local store answers: the instance document must exist.
    #[default]
    LocalInstance,
    /// nova answers: the document may be absent, but X-Tenant-ID needs the
    /// project, from `--project-id` or the document's `project_id`.
    NovaProject,
}

pub struct Registry {
    policy: PortPolicy,
    store: Mutex<Store>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    /// Secrets never change once made; the token code asks on every request.
    secrets: Mutex<HashMap<String, [u8; 32]>>,
    /// The slot handed out last (writes happen under the store lock).
    last_slot: std::sync::atomic::AtomicU32,
    /// The highest slot a port may have: the identity network holds one
    /// address per slot, and a port beyond it could never be attached.
    max_slot: u32,
    /// See [`Registry::manual_changes`].
    manual_changes: watch::Sender<u64>,
    /// See [`Registry::generation`].
    generation: std::sync::atomic::AtomicU64,
}

impl Registry {
    /// Opens the store under `state_dir` and loads it. Fails on a row that
    /// does not parse: that is a damaged database, not something to skip.
    #[cfg(test)]
    pub fn open(state_dir: &Path) -> anyhow::Result<Arc<Registry>> {
        Self::open_with_policy(state_dir, PortPolicy::default(), MAX_SLOT)
    }

    #[cfg(test)]
    pub fn open_with_policy(
        state_dir: &Path,
        policy: PortPolicy,
        max_slot: u32,
    ) -> anyhow::Result<Arc<Registry>> {
        Self::open_with(state_dir, policy, max_slot, StoreSync::default())
    }

    /// `max_slot`: how many ports the identity network has addresses for
    /// (at most [`MAX_SLOT`]); `port add` beyond it is refused. `sync`:
    /// the store's durability (`--store-sync`).
    pub fn open_with(
        state_dir: &Path,
        policy: PortPolicy,
        max_slot: u32,
        sync: StoreSync,
    ) -> anyhow::Result<Arc<Registry>> {
        let max_slot = max_slot.clamp(1, MAX_SLOT);
        let store = Store::open_with(state_dir, sync)?;
        let mut snapshot = load(&store)?;
        snapshot.last_slot = snapshot.highest_slot();
        for port in snapshot.ports.values().filter(|p| p.slot > max_slot) {
            // Stored under a wider identity network than the configured one:
            // its guest cannot be served until the network is widened again
            // or the port deleted and added anew.
            tracing::error!(
                ifname = %port.spec.ifname,
                slot = port.slot,
                "port's slot lies beyond the identity network's {max_slot} addresses; it cannot be attached"
            );
        }
        Ok(Arc::new(Registry {
            policy,
            store: Mutex::new(store),
            last_slot: std::sync::atomic::AtomicU32::new(snapshot.highest_slot().min(max_slot)),
            snapshot: watch::Sender::new(Arc::new(snapshot)),
            secrets: Mutex::new(HashMap::new()),
            max_slot,
            manual_changes: watch::Sender::new(0),
            generation: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// Moves on every snapshot published, after it is published: a number
    /// read before a snapshot that is still the current one afterwards says
    /// that snapshot is still current (ingress's kept answers are checked
    /// this way; one atomic load, where `snapshot` takes a lock and counts
    /// a reference).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// For whoever reacts to changes (the datapath attaching new ports).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.subscribe()
    }

    /// Creates or replaces an instance from its JSON document.
    pub fn put_instance(&self, json: &[u8]) -> Result<Arc<InstanceDoc>, RegistryError> {
        let doc = Arc::new(InstanceDoc::from_json(json)?);
        let mut store = self.lock_store();
        let mut next = self.snapshot().next();
        refuse_discovered_instance(&next, &doc.uuid)?;
        store.put_instance(instance_row(&doc, &Source::Manual)?)?;
        next.insert_instance(Arc::clone(&doc), Source::Manual);
        self.publish(next);
        self.bump_manual_changes();
        Ok(doc)
    }

    /// Deletes an instance and its password. Its ports stay registered (the
    /// tap keeps its slot); their guests get 404 until the instance is back.
    pub fn delete_instance(&self, uuid: &str) -> Result<(), RegistryError> {
        let uuid = port::parse_uuid("uuid", uuid)?;
        let mut store = self.lock_store();
        let mut next = self.snapshot().next();
        refuse_discovered_instance(&next, &uuid)?;
        if !store.delete_instance(&uuid.to_string())? {
            return Err(RegistryError::NotFound(format!("no instance {uuid}")));
        }
        next.remove_instance(&uuid);
        self.publish(next);
        self.bump_manual_changes();
        Ok(())
    }

    /// Counts the operator's changes that may let discovery serve what it
    /// had to leave alone (a manual port or document removed, a document
    /// put for a domain that had none): discovery looks again on each.
    pub fn manual_changes(&self) -> watch::Receiver<u64> {
        self.manual_changes.subscribe()
    }

    fn bump_manual_changes(&self) {
        self.manual_changes.send_modify(|count| *count += 1);
    }

    /// Registers a port, or replaces the spec of the port with that ifname
    /// (which keeps its slot).
    pub fn add_port(&self, req: PortAddRequest) -> Result<Arc<Port>, RegistryError> {
        let spec: PortSpec = req.validate()?;
        let mut store = self.lock_store();
        let current = self.snapshot();
        let instance = current.instance(&spec.instance);
        match self.policy {
            PortPolicy::LocalInstance if instance.is_none() => {
                return Err(RegistryError::NotFound(format!(
                    "--instance: no instance {}",
                    spec.instance
                )));
            }
            PortPolicy::NovaProject => {
                port::project_for_port(
                    &spec.instance,
                    spec.project_id.as_deref(),
                    instance.and_then(|i| i.project_id.as_deref()),
                )?;
            }
            PortPolicy::LocalInstance => {}
        }
        let slot = match current.ports.get(&spec.ifname) {
            Some(existing) if !existing.source.is_manual() => {
                return Err(RegistryError::Conflict(format!(
                    "--ifname: {} is the tap of {}: its port follows the domain \
                     (serve --discover), not port add",
                    spec.ifname,
                    existing.source.owner()
                )));
            }
            Some(existing) => existing.slot,
            None => self.free_slot(&current)?,
        };
        let port = Arc::new(Port {
            spec,
            slot,
            source: Source::Manual,
        });
        store.put_port(port_row(&port)?)?;
        self.last_slot.store(slot, Ordering::Relaxed);
        let mut next = current.next();
        next.remove_port(&port.spec.ifname);
        next.insert_port(Arc::clone(&port));
        self.publish(next);
        Ok(port)
    }

    /// Unregisters a manual port; its slot becomes free for the next one.
    pub fn delete_port(&self, ifname: &str) -> Result<Arc<Port>, RegistryError> {
        port::check_ifname(ifname)?;
        let mut store = self.lock_store();
        let mut next = self.snapshot().next();
        if let Some(port) = next.ports.get(ifname)
            && !port.source.is_manual()
        {
            return Err(RegistryError::Conflict(format!(
                "--ifname: {ifname} is the tap of {}: its port goes when the domain \
                 stops or the NIC is unplugged",
                port.source.owner()
            )));
        }
        let port = next
            .remove_port(ifname)
            .ok_or_else(|| RegistryError::NotFound(format!("--ifname: no port {ifname}")))?;
        store.delete_port(ifname)?;
        self.publish(next);
        self.bump_manual_changes();
        Ok(port)
    }

    /// Makes what discovery serves for one domain exactly `sync`: its ports
    /// (added, changed in place keeping their slots, removed), and its
    /// instance document. Never touches what the operator made: a manual
    /// port on one of its taps, or a manual document for its UUID, stays
    /// and is reported. Writes nothing, and publishes nothing, when all is
    /// already so. `Ok` lists what is not served as asked.
    pub fn sync_domain(&self, sync: DomainSync) -> Result<Vec<SyncProblem>, RegistryError> {
        let uuid = sync.source.domain_uuid().ok_or_else(|| {
            RegistryError::Internal(anyhow::anyhow!("sync_domain needs a domain's source"))
        })?;
        let mut store = self.lock_store();
        let current = self.snapshot();
        let mut next = current.next();
        let mut writes = Vec::new();
        let mut problems = Vec::new();

        // The document first: the ports' project may come from it.
        let manual_document =
            current.instance(&uuid).is_some() && current.instance_source(&uuid).is_manual();
        let wanted_document = match sync.document.as_deref() {
            None => None,
            Some(_) if manual_document => {
                problems.push(SyncProblem::ManualInstance);
                None
            }
            Some(json) => match InstanceDoc::from_json(json) {
                Ok(doc) if doc.uuid == uuid => Some(doc),
                Ok(doc) => {
                    problems.push(SyncProblem::InvalidDocument(FieldError::new(
                        "uuid",
                        format!("{} is not the domain's ({uuid})", doc.uuid),
                    )));
                    None
                }
                Err(err) => {
                    problems.push(SyncProblem::InvalidDocument(err));
                    None
                }
            },
        };
        if !manual_document {
            match wanted_document {
                Some(doc) => {
                    let unchanged = current.instance(&uuid).is_some_and(|old| **old == doc)
                        && current.instance_source(&uuid) == &sync.source;
                    if !unchanged {
                        let doc = Arc::new(doc);
                        writes.push(Write::PutInstance(instance_row(&doc, &sync.source)?));
                        next.insert_instance(doc, sync.source.clone());
                    }
                }
                None if current.instance(&uuid).is_some() => {
                    writes.push(Write::DeleteInstance(uuid.to_string()));
                    next.remove_instance(&uuid);
                }
                None => {}
            }
        }
        let instance = next.instance(&uuid).cloned();

        // Then the ports.
        let mut wanted_taps = Vec::new();
        let mut no_project = false;
        for request in sync.ports {
            let ifname = request.ifname.clone();
            let spec = match request.validate() {
                Ok(spec) if spec.instance == uuid => spec,
                Ok(spec) => {
                    problems.push(SyncProblem::InvalidPort {
                        ifname,
                        error: FieldError::new(
                            "--instance",
                            format!("{} is not the domain's ({uuid})", spec.instance),
                        ),
                    });
                    continue;
                }
                Err(error) => {
                    problems.push(SyncProblem::InvalidPort { ifname, error });
                    continue;
                }
            };
            if self.policy == PortPolicy::NovaProject
                && port::project_for_port(
                    &uuid,
                    spec.project_id.as_deref(),
                    instance.as_ref().and_then(|i| i.project_id.as_deref()),
                )
                .is_err()
            {
                no_project = true;
            }
            wanted_taps.push(spec.ifname.clone());
            let slot = match next.ports.get(&spec.ifname) {
                Some(existing) if existing.source.is_manual() => {
                    problems.push(SyncProblem::ManualPort {
                        ifname: spec.ifname.clone(),
                        instance: existing.spec.instance,
                    });
                    continue;
                }
                Some(existing) if existing.source.domain_uuid() == Some(uuid) => {
                    if existing.spec == spec && existing.source == sync.source {
                        continue;
                    }
                    existing.slot
                }
                // Another domain's tap once (it stopped while nobody
                // watched): a new port, on a new slot.
                Some(_) => {
                    next.remove_port(&spec.ifname);
                    self.free_slot(&next)?
                }
                None => self.free_slot(&next)?,
            };
            let port = Arc::new(Port {
                spec,
                slot,
                source: sync.source.clone(),
            });
            writes.push(Write::PutPort(port_row(&port)?));
            self.last_slot.store(slot, Ordering::Relaxed);
            next.remove_port(&port.spec.ifname);
            next.insert_port(port);
        }
        let gone: Vec<String> = next
            .ports
            .values()
            .filter(|port| {
                port.source.domain_uuid() == Some(uuid) && !wanted_taps.contains(&port.spec.ifname)
            })
            .map(|port| port.spec.ifname.clone())
            .collect();
        for ifname in gone {
            next.remove_port(&ifname);
            writes.push(Write::DeletePort(ifname));
        }

        match self.policy {
            // An invalid document already says why there is none.
            PortPolicy::LocalInstance
                if instance.is_none()
                    && !problems
                        .iter()
                        .any(|p| matches!(p, SyncProblem::InvalidDocument(_))) =>
            {
                problems.push(SyncProblem::NoDocument);
            }
            PortPolicy::NovaProject if no_project => problems.push(SyncProblem::NoProject),
            _ => {}
        }
        if !writes.is_empty() {
            store.apply(writes)?;
            self.publish(next);
        }
        Ok(problems)
    }

    /// Removes every port and the document discovery holds for the domain
    /// `uuid` (it stopped, or went away); their slots become free. The
    /// password its guest posted stays (see `Write::DeleteDocument`). True
    /// if there was anything.
    pub fn remove_domain(&self, uuid: &uuid::Uuid) -> Result<bool, RegistryError> {
        let mut store = self.lock_store();
        let current = self.snapshot();
        let mut next = current.next();
        let mut writes = Vec::new();
        if current
            .instance_source(uuid)
            .domain_uuid()
            .is_some_and(|owner| owner == *uuid)
        {
            writes.push(Write::DeleteDocument(uuid.to_string()));
            next.remove_instance(uuid);
        }
        for port in current.ports.values() {
            if port.source.domain_uuid() == Some(*uuid) {
                writes.push(Write::DeletePort(port.spec.ifname.clone()));
                next.remove_port(&port.spec.ifname);
            }
        }
        if writes.is_empty() {
            return Ok(false);
        }
        store.apply(writes)?;
        self.publish(next);
        Ok(true)
    }

    /// The first free slot after the last one handed out.
    fn free_slot(&self, snapshot: &Snapshot) -> Result<u32, RegistryError> {
        snapshot
            .free_slot(self.last_slot.load(Ordering::Relaxed), self.max_slot)
            .ok_or_else(|| {
                RegistryError::Conflict(format!(
                    "--ifname: no free slot: the identity network has addresses for {} ports \
                     and all are taken (identity_net in the config file sets its size)",
                    self.max_slot
                ))
            })
    }

    /// The password the guest posted, if any.
    pub fn password(&self, uuid: &uuid::Uuid) -> Result<Option<String>, RegistryError> {
        Ok(self.lock_store().password(&uuid.to_string())?)
    }

    /// Stores the password a guest posts once (nova's semantics: the first
    /// one stays until the instance is deleted).
    pub fn set_password(&self, uuid: &uuid::Uuid, password: &str) -> Result<(), RegistryError> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(FieldError::new(
                "password",
                format!(
                    "longer than {MAX_PASSWORD_BYTES} bytes ({} bytes)",
                    password.len()
                ),
            )
            .into());
        }
        let mut store = self.lock_store();
        if self.snapshot().instance(uuid).is_none() {
            return Err(RegistryError::NotFound(format!("no instance {uuid}")));
        }
        if store.set_password_if_absent(&uuid.to_string(), password)? {
            Ok(())
        } else {
            Err(RegistryError::Conflict(format!(
                "instance {uuid} already has a password"
            )))
        }
    }

    /// A 32-byte secret, random on first use and the same ever after (across
    /// restarts): the IMDSv2 token keys.
    pub fn secret(&self, name: &str) -> anyhow::Result<[u8; 32]> {
        let mut cache = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(secret) = cache.get(name) {
            return Ok(*secret);
        }
        let mut fresh = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut urandom| urandom.read_exact(&mut fresh))
            .context("reading /dev/urandom")?;
        // The stored one wins if there is one: a restart keeps tokens valid.
        let stored = self.lock_store().secret_or_insert(name, &fresh)?;
        let secret: [u8; 32] = stored.try_into().map_err(|value: Vec<u8>| {
            anyhow::anyhow!(
                "state.db: secret {name:?} has {} bytes, not 32",
                value.len()
            )
        })?;
        cache.insert(name.to_owned(), secret);
        Ok(secret)
    }

    fn lock_store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave the database half
        // written (transactions roll back), so a poisoned lock is still usable.
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish(&self, mut next: Snapshot) {
        // Where the next slot is looked for, whichever path allocated last.
        next.last_slot = self.last_slot.load(Ordering::Relaxed);
        self.snapshot.send_replace(Arc::new(next));
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// Refuses an operator's change to an instance document that came from a
/// domain's metadata.
fn refuse_discovered_instance(snapshot: &Snapshot, uuid: &uuid::Uuid) -> Result<(), RegistryError> {
    let source = snapshot.instance_source(uuid);
    if source.is_manual() {
        return Ok(());
    }
    Err(RegistryError::Conflict(format!(
        "instance {uuid} is the document in the metadata of {}: change it there \
         (virsh metadata), not with the instance commands",
        source.owner()
    )))
}

fn source_columns(source: &Source) -> SourceColumns {
    let (kind, domain, domain_uuid) = source.to_columns();
    SourceColumns {
        kind: kind.into(),
        domain,
        domain_uuid,
    }
}

fn port_row(port: &Port) -> anyhow::Result<PortRow> {
    Ok(PortRow {
        ifname: port.spec.ifname.clone(),
        slot: port.slot,
        spec: serde_json::to_string(&port.spec).context("serializing the port")?,
        source: source_columns(&port.source),
    })
}

fn instance_row(doc: &InstanceDoc, source: &Source) -> anyhow::Result<InstanceRow> {
    Ok(InstanceRow {
        uuid: doc.uuid.to_string(),
        doc: serde_json::to_string(doc).context("serializing the instance")?,
        source: source_columns(source),
    })
}

fn load(store: &Store) -> anyhow::Result<Snapshot> {
    let mut snapshot = Snapshot::default();
    for row in store.instances()? {
        let doc: InstanceDoc = serde_json::from_str(&row.doc)
            .with_context(|| format!("state.db: instance {} does not parse", row.uuid))?;
        let source =
            Source::from_columns(&row.source.kind, row.source.domain, row.source.domain_uuid)
                .with_context(|| format!("state.db: instance {}", row.uuid))?;
        snapshot.insert_instance(Arc::new(doc), source);
    }
    for row in store.ports()? {
        let spec: PortSpec = serde_json::from_str(&row.spec)
            .with_context(|| format!("state.db: port {} does not parse", row.ifname))?;
        let source =
            Source::from_columns(&row.source.kind, row.source.domain, row.source.domain_uuid)
                .with_context(|| format!("state.db: port {}", row.ifname))?;
        snapshot.insert_port(Arc::new(Port {
            spec,
            slot: row.slot,
            source,
        }));
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const A: &str = "7c1b6e0e-3e4f-4e59-9d5e-0a5a8b0c1d2e";
    const B: &str = "0b5c53a2-4a8e-4b1f-8a37-2f1e5b9c7d10";

    fn uuid(text: &str) -> uuid::Uuid {
        text.parse().unwrap()
    }

    fn doc(uuid: &str, name: &str) -> Vec<u8> {
        json!({"uuid": uuid, "name": name, "project_id": "p"})
            .to_string()
            .into_bytes()
    }

    fn port(ifname: &str, instance: &str) -> PortAddRequest {
        PortAddRequest {
            ifname: ifname.into(),
            instance: instance.into(),
            ..Default::default()
        }
    }

    /// Everything in state.db, read behind the registry's back.
    fn dump(dir: &Path) -> Vec<String> {
        let conn = rusqlite::Connection::open(crate::state::store::db_path(dir)).unwrap();
        let mut rows = Vec::new();
        for query in [
            "SELECT 'instance', uuid, doc FROM instances",
            "SELECT 'port', ifname, slot || ' ' || spec FROM ports",
            "SELECT 'password', uuid, password FROM passwords",
            "SELECT 'secret', name, hex(value) FROM secrets",
        ] {
            let mut stmt = conn.prepare(query).unwrap();
            let found = stmt
                .query_map([], |r| {
                    Ok(format!(
                        "{} {} {}",
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?
                    ))
                })
                .unwrap();
            rows.extend(found.map(Result::unwrap));
        }
        rows.sort();
        rows
    }

    /// A registry with instance A and port tap0 on it.
    fn populated() -> (tempfile::TempDir, Arc<Registry>) {
        let tmp = tempfile::tempdir().unwrap();
        let registry = Registry::open(tmp.path()).unwrap();
        registry.put_instance(&doc(A, "a")).unwrap();
        registry.add_port(port("tap0", A)).unwrap();
        (tmp, registry)
    }

    #[track_caller]
    fn assert_refused_without_change<T: std::fmt::Debug>(
        dir: &Path,
        registry: &Registry,
        attempt: impl FnOnce() -> Result<T, RegistryError>,
        expected: fn(&RegistryError) -> bool,
        prefix: &str,
    ) {
        let before = dump(dir);
        let snapshot_before = registry.snapshot();
        let err = attempt().expect_err("should be refused");
        assert!(expected(&err), "wrong kind: {err:?}");
        let message = err.to_string();
        assert!(
            message.starts_with(prefix),
            "{message:?} should start with {prefix:?}"
        );
        assert!(!message.contains('\n'));
        assert_eq!(dump(dir), before, "the store changed");
        assert!(
            Arc::ptr_eq(&registry.snapshot(), &snapshot_before),
            "a snapshot was published"
        );
    }

    #[test]
    fn nova_mode_needs_a_project_not_a_document() {
        let tmp = tempfile::tempdir().unwrap();
        let registry =
            Registry::open_with_policy(tmp.path(), PortPolicy::NovaProject, MAX_SLOT).unwrap();
        assert_refused_without_change(
            tmp.path(),
            &registry,
            || registry.add_port(port("tap0", A)),
            |e| matches!(e, RegistryError::NoProject(_)),
            "--project-id is required in nova mode",
        );
        registry
            .add_port(PortAddRequest {
                project_id: Some("p1".into()),
                ..port("tap0", A)
            })
            .expect("--project-id is enough without a document");
        registry
            .put_instance(
                format!(r#"{{"uuid": "{B}", "name": "b", "project_id": "p2"}}"#).as_bytes(),
            )
            .unwrap();
        registry
            .add_port(port("tap1", B))
            .expect("the document's project_id is enough");
    }

    #[test]
    fn instances_and_ports_survive_reopen() {
        let (tmp, registry) = populated();
        registry.put_instance(&doc(B, "b")).unwrap();
        registry
            .add_port(PortAddRequest {
                mac: Some("FA:16:3E:00:00:01".into()),
                ..port("tap1", B)
            })
            .unwrap();
        let before = registry.snapshot();
        drop(registry);

        let registry = Registry::open(tmp.path()).unwrap();
        let after = registry.snapshot();
        assert_eq!(after.instances.len(), 2);
        assert_eq!(after.instance(&uuid(B)).unwrap().name, "b");
        assert_eq!(after.ports, before.ports);
        let tap1 = after.port_by_slot(2).unwrap();
        assert_eq!(tap1.spec.ifname, "tap1");
        assert_eq!(tap1.spec.mac.as_deref(), Some("fa:16:3e:00:00:01"));
        assert_eq!(after.port_by_slot(1).unwrap().spec.ifname, "tap0");
    }

    #[test]
    fn put_instance_replaces_and_stores_the_normalized_document() {
        let (tmp, registry) = populated();
        let upper = A.to_uppercase();
        let stored = registry
            .put_instance(
                json!({"uuid": upper, "name": "renamed", "imds": {}})
                    .to_string()
                    .as_bytes(),
            )
            .unwrap();
        assert_eq!(stored.uuid, uuid(A));
        assert_eq!(registry.snapshot().instances.len(), 1);
        assert_eq!(
            registry.snapshot().instance(&uuid(A)).unwrap().name,
            "renamed"
        );
        let rows = dump(tmp.path());
        let row = rows.iter().find(|r| r.starts_with("instance")).unwrap();
        assert!(row.contains(&format!(r#""uuid":"{A}""#)), "{row}");
        assert!(
            row.contains(r#""imds":{"tokens":"optional","hop_limit":1}"#),
            "{row}"
        );
    }

    #[test]
    fn bad_documents_change_nothing() {
        let (tmp, registry) = populated();
        let cases: &[(&[u8], &str)] = &[
            (b"{", "document: invalid JSON"),
            (br#"{"uuid": "nope", "name": "a"}"#, "uuid:"),
            (br#"{"name": "a"}"#, "uuid: required"),
            (br#"{"uuid": "7c1b6e0e-3e4f-4e59-9d5e-0a5a8b0c1d2e", "name": "a", "extra": 1}"#, "extra: unknown field"),
            (br#"{"uuid": "7c1b6e0e-3e4f-4e59-9d5e-0a5a8b0c1d2e", "name": "a", "user_data": "%%"}"#, "user_data:"),
            (br#"{"uuid": "7c1b6e0e-3e4f-4e59-9d5e-0a5a8b0c1d2e", "name": "a", "hostname": "a_b"}"#, "hostname:"),
            (br#"{"uuid": "7c1b6e0e-3e4f-4e59-9d5e-0a5a8b0c1d2e", "name": "a", "imds": {"hop_limit": 0}}"#, "imds.hop_limit:"),
        ];
        for (bytes, prefix) in cases {
            assert_refused_without_change(
                tmp.path(),
                &registry,
                || registry.put_instance(bytes),
                |e| matches!(e, RegistryError::Invalid(_)),
                prefix,
            );
        }
        // The instance that was there is untouched (the bad one had its UUID).
        assert_eq!(registry.snapshot().instance(&uuid(A)).unwrap().name, "a");
    }

    #[test]
    fn bad_port_requests_change_nothing() {
        let (tmp, registry) = populated();
        let invalid = |e: &RegistryError| matches!(e, RegistryError::Invalid(_));
        let cases = [
            (port("tap-name-too-long", A), "--ifname:"),
            (port("tap/1", A), "--ifname:"),
            (port("tap1", "not-a-uuid"), "--instance:"),
            (
                PortAddRequest {
                    mac: Some("ff:ff:ff:ff:ff:ff".into()),
                    ..port("tap1", A)
                },
                "--mac:",
            ),
            (
                PortAddRequest {
                    mac: Some("fa:16:3e".into()),
                    ..port("tap1", A)
                },
                "--mac:",
            ),
            (
                PortAddRequest {
                    ips: vec!["10.0.0.300".into()],
                    ..port("tap1", A)
                },
                "--ip:",
            ),
            (
                PortAddRequest {
                    port_id: Some("x".into()),
                    ..port("tap1", A)
                },
                "--port-id:",
            ),
            (
                PortAddRequest {
                    network_id: Some("x".into()),
                    ..port("tap1", A)
                },
                "--network-id:",
            ),
            // Re-adding an existing port with a bad field must not touch it either.
            (
                PortAddRequest {
                    mac: Some("01:00:00:00:00:01".into()),
                    ..port("tap0", A)
                },
                "--mac:",
            ),
        ];
        for (request, prefix) in cases {
            assert_refused_without_change(
                tmp.path(),
                &registry,
                || registry.add_port(request),
                invalid,
                prefix,
            );
        }
        assert_refused_without_change(
            tmp.path(),
            &registry,
            || registry.add_port(port("tap1", B)),
            |e| matches!(e, RegistryError::NotFound(_)),
            &format!("--instance: no instance {B}"),
        );
    }

    #[test]
    fn slots_are_the_smallest_free_and_stable() {
        let (_tmp, registry) = populated();
        registry.put_instance(&doc(B, "b")).unwrap();
        let slot = |ifname: &str| registry.snapshot().ports[ifname].slot;
        registry.add_port(port("tap1", A)).unwrap();
        registry.add_port(port("tap2", A)).unwrap();
        assert_eq!((slot("tap0"), slot("tap1"), slot("tap2")), (1, 2, 3));

        // Re-adding replaces the spec and keeps the slot.
        let readded = registry
            .add_port(PortAddRequest {
                ips: vec!["10.0.0.9".into()],
                ..port("tap1", B)
            })
            .unwrap();
        assert_eq!(readded.slot, 2);
        assert_eq!(
            registry.snapshot().port_by_slot(2).unwrap().spec.instance,
            uuid(B)
        );
        assert_eq!(registry.snapshot().ports.len(), 3);

        // A freed slot is not handed out again before the others: its
        // address may still have TIME_WAIT connections at the server.
        let deleted = registry.delete_port("tap1").unwrap();
        assert_eq!(deleted.slot, 2);
        assert!(registry.snapshot().port_by_slot(2).is_none());
        assert_eq!(registry.add_port(port("tap9", A)).unwrap().slot, 4);
        assert_eq!(registry.add_port(port("tap8", A)).unwrap().slot, 5);
    }

    #[test]
    fn the_datapath_sees_only_what_changed_and_the_slots_to_come() {
        let (_tmp, registry) = populated();
        registry.add_port(port("tap1", A)).unwrap();
        let before = registry.snapshot();
        // What the reconciler's next pass looks at: nothing yet.
        assert_eq!(before.changed_ports(&before).count(), 0);
        assert_eq!(before.upcoming_slots(3).collect::<Vec<_>>(), vec![3, 4, 5]);

        registry.add_port(port("tap2", A)).unwrap();
        registry.delete_port("tap0").unwrap();
        let after = registry.snapshot();
        let mut changed: Vec<&str> = after.changed_ports(&before).collect();
        changed.sort_unstable();
        assert_eq!(changed, vec!["tap0", "tap2"], "tap1 is the same port");
        // A replaced port is a change, even with the same slot.
        registry
            .add_port(PortAddRequest {
                ips: vec!["10.0.0.9".into()],
                ..port("tap1", A)
            })
            .unwrap();
        assert_eq!(
            registry
                .snapshot()
                .changed_ports(&after)
                .collect::<Vec<_>>(),
            vec!["tap1"]
        );
        // The spare tables go to the slots the next ports get: after the
        // last one handed out, skipping the freed slot 1 until they wrap.
        assert_eq!(
            registry.snapshot().upcoming_slots(2).collect::<Vec<_>>(),
            vec![4, 5]
        );
        assert_eq!(registry.add_port(port("tap3", A)).unwrap().slot, 4);
    }

    #[test]
    fn slots_wrap_round_to_the_free_ones() {
        let (_tmp, registry) = populated();
        // As if MAX_SLOT had just been handed out.
        registry.last_slot.store(MAX_SLOT, Ordering::Relaxed);
        assert_eq!(
            registry.add_port(port("tap1", A)).unwrap().slot,
            2,
            "slot 1 is taken"
        );
    }

    #[test]
    fn slots_run_out() {
        let (tmp, registry) = populated();
        // Fill every slot in memory (65535 fsynced inserts would take minutes).
        let mut full = registry.snapshot().next();
        let template = registry.snapshot().ports["tap0"].clone();
        for slot in 2..=MAX_SLOT {
            let mut spec = template.spec.clone();
            spec.ifname = format!("t{slot}");
            full.insert_port(Arc::new(Port {
                spec,
                slot,
                source: Source::Manual,
            }));
        }
        registry.publish(full);
        assert_refused_without_change(
            tmp.path(),
            &registry,
            || registry.add_port(port("tapx", A)),
            |e| matches!(e, RegistryError::Conflict(_)),
            "--ifname: no free slot",
        );
        // Replacing an existing port needs no new slot.
        assert_eq!(registry.add_port(port("t70", A)).unwrap().slot, 70);
    }

    /// With a /24 identity network (254 addresses), the 255th port is
    /// refused with a message that says why, and nothing is stored; before,
    /// it was stored with a slot the network has no address for and then
    /// failed to attach.
    #[test]
    fn slots_stop_where_the_identity_network_ends() {
        let tmp = tempfile::tempdir().unwrap();
        let registry =
            Registry::open_with_policy(tmp.path(), PortPolicy::LocalInstance, 254).unwrap();
        registry.put_instance(&doc(A, "a")).unwrap();
        // Filled in memory, as in `slots_run_out`; the last one for real.
        let mut full = registry.snapshot().next();
        for slot in 1..254 {
            let spec = port(&format!("t{slot}"), A).validate().unwrap();
            full.insert_port(Arc::new(Port {
                spec,
                slot,
                source: Source::Manual,
            }));
        }
        registry.publish(full);
        registry.last_slot.store(253, Ordering::Relaxed);
        assert_eq!(registry.add_port(port("t254", A)).unwrap().slot, 254);
        assert_refused_without_change(
            tmp.path(),
            &registry,
            || registry.add_port(port("t255", A)),
            |e| matches!(e, RegistryError::Conflict(_)),
            "--ifname: no free slot: the identity network has addresses for 254 ports",
        );
        // Freeing one makes room again, within the network.
        registry.delete_port("t7").unwrap();
        assert_eq!(registry.add_port(port("t255", A)).unwrap().slot, 7);
    }

    #[test]
    fn delete_port_unknown_or_invalid() {
        let (tmp, registry) = populated();
        assert_refused_without_change(
            tmp.path(),
            &registry,
            || registry.delete_port("tap7"),
            |e| matches!(e, RegistryError::NotFound(_)),
            "--ifname: no port tap7",
        );
        assert_refused_without_change(
            tmp.path(),
            &registry,
            || registry.delete_port("a/b"),
            |e| matches!(e, RegistryError::Invalid(_)),
            "--ifname:",
        );
    }

    #[test]
    fn deleting_an_instance_drops_its_password_and_keeps_its_ports() {
        let (tmp, registry) = populated();
        registry.set_password(&uuid(A), "secret-pw").unwrap();
        registry.delete_instance(A).unwrap();
        let snapshot = registry.snapshot();
        assert!(snapshot.instance(&uuid(A)).is_none());
        assert_eq!(snapshot.port_by_slot(1).unwrap().spec.instance, uuid(A));
        assert_eq!(registry.password(&uuid(A)).unwrap(), None);
        assert!(!dump(tmp.path()).iter().any(|row| row.contains("secret-pw")));

        // Back again: the port serves it again, and there is no old password.
        registry.put_instance(&doc(A, "a")).unwrap();
        assert_eq!(registry.password(&uuid(A)).unwrap(), None);
        registry.set_password(&uuid(A), "new").unwrap();
        assert_eq!(registry.password(&uuid(A)).unwrap().as_deref(), Some("new"));
    }

    #[test]
    fn delete_instance_unknown_or_invalid() {
        let (tmp, registry) = populated();
        assert_refused_without_change(
            tmp.path(),
            &registry,
            || registry.delete_instance(B),
            |e| matches!(e, RegistryError::NotFound(_)),
            &format!("no instance {B}"),
        );
        assert_refused_without_change(
            tmp.path(),
            &registry,
            || registry.delete_instance("web-1"),
            |e| matches!(e, RegistryError::Invalid(_)),
            "uuid:",
        );
    }

    #[test]
    fn a_password_is_set_once() {
        let (tmp, registry) = populated();
        assert_eq!(registry.password(&uuid(A)).unwrap(), None);
        registry.set_password(&uuid(A), "first").unwrap();
        assert_refused_without_change(
            tmp.path(),
            &registry,
            || registry.set_password(&uuid(A), "second"),
            |e| matches!(e, RegistryError::Conflict(_)),
            "instance",
        );
        assert_refused_without_change(
            tmp.path(),
            &registry,
            || registry.set_password(&uuid(B), "x"),
            |e| matches!(e, RegistryError::NotFound(_)),
            "no instance",
        );
        assert_refused_without_change(
            tmp.path(),
            &registry,
            || registry.set_password(&uuid(A), &"x".repeat(MAX_PASSWORD_BYTES + 1)),
            |e| matches!(e, RegistryError::Invalid(_)),
            "password: longer than 1020",
        );
        drop(registry);
        let registry = Registry::open(tmp.path()).unwrap();
        assert_eq!(
            registry.password(&uuid(A)).unwrap().as_deref(),
            Some("first")
        );
    }

    #[test]
    fn secrets_are_random_and_stable_across_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let registry = Registry::open(tmp.path()).unwrap();
        let token_key = registry.secret("imds-token").unwrap();
        let other = registry.secret("other").unwrap();
        assert_ne!(token_key, other);
        assert_ne!(token_key, [0; 32]);
        assert_eq!(registry.secret("imds-token").unwrap(), token_key);
        drop(registry);
        let registry = Registry::open(tmp.path()).unwrap();
        assert_eq!(registry.secret("imds-token").unwrap(), token_key);
        assert_eq!(registry.secret("other").unwrap(), other);
    }

    fn libvirt(uuid: &str, name: &str) -> Source {
        Source::Libvirt {
            domain: name.into(),
            domain_uuid: uuid.parse().unwrap(),
        }
    }

    fn sync(uuid: &str, document: Option<&str>, taps: &[&str]) -> DomainSync {
        DomainSync {
            source: libvirt(uuid, "dom"),
            document: document.map(|d| d.as_bytes().to_vec()),
            ports: taps
                .iter()
                .map(|tap| PortAddRequest {
                    mac: Some("fa:16:3e:00:00:01".into()),
                    ..port(tap, uuid)
                })
                .collect(),
        }
    }

    fn doc_text(uuid: &str, name: &str) -> String {
        json!({"uuid": uuid, "name": name, "project_id": "p"}).to_string()
    }

    #[test]
    fn a_domain_is_synced_in_place_and_removed_with_its_document() {
        let tmp = tempfile::tempdir().unwrap();
        let registry = Registry::open(tmp.path()).unwrap();
        let problems = registry
            .sync_domain(sync(A, Some(&doc_text(A, "a")), &["tap0", "tap1"]))
            .unwrap();
        assert_eq!(problems, []);
        let snapshot = registry.snapshot();
        assert_eq!(snapshot.ports["tap0"].source, libvirt(A, "dom"));
        assert_eq!(snapshot.instance(&uuid(A)).unwrap().name, "a");
        assert_eq!(snapshot.instance_source(&uuid(A)), &libvirt(A, "dom"));
        assert_eq!(snapshot.discovered()[&uuid(A)], ["tap0", "tap1"]);
        let slot0 = snapshot.ports["tap0"].slot;

        // The same again writes and publishes nothing.
        let before = dump(tmp.path());
        registry
            .sync_domain(sync(A, Some(&doc_text(A, "a")), &["tap0", "tap1"]))
            .unwrap();
        assert!(Arc::ptr_eq(&registry.snapshot(), &snapshot));
        assert_eq!(dump(tmp.path()), before);

        // A NIC unplugged, the document changed: tap0 keeps its slot.
        registry
            .sync_domain(sync(A, Some(&doc_text(A, "renamed")), &["tap0"]))
            .unwrap();
        let snapshot = registry.snapshot();
        assert_eq!(snapshot.ports.len(), 1);
        assert_eq!(snapshot.ports["tap0"].slot, slot0);
        assert_eq!(snapshot.instance(&uuid(A)).unwrap().name, "renamed");

        // It survives a restart as it was.
        drop(registry);
        let registry = Registry::open(tmp.path()).unwrap();
        let snapshot = registry.snapshot();
        assert_eq!(snapshot.ports["tap0"].source, libvirt(A, "dom"));
        assert_eq!(snapshot.instance_source(&uuid(A)), &libvirt(A, "dom"));

        registry
            .set_password(&uuid(A), "posted-by-the-guest")
            .unwrap();
        assert!(registry.remove_domain(&uuid(A)).unwrap());
        assert!(!registry.remove_domain(&uuid(A)).unwrap());
        let snapshot = registry.snapshot();
        assert!(snapshot.ports.is_empty());
        assert!(snapshot.instances.is_empty());
        assert!(snapshot.discovered().is_empty());

        // Started again (or migrated back): the password its guest posted
        // is still there, also across a restart of the daemon.
        drop(registry);
        let registry = Registry::open(tmp.path()).unwrap();
        registry
            .sync_domain(sync(A, Some(&doc_text(A, "dom")), &["tap0"]))
            .unwrap();
        assert_eq!(
            registry.password(&uuid(A)).unwrap().as_deref(),
            Some("posted-by-the-guest")
        );
    }

    #[test]
    fn discovery_leaves_manual_ports_and_documents_alone() {
        let (_tmp, registry) = populated();
        // tap0 is a manual port on A, and A's document is manual.
        let problems = registry
            .sync_domain(sync(
                A,
                Some(&doc_text(A, "from-domain")),
                &["tap0", "tap9"],
            ))
            .unwrap();
        assert_eq!(
            problems,
            [
                SyncProblem::ManualInstance,
                SyncProblem::ManualPort {
                    ifname: "tap0".into(),
                    instance: uuid(A)
                }
            ]
        );
        let snapshot = registry.snapshot();
        assert!(snapshot.ports["tap0"].source.is_manual());
        assert_eq!(snapshot.instance(&uuid(A)).unwrap().name, "a");
        assert!(snapshot.instance_source(&uuid(A)).is_manual());
        assert_eq!(snapshot.ports["tap9"].source, libvirt(A, "dom"));
        // Removing the domain takes only what discovery made.
        registry.remove_domain(&uuid(A)).unwrap();
        let snapshot = registry.snapshot();
        assert!(snapshot.ports.contains_key("tap0"));
        assert!(!snapshot.ports.contains_key("tap9"));
        assert!(snapshot.instance(&uuid(A)).is_some());
    }

    #[test]
    fn the_operator_cannot_change_what_discovery_owns() {
        let tmp = tempfile::tempdir().unwrap();
        let registry = Registry::open(tmp.path()).unwrap();
        registry
            .sync_domain(sync(B, Some(&doc_text(B, "b")), &["tapb"]))
            .unwrap();
        registry.put_instance(&doc(A, "a")).unwrap();
        let conflict = |e: &RegistryError| matches!(e, RegistryError::Conflict(_));
        let owner = format!("libvirt domain dom ({B})");
        assert_refused_without_change(
            tmp.path(),
            &registry,
            || registry.add_port(port("tapb", A)),
            conflict,
            &format!("--ifname: tapb is the tap of {owner}"),
        );
        assert_refused_without_change(
            tmp.path(),
            &registry,
            || registry.delete_port("tapb"),
            conflict,
            &format!("--ifname: tapb is the tap of {owner}"),
        );
        assert_refused_without_change(
            tmp.path(),
            &registry,
            || registry.put_instance(&doc(B, "b2")),
            conflict,
            &format!("instance {B} is the document in the metadata of {owner}"),
        );
        assert_refused_without_change(
            tmp.path(),
            &registry,
            || registry.delete_instance(B),
            conflict,
            &format!("instance {B} is the document in the metadata of {owner}"),
        );
    }

    #[test]
    fn what_is_missing_is_reported_and_the_taps_still_registered() {
        let tmp = tempfile::tempdir().unwrap();
        let registry = Registry::open(tmp.path()).unwrap();
        // Local backend: no document means 404 for its guests.
        assert_eq!(
            registry.sync_domain(sync(A, None, &["tap0"])).unwrap(),
            [SyncProblem::NoDocument]
        );
        assert!(registry.snapshot().ports.contains_key("tap0"));
        // A document that does not validate is not stored; its error is
        // the one reported.
        let problems = registry
            .sync_domain(sync(A, Some(r#"{"uuid": "x"}"#), &["tap0"]))
            .unwrap();
        assert!(
            matches!(&problems[..], [SyncProblem::InvalidDocument(err)] if err.field == "uuid"),
            "{problems:?}"
        );
        let problems = registry
            .sync_domain(sync(A, Some(&doc_text(B, "other")), &["tap0"]))
            .unwrap();
        assert!(
            matches!(&problems[..], [SyncProblem::InvalidDocument(err)] if err.reason.contains("not the domain's")),
            "{problems:?}"
        );
        assert!(registry.snapshot().instances.is_empty());
        // A document that was served and is then removed from the domain
        // goes from the store too.
        registry
            .sync_domain(sync(A, Some(&doc_text(A, "a")), &["tap0"]))
            .unwrap();
        assert!(registry.snapshot().instance(&uuid(A)).is_some());
        registry.sync_domain(sync(A, None, &["tap0"])).unwrap();
        assert!(registry.snapshot().instance(&uuid(A)).is_none());
        // A bad port is reported, the others are served.
        let mut bad = sync(A, Some(&doc_text(A, "a")), &["tap0", "tap1"]);
        bad.ports[1].mac = Some("01:00:00:00:00:01".into());
        let problems = registry.sync_domain(bad).unwrap();
        assert!(
            matches!(&problems[..], [SyncProblem::InvalidPort { ifname, .. }] if ifname == "tap1"),
            "{problems:?}"
        );
        assert_eq!(registry.snapshot().discovered()[&uuid(A)], ["tap0"]);

        // nova backend: the project is what matters, not a document.
        let tmp = tempfile::tempdir().unwrap();
        let registry =
            Registry::open_with_policy(tmp.path(), PortPolicy::NovaProject, MAX_SLOT).unwrap();
        assert_eq!(
            registry.sync_domain(sync(A, None, &["tap0"])).unwrap(),
            [SyncProblem::NoProject]
        );
        let mut with_project = sync(A, None, &["tap0"]);
        with_project.ports[0].project_id = Some("p1".into());
        assert_eq!(registry.sync_domain(with_project).unwrap(), []);
        assert_eq!(
            registry.snapshot().ports["tap0"].spec.project_id.as_deref(),
            Some("p1")
        );
    }

    #[test]
    fn a_tap_another_domain_left_behind_gets_a_new_slot() {
        let tmp = tempfile::tempdir().unwrap();
        let registry = Registry::open(tmp.path()).unwrap();
        registry.sync_domain(sync(A, None, &["tap0"])).unwrap();
        let old = registry.snapshot().ports["tap0"].slot;
        registry.sync_domain(sync(B, None, &["tap0"])).unwrap();
        let snapshot = registry.snapshot();
        let port = &snapshot.ports["tap0"];
        assert_eq!(port.spec.instance, uuid(B));
        assert_ne!(port.slot, old);
        assert!(!snapshot.discovered().contains_key(&uuid(A)));
    }

    #[tokio::test]
    async fn the_operators_changes_are_counted_for_discovery() {
        let (_tmp, registry) = populated();
        let mut changes = registry.manual_changes();
        changes.borrow_and_update();
        registry.delete_port("tap0").unwrap();
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();
        registry.sync_domain(sync(B, None, &["tapb"])).unwrap();
        assert!(
            !changes.has_changed().unwrap(),
            "discovery's own writes do not count"
        );
    }

    #[tokio::test]
    async fn subscribers_see_each_write() {
        let tmp = tempfile::tempdir().unwrap();
        let registry = Registry::open(tmp.path()).unwrap();
        let mut changes = registry.subscribe();
        assert!(changes.borrow_and_update().instances.is_empty());
        registry.put_instance(&doc(A, "a")).unwrap();
        changes.changed().await.unwrap();
        assert_eq!(changes.borrow_and_update().instances.len(), 1);
        registry.add_port(port("tap0", A)).unwrap();
        changes.changed().await.unwrap();
        assert!(changes.borrow_and_update().port_by_slot(1).is_some());
    }
}
