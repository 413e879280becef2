//! Small response builders shared by the route modules, so that every
//! plain-text error, JSON body and 401 looks the same as Gitea's.

use axum::body::Body;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use serde::Serialize;

use crate::protocol::WWW_AUTHENTICATE;

/// A response with an empty body.
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

/// A short plain-text response (Gitea's `ctx.PlainText`).
pub fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(msg.to_string()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// 401 on `/api/packages`, asking for Basic credentials.
pub fn unauthorized(msg: &str) -> Response<Body> {
    let mut r = text(StatusCode::UNAUTHORIZED, msg);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(WWW_AUTHENTICATE),
    );
    r
}

/// 404 for a path no route knows.
pub fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "404 page not found\n")
}

/// 405 for a known path, listing the methods it has.
pub fn method_not_allowed(allow: &[&str]) -> Response<Body> {
    let mut r = empty(StatusCode::METHOD_NOT_ALLOWED);
    if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
        r.headers_mut().insert(header::ALLOW, v);
    }
    r
}

/// 500 without details (they go to the log).
pub fn internal(err: &dyn std::fmt::Display) -> Response<Body> {
    tracing::error!(error = %err, "internal error");
    text(StatusCode::INTERNAL_SERVER_ERROR, "internal server error")
}

/// A JSON body (Gitea's `ctx.JSON`).
pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut r = Response::new(Body::from(bytes));
            *r.status_mut() = status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json;charset=utf-8"),
            );
            r
        }
        Err(e) => internal(&e),
    }
}

/// `attachment; filename=…` as Go's `mime.FormatMediaType` writes it: a
/// bare token, a quoted string, or the RFC 2231 `filename*=utf-8''…` form
/// for non-ASCII names.
pub fn content_disposition(filename: &str) -> String {
    const TSPECIALS: &[u8] = b"()<>@,;:\\\"/[]?=";
    let is_token = !filename.is_empty()
        && filename
            .bytes()
            .all(|c| c > b' ' && c < 0x7f && !TSPECIALS.contains(&c));
    let needs_encoding = filename
        .chars()
        .any(|c| !(' '..='~').contains(&c) && c != '\t');
    if needs_encoding {
        let mut out = String::from("attachment; filename*=utf-8''");
        for &c in filename.as_bytes() {
            if c <= b' ' || c >= 0x7f || b"*'%".contains(&c) || TSPECIALS.contains(&c) {
                out.push_str(&format!("%{c:02X}"));
            } else {
                out.push(c as char);
            }
        }
        out
    } else if is_token {
        format!("attachment; filename={filename}")
    } else {
        let escaped = filename.replace('\\', "\\\\").replace('"', "\\\"");
        format!("attachment; filename=\"{escaped}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::content_disposition;

    #[test]
    fn disposition_like_go() {
        assert_eq!(content_disposition("f.bin"), "attachment; filename=f.bin");
        assert_eq!(
            content_disposition("a b.bin"),
            "attachment; filename=\"a b.bin\""
        );
        assert_eq!(
            content_disposition("é.bin"),
            "attachment; filename*=utf-8''%C3%A9.bin"
        );
    }
}
