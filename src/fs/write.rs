//! The write path: `mkdir` placeholders, files spooled to disk and
//! published with one PUT when the application closes them, deletes, and
//! the rename of scratch files (temp-file-then-rename as rsync and editors
//! write). PROTOCOL.md §writes, §errno, §put-retry and §concurrency.
//!
//! Publication happens at the first `flush` after data was written, so
//! `close()` returns only once the registry has answered. A flush before any
//! write (a shell's `> file` closes a duplicate first) does not publish; if
//! no write ever comes, the empty file is published when the last handle is
//! released (`touch`), after `close()` returned, or at `fsync()`. Names
//! starting with `.` are local scratch files until renamed to a publishable
//! name.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::SystemTime;

use super::error::{err, ErrorKind, FsError, FsResult};
use super::locks::{Ordered, Rank};
use super::spool::{Spool, SpoolReader};
use super::tree::{ChildSpec, Ino, Kind, Node};
use super::upstream::Upstream;
use super::writer::{erofs, is_scratch, OnFailure, Phase, Upload, Writer, WriterState};
use super::{Attr, Fs, Handle};
use crate::protocol::validate::{self, client_version_ok};
use crate::registry::{self, FileRef};

impl Fs {
    fn check_writable(&self) -> FsResult<()> {
        if self.config.read_only {
            Err(erofs())
        } else {
            Ok(())
        }
    }

    /// `mkdir` of a package or version: a local placeholder until its first
    /// file is published (the registry has no empty packages or versions).
    pub async fn mkdir(&self, parent: Ino, name: &str) -> FsResult<Attr> {
        self.check_writable()?;
        let pnode = self.node(parent)?;
        let valid = match pnode.kind {
            Kind::Owner => validate::validate_package_name(name).is_ok(),
            Kind::Package => client_version_ok(name),
            Kind::Root => {
                return Err(err!(NotPermitted, "{name}: owners are users or organisations of the registry; they cannot be created here"))
            }
            Kind::Version | Kind::File => {
                return Err(err!(NotPermitted, "{}/{name}: a version directory holds files only", pnode.path()))
            }
        };
        if !valid {
            return Err(err!(
                Invalid,
                "{}/{name}: not a valid {} name",
                pnode.path(),
                kind_word(pnode.kind)
            ));
        }
        if !pnode.local {
            self.ensure_listing(&pnode).await?;
        }
        let mut tree = self.tree.lock();
        if let Some(existing) = tree.child(parent, name).map(|n| n.ino) {
            // A directory that vanished with its last file but was not
            // removed yet is simply shown again.
            match tree.get_mut(existing) {
                Some(n) if n.hidden && n.local => {
                    n.hidden = false;
                    let n = n.clone();
                    return Ok(self.attr_of(&n));
                }
                _ => return Err(err!(Exists, "{}/{name}", pnode.path())),
            }
        }
        let spec = ChildSpec {
            name: name.to_string(),
            mtime: SystemTime::now(),
            size: 0,
            sha256: String::new(),
        };
        let ino = tree
            .add_child(parent, spec, true)
            .ok_or_else(|| FsError::new(ErrorKind::Io, "cannot add directory"))?;
        let node = tree
            .get(ino)
            .cloned()
            .ok_or_else(|| FsError::not_found("new dir"))?;
        Ok(self.attr_of(&node))
    }

