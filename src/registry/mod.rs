//! HTTP client for a Gitea/Forgejo generic package registry: typed requests,
//! pagination, authentication, retries of idempotent requests, and the
//! status-to-error table (`error`). Knows nothing of FUSE or inodes.

mod backend;
mod error;
mod list;
pub mod redact;
mod transfer;

use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use url::Url;

pub use backend::{Body, Registry};
pub use error::Error;
pub use list::{log_once, FileEntry, PackageVersion, EMPTY_SHA256};
pub use transfer::{validate_ref, Download, FileRef, Sent};

pub type Result<T> = std::result::Result<T, Error>;

/// A listing whose directory is gone (404) is an empty listing: the
/// registry has no empty versions or packages, so absent means no entries.
pub fn empty_if_absent<T>(r: Result<Vec<T>>) -> Result<Vec<T>> {
    match r {
        Err(Error::NotFound(_)) => Ok(Vec::new()),
        r => r,
    }
}

/// How to reach and authenticate to the registry.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL (APP_URL), e.g. `https://gitea.example.com/`.
    pub base: Url,
    /// Personal access token; `None` for anonymous access.
    pub token: Option<String>,
    /// Bound on one operation, retries included; also the longest a
    /// download may stall without receiving a byte.
    pub timeout: Duration,
    /// Accept invalid TLS certificates (`--insecure`).
    pub insecure: bool,
}

