//! Streamed uploads: a file written sequentially from offset 0 (`cp`,
//! `dd`, `curl -o`) is sent to the registry while it is being written, so
//! `close()` waits only for the tail instead of for the whole upload.
//!
//! The spool stays the source of truth: the PUT reads its bytes back from
//! the spool as writes land (whole aligned pieces until the end is known,
//! see `spool`), with a chunked body. `close()` seals the body
//! at the final size and waits for the registry's answer. Anything that is
//! not an append (a write elsewhere, a truncate, a rename, an unlink, a
//! failed write) drops the [`Upstream`], which aborts the request mid-body
//! so the registry stores nothing; the file is then uploaded whole at
//! `close()`, as without streaming.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::spool::{SpoolReader, ALIGN, CHUNK};
use crate::registry::{self, FileRef, Registry, Sent};

/// What the body may send so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// Bytes `0..n` are in the spool; more may come.
    Open(u64),
    /// The file is complete at `n` bytes: end the body there.
    Sealed(u64),
    /// Abort the request without ending the body.
    Aborted,
}

/// One streamed PUT in progress. Dropping it without [`Upstream::finish`]
/// aborts the request.
pub(super) struct Upstream {
    feed: watch::Sender<Feed>,
    task: Option<JoinHandle<registry::Result<Sent>>>,
}

impl Upstream {
    /// Starts the PUT of `fref` from `spool`, of which `avail` bytes are
    /// written. `hold` is kept until the request ends (the version lock of
    /// a first upload, PROTOCOL.md §concurrency).
    pub fn start<H: Send + 'static>(
        rt: &tokio::runtime::Handle,
        client: Arc<dyn Registry>,
        fref: FileRef,
        spool: Arc<SpoolReader>,
        avail: u64,
        hold: H,
    ) -> Upstream {
        let (feed, rx) = watch::channel(Feed::Open(avail));
        let body = futures_util::stream::unfold((spool, rx, 0u64, false), body_chunk);
        let task = rt.spawn(async move {
            let r = client.upload_stream(&fref, Box::pin(body)).await;
            drop(hold);
            r
        });
        Upstream {
            feed,
            task: Some(task),
        }
    }

    /// Bytes `0..n` are now in the spool.
    pub fn advance(&self, n: u64) {
        self.feed.send_replace(Feed::Open(n));
    }

    /// Ends the body at `size` bytes and waits for the registry's answer.
    pub async fn finish(mut self, size: u64) -> registry::Result<Sent> {
        self.feed.send_replace(Feed::Sealed(size));
        let task = self.task.take().expect("an upstream is finished once");
        match task.await {
            Ok(r) => r,
            Err(e) => Err(registry::Error::Io(format!("upload task: {e}"))),
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            self.feed.send_replace(Feed::Aborted);
            // Dropping the request future closes the connection mid-body.
            task.abort();
        }
    }
}

type BodyState = (Arc<SpoolReader>, watch::Receiver<Feed>, u64, bool);

/// The next frame of the body: spool bytes as they become available, the
/// end once sealed, an error (which aborts the request) once aborted.
async fn body_chunk(
    (spool, mut rx, sent, failed): BodyState,
) -> Option<(std::io::Result<Bytes>, BodyState)> {
    if failed {
        return None;
    }
    loop {
        let feed = *rx.borrow_and_update();
        let (avail, sealed) = match feed {
            Feed::Open(n) => (n, false),
            Feed::Sealed(n) => (n, true),
            Feed::Aborted => break,
        };
        // Until the end is known, only whole aligned pieces are sent, so
        // that every read starts aligned (direct reads need it).
        let ready = if sealed {
            avail.saturating_sub(sent)
        } else {
            avail.saturating_sub(sent) / ALIGN * ALIGN
        };
        if ready > 0 {
            let len = ready.min(CHUNK);
            return Some(match spool.read_chunk(sent, len as usize).await {
                Ok(buf) => (Ok(buf), (spool, rx, sent + len, false)),
                Err(e) => (Err(e), (spool, rx, sent, true)),
            });
        }
        if sealed {
            return None;
        }
        if rx.changed().await.is_err() {
            break; // the writer is gone without sealing
        }
    }
    let aborted = std::io::Error::other("upload abandoned: the file was not written sequentially");
    Some((Err(aborted), (spool, rx, sent, true)))
}
