//! Publishing: the upload of a finished file and the interpretation of its
//! outcome (PROTOCOL.md §upload-success, §put-retry, §concurrency): one PUT,
//! at most one retry after a listing shows the file absent, the listing
//! check of a 201, and what becomes of the file when it all fails.

use std::sync::Arc;

use super::error::{err, ErrorKind, FsError, FsResult};
use super::spool::{self, SpoolReader};
use super::tree::{Kind, Node};
use super::upstream::Upstream;
use super::writer::{is_scratch, OnFailure, Phase, Upload, Writer};
use super::Fs;
use crate::registry::{self, FileRef, Sent};

impl Fs {
    /// Uploads the spool under the file's current name (PROTOCOL.md §writes,
    /// §errno, §put-retry).
    /// On failure the name is dropped from the kernel's cache too when
    /// `forget` is set (only from close paths, which hold no directory lock).
    pub(super) async fn publish(&self, w: &Arc<Writer>, forget: bool) -> FsResult<()> {
        self.publish_or(w, forget, OnFailure::Discard).await
    }

    /// `publish`, with what becomes of the file if the upload fails.
    pub(super) async fn publish_or(
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
            let mut st = w.state.lock();
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
                w.state.lock().phase = Phase::Published;
                let sha = sha.unwrap_or_default();
                self.mark_published(&node, &sha, size);
                self.writers.by_ino.lock().remove(&w.ino);
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
                w.state.lock().phase = Phase::Open(Upload::AtClose);
                Err(e)
            }
            Err(e) => {
                tracing::warn!(path = %node.path(), error = %e, "publishing failed; the file was not published");
                w.state.lock().fail(e.clone());
                self.writers.by_ino.lock().remove(&w.ino);
                self.tree.lock().remove_child(node.parent, &node.file);
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
        let failed = match &w.state.lock().phase {
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
        w.state.lock().stop_streaming();
        {
            let mut writers = self.writers.by_ino.lock();
            if writers.get(&w.ino).is_some_and(|x| Arc::ptr_eq(x, w)) {
                writers.remove(&w.ino);
            }
        }
        let node = self.tree.lock().get(w.ino).cloned();
        if let Some(node) = node.filter(|n| n.local && n.kind == Kind::File) {
            self.tree.lock().remove_child(node.parent, &node.file);
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
        let version_local = self.tree.lock().get(node.parent).is_some_and(|v| v.local);
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
                // file of the wrong length. The listing check decides.
                Ok(sent) => registry::Error::Io(format!(
                    "{}: sent {} bytes of a {size}-byte file",
                    node.path(),
                    sent.len
                )),
                Err(e) => e,
            };
            match self.after_failed_put(node, fref, w, err, retried).await? {
                Some(sha) => return Ok(Some(sha)),
                None => retried = true,
            }
        }
    }

    /// What a failed PUT means: the file is there after all (its sha256),
    /// one more PUT is due (`None`), or the failure stands.
    async fn after_failed_put(
        &self,
        node: &Node,
        fref: &FileRef,
        w: &Writer,
        err: registry::Error,
        retried: bool,
    ) -> FsResult<Option<String>> {
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
            registry::Error::BadRequest(msg) => Err(self.refused_as(node, fref, &msg).await),
            e @ (registry::Error::Network(_)
            | registry::Error::Timeout(_)
            | registry::Error::Io(_)
            | registry::Error::Server { .. }) => {
                // The answer was lost or the server failed: did the
                // registry get the file? No blind retry (PROTOCOL.md
                // §put-retry): ask the listing first, and PUT again at most
                // once, only when the file is absent. A second PUT cannot
                // overwrite anything: a file that appeared in the meantime
                // answers 409.
                match self.check_uploaded(node, fref, w).await {
                    Ok(Some(sha)) => {
                        tracing::info!(path = %node.path(), "the upload failed ({e}), but the registry has the file");
                        Ok(Some(sha))
                    }
                    Ok(None) if !retried => {
                        tracing::info!(path = %node.path(), error = %e, "upload failed and the registry does not have the file; retrying once");
                        Ok(None)
                    }
                    Ok(None) => Err(e.into()),
                    Err(check) if check.kind == ErrorKind::Exists => Err(check),
                    Err(check) => {
                        tracing::warn!(path = %node.path(), error = %check, "cannot check whether the failed upload arrived");
                        Err(e.into())
                    }
                }
            }
            e => Err(e.into()),
        }
    }

    /// A 400 to a PUT whose names passed the local checks: most likely the
    /// legacy duplicate answer "package version already exists" (PROTOCOL.md
    /// §errno): EEXIST when the version has files, else EINVAL.
    async fn refused_as(&self, node: &Node, fref: &FileRef, msg: &str) -> FsError {
        match self
            .client
            .list_files(&fref.owner, &fref.name, &fref.version)
            .await
        {
            Ok(files) if !files.is_empty() => err!(
                Exists,
                "{}: the registry refused it as a duplicate: {msg}",
                node.path()
            ),
            _ => err!(Invalid, "{}: {msg}", node.path()),
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
        let files = registry::empty_if_absent(
            self.client
                .list_files(&fref.owner, &fref.name, &fref.version)
                .await,
        )?;
        let lower = fref.file.to_lowercase();
        Ok(files.into_iter().find(|f| f.name.to_lowercase() == lower))
    }

    pub(super) fn version_lock(&self, node: &Node) -> Arc<tokio::sync::Mutex<()>> {
        let key = format!("{}\0{}\0{}", node.owner, node.name, node.version).to_lowercase();
        let mut locks = self.writers.version_locks.lock();
        // Locks nobody holds are only kept while there are few of them.
        if locks.len() >= 256 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(key).or_default().clone()
    }

    /// After a 201: the file and its parents now exist on the registry.
    fn mark_published(&self, node: &Node, sha: &str, size: u64) {
        let mut tree = self.tree.lock();
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
}
