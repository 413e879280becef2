//! The spool of a file being written: a file under the cache dir that holds
//! the data until it is published (never RAM), then becomes the file's
//! cache entry.
//!
//! The bulk of a large file goes around the page cache: aligned writes past
//! [`DIRECT_FROM`] use `O_DIRECT`, and uploads read those parts back the
//! same way. A 1 GiB `cp` then does not allocate 1 GiB of page cache in the
//! middle of its own upload (evicting the user's working set, and on a VM
//! paying for every freshly touched page) only to read it back once. Small
//! files, the head of every file and unaligned writes stay buffered; the
//! kernel keeps both kinds of access coherent (a direct write invalidates
//! cached pages of its range, a direct read writes dirty ones back first).
//! Where `O_DIRECT` is refused (tmpfs before 6.6, some FUSE or network file
//! systems, odd alignment rules) everything is buffered.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

/// Alignment of direct I/O: offsets, lengths and buffers.
pub(super) const ALIGN: u64 = 4096;
/// Bytes below this offset are always written through the page cache, so
/// that small files (most of what `rsync` and build tools write) never pay
/// direct I/O's per-call cost.
pub(super) const DIRECT_FROM: u64 = 8 << 20;
/// Largest piece an upload reads from the spool at a time.
pub(super) const CHUNK: u64 = 1 << 20;

/// The spool of one file being written.
pub(super) struct Spool {
    pub path: PathBuf,
    file: File,
    direct: Direct,
}

