//! The inode table: which inode is which owner, package, version or file,
//! and each directory's children with the time they were listed. Names are
//! case-insensitive (PROTOCOL.md §names): children are keyed by the
//! lower-cased name and show the stored spelling. Pure data, no I/O.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

pub type Ino = u64;
pub const ROOT_INO: Ino = 1;

/// What a node is, by depth in `<owner>/<package>/<version>/<file>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Root,
    Owner,
    Package,
    Version,
    File,
}

impl Kind {
    pub fn is_dir(self) -> bool {
        self != Kind::File
    }

    /// The kind of this node's children.
    pub fn child(self) -> Option<Kind> {
        match self {
            Kind::Root => Some(Kind::Owner),
            Kind::Owner => Some(Kind::Package),
            Kind::Package => Some(Kind::Version),
            Kind::Version => Some(Kind::File),
            Kind::File => None,
        }
    }
}

/// One inode.
#[derive(Debug, Clone)]
pub struct Node {
    pub ino: Ino,
    pub parent: Ino,
    pub kind: Kind,
    /// Stored spellings along the path; empty below this node's depth.
    pub owner: String,
    pub name: String,
    pub version: String,
    pub file: String,
    pub mtime: SystemTime,
    pub size: u64,
    /// sha256 of a published file (empty for directories).
    pub sha256: String,
    /// Exists only locally: a `mkdir` placeholder or a file being written.
    pub local: bool,
    /// Left out of its parent's listing but still resolvable: a version
    /// whose last file was deleted (gone from the registry, yet `rmdir`
    /// of it must work for `rm -r`).
    pub hidden: bool,
}

impl Node {
    /// The path below the mount point, for logs.
    pub fn path(&self) -> String {
        [&self.owner, &self.name, &self.version, &self.file]
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The registry's name of this (file) node.
    pub fn file_ref(&self) -> crate::registry::FileRef {
        crate::registry::FileRef {
            owner: self.owner.clone(),
            name: self.name.clone(),
            version: self.version.clone(),
            file: self.file.clone(),
        }
    }

    /// This node's own name (last component).
    pub fn leaf(&self) -> &str {
        match self.kind {
            Kind::Root => "",
            Kind::Owner => &self.owner,
            Kind::Package => &self.name,
            Kind::Version => &self.version,
            Kind::File => &self.file,
        }
    }
}

/// What a listing says about one child.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    pub name: String,
    pub mtime: SystemTime,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Default)]
struct Dir {
    /// When the listing was fetched; `None` if never.
    fetched: Option<Instant>,
    /// lower-cased name → inode.
    children: BTreeMap<String, Ino>,
}

/// All inodes known to this mount.
///
/// A node lives while a directory lists it or the kernel holds a reference
/// to it (a lookup not yet forgotten): a node dropped from its directory
/// (deleted, replaced by other content, gone from a listing) is removed
/// once the kernel forgets it, so the table holds what the listings hold
/// plus what the kernel still uses, not every name ever seen.
#[derive(Debug)]
pub struct Tree {
    nodes: HashMap<Ino, Node>,
    dirs: HashMap<Ino, Dir>,
    /// Kernel references per inode: lookups answered minus forgotten.
    refs: HashMap<Ino, u64>,
    /// Directories removed since `take_reaped` was last called.
    reaped: Vec<Ino>,
    next_ino: Ino,
}

impl Tree {
    pub fn new(mount_time: SystemTime) -> Tree {
        let root = Node {
            ino: ROOT_INO,
            parent: ROOT_INO,
            kind: Kind::Root,
            owner: String::new(),
            name: String::new(),
            version: String::new(),
            file: String::new(),
            mtime: mount_time,
            size: 0,
            sha256: String::new(),
            local: false,
            hidden: false,
        };
        let mut nodes = HashMap::new();
        nodes.insert(ROOT_INO, root);
        let mut dirs = HashMap::new();
        dirs.insert(ROOT_INO, Dir::default());
        Tree {
            nodes,
            dirs,
            refs: HashMap::new(),
            reaped: Vec::new(),
            next_ino: ROOT_INO + 1,
        }
    }

