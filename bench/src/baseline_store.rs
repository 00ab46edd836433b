//! The state store as an older build (the baseline) can open it.
//!
//! The baseline runs on the same state dir as this build, which has
//! migrated the store to its own schema; an older binary refuses a schema
//! newer than its own. Every migration since 7e555bc's schema (1) only added
//! columns with defaults, which an older binary neither reads nor has to
//! write, so the bench shows the baseline the store at the version it asks
//! for, and gives it back its real version before this build starts again.
//! (A future migration that changes what old columns mean would need a
//! store of the baseline's own instead.)
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rusqlite::Connection;

/// The store's schema version while the baseline has it; restored on
/// [`StoreVersion::restore`].
pub struct StoreVersion {
    db: PathBuf,
    real: u32,
}

impl StoreVersion {
    /// Presents the store in `state_dir` at `version`, if `refusal` (an
    /// error from starting the baseline) says the binary needs an older
    /// one; `None` if it refused for another reason.
    pub fn lower_for(state_dir: &Path, refusal: &anyhow::Error) -> Result<Option<Self>> {
        let Some(wanted) = wanted_version(&format!("{refusal:#}")) else {
            return Ok(None);
        };
        let db = state_dir.join("state.db");
        let real = set_version(&db, wanted)?;
        eprintln!(
            "baseline: its schema is {wanted}, the store's {real}; the store says {wanted} while it runs"
        );
        Ok(Some(Self { db, real }))
    }

    /// The store's real version again (the baseline has stopped).
    pub fn restore(self) -> Result<()> {
        set_version(&self.db, self.real).map(drop)
    }
}

/// Sets `PRAGMA user_version`; the version it had.
fn set_version(db: &Path, version: u32) -> Result<u32> {
    let conn = Connection::open(db).with_context(|| format!("opening {}", db.display()))?;
    let old: u32 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    conn.pragma_update(None, "user_version", version)
        .with_context(|| format!("setting the schema version of {}", db.display()))?;
    Ok(old)
}

/// The binary's own schema version from its refusal: "schema version N is
/// newer than this binary's (M)".
fn wanted_version(message: &str) -> Option<u32> {
    let rest = message.split("is newer than this binary's (").nth(1)?;
    rest.split(')').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_binarys_version_from_its_refusal() {
        let log = "error: --state-dir /x/state: /x/state/state.db: schema version 2 is newer than this binary's (1); run a newer metadata-redirector";
        assert_eq!(wanted_version(log), Some(1));
        assert_eq!(wanted_version("the daemon exited (1)"), None);
    }
}
