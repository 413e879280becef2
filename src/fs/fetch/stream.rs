//! The streams of a download: each a sequence of ranged GETs from one
//! offset while readers want more (`run_stream`), its bytes exposed to
//! readers from memory and written to the download file in aligned
//! batches.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;

use super::*;

impl Fetch {
    /// Downloads from `start` while readers want more, resuming after
    /// transient failures for up to the client timeout without progress.
    /// Arrivals are exposed to readers (in memory) every `BATCH` bytes
    /// and whenever the next chunk is not there yet; they are written to
    /// the file at each `BATCH` boundary and when the stream ends.
    pub(super) async fn run_stream(self: Arc<Self>, id: u64, start: u64) {
        let mut seg = Segment {
            id,
            pos: start,
            arrived: Arrived::new(start),
            last_progress: Instant::now(),
            backoff: Duration::from_millis(50),
        };
        let mut body: Option<registry::Download> = None;
        let outcome: Result<(), FsError> = loop {
            self.expose(id, &mut seg.arrived);
            if seg.pos >= self.size {
                break Ok(());
            }
            let notified = self.demand_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let Some((demand, next_present)) = self.stream_demand(id, seg.pos) else {
                break Ok(()); // cancelled, or another stream has these bytes
            };
            if seg.pos >= demand {
                body = None;
                if tokio::time::timeout(IDLE, notified).await.is_err() {
                    break Ok(());
                }
                continue;
            }
            let dl = match body.as_mut() {
                Some(dl) => dl,
                None => match self.open_segment(seg.pos, demand, next_present).await {
                    Ok(dl) => body.insert(dl),
                    Err(e) => break Err(e),
                },
            };
            match self.take_chunks(dl, &mut seg).await {
                Taken::Batch => {}
                Taken::SegmentEnded => body = None,
                Taken::Interrupted => body = None,
                Taken::Stop => break Ok(()),
                Taken::Failed(e) => break Err(e),
            }
        };
        let pos = seg.pos;
        self.expose(id, &mut seg.arrived);
        self.write_out(id);
        {
            let mut st = self.lock();
            st.streams.retain(|s| s.id != id);
            if let Err(e) = &outcome {
                tracing::warn!(file = %self.what(), pos, error = %e, "download failed");
                st.err_gen += 1;
                st.last_error = Some(e.clone());
            }
        }
        self.progress.send_modify(|v| *v += 1);
    }

    /// What stream `id` at `pos` should fetch: up to its demand, and not
    /// past the next bytes already present. `None` when it should end
    /// (cancelled, or another stream has the bytes at `pos`).
    pub(super) fn stream_demand(&self, id: u64, pos: u64) -> Option<(u64, u64)> {
        let st = self.lock();
        let s = st.streams.iter().find(|s| s.id == id)?;
        if s.cancelled || st.present.contains(&pos) {
            return None;
        }
        let next_present = st
            .present
            .iter()
            .map(|r| r.start)
            .find(|&s| s > pos)
            .unwrap_or(self.size);
        Some((s.demand, next_present))
    }

    /// A ranged GET from `pos` of what readers want now (their window
    /// included), so random reads do not make the server send the file.
    pub(super) async fn open_segment(
        &self,
        pos: u64,
        demand: u64,
        next_present: u64,
    ) -> FsResult<registry::Download> {
        let want_end = demand.max(pos + MIN_REQUEST).min(next_present);
        tracing::debug!(file = %self.what(), pos, want_end, "ranged GET");
        let dl = self
            .client
            .download(&self.fref, pos, want_end, self.size)
            .await?;
        tracing::trace!(pos, "response headers");
        Ok(dl)
    }