    /// The kernel was given an entry for `ino` (lookup, create, mkdir).
    pub fn looked_up(&mut self, ino: Ino) {
        if self.nodes.contains_key(&ino) {
            *self.refs.entry(ino).or_default() += 1;
        }
    }

    /// The kernel dropped `n` of its references to `ino`.
    pub fn forget(&mut self, ino: Ino, n: u64) {
        let Some(r) = self.refs.get_mut(&ino) else {
            return;
        };
        *r = r.saturating_sub(n);
        if *r == 0 {
            self.refs.remove(&ino);
            self.reap(ino);
        }
    }

    /// Directories removed since the last call (for per-directory state
    /// elsewhere).
    pub fn take_reaped(&mut self) -> Vec<Ino> {
        std::mem::take(&mut self.reaped)
    }

    /// Whether `n` is its parent's child under its own name.
    fn attached(&self, n: &Node) -> bool {
        n.ino == ROOT_INO
            || self
                .dirs
                .get(&n.parent)
                .and_then(|d| d.children.get(&n.leaf().to_lowercase()))
                == Some(&n.ino)
    }

    /// Removes `ino` if neither a directory nor the kernel refers to it,
    /// and with it the children of its listing that nothing else holds.
    fn reap(&mut self, ino: Ino) {
        let mut todo = vec![ino];
        while let Some(ino) = todo.pop() {
            if ino == ROOT_INO || self.refs.contains_key(&ino) {
                continue;
            }
            match self.nodes.get(&ino) {
                Some(n) if !self.attached(n) => {}
                _ => continue,
            }
            self.nodes.remove(&ino);
            if let Some(d) = self.dirs.remove(&ino) {
                todo.extend(d.children.into_values());
                self.reaped.push(ino);
            }
        }
    }

