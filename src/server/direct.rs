//! `--serve-direct`: Gitea's SERVE_DIRECT mode (PROTOCOL.md §direct). A file
//! GET/HEAD answers 303 to a presigned URL on a second loopback listener,
//! which plays the object store: the URL carries an HMAC-SHA256 signature
//! (random per-process key) over method, blob, expiry (5 minutes), upload
//! time and `response-content-disposition`. Like S3 it refuses a request
//! that also carries `Authorization` (400) and a bad or expired signature
//! (403), and honours Range.

use std::time::Duration;

use axum::body::Body;
use hmac::{Hmac, Mac};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use sha2::Sha256;
use url::Url;

use super::paging::Query;
use super::respond;
use super::routes_packages::download_headers;
use super::serve_file::{self, Content};
use super::App;

const VALIDITY: Duration = Duration::from_secs(300);

/// Signs and verifies presigned blob URLs.
pub struct Signer {
    base: Url,
    key: [u8; 32],
}

fn canonical(
    method: &str,
    sha256: &str,
    expires: &str,
    modified: &str,
    disposition: &str,
) -> String {
    format!("{method}\n{sha256}\n{expires}\n{modified}\n{disposition}")
}

impl Signer {
    pub fn new(base: Url) -> Signer {
        Signer {
            base,
            key: rand::random(),
        }
    }

    fn mac(&self, text: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(text.as_bytes());
        mac
    }

    /// A presigned URL for `method` (GET or HEAD) on a blob.
    pub fn sign(
        &self,
        method: &Method,
        sha256: &str,
        modified_unix: i64,
        disposition: &str,
    ) -> String {
        let expires = (chrono::Utc::now().timestamp() + VALIDITY.as_secs() as i64).to_string();
        let modified = modified_unix.to_string();
        let sig = hex::encode(
            self.mac(&canonical(
                method.as_str(),
                sha256,
                &expires,
                &modified,
                disposition,
            ))
            .finalize()
            .into_bytes(),
        );
        let mut url = self.base.clone();
        url.set_path(&format!("blob/{sha256}"));
        url.query_pairs_mut()
            .append_pair("X-Pkgfs-Method", method.as_str())
            .append_pair("X-Pkgfs-Expires", &expires)
            .append_pair("X-Pkgfs-Modified", &modified)
            .append_pair("response-content-disposition", disposition)
            .append_pair("X-Pkgfs-Signature", &sig);
        url.into()
    }

    /// Checks a request's signature; `Err` is the 403 message.
    fn verify(&self, method: &Method, sha256: &str, q: &Query) -> Result<i64, &'static str> {
        let expires = q.get("X-Pkgfs-Expires");
        let modified = q.get("X-Pkgfs-Modified");
        let sig = hex::decode(q.get("X-Pkgfs-Signature")).map_err(|_| "SignatureDoesNotMatch")?;
        let text = canonical(
            method.as_str(),
            sha256,
            expires,
            modified,
            q.get("response-content-disposition"),
        );
        self.mac(&text)
            .verify_slice(&sig)
            .map_err(|_| "SignatureDoesNotMatch")?;
        let expires: i64 = expires.parse().map_err(|_| "SignatureDoesNotMatch")?;
        if chrono::Utc::now().timestamp() > expires {
            return Err("AccessDenied: Request has expired");
        }
        modified.parse().map_err(|_| "SignatureDoesNotMatch")
    }
}

/// Handles a request on the direct listener; `segs` are the path segments.
pub async fn handle(app: &App, req: Request<Body>, segs: &[String]) -> Response<Body> {
    let Some(signer) = &app.direct else {
        return respond::not_found();
    };
    let (parts, _body) = req.into_parts();
    if parts.headers.contains_key(header::AUTHORIZATION) {
        return respond::text(
            StatusCode::BAD_REQUEST,
            "InvalidArgument: Only one auth mechanism allowed; only the signature query \
             parameters or the Authorization header should be specified",
        );
    }
    let [blob, sha256] = segs else {
        return respond::text(StatusCode::NOT_FOUND, "NoSuchKey");
    };
    if blob != "blob" || sha256.len() != 64 || !sha256.bytes().all(|c| c.is_ascii_hexdigit()) {
        return respond::text(StatusCode::NOT_FOUND, "NoSuchKey");
    }
    if parts.method != Method::GET && parts.method != Method::HEAD {
        return respond::method_not_allowed(&["GET", "HEAD"]);
    }
    let q = Query::parse(parts.uri.query());
    let modified = match signer.verify(&parts.method, sha256, &q) {
        Ok(m) => m,
        Err(msg) => return respond::text(StatusCode::FORBIDDEN, msg),
    };
    let sha = sha256.clone();
    let opened = app
        .db(move |s| {
            if !s.has_blob(&sha)? {
                return Ok(None);
            }
            let path = s.blob_path(&sha);
            match std::fs::File::open(path) {
                Ok(f) => {
                    let size = f.metadata()?.len();
                    Ok(Some((f, size)))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
        .await;
    let (file, size) = match opened {
        Ok(Some(found)) => found,
        Ok(None) => return respond::text(StatusCode::NOT_FOUND, "NoSuchKey"),
        Err(e) => return respond::internal(&e),
    };
    let mut headers = download_headers("");
    headers.remove(header::ACCESS_CONTROL_EXPOSE_HEADERS);
    headers.remove(header::CONTENT_SECURITY_POLICY);
    match HeaderValue::from_str(q.get("response-content-disposition")) {
        Ok(v) if !v.is_empty() => {
            headers.insert(header::CONTENT_DISPOSITION, v);
        }
        _ => {
            headers.remove(header::CONTENT_DISPOSITION);
        }
    }
    serve_file::serve(
        &parts.method,
        &parts.headers,
        headers,
        Content {
            file,
            size,
            modified_unix: modified,
        },
    )
}
