//! Watching for changes (GCE's `wait_for_change`), for both backends.
//!
//! - `query`: `?wait_for_change=true[&last_etag=E][&timeout_sec=N]`, parsed
//!   and checked, and removed from what goes to nova.
//! - `etag`: the ETag of an answer, derived from its bytes only, so the
//!   same content has the same ETag across restarts and daemons.
//! - `limit`: at most [`MAX_WATCHES_PER_PORT`] held requests per port.
//!
//! The waiting itself belongs to each backend (`local::watch`,
//! `nova::watch`): what "changed" means differs (a new instance document, or
//! a new answer from nova).
pub mod etag;
pub mod limit;
pub mod query;

pub use etag::ETag;
pub use limit::{MAX_WATCHES_PER_PORT, WatchLimiter};
pub use query::WatchQuery;
