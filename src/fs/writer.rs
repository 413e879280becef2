//! A file being written: its spool, its state machine (`Phase`), and the
//! count of its open handles. Shared by every handle on the file; the
//! write path (`write.rs`) moves it along, publishing (`publish.rs`) ends
//! it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::error::{ErrorKind, FsError, FsResult};
use super::locks::{Ordered, Rank};
use super::spool::Spool;
use super::tree::Ino;
use super::upstream::Upstream;

/// The files being written, and the locks that serialise the first
/// uploads into a version that exists only locally (`mkdir`), so that two
/// files copied into it do not both create it.
pub(super) struct Writers {
    pub(super) by_ino: Ordered<HashMap<Ino, Arc<Writer>>>,
    /// By lowercased `owner\0package\0version`.
    pub(super) version_locks: Ordered<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Writers {
    pub(super) fn new() -> Writers {
        Writers {
            by_ino: Ordered::new(Rank::Writers, HashMap::new()),
            version_locks: Ordered::default(),
        }
    }
}

/// Data of one file being written, shared by all its handles.
pub(super) struct Writer {
    pub ino: Ino,
    pub(super) spool: Spool,
    pub(super) state: Ordered<WriterState>,
    /// One publication at a time.
    pub(super) publishing: tokio::sync::Mutex<()>,
    /// Open handles (descriptors) on this file: the last release of one
    /// publishes a file that no close did.
    pub(super) handles: AtomicUsize,
}

pub(super) struct WriterState {
    pub(super) size: u64,
    pub(super) phase: Phase,
}

/// Where a file being written is:
/// `Open(NoData)` → `Open(Streaming | AtClose)` → `Publishing` →
/// `Published` | `Failed`. Writes are taken only while `Open`.
pub(super) enum Phase {
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
pub(super) enum Upload {
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
    pub(super) fn had_data(&self) -> bool {
        match &self.phase {
            Phase::Open(Upload::NoData) => false,
            Phase::Failed { had_data, .. } => *had_data,
            _ => true,
        }
    }

    /// Gives up on the file: any streamed PUT is dropped (aborted mid-body,
    /// so the registry stores nothing of it).
    pub(super) fn fail(&mut self, error: FsError) {
        let had_data = self.had_data();
        self.phase = Phase::Failed { error, had_data };
    }

    /// Drops a streamed PUT in progress: the file goes up at close instead.
    pub(super) fn stop_streaming(&mut self) -> bool {
        if matches!(self.phase, Phase::Open(Upload::Streaming(_))) {
            self.phase = Phase::Open(Upload::AtClose);
            return true;
        }
        false
    }
}

/// What becomes of a file whose upload failed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum OnFailure {
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

pub(super) fn erofs() -> FsError {
    FsError::new(ErrorKind::ReadOnly, "mounted read-only")
}

impl Writer {
    pub(super) fn read(&self, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        super::handles::pread(self.spool.file(), offset, size)
    }

    pub(super) fn is_published(&self) -> bool {
        matches!(self.state.lock().phase, Phase::Published)
    }

    /// The file will never be published (deleted, replaced, write failed):
    /// a streamed upload in progress is aborted.
    pub(super) fn abandon(&self, reason: FsError) {
        self.state.lock().fail(reason);
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
