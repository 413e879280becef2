//! Connections, routing and the access log. Each connection is served by
//! hyper directly (not `axum::serve`) so that a test fault can drop it
//! without an answer. Before routing, repeated slashes collapse and a
//! trailing slash goes; routing works on the escaped segments, which are
//! then percent-decoded one by one (so `%2F` survives inside a version).
//! Every response body is metered: bytes sent, test faults that cut or
//! corrupt it, and one log line per request when it is finished.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::hooks::{Action, Stats};
use super::{direct, hooks, respond, routes_packages, routes_v1, App};

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The registry (`--listen`).
    Main,
    /// The presigned-URL "object store" (`--serve-direct`).
    Direct,
}

/// Accepts connections until `shutdown`.
pub async fn serve(listener: TcpListener, app: Arc<App>, side: Side, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        // Headers and body go out as separate writes: without NODELAY,
        // Nagle and the client's delayed ACK hold the first body bytes.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let kill = CancellationToken::new();
            let svc = {
                let kill = kill.clone();
                hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (app, kill) = (app.clone(), kill.clone());
                    async move { Ok::<_, Infallible>(handle(app, side, kill, req.map(Body::new)).await) }
                })
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                },
                _ = kill.cancelled() => tracing::debug!("connection dropped by a test fault"),
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

/// Whether every `%` starts a valid escape (Go's server answers 400 if not).
fn valid_escapes(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |j: usize| b.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

/// Path and query for the log, with credentials blanked.
fn loggable(uri: &Uri) -> String {
    let Some(q) = uri.query() else {
        return uri.path().to_string();
    };
    let cleaned: Vec<String> = q
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _))
                if ["token", "access_token", "X-Pkgfs-Signature"]
                    .iter()
                    .any(|s| k.eq_ignore_ascii_case(s)) =>
            {
                format!("{k}=***")
            }
            _ => kv.to_string(),
        })
        .collect();
    format!("{}?{}", uri.path(), cleaned.join("&"))
}

/// Which counter a request bumps.
fn counter<'a>(
    stats: &'a Stats,
    side: Side,
    segs: &[&str],
    method: &Method,
) -> Option<&'a std::sync::atomic::AtomicU64> {
    match (side, segs) {
        (Side::Direct, _) if method == Method::GET => Some(&stats.direct_get),
        (Side::Main, ["api", "packages", _, _, _, _, _]) => match *method {
            Method::GET => Some(&stats.file_get),
            Method::HEAD => Some(&stats.file_head),
            Method::PUT => Some(&stats.file_put),
            Method::DELETE => Some(&stats.file_delete),
            _ => None,
        },
        (Side::Main, ["api", "v1", ..]) => Some(&stats.v1),
        _ => None,
    }
}

async fn handle(
    app: Arc<App>,
    side: Side,
    kill: CancellationToken,
    req: Request<Body>,
) -> Response<Metered> {
    let method = req.method().clone();
    let raw_path = req.uri().path().to_string();
    let segs: Vec<&str> = raw_path.split('/').filter(|s| !s.is_empty()).collect();
    let path = format!("/{}", segs.join("/"));
    let is_hook =
        side == Side::Main && segs.starts_with(&["_pkgfs", "test"]) && app.hooks.is_some();
    let mut meter = Meter {
        app: app.clone(),
        method: method.clone(),
        target: loggable(req.uri()),
        status: StatusCode::OK,
        start: Instant::now(),
        quiet: is_hook,
        count_bytes: false,
        truncate_at: None,
        corrupt_at: None,
    };
    // The test hooks wrap the registry: counters and injected faults
    // before it, the first-upload tracking around it.
    let action = match (&app.hooks, is_hook) {
        (Some(h), false) => observe(h, side, &segs, &path, &req, &mut meter),
        _ => None,
    };
    let req = match inject(action, req, &mut meter, &kill).await {
        Ok(req) => req,
        Err(resp) => return meter.wrap(resp),
    };
    let mut resp = dispatch(&app, side, req, &segs, &path).await;
    if !app.profile.total_count {
        // As the proxy that `--no-total-count` imitates: on every answer.
        resp.headers_mut().remove("x-total-count");
    }
    meter.wrap(resp)
}

/// Test hooks, before routing: counts the request and takes the fault
/// armed for it, if any.
fn observe(
    h: &hooks::Hooks,
    side: Side,
    segs: &[&str],
    path: &str,
    req: &Request<Body>,
    meter: &mut Meter,
) -> Option<Action> {
    let method = req.method();
    Stats::bump(&h.stats.requests, 1);
    if let Some(c) = counter(&h.stats, side, segs, method) {
        Stats::bump(c, 1);
        if method == Method::PUT {
            h.note_put(req.headers());
        }
    }
    meter.count_bytes = method == Method::GET
        && (side == Side::Direct || matches!(segs[..], ["api", "packages", _, _, _, _, _]));
    if side == Side::Direct || segs.first() == Some(&"api") {
        let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
        return h.take_fault(method, path, &decoded);
    }
    None
}

