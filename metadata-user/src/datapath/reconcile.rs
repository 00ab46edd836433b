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
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use futures::{Stream, StreamExt as _};
use rtnetlink::Handle;
use tokio::{sync::watch, time::Instant};
use tracing::{debug, info, warn};

use super::{
    AttachedTap, Datapath, TableFate,
    netdev::{self, LinkEvent},
};
use crate::{metrics::Metrics, state::Snapshot};

/// How many of the slots the registry hands out next get a flow table
/// ahead of time (see `table_writer`): enough for a burst of adds while the
/// writer makes the next ones (a batch takes one grace period, ~20 ms).
const SPARE_TABLES: usize = 64;

/// What the datapath has done with each registered tap, published after
/// every pass. Persistent maps: a copy per pass costs nothing, however
/// many taps there are.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TapStates {
    pub attached: imbl::OrdMap<String, AttachedTap>,
    /// Registered taps that exist but could not be attached: the error.
    pub failing: imbl::OrdMap<String, String>,
}

pub struct Reconciler {
    datapath: Datapath,
    /// Interfaces that exist now, by name.
    links: HashMap<String, u32>,
    /// The registry as the last pass saw it.
    seen: Arc<Snapshot>,
    /// Taps the next pass looks at: changed in the registry or the kernel
    /// since the last pass, or not done by it. A pass costs what changed,
    /// not what is registered.
    dirty: BTreeSet<String>,
    /// Slots whose spare flow table was asked for.
    spares: BTreeSet<u32>,
    states: TapStates,
    states_tx: watch::Sender<TapStates>,
    /// Where the time each new attachment took is recorded.
    metrics: Arc<Metrics>,
}

impl Reconciler {
    /// `existing` is the kernel's current list of links (as `Present` events).
    pub fn new(datapath: Datapath, existing: Vec<LinkEvent>, metrics: Arc<Metrics>) -> Self {
        let (states_tx, _) = watch::channel(TapStates::default());
        let mut reconciler = Self {
            datapath,
            links: HashMap::new(),
            seen: Arc::new(Snapshot::default()),
            dirty: BTreeSet::new(),
            spares: BTreeSet::new(),
            states: TapStates::default(),
            states_tx,
            metrics,
        };
        for event in existing {
            reconciler.note(event);
        }
        reconciler
    }

    pub fn states(&self) -> watch::Receiver<TapStates> {
        self.states_tx.subscribe()
    }

