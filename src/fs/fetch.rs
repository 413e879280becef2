//! One shared, streamed download of a published file. Every reader of the
//! same file (same sha256) shares one `Fetch`: bytes go into a sparse file
//! under the cache's `partial/` directory as they arrive, and a read returns
//! as soon as its own bytes are there. Streams are ranged GETs that run
//! ahead of sequential readers by a growing window (up to the prefetch
//! budget) and pause when they are far enough ahead; a read far from every
//! stream starts a new ranged stream instead of waiting. When every byte is
//! present the file is checked against its sha256 and moved into the cache;
//! the read that completes the file waits for that verdict, so a corrupt
//! download ends in EIO rather than in wrong bytes at the end of a file.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rangemap::RangeSet;
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Notify};

use super::error::{FsError, FsResult};
use crate::cache::{Cache, Reservation};
use crate::registry::{self, Client, FileRef};

/// First read-ahead window of a stream that starts at offset 0 (most
/// likely a sequential reader) and of one that starts elsewhere (random
/// access: keep what the server sends small). It doubles with each
/// sequential read, up to the prefetch budget.
const FIRST_WINDOW: u64 = 1024 * 1024;
const RANDOM_WINDOW: u64 = 128 * 1024;
/// Smallest ranged request.
const MIN_REQUEST: u64 = 64 * 1024;
/// A stream idle (paused at its demand) this long closes its connection.
const IDLE: Duration = Duration::from_secs(5);
/// At most this many streams per file; beyond, an idle one is cancelled.
const MAX_STREAMS: usize = 8;
/// A read this close ahead of a stream waits for it rather than opening a
/// new connection.
const NEAR: u64 = 4 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Incomplete,
    Verifying,
    Good,
    Bad(String),
}

#[derive(Debug)]
struct Stream {
    id: u64,
    start: u64,
    pos: u64,
    /// The stream may download up to here before pausing.
    demand: u64,
    window: u64,
    cancelled: bool,
}

#[derive(Debug)]
struct State {
    present: RangeSet<u64>,
    streams: Vec<Stream>,
    next_id: u64,
    verdict: Verdict,
    /// Bumped on every stream failure; `last_error` is the latest.
    err_gen: u64,
    last_error: Option<FsError>,
    reservation: Option<Reservation>,
    committed: bool,
    /// The cache directory is full: reads bypass it.
    bypass: bool,
}

/// A download shared by all readers of one file.
pub struct Fetch {
    client: Client,
    cache: Arc<Cache>,
    fref: FileRef,
    pub size: u64,
    pub sha256: String,
    /// The sparse download file; `None` when the cache directory could not
    /// hold it (reads then go straight to the registry).
    path: Option<PathBuf>,
    file: Option<File>,
    prefetch_max: u64,
    state: Mutex<State>,
    /// Bumped whenever bytes arrive or a stream ends.
    progress: watch::Sender<u64>,
    /// Woken when a reader raises a stream's demand or cancels it.
    demand_changed: Notify,
}

enum Step {
    Ready,
    Direct,
    Wait,
    Start(u64, u64),
}

