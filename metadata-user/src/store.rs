//! SQLite persistence (owned by the control-plane work).
