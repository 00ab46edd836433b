//! Who a port or an instance document belongs to: the operator (`port add`,
//! `instance put`) or a libvirt domain that discovery found it in.
use serde::{Deserialize, Serialize};

/// Where a port or an instance document came from. Serialized flat into
/// what it describes: `"source": "manual"`, or `"source": "libvirt",
/// "domain": NAME, "domain_uuid": UUID`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum Source {
    /// The admin API: only the operator changes or removes it.
    #[default]
    Manual,
    /// `serve --discover libvirt`: the domain owns it, and it goes with the
    /// domain (or with its NIC). The operator cannot change it.
    Libvirt {
        /// libvirt's name for the domain when discovery last saw it.
        domain: String,
        domain_uuid: uuid::Uuid,
    },
}

impl Source {
    pub fn is_manual(&self) -> bool {
        matches!(self, Source::Manual)
    }

    /// The domain that owns it, if discovery found it.
    pub fn domain_uuid(&self) -> Option<uuid::Uuid> {
        match self {
            Source::Manual => None,
            Source::Libvirt { domain_uuid, .. } => Some(*domain_uuid),
        }
    }

    /// The owner in an operator's words: "libvirt domain web-1 (UUID)".
    pub fn owner(&self) -> String {
        match self {
            Source::Manual => "the operator".into(),
            Source::Libvirt {
                domain,
                domain_uuid,
            } => format!("libvirt domain {domain} ({domain_uuid})"),
        }
    }

    /// From the store's `source`, `domain` and `domain_uuid` columns.
    pub fn from_columns(
        kind: &str,
        domain: Option<String>,
        domain_uuid: Option<String>,
    ) -> anyhow::Result<Source> {
        match (kind, domain, domain_uuid) {
            ("manual", _, _) => Ok(Source::Manual),
            ("libvirt", Some(domain), Some(uuid)) => Ok(Source::Libvirt {
                domain,
                domain_uuid: uuid
                    .parse()
                    .map_err(|err| anyhow::anyhow!("domain_uuid {uuid:?}: {err}"))?,
            }),
            (kind, domain, uuid) => anyhow::bail!(
                "source {kind:?} with domain {domain:?} and domain_uuid {uuid:?} is not a source"
            ),
        }
    }

    /// The store's `source`, `domain` and `domain_uuid` columns.
    pub fn to_columns(&self) -> (&'static str, Option<String>, Option<String>) {
        match self {
            Source::Manual => ("manual", None, None),
            Source::Libvirt {
                domain,
                domain_uuid,
            } => (
                "libvirt",
                Some(domain.clone()),
                Some(domain_uuid.to_string()),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_round_trip_and_bad_rows_are_refused() {
        let libvirt = Source::Libvirt {
            domain: "web-1".into(),
            domain_uuid: uuid::Uuid::from_u128(7),
        };
        for source in [Source::Manual, libvirt.clone()] {
            let (kind, domain, uuid) = source.to_columns();
            assert_eq!(Source::from_columns(kind, domain, uuid).unwrap(), source);
        }
        assert!(Source::from_columns("libvirt", None, None).is_err());
        assert!(Source::from_columns("libvirt", Some("a".into()), Some("x".into())).is_err());
        assert!(Source::from_columns("xen", None, None).is_err());
        assert_eq!(
            libvirt.owner(),
            "libvirt domain web-1 (00000000-0000-0000-0000-000000000007)"
        );
    }
}
