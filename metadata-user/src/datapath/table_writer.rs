//! Adding and removing ports' flow tables in FLOWS, off the attach path.
//!
//! Every insert into or delete from a map of maps waits, inside the
//! syscall, for an RCU grace period (the kernel's `maybe_wait_bpf_programs`)
//! although the change is visible to the programs at once: 16-20 ms each
//! on the machines we measured, which was most of a port's attach time.
//! Concurrent calls share grace periods and a batch call waits once, so one
//! thread of its own makes these changes, in batches:
//!
//! - spare tables for the slots the registry hands out next, so that
//!   attaching a new port finds its table already there (one lookup);
//! - the tables a pass needs and does not find (after a restart, say): the
//!   attach path then waits only until the insert is visible, not for the
//!   grace period after it;
//! - removals of the tables of ports that are gone.
//!
//! Changes for one key happen in the order they were asked for: a removal
//! and an insert of the same key are never in the same batch. A port has
//! one table under each of its lanes' identity addresses (IPv4, then each
//! IPv6 metadata address): an insert is keyed by lane 0 and puts the same
//! table under every lane in the same call.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::MapData;
use metadata_ebpf::{FlowEntry, FlowKey, IDENTITY_LANES};
use tracing::warn;

use super::sys;

/// What waits to be done, and what is being done now.
#[derive(Default)]
struct Queue {
    /// Tables to create and put in FLOWS (replacing any there), by lane 0's
    /// key: the slot, and every lane's key.
    inserts: BTreeMap<[u8; 4], (u32, [[u8; 4]; IDENTITY_LANES])>,
    removals: BTreeSet<[u8; 4]>,
    /// Keys of the batch the writer is working on now: removals, and
    /// inserts with the id of the table that goes in.
    removing: BTreeSet<[u8; 4]>,
    inserting: BTreeMap<[u8; 4], u32>,
    /// Set when the writer should end (the datapath is dropped).
    stop: bool,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.inserts.is_empty() && self.removals.is_empty()
    }

    /// Whether a change of `key` is asked for or under way.
    fn touches(&self, key: &[u8; 4]) -> bool {
        self.inserts.contains_key(key)
            || self.removals.contains(key)
            || self.removing.contains(key)
            || self.inserting.contains_key(key)
    }
}

struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when work is queued and when a batch is done.
    changed: Condvar,
}

/// The handle the datapath keeps; the thread ends when it is dropped.
pub struct TableWriter {
    shared: Arc<Shared>,
    thread: Option<thread::JoinHandle<()>>,
}

