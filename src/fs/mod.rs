//! The filesystem logic, as plain async Rust that knows nothing of FUSE:
//! the tree `<owner>/<package>/<version>/<file>` built from the registry's
//! listings (cached for `metadata_ttl`), attributes, directory handles and
//! file handles. `crate::fuse` only decodes kernel requests, calls these
//! methods on the tokio runtime, and replies.
//!
//! By concern: `listing` (names, listings and their TTL, probes, directory
//! handles), `handles` (opening and reading files), `write` (creating,
//! writing, deleting, renaming), `writer` (the state of a file being
//! written), `publish` (uploading it), `fetch` (shared downloads into the
//! cache), `tree` (the inode table), `error` (the errno table).
//!
//! Threads. FUSE threads never wait on the network (`crate::fuse` answers
//! cached requests inline and hands the rest to the runtime); runtime
//! workers never block on disk: hashing, download-file creation with its
//! cache reservation (which may evict), and verifying blobs run on
//! blocking threads, and deleting files is the cache janitor's job
//! (`Cache::delete_later`). Positioned writes into the cache file and the
//! spool, and renames into the cache, are short and stay inline.
//!
//! Locks: the order, and its debug-build check, are in `locks`.

mod error;
mod fetch;
mod handles;
mod listing;
mod locks;
mod process;
mod publish;
mod spool;
mod tree;
mod upstream;
mod write;
mod writer;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use error::err;
pub use error::{errno_name, ErrorKind, FsError, FsResult};
pub use tree::{Ino, Kind, ROOT_INO};

use crate::cache::Cache;
use crate::registry::PackageVersion as Package;
use crate::registry::Registry;
use fetch::Fetch;
use handles::Handles;
use listing::Listings;
use locks::{Ordered, Rank};
pub use process::Opener;
use tree::{Node, Tree};
use writer::{Writer, Writers};

/// Settings of the filesystem layer.
#[derive(Debug, Clone)]
pub struct FsConfig {
    pub uid: u32,
    pub gid: u32,
    pub read_only: bool,
    /// How long listings are trusted.
    pub metadata_ttl: Duration,
    /// Owners always shown in the root (`--owner`).
    pub owners: Vec<String>,
    /// Upper bound of a stream's read-ahead window.
    pub prefetch_max: u64,
    /// Stream uploads (chunked) while files are written sequentially,
    /// instead of one PUT with `Content-Length` at close.
    pub stream_uploads: bool,
}

impl Default for FsConfig {
    /// The settings of `pkgfs mount` without options: files owned by the
    /// current user, listings trusted 60 s, a 64 MiB read-ahead budget,
    /// uploads streamed while written.
    fn default() -> FsConfig {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        FsConfig {
            uid,
            gid,
            read_only: false,
            metadata_ttl: Duration::from_secs(60),
            owners: Vec::new(),
            prefetch_max: 64 * 1024 * 1024,
            stream_uploads: true,
        }
    }
}

/// Tells the kernel to drop a cached name: for entries that vanish other
/// than through the syscall being answered (a failed upload, a version
/// that disappeared with its last file). Implemented by the FUSE adapter.
pub trait Invalidate: Send + Sync {
    fn entry(&self, parent: Ino, name: &str);
}

/// Attributes of one inode, FUSE-agnostic.
#[derive(Debug, Clone, Copy)]
pub struct Attr {
    pub ino: Ino,
    pub is_dir: bool,
    pub size: u64,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
}

/// One directory entry for readdir.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: Ino,
    pub is_dir: bool,
    pub name: String,
}

/// An open directory handle.
#[derive(Debug, Clone, Copy)]
pub struct OpenDir {
    pub fh: u64,
    /// The entries are the same as at the previous open of this
    /// directory: a listing the kernel cached from it is still right.
    pub unchanged: bool,
}

/// Filesystem totals for statfs.
#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub block_size: u32,
    pub blocks: u64,
    pub blocks_free: u64,
    pub files: u64,
}

enum Handle {
    Dir(Vec<DirEntry>),
    /// A file served from the cache, or empty.
    Local(Option<std::fs::File>),
    Remote(Arc<Fetch>),
    /// A file being written (spooled locally until published), and the
    /// process that opened this handle (whose `close()` publishes it).
    Write(Arc<Writer>, Opener),
}

/// The mounted filesystem: the shared inode table, and one part per
/// concern, each owning its state (the lock order is in `locks`).
pub struct Fs {
    client: Arc<dyn Registry>,
    cache: Arc<Cache>,
    config: FsConfig,
    /// The inode table every part reads: names, kinds, sizes, hashes.
    tree: Ordered<Tree>,
    /// What the namespace remembers besides the tree (`listing`).
    listings: Listings,
    /// Open file and directory handles (`handles`).
    handles: Handles,
    /// Downloads in flight, by blob, shared by the handles reading them
    /// (`fetch`).
    fetches: Ordered<HashMap<String, Weak<Fetch>>>,
    /// Files being written and the first-upload locks (`writer`).
    writers: Writers,
    invalidator: std::sync::OnceLock<Box<dyn Invalidate>>,
    /// Where streamed uploads run (they start from a FUSE thread's write).
    rt: tokio::runtime::Handle,
}

