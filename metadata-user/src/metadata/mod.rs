//! The guest-facing metadata service: `server` accepts connections and
//! identifies the guest, `backend` answers its requests (the local `api` or
//! nova), `limits` and
//! `ratelimit` keep one guest from crowding out the others.
pub mod api;
pub mod backend;
pub mod conn;
pub mod limits;
pub mod ratelimit;
pub mod server;
