//! The guest-facing metadata service: `server` accepts connections and
//! identifies the guest, `api` answers its requests, `limits` and
//! `ratelimit` keep one guest from crowding out the others.
pub mod api;
pub mod conn;
pub mod limits;
pub mod ratelimit;
pub mod server;
