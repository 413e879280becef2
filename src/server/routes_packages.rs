//! The registry protocol proper: `/api/packages/{owner}/generic/{name}/
//! {version}[/{file}]` (PROTOCOL.md §endpoints), with the check order of
//! §upload and the status codes of §status-packages (401 with
//! `WWW-Authenticate`, never 403 for missing rights, except a public-only
//! token).

use axum::body::Body;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};

use super::auth::{self, Access, Doer};
use super::config::{Category, Owner};
use super::respond;
use super::serve_file::{self, Content};
use super::store::{Deleted, Limits, Lookup, NewFile, PutOutcome};
use super::upload::{self, UploadError};
use super::App;
use crate::protocol::{validate_filename, validate_package_name, validate_version};

/// Handles a request below `/api/packages/`; `segs` are the decoded path
/// segments after it.
pub async fn handle(app: &App, req: Request<Body>, segs: &[String]) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let Ok(doer) = auth::authenticate(&app.dir, &parts.headers, parts.uri.query()) else {
        return respond::text(StatusCode::UNAUTHORIZED, "Failed to authenticate user");
    };
    let method = parts.method.clone();
    match segs {
        [owner, t, name, version, file] if t == "generic" => {
            let allowed: &[&str] = if app.profile.head {
                &["GET", "HEAD", "PUT", "DELETE"]
            } else {
                &["GET", "PUT", "DELETE"]
            };
            if !allowed.contains(&method.as_str()) {
                return respond::method_not_allowed(allowed);
            }
            let Some(owner) = app.dir.owner(owner) else {
                return respond::text(StatusCode::NOT_FOUND, "Not Found");
            };
            let write = method == Method::PUT || method == Method::DELETE;
            if let Err(r) = check_access(doer, owner, write) {
                return *r;
            }
            match method {
                Method::PUT => match doer {
                    Some(d) => put(app, &parts, body, d, owner, name, version, file).await,
                    None => respond::unauthorized("Unauthorized"),
                },
                Method::DELETE => delete_file(app, owner, name, version, file).await,
                _ => download(app, &parts, owner, name, version, file).await,
            }
        }
        [owner, t, name, version] if t == "generic" => {
            if method != Method::DELETE {
                return respond::method_not_allowed(&["DELETE"]);
            }
            let Some(owner) = app.dir.owner(owner) else {
                return respond::text(StatusCode::NOT_FOUND, "Not Found");
            };
            if let Err(r) = check_access(doer, owner, true) {
                return *r;
            }
            delete_version(app, owner, name, version).await
        }
        _ => respond::not_found(),
    }
}

