//! The filesystem logic, as plain async Rust that knows nothing of FUSE:
//! the tree `<owner>/<package>/<version>/<file>` built from the registry's
//! listings (cached for `metadata_ttl`), attributes, directory handles and
//! file handles. `crate::fuse` only decodes kernel requests, calls these
//! methods on the tokio runtime, and replies.
//!
//! Threads. FUSE threads never wait on the network (`crate::fuse` answers
//! cached requests inline and hands the rest to the runtime); runtime
//! workers never block on disk: hashing, download-file creation with its
//! cache reservation (which may evict), and verifying blobs run on
//! blocking threads, and deleting files is the cache janitor's job
//! (`Cache::delete_later`). Positioned writes into the cache file and the
//! spool, and renames into the cache, are short and stay inline.
//!
//! Locks. The async locks (`listing_locks` per directory, `version_locks`
//! per new version, `Writer::publishing`) may be held across requests and
//! are always taken before any std mutex. A std mutex is never held
//! across an `.await`, disk I/O or eviction, and two are nested only in
//! this order: `tree` → `probed`; `tree` → `writers` → a writer's `state`.
//! Every other std mutex (`handles`, `dir_seen`, `fetches`, `login`, a
//! fetch's state, the cache index) is taken alone.

mod error;
mod fetch;
mod process;
mod spool;
mod tree;
mod upstream;
mod write;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use error::err;
pub use error::{errno_name, ErrorKind, FsError, FsResult};
pub use tree::{Ino, Kind, ROOT_INO};

use crate::cache::{Cache, Hit};
use crate::protocol::validate::client_version_ok;
use crate::registry::PackageVersion as Package;
use crate::registry::{self, Registry};
use fetch::Fetch;
pub use process::Opener;
use tree::{ChildSpec, Node, Tree};
use write::Writer;

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

/// Remembered probes beyond which expired absent names are pruned.
const MAX_PROBED: usize = 4096;

/// The mounted filesystem.
pub struct Fs {
    client: Arc<dyn Registry>,
    cache: Arc<Cache>,
    config: FsConfig,
    tree: Mutex<Tree>,
    /// One listing fetch per directory at a time.
    listing_locks: Mutex<HashMap<Ino, Arc<tokio::sync::Mutex<()>>>>,
    /// Owners found by lookup (not in the root listing): name and when.
    probed: Mutex<HashMap<String, (Instant, bool)>>,
    /// Login of the token's user, if any.
    login: Mutex<Option<String>>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    /// Per directory, a fingerprint of the entries the last `opendir`
    /// gave out: while it holds, the kernel's cached listing is current.
    dir_seen: Mutex<HashMap<Ino, u64>>,
    next_fh: AtomicU64,
    fetches: Mutex<HashMap<String, Weak<Fetch>>>,
    /// Files being written, by inode.
    writers: Mutex<HashMap<Ino, Arc<Writer>>>,
    /// Serialises the first uploads into a new version.
    version_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    invalidator: std::sync::OnceLock<Box<dyn Invalidate>>,
    /// Where streamed uploads run (they start from a FUSE thread's write).
    rt: tokio::runtime::Handle,
}

