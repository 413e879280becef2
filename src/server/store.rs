//! Persistent state: metadata in SQLite (`DATA/pkgfs.db`, WAL) and file
//! contents as content-addressed blobs (`DATA/blobs/ab/cdef…` for SHA-256
//! `abcdef…`), the model of PROTOCOL.md §model.
//!
//! Crash safety: an upload is streamed to `DATA/tmp/` first; the blob is
//! renamed into place and its rows committed while the one database lock is
//! held, so a crash leaves at most an unreferenced blob or temp file, and
//! both are removed at the next start. All writes are serialised by that
//! lock, which also makes concurrent creation of the same file race-free.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::upload::Uploaded;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS owners (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    lower_name TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created_unix INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    md5 TEXT NOT NULL,
    sha1 TEXT NOT NULL,
    sha512 TEXT NOT NULL,
    created_unix INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS packages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_id INTEGER NOT NULL REFERENCES owners(id),
    type TEXT NOT NULL,
    name TEXT NOT NULL,
    lower_name TEXT NOT NULL,
    created_unix INTEGER NOT NULL,
    UNIQUE (owner_id, type, lower_name)
);
CREATE TABLE IF NOT EXISTS versions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    package_id INTEGER NOT NULL REFERENCES packages(id),
    version TEXT NOT NULL,
    lower_version TEXT NOT NULL,
    creator_id INTEGER NOT NULL,
    created_unix INTEGER NOT NULL,
    download_count INTEGER NOT NULL DEFAULT 0,
    UNIQUE (package_id, lower_version)
);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    version_id INTEGER NOT NULL REFERENCES versions(id),
    blob_id INTEGER NOT NULL REFERENCES blobs(id),
    name TEXT NOT NULL,
    lower_name TEXT NOT NULL,
    created_unix INTEGER NOT NULL,
    UNIQUE (version_id, lower_name)
);
CREATE INDEX IF NOT EXISTS files_blob ON files(blob_id);
";

/// Hashes and size of a stored blob.
#[derive(Debug, Clone)]
pub struct Blob {
    pub sha256: String,
    pub size: u64,
    pub md5: String,
    pub sha1: String,
    pub sha512: String,
}

/// A file of a version, with its blob.
#[derive(Debug, Clone)]
pub struct FileRow {
    pub id: i64,
    pub version_id: i64,
    pub name: String,
    pub created_unix: i64,
    pub blob: Blob,
}

/// One package version, as the v1 API shows it.
#[derive(Debug, Clone)]
pub struct VersionRow {
    pub id: i64,
    pub package_type: String,
    pub name: String,
    pub version: String,
    pub creator_id: i64,
    pub created_unix: i64,
}

/// Result of looking a file up by owner, name, version and filename.
#[derive(Debug)]
pub enum Lookup {
    NoVersion,
    NoFile,
    Found(FileRow),
}

/// Result of deleting a file.
#[derive(Debug, PartialEq, Eq)]
pub enum Deleted {
    Yes,
    NoVersion,
    NoFile,
}

/// What an upload is and who makes it.
#[derive(Debug)]
pub struct NewFile<'a> {
    pub owner_id: i64,
    pub creator_id: i64,
    pub name: &'a str,
    pub version: &'a str,
    pub filename: &'a str,
}

/// Limits that apply to an upload (already `None` for admins).
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub legacy_duplicates: bool,
    pub max_file_size: Option<u64>,
    pub max_owner_size: Option<u64>,
    pub max_owner_count: Option<u64>,
}

/// Outcome of an upload that did not fail on I/O.
#[derive(Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    /// 409: a file with this lower-cased name exists in the version.
    FileExists,
    /// 400 in `--legacy-duplicates` mode: the version exists.
    VersionExists,
    /// 403 with Gitea's message.
    Quota(&'static str),
}

/// Page of v1 results plus the total count.
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: u64,
}

