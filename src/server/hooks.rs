//! Test hooks under `/_pkgfs/test/` (only with `--test-hooks`): request
//! counters, fault injection (status, dropped connection, delay, corrupted
//! body), corruption of a stored blob and Gitea's cleanup of empty
//! packages. The mount and fault tests of pkgfs are written against this
//! API; see README.md "pkgfs serve" for its description.

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::json;

use super::respond;
use super::App;

/// Counters since start or the last reset.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub file_get: AtomicU64,
    pub file_head: AtomicU64,
    pub file_put: AtomicU64,
    pub file_delete: AtomicU64,
    pub v1: AtomicU64,
    pub direct_get: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub first_put_overlaps: AtomicU64,
}

impl Stats {
    fn all(&self) -> [(&'static str, &AtomicU64); 9] {
        [
            ("requests", &self.requests),
            ("file_get", &self.file_get),
            ("file_head", &self.file_head),
            ("file_put", &self.file_put),
            ("file_delete", &self.file_delete),
            ("v1", &self.v1),
            ("direct_get", &self.direct_get),
            ("bytes_sent", &self.bytes_sent),
            ("first_put_overlaps", &self.first_put_overlaps),
        ]
    }

    pub fn bump(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Status,
    Drop,
    Delay,
    Corrupt,
}

/// A fault as posted to `/_pkgfs/test/fault`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultSpec {
    kind: Kind,
    #[serde(default)]
    count: u64,
    status: Option<u16>,
    /// With `status`: a `Retry-After` header of this many seconds.
    retry_after: Option<u64>,
    #[serde(default)]
    after_bytes: u64,
    #[serde(default)]
    delay_ms: u64,
    path_contains: Option<String>,
    method: Option<String>,
}

#[derive(Debug)]
struct Fault {
    spec: FaultSpec,
    /// `None`: until reset.
    remaining: Option<u64>,
}

/// What to do to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// This status, with `Retry-After` seconds if set.
    Status(StatusCode, Option<u64>),
    Drop {
        after_bytes: u64,
    },
    Delay(Duration),
    Corrupt {
        after_bytes: u64,
    },
}

/// State of the test hooks.
#[derive(Debug, Default)]
pub struct Hooks {
    pub stats: Stats,
    faults: Mutex<Vec<Fault>>,
    /// The body headers of the last file PUT: Content-Type, Content-Length
    /// and Transfer-Encoding (null when absent).
    last_put: Mutex<serde_json::Value>,
    /// File PUTs in flight per version, and the versions that have taken
    /// a file since start: to count overlapping first uploads (PROTOCOL.md
    /// §concurrency).
    versions: Mutex<VersionPuts>,
}

#[derive(Debug, Default)]
struct VersionPuts {
    in_flight: std::collections::HashMap<String, u32>,
    created: std::collections::HashSet<String>,
}

/// A file PUT in flight into a version; ended by [`PutGuard::done`] or on
/// drop (a request cut off).
pub struct PutGuard<'a> {
    hooks: &'a Hooks,
    key: String,
}

impl PutGuard<'_> {
    pub fn done(self, created: bool) {
        if created {
            let mut v = self
                .hooks
                .versions
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            v.created.insert(self.key.clone());
        }
    }
}

impl Drop for PutGuard<'_> {
    fn drop(&mut self) {
        let mut v = self
            .hooks
            .versions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = v.in_flight.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                v.in_flight.remove(&self.key);
            }
        }
    }
}

