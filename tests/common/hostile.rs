//! A misbehaving HTTP/1.1 proxy for fault-injection tests.
//!
//! Real registries and the proxies in front of them misbehave in ways a
//! well-behaved test registry never does: they answer an upload before its
//! body arrived, ignore `Range`, send truncated or slow bodies, lie in
//! headers or return surprising JSON. [`Hostile`] sits on 127.0.0.1 in front
//! of a real (test) registry, forwards every request unchanged (streaming
//! both ways, never re-encoding the path), and answers the requests that
//! match one of its [`Rule`]s in the hostile way the rule's [`Action`] says.
//! It also records every request so tests can assert what pkgfs sent.
//!
//! The tests are synchronous (they use `std::fs` on a FUSE mount), so the
//! proxy runs on its own small tokio runtime, owned by [`Hostile`]; dropping
//! it stops accepting and aborts every connection.
#![allow(dead_code)]

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, HOST, RANGE};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type RespBody = UnsyncBoxBody<Bytes, BoxError>;

/// How long an `EarlyAnswer` connection stays open after the answer was
/// handed to hyper, so that the client reads the status before the reset.
const EARLY_LINGER: Duration = Duration::from_millis(50);
/// `Custom` reads and discards at most this much of a request body.
const CUSTOM_DISCARD_LIMIT: u64 = 1 << 30;

/// The hostile proxy. See the module documentation.
pub struct Hostile {
    /// `http://127.0.0.1:PORT/`, with a trailing slash.
    pub url: String,
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// A rule: which requests it matches and what to do with them.
#[derive(Clone)]
pub struct Rule {
    /// HTTP method to match, case-insensitive; `None` matches any.
    pub method: Option<String>,
    /// Substring of the raw path (percent-encoded as received, without the
    /// query); `""` matches every path.
    pub path_contains: String,
    /// `None`: forever; `Some(n)`: only the first `n` matching requests.
    pub times: Option<u64>,
    /// What to do with a matching request.
    pub action: Action,
}

impl Rule {
    /// A rule for every request of `method` whose path contains `path`.
    pub fn new(method: Option<&str>, path: &str, action: Action) -> Rule {
        Rule {
            method: method.map(str::to_string),
            path_contains: path.to_string(),
            times: None,
            action,
        }
    }

    /// Limits the rule to its first `n` matches.
    pub fn times(self, n: u64) -> Rule {
        Rule {
            times: Some(n),
            ..self
        }
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && path.contains(&self.path_contains)
    }
}

/// What a request looked like (for [`Action::Custom`]).
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Raw path, percent-encoded as received, without the query.
    pub path: String,
    /// Raw query, `""` if none.
    pub query: String,
    /// Request headers, names in lower case, values lossily decoded.
    pub headers: Vec<(String, String)>,
}

/// A canned answer (for [`Action::Custom`]).
#[derive(Clone, Debug)]
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What to do with a request that matched a rule.
#[derive(Clone)]
pub enum Action {
    /// Answer `status` (empty body, `Content-Length: 0`) right after the
    /// request head, without reading the request body, then reset the
    /// connection. Models a proxy that answers 201 before the upload body
    /// was received. Nothing is forwarded.
    EarlyAnswer(u16),
    /// Answer with this, without forwarding. The request body is read and
    /// discarded first (up to 1 GiB).
    Custom(Arc<dyn Fn(&Seen) -> Canned + Send + Sync>),
    /// Forward, buffer the upstream response body, and if it is JSON replace
    /// it by `f(json)` (status and headers kept, `Content-Length` corrected).
    /// A body that is not JSON is passed through unchanged.
    RewriteJson(Arc<dyn Fn(serde_json::Value) -> serde_json::Value + Send + Sync>),
    /// Forward; send status and headers at once, then the body at
    /// `bytes_per_sec`, chunked (no `Content-Length`).
    Trickle { bytes_per_sec: u64 },
    /// Forward without the `Range` header and answer 200 with only the first
    /// `keep` bytes of the upstream body (`Content-Length: keep`, no
    /// `Content-Range`). An upstream answer other than 200/206 is passed
    /// through unchanged.
    IgnoreRangeAndTruncate { keep: usize },
    /// Forward, then add or replace these response headers; a header with an
    /// empty value is removed.
    SetHeaders(Vec<(String, String)>),
}

struct RuleState {
    rule: Rule,
    used: u64,
}

struct Record {
    method: String,
    path: String,
    path_and_query: String,
}

struct State {
    /// Upstream base URL without trailing slash.
    upstream: String,
    client: reqwest::Client,
    rules: Mutex<Vec<RuleState>>,
    seen: Mutex<Vec<Record>>,
}

