//! The admin API: HTTP/1.1 + JSON on a root-only unix socket. `server` is the
//! daemon's side, `client` is the CLI's, `wire` what both agree on.
pub mod client;
pub mod server;
mod wire;