/// Scope (401), public-only (403), then access level (401), as Gitea's
/// `reqPackageAccess`.
fn check_access(
    doer: Option<Doer<'_>>,
    owner: Owner<'_>,
    write: bool,
) -> Result<(), Box<Response<Body>>> {
    const NO_RIGHTS: &str = "user should have specific permission or be a site admin";
    if let Some(d) = doer {
        if !d.has_scope(Category::Package, write) {
            return Err(Box::new(respond::unauthorized(NO_RIGHTS)));
        }
        if d.public_only_refused(owner) {
            return Err(Box::new(respond::text(
                StatusCode::FORBIDDEN,
                "token scope is limited to public packages",
            )));
        }
    }
    let need = if write { Access::Write } else { Access::Read };
    if auth::access(doer, owner) < need {
        return Err(Box::new(respond::unauthorized(NO_RIGHTS)));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn put(
    app: &App,
    parts: &Parts,
    body: Body,
    doer: Doer<'_>,
    owner: Owner<'_>,
    name: &str,
    version: &str,
    file: &str,
) -> Response<Body> {
    let valid = validate_package_name(name)
        .and_then(|()| validate_filename(file))
        .and_then(|()| validate_version(version));
    if let Err(e) = valid {
        return respond::text(StatusCode::BAD_REQUEST, &e.to_string());
    }
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let uploaded = match upload::receive(body, content_type, &app.store.tmp_dir()).await {
        Ok(u) => u,
        Err(UploadError::Form(msg)) if app.profile.forgejo => {
            return respond::text(StatusCode::BAD_REQUEST, &msg)
        }
        Err(e) => return respond::internal(&e),
    };
    let p = &app.profile;
    let limits = if doer.account.admin {
        Limits {
            legacy_duplicates: p.legacy_duplicates,
            ..Limits::default()
        }
    } else {
        Limits {
            legacy_duplicates: p.legacy_duplicates,
            max_file_size: p.max_file_size,
            max_owner_size: p.max_owner_size,
            max_owner_count: p.max_owner_count,
        }
    };
    let (owner_id, creator_id) = (owner.id(), doer.account.id);
    let (name, version, file) = (name.to_string(), version.to_string(), file.to_string());
    let outcome = app
        .db(move |s| {
            let new = NewFile {
                owner_id,
                creator_id,
                name: &name,
                version: &version,
                filename: &file,
            };
            s.put_file(&new, uploaded, &limits)
        })
        .await;
    match outcome {
        Ok(PutOutcome::Created) => respond::empty(StatusCode::CREATED),
        Ok(PutOutcome::FileExists) => {
            respond::text(StatusCode::CONFLICT, "package file already exists")
        }
        Ok(PutOutcome::VersionExists) => {
            respond::text(StatusCode::BAD_REQUEST, "package version already exists")
        }
        Ok(PutOutcome::Quota(msg)) => respond::text(StatusCode::FORBIDDEN, msg),
        Err(e) => respond::internal(&e),
    }
}

/// The headers Gitea sets on a download before `http.ServeContent`
/// (PROTOCOL.md §download).
pub fn download_headers(filename: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    let pairs = [
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        (
            header::CONTENT_DISPOSITION,
            respond::content_disposition(filename),
        ),
        (
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            "Content-Disposition".to_string(),
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; sandbox".to_string(),
        ),
        (
            header::CACHE_CONTROL,
            "max-age=0, private, must-revalidate".to_string(),
        ),
    ];
    for (k, v) in pairs {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    h
}

async fn download(
    app: &App,
    parts: &Parts,
    owner: Owner<'_>,
    name: &str,
    version: &str,
    file: &str,
) -> Response<Body> {
    let is_get = parts.method == Method::GET;
    let owner_id = owner.id();
    let (name, version, file) = (name.to_string(), version.to_string(), file.to_string());
    let found = app
        .db(move |s| {
            let row = match s.find_file(owner_id, &name, &version, &file)? {
                Lookup::Found(row) => row,
                Lookup::NoVersion => return Ok(Err("package does not exist")),
                Lookup::NoFile => return Ok(Err("package file does not exist")),
            };
            let opened = match std::fs::File::open(s.blob_path(&row.blob.sha256)) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(Err("package file does not exist"))
                }
                Err(e) => return Err(e.into()),
            };
            if is_get {
                s.count_download(row.version_id)?;
            }
            Ok(Ok((row, opened)))
        })
        .await;
    let (row, opened) = match found {
        Ok(Ok(found)) => found,
        Ok(Err(msg)) => return respond::text(StatusCode::NOT_FOUND, msg),
        Err(e) => return respond::internal(&e),
    };
    let mut headers = download_headers(&row.name);
    if !is_get && app.profile.forgejo {
        // Forgejo's own HEAD handler: no Content-Length, never a redirect.
        headers.remove(header::ACCEPT_RANGES);
        let modified =
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(row.created_unix.max(0) as u64);
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(modified)) {
            headers.insert(header::LAST_MODIFIED, v);
        }
        let mut r = respond::empty(StatusCode::OK);
        *r.headers_mut() = headers;
        return r;
    }
    if let Some(signer) = &app.direct {
        let disposition = respond::content_disposition(&row.name);
        let location = signer.sign(
            &parts.method,
            &row.blob.sha256,
            row.created_unix,
            &disposition,
        );
        let mut r = respond::empty(StatusCode::SEE_OTHER);
        if let Ok(v) = HeaderValue::from_str(&location) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return r;
    }
    let mut req_headers = parts.headers.clone();
    if !app.profile.range {
        req_headers.remove(header::RANGE);
    }
    serve_file::serve(
        &parts.method,
        &req_headers,
        headers,
        Content {
            file: opened,
            size: row.blob.size,
            modified_unix: row.created_unix,
        },
    )
}

async fn delete_file(
    app: &App,
    owner: Owner<'_>,
    name: &str,
    version: &str,
    file: &str,
) -> Response<Body> {
    let owner_id = owner.id();
    let (name, version, file) = (name.to_string(), version.to_string(), file.to_string());
    match app
        .db(move |s| s.delete_file(owner_id, &name, &version, &file))
        .await
    {
        Ok(Deleted::Yes) => respond::empty(StatusCode::NO_CONTENT),
        Ok(Deleted::NoVersion) => respond::text(StatusCode::NOT_FOUND, "package does not exist"),
        Ok(Deleted::NoFile) => respond::text(StatusCode::NOT_FOUND, "package file does not exist"),
        Err(e) => respond::internal(&e),
    }
}

async fn delete_version(app: &App, owner: Owner<'_>, name: &str, version: &str) -> Response<Body> {
    let owner_id = owner.id();
    let (name, version) = (name.to_string(), version.to_string());
    match app
        .db(move |s| s.delete_version(owner_id, "generic", &name, &version))
        .await
    {
        Ok(true) if app.profile.legacy_duplicates => respond::empty(StatusCode::OK),
        Ok(true) => respond::empty(StatusCode::NO_CONTENT),
        Ok(false) => respond::text(StatusCode::NOT_FOUND, "package does not exist"),
        Err(e) => respond::internal(&e),
    }
}
