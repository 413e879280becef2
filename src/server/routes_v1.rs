//! `/api/v1`: listing and management of packages, and the user and
//! organisation lookups a client needs to fill its root directory
//! (PROTOCOL.md §listings and §owners, JSON of §json, statuses of §status-v1:
//! 401 without a token, 403 without rights or scope, JSON error bodies).

use axum::body::Body;
use http::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::auth::{self, Access, Doer};
use super::config::{Category, Owner};
use super::paging::{self, PageReq, Query};
use super::respond;
use super::store::{FileRow, Page, VersionRow};
use super::{App, SizeKey};
use crate::protocol::{Organization, Package, PackageFile, User};

/// The context of one v1 request.
struct Ctx<'a> {
    app: &'a App,
    doer: Option<Doer<'a>>,
    query: Query,
}

type Resp = Response<Body>;
/// A refusal: the response to send instead (boxed: it is the rare path).
type Refusal = Box<Resp>;

/// Handles a request below `/api/v1/`; `segs` are the decoded segments
/// after it, `path` the normalised request path (for `Link`).
pub async fn handle(app: &App, req: Request<Body>, segs: &[String], path: &str) -> Resp {
    let (parts, _body) = req.into_parts();
    let doer = match auth::authenticate(&app.dir, &parts.headers, parts.uri.query()) {
        Ok(d) => d,
        Err(_) => {
            return error(
                app,
                StatusCode::UNAUTHORIZED,
                "invalid username, password or token",
            )
        }
    };
    let ctx = Ctx {
        app,
        doer,
        query: Query::parse(parts.uri.query()),
    };
    let m = &parts.method;
    let only = |allowed: &[&str]| allowed.contains(&m.as_str());
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let versions_api = app.profile.versions_endpoint;
    match s[..] {
        ["packages", owner] if only(&["GET"]) => list_packages(&ctx, owner, path).await,
        ["packages", owner, t, name] if only(&["GET", "DELETE"]) => {
            if *m == Method::DELETE {
                delete_package(&ctx, owner, t, name).await
            } else if versions_api {
                list_versions(&ctx, owner, t, name, path).await
            } else {
                not_found(app)
            }
        }
        ["packages", owner, t, name, "-", "latest"] if only(&["GET"]) => {
            if versions_api {
                latest(&ctx, owner, t, name).await
            } else {
                not_found(app)
            }
        }
        ["packages", owner, t, name, version] if only(&["GET", "DELETE"]) => {
            if *m == Method::DELETE {
                delete_version(&ctx, owner, t, name, version).await
            } else {
                get_version(&ctx, owner, t, name, version).await
            }
        }
        ["packages", owner, t, name, version, "files"] if only(&["GET"]) => {
            list_files(&ctx, owner, t, name, version).await
        }
        ["user"] if only(&["GET"]) => current_user(&ctx),
        ["user", "orgs"] if only(&["GET"]) => my_orgs(&ctx, path),
        ["users", name] if only(&["GET"]) => user(&ctx, name),
        ["users", name, "orgs"] if only(&["GET"]) => user_orgs(&ctx, name, path),
        ["orgs", name] if only(&["GET"]) => org(&ctx, name),
        ["packages", _]
        | ["packages", _, _, _]
        | ["packages", _, _, _, "-", "latest"]
        | ["packages", _, _, _, _]
        | ["packages", _, _, _, _, "files"]
        | ["user"]
        | ["user", "orgs"]
        | ["users", _]
        | ["users", _, "orgs"]
        | ["orgs", _] => respond::method_not_allowed(&["GET"]),
        _ => not_found(app),
    }
}

fn swagger(app: &App) -> String {
    format!("{}api/swagger", app.public_url)
}

fn error(app: &App, status: StatusCode, msg: &str) -> Resp {
    respond::json(status, &json!({ "message": msg, "url": swagger(app) }))
}

fn not_found(app: &App) -> Resp {
    respond::json(
        StatusCode::NOT_FOUND,
        &json!({
            "errors": null,
            "message": "The target couldn't be found.",
            "url": swagger(app),
        }),
    )
}

fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Go's `url.PathEscape`.
fn path_escape(s: &str) -> String {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    const KEEP: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'$')
        .remove(b'&')
        .remove(b'+')
        .remove(b':')
        .remove(b'=')
        .remove(b'@');
    utf8_percent_encode(s, KEEP).to_string()
}

