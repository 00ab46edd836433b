//! What the daemon knows and serves: instance documents and the ports bound
//! to them.
//!
//! - `instance`: the instance document and its checks.
//! - `port`: a tap bound to an instance, and the `port add` request.
//! - `source`: who a port or document belongs to (the operator, or a
//!   libvirt domain that discovery found it in).
//! - `field`: `FieldError`, the `field: reason` of every refused value.
//! - `store`: SQLite persistence.
//! - `durability`: how far a committed write is on disk (`--store-sync`).
//! - `registry`: validates writes, persists them, publishes snapshots that
//!   every other layer reads.
//!
//! The bottom layer: it depends on no other module of the daemon.
pub mod durability;
pub mod field;
pub mod instance;
pub mod port;
pub mod registry;
pub mod source;
pub mod store;

pub use durability::StoreSync;
pub use field::FieldError;
pub use port::{Port, PortAddRequest};
pub use registry::{DomainSync, PortPolicy, Registry, RegistryError, Snapshot, SyncProblem};
pub use source::Source;
