//! Answers rendered once per (port, instance document, version, file) and
//! kept until the document or the port changes: a guest polling its
//! meta_data.json, or a boot storm crawling the same files, costs a lookup
//! instead of a render. What differs per request (the random seed) is
//! filled in per answer ([`Rendered::document`]).
//!
//! An entry is the port's current document and port, compared by pointer
//! with what the registry's snapshot holds now (`instance put` and `port
//! add` make new ones, so a change takes effect on the next request, as
//! without the cache). What an entry can hold is fixed by the trees, not by
//! what guests ask: every OpenStack file of every version, every version's
//! EC2 meta-data tree, the decoded user data. Entries of ports the registry
//! no longer has are dropped when a shard takes a new entry.
use std::{
    net::IpAddr,
    sync::{Arc, Mutex, OnceLock},
};

use bytes::Bytes;

use super::{
    ec2::Node,
    openstack::File,
    paths::{EC2_VERSIONS, Ec2Version, OPENSTACK_VERSIONS, OpenStackVersion},
    rendered::Rendered,
    response::ApiError,
};
use crate::{
    backend::guest::Guest,
    state::{Port, instance::InstanceDoc},
};

/// Shards of the slot map: connections on different threads rarely wait
/// for each other.
const SHARDS: usize = 16;

/// Port slot -> its answers. foldhash, not SipHash: the daemon assigns
/// the slots, a guest cannot choose them, and every request looks one up.
type Shard = Mutex<foldhash::HashMap<u32, Arc<PortAnswers>>>;

#[derive(Default)]
pub struct AnswerCache {
    /// Boxed: the shards are a kilobyte, and the context they sit in is
    /// moved around whole.
    shards: Box<[Shard; SHARDS]>,
}

/// One port's answers for one version of its instance document.
pub struct PortAnswers {
    port: Arc<Port>,
    doc: Arc<InstanceDoc>,
    /// The guest's own address the EC2 trees saw (their `local-ipv4` falls
    /// back to it when neither the document nor the port names one).
    guest_addr: Option<IpAddr>,
    openstack: [[OnceLock<Result<Rendered, ApiError>>; File::COUNT]; OPENSTACK_VERSIONS.len()],
    ec2: [OnceLock<Node>; EC2_VERSIONS.len()],
    user_data: OnceLock<Option<Bytes>>,
}

impl AnswerCache {
    /// The answers of `guest`'s port for `doc`, fresh if either changed.
    pub fn for_guest(&self, guest: &Guest, doc: &Arc<InstanceDoc>) -> Arc<PortAnswers> {
        let slot = guest.port.slot;
        let mut shard = self.shards[slot as usize % SHARDS]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(answers) = shard.get(&slot)
            && answers.belong_to(guest, doc)
        {
            return answers.clone();
        }
        // Entries only the cache still holds a port of are of ports the
        // registry dropped (and no connection serves any more).
        shard.retain(|_, answers| Arc::strong_count(&answers.port) > 1);
        let answers = Arc::new(PortAnswers::new(guest, doc));
        shard.insert(slot, answers.clone());
        answers
    }

    #[cfg(test)]
    fn entries(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap().len())
            .sum()
    }
}

impl PortAnswers {
    fn new(guest: &Guest, doc: &Arc<InstanceDoc>) -> Self {
        Self {
            port: guest.port.clone(),
            doc: doc.clone(),
            guest_addr: guest.guest_addr,
            openstack: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
            ec2: std::array::from_fn(|_| OnceLock::new()),
            user_data: OnceLock::new(),
        }
    }

    fn belong_to(&self, guest: &Guest, doc: &Arc<InstanceDoc>) -> bool {
        Arc::ptr_eq(&self.port, &guest.port)
            && Arc::ptr_eq(&self.doc, doc)
            && self.guest_addr == guest.guest_addr
    }

    /// `file` of `version`, rendered by `render` the first time.
    pub fn openstack(
        &self,
        version: OpenStackVersion,
        file: File,
        render: impl FnOnce() -> Result<Rendered, ApiError>,
    ) -> Result<Rendered, ApiError> {
        self.openstack[version.index()][file.index()]
            .get_or_init(render)
            .clone()
    }

    /// The meta-data tree of `version`, built by `build` the first time.
    pub fn ec2_tree(&self, version: Ec2Version, build: impl FnOnce() -> Node) -> &Node {
        self.ec2[version.index()].get_or_init(build)
    }

    /// The decoded user data (None: the instance has none).
    pub fn user_data(&self) -> Option<&Bytes> {
        self.user_data
            .get_or_init(|| self.doc.user_data_bytes().map(Bytes::from))
            .as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::tests::{default_guest, rich_instance};

    #[test]
    fn an_entry_lasts_until_the_document_or_the_port_changes() {
        let cache = AnswerCache::default();
        let guest = default_guest();
        let doc = Arc::new(rich_instance());
        let first = cache.for_guest(&guest, &doc);
        assert!(Arc::ptr_eq(&first, &cache.for_guest(&guest, &doc)));

        let new_doc = Arc::new(rich_instance());
        let second = cache.for_guest(&guest, &new_doc);
        assert!(
            !Arc::ptr_eq(&first, &second),
            "instance put: rendered again"
        );

        let mut new_port = guest.clone();
        new_port.port = Arc::new((*guest.port).clone());
        let third = cache.for_guest(&new_port, &new_doc);
        assert!(
            !Arc::ptr_eq(&second, &third),
            "port changed: rendered again"
        );
    }

    #[test]
    fn renders_once_per_file() {
        let cache = AnswerCache::default();
        let guest = default_guest();
        let doc = Arc::new(rich_instance());
        let answers = cache.for_guest(&guest, &doc);
        let mut renders = 0;
        for _ in 0..3 {
            let rendered = answers.openstack(OpenStackVersion::EPOXY, File::Listing, || {
                renders += 1;
                Ok(Rendered::text("meta_data.json"))
            });
            assert_eq!(rendered.unwrap(), Rendered::text("meta_data.json"));
        }
        assert_eq!(renders, 1);
    }

    #[test]
    fn entries_of_dropped_ports_go_when_a_new_entry_comes() {
        let cache = AnswerCache::default();
        let doc = Arc::new(rich_instance());
        let mut gone = default_guest();
        gone.port = Arc::new(Port {
            slot: 1,
            ..(*gone.port).clone()
        });
        drop(cache.for_guest(&gone, &doc));
        drop(gone);
        let mut other = default_guest();
        other.port = Arc::new(Port {
            slot: 1 + SHARDS as u32,
            ..(*other.port).clone()
        });
        let _kept = cache.for_guest(&other, &doc);
        assert_eq!(cache.entries(), 1, "the dropped port's entry is gone");
    }
}