impl Ctx<'_> {
    /// 401 unless signed in (Gitea's `reqToken`); anonymous reads pass in
    /// `--v1-anonymous-read` mode.
    fn require_token(&self, anonymous_ok: bool) -> Result<(), Refusal> {
        if self.doer.is_some() || anonymous_ok {
            Ok(())
        } else {
            Err(Box::new(error(
                self.app,
                StatusCode::UNAUTHORIZED,
                "token is required",
            )))
        }
    }

    fn require_scopes(&self, cats: &[Category], write: bool) -> Result<(), Refusal> {
        match self.doer {
            Some(d) if !cats.iter().all(|&c| d.has_scope(c, write)) => Err(Box::new(error(
                self.app,
                StatusCode::FORBIDDEN,
                &d.scope_error(cats, write),
            ))),
            _ => Ok(()),
        }
    }

    /// The checks of the package routes: token, scope, owner, public-only,
    /// access level.
    fn package_owner(&self, owner: &str, write: bool) -> Result<Owner<'_>, Refusal> {
        let anonymous_ok = self.app.profile.v1_anonymous_read && !write;
        self.require_token(anonymous_ok)?;
        self.require_scopes(&[Category::Package], write)?;
        let Some(owner) = self.app.dir.owner(owner) else {
            return Err(Box::new(not_found(self.app)));
        };
        if self.doer.is_some_and(|d| d.public_only_refused(owner)) {
            return Err(Box::new(error(
                self.app,
                StatusCode::FORBIDDEN,
                "token scope is limited to public packages",
            )));
        }
        let need = if write { Access::Write } else { Access::Read };
        if auth::access(self.doer, owner) < need {
            return Err(Box::new(error(
                self.app,
                StatusCode::FORBIDDEN,
                "user should have specific permission or be a site admin",
            )));
        }
        Ok(owner)
    }

    fn user_json(&self, owner: Owner<'_>) -> User {
        let base = &self.app.public_url;
        let (is_admin, email) = match owner {
            Owner::User(u) => (u.admin, u.email.clone()),
            Owner::Org(_) => (false, String::new()),
        };
        let created = rfc3339(owner.created_unix());
        User {
            id: owner.id(),
            login: owner.name().to_string(),
            email,
            avatar_url: format!(
                "{base}avatars/{}",
                path_escape(&owner.name().to_lowercase())
            ),
            html_url: format!("{base}{}", path_escape(owner.name())),
            is_admin,
            last_login: created.clone(),
            created,
            active: true,
            visibility: owner.visibility().as_str().to_string(),
            ..User::default()
        }
    }

    fn org_json(&self, owner: Owner<'_>) -> Organization {
        let u = self.user_json(owner);
        Organization {
            id: u.id,
            name: u.login.clone(),
            username: u.login,
            avatar_url: u.avatar_url,
            visibility: u.visibility,
            ..Organization::default()
        }
    }

    fn package_json(&self, owner: Owner<'_>, v: &VersionRow) -> Package {
        let creator = match self.app.dir.user_by_id(v.creator_id) {
            Some(u) => self.user_json(Owner::User(u)),
            None => User {
                id: -1,
                login: "Ghost".into(),
                ..User::default()
            },
        };
        Package {
            id: v.id,
            owner: self.user_json(owner),
            repository: None,
            creator,
            package_type: v.package_type.clone(),
            name: v.name.clone(),
            version: v.version.clone(),
            html_url: format!(
                "{}{}/-/packages/{}/{}/{}",
                self.app.public_url,
                path_escape(owner.name()),
                path_escape(&v.package_type),
                path_escape(&v.name.to_lowercase()),
                path_escape(&v.version.to_lowercase())
            ),
            created_at: rfc3339(v.created_unix),
        }
    }

    fn page_response(
        &self,
        owner: Owner<'_>,
        page: Page<VersionRow>,
        req: PageReq,
        path: &str,
    ) -> Resp {
        let items: Vec<Package> = page
            .items
            .iter()
            .map(|v| self.package_json(owner, v))
            .collect();
        let mut r = respond::json(StatusCode::OK, &items);
        let base = self.app.public_url.as_str();
        r.headers_mut()
            .extend(paging::headers(base, path, &self.query, req, page.total));
        r
    }
}