    pub fn get(&self, ino: Ino) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: Ino) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The child called `name` (case-insensitive).
    pub fn child(&self, parent: Ino, name: &str) -> Option<&Node> {
        let ino = self.dirs.get(&parent)?.children.get(&name.to_lowercase())?;
        self.nodes.get(ino)
    }

    /// Whether `parent` was listed less than `ttl` ago.
    pub fn is_fresh(&self, parent: Ino, ttl: Duration) -> bool {
        self.dirs
            .get(&parent)
            .and_then(|d| d.fetched)
            .is_some_and(|t| t.elapsed() < ttl)
    }

    /// Marks a listing stale so the next access fetches it again.
    pub fn invalidate(&mut self, parent: Ino) {
        if let Some(d) = self.dirs.get_mut(&parent) {
            d.fetched = None;
        }
    }

    /// Children in name order: (inode, kind, stored name).
    pub fn children(&self, parent: Ino) -> Vec<(Ino, Kind, String)> {
        let Some(dir) = self.dirs.get(&parent) else {
            return Vec::new();
        };
        dir.children
            .values()
            .filter_map(|ino| self.nodes.get(ino))
            .filter(|n| !n.hidden)
            .map(|n| (n.ino, n.kind, n.leaf().to_string()))
            .collect()
    }

    /// Replaces `parent`'s listing with what the registry said. Known
    /// children keep their inode (a file whose sha256 changed gets a new
    /// one: its content is different). Local children (placeholders, files
    /// being written) are kept unless the listing now has them.
    pub fn set_children(&mut self, parent: Ino, specs: Vec<ChildSpec>) {
        let Some(kind) = self.nodes.get(&parent).and_then(|n| n.kind.child()) else {
            return;
        };
        let old = self.dirs.remove(&parent).unwrap_or_default().children;
        let mut children = BTreeMap::new();
        for spec in specs {
            let key = spec.name.to_lowercase();
            if children.contains_key(&key) {
                continue; // same name in another spelling: first one wins
            }
            let old_node = old.get(&key).and_then(|ino| self.nodes.get(ino));
            if let Some(n) = old_node.filter(|n| kind == Kind::File && n.local) {
                // A file being written here wins over the listing until
                // its own upload has answered.
                children.insert(key, n.ino);
                continue;
            }
            let reuse = old_node
                .filter(|n| kind != Kind::File || n.sha256 == spec.sha256)
                .map(|n| n.ino);
            let ino = match reuse {
                Some(ino) => {
                    if let Some(n) = self.nodes.get_mut(&ino) {
                        n.mtime = spec.mtime;
                        n.size = spec.size;
                        n.sha256 = spec.sha256;
                        n.local = false;
                        n.hidden = false;
                        if kind != Kind::File {
                            set_leaf(n, &spec.name);
                        }
                    }
                    ino
                }
                None => self.insert(parent, kind, spec),
            };
            children.insert(key, ino);
        }
        let mut dropped = Vec::new();
        for (key, ino) in old {
            if children.get(&key) == Some(&ino) {
                continue;
            }
            if !children.contains_key(&key) && self.nodes.get(&ino).is_some_and(|n| n.local) {
                children.insert(key, ino);
            } else {
                dropped.push(ino);
            }
        }
        self.dirs.insert(
            parent,
            Dir {
                fetched: Some(Instant::now()),
                children,
            },
        );
        for ino in dropped {
            self.reap(ino);
        }
    }

    /// Adds (or returns the existing) child without a full listing.
    pub fn add_child(&mut self, parent: Ino, spec: ChildSpec, local: bool) -> Option<Ino> {
        let kind = self.nodes.get(&parent)?.kind.child()?;
        let key = spec.name.to_lowercase();
        if let Some(&ino) = self.dirs.get(&parent).and_then(|d| d.children.get(&key)) {
            return Some(ino);
        }
        let ino = self.insert(parent, kind, spec);
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.local = local;
        }
        self.dirs
            .entry(parent)
            .or_default()
            .children
            .insert(key, ino);
        Some(ino)
    }

    /// Removes a child from its parent's listing (the inode stays valid
    /// for open handles).
    pub fn remove_child(&mut self, parent: Ino, name: &str) {
        let removed = self
            .dirs
            .get_mut(&parent)
            .and_then(|d| d.children.remove(&name.to_lowercase()));
        if let Some(ino) = removed {
            self.reap(ino);
        }
    }

    /// A directory that lost its last listed child (deleted with it on the
    /// registry) stays as a hidden placeholder, so `rmdir` of it succeeds
    /// (`rm -r`); its parent, if hidden so now.
    pub fn hide_if_emptied(&mut self, dir: Ino) -> Option<Ino> {
        if !self.children(dir).is_empty() {
            return None;
        }
        let d = self.nodes.get_mut(&dir).filter(|d| !d.local)?;
        d.local = true;
        d.hidden = true;
        Some(d.parent)
    }

    /// Renames a child within its directory (local files only).
    pub fn rename_child(&mut self, parent: Ino, from: &str, to: &str) {
        let Some(dir) = self.dirs.get_mut(&parent) else {
            return;
        };
        let Some(ino) = dir.children.remove(&from.to_lowercase()) else {
            return;
        };
        dir.children.insert(to.to_lowercase(), ino);
        if let Some(n) = self.nodes.get_mut(&ino) {
            set_leaf(n, to);
        }
    }

    fn insert(&mut self, parent: Ino, kind: Kind, spec: ChildSpec) -> Ino {
        let ino = self.next_ino;
        self.next_ino += 1;
        let p = &self.nodes[&parent];
        let mut node = Node {
            ino,
            parent,
            kind,
            owner: p.owner.clone(),
            name: p.name.clone(),
            version: p.version.clone(),
            file: p.file.clone(),
            mtime: spec.mtime,
            size: spec.size,
            sha256: spec.sha256,
            local: false,
            hidden: false,
        };
        set_leaf(&mut node, &spec.name);
        self.nodes.insert(ino, node);
        if kind.is_dir() {
            self.dirs.entry(ino).or_default();
        }
        ino
    }
}

