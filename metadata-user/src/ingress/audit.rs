//! The audit log: one record for each access to a guest's user data or
//! password (read or set) and for each IMDSv2 token minted, on the `audit`
//! target (always enabled, whatever RUST_LOG says; see serve.rs).
//!
//! A record says who (instance, port, tap, and the guest's address when
//! the backend looked it up), what
//! (secret, method, path as sent) and how it ended (status). Never the
//! secret itself: not the user data, not the password, not the token, nor
//! any request header or body, so that shipping the log is never shipping
//! the secrets.
use hyper::Method;
use tracing::info;

use crate::backend::{Guest, kind::Secret};

/// The tracing target of audit records.
pub const TARGET: &str = "audit";

/// Logs the record of an access to `secret`, if it is one that gets one: a
/// token only when one was minted (200), the others whatever the status.
pub fn record(guest: &Guest, secret: Secret, method: &Method, path: &str, status: u16) {
    if secret == Secret::Token && status != 200 {
        return;
    }
    let spec = &guest.port.spec;
    info!(
        target: TARGET,
        secret = secret.as_str(),
        instance = %spec.instance,
        // Absent when the port was registered without a Neutron port ID.
        port = spec.port_id.map(tracing::field::display),
        tap = %spec.ifname,
        // Known when the backend needed it (nova, or a port without
        // addresses): the datapath is not asked per connection just for this.
        guest_addr = guest.guest_addr.map(tracing::field::display),
        method = %method,
        path,
        status,
        "{}",
        match secret {
            Secret::Token => "token minted",
            Secret::UserData => "user data accessed",
            Secret::Password => "password accessed",
        }
    );
}
