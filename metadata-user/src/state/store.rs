//! SQLite persistence: `<state_dir>/state.db`.
//!
//! The store only keeps rows; what they mean (validation, slots, snapshots) is
//! the registry's business. Every mutation is one transaction and the
//! database runs in WAL mode, so a crash (SIGKILL, power loss) leaves either
//! the old row or the new one, never half a write. How far a write that
//! returned is on disk is [`StoreSync`]'s choice: by default it survives the
//! daemon's crash, with `full` also the OS's.
use std::{
    fs::{self, DirBuilder, File},
    os::{
        fd::AsRawFd,
        unix::fs::{DirBuilderExt, PermissionsExt},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::durability::StoreSync;

/// The schema this binary writes. Bump it and add a step to `MIGRATIONS`.
pub const SCHEMA_VERSION: u32 = 2;

/// `MIGRATIONS[n]` takes a database from version n to n + 1.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the first schema.
    "CREATE TABLE instances (
         uuid TEXT PRIMARY KEY NOT NULL,
         doc  TEXT NOT NULL            -- the normalized InstanceDoc, JSON
     );
     CREATE TABLE ports (
         ifname TEXT PRIMARY KEY NOT NULL,
         slot   INTEGER UNIQUE NOT NULL CHECK (slot BETWEEN 1 AND 65535),
         spec   TEXT NOT NULL          -- the validated PortSpec, JSON
     );
     CREATE TABLE passwords (
         uuid     TEXT PRIMARY KEY NOT NULL,
         password TEXT NOT NULL
     );
     CREATE TABLE secrets (
         name  TEXT PRIMARY KEY NOT NULL,
         value BLOB NOT NULL
     );",
    // 1 -> 2: who each port and instance belongs to (`serve --discover
    // libvirt`). Every row a version 1 daemon wrote came from the admin API,
    // so it stays `manual`.
    "ALTER TABLE ports ADD COLUMN source TEXT NOT NULL DEFAULT 'manual'
         CHECK (source IN ('manual', 'libvirt'));
     ALTER TABLE ports ADD COLUMN domain TEXT;        -- the owning domain's name
     ALTER TABLE ports ADD COLUMN domain_uuid TEXT;   -- and its UUID
     ALTER TABLE instances ADD COLUMN source TEXT NOT NULL DEFAULT 'manual'
         CHECK (source IN ('manual', 'libvirt'));
     ALTER TABLE instances ADD COLUMN domain TEXT;
     ALTER TABLE instances ADD COLUMN domain_uuid TEXT;",
];

pub struct Store {
    conn: Connection,
    /// Held (flock) for the store's life: two daemons on one state dir would
    /// hand out the same slots.
    _lock: File,
}

/// One `ports` row.
#[derive(Debug)]
pub struct PortRow {
    pub ifname: String,
    pub slot: u32,
    pub spec: String,
    pub source: SourceColumns,
}

/// One `instances` row.
#[derive(Debug)]
pub struct InstanceRow {
    pub uuid: String,
    pub doc: String,
    pub source: SourceColumns,
}

/// The `source`, `domain` and `domain_uuid` columns of a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceColumns {
    pub kind: String,
    pub domain: Option<String>,
    pub domain_uuid: Option<String>,
}

impl SourceColumns {
    #[cfg(test)]
    pub fn manual() -> Self {
        Self {
            kind: "manual".into(),
            domain: None,
            domain_uuid: None,
        }
    }
}

/// One change of several written in one transaction ([`Store::apply`]).
#[derive(Debug)]
pub enum Write {
    PutPort(PortRow),
    DeletePort(String),
    PutInstance(InstanceRow),
    /// The instance and its password.
    DeleteInstance(String),
    /// The instance's document only, its password kept: a discovered
    /// domain that stopped or migrated away may run here again, and the
    /// password its guest posted is still its password then (nova keeps it
    /// in the instance's system metadata the same way).
    DeleteDocument(String),
}

impl Store {
    /// Opens (creating if needed) `<state_dir>/state.db` and brings its
    /// schema up to `SCHEMA_VERSION`. The state dir is created 0700: it
    /// holds the guests' passwords and the token secrets.
    #[cfg(test)]
    pub fn open(state_dir: &Path) -> anyhow::Result<Store> {
        Self::open_with(state_dir, StoreSync::default())
    }

