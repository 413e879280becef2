//! The one table that turns HTTP outcomes into typed registry errors
//! (PROTOCOL.md §status-packages, §upload, §errno). The filesystem maps these to errno
//! values in `fs::error`; nothing else looks at status codes.

use reqwest::StatusCode;

/// What went wrong talking to the registry. Messages never contain the token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Refused locally (invalid name); no request was sent.
    #[error("invalid name: {0}")]
    Invalid(String),
    /// 404: owner, package, version or file does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// 401: no or bad credentials, or no rights on /api/packages.
    #[error("authentication required or rejected: {0}")]
    Unauthorized(String),
    /// 403 that is not a quota: no rights (v1) or a token scope problem.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 403 with one of Gitea's quota messages.
    #[error("quota exceeded: {0}")]
    Quota(String),
    /// 409: the file already exists.
    #[error("already exists: {0}")]
    Conflict(String),
    /// 400 from the server (after local validation passed).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 413: request body too large (Forgejo quota or a proxy limit).
    #[error("too large: {0}")]
    TooLarge(String),
    /// 416: the range starts at or past the end of the file.
    #[error("range not satisfiable")]
    RangeNotSatisfiable,
    /// 405: the server does not have this endpoint or method.
    #[error("method not allowed: {0}")]
    NotSupported(String),
    /// 5xx, 429 or any other unexpected status.
    #[error("server error {status}: {message}")]
    Server { status: u16, message: String },
    /// Connection refused, reset, DNS, TLS, body cut off.
    #[error("network error: {0}")]
    Network(String),
    /// No answer within the configured timeout.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The server's TLS certificate is not trusted: retrying cannot help.
    #[error("TLS certificate not trusted: {0}")]
    Tls(String),
    /// The answer breaks the protocol (not JSON, too large, endless pages,
    /// a body that does not match its headers): retrying cannot help.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// Downloaded bytes do not match the registry's sha256.
    #[error("checksum mismatch: {0}")]
    Corrupt(String),
    /// Local I/O while streaming to or from disk.
    #[error("local I/O error: {0}")]
    Io(String),
}

/// Gitea's three quota texts for 403 on PUT (PROTOCOL.md §quotas).
const QUOTA_MARKERS: [&str; 3] = [
    "maximum allowed package type size exceeded",
    "maximum allowed package storage quota exceeded",
    "maximum allowed package count exceeded",
];

impl Error {
    /// Classifies a non-success HTTP status with the first bytes of the body.
    pub fn from_status(status: StatusCode, context: &str, body: &str) -> Error {
        let message = if body.trim().is_empty() {
            context.to_string()
        } else {
            format!("{context}: {}", body.trim())
        };
        match status.as_u16() {
            400 => Error::BadRequest(message),
            401 => Error::Unauthorized(message),
            403 if QUOTA_MARKERS.iter().any(|m| body.contains(m)) => Error::Quota(message),
            403 => Error::Forbidden(message),
            404 | 410 => Error::NotFound(message),
            405 => Error::NotSupported(message),
            409 => Error::Conflict(message),
            413 => Error::TooLarge(message),
            416 => Error::RangeNotSatisfiable,
            s => Error::Server { status: s, message },
        }
    }

    /// Whether repeating the same idempotent request may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Network(_) | Error::Timeout(_) => true,
            Error::Server { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// Classifies a transport error. reqwest errors carry the URL; strip it
    /// to the path so no query string (and nothing secret) is ever printed.
    pub fn from_reqwest(e: &reqwest::Error, context: &str) -> Error {
        let detail = e.without_url_ref();
        if e.is_timeout() {
            Error::Timeout(format!("{context}: {detail}"))
        } else if detail.contains("invalid peer certificate") {
            Error::Tls(format!("{context}: {detail}"))
        } else {
            Error::Network(format!("{context}: {detail}"))
        }
    }
}

/// `reqwest::Error` without the URL (Display of reqwest includes it).
trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        use std::error::Error as _;
        let mut s = String::new();
        let mut cur: Option<&dyn std::error::Error> = self.source();
        if self.is_timeout() {
            s.push_str("operation timed out");
        } else if self.is_connect() {
            s.push_str("cannot connect");
        } else if self.is_body() || self.is_decode() {
            s.push_str("response body interrupted");
        } else {
            s.push_str("request failed");
        }
        while let Some(e) = cur {
            s.push_str(": ");
            s.push_str(&e.to_string());
            cur = e.source();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table() {
        let c = |s: u16, b: &str| Error::from_status(StatusCode::from_u16(s).unwrap(), "x", b);
        assert!(matches!(c(400, ""), Error::BadRequest(_)));
        assert!(matches!(c(401, ""), Error::Unauthorized(_)));
        assert!(matches!(
            c(403, "maximum allowed package storage quota exceeded"),
            Error::Quota(_)
        ));
        assert!(matches!(c(403, "nope"), Error::Forbidden(_)));
        assert!(matches!(c(404, ""), Error::NotFound(_)));
        assert!(matches!(c(409, ""), Error::Conflict(_)));
        assert!(matches!(c(413, ""), Error::TooLarge(_)));
        assert!(matches!(c(416, ""), Error::RangeNotSatisfiable));
        assert!(c(500, "").is_transient());
        assert!(c(429, "").is_transient());
        assert!(!c(404, "").is_transient());
    }
}