/// Locks, ignoring poisoning (a panicking test thread must not cascade).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hostile {
    /// Starts the proxy in front of `upstream` (base URL with or without
    /// trailing slash).
    pub fn start(upstream: &str) -> Hostile {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("hostile-proxy")
            .enable_all()
            .build()
            .expect("hostile proxy: tokio runtime");
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .no_gzip()
            .no_brotli()
            .no_deflate()
            .no_zstd()
            .http1_only()
            .build()
            .expect("hostile proxy: reqwest client");
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_string(),
            client,
            rules: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
        });
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("hostile proxy: bind 127.0.0.1:0");
        std_listener
            .set_nonblocking(true)
            .expect("hostile proxy: set_nonblocking");
        let port = std_listener
            .local_addr()
            .expect("hostile proxy: local_addr")
            .port();
        let listener = {
            let _guard = runtime.enter();
            TcpListener::from_std(std_listener).expect("hostile proxy: listener")
        };
        runtime.spawn(accept_loop(listener, state.clone()));
        Hostile {
            url: format!("http://127.0.0.1:{port}/"),
            state,
            runtime: Some(runtime),
        }
    }

    /// Adds a rule; rules are tried in the order added, the first match wins.
    pub fn add(&self, rule: Rule) {
        lock(&self.state.rules).push(RuleState { rule, used: 0 });
    }

    /// Removes every rule (requests are forwarded unchanged again).
    pub fn clear(&self) {
        lock(&self.state.rules).clear();
    }

    /// How many requests so far matched `method` (`None` = any,
    /// case-insensitive) and had `path_contains` in their raw path (without
    /// query).
    pub fn count(&self, method: Option<&str>, path_contains: &str) -> u64 {
        lock(&self.state.seen)
            .iter()
            .filter(|r| {
                method.is_none_or(|m| m.eq_ignore_ascii_case(&r.method))
                    && r.path.contains(path_contains)
            })
            .count() as u64
    }

    /// Requests seen so far: (method, path-and-query) in arrival order.
    pub fn seen(&self) -> Vec<(String, String)> {
        lock(&self.state.seen)
            .iter()
            .map(|r| (r.method.clone(), r.path_and_query.clone()))
            .collect()
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Drops every task (the accept loop and all connections) without
            // waiting for them; never blocks, even inside an async context.
            rt.shutdown_background();
        }
    }
}

/// Per-connection control shared by the connection task and its service.
struct ConnCtl {
    /// Set by `EarlyAnswer`: reset (SO_LINGER 0) instead of closing.
    reset: AtomicBool,
    /// Fired when the early answer's body was consumed by hyper.
    answered: Notify,
}

/// The accepted socket; resets the connection on drop when asked to.
struct Sock {
    stream: TcpStream,
    ctl: Arc<ConnCtl>,
}

