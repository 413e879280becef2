//! The verdict of a download: once every byte is present, the file is
//! hashed (on blocking threads, a block at a time) and moved into the
//! cache if it matches its sha256, or marked bad.

use std::sync::Arc;

use super::*;

impl Fetch {
    /// Hashes the file from offset 0 as its bytes arrive, on a blocking
    /// thread beside the download (so verification overlaps the transfer),
    /// then gives the verdict. Ends early when the file is abandoned
    /// (no stream for `IDLE` and still incomplete); a later read starts it
    /// again from where the bytes are.
    pub(super) async fn verify(self: Arc<Self>) {
        let Some(file) = self.file.as_ref().and_then(|f| f.try_clone().ok()) else {
            self.lock().verifier = false;
            return;
        };
        let file = Arc::new(file);
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut done = 0u64;
        let mut rx = self.progress.subscribe();
        while done < self.size {
            let avail = {
                let st = self.lock();
                if st.bypass || matches!(st.verdict, Verdict::Bad(_)) {
                    drop(st);
                    self.lock().verifier = false;
                    return;
                }
                let present = st.present.get(&done).map_or(done, |r| r.end);
                // Bytes still in memory are not in the file yet.
                st.streams
                    .iter()
                    .filter_map(|s| s.unwritten.first().map(|(off, _)| *off))
                    .filter(|&off| off >= done)
                    .fold(present, u64::min)
            };
            if avail > done {
                let end = avail.min(done + VERIFY_BLOCK);
                let f = Arc::clone(&file);
                let hashed = tokio::task::spawn_blocking(move || {
                    hash_range(&f, &mut ctx, done, end).map(|()| ctx)
                })
                .await;
                match hashed {
                    Ok(Ok(c)) => ctx = c,
                    Ok(Err(e)) => {
                        return self.set_verdict(Verdict::Bad(format!(
                            "{}: cannot hash download: {e}",
                            self.what()
                        )))
                    }
                    Err(e) => {
                        return self.set_verdict(Verdict::Bad(format!(
                            "{}: hashing failed: {e}",
                            self.what()
                        )))
                    }
                }
                done = end;
                // Readers waiting for the verdict count this as progress.
                self.progress.send_modify(|v| *v += 1);
                continue;
            }
            if tokio::time::timeout(IDLE, rx.changed()).await.is_err() {
                let mut st = self.lock();
                if st.streams.is_empty() {
                    st.verifier = false; // abandoned; restarted by the next stream
                    return;
                }
            }
        }
        let digest = hex::encode(ctx.finish());
        self.finish(digest);
    }

    pub(super) fn set_verdict(&self, v: Verdict) {
        {
            let mut st = self.lock();
            st.verdict = v;
            st.verifier = false;
        }
        self.progress.send_modify(|x| *x += 1);
    }

    /// Compares the digest with the registry's sha256: keeps the file in
    /// the cache, or marks the download bad (every read fails with EIO).
    pub(super) fn finish(&self, digest: String) {
        let verdict = if digest.eq_ignore_ascii_case(&self.sha256) {
            let reservation = self.lock().reservation.take();
            if let Some(path) = &self.path {
                match self
                    .cache
                    .commit(path, &self.sha256, self.size, reservation)
                {
                    Ok(()) => self.lock().committed = true,
                    Err(e) => {
                        tracing::warn!(file = %self.what(), error = %e, "cannot keep download in cache")
                    }
                }
            }
            Verdict::Good
        } else {
            let msg = format!(
                "{}: downloaded bytes do not match the registry's sha256 (expected {}, got {digest}); dropped",
                self.what(),
                self.sha256
            );
            tracing::error!("{msg}");
            Verdict::Bad(msg)
        };
        self.set_verdict(verdict);
    }
}

/// Feeds bytes `start..end` of `file` into `ctx`.
fn hash_range(
    file: &File,
    ctx: &mut ring::digest::Context,
    start: u64,
    end: u64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; (end - start).min(1 << 20) as usize];
    let mut off = start;
    while off < end {
        let n = ((end - off) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], off)?;
        ctx.update(&buf[..n]);
        off += n as u64;
    }
    Ok(())
}