    /// Takes the chunks of `dl` that are there (exposing them before it
    /// waits) up to the next batch boundary, where the batch is written
    /// out and the demand must be checked again.
    pub(super) async fn take_chunks(
        &self,
        dl: &mut registry::Download,
        seg: &mut Segment,
    ) -> Taken {
        loop {
            let next = match dl.chunk().now_or_never() {
                Some(r) => r,
                None => {
                    self.expose(seg.id, &mut seg.arrived);
                    dl.chunk().await
                }
            };
            match next {
                Ok(Some(mut bytes)) => {
                    let pos = seg.pos;
                    bytes.truncate((bytes.len() as u64).min(self.size - pos) as usize);
                    // Cut at the batch boundary, so that writes stay aligned.
                    let boundary = (pos / BATCH + 1) * BATCH;
                    let rest = (pos + bytes.len() as u64 > boundary)
                        .then(|| bytes.split_off((boundary - pos) as usize));
                    seg.pos += bytes.len() as u64;
                    seg.arrived.push(bytes);
                    seg.last_progress = Instant::now();
                    seg.backoff = Duration::from_millis(50);
                    if seg.pos >= boundary || seg.pos >= self.size {
                        self.expose(seg.id, &mut seg.arrived);
                        if !self.write_out(seg.id) {
                            return Taken::Stop;
                        }
                        if let Some(rest) = rest {
                            seg.pos += rest.len() as u64;
                            seg.arrived.push(rest);
                        }
                        return Taken::Batch;
                    }
                }
                // Segment done (or cut short): the next one.
                Ok(None) => return Taken::SegmentEnded,
                Err(e)
                    if e.is_transient() && seg.last_progress.elapsed() < self.client.timeout() =>
                {
                    tracing::info!(file = %self.what(), pos = seg.pos, error = %e, "download interrupted; resuming");
                    self.expose(seg.id, &mut seg.arrived);
                    tokio::time::sleep(seg.backoff).await;
                    seg.backoff = (seg.backoff * 2).min(Duration::from_secs(1));
                    return Taken::Interrupted;
                }
                Err(e) => return Taken::Failed(e.into()),
            }
        }
    }

    /// Makes the arrived bytes visible to readers (from memory).
    pub(super) fn expose(&self, id: u64, arrived: &mut Arrived) {
        if arrived.new.is_empty() {
            return;
        }
        let from = arrived.exposed;
        {
            let mut st = self.lock();
            let Some(s) = st.streams.iter_mut().find(|s| s.id == id) else {
                return;
            };
            s.pos = arrived.end;
            let mut off = from;
            for b in arrived.new.drain(..) {
                let len = b.len() as u64;
                s.unwritten.push((off, b));
                off += len;
            }
            st.present.insert(from..arrived.end);
        }
        arrived.exposed = arrived.end;
        tracing::trace!(pos = arrived.end, "exposed");
        self.progress.send_modify(|v| *v += 1);
    }

    /// Writes the exposed bytes to the download file (one `pwritev`) and
    /// drops them from memory. False when the cache directory refused the
    /// write: the file is then read around the cache (the bytes stay in
    /// memory for reads already planned), and the stream ends.
    pub(super) fn write_out(&self, id: u64) -> bool {
        let (start, bufs): (u64, Vec<Bytes>) = {
            let st = self.lock();
            let Some(s) = st.streams.iter().find(|s| s.id == id) else {
                return true;
            };
            let Some(&(start, _)) = s.unwritten.first() else {
                return true;
            };
            if st.bypass {
                return false;
            }
            (start, s.unwritten.iter().map(|(_, b)| b.clone()).collect())
        };
        let written = match &self.file {
            Some(f) => write_all_vectored_at(f, &bufs, start),
            None => Err(std::io::Error::from_raw_os_error(libc::ENOSPC)),
        };
        if let Err(e) = written {
            tracing::warn!(
                file = %self.what(),
                error = %e,
                "cannot write to the cache directory; further reads of this file bypass the cache"
            );
            self.lock().bypass = true;
            return false;
        }
        if let Some(s) = self.lock().streams.iter_mut().find(|s| s.id == id) {
            s.unwritten.drain(..bufs.len());
        }
        // The verifier hashes what is in the file.
        self.progress.send_modify(|v| *v += 1);
        true
    }
}

/// Where one stream is in its download.
pub(super) struct Segment {
    id: u64,
    /// Offset of the next byte to arrive.
    pos: u64,
    arrived: Arrived,
    last_progress: Instant,
    /// Wait before resuming after an interruption.
    backoff: Duration,
}

/// How `take_chunks` stopped.
pub(super) enum Taken {
    /// A batch was written out: check the demand, go on with this body.
    Batch,
    /// The body ended: the next segment is a new request.
    SegmentEnded,
    /// A transient failure: resume with a new request (after the backoff).
    Interrupted,
    /// The download file is gone (the fetch was abandoned): stop quietly.
    Stop,
    Failed(FsError),
}

/// What a stream has received and not yet exposed to readers:
/// `exposed..end` (`new`). Exposed bytes not yet in the file are the
/// stream's `unwritten` pieces.
pub(super) struct Arrived {
    exposed: u64,
    end: u64,
    new: Vec<Bytes>,
}

impl Arrived {
    fn new(start: u64) -> Arrived {
        Arrived {
            exposed: start,
            end: start,
            new: Vec::new(),
        }
    }

    fn push(&mut self, bytes: Bytes) {
        self.end += bytes.len() as u64;
        if !bytes.is_empty() {
            self.new.push(bytes);
        }
    }
}