thread_local! {
    /// Aligned staging for direct writes: FUSE hands data at any address.
    static STAGE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The `O_DIRECT` descriptor of a spool: opened at its first use (small
/// files never need one), given up once the file system refuses it.
#[derive(Default)]
struct Direct {
    fd: OnceLock<Option<File>>,
    refused: AtomicBool,
}

impl Direct {
    fn get(&self, path: &Path, write: bool) -> Option<&File> {
        if self.refused.load(Ordering::Relaxed) {
            return None;
        }
        let fd = self.fd.get_or_init(|| {
            let opened = OpenOptions::new()
                .read(true)
                .write(write)
                .custom_flags(libc::O_DIRECT)
                .open(path);
            opened
                .inspect_err(|e| tracing::debug!(path = %path.display(), error = %e, "no direct I/O for the spool"))
                .ok()
        });
        fd.as_ref()
    }

    /// Direct I/O on `fd` failed with `e`: true (and no direct I/O from now
    /// on) when the file system refused it, so the caller goes buffered.
    fn refused(&self, e: &io::Error) -> bool {
        let refused = e.raw_os_error() == Some(libc::EINVAL);
        if refused {
            tracing::debug!(error = %e, "direct I/O refused; the spool goes through the page cache");
            self.refused.store(true, Ordering::Relaxed);
        }
        refused
    }
}

impl Spool {
    /// Wraps the freshly created spool `file` at `path`.
    pub fn new(path: PathBuf, file: File) -> Spool {
        Spool {
            path,
            file,
            direct: Direct::default(),
        }
    }

    /// The buffered descriptor (truncation, hashing).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Writes all of `data` at `offset`.
    pub fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let len = data.len() as u64;
        let eligible = offset >= DIRECT_FROM && offset % ALIGN == 0 && len % ALIGN == 0 && len > 0;
        if let Some(direct) = eligible
            .then(|| self.direct.get(&self.path, true))
            .flatten()
        {
            match write_direct(direct, data, offset) {
                // A short direct write (a full disk) is finished, or fails,
                // through the page cache.
                Ok(done) => return self.file.write_all_at(&data[done..], offset + done as u64),
                Err(e) if self.direct.refused(&e) => {}
                Err(e) => return Err(e),
            }
        }
        self.file.write_all_at(data, offset)
    }
}

/// Direct writes of `data` (aligned length) at an aligned `offset`, staged
/// through an aligned buffer when `data` is not aligned itself: how many
/// bytes were written (all of them unless a write came up short).
fn write_direct(direct: &File, data: &[u8], offset: u64) -> io::Result<usize> {
    if (data.as_ptr() as usize) % ALIGN as usize == 0 {
        write_some(direct, data, offset)
    } else {
        STAGE.with(|stage| {
            let mut stage = stage.borrow_mut();
            if stage.len() < data.len() + ALIGN as usize {
                stage.resize(data.len() + ALIGN as usize, 0);
            }
            let start = stage.as_ptr().align_offset(ALIGN as usize);
            let buf = &mut stage[start..start + data.len()];
            buf.copy_from_slice(data);
            write_some(direct, buf, offset)
        })
    }
}

/// Writes what it can of `buf` at `offset`: stops at the first short write
/// that would leave the next offset unaligned.
fn write_some(file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.write_at(&buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                if n as u64 % ALIGN != 0 {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Reads a spool for its upload, through descriptors of its own.
pub(super) struct SpoolReader {
    path: PathBuf,
    file: File,
    direct: Direct,
}

impl SpoolReader {
    pub fn open(path: &Path) -> io::Result<SpoolReader> {
        Ok(SpoolReader {
            path: path.to_path_buf(),
            file: File::open(path)?,
            direct: Direct::default(),
        })
    }

    /// [`SpoolReader::read_at`] on a blocking thread.
    pub async fn read_chunk(self: &Arc<Self>, offset: u64, len: usize) -> io::Result<Bytes> {
        let reader = Arc::clone(self);
        tokio::task::spawn_blocking(move || reader.read_at(offset, len))
            .await
            .map_err(io::Error::other)?
    }

    /// Exactly `len` bytes at `offset` (`UnexpectedEof` when the spool is
    /// shorter). Parts past [`DIRECT_FROM`] are read around the page cache
    /// when `offset` is aligned.
    pub fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let eligible = offset >= DIRECT_FROM && offset % ALIGN == 0;
        if let Some(direct) = eligible
            .then(|| self.direct.get(&self.path, false))
            .flatten()
        {
            match read_direct(direct, offset, len) {
                Ok(b) => return Ok(b),
                Err(e) if self.direct.refused(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    }
}

fn read_direct(direct: &File, offset: u64, len: usize) -> io::Result<Bytes> {
    let rounded = (len as u64).div_ceil(ALIGN) * ALIGN;
    let mut buf = vec![0u8; rounded as usize + ALIGN as usize];
    let start = buf.as_ptr().align_offset(ALIGN as usize);
    let mut done = 0usize;
    while done < len {
        let dst = &mut buf[start + done..start + rounded as usize];
        match direct.read_at(dst, offset + done as u64) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                if n as u64 % ALIGN != 0 {
                    break; // end of file
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if done < len {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
    }
    Ok(Bytes::from(buf).slice(start..start + len))
}

/// The whole spool, `len` bytes, as an upload body read in [`CHUNK`]s on
/// blocking threads.
pub(super) fn body(
    reader: Arc<SpoolReader>,
    len: u64,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send + 'static {
    futures_util::stream::try_unfold(0u64, move |sent| {
        let reader = Arc::clone(&reader);
        async move {
            if sent >= len {
                return Ok(None);
            }
            let n = (len - sent).min(CHUNK) as usize;
            let chunk = reader.read_chunk(sent, n).await?;
            Ok(Some((chunk, sent + n as u64)))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool(dir: &Path) -> Spool {
        let path = dir.join("s");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        Spool::new(path, file)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[test]
    fn mixed_direct_and_buffered_writes_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let s = spool(dir.path());
        let mut model = vec![0u8; 0];
        let mut put = |off: usize, data: &[u8]| {
            s.write_at(data, off as u64).unwrap();
            if model.len() < off + data.len() {
                model.resize(off + data.len(), 0);
            }
            model[off..off + data.len()].copy_from_slice(data);
        };
        // Sequential 1 MiB writes from an unaligned buffer, then overwrites
        // straddling the direct region, then an unaligned tail.
        let mb = 1 << 20;
        let backing = pattern(mb + 1, 7);
        for i in 0..12 {
            put(i * mb, &backing[1..]);
        }
        put(DIRECT_FROM as usize - 100, &pattern(5000, 1));
        put(DIRECT_FROM as usize + 3 * 4096, &pattern(8192, 2));
        put(12 * mb, &pattern(777, 3));
        let r = SpoolReader::open(&s.path).unwrap();
        let len = model.len();
        let mut got = Vec::new();
        let mut off = 0;
        while off < len {
            let n = (len - off).min(300_000);
            got.extend_from_slice(&r.read_at(off as u64, n).unwrap());
            off += n;
        }
        assert_eq!(got.len(), model.len());
        assert!(got == model, "spool content differs from what was written");
        // Aligned direct reads of the tail, and past the end.
        let tail = r
            .read_at(DIRECT_FROM + 4096, len - DIRECT_FROM as usize - 4096)
            .unwrap();
        assert!(tail[..] == model[DIRECT_FROM as usize + 4096..]);
        let e = r.read_at(DIRECT_FROM, len).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        // The buffered descriptor sees the same bytes.
        let mut all = vec![0u8; len];
        s.file().read_exact_at(&mut all, 0).unwrap();
        assert!(all == model);
    }

    #[tokio::test]
    async fn body_streams_the_whole_spool() {
        use futures_util::TryStreamExt;
        let dir = tempfile::tempdir().unwrap();
        let s = spool(dir.path());
        let data = pattern((DIRECT_FROM + 3 * CHUNK + 123) as usize, 9);
        for (i, piece) in data.chunks(1 << 20).enumerate() {
            s.write_at(piece, (i << 20) as u64).unwrap();
        }
        let r = Arc::new(SpoolReader::open(&s.path).unwrap());
        let chunks: Vec<Bytes> = body(r, data.len() as u64).try_collect().await.unwrap();
        assert!(chunks.iter().all(|c| c.len() as u64 <= CHUNK));
        assert!(chunks.concat() == data);
    }
}
