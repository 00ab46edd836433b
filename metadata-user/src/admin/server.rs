//! Daemon side of the admin API (owned by the control-plane work).