impl TableWriter {
    /// Starts the writer of the map of maps `flows` (FLOWS, opened again).
    /// New tables are named with `layout_stamp` (see [`table_name`]).
    pub fn start(flows: MapData, layout_stamp: u32) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            changed: Condvar::new(),
        });
        let thread = thread::Builder::new()
            .name("flow-tables".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || run(&shared, &flows, layout_stamp)
            })
            .context("starting the flow table writer")?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks for a fresh table for each of `tables` (every lane's identity,
    /// slot), under every lane, replacing whatever is there. Returns at once.
    pub fn insert(&self, tables: impl IntoIterator<Item = ([Ipv4Addr; IDENTITY_LANES], u32)>) {
        let mut queue = self.queue();
        for (identities, slot) in tables {
            let keys = identities.map(|identity| identity.octets());
            for key in &keys {
                queue.removals.remove(key);
            }
            queue.inserts.insert(keys[0], (slot, keys));
        }
        self.shared.changed.notify_all();
    }

    /// Asks for the removal of the table keys `identities` (any lane's).
    /// Returns at once.
    pub fn remove(&self, identities: impl IntoIterator<Item = Ipv4Addr>) {
        let mut queue = self.queue();
        for identity in identities {
            let key = identity.octets();
            queue.inserts.remove(&key);
            queue.removals.insert(key);
        }
        self.shared.changed.notify_all();
    }

    /// Whether an insert of the table whose lane 0 key is `identity` is
    /// queued or under way.
    pub fn is_queued(&self, identity: Ipv4Addr) -> bool {
        let queue = self.queue();
        let key = identity.octets();
        queue.inserts.contains_key(&key) || queue.inserting.contains_key(&key)
    }

    /// Waits until what is asked for `identity`'s table is done, or, for an
    /// insert, until the new table is in FLOWS (its id is what `current`
    /// finds), which is long before the writer's call returns.
    pub fn settle(&self, identity: Ipv4Addr, current: impl Fn() -> Option<u32>) {
        let key = identity.octets();
        let mut queue = self.queue();
        loop {
            if queue.stop || !queue.touches(&key) {
                return;
            }
            if let Some(&id) = queue.inserting.get(&key) {
                drop(queue);
                // The writer's call is under way: the table shows up within
                // microseconds, the call returns a grace period later.
                let deadline = Instant::now() + VISIBLE_WITHIN;
                while Instant::now() < deadline {
                    if current() == Some(id) {
                        return;
                    }
                    thread::sleep(Duration::from_micros(20));
                }
                queue = self.queue();
                continue;
            }
            queue = self
                .shared
                .changed
                .wait(queue)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

impl Drop for TableWriter {
    fn drop(&mut self) {
        self.queue().stop = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread: takes everything queued, does it in at most two
/// calls (removals, then inserts of other keys), and starts over.
fn run(shared: &Shared, flows: &MapData, layout_stamp: u32) {
    loop {
        let (inserts, removals) = {
            let mut queue = shared
                .queue
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            while queue.is_empty() && !queue.stop {
                queue = shared
                    .changed
                    .wait(queue)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if queue.stop {
                return;
            }
            // The tables are made here, under the lock, so that whoever
            // waits for one knows its id before it goes in.
            let mut fresh = Vec::with_capacity(queue.inserts.len());
            for (key, (slot, keys)) in std::mem::take(&mut queue.inserts) {
                match create_table(slot, layout_stamp)
                    .and_then(|table| Ok((sys::map_id(table.as_fd())?, table)))
                {
                    Ok((id, table)) => {
                        queue.inserting.insert(key, id);
                        fresh.push((keys, table));
                    }
                    Err(err) => warn!(identity = %Ipv4Addr::from(key), "{err:#}"),
                }
            }
            queue.removing = std::mem::take(&mut queue.removals);
            shared.changed.notify_all();
            (fresh, queue.removing.iter().copied().collect::<Vec<_>>())
        };
        if let Err(err) = sys::delete_inner_maps(flows.fd().as_fd(), &removals) {
            warn!(%err, count = removals.len(), "removing flow tables");
        }
        // Each table under every lane's key, in one call.
        let keys: Vec<[u8; 4]> = inserts.iter().flat_map(|(keys, _)| *keys).collect();
        let fds: Vec<BorrowedFd<'_>> = inserts
            .iter()
            .flat_map(|(_, table)| std::iter::repeat_n(table.as_fd(), IDENTITY_LANES))
            .collect();
        if let Err(err) = sys::put_inner_maps(flows.fd().as_fd(), &keys, &fds) {
            warn!(%err, count = keys.len(), "adding flow tables");
        }
        drop(inserts);
        let mut queue = shared
            .queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        queue.removing.clear();
        queue.inserting.clear();
        shared.changed.notify_all();
    }
}

/// How long a table being inserted may take to show up before the waiter
/// goes back to waiting for the writer's call to return.
const VISIBLE_WITHIN: Duration = Duration::from_secs(1);

/// A flow table's name: `f`, the layout stamp, `_`, the slot (hex); 14
/// characters at most, within the kernel's 15 for a map name. The stamp
/// is how a later daemon tells a table of another FlowKey/FlowEntry layout
/// (the kernel keeps no BTF for these maps).
pub fn table_name(layout_stamp: u32, slot: u32) -> String {
    format!("f{layout_stamp:08x}_{slot:x}")
}

/// A port's flow table: an LRU hash of `MAX_FLOWS_PER_PORT` flows, named
/// with this build's layout stamp.
pub fn create_table(slot: u32, layout_stamp: u32) -> anyhow::Result<OwnedFd> {
    sys::create_lru_hash(
        &table_name(layout_stamp, slot),
        std::mem::size_of::<FlowKey>() as u32,
        std::mem::size_of::<FlowEntry>() as u32,
        metadata_ebpf::MAX_FLOWS_PER_PORT,
    )
    .with_context(|| format!("creating the flow table of slot {slot}"))
}