impl Drop for Sock {
    fn drop(&mut self) {
        if self.ctl.reset.load(Ordering::SeqCst) {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for Sock {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Sock {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Empty response body that tells the connection task when hyper is done
/// with it (dropped it), i.e. the early answer is on its way out.
struct SignalBody {
    ctl: Arc<ConnCtl>,
}

impl Body for SignalBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        true
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(0)
    }
}

impl Drop for SignalBody {
    fn drop(&mut self) {
        self.ctl.answered.notify_one();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_conn(stream, state.clone()));
            }
            Err(e) => {
                eprintln!("hostile proxy: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve_conn(stream: TcpStream, state: Arc<State>) {
    let ctl = Arc::new(ConnCtl {
        reset: AtomicBool::new(false),
        answered: Notify::new(),
    });
    let io = TokioIo::new(Sock {
        stream,
        ctl: ctl.clone(),
    });
    let svc_ctl = ctl.clone();
    let svc = service_fn(move |req| {
        let state = state.clone();
        let ctl = svc_ctl.clone();
        async move { Ok::<_, Infallible>(handle(state, ctl, req).await) }
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, svc)
        .without_shutdown();
    tokio::pin!(conn);
    let finished = tokio::select! {
        r = &mut conn => Some(r),
        _ = ctl.answered.notified() => None,
    };
    match finished {
        Some(Ok(parts)) => {
            if ctl.reset.load(Ordering::SeqCst) {
                tokio::time::sleep(EARLY_LINGER).await;
            }
            drop(parts); // the socket: FIN, or RST after an early answer
        }
        Some(Err(e)) => {
            if !ctl.reset.load(Ordering::SeqCst) && !is_benign(&e) {
                eprintln!("hostile proxy: connection: {e}");
            }
        }
        None => {
            // The early answer was handed to hyper: keep driving the
            // connection a little so that it is flushed and the client reads
            // it, then drop everything (the socket resets: SO_LINGER 0).
            let deadline = tokio::time::Instant::now() + EARLY_LINGER;
            let rest = tokio::time::timeout_at(deadline, &mut conn).await;
            tokio::time::sleep_until(deadline).await;
            drop(rest);
        }
    }
}

fn is_benign(e: &hyper::Error) -> bool {
    e.is_incomplete_message() || e.is_canceled() || e.is_closed() || e.is_body_write_aborted()
}

/// Picks the rule for a request (first match that is not used up).
fn pick(state: &State, method: &str, path: &str) -> Option<Action> {
    let mut rules = lock(&state.rules);
    for rs in rules.iter_mut() {
        if rs.rule.times.is_some_and(|n| rs.used >= n) {
            continue;
        }
        if rs.rule.matches(method, path) {
            rs.used += 1;
            return Some(rs.rule.action.clone());
        }
    }
    None
}

async fn handle(
    state: Arc<State>,
    ctl: Arc<ConnCtl>,
    req: Request<Incoming>,
) -> Response<RespBody> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    lock(&state.seen).push(Record {
        method: method.clone(),
        path: path.clone(),
        path_and_query: path_and_query.clone(),
    });
    let action = pick(&state, &method, &path);
    match action {
        None => match forward(&state, req, &path_and_query, false).await {
            Ok(resp) => passthrough(resp),
            Err(r) => r,
        },
        Some(Action::EarlyAnswer(status)) => {
            drop(req); // never read the body
            ctl.reset.store(true, Ordering::SeqCst);
            let mut resp = Response::new(RespBody::new(SignalBody { ctl }));
            *resp.status_mut() = status_code(status);
            let h = resp.headers_mut();
            h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
            h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            resp
        }
        Some(Action::Custom(f)) => {
            let seen = Seen {
                method,
                path,
                query,
                headers: req
                    .headers()
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
            };
            discard_body(req.into_body()).await;
            let canned = f(&seen);
            let mut resp = Response::new(full(canned.body));
            *resp.status_mut() = status_code(canned.status);
            apply_headers(resp.headers_mut(), &canned.headers);
            resp
        }
        Some(Action::RewriteJson(f)) => {
            let resp = match forward(&state, req, &path_and_query, false).await {
                Ok(r) => r,
                Err(r) => return r,
            };
            let status = resp.status();
            let mut headers = resp.headers().clone();
            strip_hop_by_hop(&mut headers);
            let body = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("hostile proxy: reading upstream body: {e}");
                    return error_response(StatusCode::BAD_GATEWAY);
                }
            };
            let body = match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(json) => match serde_json::to_vec(&f(json)) {
                    Ok(v) => Bytes::from(v),
                    Err(_) => body,
                },
                Err(_) => body,
            };
            headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
            let mut out = Response::new(full(body));
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            out
        }
        Some(Action::Trickle { bytes_per_sec }) => {
            let resp = match forward(&state, req, &path_and_query, false).await {
                Ok(r) => r,
                Err(r) => return r,
            };
            let status = resp.status();
            let mut headers = resp.headers().clone();
            strip_hop_by_hop(&mut headers);
            headers.remove(CONTENT_LENGTH);
            let mut out = Response::new(trickle(resp, bytes_per_sec));
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            out
        }
        Some(Action::IgnoreRangeAndTruncate { keep }) => {
            let resp = match forward(&state, req, &path_and_query, true).await {
                Ok(r) => r,
                Err(r) => return r,
            };
            let status = resp.status();
            if status != StatusCode::OK && status != StatusCode::PARTIAL_CONTENT {
                return passthrough(resp);
            }
            let mut headers = resp.headers().clone();
            strip_hop_by_hop(&mut headers);
            headers.remove(http::header::CONTENT_RANGE);
            let body = match read_prefix(resp, keep).await {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("hostile proxy: reading upstream body: {e}");
                    return error_response(StatusCode::BAD_GATEWAY);
                }
            };
            headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
            let mut out = Response::new(full(body));
            *out.status_mut() = StatusCode::OK;
            *out.headers_mut() = headers;
            out
        }
        Some(Action::SetHeaders(set)) => {
            let resp = match forward(&state, req, &path_and_query, false).await {
                Ok(r) => r,
                Err(r) => return r,
            };
            let mut out = passthrough(resp);
            apply_headers(out.headers_mut(), &set);
            out
        }
    }
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn full(body: impl Into<Bytes>) -> RespBody {
    RespBody::new(Full::new(body.into()).map_err(|never| match never {}))
}

fn error_response(status: StatusCode) -> Response<RespBody> {
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

/// Adds or replaces headers; an empty value removes the header.
fn apply_headers(headers: &mut HeaderMap, set: &[(String, String)]) {
    for (name, value) in set {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            eprintln!("hostile proxy: bad header name {name:?}");
            continue;
        };
        if value.is_empty() {
            headers.remove(&name);
            continue;
        }
        match HeaderValue::from_str(value) {
            Ok(v) => {
                headers.insert(name, v);
            }
            Err(_) => eprintln!("hostile proxy: bad header value {value:?}"),
        }
    }
}

fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection" | "keep-alive" | "transfer-encoding" | "te" | "trailer" | "upgrade"
    ) || name.starts_with("proxy-")
}

