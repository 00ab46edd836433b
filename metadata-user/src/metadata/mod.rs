//! The guest-facing metadata service: `server` accepts connections and
//! identifies the guest, `api` answers its requests.
pub mod api;
pub mod conn;
pub mod limits;
pub mod server;
