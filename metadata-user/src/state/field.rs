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
    /// Control characters in either part (a field name or value quoted
    /// from the input, e.g. a JSON key "\n") are written as escapes, so
    /// the message stays one line whatever the input held.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: one_line(field.into()),
            reason: one_line(reason.into()),
        }
    }
}

fn one_line(text: String) -> String {
    if !text.chars().any(char::is_control) {
        return text;
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_field_then_reason() {
        let err = FieldError::new("--mac", "\"x\" is not a MAC address");
        assert_eq!(err.to_string(), "--mac: \"x\" is not a MAC address");
    }

    /// Found by the admin API fuzz target: serde quotes an unknown key as
    /// it came, newline and all.
    #[test]
    fn control_characters_are_escaped() {
        let err = FieldError::new(
            "port request",
            "unknown field `\n\u{1b}[31m`, expected one of",
        );
        assert_eq!(
            err.to_string(),
            "port request: unknown field `\\n\\u{1b}[31m`, expected one of"
        );
    }
}