async fn list_packages(ctx: &Ctx<'_>, owner: &str, path: &str) -> Resp {
    let owner = match ctx.package_owner(owner, false) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let req = PageReq::from_query(&ctx.query);
    let ptype = Some(ctx.query.get("type").to_string()).filter(|t| !t.is_empty());
    let q = ctx.query.get("q").to_string();
    let owner_id = owner.id();
    let page = ctx
        .app
        .db(move |s| s.list_owner_versions(owner_id, ptype.as_deref(), &q, req.offset(), req.limit))
        .await;
    match page {
        Ok(page) => ctx.page_response(owner, page, req, path),
        Err(e) => respond::internal(&e),
    }
}

async fn list_versions(ctx: &Ctx<'_>, owner: &str, t: &str, name: &str, path: &str) -> Resp {
    let owner = match ctx.package_owner(owner, false) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let req = PageReq::from_query(&ctx.query);
    let (owner_id, t, name) = (owner.id(), t.to_string(), name.to_string());
    let page = ctx
        .app
        .db(move |s| {
            let Some(pid) = s.package_id(owner_id, &t, &name)? else {
                return Ok(None);
            };
            s.list_package_versions(pid, req.offset(), req.limit)
                .map(Some)
        })
        .await;
    match page {
        Ok(Some(page)) => ctx.page_response(owner, page, req, path),
        Ok(None) => not_found(ctx.app),
        Err(e) => respond::internal(&e),
    }
}

async fn latest(ctx: &Ctx<'_>, owner: &str, t: &str, name: &str) -> Resp {
    let owner = match ctx.package_owner(owner, false) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let (owner_id, t, name) = (owner.id(), t.to_string(), name.to_string());
    let found = ctx
        .app
        .db(move |s| match s.package_id(owner_id, &t, &name)? {
            Some(pid) => s.latest_version(pid),
            None => Ok(None),
        })
        .await;
    match found {
        Ok(Some(v)) => respond::json(StatusCode::OK, &ctx.package_json(owner, &v)),
        Ok(None) => not_found(ctx.app),
        Err(e) => respond::internal(&e),
    }
}

async fn get_version(ctx: &Ctx<'_>, owner: &str, t: &str, name: &str, version: &str) -> Resp {
    let owner = match ctx.package_owner(owner, false) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let (owner_id, t, name, version) = (
        owner.id(),
        t.to_string(),
        name.to_string(),
        version.to_string(),
    );
    match ctx
        .app
        .db(move |s| s.get_version(owner_id, &t, &name, &version))
        .await
    {
        Ok(Some(v)) => respond::json(StatusCode::OK, &ctx.package_json(owner, &v)),
        Ok(None) => not_found(ctx.app),
        Err(e) => respond::internal(&e),
    }
}

async fn list_files(ctx: &Ctx<'_>, owner: &str, t: &str, name: &str, version: &str) -> Resp {
    let owner = match ctx.package_owner(owner, false) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let (owner_id, t, name, version) = (
        owner.id(),
        t.to_string(),
        name.to_string(),
        version.to_string(),
    );
    let files = ctx
        .app
        .db(
            move |s| match s.get_version(owner_id, &t, &name, &version)? {
                Some(v) => s.list_files(v.id).map(Some),
                None => Ok(None),
            },
        )
        .await;
    let files = match files {
        Ok(Some(f)) => f,
        Ok(None) => return not_found(ctx.app),
        Err(e) => return respond::internal(&e),
    };
    let list: Vec<PackageFile> = files.iter().map(file_json).collect();
    match ctx.app.profile.size_key {
        SizeKey::Lower => respond::json(StatusCode::OK, &list),
        SizeKey::Upper => {
            let renamed: Vec<serde_json::Value> = list
                .iter()
                .map(|f| {
                    json!({
                        "id": f.id, "Size": f.size, "name": f.name, "md5": f.md5,
                        "sha1": f.sha1, "sha256": f.sha256, "sha512": f.sha512,
                    })
                })
                .collect();
            respond::json(StatusCode::OK, &renamed)
        }
    }
}

fn file_json(f: &FileRow) -> PackageFile {
    PackageFile {
        id: f.id,
        size: Some(f.blob.size as i64),
        name: f.name.clone(),
        md5: f.blob.md5.clone(),
        sha1: f.blob.sha1.clone(),
        sha256: f.blob.sha256.clone(),
        sha512: f.blob.sha512.clone(),
    }
}

