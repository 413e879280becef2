//! One shared, streamed download of a published file. Every reader of the
//! same file (same sha256) shares one `Fetch`: bytes go into a sparse file
//! under the cache's `partial/` directory as they arrive, and a read returns
//! as soon as its own bytes are there (still in memory if they have not
//! been written yet: the file is written in large aligned batches, so its
//! page cache is made of large folios and reads of it later run at the
//! speed of a local file). Streams are ranged GETs that run
//! ahead of sequential readers by a growing window (up to the prefetch
//! budget) and pause when they are far enough ahead; a read far from every
//! stream starts a new ranged stream instead of waiting. When every byte is
//! present the file is checked against its sha256 and moved into the cache;
//! the read that completes the file waits for that verdict, so a corrupt
//! download ends in EIO rather than in wrong bytes at the end of a file.

use crate::fs::locks::{Guard, Ordered, Rank};
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rangemap::RangeSet;
use tokio::sync::{watch, Notify};

use super::error::{err, ErrorKind, FsError, FsResult};
use crate::cache::{Cache, Reservation};
use crate::registry::{self, FileRef, Registry};

mod stream;
mod verify;

/// First read-ahead window of a stream that starts at offset 0 (most
/// likely a sequential reader) and of one that starts elsewhere (random
/// access: keep what the server sends small). It doubles with each
/// sequential read, up to the prefetch budget.
const FIRST_WINDOW: u64 = 1024 * 1024;
const RANDOM_WINDOW: u64 = 128 * 1024;
/// Smallest ranged request.
const MIN_REQUEST: u64 = 64 * 1024;
/// Arrived bytes are made visible to readers at least this often, and
/// written to the download file in aligned batches of this size (one
/// `pwritev` each, not one `pwrite` per network chunk).
const BATCH: u64 = 256 * 1024;
/// The verifier hashes at most this much per blocking call.
const VERIFY_BLOCK: u64 = 8 * 1024 * 1024;
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
    /// Published bytes not yet in the file, from `pos` backwards: readers
    /// copy them from here.
    unwritten: Vec<(u64, Bytes)>,
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
    /// The sha256 verifier task is running.
    verifier: bool,
    /// When a read last gave up waiting for bytes (see `FAIL_FAST`).
    timed_out: Option<Instant>,
}

/// After a read gave up waiting, reads that would wait again fail at once
/// for this long. One syscall can be several FUSE reads (the kernel
/// retries a failed readahead with a synchronous read of the same pages),
/// and each must not wait the whole `--timeout` again.
const FAIL_FAST: Duration = Duration::from_secs(1);

/// A download shared by all readers of one file.
pub struct Fetch {
    client: Arc<dyn Registry>,
    cache: Arc<Cache>,
    fref: FileRef,
    pub size: u64,
    pub sha256: String,
    /// The sparse download file; `None` when the cache directory could not
    /// hold it (reads then go straight to the registry).
    path: Option<PathBuf>,
    file: Option<File>,
    prefetch_max: u64,
    state: Ordered<State>,
    /// Bumped whenever bytes arrive or a stream ends.
    progress: watch::Sender<u64>,
    /// Woken when a reader raises a stream's demand or cancels it.
    demand_changed: Notify,
}

enum Step {
    /// The bytes are there; these pieces of them are still in memory.
    Ready(Vec<(u64, Bytes)>),
    Direct,
    Wait,
    /// Start stream (id, offset), and the verifier if it is not running.
    Start(u64, u64, bool),
}

