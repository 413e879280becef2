//! File handles: `open` (a cached blob, a shared download or a file being
//! written), `read`, `release`, and what the FUSE adapter may do with a
//! handle's file (passthrough, page cache). Its state: [`Handles`], and
//! the running downloads it shares (`Fs::fetches`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use super::error::{err, ErrorKind, FsError, FsResult};
use super::fetch::Fetch;
use super::locks::Ordered;
use super::tree::{Ino, Kind, Node};
use super::{Fs, Handle, Opener};
use crate::cache::Hit;

/// The open file and directory handles, by number.
pub(super) struct Handles {
    pub(super) table: Ordered<HashMap<u64, Arc<Handle>>>,
    pub(super) next_fh: AtomicU64,
}

impl Handles {
    pub(super) fn new() -> Handles {
        Handles {
            table: Ordered::default(),
            next_fh: AtomicU64::new(1),
        }
    }
}

impl Fs {
    pub(super) fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.handles.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.table.lock().insert(fh, Arc::new(h));
        fh
    }

    pub(super) fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.handles
            .table
            .lock()
            .get(&fh)
            .cloned()
            .ok_or_else(|| err!(BadHandle, "unknown handle {fh}"))
    }

    /// Closes a file or directory handle. The last handle of a file being
    /// written may publish it (see `write`).
    pub async fn release(&self, fh: u64) {
        let handle = self.handles.table.lock().remove(&fh);
        let writer = match handle.as_deref() {
            Some(Handle::Write(w, _)) => Some(Arc::clone(w)),
            _ => None,
        };
        drop(handle);
        if let Some(w) = writer {
            self.release_writer(w).await;
        }
    }

    /// Opens a published file for reading. Returns at once: no data is
    /// fetched until the first read.
    /// `pid` is the calling thread: only a handle on a file being written
    /// notes its process (see `Opener`), so reads pay no /proc lookup.
    pub async fn open(&self, ino: Ino, write: bool, pid: u32) -> FsResult<u64> {
        let node = self.node(ino)?;
        if node.kind.is_dir() {
            return Err(FsError::new(ErrorKind::IsADirectory, node.path()));
        }
        if node.local {
            if let Some(w) = self.writer_of(ino) {
                w.opened();
                return Ok(self.add_handle(Handle::Write(w, Opener::of(pid))));
            }
        }
        if write {
            let kind = if self.config.read_only {
                ErrorKind::ReadOnly
            } else {
                ErrorKind::Exists
            };
            return Err(FsError::new(
                kind,
                format!("{}: published files cannot be changed", node.path()),
            ));
        }
        // Never an empty or unchecked file for a listing without a valid
        // size and sha256: the listing is asked again, then EIO.
        let node = if node.sha256.is_empty() {
            self.relisted(&node).await?
        } else {
            node
        };
        if node.size == 0 {
            // The listing checks guarantee the empty file's own hash.
            return Ok(self.add_handle(Handle::Local(None)));
        }
        let cached = match self.cache.lookup(&node.sha256, node.size) {
            Hit::File(f) => Some(f),
            Hit::Miss => None,
            Hit::Unverified => {
                // Kept from an earlier run: hashed once before it is served.
                let (cache, sha, size) = (Arc::clone(&self.cache), node.sha256.clone(), node.size);
                tokio::task::spawn_blocking(move || cache.verify(&sha, size))
                    .await
                    .ok()
                    .flatten()
            }
        };
        if let Some(f) = cached {
            return Ok(self.add_handle(Handle::Local(Some(f))));
        }
        let fetch = self.fetch_for(&node).await?;
        Ok(self.add_handle(Handle::Remote(fetch)))
    }

    /// A file whose sha256 is not known yet (published here, listing not
    /// answered): list its version again.
    async fn relisted(&self, node: &Node) -> FsResult<Node> {
        let parent = self.node(node.parent)?;
        self.tree.lock().invalidate(parent.ino);
        self.ensure_listing(&parent).await?;
        let fresh = self.tree.lock().child(parent.ino, &node.file).cloned();
        fresh
            .filter(|n| crate::cache::is_sha256(&n.sha256))
            .ok_or_else(|| {
                err!(Io, "{}: the registry lists no valid size and sha256 for this file; it cannot be read safely",
                    node.path())
            })
    }

    /// Whether the kernel may keep its page cache of this handle's file
    /// across opens: not for a download in flight, whose pages are not
    /// verified yet (a download that fails its sha256 check must not
    /// leave wrong bytes in the page cache for the next open to see).
    pub fn keep_page_cache(&self, fh: u64) -> bool {
        !matches!(self.handle(fh).as_deref(), Ok(Handle::Remote(_)))
    }

    /// The verified cache file behind read handle `fh` of file `ino`, and
    /// its sha256: what the kernel may read directly (FUSE passthrough),
    /// bypassing the daemon. `None` for downloads, empty and local files.
    pub fn verified_file(&self, fh: u64, ino: Ino) -> Option<(std::fs::File, String)> {
        let handle = self.handle(fh).ok()?;
        let Handle::Local(Some(file)) = &*handle else {
            return None;
        };
        let sha = self.content_id(ino)?;
        Some((file.try_clone().ok()?, sha))
    }

    /// The sha256 of published file `ino` (`None` for directories and
    /// files not published yet): its content, which never changes.
    pub fn content_id(&self, ino: Ino) -> Option<String> {
        self.tree
            .lock()
            .get(ino)
            .filter(|n| n.kind == Kind::File && !n.local && !n.sha256.is_empty())
            .map(|n| n.sha256.clone())
    }

    /// The shared download of a file, created on first use. Creating one
    /// reserves cache space (which may evict) and creates its file: disk
    /// work, done on a blocking thread with no lock held.
    async fn fetch_for(&self, node: &Node) -> FsResult<Arc<Fetch>> {
        let shared = |fetches: &mut HashMap<String, Weak<Fetch>>| {
            fetches.retain(|_, w| w.strong_count() > 0);
            fetches
                .get(&node.sha256)
                .and_then(Weak::upgrade)
                .filter(|f| !f.is_bad())
        };
        if let Some(f) = shared(&mut self.fetches.lock()) {
            return Ok(f);
        }
        let (client, cache) = (Arc::clone(&self.client), Arc::clone(&self.cache));
        let (fref, size, sha) = (node.file_ref(), node.size, node.sha256.clone());
        let prefetch = self.config.prefetch_max;
        let f = tokio::task::spawn_blocking(move || {
            Fetch::new(client, cache, fref, size, sha, prefetch)
        })
        .await
        .map_err(|e| err!(Io, "starting a download: {e}"))??;
        let mut fetches = self.fetches.lock();
        // Another open may have started the same download meanwhile.
        if let Some(other) = shared(&mut fetches) {
            return Ok(other);
        }
        fetches.insert(node.sha256.clone(), Arc::downgrade(&f));
        Ok(f)
    }

    /// Whether `fh` is a file being written (only those do work at close).
    pub fn is_write_handle(&self, fh: u64) -> bool {
        matches!(self.handle(fh).as_deref(), Ok(Handle::Write(..)))
    }

    /// A read on a local handle (cache or empty file), if it is one:
    /// fast enough to run on the calling thread.
    pub fn read_local(&self, fh: u64, offset: u64, size: u32) -> Option<FsResult<Vec<u8>>> {
        let handle = self.handle(fh).ok()?;
        let Handle::Local(file) = &*handle else {
            return None;
        };
        let Some(file) = file else {
            return Some(Ok(Vec::new()));
        };
        Some(pread(file, offset, size))
    }

    /// Reads from an open file.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        if let Some(r) = self.read_local(fh, offset, size) {
            return r;
        }
        match &*self.handle(fh)? {
            Handle::Remote(fetch) => fetch.read(offset, size).await,
            Handle::Write(w, _) => w.read(offset, size),
            _ => Err(FsError::new(ErrorKind::BadHandle, "not a file handle")),
        }
    }
}

/// Reads up to `size` bytes at `offset` (short at EOF).
pub(super) fn pread(file: &std::fs::File, offset: u64, size: u32) -> FsResult<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; size as usize];
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FsError::io(e, "read cached file")),
        }
    }
    buf.truncate(done);
    Ok(buf)
}