/// What a syscall may take beyond `--timeout`, for local work around the
/// requests (see [`Fs::bounded`]).
const SYSCALL_MARGIN: Duration = Duration::from_millis(500);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

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
            tree: Mutex::new(Tree::new(SystemTime::now())),
            listing_locks: Mutex::new(HashMap::new()),
            probed: Mutex::new(HashMap::new()),
            login: Mutex::new(None),
            handles: Mutex::new(HashMap::new()),
            dir_seen: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            fetches: Mutex::new(HashMap::new()),
            writers: Mutex::new(HashMap::new()),
            version_locks: Mutex::new(HashMap::new()),
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
        *lock(&self.login) = login;
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
        lock(&self.tree)
            .get(ino)
            .cloned()
            .ok_or_else(|| FsError::not_found(format!("inode {ino} is unknown")))
    }

    /// The kernel was given an entry for `ino`: it may use the inode until
    /// it forgets it (`forget`), even after the name is gone.
    pub fn remember(&self, ino: Ino) {
        lock(&self.tree).looked_up(ino);
    }

    /// The kernel dropped `n` references to `ino`: a node no directory
    /// lists any more goes, with the per-directory state of what went.
    pub fn forget(&self, ino: Ino, n: u64) {
        let reaped = {
            let mut tree = lock(&self.tree);
            tree.forget(ino, n);
            tree.take_reaped()
        };
        if !reaped.is_empty() {
            let mut seen = lock(&self.dir_seen);
            for ino in &reaped {
                seen.remove(ino);
            }
            drop(seen);
            let mut locks = lock(&self.listing_locks);
            for ino in &reaped {
                locks.remove(ino);
            }
        }
    }

    /// Attributes of a known inode.
    pub fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        Ok(self.attr_of(&self.node(ino)?))
    }

    /// Finds `name` in directory `parent`.
    pub async fn lookup(&self, parent: Ino, name: &str) -> FsResult<Attr> {
        let pnode = self.lookup_parent(parent, name)?;
        let cached = lock(&self.tree).is_fresh(parent, self.config.metadata_ttl);
        if pnode.kind == Kind::Owner && !pnode.local && !cached {
            return self.lookup_package(&pnode, name).await;
        }
        if pnode.kind == Kind::Root && !cached {
            // The token's user and --owner names are in the root listing
            // by definition: no need to fetch it to resolve them.
            let login = lock(&self.login).clone();
            let known = login
                .iter()
                .chain(&self.config.owners)
                .find(|o| o.eq_ignore_ascii_case(name));
            if let Some(attr) = known.and_then(|o| self.add_owner(o, pnode.mtime)) {
                return Ok(attr);
            }
        }
        self.ensure_listing(&pnode).await?;
        if let Some(n) = lock(&self.tree).child(parent, name) {
            return Ok(self.attr_of(n));
        }
        if pnode.kind == Kind::Root && self.probe_owner(name).await? {
            if let Some(attr) = self.add_owner(name, pnode.mtime) {
                return Ok(attr);
            }
        }
        Err(FsError::not_found(format!("{}/{name}", pnode.path())))
    }

    /// `lookup` without waiting: `None` unless the answer is a child of a
    /// fresh listing (then call [`Fs::lookup`]). `ls -l` of a listed
    /// directory looks up every entry: these are answered on the spot.
    pub fn lookup_now(&self, parent: Ino, name: &str) -> Option<FsResult<Attr>> {
        let pnode = match self.lookup_parent(parent, name) {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        let tree = lock(&self.tree);
        if !tree.is_fresh(pnode.ino, self.config.metadata_ttl) {
            return None;
        }
        tree.child(parent, name).map(|n| Ok(self.attr_of(n)))
    }

    /// The directory `parent`, if `name` may be looked up in it.
    fn lookup_parent(&self, parent: Ino, name: &str) -> FsResult<Node> {
        if name.len() > crate::protocol::MAX_COMPONENT_LEN {
            return Err(FsError::new(
                ErrorKind::NameTooLong,
                "name longer than 255 bytes",
            ));
        }
        let pnode = self.node(parent)?;
        if !pnode.kind.is_dir() {
            return Err(FsError::new(ErrorKind::NotADirectory, pnode.path()));
        }
        if !name_ok_for(pnode.kind, name) {
            return Err(FsError::not_found(format!(
                "{}/{name}: not a valid name",
                pnode.path()
            )));
        }
        Ok(pnode)
    }

    /// Adds an owner known to exist to the root (kept if already there).
    fn add_owner(&self, name: &str, mtime: SystemTime) -> Option<Attr> {
        let spec = ChildSpec {
            name: name.to_string(),
            mtime,
            size: 0,
            sha256: String::new(),
        };
        let mut tree = lock(&self.tree);
        let ino = tree.add_child(ROOT_INO, spec, false)?;
        tree.get(ino).map(|n| self.attr_of(n))
    }

    /// A package in an owner whose listing is not cached: one versions
    /// request, instead of the owner's whole listing (dozens of pages for a
    /// busy owner) just to resolve a path. `readdir` of the owner still
    /// fetches the whole listing. Absent names are remembered briefly.
    async fn lookup_package(&self, owner: &Node, name: &str) -> FsResult<Attr> {
        let ttl = self.config.metadata_ttl;
        {
            let tree = lock(&self.tree);
            if let Some(n) = tree.child(owner.ino, name) {
                if n.local || tree.is_fresh(n.ino, ttl) {
                    return Ok(self.attr_of(n));
                }
            }
        }
        let missing = || FsError::not_found(format!("{}/{name}", owner.path()));
        let key = format!("{}\0{name}", owner.owner).to_lowercase();
        if let Some((at, _)) = lock(&self.probed).get(&key).copied() {
            if at.elapsed() < self.negative_ttl() {
                return Err(missing());
            }
        }
        let versions = match self.client.list_versions(&owner.owner, name).await {
            Ok(v) => v,
            Err(registry::Error::NotFound(_)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut tree = lock(&self.tree);
        let Some(oldest) = versions.last() else {
            if tree.child(owner.ino, name).is_some_and(|n| !n.local) {
                tree.remove_child(owner.ino, name); // deleted meanwhile
            }
            self.note_probe(key, false);
            return Err(missing());
        };
        lock(&self.probed).remove(&key);
        // As in the owner listing: the spelling of the first upload, the
        // time of the newest version.
        let mtime = versions
            .iter()
            .map(|p| parse_time(&p.created_at))
            .max()
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let spec = ChildSpec {
            name: oldest.name.clone(),
            mtime,
            size: 0,
            sha256: String::new(),
        };
        let ino = tree.add_child(owner.ino, spec, false).ok_or_else(missing)?;
        tree.set_children(ino, version_specs(&versions));
        let node = tree.get_mut(ino).ok_or_else(missing)?;
        node.mtime = mtime;
        Ok(self.attr_of(node))
    }

    /// Whether an owner not in the root listing exists (autofs-style),
    /// remembered for the metadata TTL (negative answers briefly).
    async fn probe_owner(&self, name: &str) -> FsResult<bool> {
        let key = name.to_lowercase();
        if let Some((at, exists)) = lock(&self.probed).get(&key).copied() {
            let ttl = if exists {
                self.config.metadata_ttl
            } else {
                self.negative_ttl()
            };
            if at.elapsed() < ttl {
                return Ok(exists);
            }
        }
        let exists = self.client.owner_exists(name).await?;
        self.note_probe(key, exists);
        Ok(exists)
    }

    /// Remembers a probe's answer. Absent names expire after the negative
    /// TTL and are pruned once there are many of them: a build probing
    /// ever new names must not grow the daemon.
    fn note_probe(&self, key: String, exists: bool) {
        let mut probed = lock(&self.probed);
        if probed.len() >= MAX_PROBED {
            let ttl = self.negative_ttl();
            probed.retain(|_, (at, exists)| *exists || at.elapsed() < ttl);
        }
        probed.insert(key, (Instant::now(), exists));
    }

    fn negative_ttl(&self) -> Duration {
        self.config.metadata_ttl.min(Duration::from_secs(5))
    }

    fn listing_lock(&self, ino: Ino) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.listing_locks).entry(ino).or_default().clone()
    }

    /// Fetches a directory's listing unless a fresh one is cached.
    async fn ensure_listing(&self, dir: &Node) -> FsResult<()> {
        let ttl = self.config.metadata_ttl;
        if lock(&self.tree).is_fresh(dir.ino, ttl) {
            return Ok(());
        }
        let guard = self.listing_lock(dir.ino);
        let _held = guard.lock().await;
        if lock(&self.tree).is_fresh(dir.ino, ttl) {
            return Ok(()); // fetched while we waited
        }
        if dir.local {
            return Ok(()); // a placeholder: nothing on the registry yet
        }
        match dir.kind {
            Kind::Root => {
                let specs = self.root_listing(dir.mtime).await?;
                lock(&self.tree).set_children(ROOT_INO, specs);
            }
            Kind::Owner => {
                let packages = self.client.list_owner_packages(&dir.owner).await?;
                self.apply_owner_listing(dir.ino, packages);
            }
            Kind::Package => {
                let versions = match self.client.list_versions(&dir.owner, &dir.name).await {
                    Ok(v) => v,
                    Err(registry::Error::NotFound(_)) => Vec::new(),
                    Err(e) => return Err(e.into()),
                };
                lock(&self.tree).set_children(dir.ino, version_specs(&versions));
            }
            Kind::Version => {
                let files = match self
                    .client
                    .list_files(&dir.owner, &dir.name, &dir.version)
                    .await
                {
                    Ok(f) => f,
                    Err(registry::Error::NotFound(_)) => Vec::new(),
                    Err(e) => return Err(e.into()),
                };
                // A file without a trustworthy size and sha256 is listed,
                // sha256-less: opening it fails with EIO (see `open`).
                let specs = files
                    .into_iter()
                    .map(|f| {
                        let (size, sha256) = match (f.size, f.sha256) {
                            (Some(size), Some(sha)) => (size, sha),
                            _ => (0, String::new()),
                        };
                        ChildSpec {
                            name: f.name,
                            mtime: dir.mtime,
                            size,
                            sha256,
                        }
                    })
                    .collect();
                lock(&self.tree).set_children(dir.ino, specs);
            }
            Kind::File => {}
        }
        Ok(())
    }

    /// Root: the token's user, their organisations, `--owner` names and
    /// owners found by lookup.
    async fn root_listing(&self, mtime: SystemTime) -> FsResult<Vec<ChildSpec>> {
        let mut names: Vec<String> = Vec::new();
        let login = lock(&self.login).clone();
        if let Some(login) = login {
            names.push(login);
            match self.client.user_orgs().await {
                Ok(orgs) => names.extend(orgs),
                Err(e @ (registry::Error::Forbidden(_) | registry::Error::Unauthorized(_))) => {
                    tracing::warn!(error = %e, "cannot list organisations (token scope?); showing the user and --owner only")
                }
                Err(e) => return Err(e.into()),
            }
        }
        names.extend(self.config.owners.iter().cloned());
        let probed: Vec<String> = {
            let tree = lock(&self.tree);
            tree.children(ROOT_INO)
                .into_iter()
                .map(|(_, _, n)| n)
                .filter(|n| {
                    lock(&self.probed)
                        .get(&n.to_lowercase())
                        .is_some_and(|p| p.1)
                })
                .collect()
        };
        names.extend(probed);
        names.retain(|n| {
            let ok = name_ok_for(Kind::Root, n);
            if !ok {
                registry::log_once("owner", n, "not a valid user or organisation name");
            }
            ok
        });
        Ok(names
            .into_iter()
            .map(|name| ChildSpec {
                name,
                mtime,
                size: 0,
                sha256: String::new(),
            })
            .collect())
    }

    /// The owner listing has every version of every package: fill the
    /// package directories too, so `ls -R` costs no further listing.
    fn apply_owner_listing(&self, owner_ino: Ino, packages: Vec<Package>) {
        let mut by_name: HashMap<String, Vec<Package>> = HashMap::new();
        let mut order: Vec<String> = Vec::new();
        for p in packages {
            if !name_ok_for(Kind::Owner, &p.name) {
                registry::log_once("package", &p.name, "not a valid package name");
                continue;
            }
            if !client_version_ok(&p.version) {
                registry::log_once(
                    "version",
                    &p.version,
                    "not a version that can be a directory name",
                );
                continue;
            }
            let key = p.name.to_lowercase();
            if !by_name.contains_key(&key) {
                order.push(key.clone());
            }
            by_name.entry(key).or_default().push(p);
        }
        let mut tree = lock(&self.tree);
        let specs = order
            .iter()
            .map(|key| {
                let versions = &by_name[key];
                // Stored spelling: that of the oldest version (first upload).
                let name = versions.last().map(|p| p.name.clone()).unwrap_or_default();
                let mtime = versions
                    .iter()
                    .map(|p| parse_time(&p.created_at))
                    .max()
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                ChildSpec {
                    name,
                    mtime,
                    size: 0,
                    sha256: String::new(),
                }
            })
            .collect();
        tree.set_children(owner_ino, specs);
        for key in order {
            if let Some(pkg) = tree.child(owner_ino, &key).map(|n| n.ino) {
                tree.set_children(pkg, version_specs(&by_name[&key]));
            }
        }
    }

    /// Opens a directory: lists it (if stale) and snapshots the entries so
    /// readdir offsets stay stable.
    pub async fn opendir(&self, ino: Ino) -> FsResult<OpenDir> {
        let node = self.dir_node(ino)?;
        self.ensure_listing(&node).await?;
        Ok(self.open_listed_dir(ino))
    }

    /// `opendir` without waiting: `None` when the listing must be fetched
    /// first (then call [`Fs::opendir`]).
    pub fn opendir_now(&self, ino: Ino) -> Option<FsResult<OpenDir>> {
        let node = match self.dir_node(ino) {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        let fresh = lock(&self.tree).is_fresh(node.ino, self.config.metadata_ttl);
        fresh.then(|| Ok(self.open_listed_dir(ino)))
    }

    fn dir_node(&self, ino: Ino) -> FsResult<Node> {
        let node = self.node(ino)?;
        if !node.kind.is_dir() {
            return Err(FsError::new(ErrorKind::NotADirectory, node.path()));
        }
        Ok(node)
    }

    fn open_listed_dir(&self, ino: Ino) -> OpenDir {
        let entries: Vec<DirEntry> = lock(&self.tree)
            .children(ino)
            .into_iter()
            .map(|(ino, kind, name)| DirEntry {
                ino,
                is_dir: kind.is_dir(),
                name,
            })
            .collect();
        let print = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            for e in &entries {
                (e.ino, e.is_dir, &e.name).hash(&mut h);
            }
            h.finish()
        };
        let unchanged = lock(&self.dir_seen).insert(ino, print) == Some(print);
        OpenDir {
            fh: self.add_handle(Handle::Dir(entries)),
            unchanged,
        }
    }

    /// Entries of an open directory from `offset` on (`.` and `..` first).
    pub fn readdir(&self, fh: u64, ino: Ino, offset: u64) -> FsResult<Vec<(u64, DirEntry)>> {
        let handle = self.handle(fh)?;
        let Handle::Dir(entries) = &*handle else {
            return Err(FsError::new(ErrorKind::BadHandle, "not a directory handle"));
        };
        let parent = self.node(ino)?.parent;
        let dots = [
            DirEntry {
                ino,
                is_dir: true,
                name: ".".into(),
            },
            DirEntry {
                ino: parent,
                is_dir: true,
                name: "..".into(),
            },
        ];
        Ok(dots
            .into_iter()
            .chain(entries.iter().cloned())
            .enumerate()
            .skip(offset as usize)
            .map(|(i, e)| (i as u64 + 1, e))
            .collect())
    }

    fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, Arc::new(h));
        fh
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        lock(&self.handles)
            .get(&fh)
            .cloned()
            .ok_or_else(|| err!(BadHandle, "unknown handle {fh}"))
    }

    /// Closes a file or directory handle. The last handle of a file being
    /// written may publish it (see `write`).
    pub async fn release(&self, fh: u64) {
        let handle = lock(&self.handles).remove(&fh);
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
        lock(&self.tree).invalidate(parent.ino);
        self.ensure_listing(&parent).await?;
        let fresh = lock(&self.tree).child(parent.ino, &node.file).cloned();
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
        lock(&self.tree)
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
        if let Some(f) = shared(&mut lock(&self.fetches)) {
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
        let mut fetches = lock(&self.fetches);
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

    /// Totals for `df`: the cache is the only local storage.
    pub fn statfs(&self) -> StatFs {
        let bs = 4096u64;
        let cap = self.cache.capacity();
        StatFs {
            block_size: bs as u32,
            blocks: cap / bs,
            blocks_free: cap.saturating_sub(self.cache.used()) / bs,
            files: lock(&self.tree).len() as u64,
        }
    }
}

/// Reads up to `size` bytes at `offset` (short at EOF).
fn pread(file: &std::fs::File, offset: u64, size: u32) -> FsResult<Vec<u8>> {
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

/// Versions that can be shown: never one containing `/` (PROTOCOL.md §names).
fn version_specs(versions: &[Package]) -> Vec<ChildSpec> {
    versions
        .iter()
        .filter(|p| {
            let ok = client_version_ok(&p.version);
            if !ok {
                registry::log_once(
                    "version",
                    &p.version,
                    "not a version that can be a directory name",
                );
            }
            ok
        })
        .map(|p| ChildSpec {
            name: p.version.clone(),
            mtime: parse_time(&p.created_at),
            size: 0,
            sha256: String::new(),
        })
        .collect()
}

/// Whether `name` could exist at this depth (so lookups of impossible
/// names never reach the registry).
fn name_ok_for(parent: Kind, name: &str) -> bool {
    use crate::protocol::validate;
    if name.len() > crate::protocol::MAX_COMPONENT_LEN {
        return false;
    }
    match parent {
        Kind::Root => validate::owner_name_ok(name),
        Kind::Owner => validate::validate_package_name(name).is_ok(),
        Kind::Package => client_version_ok(name),
        Kind::Version => validate::validate_filename(name).is_ok(),
        Kind::File => false,
    }
}