impl Fetch {
    pub fn new(
        client: Arc<dyn Registry>,
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
            state: Ordered::new(
                Rank::Leaf,
                State {
                    present: RangeSet::new(),
                    streams: Vec::new(),
                    next_id: 0,
                    verdict: Verdict::Incomplete,
                    err_gen: 0,
                    last_error: None,
                    reservation,
                    committed: false,
                    bypass,
                    verifier: false,
                    timed_out: None,
                },
            ),
            progress: watch::channel(0).0,
            demand_changed: Notify::new(),
        }))
    }

    fn lock(&self) -> Guard<'_, State> {
        self.state.lock()
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
        tracing::trace!(offset, len, "read");
        let stall = self.client.timeout();
        // A read waits at most `stall` in all, not per byte: a trickling
        // body must not hold it (the download goes on for later reads).
        let deadline = tokio::time::Instant::now() + stall;
        let mut rx = self.progress.subscribe();
        // A read that would wait within FAIL_FAST of another read giving up
        // fails at once (decided once, when the read starts).
        let (err_gen, gave_up_ago) = {
            let st = self.lock();
            let ago = st.timed_out.map(|t| t.elapsed()).filter(|a| *a < FAIL_FAST);
            (st.err_gen, ago)
        };
        loop {
            let step = self.plan(offset..end, err_gen)?;
            match step {
                Step::Ready(pieces) => return self.copy_out(offset..end, &pieces),
                Step::Direct => return self.read_direct(offset, end).await,
                Step::Start(id, start, verifier) => {
                    let me = Arc::clone(self);
                    tokio::spawn(async move { me.run_stream(id, start).await });
                    if verifier {
                        let me = Arc::clone(self);
                        tokio::spawn(async move { me.verify().await });
                    }
                }
                Step::Wait => {
                    tracing::trace!(offset, "read waits for data");
                    if let Some(ago) = gave_up_ago {
                        return Err(err!(Io, "{}: a read gave up waiting for bytes {} ms ago and they still have not arrived",
                                self.what(),
                                ago.as_millis()));
                    }
                    if tokio::time::timeout_at(deadline, rx.changed())
                        .await
                        .is_err()
                    {
                        let msg = format!(
                            "{}: the bytes at offset {offset} did not arrive within {}s",
                            self.what(),
                            stall.as_secs()
                        );
                        tracing::warn!("{msg}");
                        self.lock().timed_out = Some(Instant::now());
                        return Err(FsError::new(ErrorKind::Io, msg));
                    }
                }
            }
        }
    }

    /// The bytes of `want`: from `pieces` where they are still in memory,
    /// else from the download file.
    fn copy_out(&self, want: Range<u64>, pieces: &[(u64, Bytes)]) -> FsResult<Vec<u8>> {
        let file = self.file.as_ref();
        assemble(want, pieces, |buf, off| match file {
            Some(f) => f.read_exact_at(buf, off),
            None => Err(std::io::Error::other("no download file")),
        })
        .map_err(|e| FsError::io(e, "read download file"))
    }

    /// A read straight from the registry into memory, used when the cache
    /// directory is full. Retries transient failures within the timeout.
    async fn read_direct(&self, offset: u64, end: u64) -> FsResult<Vec<u8>> {
        let deadline = Instant::now() + self.client.timeout();
        let mut buf = Vec::with_capacity((end - offset) as usize);
        while (buf.len() as u64) < end - offset {
            let pos = offset + buf.len() as u64;
            let attempt = async {
                let mut dl = self
                    .client
                    .download(&self.fref, pos, end, self.size)
                    .await?;
                while let Some(chunk) = dl.chunk().await? {
                    buf.extend_from_slice(&chunk);
                }
                Ok::<(), registry::Error>(())
            };
            let attempt = tokio::time::timeout_at(deadline.into(), attempt);
            let attempt = attempt.await.unwrap_or_else(|_| {
                Err(registry::Error::Timeout(format!(
                    "{}: the bytes did not arrive in time",
                    self.what()
                )))
            });
            match attempt {
                Ok(()) if (buf.len() as u64) < end - offset => {
                    return Err(err!(Io, "{}: body ended early", self.what()));
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
            return Err(FsError::new(ErrorKind::Io, msg.clone()));
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
            let ready = want.end < self.size || st.verdict == Verdict::Good || {
                // The read reaching EOF: if it completes the file, wait for
                // the checksum verdict; a tail read of a partial file does not.
                st.present.gaps(&(0..self.size)).next().is_some()
            };
            if !ready {
                return Ok(Step::Wait);
            }
            let pieces = st
                .streams
                .iter()
                .flat_map(|s| s.unwritten.iter())
                .filter(|(off, b)| *off < want.end && want.start < off + b.len() as u64)
                .cloned()
                .collect();
            return Ok(Step::Ready(pieces));
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
            unwritten: Vec::new(),
        });
        let verifier = !std::mem::replace(&mut st.verifier, true);
        Ok(Step::Start(id, m, verifier))
    }

    /// Whether the download failed its checksum (the handle should stop
    /// using it).
    pub fn is_bad(&self) -> bool {
        matches!(self.lock().verdict, Verdict::Bad(_))
    }
}

