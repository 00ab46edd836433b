//! The one shape of a refused document or request: which field, and why.
//!
//! Every validation error the operator sees (`instance put`, `port add`) is
//! one line, `field: reason`, so scripts and people read the same text. The
//! type makes that the only way such a message is written.

/// A field that was refused: shown as `field: reason`, on one line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// The document key (`ec2.local_ipv4`) or CLI flag (`--ifname`).
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_field_then_reason() {
        let err = FieldError::new("--mac", "\"x\" is not a MAC address");
        assert_eq!(err.to_string(), "--mac: \"x\" is not a MAC address");
    }
}
