//! Serving a blob the way Go's `http.ServeContent` does, because that is
//! what Gitea answers downloads with (PROTOCOL.md §download): conditional
//! requests without ETag (`If-Match`, `If-Unmodified-Since`,
//! `If-None-Match`, `If-Modified-Since`, `If-Range` by date), single ranges
//! (206), multi-ranges (`multipart/byteranges`), 416 with
//! `Content-Range: bytes */size`, and the body streamed from disk in chunks.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

const CHUNK: u64 = 256 * 1024;

/// The content to serve.
pub struct Content {
    pub file: File,
    pub size: u64,
    pub modified_unix: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cond {
    None,
    True,
    False,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ByteRange {
    start: u64,
    length: u64,
}

impl ByteRange {
    fn content_range(&self, size: u64) -> String {
        // Go prints start+length-1 even for an empty suffix range.
        let end = (self.start + self.length) as i128 - 1;
        format!("bytes {}-{}/{}", self.start, end, size)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum RangeError {
    Invalid,
    NoOverlap,
}

impl RangeError {
    fn message(&self) -> &'static str {
        match self {
            RangeError::Invalid => "invalid range",
            RangeError::NoOverlap => "invalid range: failed to overlap",
        }
    }
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
}

fn parse_time(s: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(s).ok()
}

fn check_if_match(req: &HeaderMap) -> Cond {
    match header_str(req, header::IF_MATCH) {
        None => Cond::None,
        // There is no ETag, so only `*` can match.
        Some(v) if v.split(',').any(|t| t.trim() == "*") => Cond::True,
        Some(_) => Cond::False,
    }
}

fn check_if_unmodified_since(req: &HeaderMap, modified: SystemTime) -> Cond {
    match header_str(req, header::IF_UNMODIFIED_SINCE).and_then(parse_time) {
        None => Cond::None,
        Some(t) if modified <= t => Cond::True,
        Some(_) => Cond::False,
    }
}

fn check_if_none_match(req: &HeaderMap) -> Cond {
    match header_str(req, header::IF_NONE_MATCH) {
        None => Cond::None,
        Some(v) if v.trim_start().starts_with('*') => Cond::False,
        Some(_) => Cond::True,
    }
}

fn check_if_modified_since(method: &Method, req: &HeaderMap, modified: SystemTime) -> Cond {
    if method != Method::GET && method != Method::HEAD {
        return Cond::None;
    }
    match header_str(req, header::IF_MODIFIED_SINCE).and_then(parse_time) {
        None => Cond::None,
        Some(t) if modified <= t => Cond::False,
        Some(_) => Cond::True,
    }
}

fn check_if_range(method: &Method, req: &HeaderMap, modified: SystemTime) -> Cond {
    if method != Method::GET && method != Method::HEAD {
        return Cond::None;
    }
    let Some(v) = header_str(req, header::IF_RANGE) else {
        return Cond::None;
    };
    let v = v.trim();
    if v.starts_with('"') || v.starts_with("W/") {
        return Cond::False; // an ETag, and there is none to match
    }
    match parse_time(v) {
        Some(t) if t == modified => Cond::True,
        _ => Cond::False,
    }
}

/// Go's `parseRange`: ranges that start beyond the end are skipped; if all
/// are, the result is `NoOverlap`.
fn parse_range(s: &str, size: u64) -> Result<Vec<ByteRange>, RangeError> {
    if s.is_empty() {
        return Ok(vec![]);
    }
    let spec = s.strip_prefix("bytes=").ok_or(RangeError::Invalid)?;
    let mut ranges = Vec::new();
    let mut no_overlap = false;
    for ra in spec.split(',') {
        let ra = ra.trim_matches([' ', '\t']);
        if ra.is_empty() {
            continue;
        }
        let (start, end) = ra.split_once('-').ok_or(RangeError::Invalid)?;
        let (start, end) = (
            start.trim_matches([' ', '\t']),
            end.trim_matches([' ', '\t']),
        );
        let num = |s: &str| s.parse::<i64>().ok().filter(|&n| n >= 0).map(|n| n as u64);
        if start.is_empty() {
            if end.is_empty() || end.starts_with('-') {
                return Err(RangeError::Invalid);
            }
            let n = num(end).ok_or(RangeError::Invalid)?.min(size);
            ranges.push(ByteRange {
                start: size - n,
                length: n,
            });
            continue;
        }
        let first = num(start).ok_or(RangeError::Invalid)?;
        if first >= size {
            no_overlap = true;
            continue;
        }
        let length = if end.is_empty() {
            size - first
        } else {
            let last = num(end).ok_or(RangeError::Invalid)?;
            if first > last {
                return Err(RangeError::Invalid);
            }
            last.min(size - 1) - first + 1
        };
        ranges.push(ByteRange {
            start: first,
            length,
        });
    }
    if no_overlap && ranges.is_empty() {
        return Err(RangeError::NoOverlap);
    }
    Ok(ranges)
}

/// A piece of a response body.
enum Segment {
    Bytes(Bytes),
    File { offset: u64, len: u64 },
}

fn set(h: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

fn build(status: StatusCode, headers: HeaderMap, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// Answers GET or HEAD for `content`. `headers` already holds the
/// response headers chosen by the caller (type, disposition, caching).
pub fn serve(
    method: &Method,
    req: &HeaderMap,
    mut headers: HeaderMap,
    content: Content,
) -> Response<Body> {
    let modified = UNIX_EPOCH + Duration::from_secs(content.modified_unix.max(0) as u64);
    set(
        &mut headers,
        header::LAST_MODIFIED,
        &httpdate::fmt_http_date(modified),
    );

    let mut cond = check_if_match(req);
    if cond == Cond::None {
        cond = check_if_unmodified_since(req, modified);
    }
    if cond == Cond::False {
        return build(StatusCode::PRECONDITION_FAILED, headers, Body::empty());
    }
    let not_modified = match check_if_none_match(req) {
        Cond::False if method == Method::GET || method == Method::HEAD => true,
        Cond::False => return build(StatusCode::PRECONDITION_FAILED, headers, Body::empty()),
        Cond::None => check_if_modified_since(method, req, modified) == Cond::False,
        Cond::True => false,
    };
    if not_modified {
        headers.remove(header::CONTENT_TYPE);
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::CONTENT_ENCODING);
        return build(StatusCode::NOT_MODIFIED, headers, Body::empty());
    }

    let mut range = header_str(req, header::RANGE).unwrap_or("");
    if !range.is_empty() && check_if_range(method, req, modified) == Cond::False {
        range = "";
    }
    let size = content.size;
    let ranges = match parse_range(range, size) {
        Ok(r) => r,
        Err(RangeError::NoOverlap) if size == 0 => vec![],
        Err(e) => {
            if e == RangeError::NoOverlap {
                set(
                    &mut headers,
                    header::CONTENT_RANGE,
                    &format!("bytes */{size}"),
                );
            }
            return serve_error(headers, e.message(), StatusCode::RANGE_NOT_SATISFIABLE);
        }
    };
    let sum: u64 = ranges.iter().map(|r| r.length).sum();
    let ranges = if sum > size { vec![] } else { ranges };

    let (status, segments) = match ranges.as_slice() {
        [] => (
            StatusCode::OK,
            vec![Segment::File {
                offset: 0,
                len: size,
            }],
        ),
        [r] => {
            set(&mut headers, header::CONTENT_RANGE, &r.content_range(size));
            let seg = Segment::File {
                offset: r.start,
                len: r.length,
            };
            (StatusCode::PARTIAL_CONTENT, vec![seg])
        }
        many => {
            let ctype = header_str(&headers, header::CONTENT_TYPE)
                .unwrap_or("application/octet-stream")
                .to_string();
            let boundary = hex::encode(rand::random::<[u8; 30]>());
            set(
                &mut headers,
                header::CONTENT_TYPE,
                &format!("multipart/byteranges; boundary={boundary}"),
            );
            let mut segs = Vec::new();
            for (i, r) in many.iter().enumerate() {
                let sep = if i == 0 { "" } else { "\r\n" };
                let head = format!(
                    "{sep}--{boundary}\r\nContent-Range: {}\r\nContent-Type: {ctype}\r\n\r\n",
                    r.content_range(size)
                );
                segs.push(Segment::Bytes(Bytes::from(head)));
                segs.push(Segment::File {
                    offset: r.start,
                    len: r.length,
                });
            }
            segs.push(Segment::Bytes(Bytes::from(format!(
                "\r\n--{boundary}--\r\n"
            ))));
            (StatusCode::PARTIAL_CONTENT, segs)
        }
    };
    let send_size: u64 = segments
        .iter()
        .map(|s| match s {
            Segment::Bytes(b) => b.len() as u64,
            Segment::File { len, .. } => *len,
        })
        .sum();
    set(&mut headers, header::ACCEPT_RANGES, "bytes");
    set(&mut headers, header::CONTENT_LENGTH, &send_size.to_string());
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        body_stream(content.file, segments)
    };
    build(status, headers, body)
}

/// Go's `serveError` of `ServeContent` (Go ≥ 1.23).
fn serve_error(mut headers: HeaderMap, msg: &str, status: StatusCode) -> Response<Body> {
    for h in [
        header::CACHE_CONTROL,
        header::CONTENT_ENCODING,
        header::ETAG,
        header::LAST_MODIFIED,
        header::CONTENT_LENGTH,
    ] {
        headers.remove(h);
    }
    set(
        &mut headers,
        header::CONTENT_TYPE,
        "text/plain; charset=utf-8",
    );
    set(&mut headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    build(status, headers, Body::from(format!("{msg}\n")))
}

/// Streams the segments, reading the file with positional reads on the
/// blocking pool, one chunk at a time.
fn body_stream(file: File, segments: Vec<Segment>) -> Body {
    let state = (Arc::new(file), VecDeque::from(segments));
    let stream = futures_util::stream::unfold(state, |(file, mut segs)| async move {
        loop {
            match segs.pop_front()? {
                Segment::Bytes(b) => return Some((Ok(b), (file, segs))),
                Segment::File { len: 0, .. } => continue,
                Segment::File { offset, len } => {
                    let n = len.min(CHUNK);
                    let f = file.clone();
                    let read = tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0u8; n as usize];
                        f.read_exact_at(&mut buf, offset).map(|()| Bytes::from(buf))
                    })
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                    if read.is_ok() && len > n {
                        segs.push_front(Segment::File {
                            offset: offset + n,
                            len: len - n,
                        });
                    }
                    if read.is_err() {
                        segs.clear();
                    }
                    return Some((read, (file, segs)));
                }
            }
        }
    });
    Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, length: u64) -> ByteRange {
        ByteRange { start, length }
    }

    #[test]
    fn ranges_follow_go() {
        assert_eq!(parse_range("bytes=0-4", 10), Ok(vec![r(0, 5)]));
        assert_eq!(parse_range("bytes=5-", 10), Ok(vec![r(5, 5)]));
        assert_eq!(parse_range("bytes=-3", 10), Ok(vec![r(7, 3)]));
        assert_eq!(parse_range("bytes=-30", 10), Ok(vec![r(0, 10)]));
        assert_eq!(parse_range("bytes=8-20", 10), Ok(vec![r(8, 2)]));
        assert_eq!(parse_range("bytes=10-", 10), Err(RangeError::NoOverlap));
        assert_eq!(parse_range("bytes=0-1, 20-", 10), Ok(vec![r(0, 2)]));
        assert_eq!(parse_range("bytes=5-4", 10), Err(RangeError::Invalid));
        assert_eq!(parse_range("items=0-1", 10), Err(RangeError::Invalid));
        assert_eq!(parse_range("bytes=x-1", 10), Err(RangeError::Invalid));
        assert_eq!(parse_range("bytes=", 10), Ok(vec![]));
    }
}