    /// `rmdir`: a placeholder goes away locally; a version on the registry
    /// is deleted when it holds no file (ENOTEMPTY otherwise).
    pub async fn rmdir(&self, parent: Ino, name: &str) -> FsResult<()> {
        self.check_writable()?;
        let node = self.child_node(parent, name).await?;
        if !node.kind.is_dir() {
            return Err(FsError::new(ErrorKind::NotADirectory, node.path()));
        }
        if !node.local {
            // Listing is refreshed so that files deleted by `rm -r` are gone.
            self.tree.lock().invalidate(node.ino);
            self.ensure_listing(&node).await?;
        }
        if !self.tree.lock().children(node.ino).is_empty() {
            return Err(FsError::new(ErrorKind::NotEmpty, node.path()));
        }
        if node.kind == Kind::Version && !node.local {
            match self
                .client
                .delete_version(&node.owner, &node.name, &node.version)
                .await
            {
                Ok(()) | Err(registry::Error::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut tree = self.tree.lock();
        tree.remove_child(parent, name);
        if node.kind == Kind::Version && !node.local {
            // The package went away with its last version.
            tree.hide_if_emptied(parent);
        }
        Ok(())
    }

    /// A child that must exist (lookup semantics, listing refreshed if stale).
    async fn child_node(&self, parent: Ino, name: &str) -> FsResult<Node> {
        let pnode = self.node(parent)?;
        if pnode.kind == Kind::Owner {
            // As lookup does: a package is resolved by itself, without
            // fetching the owner's whole listing.
            self.lookup(parent, name).await?;
        } else if !pnode.local {
            self.ensure_listing(&pnode).await?;
        }
        self.tree
            .lock()
            .child(parent, name)
            .cloned()
            .ok_or_else(|| FsError::not_found(format!("{}/{name}", pnode.path())))
    }

    /// `open(O_CREAT)` of a new file in a version directory: EEXIST when
    /// the file is already published, EINVAL for a name the registry
    /// refuses; the data is spooled under the cache directory.
    pub async fn create(
        &self,
        parent: Ino,
        name: &str,
        opener: super::Opener,
    ) -> FsResult<(Attr, u64)> {
        self.check_writable()?;
        let pnode = self.node(parent)?;
        if pnode.kind != Kind::Version {
            return Err(err!(NotPermitted, "{}/{name}: files can only be created in a version directory (<owner>/<package>/<version>/)",
                    pnode.path()));
        }
        if !is_scratch(name) && validate::validate_filename(name).is_err() {
            return Err(err!(
                Invalid,
                "{}/{name}: the registry refuses this filename",
                pnode.path()
            ));
        }
        if name.len() > crate::protocol::MAX_COMPONENT_LEN {
            return Err(FsError::new(ErrorKind::NameTooLong, name.to_string()));
        }
        if !pnode.local {
            self.ensure_listing(&pnode).await?;
        }
        let (path, file) = self
            .cache
            .new_spool()
            .map_err(|e| FsError::io(e, "create spool file"))?;
        let spool = Spool::new(path, file);
        let ino = {
            let mut tree = self.tree.lock();
            if let Some(existing) = tree.child(parent, name) {
                // Just created, empty: deleting it costs nothing.
                let _ = std::fs::remove_file(&spool.path);
                return Err(err!(
                    Exists,
                    "{}: already published; published files cannot be replaced",
                    existing.path()
                ));
            }
            let spec = ChildSpec {
                name: name.to_string(),
                mtime: SystemTime::now(),
                size: 0,
                sha256: String::new(),
            };
            tree.add_child(parent, spec, true)
                .ok_or_else(|| FsError::new(ErrorKind::Io, "cannot add file"))?
        };
        let writer = Arc::new(Writer {
            ino,
            spool,
            state: Ordered::new(
                Rank::WriterState,
                WriterState {
                    size: 0,
                    phase: Phase::Open(Upload::NoData),
                },
            ),
            publishing: tokio::sync::Mutex::new(()),
            handles: AtomicUsize::new(0),
        });
        writer.opened();
        self.writers.by_ino.lock().insert(ino, Arc::clone(&writer));
        let fh = self.add_handle(Handle::Write(writer, opener));
        Ok((self.getattr(ino)?, fh))
    }

    /// The writer of a local file, if it is one.
    pub(super) fn writer_of(&self, ino: Ino) -> Option<Arc<Writer>> {
        self.writers.by_ino.lock().get(&ino).cloned()
    }

    fn writer_handle(&self, fh: u64) -> FsResult<Arc<Writer>> {
        self.writer_and_opener(fh).map(|(w, _)| w)
    }

    fn writer_and_opener(&self, fh: u64) -> FsResult<(Arc<Writer>, super::Opener)> {
        match &*self.handle(fh)? {
            Handle::Write(w, opener) => Ok((Arc::clone(w), *opener)),
            _ => Err(FsError::new(ErrorKind::BadHandle, "not open for writing")),
        }
    }

    /// Writes into the spool at any offset. The first write, at offset 0,
    /// starts a streamed upload (see `upstream`); a later write that is not
    /// an append abandons it.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let w = self.writer_handle(fh)?;
        let stream = if offset == 0 {
            self.upstream_parts(&w)
        } else {
            None
        };
        let mut st = w.state.lock();
        if !matches!(st.phase, Phase::Open(_)) {
            return Err(FsError::new(
                ErrorKind::NotPermitted,
                "the file is already published (or being published, or failed to publish); published files cannot change",
            ));
        }
        if let Err(e) = w.spool.write_at(data, offset) {
            // The spool is incomplete (ENOSPC, EIO): the file must never be
            // published, so close() reports the failure and sends nothing.
            let e = FsError::io(e, "write spool file");
            tracing::warn!(error = %e, "write failed; the file will not be published");
            st.fail(e.clone());
            return Err(e);
        }
        let append = offset == st.size;
        st.size = st.size.max(offset + data.len() as u64);
        let size = st.size;
        match &st.phase {
            Phase::Open(Upload::NoData) => {
                st.phase =
                    Phase::Open(self.start_upload(w.spool.path.as_path(), stream, append, size));
            }
            Phase::Open(Upload::Streaming(u)) if append => u.advance(size),
            Phase::Open(Upload::Streaming(_)) => {
                st.stop_streaming();
                tracing::debug!(
                    ino = w.ino,
                    offset,
                    "write is not an append: the file will be uploaded at close"
                );
            }
            _ => {}
        }
        drop(st);
        if let Some(n) = self.tree.lock().get_mut(w.ino) {
            n.size = size;
        }
        Ok(data.len() as u32)
    }

    /// How the first write's data will go up: streamed from `size` bytes on
    /// when it is an append that may stream (`parts`), else at close.
    fn start_upload(
        &self,
        spool: &std::path::Path,
        parts: Option<(FileRef, Option<tokio::sync::OwnedMutexGuard<()>>)>,
        append: bool,
        size: u64,
    ) -> Upload {
        let Some((fref, hold)) = parts.filter(|_| append) else {
            return Upload::AtClose;
        };
        match SpoolReader::open(spool) {
            Ok(reader) => {
                tracing::debug!(file = %fref.file, "streaming the upload while the file is written");
                Upload::Streaming(Upstream::start(
                    &self.rt,
                    Arc::clone(&self.client),
                    fref,
                    Arc::new(reader),
                    size,
                    hold,
                ))
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot stream the upload; uploading at close");
                Upload::AtClose
            }
        }
    }

    /// What a streamed upload of `w` needs, if it may stream: a publishable
    /// name, streaming enabled, and for the first file of a new version its
    /// lock (PROTOCOL.md §concurrency; when another upload holds it, this one waits for
    /// `close()` instead).
    fn upstream_parts(
        &self,
        w: &Writer,
    ) -> Option<(FileRef, Option<tokio::sync::OwnedMutexGuard<()>>)> {
        let undecided = matches!(w.state.lock().phase, Phase::Open(Upload::NoData));
        if !self.config.stream_uploads || !undecided {
            return None;
        }
        let node = self.tree.lock().get(w.ino).cloned()?;
        if is_scratch(&node.file) {
            return None;
        }
        let fref = node.file_ref();
        registry::validate_ref(&fref).ok()?;
        let version_local = self.tree.lock().get(node.parent).is_some_and(|v| v.local);
        let hold = if version_local {
            Some(self.version_lock(&node).try_lock_owned().ok()?)
        } else {
            None
        };
        Some((fref, hold))
    }

    /// `truncate`/`ftruncate` of a file being written; published files
    /// cannot change size.
    pub fn set_size(&self, ino: Ino, size: u64) -> FsResult<Attr> {
        self.check_writable()?;
        let node = self.node(ino)?;
        let Some(w) = self.writer_of(ino).filter(|w| !w.is_published()) else {
            if node.size == size && !node.kind.is_dir() {
                return self.getattr(ino);
            }
            return Err(err!(
                NotPermitted,
                "{}: published files cannot change",
                node.path()
            ));
        };
        {
            let mut st = w.state.lock();
            if matches!(st.phase, Phase::Publishing) {
                return Err(err!(
                    NotPermitted,
                    "{}: the file is being published",
                    node.path()
                ));
            }
            w.spool
                .file()
                .set_len(size)
                .map_err(|e| FsError::io(e, "truncate spool file"))?;
            if size != st.size && st.stop_streaming() {
                tracing::debug!(ino, size, "truncated: the file will be uploaded at close");
            }
            st.size = size;
        }
        if let Some(n) = self.tree.lock().get_mut(ino) {
            n.size = size;
        }
        self.getattr(ino)
    }

    /// `close()` of a descriptor by thread `pid`: publishes the file if
    /// data was written to it and the closing process is the one that
    /// opened it. The kernel also flushes the copies of a descriptor that a
    /// child process inherited and closes (at exec, or when it exits): such
    /// a close must not publish a file its opener is still writing. A file
    /// whose opener closed before the data was written (a child wrote it)
    /// is published when its last descriptor is released.
    pub async fn flush(&self, fh: u64, pid: u32) -> FsResult<()> {
        let Ok((w, opener)) = self.writer_and_opener(fh) else {
            return Ok(()); // read handles have nothing to flush
        };
        let wrote = w.state.lock().had_data();
        if !wrote {
            return Ok(()); // see the module comment: publish at release
        }
        if !opener.is_same_process(pid) {
            tracing::debug!(
                ino = w.ino,
                pid,
                "close by a process other than the opener: publishing at the opener's close or the last release"
            );
            return Ok(());
        }
        self.publish(&w, true).await
    }

    /// `fsync()`: publishes the file now, with or without data, and reports
    /// the outcome (as mountpoint-s3 does). This is how an application
    /// learns the fate of an empty file, which is otherwise published when
    /// its last descriptor is released, after `close()` returned. Later
    /// writes fail with EPERM; scratch files stay local.
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let Ok(w) = self.writer_handle(fh) else {
            return Ok(());
        };
        self.publish(&w, true).await
    }

    /// Last close of a handle: publishes a file that never saw a flush
    /// with data (an empty `touch`ed file).
    pub(super) async fn release_writer(&self, w: Arc<Writer>) {
        if !w.released() {
            return; // other descriptors are still open
        }
        let open = matches!(w.state.lock().phase, Phase::Open(_) | Phase::Publishing);
        if open {
            if let Err(e) = self.publish(&w, true).await {
                tracing::warn!(error = %e, "publishing at release failed");
            }
        }
    }

    /// `unlink`: a local file is dropped; a published one is deleted on the
    /// registry (404 counts as already gone). Deleting the last file of a
    /// version makes the version disappear, as on the registry.
    pub async fn unlink(&self, parent: Ino, name: &str) -> FsResult<()> {
        self.check_writable()?;
        let node = self.child_node(parent, name).await?;
        if node.kind.is_dir() {
            return Err(FsError::new(ErrorKind::IsADirectory, node.path()));
        }
        if node.local {
            if let Some(w) = self.writers.by_ino.lock().remove(&node.ino) {
                self.cache.delete_later(w.spool.path.clone());
                w.abandon(FsError::not_found("deleted before publishing"));
            }
        } else {
            let fref = node.file_ref();
            match self.client.delete_file(&fref).await {
                Ok(()) | Err(registry::Error::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut tree = self.tree.lock();
        tree.remove_child(parent, name);
        if !node.local {
            // The version went with its last file, and the package with
            // its last version.
            if let Some(package) = tree.hide_if_emptied(parent) {
                tree.hide_if_emptied(package);
            }
        }
        Ok(())
    }

    /// `rename` within a version directory of a local (scratch) file; the
    /// new name is published at once unless it is a scratch name too. The
    /// registry cannot rename: published files and directories → EPERM.
    pub async fn rename(
        &self,
        parent: Ino,
        name: &str,
        newparent: Ino,
        newname: &str,
    ) -> FsResult<()> {
        self.check_writable()?;
        let node = self.child_node(parent, name).await?;
        if node.kind.is_dir() || !node.local {
            return Err(err!(
                NotPermitted,
                "{}: the registry cannot rename published files or directories",
                node.path()
            ));
        }
        if newparent != parent {
            return Err(err!(
                CrossDirectory,
                "{}: rename only within its version directory",
                node.path()
            ));
        }
        if !is_scratch(newname) && validate::validate_filename(newname).is_err() {
            return Err(err!(
                Invalid,
                "{newname}: the registry refuses this filename"
            ));
        }
        let w = self
            .writer_of(node.ino)
            .ok_or_else(|| FsError::not_found(node.path()))?;
        {
            let mut tree = self.tree.lock();
            if let Some(target) = tree.child(parent, newname).cloned() {
                if target.ino != node.ino {
                    if !target.local {
                        return Err(err!(
                            Exists,
                            "{}: already published; published files cannot be replaced",
                            target.path()
                        ));
                    }
                    // Replacing another local file, as rename(2) does.
                    if let Some(old) = self.writers.by_ino.lock().remove(&target.ino) {
                        self.cache.delete_later(old.spool.path.clone());
                        old.abandon(FsError::not_found("replaced by rename"));
                    }
                    tree.remove_child(parent, newname);
                }
            }
            tree.rename_child(parent, name, newname);
        }
        // A streamed upload under the old name is abandoned.
        w.state.lock().stop_streaming();
        if is_scratch(newname) {
            return Ok(());
        }
        // As rename(2): if it fails, the file keeps its old name and data
        // (rsync, editors still have their temporary file).
        let r = self.publish_or(&w, false, OnFailure::Keep).await;
        if r.is_err() && !w.is_published() {
            self.tree.lock().rename_child(parent, newname, name);
        }
        r
    }
}

fn kind_word(parent: Kind) -> &'static str {
    match parent {
        Kind::Owner => "package",
        Kind::Package => "version",
        _ => "",
    }
}
