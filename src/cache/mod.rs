//! The content cache on local disk. Published files never change, so a
//! downloaded file is stored once under its sha256 and served from disk
//! forever after (until evicted). Bounded by a byte budget with LRU
//! eviction (`lru` crate); downloads reserve their size before they start so
//! the bound holds with transfers in flight. The index is rebuilt from the
//! directory at start (least recently used = oldest mtime), so the cache
//! survives restarts. Files are 0600 in 0700 directories.
//!
//! Layout: `blobs/<sha256>` complete verified files, `partial/` downloads
//! in flight, `spool/` data written by applications before upload,
//! `trash/` evicted blobs waiting to be deleted. The last three are emptied
//! at start.
//!
//! Deleting a large file can take seconds (ext4 frees its blocks inside
//! `unlink`), so no caller waits for it: an evicted blob is renamed into
//! `trash/` (a metadata change, and its name is free again at once) and
//! the janitor thread deletes it.
//!
//! Crash consistency without an `fsync` per download (which would add
//! seconds to every cold read of a large file): a blob is trusted only in
//! the process that verified it. Blobs found on disk at start (which a
//! power loss, a disk error or another program may have truncated or
//! changed) are *unverified*: the first open after a restart hashes the
//! blob once ([`Cache::verify`], on a blocking thread) and drops it if it
//! does not match its name. Every open also checks the blob's length
//! against the size the registry lists.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use lru::LruCache;

/// The disk cache. Shared (`Arc`) by every open file.
#[derive(Debug)]
pub struct Cache {
    blobs: PathBuf,
    partial: PathBuf,
    spool: PathBuf,
    trash: PathBuf,
    capacity: u64,
    inner: Mutex<Inner>,
    /// Files for the janitor thread to delete.
    janitor: std::sync::mpsc::Sender<PathBuf>,
}

#[derive(Debug)]
struct Inner {
    /// sha256 → entry, most recently used first.
    lru: LruCache<String, Entry>,
    /// Bytes in `blobs/`.
    used: u64,
    /// Bytes promised to downloads in flight.
    reserved: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    size: u64,
    /// Hashed (or written from verified bytes) by this process.
    verified: bool,
}

/// What [`Cache::lookup`] found.
#[derive(Debug)]
pub enum Hit {
    /// A verified blob of the expected size, opened.
    File(File),
    /// A blob from before the restart: [`Cache::verify`] it first.
    Unverified,
    Miss,
}

/// Space promised to one download; given back on drop unless committed.
#[derive(Debug)]
pub struct Reservation {
    cache: Arc<Cache>,
    size: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut inner = self.cache.lock();
        inner.reserved = inner.reserved.saturating_sub(self.size);
    }
}

/// Whether a name is a sha256 in lower-case hex.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn private_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
}