impl Drop for Fetch {
    fn drop(&mut self) {
        let committed = self.state.get_mut().committed;
        if let (false, Some(path)) = (committed, self.path.take()) {
            self.cache.delete_later(path);
        }
    }
}

/// Bytes `want` of a file: copied from `pieces` (offset, bytes) where they
/// cover it, read with `read_at` elsewhere.
fn assemble(
    want: Range<u64>,
    pieces: &[(u64, Bytes)],
    mut read_at: impl FnMut(&mut [u8], u64) -> std::io::Result<()>,
) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; (want.end - want.start) as usize];
    let mut from_file = RangeSet::new();
    from_file.insert(want.clone());
    for (off, bytes) in pieces {
        let lo = (*off).max(want.start);
        let hi = (off + bytes.len() as u64).min(want.end);
        if lo < hi {
            buf[(lo - want.start) as usize..(hi - want.start) as usize]
                .copy_from_slice(&bytes[(lo - off) as usize..(hi - off) as usize]);
            from_file.remove(lo..hi);
        }
    }
    for r in from_file.iter() {
        read_at(
            &mut buf[(r.start - want.start) as usize..(r.end - want.start) as usize],
            r.start,
        )?;
    }
    Ok(buf)
}

/// `pwritev` of all of `bufs` at `offset`, resumed after short writes.
fn write_all_vectored_at(file: &File, bufs: &[Bytes], mut offset: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut slices: Vec<std::io::IoSlice<'_>> =
        bufs.iter().map(|b| std::io::IoSlice::new(b)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let iovcnt = rest.len().min(1024) as libc::c_int;
        // SAFETY: IoSlice is ABI-compatible with iovec on Unix, and the
        // slices borrow buffers that outlive the call.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                rest.as_ptr().cast::<libc::iovec>(),
                iovcnt,
                offset as libc::off_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::WriteZero));
        }
        offset += n as u64;
        std::io::IoSlice::advance_slices(&mut rest, n as usize);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn reads_combine_memory_pieces_and_the_file() {
        let src = source(4096);
        let piece = |a: usize, b: usize| (a as u64, Bytes::copy_from_slice(&src[a..b]));
        // Memory holds 100..300 and 1000..1001; the rest comes from the file.
        let pieces = [piece(100, 300), piece(1000, 1001)];
        for want in [
            0..4096u64,
            150..250,
            50..150,
            250..1500,
            999..1002,
            3000..3001,
        ] {
            let mut file_reads = Vec::new();
            let got = assemble(want.clone(), &pieces, |buf, off| {
                file_reads.push(off..off + buf.len() as u64);
                buf.copy_from_slice(&src[off as usize..off as usize + buf.len()]);
                Ok(())
            })
            .unwrap();
            assert_eq!(
                got,
                &src[want.start as usize..want.end as usize],
                "{want:?}"
            );
            for r in &file_reads {
                assert!(r.end <= 100 || r.start >= 300, "{r:?} was in memory");
                assert!(!(r.start <= 1000 && 1000 < r.end), "{r:?} was in memory");
            }
        }
    }

    #[test]
    fn vectored_writes_land_every_byte_in_order() {
        let src = source(3 * 100_000 + 17);
        let bufs: Vec<Bytes> = src.chunks(100_000).map(Bytes::copy_from_slice).collect();
        let f = tempfile::tempfile().unwrap();
        write_all_vectored_at(&f, &bufs, 5).unwrap();
        let mut back = vec![0u8; src.len()];
        f.read_exact_at(&mut back, 5).unwrap();
        assert_eq!(back, src);
    }
}
