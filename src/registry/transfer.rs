//! File transfers on `/api/packages/{owner}/generic/...` (registry-api.md
//! §4): ranged, streamed downloads that follow SERVE_DIRECT redirects,
//! uploads streamed from disk (whole, or chunked while being written), and
//! deletes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::{Body, Method, Response, StatusCode};

use super::{describe, Client, Error, Result};
use crate::protocol::{paths, validate};

/// Identifies one published file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileRef {
    pub owner: String,
    pub name: String,
    pub version: String,
    pub file: String,
}

/// A download in progress: yields the bytes from the requested offset on,
/// whether the server honoured `Range` (206) or sent the whole file (200).
pub struct Download {
    resp: Response,
    /// Leading bytes still to discard (the server ignored Range).
    skip: u64,
    /// Bytes still wanted after the skipped ones.
    remaining: u64,
    what: String,
}

impl Download {
    /// The next chunk of the body, `None` at the end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>> {
        loop {
            if self.remaining == 0 {
                return Ok(None);
            }
            let chunk = self
                .resp
                .chunk()
                .await
                .map_err(|e| Error::from_reqwest(&e, &self.what))?;
            let Some(mut chunk) = chunk else {
                return Ok(None);
            };
            if self.skip > 0 {
                let n = (self.skip as usize).min(chunk.len());
                self.skip -= n as u64;
                chunk = chunk.slice(n..);
                if chunk.is_empty() {
                    continue;
                }
            }
            if chunk.len() as u64 > self.remaining {
                chunk.truncate(self.remaining as usize);
            }
            self.remaining -= chunk.len() as u64;
            return Ok(Some(chunk));
        }
    }
}

impl Client {
    /// Starts a GET of bytes `start..end` of `file`. `RangeNotSatisfiable`
    /// means `start` is at or past the end of the file.
    pub async fn download(&self, f: &FileRef, start: u64, end: u64) -> Result<Download> {
        let url = paths::file_url(&self.base, &f.owner, &f.name, &f.version, &f.file);
        let what = describe(&Method::GET, &url);
        let resp = self
            .send_idempotent(Method::GET, &url, |r| {
                r.header(RANGE, format!("bytes={start}-{}", end.saturating_sub(1)))
            })
            .await?;
        let skip = match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                let first = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_content_range_start);
                if first != Some(start) {
                    return Err(Error::Server {
                        status: 206,
                        message: format!("{what}: unexpected Content-Range {first:?}"),
                    });
                }
                0
            }
            StatusCode::OK => start,
            s => {
                return Err(Error::Server {
                    status: s.as_u16(),
                    message: format!("{what}: unexpected status"),
                })
            }
        };
        Ok(Download {
            resp,
            skip,
            remaining: end.saturating_sub(start),
            what,
        })
    }

    /// Uploads a body of `len` bytes (a spool read from disk) with one PUT
    /// and `Content-Length`. Names are validated locally first: an invalid
    /// one sends nothing. Never retried here: the caller decides (§9 rule
    /// 5, no blind retry).
    pub async fn upload<S>(&self, f: &FileRef, len: u64, body: S) -> Result<()>
    where
        S: futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        validate_ref(f)?;
        self.put(f, Some(len), body).await
    }

    /// Uploads a body that is still being produced, with one chunked PUT
    /// (no `Content-Length`; registry-api.md §4 accepts both). The stream
    /// ends the body with `None`; an `Err` item aborts the request mid-body,
    /// so the registry stores nothing. Never retried here.
    pub async fn upload_stream<S>(&self, f: &FileRef, body: S) -> Result<()>
    where
        S: futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        validate_ref(f)?;
        self.put(f, None, body).await
    }

    /// The PUT of both uploads. It fails with `Timeout` only when it makes
    /// no progress for `timeout`: no body bytes taken by the connection
    /// while the body had some to give, or no answer after the body ended.
    /// Time spent waiting for the body itself (the disk, or a writer that
    /// pauses) does not count.
    async fn put<S>(&self, f: &FileRef, len: Option<u64>, body: S) -> Result<()>
    where
        S: futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        let url = paths::file_url(&self.base, &f.owner, &f.name, &f.version, &f.file);
        let what = describe(&Method::PUT, &url);
        let progress = Arc::new(Progress::new());
        let mut req = self
            .upload_http
            .request(Method::PUT, url.clone())
            .header(CONTENT_TYPE, "application/octet-stream");
        if let Some(len) = len {
            req = req.header(CONTENT_LENGTH, len);
        }
        let send = req.body(Body::wrap_stream(progress.watch(body))).send();
        tokio::pin!(send);
        let mut tick = tokio::time::interval((self.timeout / 4).max(Duration::from_millis(10)));
        let resp = loop {
            tokio::select! {
                r = &mut send => break r.map_err(|e| Error::from_reqwest(&e, &what))?,
                _ = tick.tick() => {
                    if progress.stalled_for() > self.timeout {
                        return Err(Error::Timeout(format!(
                            "{what}: no progress for {} s",
                            self.timeout.as_secs()
                        )));
                    }
                }
            }
        };
        let checked =
            tokio::time::timeout(self.timeout, super::check_status(resp, &Method::PUT, &url))
                .await
                .map_err(|_| Error::Timeout(format!("{what}: the answer stalled")))?;
        checked.map_err(|(e, _)| e)?;
        Ok(())
    }

    /// DELETE of one file. 404 is reported as `NotFound`.
    pub async fn delete_file(&self, f: &FileRef) -> Result<()> {
        let url = paths::file_url(&self.base, &f.owner, &f.name, &f.version, &f.file);
        self.send_idempotent(Method::DELETE, &url, |r| r)
            .await
            .map(|_| ())
    }

    /// DELETE of a whole version.
    pub async fn delete_version(&self, owner: &str, name: &str, version: &str) -> Result<()> {
        let url = paths::version_url(&self.base, owner, name, version);
        self.send_idempotent(Method::DELETE, &url, |r| r)
            .await
            .map(|_| ())
    }
}