async fn delete_version(ctx: &Ctx<'_>, owner: &str, t: &str, name: &str, version: &str) -> Resp {
    let owner = match ctx.package_owner(owner, true) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let (owner_id, t, name, version) = (
        owner.id(),
        t.to_string(),
        name.to_string(),
        version.to_string(),
    );
    match ctx
        .app
        .db(move |s| s.delete_version(owner_id, &t, &name, &version))
        .await
    {
        Ok(true) => respond::empty(StatusCode::NO_CONTENT),
        Ok(false) => not_found(ctx.app),
        Err(e) => respond::internal(&e),
    }
}

async fn delete_package(ctx: &Ctx<'_>, owner: &str, t: &str, name: &str) -> Resp {
    let owner = match ctx.package_owner(owner, true) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let (owner_id, t, name) = (owner.id(), t.to_string(), name.to_string());
    match ctx
        .app
        .db(move |s| s.delete_package(owner_id, &t, &name))
        .await
    {
        Ok(true) => respond::empty(StatusCode::NO_CONTENT),
        Ok(false) => not_found(ctx.app),
        Err(e) => respond::internal(&e),
    }
}

fn current_user(ctx: &Ctx<'_>) -> Resp {
    let check = ctx
        .require_token(false)
        .and_then(|()| ctx.require_scopes(&[Category::User], false));
    match (check, ctx.doer) {
        (Ok(()), Some(d)) => respond::json(StatusCode::OK, &ctx.user_json(Owner::User(d.account))),
        (Err(r), _) => *r,
        (Ok(()), None) => error(ctx.app, StatusCode::UNAUTHORIZED, "token is required"),
    }
}

fn orgs_page(ctx: &Ctx<'_>, orgs: Vec<Owner<'_>>, path: &str) -> Resp {
    let req = PageReq::from_query(&ctx.query);
    let total = orgs.len() as u64;
    let items: Vec<Organization> = orgs
        .into_iter()
        .skip(req.offset() as usize)
        .take(req.limit as usize)
        .map(|o| ctx.org_json(o))
        .collect();
    let mut r = respond::json(StatusCode::OK, &items);
    r.headers_mut().extend(paging::headers(
        ctx.app.public_url.as_str(),
        path,
        &ctx.query,
        req,
        total,
    ));
    r
}

fn my_orgs(ctx: &Ctx<'_>, path: &str) -> Resp {
    if let Err(r) = ctx
        .require_token(false)
        .and_then(|()| ctx.require_scopes(&[Category::User, Category::Organization], false))
    {
        return *r;
    }
    let Some(d) = ctx.doer else {
        return error(ctx.app, StatusCode::UNAUTHORIZED, "token is required");
    };
    let orgs = ctx
        .app
        .dir
        .orgs_of(&d.account.lower)
        .map(Owner::Org)
        .filter(|&o| !d.public_only_refused(o))
        .collect();
    orgs_page(ctx, orgs, path)
}

fn user(ctx: &Ctx<'_>, name: &str) -> Resp {
    if let Err(r) = ctx.require_scopes(&[Category::User], false) {
        return *r;
    }
    match ctx.app.dir.owner(name) {
        Some(o) if auth::can_see(ctx.doer, o) => respond::json(StatusCode::OK, &ctx.user_json(o)),
        _ => not_found(ctx.app),
    }
}

fn user_orgs(ctx: &Ctx<'_>, name: &str, path: &str) -> Resp {
    if let Err(r) = ctx
        .require_token(false)
        .and_then(|()| ctx.require_scopes(&[Category::User, Category::Organization], false))
    {
        return *r;
    }
    let Some(Owner::User(u)) = ctx
        .app
        .dir
        .owner(name)
        .filter(|&o| auth::can_see(ctx.doer, o))
    else {
        return not_found(ctx.app);
    };
    let orgs = ctx
        .app
        .dir
        .orgs_of(&u.lower)
        .map(Owner::Org)
        .filter(|&o| auth::can_see(ctx.doer, o))
        .filter(|&o| !ctx.doer.is_some_and(|d| d.public_only_refused(o)))
        .collect();
    orgs_page(ctx, orgs, path)
}

fn org(ctx: &Ctx<'_>, name: &str) -> Resp {
    if let Err(r) = ctx.require_scopes(&[Category::Organization], false) {
        return *r;
    }
    match ctx.app.dir.owner(name) {
        Some(o @ Owner::Org(_)) if auth::can_see(ctx.doer, o) => {
            respond::json(StatusCode::OK, &ctx.org_json(o))
        }
        _ => not_found(ctx.app),
    }
}
