//! The admin API: HTTP/1.1 + JSON on a root-only unix socket. `server` is the
//! daemon's side, `client` is the CLI's, `wire` what both agree on, and
//! `error` what a refused request is answered with.
//!
//! Depends on `state` (what it reads and writes) and, for the client, on
//! `cli` (the commands it runs).
pub mod client;
mod error;
pub mod server;
pub mod wire;