    /// The first pass after start: attach everything registered, then drop
    /// what a previous daemon left behind for ports that no longer exist.
    pub fn start(&mut self, snapshot: &Arc<Snapshot>) -> anyhow::Result<()> {
        self.follow(snapshot);
        self.look_at_everything();
        self.reconcile();
        let spares: Vec<u32> = self.spares.iter().copied().collect();
        self.datapath
            .prune(snapshot.ports.values().map(|port| port.slot), spares)
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
                    let snapshot = registry.borrow_and_update().clone();
                    self.follow(&snapshot);
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
            if self.dirty.is_empty() && !retry.relist {
                continue;
            }
            let attached_all = self.reconcile();
            retry.after_pass(attached_all, Instant::now());
        }
    }

    /// Takes the registry's new snapshot: the taps whose ports were added,
    /// removed or changed since the last one become dirty.
    fn follow(&mut self, snapshot: &Arc<Snapshot>) {
        self.dirty
            .extend(snapshot.changed_ports(&self.seen).map(str::to_owned));
        self.seen = Arc::clone(snapshot);
    }

    /// Every registered or attached tap is looked at in the next pass.
    fn look_at_everything(&mut self) {
        self.dirty.extend(self.seen.ports.keys().cloned());
        self.dirty.extend(self.datapath.attached().keys().cloned());
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
                self.look_at_everything();
                true
            }
            Err(err) => {
                warn!("listing interfaces: {err:#}");
                false
            }
        }
    }

    fn note(&mut self, event: LinkEvent) {
        let ifname = match event {
            LinkEvent::Present { ifname, ifindex } => {
                if self.links.insert(ifname.clone(), ifindex) == Some(ifindex) {
                    return; // nothing new about it
                }
                ifname
            }
            LinkEvent::Gone { ifname, ifindex } => {
                if self.links.get(&ifname) != Some(&ifindex) {
                    return;
                }
                self.links.remove(&ifname);
                ifname
            }
            LinkEvent::Lost => return,
        };
        // Only our taps matter; the host's other interfaces come and go.
        if self.seen.ports.contains_key(&ifname) || self.datapath.attached().contains_key(&ifname) {
            self.dirty.insert(ifname);
        }
    }

    /// One pass over the dirty taps; false when some registered, present
    /// tap could not be attached (or a stale one detached): those stay dirty.
    fn reconcile(&mut self) -> bool {
        let snapshot = Arc::clone(&self.seen);
        let dirty = std::mem::take(&mut self.dirty);
        // The flow tables this pass needs, asked for at once: the writer
        // adds them in one batch (one grace period) rather than one each.
        self.datapath
            .prepare_tables(dirty.iter().filter_map(|ifname| {
                let port = snapshot.ports.get(ifname)?;
                self.links.contains_key(ifname).then_some(port.slot)
            }));
        for ifname in dirty {
            let port = snapshot.ports.get(&ifname);
            let present = self.links.get(&ifname).copied();
            if let Some(tap) = self.datapath.attached().get(&ifname).copied() {
                // Unregistered, or its tap is gone or was re-created. A new
                // slot alone is handled by attach_tap without a detach.
                let fate = if port.is_none() {
                    Some(TableFate::Remove)
                } else if present != Some(tap.ifindex) {
                    Some(TableFate::Keep)
                } else {
                    None
                };
                if let Some(fate) = fate
                    && let Err(err) = self.datapath.detach_tap(&ifname, fate)
                {
                    warn!(ifname, "detaching: {err:#}");
                    self.fail(ifname, err);
                    continue;
                }
            }
            self.states.failing.remove(&ifname);
            let (Some(port), Some(ifindex)) = (port, present) else {
                continue; // registered before its tap exists: attached when it appears
            };
            // Only a new attachment is timed: a pass over what is already
            // attached costs nothing and would flood the histogram.
            let is_new = self
                .datapath
                .attached()
                .get(&ifname)
                .is_none_or(|tap| tap.ifindex != ifindex);
            let started = std::time::Instant::now();
            let Err(err) = self.datapath.attach_tap(&ifname, ifindex, port.slot) else {
                if is_new {
                    self.metrics.record_attach(started.elapsed());
                }
                continue;
            };
            // After lost events, what we know may be stale: ask the kernel.
            match netdev::ifindex_of(&ifname) {
                Some(current) if current == ifindex => {
                    warn!(ifname, ifindex, "attaching: {err:#}");
                    self.fail(ifname, err);
                }
                Some(current) => {
                    debug!(
                        ifname,
                        ifindex, current, "the tap was re-created; attaching to it"
                    );
                    self.links.insert(ifname.clone(), current);
                    self.dirty.insert(ifname);
                }
                None => {
                    debug!(ifname, ifindex, "the tap is gone");
                    self.links.remove(&ifname);
                }
            }
        }
        self.prepare_spares(&snapshot);
        self.states.attached = self.datapath.attached().clone();
        self.states_tx.send_if_modified(|published| {
            if *published != self.states {
                *published = self.states.clone();
                true
            } else {
                false
            }
        });
        self.dirty.is_empty()
    }

    fn fail(&mut self, ifname: String, err: anyhow::Error) {
        self.states
            .failing
            .insert(ifname.clone(), format!("{err:#}"));
        self.dirty.insert(ifname);
    }

    /// Flow tables for the slots the registry hands out next, made ahead.
    fn prepare_spares(&mut self, snapshot: &Snapshot) {
        let upcoming: BTreeSet<u32> = snapshot.upcoming_slots(SPARE_TABLES).collect();
        let new: Vec<u32> = upcoming.difference(&self.spares).copied().collect();
        self.spares = upcoming;
        if !new.is_empty() {
            self.datapath.prepare_tables(new);
        }
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
