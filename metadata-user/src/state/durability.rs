//! `--store-sync`: how far a committed write is on disk when it returns.
use anyhow::anyhow;

/// SQLite's `synchronous` setting for the store (always in WAL mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreSync {
    /// `synchronous=NORMAL`: a commit is in the WAL file, which is synced
    /// at each checkpoint. A daemon crash or SIGKILL loses nothing (the
    /// kernel holds the written pages); only an OS crash or power loss can
    /// roll back the last commits, and never corrupts the database. The
    /// default: the fsync of every commit (1-10 ms) was most of a `port add`.
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit waits for an fsync of the WAL, so
    /// it also survives power loss.
    Full,
}

impl StoreSync {
    /// The `PRAGMA synchronous` value.
    pub(super) fn pragma(self) -> &'static str {
        match self {
            StoreSync::Normal => "NORMAL",
            StoreSync::Full => "FULL",
        }
    }
}

impl std::str::FromStr for StoreSync {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> anyhow::Result<Self> {
        match text {
            "normal" => Ok(StoreSync::Normal),
            "full" => Ok(StoreSync::Full),
            _ => Err(anyhow!(
                "{text:?} is not a store sync mode (normal or full)"
            )),
        }
    }
}