impl Fetch {
    pub fn new(
        client: Client,
        cache: Arc<Cache>,
        fref: FileRef,
        size: u64,
        sha256: String,
        prefetch_max: u64,
    ) -> FsResult<Arc<Fetch>> {
        let reservation = cache.reserve(size);
        let (path, file) = match cache.new_partial() {
            Ok((p, f)) => (Some(p), Some(f)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot create a download file in the cache directory; reading without the cache");
                (None, None)
            }
        };
        let bypass = file.is_none();
        Ok(Arc::new(Fetch {
            client,
            cache,
            fref,
            size,
            sha256,
            path,
            file,
            prefetch_max: prefetch_max.max(FIRST_WINDOW),
            state: Mutex::new(State {
                present: RangeSet::new(),
                streams: Vec::new(),
                next_id: 0,
                verdict: Verdict::Incomplete,
                err_gen: 0,
                last_error: None,
                reservation,
                committed: false,
                bypass,
            }),
            progress: watch::channel(0).0,
            demand_changed: Notify::new(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn what(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.fref.owner, self.fref.name, self.fref.version, self.fref.file
        )
    }

    /// Reads `len` bytes at `offset`, waiting only for those bytes.
    pub async fn read(self: &Arc<Self>, offset: u64, len: u32) -> FsResult<Vec<u8>> {
        let end = (offset + u64::from(len)).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let stall = self.client.timeout();
        let mut rx = self.progress.subscribe();
        let err_gen = self.lock().err_gen;
        loop {
            let step = self.plan(offset..end, err_gen)?;
            match step {
                Step::Ready => break,
                Step::Direct => return self.read_direct(offset, end).await,
                Step::Start(id, start) => {
                    let me = Arc::clone(self);
                    tokio::spawn(async move { me.run_stream(id, start).await });
                }
                Step::Wait => {
                    if tokio::time::timeout(stall, rx.changed()).await.is_err() {
                        let msg = format!(
                            "{}: no data for {}s at offset {offset}",
                            self.what(),
                            stall.as_secs()
                        );
                        tracing::warn!("{msg}");
                        return Err(FsError::new(libc::EIO, msg));
                    }
                }
            }
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        self.file
            .as_ref()
            .ok_or_else(|| FsError::new(libc::EIO, "no download file"))?
            .read_exact_at(&mut buf, offset)
            .map_err(|e| FsError::io(e, "read download file"))?;
        Ok(buf)
    }

    /// A read straight from the registry into memory, used when the cache
    /// directory is full. Retries transient failures within the timeout.
    async fn read_direct(&self, offset: u64, end: u64) -> FsResult<Vec<u8>> {
        let deadline = Instant::now() + self.client.timeout();
        let mut buf = Vec::with_capacity((end - offset) as usize);
        while (buf.len() as u64) < end - offset {
            let pos = offset + buf.len() as u64;
            let attempt = async {
                let mut dl = self.client.download(&self.fref, pos, end).await?;
                while let Some(chunk) = dl.chunk().await? {
                    buf.extend_from_slice(&chunk);
                }
                Ok::<(), registry::Error>(())
            };
            match attempt.await {
                Ok(()) if (buf.len() as u64) < end - offset => {
                    return Err(FsError::new(
                        libc::EIO,
                        format!("{}: body ended early", self.what()),
                    ));
                }
                Ok(()) => {}
                Err(e) if e.is_transient() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate((end - offset) as usize);
        Ok(buf)
    }

    /// Decides what a read of `want` must do now.
    fn plan(&self, want: Range<u64>, err_gen: u64) -> FsResult<Step> {
        let mut st = self.lock();
        if let Verdict::Bad(msg) = &st.verdict {
            return Err(FsError::new(libc::EIO, msg.clone()));
        }
        if st.bypass {
            return Ok(Step::Direct);
        }
        // Keep streams that serve this reader running ahead of it.
        for s in st.streams.iter_mut() {
            if s.start <= want.end && want.start <= s.pos + NEAR.max(s.window) {
                let target = (want.end + s.window).min(self.size);
                if target > s.demand {
                    s.demand = target;
                    s.window = (s.window * 2).min(self.prefetch_max);
                    self.demand_changed.notify_waiters();
                }
            }
        }
        let gap = st.present.gaps(&want).next();
        let Some(gap) = gap else {
            if want.end < self.size || st.verdict == Verdict::Good {
                return Ok(Step::Ready);
            }
            // The read reaching EOF: if it completes the file, wait for
            // the checksum verdict; a tail read of a partial file does not.
            let complete = st.present.gaps(&(0..self.size)).next().is_none();
            return Ok(if complete { Step::Wait } else { Step::Ready });
        };
        if st.err_gen != err_gen {
            if let Some(e) = &st.last_error {
                return Err(e.clone());
            }
        }
        let m = gap.start;
        if st
            .streams
            .iter()
            .any(|s| !s.cancelled && s.pos <= m && m < s.pos + NEAR.max(s.window))
        {
            return Ok(Step::Wait);
        }
        if st.streams.len() >= MAX_STREAMS {
            if let Some(victim) = st.streams.iter_mut().find(|s| s.pos >= s.demand) {
                victim.cancelled = true;
                self.demand_changed.notify_waiters();
            }
        }
        let id = st.next_id;
        st.next_id += 1;
        let window = if m == 0 { FIRST_WINDOW } else { RANDOM_WINDOW };
        st.streams.push(Stream {
            id,
            start: m,
            pos: m,
            demand: (want.end + window).min(self.size),
            window: (window * 2).min(self.prefetch_max),
            cancelled: false,
        });
        Ok(Step::Start(id, m))
    }

    /// Downloads from `start` while readers want more, resuming after
    /// transient failures for up to the client timeout without progress.
    async fn run_stream(self: Arc<Self>, id: u64, start: u64) {
        let mut pos = start;
        let mut hasher = (start == 0).then(Sha256::new);
        let mut last_progress = Instant::now();
        let mut body: Option<registry::Download> = None;
        let mut backoff = Duration::from_millis(50);
        let outcome: Result<(), FsError> = loop {
            if pos >= self.size {
                break Ok(());
            }
            let notified = self.demand_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let demand = {
                let st = self.lock();
                let Some(s) = st.streams.iter().find(|s| s.id == id) else {
                    break Ok(());
                };
                if s.cancelled || st.present.contains(&pos) {
                    break Ok(()); // another stream has these bytes
                }
                s.demand
            };
            if pos >= demand {
                body = None;
                if tokio::time::timeout(IDLE, notified).await.is_err() {
                    break Ok(());
                }
                continue;
            }
            let dl = match body.as_mut() {
                Some(dl) => dl,
                None => {
                    // Ask for what readers want now (their window included),
                    // so random reads do not make the server send the file.
                    let want_end = {
                        let st = self.lock();
                        let next_present = st
                            .present
                            .iter()
                            .map(|r| r.start)
                            .find(|&s| s > pos)
                            .unwrap_or(self.size);
                        demand.max(pos + MIN_REQUEST).min(next_present)
                    };
                    match self.client.download(&self.fref, pos, want_end).await {
                        Ok(dl) => body.insert(dl),
                        Err(e) => break Err(e.into()),
                    }
                }
            };
            match dl.chunk().await {
                Ok(Some(bytes)) => {
                    let n = (bytes.len() as u64).min(self.size - pos) as usize;
                    let written = match &self.file {
                        Some(f) => f.write_all_at(&bytes[..n], pos),
                        None => Err(std::io::Error::from_raw_os_error(libc::ENOSPC)),
                    };
                    if let Err(e) = written {
                        tracing::warn!(
                            file = %self.what(),
                            error = %e,
                            "cannot write to the cache directory; further reads of this file bypass the cache"
                        );
                        self.lock().bypass = true;
                        break Ok(());
                    }
                    if let Some(h) = hasher.as_mut() {
                        h.update(&bytes[..n]);
                    }
                    pos += n as u64;
                    {
                        let mut st = self.lock();
                        st.present.insert(pos - n as u64..pos);
                        if let Some(s) = st.streams.iter_mut().find(|s| s.id == id) {
                            s.pos = pos;
                        }
                    }
                    self.progress.send_modify(|v| *v += 1);
                    last_progress = Instant::now();
                    backoff = Duration::from_millis(50);
                }
                Ok(None) => body = None, // segment done (or cut short): next one
                Err(e) if e.is_transient() && last_progress.elapsed() < self.client.timeout() => {
                    tracing::info!(file = %self.what(), pos, error = %e, "download interrupted; resuming");
                    body = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => break Err(e.into()),
            }
        };
        let finished = {
            let mut st = self.lock();
            st.streams.retain(|s| s.id != id);
            if let Err(e) = &outcome {
                tracing::warn!(file = %self.what(), pos, error = %e, "download failed");
                st.err_gen += 1;
                st.last_error = Some(e.clone());
            }
            let complete = st.present.gaps(&(0..self.size)).next().is_none();
            let go = complete && st.verdict == Verdict::Incomplete;
            if go {
                st.verdict = Verdict::Verifying;
            }
            go
        };
        self.progress.send_modify(|v| *v += 1);
        if finished {
            let inline = (start == 0 && pos == self.size)
                .then(|| hasher.map(|h| hex::encode(h.finalize())))
                .flatten();
            self.finish(inline).await;
        }
    }

    /// Checks the complete file against its sha256 and keeps it in the
    /// cache, or marks it bad (every further read fails with EIO).
    async fn finish(self: Arc<Self>, digest: Option<String>) {
        let (Some(file), Some(path)) = (&self.file, &self.path) else {
            return;
        };
        let digest = match digest {
            Some(d) => Ok(d),
            None => {
                let f = file.try_clone();
                tokio::task::spawn_blocking(move || crate::cache::sha256_file(&f?))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            }
        };
        let verdict = match digest {
            Ok(d) if d.eq_ignore_ascii_case(&self.sha256) => {
                let reservation = self.lock().reservation.take();
                match self
                    .cache
                    .commit(path, &self.sha256, self.size, reservation)
                {
                    Ok(()) => self.lock().committed = true,
                    Err(e) => {
                        tracing::warn!(file = %self.what(), error = %e, "cannot keep download in cache")
                    }
                }
                Verdict::Good
            }
            Ok(d) => {
                let msg = format!(
                    "{}: downloaded bytes do not match the registry's sha256 (expected {}, got {d}); dropped",
                    self.what(),
                    self.sha256
                );
                tracing::error!("{msg}");
                Verdict::Bad(msg)
            }
            Err(e) => Verdict::Bad(format!("{}: cannot hash download: {e}", self.what())),
        };
        self.lock().verdict = verdict;
        self.progress.send_modify(|v| *v += 1);
    }

    /// Whether the download failed its checksum (the handle should stop
    /// using it).
    pub fn is_bad(&self) -> bool {
        matches!(self.lock().verdict, Verdict::Bad(_))
    }
}

impl Drop for Fetch {
    fn drop(&mut self) {
        let committed = self.state.get_mut().map(|s| s.committed).unwrap_or(false);
        if let (false, Some(path)) = (committed, &self.path) {
            let _ = std::fs::remove_file(path);
        }
    }
}
