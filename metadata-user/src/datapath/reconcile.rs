//! Keeps the datapath attached to exactly the registered taps that exist.
//!
//! Two inputs change what should be attached: the registry (ports added or
//! removed) and the kernel (taps created, deleted, re-created with a new
//! ifindex). Instead of handling each transition, every change triggers the
//! same idempotent pass that compares "registered and present" with
//! "attached", which also makes a restart just another pass.
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use futures::{Stream, StreamExt as _};
use tokio::sync::watch;
use tracing::warn;

use super::{AttachedTap, Datapath, netdev::LinkEvent};
use crate::registry::Snapshot;

pub struct Reconciler {
    datapath: Datapath,
    /// Interfaces that exist now, by name.
    links: HashMap<String, u32>,
    /// What is attached, for status output.
    attached_tx: watch::Sender<BTreeMap<String, AttachedTap>>,
}

impl Reconciler {
    /// `existing` is the kernel's current list of links (as `Present` events).
    pub fn new(datapath: Datapath, existing: Vec<LinkEvent>) -> Self {
        let (attached_tx, _) = watch::channel(BTreeMap::new());
        let mut reconciler = Self {
            datapath,
            links: HashMap::new(),
            attached_tx,
        };
        for event in existing {
            reconciler.note(event);
        }
        reconciler
    }

    pub fn attached(&self) -> watch::Receiver<BTreeMap<String, AttachedTap>> {
        self.attached_tx.subscribe()
    }

    /// The first pass after start: attach everything registered, then drop
    /// what a previous daemon left behind for ports that no longer exist.
    pub fn start(&mut self, snapshot: &Snapshot) -> anyhow::Result<()> {
        self.reconcile(snapshot);
        self.datapath.prune()
    }

    /// Runs until both inputs end.
    pub async fn run(
        mut self,
        mut registry: watch::Receiver<Arc<Snapshot>>,
        links: impl Stream<Item = LinkEvent>,
    ) {
        let mut links = std::pin::pin!(links);
        loop {
            tokio::select! {
                changed = registry.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                event = links.next() => {
                    match event {
                        Some(event) => self.note(event),
                        None => {
                            warn!("link event stream ended; taps created from now on are not noticed");
                            return;
                        }
                    }
                }
            }
            let snapshot = registry.borrow_and_update().clone();
            self.reconcile(&snapshot);
        }
    }

    fn note(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Present { ifname, ifindex } => {
                self.links.insert(ifname, ifindex);
            }
            LinkEvent::Gone { ifname, ifindex } => {
                if self.links.get(&ifname) == Some(&ifindex) {
                    self.links.remove(&ifname);
                }
            }
        }
    }

    fn reconcile(&mut self, snapshot: &Snapshot) {
        let stale: Vec<String> = self
            .datapath
            .attached()
            .iter()
            .filter(|(ifname, tap)| {
                // Unregistered, or its tap is gone or was re-created. A new
                // slot alone is handled by attach_tap without a detach.
                !snapshot.ports.contains_key(*ifname)
                    || self.links.get(*ifname) != Some(&tap.ifindex)
            })
            .map(|(ifname, _)| ifname.clone())
            .collect();
        for ifname in stale {
            if let Err(err) = self.datapath.detach_tap(&ifname) {
                warn!(ifname, "detaching: {err:#}");
            }
        }
        for (ifname, port) in &snapshot.ports {
            let Some(&ifindex) = self.links.get(ifname) else {
                continue; // registered before its tap exists: attached when it appears
            };
            if let Err(err) = self.datapath.attach_tap(ifname, ifindex, port.slot) {
                warn!(ifname, ifindex, "attaching: {err:#}");
            }
        }
        self.attached_tx.send_if_modified(|attached| {
            if attached != self.datapath.attached() {
                *attached = self.datapath.attached().clone();
                true
            } else {
                false
            }
        });
    }
}