fn set_leaf(node: &mut Node, name: &str) {
    let slot = match node.kind {
        Kind::Root => return,
        Kind::Owner => &mut node.owner,
        Kind::Package => &mut node.name,
        Kind::Version => &mut node.version,
        Kind::File => &mut node.file,
    };
    *slot = name.to_string();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, sha: &str) -> ChildSpec {
        ChildSpec {
            name: name.into(),
            mtime: SystemTime::UNIX_EPOCH,
            size: 1,
            sha256: sha.into(),
        }
    }

    #[test]
    fn case_insensitive_children_keep_inodes() {
        let mut t = Tree::new(SystemTime::UNIX_EPOCH);
        t.set_children(ROOT_INO, vec![spec("Alice", "")]);
        let alice = t.child(ROOT_INO, "alice").unwrap().ino;
        assert_eq!(t.get(alice).unwrap().owner, "Alice");
        t.set_children(ROOT_INO, vec![spec("alice", ""), spec("ALICE", "")]);
        assert_eq!(t.child(ROOT_INO, "ALICE").unwrap().ino, alice);
        assert_eq!(t.children(ROOT_INO).len(), 1);
    }

    #[test]
    fn dropped_nodes_live_until_the_kernel_forgets_them() {
        let mut t = Tree::new(SystemTime::UNIX_EPOCH);
        t.set_children(ROOT_INO, vec![spec("o", "")]);
        let o = t.child(ROOT_INO, "o").unwrap().ino;
        t.set_children(o, vec![spec("p", "")]);
        let p = t.child(o, "p").unwrap().ino;
        t.set_children(p, vec![spec("1.0", ""), spec("2.0", "")]);
        let v1 = t.child(p, "1.0").unwrap().ino;
        let v2 = t.child(p, "2.0").unwrap().ino;
        t.set_children(v1, vec![spec("a", "aa"), spec("b", "bb")]);
        let a = t.child(v1, "a").unwrap().ino;
        let b = t.child(v1, "b").unwrap().ino;
        t.looked_up(a);
        t.looked_up(a);
        let before = t.len();
        // b was never given to the kernel: it goes with the listing.
        t.set_children(v1, vec![spec("a", "aa")]);
        assert!(t.get(b).is_none());
        assert_eq!(t.len(), before - 1);
        // a, replaced by other content, lives until both lookups are forgotten.
        t.set_children(v1, vec![spec("a", "cc")]);
        let a2 = t.child(v1, "a").unwrap().ino;
        assert_ne!(a, a2);
        assert!(t.get(a).is_some());
        t.forget(a, 1);
        assert!(t.get(a).is_some());
        t.forget(a, 1);
        assert!(t.get(a).is_none());
        // Still listed: a forgotten node stays (it is the listing).
        t.looked_up(a2);
        t.forget(a2, 1);
        assert!(t.get(a2).is_some());
        // A removed directory takes its unreferenced children along.
        t.looked_up(v1);
        t.remove_child(p, "1.0");
        assert!(t.get(v1).is_some());
        t.forget(v1, 1);
        assert!(t.get(v1).is_none() && t.get(a2).is_none());
        assert!(t.get(v2).is_some());
        assert_eq!(t.take_reaped(), vec![v1]);
    }

    #[test]
    fn changed_file_content_gets_new_inode_and_paths_follow() {
        let mut t = Tree::new(SystemTime::UNIX_EPOCH);
        t.set_children(ROOT_INO, vec![spec("o", "")]);
        let o = t.child(ROOT_INO, "o").unwrap().ino;
        t.set_children(o, vec![spec("p", "")]);
        let p = t.child(o, "p").unwrap().ino;
        t.set_children(p, vec![spec("1.0", "")]);
        let v = t.child(p, "1.0").unwrap().ino;
        t.set_children(v, vec![spec("f.bin", "aa")]);
        let f1 = t.child(v, "F.BIN").unwrap().ino;
        assert_eq!(t.get(f1).unwrap().path(), "o/p/1.0/f.bin");
        t.set_children(v, vec![spec("f.bin", "bb")]);
        assert_ne!(t.child(v, "f.bin").unwrap().ino, f1);
    }
}