/// The registry's persistent state.
pub struct Store {
    conn: Mutex<Connection>,
    root: PathBuf,
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

const VERSION_COLUMNS: &str = "v.id, p.type, p.name, v.version, v.creator_id, v.created_unix";

fn version_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRow> {
    Ok(VersionRow {
        id: r.get(0)?,
        package_type: r.get(1)?,
        name: r.get(2)?,
        version: r.get(3)?,
        creator_id: r.get(4)?,
        created_unix: r.get(5)?,
    })
}

const FILE_COLUMNS: &str =
    "f.id, f.version_id, f.name, f.created_unix, b.sha256, b.size, b.md5, b.sha1, b.sha512";

fn file_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FileRow> {
    Ok(FileRow {
        id: r.get(0)?,
        version_id: r.get(1)?,
        name: r.get(2)?,
        created_unix: r.get(3)?,
        blob: Blob {
            sha256: r.get(4)?,
            size: r.get::<_, i64>(5)?.try_into().unwrap_or(0),
            md5: r.get(6)?,
            sha1: r.get(7)?,
            sha512: r.get(8)?,
        },
    })
}

impl Store {
    /// Opens (or creates) the data directory and cleans up after a crash.
    pub fn open(root: &Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(root.join("blobs"))
            .with_context(|| format!("creating {}", root.display()))?;
        let tmp = root.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).with_context(|| format!("cleaning {}", tmp.display()))?;
        }
        std::fs::create_dir_all(&tmp)?;
        let conn = Connection::open(root.join("pkgfs.db")).context("opening pkgfs.db")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA).context("creating the schema")?;
        let store = Store {
            conn: Mutex::new(conn),
            root: root.to_path_buf(),
        };
        store.remove_orphans()?;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // Nothing panics while holding the lock; if it ever did, the
        // connection itself is still consistent (transactions roll back).
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where uploads in progress are written.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Where the blob with this SHA-256 lives.
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        let head = sha256.get(..2).unwrap_or("");
        let rest = sha256.get(2..).unwrap_or(sha256);
        self.root.join("blobs").join(head).join(rest)
    }

    /// Deletes blob rows no file references, and blob files no row knows.
    fn remove_orphans(&self) -> anyhow::Result<()> {
        let conn = self.lock();
        let dead: Vec<String> = {
            let mut st = conn
                .prepare("SELECT sha256 FROM blobs WHERE id NOT IN (SELECT blob_id FROM files)")?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        conn.execute(
            "DELETE FROM blobs WHERE id NOT IN (SELECT blob_id FROM files)",
            [],
        )?;
        for sha in &dead {
            remove_file_quietly(&self.blob_path(sha));
        }
        let known: HashSet<String> = {
            let mut st = conn.prepare("SELECT sha256 FROM blobs")?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for dir in std::fs::read_dir(self.root.join("blobs"))? {
            let dir = dir?;
            let head = dir.file_name().to_string_lossy().into_owned();
            if !dir.file_type()?.is_dir() {
                remove_file_quietly(&dir.path());
                continue;
            }
            for f in std::fs::read_dir(dir.path())? {
                let f = f?;
                let sha = format!("{head}{}", f.file_name().to_string_lossy());
                if !known.contains(&sha) {
                    tracing::info!(sha256 = %sha, "removing orphan blob");
                    remove_file_quietly(&f.path());
                }
            }
        }
        Ok(())
    }

    /// The owner's stable id and creation time; creates the row on first sight.
    pub fn ensure_owner(&self, name: &str) -> anyhow::Result<(i64, i64)> {
        let conn = self.lock();
        let lower = name.to_lowercase();
        conn.execute(
            "INSERT OR IGNORE INTO owners (lower_name, name, created_unix) VALUES (?1, ?2, ?3)",
            params![lower, name, now_unix()],
        )?;
        Ok(conn.query_row(
            "SELECT id, created_unix FROM owners WHERE lower_name = ?1",
            [&lower],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?)
    }

    /// Finds a file (all names compared lower-cased).
    pub fn find_file(
        &self,
        owner_id: i64,
        name: &str,
        version: &str,
        filename: &str,
    ) -> anyhow::Result<Lookup> {
        let conn = self.lock();
        let Some(version_id) = version_id(&conn, owner_id, "generic", name, version)? else {
            return Ok(Lookup::NoVersion);
        };
        let sql = format!(
            "SELECT {FILE_COLUMNS} FROM files f JOIN blobs b ON b.id = f.blob_id
             WHERE f.version_id = ?1 AND f.lower_name = ?2"
        );
        let row = conn
            .query_row(&sql, params![version_id, filename.to_lowercase()], file_row)
            .optional()?;
        Ok(row.map_or(Lookup::NoFile, Lookup::Found))
    }

    /// Counts a download of a version.
    pub fn count_download(&self, version_id: i64) -> anyhow::Result<()> {
        self.lock().execute(
            "UPDATE versions SET download_count = download_count + 1 WHERE id = ?1",
            [version_id],
        )?;
        Ok(())
    }

    /// Stores an uploaded file: the order of checks of PROTOCOL.md §upload
    /// after the body is read (version created → count quota → size quotas
    /// → blob → file row), all in one transaction.
    pub fn put_file(
        &self,
        new: &NewFile<'_>,
        upload: Uploaded,
        limits: &Limits,
    ) -> anyhow::Result<PutOutcome> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let now = now_unix();
        let package_id = ensure_package(&tx, new.owner_id, new.name, now)?;
        let version_id = match version_for_put(&tx, new, package_id, limits, now)? {
            Ok(id) => id,
            Err(refused) => return Ok(refused),
        };
        if let Some(refused) = size_quota(&tx, new, upload.blob.size, limits)? {
            return Ok(refused);
        }
        let lower_file = new.filename.to_lowercase();
        let taken: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM files WHERE version_id = ?1 AND lower_name = ?2)",
            params![version_id, lower_file],
            |r| r.get(0),
        )?;
        if taken {
            return Ok(PutOutcome::FileExists);
        }
        let (blob_id, placed) = self.blob_for_put(&tx, upload, now)?;
        tx.execute(
            "INSERT INTO files (version_id, blob_id, name, lower_name, created_unix)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![version_id, blob_id, new.filename, lower_file, now],
        )?;
        if let Err(e) = tx.commit() {
            if let Some(path) = placed {
                remove_file_quietly(&path);
            }
            return Err(e.into());
        }
        Ok(PutOutcome::Created)
    }

    /// The blob row of an upload: the existing one with its sha256, or the
    /// upload's file moved into the store (its path, to remove if the
    /// transaction fails) and a new row.
    fn blob_for_put(
        &self,
        tx: &Transaction<'_>,
        upload: Uploaded,
        now: i64,
    ) -> anyhow::Result<(i64, Option<PathBuf>)> {
        let blob = &upload.blob;
        let existing: Option<i64> = tx
            .query_row(
                "SELECT id FROM blobs WHERE sha256 = ?1",
                [&blob.sha256],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = existing {
            return Ok((id, None));
        }
        let path = self.blob_path(&blob.sha256);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        upload.file.persist(&path)?;
        tx.execute(
            "INSERT INTO blobs (sha256, size, md5, sha1, sha512, created_unix)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                blob.sha256,
                blob.size as i64,
                blob.md5,
                blob.sha1,
                blob.sha512,
                now
            ],
        )?;
        Ok((tx.last_insert_rowid(), Some(path)))
    }

    /// Deletes one file; the version goes with its last file.
    pub fn delete_file(
        &self,
        owner_id: i64,
        name: &str,
        version: &str,
        filename: &str,
    ) -> anyhow::Result<Deleted> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let Some(version_id) = version_id(&tx, owner_id, "generic", name, version)? else {
            return Ok(Deleted::NoVersion);
        };
        let blob: Option<i64> = tx
            .query_row(
                "DELETE FROM files WHERE version_id = ?1 AND lower_name = ?2 RETURNING blob_id",
                params![version_id, filename.to_lowercase()],
                |r| r.get(0),
            )
            .optional()?;
        let Some(blob) = blob else {
            return Ok(Deleted::NoFile);
        };
        tx.execute(
            "DELETE FROM versions WHERE id = ?1 AND NOT EXISTS
             (SELECT 1 FROM files WHERE version_id = ?1)",
            [version_id],
        )?;
        let dead = drop_unreferenced_blobs(&tx, &[blob])?;
        tx.commit()?;
        self.unlink_blobs(&dead);
        Ok(Deleted::Yes)
    }

    /// Deletes a version and its files. `false` when it does not exist.
    pub fn delete_version(
        &self,
        owner_id: i64,
        package_type: &str,
        name: &str,
        version: &str,
    ) -> anyhow::Result<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let Some(version_id) = version_id(&tx, owner_id, package_type, name, version)? else {
            return Ok(false);
        };
        let dead = delete_versions(&tx, &[version_id])?;
        tx.commit()?;
        self.unlink_blobs(&dead);
        Ok(true)
    }

    /// Deletes a package with all its versions. `false` when it does not exist.
    pub fn delete_package(
        &self,
        owner_id: i64,
        package_type: &str,
        name: &str,
    ) -> anyhow::Result<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let Some(package_id) = package_id(&tx, owner_id, package_type, name)? else {
            return Ok(false);
        };
        let versions: Vec<i64> = {
            let mut st = tx.prepare("SELECT id FROM versions WHERE package_id = ?1")?;
            let rows = st.query_map([package_id], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let dead = delete_versions(&tx, &versions)?;
        tx.execute("DELETE FROM packages WHERE id = ?1", [package_id])?;
        tx.commit()?;
        self.unlink_blobs(&dead);
        Ok(true)
    }

    /// Removes package rows that have no version left (Gitea's cleanup cron).
    pub fn cleanup_empty_packages(&self) -> anyhow::Result<usize> {
        Ok(self.lock().execute(
            "DELETE FROM packages WHERE id NOT IN (SELECT package_id FROM versions)",
            [],
        )?)
    }

    fn unlink_blobs(&self, dead: &[String]) {
        for sha in dead {
            remove_file_quietly(&self.blob_path(sha));
        }
    }

    /// v1 "list packages": one entry per version, newest first.
    pub fn list_owner_versions(
        &self,
        owner_id: i64,
        package_type: Option<&str>,
        query: &str,
        offset: u64,
        limit: u64,
    ) -> anyhow::Result<Page<VersionRow>> {
        let conn = self.lock();
        let filter = "FROM versions v JOIN packages p ON p.id = v.package_id
             WHERE p.owner_id = ?1 AND (?2 IS NULL OR p.type = ?2)
             AND p.lower_name LIKE '%' || ?3 || '%'";
        let q = query.to_lowercase();
        let total: i64 = conn.query_row(
            &format!("SELECT COUNT(*) {filter}"),
            params![owner_id, package_type, q],
            |r| r.get(0),
        )?;
        let mut st = conn.prepare(&format!(
            "SELECT {VERSION_COLUMNS} {filter}
             ORDER BY v.created_unix DESC, v.id DESC LIMIT ?4 OFFSET ?5"
        ))?;
        let rows = st.query_map(
            params![owner_id, package_type, q, limit as i64, offset as i64],
            version_row,
        )?;
        Ok(Page {
            items: rows.collect::<Result<_, _>>()?,
            total: total as u64,
        })
    }

    /// The package's id, if the row exists (it may have no versions).
    pub fn package_id(
        &self,
        owner_id: i64,
        package_type: &str,
        name: &str,
    ) -> anyhow::Result<Option<i64>> {
        package_id(&self.lock(), owner_id, package_type, name)
    }

    /// v1 "list versions" of one package, newest first.
    pub fn list_package_versions(
        &self,
        package_id: i64,
        offset: u64,
        limit: u64,
    ) -> anyhow::Result<Page<VersionRow>> {
        let conn = self.lock();
        let total: i64 = conn.query_row(
            "SELECT COUNT(*) FROM versions WHERE package_id = ?1",
            [package_id],
            |r| r.get(0),
        )?;
        let mut st = conn.prepare(&format!(
            "SELECT {VERSION_COLUMNS} FROM versions v JOIN packages p ON p.id = v.package_id
             WHERE v.package_id = ?1
             ORDER BY v.created_unix DESC, v.id DESC LIMIT ?2 OFFSET ?3"
        ))?;
        let rows = st.query_map(
            params![package_id, limit as i64, offset as i64],
            version_row,
        )?;
        Ok(Page {
            items: rows.collect::<Result<_, _>>()?,
            total: total as u64,
        })
    }

    /// The version with the highest id.
    pub fn latest_version(&self, package_id: i64) -> anyhow::Result<Option<VersionRow>> {
        let conn = self.lock();
        Ok(conn
            .query_row(
                &format!(
                    "SELECT {VERSION_COLUMNS} FROM versions v JOIN packages p ON p.id = v.package_id
                     WHERE v.package_id = ?1 ORDER BY v.id DESC LIMIT 1"
                ),
                [package_id],
                version_row,
            )
            .optional()?)
    }

    /// One version by (case-insensitive) name and version.
    pub fn get_version(
        &self,
        owner_id: i64,
        package_type: &str,
        name: &str,
        version: &str,
    ) -> anyhow::Result<Option<VersionRow>> {
        let conn = self.lock();
        Ok(conn
            .query_row(
                &format!(
                    "SELECT {VERSION_COLUMNS} FROM versions v JOIN packages p ON p.id = v.package_id
                     WHERE p.owner_id = ?1 AND p.type = ?2 AND p.lower_name = ?3
                     AND v.lower_version = ?4"
                ),
                params![
                    owner_id,
                    package_type,
                    name.to_lowercase(),
                    version.to_lowercase()
                ],
                version_row,
            )
            .optional()?)
    }

    /// All files of a version, by lower-cased name, then creation, then id.
    pub fn list_files(&self, version_id: i64) -> anyhow::Result<Vec<FileRow>> {
        let conn = self.lock();
        let mut st = conn.prepare(&format!(
            "SELECT {FILE_COLUMNS} FROM files f JOIN blobs b ON b.id = f.blob_id
             WHERE f.version_id = ?1 ORDER BY f.lower_name, f.created_unix, f.id"
        ))?;
        let rows = st.query_map([version_id], file_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Whether a blob with this SHA-256 is stored.
    pub fn has_blob(&self, sha256: &str) -> anyhow::Result<bool> {
        Ok(self.lock().query_row(
            "SELECT EXISTS (SELECT 1 FROM blobs WHERE sha256 = ?1)",
            [sha256],
            |r| r.get(0),
        )?)
    }
}

fn package_id(
    conn: &Connection,
    owner_id: i64,
    package_type: &str,
    name: &str,
) -> anyhow::Result<Option<i64>> {
    Ok(conn
        .query_row(
            "SELECT id FROM packages WHERE owner_id = ?1 AND type = ?2 AND lower_name = ?3",
            params![owner_id, package_type, name.to_lowercase()],
            |r| r.get(0),
        )
        .optional()?)
}

fn version_id(
    conn: &Connection,
    owner_id: i64,
    package_type: &str,
    name: &str,
    version: &str,
) -> anyhow::Result<Option<i64>> {
    Ok(conn
        .query_row(
            "SELECT v.id FROM versions v JOIN packages p ON p.id = v.package_id
             WHERE p.owner_id = ?1 AND p.type = ?2 AND p.lower_name = ?3 AND v.lower_version = ?4",
            params![
                owner_id,
                package_type,
                name.to_lowercase(),
                version.to_lowercase()
            ],
            |r| r.get(0),
        )
        .optional()?)
}

fn ensure_package(
    tx: &Transaction<'_>,
    owner_id: i64,
    name: &str,
    now: i64,
) -> anyhow::Result<i64> {
    if let Some(id) = package_id(tx, owner_id, "generic", name)? {
        return Ok(id);
    }
    tx.execute(
        "INSERT INTO packages (owner_id, type, name, lower_name, created_unix)
         VALUES (?1, 'generic', ?2, ?3, ?4)",
        params![owner_id, name, name.to_lowercase(), now],
    )?;
    Ok(tx.last_insert_rowid())
}

/// The version an upload goes into: the existing one, or a new one
/// within the owner's package-count quota. `Err` is the refusal: Gitea
/// 1.17's one file per version, or the quota.
fn version_for_put(
    tx: &Transaction<'_>,
    new: &NewFile<'_>,
    package_id: i64,
    limits: &Limits,
    now: i64,
) -> anyhow::Result<Result<i64, PutOutcome>> {
    let lower_version = new.version.to_lowercase();
    let existing: Option<i64> = tx
        .query_row(
            "SELECT id FROM versions WHERE package_id = ?1 AND lower_version = ?2",
            params![package_id, lower_version],
            |r| r.get(0),
        )
        .optional()?;
    match existing {
        Some(_) if limits.legacy_duplicates => return Ok(Err(PutOutcome::VersionExists)),
        Some(id) => return Ok(Ok(id)),
        None => {}
    }
    tx.execute(
        "INSERT INTO versions (package_id, version, lower_version, creator_id, created_unix)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![package_id, new.version, lower_version, new.creator_id, now],
    )?;
    if let Some(max) = limits.max_owner_count {
        let count: i64 = tx.query_row(
            "SELECT COUNT(*) FROM versions v JOIN packages p ON p.id = v.package_id
             WHERE p.owner_id = ?1",
            [new.owner_id],
            |r| r.get(0),
        )?;
        if count as u64 > max {
            return Ok(Err(PutOutcome::Quota(
                "maximum allowed package count exceeded",
            )));
        }
    }
    Ok(Ok(tx.last_insert_rowid()))
}

/// The size quotas (per file, per owner) for an upload of `size` bytes:
/// the refusal, if any.
fn size_quota(
    tx: &Transaction<'_>,
    new: &NewFile<'_>,
    size: u64,
    limits: &Limits,
) -> anyhow::Result<Option<PutOutcome>> {
    if limits.max_file_size.is_some_and(|max| size > max) {
        return Ok(Some(PutOutcome::Quota(
            "maximum allowed package type size exceeded",
        )));
    }
    if let Some(max) = limits.max_owner_size {
        let total: i64 = tx.query_row(
            "SELECT COALESCE(SUM(b.size), 0) FROM files f
             JOIN blobs b ON b.id = f.blob_id
             JOIN versions v ON v.id = f.version_id
             JOIN packages p ON p.id = v.package_id
             WHERE p.owner_id = ?1",
            [new.owner_id],
            |r| r.get(0),
        )?;
        if (total as u64).saturating_add(size) > max {
            return Ok(Some(PutOutcome::Quota(
                "maximum allowed package storage quota exceeded",
            )));
        }
    }
    Ok(None)
}

/// Deletes versions with their files; returns the SHA-256 of blobs that
/// lost their last reference (their rows are gone, the files must go).
fn delete_versions(tx: &Transaction<'_>, versions: &[i64]) -> anyhow::Result<Vec<String>> {
    let mut blobs = Vec::new();
    for &v in versions {
        let mut st = tx.prepare("DELETE FROM files WHERE version_id = ?1 RETURNING blob_id")?;
        let rows = st.query_map([v], |r| r.get::<_, i64>(0))?;
        for b in rows {
            blobs.push(b?);
        }
        tx.execute("DELETE FROM versions WHERE id = ?1", [v])?;
    }
    drop_unreferenced_blobs(tx, &blobs)
}

fn drop_unreferenced_blobs(tx: &Transaction<'_>, blobs: &[i64]) -> anyhow::Result<Vec<String>> {
    let mut dead = Vec::new();
    for &b in blobs {
        let sha: Option<String> = tx
            .query_row(
                "DELETE FROM blobs WHERE id = ?1 AND NOT EXISTS
                 (SELECT 1 FROM files WHERE blob_id = ?1) RETURNING sha256",
                [b],
                |r| r.get(0),
            )
            .optional()?;
        dead.extend(sha);
    }
    Ok(dead)
}

fn remove_file_quietly(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove file");
        }
    }
}