/// When a request body last moved, for `Client::put`'s stall timeout.
struct Progress {
    start: Instant,
    /// Milliseconds after `start` of the last step of the body.
    last_ms: AtomicU64,
    /// The body is waiting for its own source (disk, writer), not for the
    /// network.
    waiting_for_source: AtomicBool,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            waiting_for_source: AtomicBool::new(false),
        }
    }

    fn stalled_for(&self) -> Duration {
        if self.waiting_for_source.load(Ordering::Relaxed) {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    /// `body`, noting each step: a chunk or the end taken (progress), or
    /// the body itself not ready (not a stall).
    fn watch<S>(
        self: &Arc<Self>,
        body: S,
    ) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static
    where
        S: futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        let me = Arc::clone(self);
        let mut body = Box::pin(body);
        futures_util::stream::poll_fn(move |cx| {
            let r = body.as_mut().poll_next(cx);
            let waiting = r.is_pending();
            if !waiting {
                let ms = me.start.elapsed().as_millis() as u64;
                me.last_ms.store(ms, Ordering::Relaxed);
            }
            me.waiting_for_source.store(waiting, Ordering::Relaxed);
            r
        })
    }
}

/// Local validation before any PUT (§9 rule 2).
pub fn validate_ref(f: &FileRef) -> Result<()> {
    let too_long = [&f.owner, &f.name, &f.version, &f.file]
        .iter()
        .any(|s| s.len() > crate::protocol::MAX_COMPONENT_LEN);
    if too_long {
        return Err(Error::Invalid(
            "a path component is longer than 255 bytes".into(),
        ));
    }
    validate::validate_package_name(&f.name).map_err(|e| Error::Invalid(e.to_string()))?;
    validate::validate_filename(&f.file).map_err(|e| Error::Invalid(e.to_string()))?;
    if !validate::client_version_ok(&f.version) {
        return Err(Error::Invalid("invalid package version".into()));
    }
    Ok(())
}

/// `bytes 100-199/1000` → 100.
fn parse_content_range_start(v: &str) -> Option<u64> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, _) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    start.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(parse_content_range_start("bytes 100-199/1000"), Some(100));
        assert_eq!(parse_content_range_start("bytes */1000"), None);
    }
}
