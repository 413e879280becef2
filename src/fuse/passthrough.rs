//! FUSE passthrough for files already in the disk cache: the kernel reads
//! the verified cache file itself (`FOPEN_PASSTHROUGH`, Linux ≥ 6.9), so a
//! cached file reads at the speed of a local file, with no request to the
//! daemon. It needs CAP_SYS_ADMIN; without it (or on older kernels) opens
//! fall back to the kernel page cache (`FOPEN_KEEP_CACHE`).
//!
//! The kernel's rules, which this module keeps: all passthrough opens of
//! an inode share one backing file; while one is open, every other open of
//! that inode must be passthrough too (else the open fails with EIO); and
//! an inode with ordinary (cached I/O) opens cannot get a passthrough one.
//! The counts here lag the kernel's (RELEASE comes after the kernel let go),
//! which errs on the safe side of both rules.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use fuser::{BackingId, FileHandle, FopenFlags, ReplyOpen};

use crate::fs::Fs;

#[derive(Default)]
struct InodeIo {
    /// Open handles in ordinary (cached I/O) mode.
    cached: usize,
    backing: Option<Backing>,
}

struct Backing {
    id: BackingId,
    /// The content behind it: only the same content may share it.
    sha256: String,
    opens: usize,
}

#[derive(Clone, Copy)]
enum Mode {
    Cached,
    Passthrough,
}

#[derive(Default)]
struct State {
    inodes: HashMap<u64, InodeIo>,
    handles: HashMap<u64, (u64, Mode)>,
}

pub struct Passthrough {
    enabled: AtomicBool,
    state: Mutex<State>,
}

impl Passthrough {
    pub fn new() -> Passthrough {
        Passthrough {
            enabled: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        }
    }

    /// The kernel agreed to passthrough at INIT.
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replies to the open of file `ino` as handle `fh`: passthrough to its
    /// cache file where the rules allow, else an ordinary open with `flags`.
    pub fn reply_open(&self, fs: &Fs, ino: u64, fh: u64, flags: FopenFlags, reply: ReplyOpen) {
        let mut guard = self.state();
        let st = &mut *guard;
        let io = st.inodes.entry(ino).or_default();
        if let Some(b) = io.backing.as_mut() {
            // Every open of an inode with a backing file must use it; it
            // holds the same bytes as long as the content is the same.
            if fs.content_id(ino).as_deref() == Some(b.sha256.as_str()) {
                b.opens += 1;
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &b.id);
                st.handles.insert(fh, (ino, Mode::Passthrough));
                return;
            }
        } else if io.cached == 0 && self.enabled.load(Ordering::Relaxed) {
            if let Some((file, sha256)) = fs.verified_file(fh, ino) {
                match reply.open_backing(&file) {
                    Ok(id) => {
                        tracing::debug!(ino, "open: the kernel reads the cache file directly");
                        reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
                        io.backing = Some(Backing {
                            id,
                            sha256,
                            opens: 1,
                        });
                        st.handles.insert(fh, (ino, Mode::Passthrough));
                        return;
                    }
                    Err(e) => {
                        self.enabled.store(false, Ordering::Relaxed);
                        tracing::info!(error = %e, "FUSE passthrough unavailable (needs CAP_SYS_ADMIN and a cache directory on a plain filesystem); cached files are served through the daemon");
                    }
                }
            }
        }
        io.cached += 1;
        st.handles.insert(fh, (ino, Mode::Cached));
        drop(guard);
        reply.opened(FileHandle(fh), flags);
    }

    /// Notes an ordinary open made by `create`.
    pub fn note_cached_open(&self, ino: u64, fh: u64) {
        let mut st = self.state();
        st.inodes.entry(ino).or_default().cached += 1;
        st.handles.insert(fh, (ino, Mode::Cached));
    }

    /// Forgets handle `fh`; the backing file goes with its last open.
    pub fn release(&self, fh: u64) {
        let mut guard = self.state();
        let st = &mut *guard;
        let Some((ino, mode)) = st.handles.remove(&fh) else {
            return;
        };
        let Some(io) = st.inodes.get_mut(&ino) else {
            return;
        };
        match mode {
            Mode::Cached => io.cached = io.cached.saturating_sub(1),
            Mode::Passthrough => {
                if let Some(b) = io.backing.as_mut() {
                    b.opens = b.opens.saturating_sub(1);
                    if b.opens == 0 {
                        io.backing = None;
                    }
                }
            }
        }
        if io.cached == 0 && io.backing.is_none() {
            st.inodes.remove(&ino);
        }
    }
}
