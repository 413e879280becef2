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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::error::{err, ErrorKind, FsError, FsResult};
use super::spool::{self, Spool, SpoolReader};
use super::tree::{ChildSpec, Ino, Kind, Node};
use super::upstream::Upstream;
use super::{lock, Attr, Fs, Handle};
use crate::protocol::validate::{self, client_version_ok};
use crate::registry::{self, FileRef, Sent};

/// Data of one file being written, shared by all its handles.
pub(super) struct Writer {
    pub ino: Ino,
    spool: Spool,
    state: Mutex<WriterState>,
    /// One publication at a time.
    publishing: tokio::sync::Mutex<()>,
    /// Open handles (descriptors) on this file: the last release of one
    /// publishes a file that no close did.
    handles: AtomicUsize,
}

struct WriterState {
    size: u64,
    phase: Phase,
}

/// Where a file being written is:
/// `Open(NoData)` → `Open(Streaming | AtClose)` → `Publishing` →
/// `Published` | `Failed`. Writes are taken only while `Open`.
enum Phase {
    Open(Upload),
    /// `publish` sealed the content and is uploading it; writes are refused.
    Publishing,
    Published,
    /// It will never be published: a write failed, the upload failed, or
    /// the file was deleted or replaced. `had_data`: something had been
    /// written, so a close reports the failure (a file closed without data
    /// reports it only at fsync or release).
    Failed {
        error: FsError,
        had_data: bool,
    },
}

/// How the data of an open file reaches the registry.
enum Upload {
    /// Nothing written yet: a first write at offset 0 may start streaming.
    NoData,
    /// Streamed while written: a chunked PUT that `close()` ends.
    Streaming(Upstream),
    /// One PUT of the whole spool at `close()` (a write elsewhere than the
    /// end, a truncate, or streaming off or impossible).
    AtClose,
}

impl WriterState {
    /// Data was written (the file is to be published at close).
    fn had_data(&self) -> bool {
        match &self.phase {
            Phase::Open(Upload::NoData) => false,
            Phase::Failed { had_data, .. } => *had_data,
            _ => true,
        }
    }

    /// Gives up on the file: any streamed PUT is dropped (aborted mid-body,
    /// so the registry stores nothing of it).
    fn fail(&mut self, error: FsError) {
        let had_data = self.had_data();
        self.phase = Phase::Failed { error, had_data };
    }

    /// Drops a streamed PUT in progress: the file goes up at close instead.
    fn stop_streaming(&mut self) -> bool {
        if matches!(self.phase, Phase::Open(Upload::Streaming(_))) {
            self.phase = Phase::Open(Upload::AtClose);
            return true;
        }
        false
    }
}

/// What becomes of a file whose upload failed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnFailure {
    /// Dropped with its spool: a close reported the failure, the
    /// application keeps its source (`cp`, `mv`).
    Discard,
    /// Kept, open for another try: a rename to a publishable name failed,
    /// and the file keeps its old name.
    Keep,
}

/// Local scratch files: never uploaded under this name.
pub(super) fn is_scratch(name: &str) -> bool {
    name.starts_with('.')
}

fn erofs() -> FsError {
    FsError::new(ErrorKind::ReadOnly, "mounted read-only")
}

impl Writer {
    pub(super) fn read(&self, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        super::pread(self.spool.file(), offset, size)
    }

    fn is_published(&self) -> bool {
        matches!(lock(&self.state).phase, Phase::Published)
    }

    /// The file will never be published (deleted, replaced, write failed):
    /// a streamed upload in progress is aborted.
    fn abandon(&self, reason: FsError) {
        lock(&self.state).fail(reason);
    }

    /// A new handle on the file.
    pub(super) fn opened(&self) {
        self.handles.fetch_add(1, Ordering::SeqCst);
    }