/// Removes hop-by-hop headers, including those named in `Connection`.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| is_hop_by_hop(k.as_str()) || named.iter().any(|n| n == k.as_str()))
        .cloned()
        .collect();
    for k in doomed {
        headers.remove(k);
    }
}

/// Sends the request upstream (streaming its body). `Err` is the response to
/// give the client instead (502 when the upstream cannot be reached).
async fn forward(
    state: &State,
    req: Request<Incoming>,
    path_and_query: &str,
    drop_range: bool,
) -> Result<reqwest::Response, Response<RespBody>> {
    let (parts, body) = req.into_parts();
    let url = format!("{}{}", state.upstream, path_and_query);
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    headers.remove(HOST); // reqwest sets the upstream's
    if drop_range {
        headers.remove(RANGE);
        headers.remove(http::header::IF_RANGE);
    }
    let mut builder = state.client.request(parts.method, &url).headers(headers);
    if !body.is_end_stream() {
        // Content-Length, when the client sent one, is still in the headers,
        // and hyper uses it for the streamed body.
        builder = builder.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    }
    match builder.send().await {
        Ok(resp) => Ok(resp),
        Err(e) => {
            eprintln!("hostile proxy: upstream {url}: {e}");
            Err(error_response(StatusCode::BAD_GATEWAY))
        }
    }
}

/// The upstream's response as is, body streamed.
fn passthrough(resp: reqwest::Response) -> Response<RespBody> {
    let status = resp.status();
    let mut headers = resp.headers().clone();
    strip_hop_by_hop(&mut headers);
    let stream = resp
        .bytes_stream()
        .map(|r| r.map(Frame::data).map_err(BoxError::from));
    let mut out = Response::new(RespBody::new(StreamBody::new(stream)));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

/// The upstream body, re-chunked and paced at `bytes_per_sec`.
fn trickle(resp: reqwest::Response, bytes_per_sec: u64) -> RespBody {
    let bps = bytes_per_sec.max(1);
    let chunk = (bps / 10).max(1);
    let pause = Duration::from_secs_f64(chunk as f64 / bps as f64);
    let chunk = usize::try_from(chunk).unwrap_or(usize::MAX);
    let upstream = resp.bytes_stream();
    let stream = futures_util::stream::unfold(
        (upstream, Bytes::new(), false),
        move |(mut up, mut buf, done)| async move {
            if done {
                return None;
            }
            while buf.is_empty() {
                match up.next().await {
                    None => return None,
                    Some(Err(e)) => return Some((Err(BoxError::from(e)), (up, buf, true))),
                    Some(Ok(b)) => buf = b,
                }
            }
            tokio::time::sleep(pause).await;
            let piece = buf.split_to(chunk.min(buf.len()));
            Some((Ok(Frame::data(piece)), (up, buf, false)))
        },
    );
    RespBody::new(StreamBody::new(stream))
}

/// Reads at most `keep` bytes of the upstream body, then drops the rest.
async fn read_prefix(resp: reqwest::Response, keep: usize) -> Result<Bytes, reqwest::Error> {
    let mut out = Vec::with_capacity(keep.min(16 << 20));
    let mut stream = resp.bytes_stream();
    while out.len() < keep {
        match stream.next().await {
            None => break,
            Some(chunk) => {
                let chunk = chunk?;
                let take = chunk.len().min(keep - out.len());
                out.extend_from_slice(&chunk[..take]);
            }
        }
    }
    Ok(Bytes::from(out))
}

/// Reads and discards a request body, up to [`CUSTOM_DISCARD_LIMIT`].
async fn discard_body(mut body: Incoming) {
    let mut total = 0u64;
    while total < CUSTOM_DISCARD_LIMIT {
        match body.frame().await {
            None => break,
            Some(Err(_)) => break,
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    total += data.len() as u64;
                }
            }
        }
    }
}