/// The registry client. Cheap to clone (shares the connection pool).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Without a read timeout: for PUTs, whose stalls `transfer` watches.
    upload_http: reqwest::Client,
    base: Url,
    timeout: Duration,
    anonymous: bool,
    /// Whether the server has the v1 "list versions" endpoint (`list`).
    versions_endpoint: std::sync::Arc<std::sync::atomic::AtomicU8>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("anonymous", &self.anonymous)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Client> {
        let mut headers = HeaderMap::new();
        if let Some(token) = &config.token {
            redact::register_secret(token);
            let mut value = HeaderValue::from_str(&format!("token {token}"))
                .map_err(|_| Error::Invalid("the token contains invalid characters".into()))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        // reqwest's default redirect policy follows up to 10 hops, keeps
        // Range, and drops Authorization when host or port change
        // (PROTOCOL.md §direct).
        let builder = || {
            reqwest::Client::builder()
                .default_headers(headers.clone())
                .user_agent(concat!("pkgfs/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(config.timeout)
                // Below common server keep-alive limits (30 s for `pkgfs
                // serve`, 60-75 s for proxies): a request on a connection the
                // server is closing fails after it was sent, and a PUT is
                // then not retried blindly.
                .pool_idle_timeout(Duration::from_secs(20))
                .tcp_nodelay(true)
                .danger_accept_invalid_certs(config.insecure)
        };
        let built = |b: reqwest::ClientBuilder| {
            b.build()
                .map_err(|e| Error::Network(format!("cannot build HTTP client: {e}")))
        };
        let http = built(builder().read_timeout(config.timeout))?;
        // A redirect of a PUT is never followed: the body cannot be sent
        // twice, and a 3xx is not the registry storing the file.
        // Uploads: reqwest's read timeout runs while the body is being sent
        // (the server says nothing until the end), so it would fail every
        // upload longer than `timeout`. They get a stall timeout of their
        // own instead (`transfer::put`).
        let upload_http = built(builder().redirect(reqwest::redirect::Policy::none()))?;
        let mut base = config.base;
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(Client {
            http,
            upload_http,
            base,
            timeout: config.timeout,
            anonymous: config.token.is_none(),
            versions_endpoint: Default::default(),
        })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn is_anonymous(&self) -> bool {
        self.anonymous
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        self.http.request(method, url)
    }

    /// Sends an idempotent request, retrying connection errors, 5xx and 429
    /// with jittered exponential backoff (honouring `Retry-After`) until
    /// `timeout` has passed. Returns the response only for a 2xx/3xx status.
    async fn send_idempotent(
        &self,
        method: Method,
        url: &Url,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response> {
        let deadline = Instant::now() + self.timeout;
        let mut backoff = Duration::from_millis(50);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let req = build(self.request(method.clone(), url.clone())).timeout(remaining);
            let outcome = match req.send().await {
                Ok(resp) => check_status(resp, &method, url).await,
                Err(e) => Err((Error::from_reqwest(&e, &describe(&method, url)), None)),
            };
            match outcome {
                Err((err, retry_after)) if err.is_transient() => {
                    let wait = retry_after.unwrap_or_else(|| jitter(backoff));
                    if Instant::now() + wait >= deadline {
                        tracing::warn!(error = %err, "giving up after retries");
                        return Err(err);
                    }
                    tracing::debug!(error = %err, ?wait, "transient error, retrying");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err((err, _)) => return Err(err),
                Ok(resp) => return Ok(resp),
            }
        }
    }

    /// GET of a JSON document (with retries).
    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &Url) -> Result<(T, HeaderMap)> {
        let (bytes, headers) = self.get_body(url).await?;
        let what = describe(&Method::GET, url);
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Protocol(format!("{what}: unexpected JSON: {e}")))?;
        Ok((value, headers))
    }

    /// GET of a JSON body of at most `MAX_JSON_BODY` bytes (with retries).
    /// A larger body is refused as it arrives, never held whole.
    async fn get_body(&self, url: &Url) -> Result<(Vec<u8>, HeaderMap)> {
        let mut resp = self.send_idempotent(Method::GET, url, |r| r).await?;
        let headers = resp.headers().clone();
        let what = describe(&Method::GET, url);
        let too_big = || {
            let e = Error::Protocol(format!(
                "{what}: answer larger than {} MiB; refused",
                MAX_JSON_BODY >> 20
            ));
            tracing::warn!(error = %e, "listing refused");
            e
        };
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_JSON_BODY as u64)
        {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| Error::from_reqwest(&e, &what))?
        {
            if body.len() + chunk.len() > MAX_JSON_BODY {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, headers))
    }
}

/// Largest JSON answer accepted: 16 MiB holds the file list of a version
/// with some 50,000 files, or hundreds of pages' worth of packages; a
/// larger one is a broken or hostile server, and holding it (and its
/// parsed form, several times larger) would cost the daemon's memory.
const MAX_JSON_BODY: usize = 16 << 20;

/// `METHOD /path` for logs and errors: never the query string or host
/// credentials.
pub(crate) fn describe(method: &Method, url: &Url) -> String {
    format!("{method} {}", url.path())
}

/// Maps a non-success status to an error (plus `Retry-After`, if any).
async fn check_status(
    resp: Response,
    method: &Method,
    url: &Url,
) -> std::result::Result<Response, (Error, Option<Duration>)> {
    let status = resp.status();
    if status.is_success() || status.is_redirection() {
        return Ok(resp);
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = read_error_body(resp).await;
    let what = format!("{} -> {}", describe(method, url), status.as_u16());
    let err = Error::from_status(status, &what, &body);
    if status != StatusCode::NOT_FOUND {
        tracing::warn!(error = %err, "registry refused request");
    }
    Err((err, retry_after))
}

/// The start of an error body, for the log: at most 1 KiB read, 256
/// characters kept, credentials redacted, control characters escaped.
async fn read_error_body(resp: Response) -> String {
    let mut resp = resp;
    let mut bytes = Vec::new();
    while bytes.len() < 1024 {
        match resp.chunk().await {
            Ok(Some(c)) => bytes.extend_from_slice(&c),
            _ => break,
        }
    }
    bytes.truncate(1024);
    let text = String::from_utf8_lossy(&bytes);
    // v1 error bodies are JSON {"message": ...}; packages bodies plain text.
    let text = serde_json::from_str::<crate::protocol::ApiError>(&text)
        .map(|e| e.message)
        .unwrap_or_else(|_| text.into_owned());
    redact::for_log(&text, 256)
}

fn jitter(d: Duration) -> Duration {
    let factor = 0.5 + rand::random::<f64>();
    d.mul_f64(factor)
}
