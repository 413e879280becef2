//! File transfers on `/api/packages/{owner}/generic/...` (PROTOCOL.md
//! §download, §upload, §delete): ranged, streamed downloads that follow SERVE_DIRECT redirects,
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
                // The connection ended the body before the bytes asked for:
                // not the end of the file (retried from where it stopped).
                return Err(Error::Network(format!(
                    "{}: the body ended {} bytes early",
                    self.what, self.remaining
                )));
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
    /// Starts a GET of bytes `start..end` of `file`, which the listing says
    /// is `size` bytes long. `RangeNotSatisfiable` means `start` is at or
    /// past the end of the file. An answer whose length disagrees with
    /// `size` (`Content-Range` total, or `Content-Length` of a 200) is
    /// refused: those bytes are not the listed file's.
    pub async fn download(&self, f: &FileRef, start: u64, end: u64, size: u64) -> Result<Download> {
        let url = paths::file_url(&self.base, &f.owner, &f.name, &f.version, &f.file);
        let what = describe(&Method::GET, &url);
        let resp = self
            .send_idempotent(Method::GET, &url, |r| {
                r.header(RANGE, format!("bytes={start}-{}", end.saturating_sub(1)))
            })
            .await?;
        let skip = match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                let range = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_content_range);
                match range {
                    Some((first, Some(total))) if first == start && total == size => {}
                    Some((first, None)) if first == start => {}
                    _ => {
                        return Err(Error::Protocol(format!(
                            "{what}: Content-Range {range:?} does not fit bytes {start}- of a {size}-byte file"
                        )))
                    }
                }
                0
            }
            StatusCode::OK => {
                if let Some(len) = resp.content_length().filter(|&l| l != size) {
                    return Err(Error::Protocol(format!(
                        "{what}: the registry sends {len} bytes for a file it lists as {size} bytes"
                    )));
                }
                start
            }
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
    /// one sends nothing. Never retried here: the caller decides
    /// (PROTOCOL.md §put-retry, no blind retry).
    pub async fn upload<S>(&self, f: &FileRef, len: u64, body: S) -> Result<Sent>
    where
        S: futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        validate_ref(f)?;
        self.put(f, Some(len), body).await
    }

    /// Uploads a body that is still being produced, with one chunked PUT
    /// (no `Content-Length`; PROTOCOL.md §upload accepts both). The stream
    /// ends the body with `None`; an `Err` item aborts the request mid-body,
    /// so the registry stores nothing. Never retried here.
    pub async fn upload_stream<S>(&self, f: &FileRef, body: S) -> Result<Sent>
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
    ///
    /// Success is exactly the registry's `201 Created` answered after the
    /// whole body was handed to the connection (protocol: "a PUT succeeds
    /// only with 201 after the whole body"): an answer that came while body
    /// bytes were still unsent (a proxy answering early), any other 2xx and
    /// every 3xx (redirects are never followed for a PUT) are failures whose
    /// outcome the caller must check with a listing. The bytes are hashed
    /// as they are sent, so the caller learns the sha256 of what the
    /// registry was given without reading the spool again.
    async fn put<S>(&self, f: &FileRef, len: Option<u64>, body: S) -> Result<Sent>
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
        let status = resp.status();
        // Read before the status is judged: the connection task may still
        // be taking the last bytes when a (hostile) answer arrives early.
        let sent = progress.sent();
        let whole = match len {
            Some(len) => sent.len == len,
            None => sent.ended,
        };
        let checked =
            tokio::time::timeout(self.timeout, super::check_status(resp, &Method::PUT, &url))
                .await
                .map_err(|_| Error::Timeout(format!("{what}: the answer stalled")))?;
        checked.map_err(|(e, _)| e)?;
        if status.is_redirection() {
            return Err(Error::Server {
                status: status.as_u16(),
                message: format!(
                    "{what}: the registry answered a redirect to an upload; redirects are never followed for a PUT, the file was not stored"
                ),
            });
        }
        if status != StatusCode::CREATED {
            return Err(Error::Server {
                status: status.as_u16(),
                message: format!(
                    "{what}: answered {status} instead of 201 Created; not counted as stored"
                ),
            });
        }
        if !whole {
            return Err(Error::Network(format!(
                "{what}: answered 201 after {} bytes of the body{}: the registry cannot have the whole file",
                sent.len,
                len.map(|l| format!(" of {l}")).unwrap_or_default()
            )));
        }
        Ok(Sent {
            len: sent.len,
            sha256: sent.sha256,
        })
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

/// What a successful PUT handed to the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// Body bytes taken by the connection.
    pub len: u64,
    /// sha256 (lower-case hex) of exactly those bytes.
    pub sha256: String,
}

/// The body as taken so far.
struct Taken {
    len: u64,
    /// The body stream ended (its last piece was taken).
    ended: bool,
    /// sha256 of the bytes taken.
    digest: ring::digest::Context,
}

/// `Progress::sent`: the body taken at the moment of asking.
struct SentSoFar {
    len: u64,
    ended: bool,
    sha256: String,
}

/// When a request body last moved, for `Client::put`'s stall timeout, and
/// what it sent (length, end, sha256).
struct Progress {
    start: Instant,
    /// Milliseconds after `start` of the last step of the body.
    last_ms: AtomicU64,
    /// The body is waiting for its own source (disk, writer), not for the
    /// network.
    waiting_for_source: AtomicBool,
    taken: std::sync::Mutex<Taken>,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            waiting_for_source: AtomicBool::new(false),
            taken: std::sync::Mutex::new(Taken {
                len: 0,
                ended: false,
                digest: ring::digest::Context::new(&ring::digest::SHA256),
            }),
        }
    }

    fn sent(&self) -> SentSoFar {
        let t = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        SentSoFar {
            len: t.len,
            ended: t.ended,
            sha256: hex::encode(t.digest.clone().finish()),
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
            match &r {
                std::task::Poll::Ready(Some(Ok(chunk))) => {
                    let mut t = me.taken.lock().unwrap_or_else(|e| e.into_inner());
                    t.digest.update(chunk);
                    t.len += chunk.len() as u64;
                }
                std::task::Poll::Ready(None) => {
                    me.taken.lock().unwrap_or_else(|e| e.into_inner()).ended = true;
                }
                _ => {}
            }
            r
        })
    }
}

/// Local validation before any PUT (PROTOCOL.md §names).
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

/// `bytes 100-199/1000` → (100, Some(1000)); `bytes 100-199/*` →
/// (100, None).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start.trim().parse().ok()?, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 100-199/1000"),
            Some((100, Some(1000)))
        );
        assert_eq!(parse_content_range("bytes 100-199/*"), Some((100, None)));
        assert_eq!(parse_content_range("bytes */1000"), None);
        assert_eq!(parse_content_range("bytes 1-2/x"), None);
    }
}