fn empty_dir(path: &Path) -> io::Result<()> {
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

impl Cache {
    /// Opens (creating if needed) the cache in `dir` with a bound of
    /// `capacity` bytes, rebuilding the index from what is on disk and
    /// evicting down to the bound.
    pub fn open(dir: &Path, capacity: u64) -> io::Result<Arc<Cache>> {
        private_dir(dir)?;
        let (janitor, doomed) = std::sync::mpsc::channel::<PathBuf>();
        std::thread::Builder::new()
            .name("pkgfs-janitor".into())
            .spawn(move || {
                // Ends when the cache (the only sender) is dropped.
                for path in doomed {
                    if let Err(e) = fs::remove_file(&path) {
                        tracing::warn!(path = %path.display(), error = %e, "cannot delete a discarded cache file");
                    }
                }
            })?;
        let cache = Cache {
            blobs: dir.join("blobs"),
            partial: dir.join("partial"),
            spool: dir.join("spool"),
            trash: dir.join("trash"),
            janitor,
            capacity,
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                used: 0,
                reserved: 0,
            }),
        };
        for d in [&cache.blobs, &cache.partial, &cache.spool, &cache.trash] {
            private_dir(d)?;
        }
        empty_dir(&cache.partial)?;
        empty_dir(&cache.spool)?;
        empty_dir(&cache.trash)?;
        let mut found: Vec<(SystemTime, String, u64)> = Vec::new();
        for entry in fs::read_dir(&cache.blobs)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata()?;
            if !is_sha256(&name) || !meta.is_file() {
                tracing::warn!(path = %entry.path().display(), "removing stray file from cache");
                let _ = fs::remove_file(entry.path());
                continue;
            }
            found.push((meta.modified()?, name, meta.len()));
        }
        found.sort();
        {
            let mut inner = cache.lock();
            for (_, sha, size) in found {
                inner.used += size;
                inner.lru.put(
                    sha,
                    Entry {
                        size,
                        verified: false,
                    },
                );
            }
        }
        let cache = Arc::new(cache);
        let entries = cache.lock().lru.len();
        cache.evict_to(capacity);
        tracing::info!(
            dir = %dir.display(),
            entries,
            used = cache.used(),
            capacity,
            "cache opened"
        );
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes held in complete entries.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    /// Directory for write spools.
    pub fn spool_dir(&self) -> &Path {
        &self.spool
    }

    fn blob_path(&self, sha256: &str) -> PathBuf {
        self.blobs.join(sha256)
    }

    /// Opens the blob of `sha256` if it is verified and `size` bytes long,
    /// and marks it most recently used. Cheap: one open and one fstat.
    pub fn lookup(&self, sha256: &str, size: u64) -> Hit {
        if !is_sha256(sha256) {
            return Hit::Miss;
        }
        let entry = self.lock().lru.get(sha256).copied();
        match entry {
            None => Hit::Miss,
            Some(e) if !e.verified => Hit::Unverified,
            Some(e) if e.size != size => {
                tracing::warn!(
                    sha256,
                    cached = e.size,
                    listed = size,
                    "cache entry has another size than the registry lists; dropping it"
                );
                self.remove(sha256);
                Hit::Miss
            }
            Some(_) => match self.open_blob(sha256, size) {
                Ok(f) => Hit::File(f),
                Err(e) => {
                    tracing::warn!(sha256, error = %e, "cache entry unusable; dropping it");
                    self.remove(sha256);
                    Hit::Miss
                }
            },
        }
    }

    /// Hashes a blob found at start (blocking: run it off the runtime's
    /// workers) and opens it if it is intact; drops it otherwise.
    pub fn verify(&self, sha256: &str, size: u64) -> Option<File> {
        let checked = self.open_blob(sha256, size).and_then(|f| {
            let digest = sha256_file(&f)?;
            if digest == sha256 {
                Ok(f)
            } else {
                Err(io::Error::other(format!("its bytes hash to {digest}")))
            }
        });
        match checked {
            Ok(f) => {
                if let Some(e) = self.lock().lru.get_mut(sha256) {
                    e.verified = true;
                }
                tracing::debug!(sha256, "cache entry from an earlier run verified");
                Some(f)
            }
            Err(e) => {
                tracing::warn!(sha256, error = %e, "cache entry from an earlier run is damaged; dropping it");
                self.remove(sha256);
                None
            }
        }
    }

    /// Opens a blob, checking its length (a truncated or extended blob is
    /// never served).
    fn open_blob(&self, sha256: &str, size: u64) -> io::Result<File> {
        let f = File::open(self.blob_path(sha256))?;
        let len = f.metadata()?.len();
        if len != size {
            return Err(io::Error::other(format!(
                "blob is {len} bytes, expected {size}"
            )));
        }
        // mtime records recency for the index rebuilt at restart.
        let _ = f.set_modified(SystemTime::now());
        Ok(f)
    }

    /// Promises `size` bytes to a download, evicting least recently used
    /// entries as needed. `None` when the file is larger than the whole
    /// cache: it is then streamed through a temporary file and not kept.
    pub fn reserve(self: &Arc<Self>, size: u64) -> Option<Reservation> {
        if size > self.capacity {
            return None;
        }
        {
            let mut inner = self.lock();
            inner.reserved += size;
        }
        self.evict_to(self.capacity);
        Some(Reservation {
            cache: Arc::clone(self),
            size,
        })
    }

    /// Removes entries, oldest first, until used + reserved ≤ `target`.
    fn evict_to(&self, target: u64) {
        let mut victims = Vec::new();
        {
            let mut inner = self.lock();
            while inner.used + inner.reserved > target {
                let Some((sha, e)) = inner.lru.pop_lru() else {
                    break;
                };
                inner.used -= e.size;
                victims.push(sha);
            }
        }
        for sha in victims {
            self.discard_blob(&sha);
            tracing::debug!(sha256 = %sha, "evicted from cache");
        }
    }

    /// Takes a blob out of `blobs/` at once and leaves its deletion to the
    /// janitor. Open descriptors keep their data; new opens miss.
    fn discard_blob(&self, sha256: &str) {
        let doomed = self
            .trash
            .join(format!("{sha256}-{:016x}", rand::random::<u64>()));
        match fs::rename(self.blob_path(sha256), &doomed) {
            Ok(()) => self.delete_later(doomed),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(sha256 = %sha256, error = %e, "cannot remove a cache entry")
            }
        }
    }

    /// Deletes `path` (a blob taken out, a spool or download file given up)
    /// on the janitor thread: no caller waits for a large file's blocks to
    /// be freed.
    pub fn delete_later(&self, path: PathBuf) {
        if let Err(e) = self.janitor.send(path) {
            let _ = fs::remove_file(e.0);
        }
    }

    /// A new sparse file for a download in flight (0600, read-write).
    pub fn new_partial(&self) -> io::Result<(PathBuf, File)> {
        let tmp = tempfile::Builder::new()
            .prefix("dl-")
            .permissions(fs::Permissions::from_mode(0o600))
            .tempfile_in(&self.partial)?;
        let (file, path) = tmp.keep().map_err(|e| e.error)?;
        Ok((path, file))
    }

    /// A new spool file for application writes (0600, read-write).
    pub fn new_spool(&self) -> io::Result<(PathBuf, File)> {
        let path = self.spool.join(format!("w-{:016x}", rand::random::<u64>()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok((path, file))
    }

    /// Moves a complete, verified file into the cache under its sha256.
    /// With a reservation the space was already promised; without one (a
    /// published upload) room is made first. Files larger than the cache
    /// are deleted instead.
    pub fn commit(
        self: &Arc<Self>,
        path: &Path,
        sha256: &str,
        size: u64,
        reservation: Option<Reservation>,
    ) -> io::Result<()> {
        let reservation = match reservation {
            Some(r) => Some(r),
            None => self.reserve(size),
        };
        let Some(reservation) = reservation else {
            self.delete_later(path.to_path_buf());
            return Ok(());
        };
        let dest = self.blob_path(sha256);
        let known = self.lock().lru.get(sha256).is_some_and(|e| e.verified) && dest.exists();
        if known {
            // The same bytes are cached (and verified) already. Renaming over them would
            // free the old blob's blocks inside this call (seconds for a
            // large file on ext4); the redundant copy goes in the background.
            drop(reservation);
            self.delete_later(path.to_path_buf());
            return Ok(());
        }
        fs::rename(path, &dest)?;
        let mut inner = self.lock();
        let entry = Entry {
            size,
            verified: true,
        };
        if let Some(old) = inner.lru.put(sha256.to_string(), entry) {
            inner.used -= old.size;
        }
        inner.used += size;
        drop(inner);
        drop(reservation);
        Ok(())
    }

    /// Drops an entry (e.g. it no longer matches its sha256).
    pub fn remove(&self, sha256: &str) {
        let removed = {
            let mut inner = self.lock();
            let r = inner.lru.pop(sha256);
            if let Some(e) = r {
                inner.used -= e.size;
            }
            r.is_some()
        };
        if removed {
            self.discard_blob(sha256);
        }
    }
}

/// sha256 (lower-case hex) of a whole file, read with `pread`.
pub fn sha256_file(file: &File) -> io::Result<String> {
    use std::os::unix::fs::FileExt;
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n = file.read_at(&mut buf, off)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(hex::encode(h.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn put(cache: &Arc<Cache>, sha: &str, size: usize) {
        let r = cache.reserve(size as u64);
        let (path, mut f) = cache.new_partial().unwrap();
        f.write_all(&vec![7u8; size]).unwrap();
        cache.commit(&path, sha, size as u64, r).unwrap();
    }

    fn sha(n: u8) -> String {
        format!("{:0>64}", format!("{n:x}"))
    }

    #[test]
    fn evicts_least_recently_used_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 300).unwrap();
        put(&cache, &sha(1), 100);
        put(&cache, &sha(2), 100);
        put(&cache, &sha(3), 100);
        assert!(matches!(cache.lookup(&sha(1), 100), Hit::File(_))); // 1 is now most recent
        put(&cache, &sha(4), 100); // evicts 2
        assert!(matches!(cache.lookup(&sha(2), 100), Hit::Miss));
        assert!(matches!(cache.lookup(&sha(1), 100), Hit::File(_)));
        assert_eq!(cache.used(), 300);
        drop(cache);
        let cache = Cache::open(dir.path(), 200).unwrap();
        assert_eq!(cache.used(), 200);
    }

    /// Puts real content under its real sha256.
    fn put_real(cache: &Arc<Cache>, bytes: &[u8]) -> String {
        let (path, mut f) = cache.new_partial().unwrap();
        f.write_all(bytes).unwrap();
        let sha = sha256_file(&f).unwrap();
        cache.commit(&path, &sha, bytes.len() as u64, None).unwrap();
        sha
    }

    #[test]
    fn blobs_from_an_earlier_run_are_verified_once_and_damaged_ones_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 1 << 20).unwrap();
        let good = put_real(&cache, b"good bytes");
        let flipped = put_real(&cache, b"will be flipped");
        let cut = put_real(&cache, b"will be truncated");
        assert!(matches!(cache.lookup(&good, 10), Hit::File(_)));
        // The size the registry lists must match the blob's.
        assert!(matches!(cache.lookup(&good, 11), Hit::Miss));
        let good = put_real(&cache, b"good bytes");
        drop(cache);
        // What a power loss or a disk error leaves between two mounts.
        let blobs = dir.path().join("blobs");
        std::fs::write(blobs.join(&flipped), b"WILL be flipped").unwrap();
        std::fs::write(blobs.join(&cut), b"will be").unwrap();
        let cache = Cache::open(dir.path(), 1 << 20).unwrap();
        for (sha, size) in [(&good, 10), (&flipped, 15), (&cut, 17)] {
            assert!(matches!(cache.lookup(sha, size), Hit::Unverified), "{sha}");
        }
        assert!(cache.verify(&good, 10).is_some());
        assert!(matches!(cache.lookup(&good, 10), Hit::File(_)));
        assert!(cache.verify(&flipped, 15).is_none());
        assert!(cache.verify(&cut, 17).is_none());
        assert!(matches!(cache.lookup(&flipped, 15), Hit::Miss));
        assert!(!blobs.join(&flipped).exists() && !blobs.join(&cut).exists());
        assert_eq!(cache.used(), 10);
    }

    #[test]
    fn too_large_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 50).unwrap();
        assert!(cache.reserve(51).is_none());
        let (path, _f) = cache.new_partial().unwrap();
        cache.commit(&path, &sha(9), 51, None).unwrap();
        assert_eq!(cache.used(), 0);
        // Deleted by the janitor, soon.
        let t = std::time::Instant::now();
        while path.exists() && t.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!path.exists());
    }

    #[test]
    fn evicted_blobs_leave_their_name_at_once_and_the_disk_soon() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 20).unwrap();
        put(&cache, &sha(1), 10);
        put(&cache, &sha(2), 10);
        put(&cache, &sha(3), 10); // evicts sha(1)
        assert!(!dir.path().join("blobs").join(sha(1)).exists());
        let trash = dir.path().join("trash");
        let t = std::time::Instant::now();
        while fs::read_dir(&trash).unwrap().count() > 0
            && t.elapsed() < std::time::Duration::from_secs(5)
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(fs::read_dir(&trash).unwrap().count(), 0);
        assert!(dir.path().join("blobs").join(sha(3)).exists());
    }
}