    /// A handle was released; whether it was the last.
    pub(super) fn released(&self) -> bool {
        self.handles.fetch_sub(1, Ordering::SeqCst) == 1
    }
}

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
        let mut tree = lock(&self.tree);
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
            lock(&self.tree).invalidate(node.ino);
            self.ensure_listing(&node).await?;
        }
        if !lock(&self.tree).children(node.ino).is_empty() {
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
        let mut tree = lock(&self.tree);
        tree.remove_child(parent, name);
        if node.kind == Kind::Version && !node.local && tree.children(parent).is_empty() {
            // The package went away with its last version: an empty
            // placeholder until rmdir, as for versions (so `rm -r` works).
            if let Some(p) = tree.get_mut(parent).filter(|p| !p.local) {
                p.local = true;
                p.hidden = true;
            }
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
        lock(&self.tree)
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
            let mut tree = lock(&self.tree);
            if let Some(existing) = tree.child(parent, name) {
                self.cache.delete_later(spool.path.clone());
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
            state: Mutex::new(WriterState {
                size: 0,
                phase: Phase::Open(Upload::NoData),
            }),
            publishing: tokio::sync::Mutex::new(()),
            handles: AtomicUsize::new(0),
        });
        writer.opened();
        lock(&self.writers).insert(ino, Arc::clone(&writer));
        let fh = self.add_handle(Handle::Write(writer, opener));
        Ok((self.getattr(ino)?, fh))
    }

    /// The writer of a local file, if it is one.
    pub(super) fn writer_of(&self, ino: Ino) -> Option<Arc<Writer>> {
        lock(&self.writers).get(&ino).cloned()
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
        let mut st = lock(&w.state);
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
        if let Some(n) = lock(&self.tree).get_mut(w.ino) {
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
        let undecided = matches!(lock(&w.state).phase, Phase::Open(Upload::NoData));
        if !self.config.stream_uploads || !undecided {
            return None;
        }
        let node = lock(&self.tree).get(w.ino).cloned()?;
        if is_scratch(&node.file) {
            return None;
        }
        let fref = node.file_ref();
        registry::validate_ref(&fref).ok()?;
        let version_local = lock(&self.tree).get(node.parent).is_some_and(|v| v.local);
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
            let mut st = lock(&w.state);
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
        if let Some(n) = lock(&self.tree).get_mut(ino) {
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
        let wrote = lock(&w.state).had_data();
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
        let open = matches!(lock(&w.state).phase, Phase::Open(_) | Phase::Publishing);
        if open {
            if let Err(e) = self.publish(&w, true).await {
                tracing::warn!(error = %e, "publishing at release failed");
            }
        }
    }

    /// Uploads the spool under the file's current name (PROTOCOL.md §writes,
    /// §errno, §put-retry).
    /// On failure the name is dropped from the kernel's cache too when
    /// `forget` is set (only from close paths, which hold no directory lock).
    async fn publish(&self, w: &Arc<Writer>, forget: bool) -> FsResult<()> {
        self.publish_or(w, forget, OnFailure::Discard).await
    }

    /// `publish`, with what becomes of the file if the upload fails.
    async fn publish_or(
        &self,
        w: &Arc<Writer>,
        forget: bool,
        on_failure: OnFailure,
    ) -> FsResult<()> {
        let _one = w.publishing.lock().await;
        if let Some(done) = self.settled(w, forget) {
            return done;
        }
        let node = self.node(w.ino)?;
        if is_scratch(&node.file) {
            return Ok(()); // published when renamed to a real name
        }
        // Sealed: from here on writes are refused. Checked again under the
        // same lock, as the file may have been abandoned meanwhile.
        let (size, upstream) = {
            let mut st = lock(&w.state);
            match std::mem::replace(&mut st.phase, Phase::Publishing) {
                Phase::Open(Upload::Streaming(u)) => (st.size, Some(u)),
                Phase::Open(_) | Phase::Publishing => (st.size, None),
                settled => {
                    st.phase = settled;
                    drop(st);
                    return self.settled(w, forget).unwrap_or(Ok(()));
                }
            }
        };
        let fref = node.file_ref();
        let result = self.upload(&node, &fref, w, size, upstream).await;
        match result {
            Ok(sha) => {
                lock(&w.state).phase = Phase::Published;
                let sha = sha.unwrap_or_default();
                self.mark_published(&node, &sha, size);
                lock(&self.writers).remove(&w.ino);
                let kept = if sha.is_empty() {
                    self.cache.delete_later(w.spool.path.clone());
                    Ok(())
                } else {
                    self.cache.commit(&w.spool.path, &sha, size, None)
                };
                if let Err(e) = kept {
                    tracing::warn!(error = %e, "cannot move published file into the cache");
                }
                tracing::info!(path = %node.path(), size, "published");
                Ok(())
            }
            Err(e) if on_failure == OnFailure::Keep => {
                tracing::warn!(path = %node.path(), error = %e, "publishing failed; the file stays local");
                lock(&w.state).phase = Phase::Open(Upload::AtClose);
                Err(e)
            }
            Err(e) => {
                tracing::warn!(path = %node.path(), error = %e, "publishing failed; the file was not published");
                lock(&w.state).fail(e.clone());
                lock(&self.writers).remove(&w.ino);
                lock(&self.tree).remove_child(node.parent, &node.file);
                if forget {
                    self.forget_entry(node.parent, &node.file);
                }
                self.cache.delete_later(w.spool.path.clone());
                Err(e)
            }
        }
    }

    /// The outcome of a writer that is already published or failed (a
    /// failed one is discarded); `None` while it can still be published.
    fn settled(&self, w: &Arc<Writer>, forget: bool) -> Option<FsResult<()>> {
        let failed = match &lock(&w.state).phase {
            Phase::Published => return Some(Ok(())),
            Phase::Failed { error, .. } => error.clone(),
            Phase::Open(_) | Phase::Publishing => return None,
        };
        self.discard(w, forget);
        Some(Err(failed))
    }

    /// After a `201` for the whole body: the registry's listing must show
    /// the file with the size and sha256 of what was sent. A listing that
    /// shows other bytes, or no such file, means the registry does not have
    /// this upload (a proxy that swallowed it, a server that stored
    /// something else): EIO, so the source is kept. Only when the listing
    /// cannot be had is the 201 alone trusted. The returned sha256 is
    /// always that of the bytes sent, never one taken from the listing
    /// (the cache is keyed by it).
    async fn confirm_listed(&self, node: &Node, fref: &FileRef, sent: &Sent) -> FsResult<String> {
        let listed = match self.listed_file(fref).await {
            Ok(listed) => listed,
            Err(e) => {
                tracing::info!(path = %node.path(), error = %e, "cannot confirm the upload in the listing; the registry answered 201 after the whole body");
                return Ok(sent.sha256.clone());
            }
        };
        match listed {
            Some(f) if f.size == Some(sent.len) && f.sha256.as_deref() == Some(&sent.sha256) => {
                Ok(sent.sha256.clone())
            }
            Some(f) => Err(err!(Io, "{}: the registry answered 201 but lists the file with size {:?} and sha256 {:?}, not the {} bytes with sha256 {} that were sent; not counted as published",
                    node.path(),
                    f.size,
                    f.sha256,
                    sent.len,
                    sent.sha256)),
            None => Err(err!(Io, "{}: the registry answered 201 but does not list the file; not counted as published",
                    node.path())),
        }
    }

    /// Drops a file that failed before publishing (a failed write): its
    /// name, its writer and its spool. Idempotent.
    fn discard(&self, w: &Arc<Writer>, forget: bool) {
        lock(&w.state).stop_streaming();
        {
            let mut writers = lock(&self.writers);
            if writers.get(&w.ino).is_some_and(|x| Arc::ptr_eq(x, w)) {
                writers.remove(&w.ino);
            }
        }
        let node = lock(&self.tree).get(w.ino).cloned();
        if let Some(node) = node.filter(|n| n.local && n.kind == Kind::File) {
            lock(&self.tree).remove_child(node.parent, &node.file);
            if forget {
                self.forget_entry(node.parent, &node.file);
            }
        }
        self.cache.delete_later(w.spool.path.clone());
    }

    /// The PUT and the interpretation of its outcome: the sha256 of the
    /// published file when known. The first attempt is the streamed PUT
    /// when there is one (sealed here at `size`).
    async fn upload(
        &self,
        node: &Node,
        fref: &FileRef,
        w: &Writer,
        size: u64,
        mut upstream: Option<Upstream>,
    ) -> FsResult<Option<String>> {
        if let Err(e) = registry::validate_ref(fref) {
            return Err(e.into()); // EINVAL, nothing sent
        }
        // The first file of a new version: one PUT at a time (PROTOCOL.md
        // §concurrency).
        // A streamed PUT holds the lock itself until it ends.
        let version_local = lock(&self.tree).get(node.parent).is_some_and(|v| v.local);
        let vlock = version_local.then(|| self.version_lock(node));
        let mut guard = None;
        let mut retried = false;
        loop {
            let attempt = match upstream.take() {
                Some(u) => u.finish(size).await,
                None => {
                    if let (None, Some(l)) = (&guard, &vlock) {
                        guard = Some(Arc::clone(l).lock_owned().await);
                    }
                    self.upload_spool(fref, w, size).await
                }
            };
            let err = match attempt {
                Ok(sent) if sent.len == size => {
                    return self.confirm_listed(node, fref, &sent).await.map(Some)
                }
                // The spool and the body disagree: the registry may hold a
                // file of the wrong length. The listing check below decides.
                Ok(sent) => registry::Error::Io(format!(
                    "{}: sent {} bytes of a {size}-byte file",
                    node.path(),
                    sent.len
                )),
                Err(e) => e,
            };
            if retried
                && matches!(
                    err,
                    registry::Error::Conflict(_) | registry::Error::BadRequest(_)
                )
            {
                // The second PUT found the name taken: by our first attempt,
                // which landed after the listing was checked, or by an
                // identical upload. The same bytes are success.
                if let Ok(Some(sha)) = self.check_uploaded(node, fref, w).await {
                    tracing::info!(path = %node.path(), "the registry has the file with these bytes");
                    return Ok(Some(sha));
                }
            }
            match err {
                registry::Error::BadRequest(msg) => {
                    // Local validation passed: most likely the 1.17-style
                    // "package version already exists" (PROTOCOL.md §errno).
                    return match self
                        .client
                        .list_files(&fref.owner, &fref.name, &fref.version)
                        .await
                    {
                        Ok(files) if !files.is_empty() => Err(err!(
                            Exists,
                            "{}: the registry refused it as a duplicate: {msg}",
                            node.path()
                        )),
                        _ => Err(err!(Invalid, "{}: {msg}", node.path())),
                    };
                }
                e @ (registry::Error::Network(_)
                | registry::Error::Timeout(_)
                | registry::Error::Io(_)
                | registry::Error::Server { .. }) => {
                    // The answer was lost or the server failed: did the
                    // registry get the file? No blind retry (PROTOCOL.md
                    // §put-retry): ask the listing first, and PUT again at
                    // most once, only when the file is absent. A second PUT
                    // cannot overwrite anything: a file that appeared in
                    // the meantime answers 409.
                    match self.check_uploaded(node, fref, w).await {
                        Ok(Some(sha)) => {
                            tracing::info!(path = %node.path(), "the upload failed ({e}), but the registry has the file");
                            return Ok(Some(sha));
                        }
                        Ok(None) if !retried => {
                            tracing::info!(path = %node.path(), error = %e, "upload failed and the registry does not have the file; retrying once");
                            retried = true;
                        }
                        Ok(None) => return Err(e.into()),
                        Err(check) if check.kind == ErrorKind::Exists => return Err(check),
                        Err(check) => {
                            tracing::warn!(path = %node.path(), error = %check, "cannot check whether the failed upload arrived");
                            return Err(e.into());
                        }
                    }
                }
                e => return Err(e.into()),
            }
        }
    }

    /// The PUT of the whole spool, `size` bytes, with `Content-Length`.
    async fn upload_spool(
        &self,
        fref: &FileRef,
        w: &Writer,
        size: u64,
    ) -> registry::Result<registry::Sent> {
        let reader = SpoolReader::open(&w.spool.path).map_err(|e| {
            registry::Error::Io(format!("open spool {}: {e}", w.spool.path.display()))
        })?;
        let body = spool::body(Arc::new(reader), size);
        self.client.upload(fref, size, Box::pin(body)).await
    }

    /// After a failed PUT: `Some(sha)` when the registry lists the file
    /// with the spool's sha256, `None` when it does not list the file.
    /// A file of that name with other bytes is EEXIST.
    async fn check_uploaded(
        &self,
        node: &Node,
        fref: &FileRef,
        w: &Writer,
    ) -> FsResult<Option<String>> {
        let local = {
            let f = w
                .spool
                .file()
                .try_clone()
                .map_err(|e| FsError::io(e, "spool"))?;
            tokio::task::spawn_blocking(move || crate::cache::sha256_file(&f))
                .await
                .map_err(|e| FsError::new(ErrorKind::Io, e.to_string()))?
                .map_err(|e| FsError::io(e, "hash spool"))?
        };
        match self.listed_file(fref).await? {
            Some(f) if f.sha256.as_deref() == Some(local.as_str()) => Ok(Some(local)),
            Some(_) => Err(err!(
                Exists,
                "{}: another upload published this name",
                node.path()
            )),
            None => Ok(None),
        }
    }

    /// The registry's entry for `fref` in its version's listing (`None`
    /// when the version or the file is not listed).
    async fn listed_file(&self, fref: &FileRef) -> registry::Result<Option<registry::FileEntry>> {
        let files = match self
            .client
            .list_files(&fref.owner, &fref.name, &fref.version)
            .await
        {
            Ok(f) => f,
            Err(registry::Error::NotFound(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        let lower = fref.file.to_lowercase();
        Ok(files.into_iter().find(|f| f.name.to_lowercase() == lower))
    }

    fn version_lock(&self, node: &Node) -> Arc<tokio::sync::Mutex<()>> {
        let key = format!("{}\0{}\0{}", node.owner, node.name, node.version).to_lowercase();
        let mut locks = lock(&self.version_locks);
        // Locks nobody holds are only kept while there are few of them.
        if locks.len() >= 256 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(key).or_default().clone()
    }

    /// After a 201: the file and its parents now exist on the registry.
    fn mark_published(&self, node: &Node, sha: &str, size: u64) {
        let mut tree = lock(&self.tree);
        if let Some(n) = tree.get_mut(node.ino) {
            n.local = false;
            n.sha256 = sha.to_string();
            n.size = size;
        }
        let mut up = node.parent;
        while let Some(p) = tree.get_mut(up) {
            if !p.local {
                break;
            }
            p.local = false;
            p.hidden = false;
            up = p.parent;
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
            if let Some(w) = lock(&self.writers).remove(&node.ino) {
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
        let mut tree = lock(&self.tree);
        tree.remove_child(parent, name);
        let version_gone = !node.local
            && tree.children(parent).is_empty()
            && tree.get(parent).is_some_and(|v| !v.local);
        if version_gone {
            // Gone from the registry with its last file: no longer listed,
            // but an empty placeholder until rmdir (so `rm -r` works).
            let package = tree.get_mut(parent).map(|v| {
                v.local = true;
                v.hidden = true;
                v.parent
            });
            // And so is the package when that was its last version.
            if let Some(pkg) = package.filter(|&p| tree.children(p).is_empty()) {
                if let Some(p) = tree.get_mut(pkg).filter(|p| !p.local) {
                    p.local = true;
                    p.hidden = true;
                }
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
            let mut tree = lock(&self.tree);
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
                    if let Some(old) = lock(&self.writers).remove(&target.ino) {
                        self.cache.delete_later(old.spool.path.clone());
                        old.abandon(FsError::not_found("replaced by rename"));
                    }
                    tree.remove_child(parent, newname);
                }
            }
            tree.rename_child(parent, name, newname);
        }
        // A streamed upload under the old name is abandoned.
        lock(&w.state).stop_streaming();
        if is_scratch(newname) {
            return Ok(());
        }
        // As rename(2): if it fails, the file keeps its old name and data
        // (rsync, editors still have their temporary file).
        let r = self.publish_or(&w, false, OnFailure::Keep).await;
        if r.is_err() && !w.is_published() {
            lock(&self.tree).rename_child(parent, newname, name);
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
