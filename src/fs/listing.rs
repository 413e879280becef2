//! The namespace: resolving names (`lookup`), the listings behind each
//! directory with their TTL, positive and negative probes of owners and
//! packages not listed, one listing fetch per directory at a time, and
//! directory handles (`opendir`/`readdir`). Its state, besides the tree:
//! [`Listings`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::error::{ErrorKind, FsError, FsResult};
use super::locks::{Ordered, Rank};
use super::tree::{ChildSpec, Ino, Kind, Node, ROOT_INO};
use super::{parse_time, Attr, DirEntry, Fs, Handle, OpenDir, Package};
use crate::protocol::validate::client_version_ok;
use crate::registry;

/// Remembered probes beyond which expired absent names are pruned.
const MAX_PROBED: usize = 4096;

/// What the namespace remembers besides the tree.
pub(super) struct Listings {
    /// One listing fetch per directory at a time: the lock of each
    /// directory being (or lately) fetched.
    pub(super) fetching: Ordered<HashMap<Ino, Arc<tokio::sync::Mutex<()>>>>,
    /// Names that lookups asked the registry about because no cached
    /// listing showed them, lowercased: owners (`owner`) and packages
    /// (`owner\0package`), whether they exist, and when that was learnt.
    pub(super) probes: Ordered<HashMap<String, (Instant, bool)>>,
    /// Login of the token's user, if any.
    pub(super) login: Ordered<Option<String>>,
    /// Per directory, a fingerprint of the entries the last `opendir`
    /// gave out: while it holds, the kernel's cached listing is current.
    pub(super) dir_seen: Ordered<HashMap<Ino, u64>>,
}

impl Listings {
    pub(super) fn new() -> Listings {
        Listings {
            fetching: Ordered::default(),
            probes: Ordered::new(Rank::Probes, HashMap::new()),
            login: Ordered::default(),
            dir_seen: Ordered::default(),
        }
    }
}

impl Fs {
    /// Finds `name` in directory `parent`.
    pub async fn lookup(&self, parent: Ino, name: &str) -> FsResult<Attr> {
        let pnode = self.lookup_parent(parent, name)?;
        let cached = self.tree.lock().is_fresh(parent, self.config.metadata_ttl);
        if pnode.kind == Kind::Owner && !pnode.local && !cached {
            return self.lookup_package(&pnode, name).await;
        }
        if pnode.kind == Kind::Root && !cached {
            // The token's user and --owner names are in the root listing
            // by definition: no need to fetch it to resolve them.
            let login = self.listings.login.lock().clone();
            let known = login
                .iter()
                .chain(&self.config.owners)
                .find(|o| o.eq_ignore_ascii_case(name));
            if let Some(attr) = known.and_then(|o| self.add_owner(o, pnode.mtime)) {
                return Ok(attr);
            }
        }
        self.ensure_listing(&pnode).await?;
        if let Some(n) = self.tree.lock().child(parent, name) {
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
        let tree = self.tree.lock();
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
        let mut tree = self.tree.lock();
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
            let tree = self.tree.lock();
            if let Some(n) = tree.child(owner.ino, name) {
                if n.local || tree.is_fresh(n.ino, ttl) {
                    return Ok(self.attr_of(n));
                }
            }
        }
        let missing = || FsError::not_found(format!("{}/{name}", owner.path()));
        let key = format!("{}\0{name}", owner.owner).to_lowercase();
        if let Some((at, _)) = self.listings.probes.lock().get(&key).copied() {
            if at.elapsed() < self.negative_ttl() {
                return Err(missing());
            }
        }
        let versions =
            registry::empty_if_absent(self.client.list_versions(&owner.owner, name).await)?;
        let mut tree = self.tree.lock();
        let Some(oldest) = versions.last() else {
            if tree.child(owner.ino, name).is_some_and(|n| !n.local) {
                tree.remove_child(owner.ino, name); // deleted meanwhile
            }
            self.note_probe(key, false);
            return Err(missing());
        };
        self.listings.probes.lock().remove(&key);
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
        if let Some((at, exists)) = self.listings.probes.lock().get(&key).copied() {
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
        let mut probed = self.listings.probes.lock();
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
        self.listings
            .fetching
            .lock()
            .entry(ino)
            .or_default()
            .clone()
    }

    /// Fetches a directory's listing unless a fresh one is cached.
    pub(super) async fn ensure_listing(&self, dir: &Node) -> FsResult<()> {
        let ttl = self.config.metadata_ttl;
        if self.tree.lock().is_fresh(dir.ino, ttl) {
            return Ok(());
        }
        let guard = self.listing_lock(dir.ino);
        let _held = guard.lock().await;
        if self.tree.lock().is_fresh(dir.ino, ttl) {
            return Ok(()); // fetched while we waited
        }
        if dir.local {
            return Ok(()); // a placeholder: nothing on the registry yet
        }
        match dir.kind {
            Kind::Root => {
                let specs = self.root_listing(dir.mtime).await?;
                self.tree.lock().set_children(ROOT_INO, specs);
            }
            Kind::Owner => {
                let packages = self.client.list_owner_packages(&dir.owner).await?;
                self.apply_owner_listing(dir.ino, packages);
            }
            Kind::Package => {
                let versions = registry::empty_if_absent(
                    self.client.list_versions(&dir.owner, &dir.name).await,
                )?;
                self.tree
                    .lock()
                    .set_children(dir.ino, version_specs(&versions));
            }
            Kind::Version => {
                let files = registry::empty_if_absent(
                    self.client
                        .list_files(&dir.owner, &dir.name, &dir.version)
                        .await,
                )?;
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
                self.tree.lock().set_children(dir.ino, specs);
            }
            Kind::File => {}
        }
        Ok(())
    }

    /// Root: the token's user, their organisations, `--owner` names and
    /// owners found by lookup.
    async fn root_listing(&self, mtime: SystemTime) -> FsResult<Vec<ChildSpec>> {
        let mut names: Vec<String> = Vec::new();
        let login = self.listings.login.lock().clone();
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
            let tree = self.tree.lock();
            tree.children(ROOT_INO)
                .into_iter()
                .map(|(_, _, n)| n)
                .filter(|n| {
                    self.listings
                        .probes
                        .lock()
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
        let mut tree = self.tree.lock();
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
        let fresh = self
            .tree
            .lock()
            .is_fresh(node.ino, self.config.metadata_ttl);
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
        let entries: Vec<DirEntry> = self
            .tree
            .lock()
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
        let unchanged = self.listings.dir_seen.lock().insert(ino, print) == Some(print);
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