    /// [`Store::open`] with `sync` as the commits' durability.
    pub fn open_with(state_dir: &Path, sync: StoreSync) -> anyhow::Result<Store> {
        if !state_dir.exists() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(state_dir)
                .with_context(|| format!("cannot create state dir {}", state_dir.display()))?;
        }
        let lock = lock_state_dir(state_dir)?;
        let path = db_path(state_dir);
        let mut conn =
            Connection::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        // SQLite creates the -wal and -shm files with the database's mode.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot chmod {}", path.display()))?;
        let journal_mode: String =
            conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !journal_mode.eq_ignore_ascii_case("wal") {
            bail!(
                "{}: cannot switch to WAL mode (got {journal_mode})",
                path.display()
            );
        }
        conn.pragma_update(None, "synchronous", sync.pragma())?;
        migrate(&mut conn).with_context(|| format!("{}", path.display()))?;
        Ok(Store { conn, _lock: lock })
    }

    pub fn instances(&self) -> anyhow::Result<Vec<InstanceRow>> {
        let mut stmt = self
            .conn
            .prepare("SELECT uuid, doc, source, domain, domain_uuid FROM instances")?;
        let rows = stmt.query_map([], |row| {
            Ok(InstanceRow {
                uuid: row.get(0)?,
                doc: row.get(1)?,
                source: source_columns(row, 2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Creates or replaces an instance.
    pub fn put_instance(&mut self, row: InstanceRow) -> anyhow::Result<()> {
        self.apply(vec![Write::PutInstance(row)])
    }

    /// Deletes an instance and its password; false if there was none.
    pub fn delete_instance(&mut self, uuid: &str) -> anyhow::Result<bool> {
        self.write(|tx| delete_instance(tx, uuid))
    }

    pub fn ports(&self) -> anyhow::Result<Vec<PortRow>> {
        let mut stmt = self
            .conn
            .prepare("SELECT ifname, slot, spec, source, domain, domain_uuid FROM ports")?;
        let rows = stmt.query_map([], |row| {
            Ok(PortRow {
                ifname: row.get(0)?,
                slot: row.get(1)?,
                spec: row.get(2)?,
                source: source_columns(row, 3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Creates or replaces a port.
    pub fn put_port(&mut self, row: PortRow) -> anyhow::Result<()> {
        self.apply(vec![Write::PutPort(row)])
    }

    /// False if there was no such port.
    pub fn delete_port(&mut self, ifname: &str) -> anyhow::Result<bool> {
        self.write(|tx| Ok(tx.execute("DELETE FROM ports WHERE ifname = ?1", [ifname])? == 1))
    }

    /// Makes all of `writes` in one transaction, in order: all or none.
    pub fn apply(&mut self, writes: Vec<Write>) -> anyhow::Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            for write in &writes {
                match write {
                    Write::PutPort(row) => {
                        tx.execute(
                            "INSERT INTO ports (ifname, slot, spec, source, domain, domain_uuid)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                             ON CONFLICT (ifname) DO UPDATE SET slot = excluded.slot,
                                 spec = excluded.spec, source = excluded.source,
                                 domain = excluded.domain, domain_uuid = excluded.domain_uuid",
                            params![
                                row.ifname,
                                row.slot,
                                row.spec,
                                row.source.kind,
                                row.source.domain,
                                row.source.domain_uuid
                            ],
                        )?;
                    }
                    Write::DeletePort(ifname) => {
                        tx.execute("DELETE FROM ports WHERE ifname = ?1", [ifname])?;
                    }
                    Write::PutInstance(row) => {
                        tx.execute(
                            "INSERT INTO instances (uuid, doc, source, domain, domain_uuid)
                             VALUES (?1, ?2, ?3, ?4, ?5)
                             ON CONFLICT (uuid) DO UPDATE SET doc = excluded.doc,
                                 source = excluded.source, domain = excluded.domain,
                                 domain_uuid = excluded.domain_uuid",
                            params![
                                row.uuid,
                                row.doc,
                                row.source.kind,
                                row.source.domain,
                                row.source.domain_uuid
                            ],
                        )?;
                    }
                    Write::DeleteInstance(uuid) => {
                        delete_instance(tx, uuid)?;
                    }
                    Write::DeleteDocument(uuid) => {
                        tx.execute("DELETE FROM instances WHERE uuid = ?1", [uuid])?;
                    }
                }
            }
            Ok(())
        })
    }

    pub fn password(&self, uuid: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT password FROM passwords WHERE uuid = ?1",
                [uuid],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Stores a password unless the instance already has one; true if stored.
    pub fn set_password_if_absent(&mut self, uuid: &str, password: &str) -> anyhow::Result<bool> {
        self.write(|tx| {
            let inserted = tx.execute(
                "INSERT INTO passwords (uuid, password) VALUES (?1, ?2)
                 ON CONFLICT (uuid) DO NOTHING",
                params![uuid, password],
            )?;
            Ok(inserted == 1)
        })
    }

    /// The secret called `name`; stores `fresh` first if there is none yet.
    pub fn secret_or_insert(&mut self, name: &str, fresh: &[u8]) -> anyhow::Result<Vec<u8>> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO secrets (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
                params![name, fresh],
            )?;
            Ok(
                tx.query_row("SELECT value FROM secrets WHERE name = ?1", [name], |row| {
                    row.get(0)
                })?,
            )
        })
    }

    /// Runs `body` in one IMMEDIATE transaction (takes the write lock up
    /// front), committed only if it succeeds.
    fn write<T>(
        &mut self,
        body: impl FnOnce(&rusqlite::Transaction<'_>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = body(&tx)?;
        tx.commit()?;
        Ok(value)
    }
}

fn delete_instance(tx: &rusqlite::Transaction<'_>, uuid: &str) -> anyhow::Result<bool> {
    let deleted = tx.execute("DELETE FROM instances WHERE uuid = ?1", [uuid])?;
    tx.execute("DELETE FROM passwords WHERE uuid = ?1", [uuid])?;
    Ok(deleted == 1)
}

/// The three source columns starting at `first`.
fn source_columns(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<SourceColumns> {
    Ok(SourceColumns {
        kind: row.get(first)?,
        domain: row.get(first + 1)?,
        domain_uuid: row.get(first + 2)?,
    })
}

pub fn db_path(state_dir: &Path) -> PathBuf {
    state_dir.join("state.db")
}

fn lock_state_dir(state_dir: &Path) -> anyhow::Result<File> {
    let path = state_dir.join("lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a descriptor we own; it is released when the file is closed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            bail!(
                "state dir {} is in use by another metadata-redirector",
                state_dir.display()
            );
        }
        return Err(err).with_context(|| format!("cannot lock {}", path.display()));
    }
    Ok(file)
}

/// Brings the schema from its `user_version` to `SCHEMA_VERSION`, one
/// transaction per step, and refuses a database from a newer binary.
fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let version: u32 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        bail!(
            "schema version {version} is newer than this binary's ({SCHEMA_VERSION}); \
             run a newer metadata-redirector"
        );
    }
    for (from, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(step)
            .with_context(|| format!("migrating schema from version {from}"))?;
        tx.pragma_update(None, "user_version", from as u32 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_private_state_dir_and_db_at_current_schema() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/state");
        let store = Store::open(&dir).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&db_path(&dir)), 0o600);
        let version: u32 = store
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let journal: String = store
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
        // NORMAL by default: no fsync per commit (a SIGKILL loses nothing,
        // the kernel has the WAL's pages).
        assert_eq!(synchronous(&store), 1, "synchronous=NORMAL");
    }

    fn synchronous(store: &Store) -> i64 {
        store
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn store_sync_full_asks_for_an_fsync_per_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open_with(tmp.path(), StoreSync::Full).unwrap();
        assert_eq!(synchronous(&store), 2, "synchronous=FULL");
    }

    /// A database a version 1 daemon wrote: its rows stay, as manual ones.
    #[test]
    fn version_1_rows_become_manual() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut conn = Connection::open(db_path(tmp.path())).unwrap();
            let tx = conn.transaction().unwrap();
            tx.execute_batch(MIGRATIONS[0]).unwrap();
            tx.pragma_update(None, "user_version", 1).unwrap();
            tx.execute(
                "INSERT INTO instances (uuid, doc) VALUES ('u', '{\"name\": \"a\"}')",
                [],
            )
            .unwrap();
            tx.execute(
                "INSERT INTO ports (ifname, slot, spec) VALUES ('tap0', 7, '{}')",
                [],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let mut store = Store::open(tmp.path()).unwrap();
        let ports = store.ports().unwrap();
        assert_eq!(
            (ports[0].ifname.as_str(), ports[0].slot, &ports[0].source),
            ("tap0", 7, &SourceColumns::manual())
        );
        let instances = store.instances().unwrap();
        assert_eq!(instances[0].uuid, "u");
        assert_eq!(instances[0].source, SourceColumns::manual());
        // The new columns take what version 2 writes, and only that.
        let libvirt = SourceColumns {
            kind: "libvirt".into(),
            domain: Some("vm".into()),
            domain_uuid: Some("d".into()),
        };
        store
            .put_port(PortRow {
                ifname: "tap1".into(),
                slot: 8,
                spec: "{}".into(),
                source: libvirt.clone(),
            })
            .unwrap();
        assert!(
            store
                .put_port(PortRow {
                    ifname: "tap2".into(),
                    slot: 9,
                    spec: "{}".into(),
                    source: SourceColumns {
                        kind: "xen".into(),
                        ..libvirt.clone()
                    },
                })
                .is_err()
        );
        let ports = store.ports().unwrap();
        assert_eq!(ports.len(), 2);
        assert!(
            ports
                .iter()
                .any(|p| p.ifname == "tap1" && p.source == libvirt)
        );
    }

    #[test]
    fn apply_is_all_or_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::open(tmp.path()).unwrap();
        let port = |ifname: &str, slot| {
            Write::PutPort(PortRow {
                ifname: ifname.into(),
                slot,
                spec: "{}".into(),
                source: SourceColumns::manual(),
            })
        };
        store.apply(vec![port("a", 1), port("b", 2)]).unwrap();
        // The last write breaks the unique slot: none of them stays.
        let err = store.apply(vec![
            Write::DeletePort("a".into()),
            port("c", 3),
            port("d", 2),
        ]);
        assert!(err.is_err());
        let mut names: Vec<String> = store
            .ports()
            .unwrap()
            .into_iter()
            .map(|p| p.ifname)
            .collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let tmp = tempfile::tempdir().unwrap();
        drop(Store::open(tmp.path()).unwrap());
        let conn = Connection::open(db_path(tmp.path())).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = Store::open(tmp.path()).err().unwrap();
        assert!(
            format!("{err:#}").contains("newer than this binary"),
            "{err:#}"
        );
    }

    #[test]
    fn a_second_store_on_the_same_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let _first = Store::open(tmp.path()).unwrap();
        let err = Store::open(tmp.path()).err().unwrap();
        assert!(format!("{err:#}").contains("in use"), "{err:#}");
    }

    #[test]
    fn a_failed_transaction_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::open(tmp.path()).unwrap();
        store
            .put_port(PortRow {
                ifname: "tap0".into(),
                slot: 1,
                spec: "{}".into(),
                source: SourceColumns::manual(),
            })
            .unwrap();
        // The second statement fails (slot 1 is taken): the first must not stay.
        let result = store.write(|tx| {
            tx.execute("INSERT INTO instances (uuid, doc) VALUES ('u', '{}')", [])?;
            tx.execute(
                "INSERT INTO ports (ifname, slot, spec) VALUES ('tap1', 1, '{}')",
                [],
            )?;
            Ok(())
        });
        assert!(result.is_err());
        assert!(store.instances().unwrap().is_empty());
        assert_eq!(store.ports().unwrap().len(), 1);
    }

    #[test]
    fn delete_instance_takes_its_password_along() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::open(tmp.path()).unwrap();
        store
            .put_instance(InstanceRow {
                uuid: "u".into(),
                doc: "{}".into(),
                source: SourceColumns::manual(),
            })
            .unwrap();
        assert!(store.set_password_if_absent("u", "pw").unwrap());
        assert!(!store.set_password_if_absent("u", "other").unwrap());
        assert_eq!(store.password("u").unwrap().as_deref(), Some("pw"));
        assert!(store.delete_instance("u").unwrap());
        assert!(!store.delete_instance("u").unwrap());
        assert_eq!(store.password("u").unwrap(), None);
    }
}
