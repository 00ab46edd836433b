//! Keeps the datapath attached to exactly the registered taps that exist.
//!
//! Two inputs change what should be attached: the registry (ports added or
//! removed) and the kernel (taps created, deleted, re-created with a new
//! ifindex). Instead of handling each transition, every change triggers the
//! same idempotent pass that compares "registered and present" with
//! "attached", which also makes a restart just another pass.
//!
//! Two things make a pass need repeating without a new input: the kernel
//! may drop link events (its socket buffer overflows when hundreds of taps
//! appear at once), after which the links are listed again; and attaching
//! may fail, after which the pass is retried with a growing delay rather
//! than left until some unrelated link event comes. Events read after a new
//! listing may be older than it; a failed attach therefore checks the tap's
//! index with the kernel, so a tap that is gone, or was re-created, is not
//! tried again under its old index.
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use futures::{Stream, StreamExt as _};
use rtnetlink::Handle;
use tokio::{sync::watch, time::Instant};
use tracing::{debug, info, warn};

use super::{
    AttachedTap, Datapath,
    netdev::{self, LinkEvent},
};
use crate::{metrics::Metrics, state::Snapshot};

pub struct Reconciler {
    datapath: Datapath,
    /// Interfaces that exist now, by name.
    links: HashMap<String, u32>,
    /// What is attached, for status output.
    attached_tx: watch::Sender<BTreeMap<String, AttachedTap>>,
    /// Where the time each new attachment took is recorded.
    metrics: Arc<Metrics>,
}

impl Reconciler {
    /// `existing` is the kernel's current list of links (as `Present` events).
    pub fn new(datapath: Datapath, existing: Vec<LinkEvent>, metrics: Arc<Metrics>) -> Self {
        let (attached_tx, _) = watch::channel(BTreeMap::new());
        let mut reconciler = Self {
            datapath,
            links: HashMap::new(),
            attached_tx,
            metrics,
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

    /// Runs until both inputs end. `netlink` lists the links again when
    /// link events were lost.
    pub async fn run(
        mut self,
        mut registry: watch::Receiver<Arc<Snapshot>>,
        links: impl Stream<Item = LinkEvent>,
        netlink: Handle,
    ) {
        let mut links = std::pin::pin!(links);
        let mut retry = Retry::default();
        loop {
            tokio::select! {
                changed = registry.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                event = links.next() => {
                    match event {
                        Some(LinkEvent::Lost) => {
                            warn!("link events were lost (netlink socket buffer full); listing interfaces again");
                            if !self.relist(&netlink).await {
                                retry.relist = true;
                            }
                        }
                        Some(event) => self.note(event),
                        None => {
                            warn!("link event stream ended; taps created from now on are not noticed");
                            return;
                        }
                    }
                }
                () = retry.wait() => {
                    if retry.relist {
                        retry.relist = !self.relist(&netlink).await;
                    }
                    info!("retrying what failed to attach");
                }
            }
            let snapshot = registry.borrow_and_update().clone();
            let attached_all = self.reconcile(&snapshot);
            retry.after_pass(attached_all, Instant::now());
        }
    }

    /// Replaces what is known about the links with the kernel's list; false
    /// when listing failed (the old knowledge stays).
    async fn relist(&mut self, netlink: &Handle) -> bool {
        match netdev::current_links(netlink).await {
            Ok(current) => {
                self.links.clear();
                for event in current {
                    self.note(event);
                }
                true
            }
            Err(err) => {
                warn!("listing interfaces: {err:#}");
                false
            }
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
            LinkEvent::Lost => {}
        }
    }

    /// One pass; false when some registered, present tap could not be
    /// attached (or a stale one detached).
    fn reconcile(&mut self, snapshot: &Snapshot) -> bool {
        let mut all_done = true;
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
                all_done = false;
            }
        }
        for (ifname, port) in &snapshot.ports {
            let Some(&ifindex) = self.links.get(ifname) else {
                continue; // registered before its tap exists: attached when it appears
            };
            // Only a new attachment is timed: a pass over what is already
            // attached costs nothing and would flood the histogram.
            let is_new = self
                .datapath
                .attached()
                .get(ifname)
                .is_none_or(|tap| tap.ifindex != ifindex);
            let started = std::time::Instant::now();
            let Err(err) = self.datapath.attach_tap(ifname, ifindex, port.slot) else {
                if is_new {
                    self.metrics.record_attach(started.elapsed());
                }
                continue;
            };
            // After lost events, what we know may be stale: ask the kernel.
            match netdev::ifindex_of(ifname) {
                Some(current) if current == ifindex => {
                    warn!(ifname, ifindex, "attaching: {err:#}");
                    all_done = false;
                }
                Some(current) => {
                    debug!(
                        ifname,
                        ifindex, current, "the tap was re-created; attaching to it"
                    );
                    self.links.insert(ifname.clone(), current);
                    all_done = false;
                }
                None => {
                    debug!(ifname, ifindex, "the tap is gone");
                    self.links.remove(ifname);
                }
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
        all_done
    }
}

/// When to run a pass again although nothing new came in.
#[derive(Default)]
struct Retry {
    /// Set while a pass left something undone; `None` when all is well.
    at: Option<Instant>,
    delay: Duration,
    /// Listing the links failed after events were lost: list again first.
    relist: bool,
}

impl Retry {
    const FIRST_DELAY: Duration = Duration::from_millis(100);
    const MAX_DELAY: Duration = Duration::from_secs(30);

    /// Waits until the retry is due; forever when none is.
    async fn wait(&self) {
        match self.at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// After a pass: all done resets; otherwise the next retry comes later
    /// than the last one (up to `MAX_DELAY`).
    fn after_pass(&mut self, all_done: bool, now: Instant) {
        if all_done && !self.relist {
            self.at = None;
            self.delay = Duration::ZERO;
            return;
        }
        if self.at.is_some_and(|at| at > now) {
            return; // a retry is already due later; new inputs do not postpone it
        }
        self.delay = (self.delay * 2).clamp(Self::FIRST_DELAY, Self::MAX_DELAY);
        self.at = Some(now + self.delay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_and_reset_once_all_is_done() {
        let mut now = Instant::now();
        let mut retry = Retry::default();
        retry.after_pass(true, now);
        assert_eq!(retry.at, None);

        retry.after_pass(false, now);
        assert_eq!(retry.at, Some(now + Duration::from_millis(100)));
        // Another failing pass before it is due keeps the due time.
        retry.after_pass(false, now + Duration::from_millis(50));
        assert_eq!(retry.at, Some(now + Duration::from_millis(100)));

        now += Duration::from_millis(100);
        retry.after_pass(false, now);
        assert_eq!(retry.at, Some(now + Duration::from_millis(200)));
        for _ in 0..20 {
            now = retry.at.unwrap();
            retry.after_pass(false, now);
        }
        assert_eq!(retry.delay, Retry::MAX_DELAY);

        retry.after_pass(true, now);
        assert_eq!((retry.at, retry.delay), (None, Duration::ZERO));
        // A failed relisting keeps a retry going even if the pass went well.
        retry.relist = true;
        retry.after_pass(true, now);
        assert_eq!(retry.at, Some(now + Retry::FIRST_DELAY));
    }
}