impl Hooks {
    /// A file PUT into version `key` begins: when another one into the same
    /// version is in flight and the version has no file yet, that is an
    /// overlapping first upload (`first_put_overlaps` in the stats).
    pub fn put_started(&self, key: String) -> PutGuard<'_> {
        let mut v = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = !v.created.contains(&key);
        let n = v.in_flight.entry(key.clone()).or_default();
        *n += 1;
        if *n > 1 && fresh {
            Stats::bump(&self.stats.first_put_overlaps, 1);
        }
        PutGuard { hooks: self, key }
    }

    /// Notes the body headers of a file PUT.
    pub fn note_put(&self, headers: &http::HeaderMap) {
        let get = |k: http::header::HeaderName| headers.get(k).and_then(|v| v.to_str().ok());
        *self.last_put.lock().unwrap_or_else(|e| e.into_inner()) = json!({
            "content_type": get(http::header::CONTENT_TYPE),
            "content_length": get(http::header::CONTENT_LENGTH),
            "transfer_encoding": get(http::header::TRANSFER_ENCODING),
        });
    }

    /// The fault for this request, if any; consumes one of its count.
    pub fn take_fault(
        &self,
        method: &Method,
        raw_path: &str,
        decoded_path: &str,
    ) -> Option<Action> {
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        let i = faults.iter().position(|f| {
            f.remaining != Some(0)
                && f.spec
                    .method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()))
                && f.spec
                    .path_contains
                    .as_deref()
                    .is_none_or(|p| raw_path.contains(p) || decoded_path.contains(p))
        })?;
        let f = &mut faults[i];
        if let Some(n) = &mut f.remaining {
            *n -= 1;
        }
        let s = &f.spec;
        let action = match s.kind {
            Kind::Status => Action::Status(
                StatusCode::from_u16(s.status.unwrap_or(500))
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                s.retry_after,
            ),
            Kind::Drop => Action::Drop {
                after_bytes: s.after_bytes,
            },
            Kind::Delay => Action::Delay(Duration::from_millis(s.delay_ms)),
            Kind::Corrupt => Action::Corrupt {
                after_bytes: s.after_bytes,
            },
        };
        if f.remaining == Some(0) {
            faults.remove(i);
        }
        Some(action)
    }

    fn reset(&self) {
        for (_, c) in self.stats.all() {
            c.store(0, Ordering::Relaxed);
        }
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        *self.last_put.lock().unwrap_or_else(|e| e.into_inner()) = serde_json::Value::Null;
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, Response<Body>> {
    let bytes = Limited::new(body, 64 * 1024)
        .collect()
        .await
        .map_err(|e| respond::text(StatusCode::BAD_REQUEST, &e.to_string()))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| respond::text(StatusCode::BAD_REQUEST, &e.to_string()))
}

/// Handles `/_pkgfs/test/{segs}`.
pub async fn handle(
    app: &App,
    hooks: &Hooks,
    req: Request<Body>,
    segs: &[String],
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    match (parts.method.as_str(), &s[..]) {
        ("GET", ["stats"]) => {
            let mut map: serde_json::Map<String, serde_json::Value> = hooks
                .stats
                .all()
                .iter()
                .map(|(k, c)| (k.to_string(), json!(c.load(Ordering::Relaxed))))
                .collect();
            let last_put = hooks.last_put.lock().unwrap_or_else(|e| e.into_inner());
            map.insert("last_put".into(), last_put.clone());
            // Faults installed and not yet used up (spent ones are removed).
            let armed = hooks.faults.lock().unwrap_or_else(|e| e.into_inner()).len();
            map.insert("faults_armed".into(), json!(armed));
            respond::json(StatusCode::OK, &map)
        }
        ("POST", ["reset"]) => {
            hooks.reset();
            respond::empty(StatusCode::NO_CONTENT)
        }
        ("POST", ["fault"]) => match read_json::<FaultSpec>(body).await {
            Ok(spec) => {
                let remaining = (spec.count > 0).then_some(spec.count);
                hooks
                    .faults
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Fault { spec, remaining });
                respond::empty(StatusCode::NO_CONTENT)
            }
            Err(r) => r,
        },
        ("POST", ["corrupt-blob"]) => {
            #[derive(Deserialize)]
            struct Req {
                sha256: String,
            }
            let sha = match read_json::<Req>(body).await {
                Ok(r) => r.sha256.to_lowercase(),
                Err(r) => return r,
            };
            let result = app
                .db(move |s| {
                    if sha.len() != 64 || !s.has_blob(&sha)? {
                        return Ok(StatusCode::NOT_FOUND);
                    }
                    Ok(flip_byte(&s.blob_path(&sha))?)
                })
                .await;
            match result {
                Ok(status) => respond::empty(status),
                Err(e) => respond::internal(&e),
            }
        }
        ("POST", ["cleanup"]) => match app.db(|s| s.cleanup_empty_packages()).await {
            Ok(n) => respond::json(StatusCode::OK, &json!({ "removed_packages": n })),
            Err(e) => respond::internal(&e),
        },
        _ => respond::not_found(),
    }
}

/// Inverts the first byte of a file in place.
fn flip_byte(path: &std::path::Path) -> std::io::Result<StatusCode> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut b = [0u8; 1];
    if f.read(&mut b)? == 0 {
        return Ok(StatusCode::CONFLICT); // an empty blob cannot be corrupted
    }
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&[!b[0]])?;
    Ok(StatusCode::NO_CONTENT)
}