/// Applies an injected fault: an answer instead of the registry's
/// (`Err`), a delay, a connection dropped mid-request, or a body to cut or
/// corrupt as it is sent (`Ok`: go on to the registry).
async fn inject(
    action: Option<Action>,
    req: Request<Body>,
    meter: &mut Meter,
    kill: &CancellationToken,
) -> Result<Request<Body>, Response<Body>> {
    match action {
        Some(Action::Status(status, retry_after)) => {
            let mut r = respond::text(status, "injected fault");
            if let Some(secs) = retry_after {
                r.headers_mut()
                    .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
            }
            return Err(r);
        }
        Some(Action::Delay(d)) => tokio::time::sleep(d).await,
        Some(Action::Drop { after_bytes }) if req.method() != Method::GET => {
            let method = req.method().clone();
            let mut body = req.into_body();
            let mut got = 0u64;
            while got < after_bytes {
                match body.frame().await {
                    Some(Ok(f)) => got += f.data_ref().map_or(0, |d| d.len() as u64),
                    _ => break,
                }
            }
            tracing::info!(
                "{method} {} dropped by a test fault after {got} request bytes",
                meter.target
            );
            meter.quiet = true;
            kill.cancel();
            return std::future::pending().await;
        }
        Some(Action::Drop { after_bytes }) => meter.truncate_at = Some(after_bytes),
        Some(Action::Corrupt { after_bytes }) => meter.corrupt_at = Some(after_bytes),
        None => {}
    }
    Ok(req)
}

/// The registry itself: escapes checked, segments decoded, routed; a
/// first upload into a version is tracked for the test hooks.
async fn dispatch(
    app: &App,
    side: Side,
    req: Request<Body>,
    segs: &[&str],
    path: &str,
) -> Response<Body> {
    if !segs.iter().all(|s| valid_escapes(s)) {
        return respond::text(
            StatusCode::BAD_REQUEST,
            "400 Bad Request: invalid URL escape",
        );
    }
    let decoded: Option<Vec<String>> = segs
        .iter()
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|c| c.into_owned())
        })
        .collect();
    let Some(decoded) = decoded else {
        return respond::not_found();
    };
    let put_into = match (&app.hooks, side, &decoded[..]) {
        (Some(h), Side::Main, [a, p, o, _, n, v, _])
            if req.method() == Method::PUT && a == "api" && p == "packages" =>
        {
            Some(h.put_started(format!("{o}/{n}/{v}").to_lowercase()))
        }
        _ => None,
    };
    let r = route(app, side, req, segs, &decoded, path).await;
    if let Some(g) = put_into {
        g.done(r.status() == StatusCode::CREATED);
    }
    r
}

async fn route(
    app: &App,
    side: Side,
    req: Request<Body>,
    segs: &[&str],
    decoded: &[String],
    path: &str,
) -> Response<Body> {
    if side == Side::Direct {
        return direct::handle(app, req, decoded).await;
    }
    match segs {
        ["api", "packages", ..] => routes_packages::handle(app, req, &decoded[2..]).await,
        ["api", "v1", ..] => routes_v1::handle(app, req, &decoded[2..], path).await,
        ["_pkgfs", "test", ..] => match &app.hooks {
            Some(h) => hooks::handle(app, h, req, &decoded[2..]).await,
            None => respond::not_found(),
        },
        _ => respond::not_found(),
    }
}

/// What the access log and the counters need to know about a response.
struct Meter {
    app: Arc<App>,
    method: Method,
    target: String,
    status: StatusCode,
    start: Instant,
    quiet: bool,
    count_bytes: bool,
    truncate_at: Option<u64>,
    corrupt_at: Option<u64>,
}

impl Meter {
    fn wrap(mut self, resp: Response<Body>) -> Response<Metered> {
        self.status = resp.status();
        // Only file contents count, not error texts.
        self.count_bytes &= self.status.is_success();
        resp.map(|inner| Metered {
            inner,
            meter: self,
            sent: 0,
            abort: None,
        })
    }
}

/// A response body that counts, logs, and applies body faults.
pub struct Metered {
    inner: Body,
    meter: Meter,
    sent: u64,
    /// Set once a `drop` fault has sent its bytes: fail when it fires.
    abort: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for Metered {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.meter.truncate_at == Some(this.sent) && this.abort.is_none() {
            // Give hyper a moment to flush what was sent, then fail.
            this.abort = Some(Box::pin(tokio::time::sleep(Duration::from_millis(50))));
        }
        if let Some(abort) = &mut this.abort {
            ready!(abort.as_mut().poll(cx));
            return Poll::Ready(Some(Err(axum::Error::new(
                "connection dropped by a test fault",
            ))));
        }
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            other => return Poll::Ready(other),
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => return Poll::Ready(Some(Ok(frame))),
        };
        if let Some(limit) = this.meter.truncate_at {
            let room = limit.saturating_sub(this.sent);
            if data.len() as u64 > room {
                data.truncate(room as usize);
            }
        }
        if let Some(at) = this.meter.corrupt_at {
            if at >= this.sent && at < this.sent + data.len() as u64 {
                let mut bytes = BytesMut::from(&data[..]);
                bytes[(at - this.sent) as usize] ^= 0xff;
                data = bytes.freeze();
            }
        }
        this.sent += data.len() as u64;
        if this.meter.count_bytes {
            if let Some(h) = &this.meter.app.hooks {
                Stats::bump(&h.stats.bytes_sent, data.len() as u64);
            }
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.meter.truncate_at.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        let m = &self.meter;
        let ms = m.start.elapsed().as_secs_f64() * 1000.0;
        let status = m.status.as_u16();
        if m.quiet {
            tracing::debug!(
                "{} {} {status} {}B {ms:.1}ms",
                m.method,
                m.target,
                self.sent
            );
        } else {
            tracing::info!(
                "{} {} {status} {}B {ms:.1}ms",
                m.method,
                m.target,
                self.sent
            );
        }
    }
}