/// What a syscall may take beyond `--timeout`, for local work around the
/// requests (see [`Fs::bounded`]).
const SYSCALL_MARGIN: Duration = Duration::from_millis(500);

/// `created_at` (RFC 3339) as a time; the epoch if unparsable.
fn parse_time(s: &str) -> SystemTime {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(SystemTime::from)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

impl Fs {
    /// `rt` runs the tasks that start outside of it (streamed uploads,
    /// which begin in a write answered on a FUSE thread).
    pub fn new(
        client: Arc<dyn Registry>,
        cache: Arc<Cache>,
        config: FsConfig,
        rt: tokio::runtime::Handle,
    ) -> Fs {
        Fs {
            client,
            cache,
            config,
            tree: Ordered::new(Rank::Tree, Tree::new(SystemTime::now())),
            listings: Listings::new(),
            handles: Handles::new(),
            fetches: Ordered::new(Rank::Fetches, HashMap::new()),
            writers: Writers::new(),
            invalidator: std::sync::OnceLock::new(),
            rt,
        }
    }

    /// Connects the kernel-cache invalidation (once, after mounting).
    pub fn set_invalidator(&self, i: Box<dyn Invalidate>) {
        let _ = self.invalidator.set(i);
    }

    fn forget_entry(&self, parent: Ino, name: &str) {
        if let Some(i) = self.invalidator.get() {
            i.entry(parent, name);
        }
    }

    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    /// Runs an operation that may wait on the network within the syscall
    /// deadline: `--timeout` plus a margin for local work. Each request
    /// has that timeout already, but an operation may make several (a
    /// lookup that probes, a retried listing), and a registry may trickle
    /// an answer: past the deadline the operation is dropped (its requests
    /// cancelled) and the caller gets EIO. Not for the publishing
    /// operations (close, fsync, rename), whose uploads take as long as
    /// their data needs and fail on stalls instead.
    pub async fn bounded<T>(
        &self,
        op: &str,
        f: impl std::future::Future<Output = FsResult<T>>,
    ) -> FsResult<T> {
        let limit = self.client.timeout() + SYSCALL_MARGIN;
        match tokio::time::timeout(limit, f).await {
            Ok(r) => r,
            Err(_) => Err(err!(
                Io,
                "{op}: the registry did not answer completely within {} s",
                self.client.timeout().as_secs_f32()
            )),
        }
    }

    /// Records who the token belongs to (checked at mount time).
    pub fn set_login(&self, login: Option<String>) {
        *self.listings.login.lock() = login;
    }

    fn attr_of(&self, n: &Node) -> Attr {
        let writable = !self.config.read_only;
        let is_dir = n.kind.is_dir();
        Attr {
            ino: n.ino,
            is_dir,
            size: if is_dir { 0 } else { n.size },
            perm: match (is_dir, writable) {
                (true, true) => 0o755,
                (true, false) => 0o555,
                (false, true) => 0o644,
                (false, false) => 0o444,
            },
            nlink: if is_dir { 2 } else { 1 },
            uid: self.config.uid,
            gid: self.config.gid,
            mtime: n.mtime,
        }
    }

    fn node(&self, ino: Ino) -> FsResult<Node> {
        self.tree
            .lock()
            .get(ino)
            .cloned()
            .ok_or_else(|| FsError::not_found(format!("inode {ino} is unknown")))
    }

    /// The kernel was given an entry for `ino`: it may use the inode until
    /// it forgets it (`forget`), even after the name is gone.
    pub fn remember(&self, ino: Ino) {
        self.tree.lock().looked_up(ino);
    }

    /// The kernel dropped `n` references to `ino`: a node no directory
    /// lists any more goes, with the per-directory state of what went.
    pub fn forget(&self, ino: Ino, n: u64) {
        let reaped = {
            let mut tree = self.tree.lock();
            tree.forget(ino, n);
            tree.take_reaped()
        };
        if !reaped.is_empty() {
            let mut seen = self.listings.dir_seen.lock();
            for ino in &reaped {
                seen.remove(ino);
            }
            drop(seen);
            let mut locks = self.listings.fetching.lock();
            for ino in &reaped {
                locks.remove(ino);
            }
        }
    }

    /// Attributes of a known inode.
    pub fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        Ok(self.attr_of(&self.node(ino)?))
    }

    /// Totals for `df`: the cache is the only local storage.
    pub fn statfs(&self) -> StatFs {
        let bs = 4096u64;
        let cap = self.cache.capacity();
        StatFs {
            block_size: bs as u32,
            blocks: cap / bs,
            blocks_free: cap.saturating_sub(self.cache.used()) / bs,
            files: self.tree.lock().len() as u64,
        }
    }
}
