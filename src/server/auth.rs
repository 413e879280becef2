//! Who is asking (PROTOCOL.md §auth) and what they may do with an owner
//! (§access). The status codes these decisions turn into differ between the
//! two API trees, so the route modules map them (§status-packages, §status-v1).

use base64::Engine;
use http::HeaderMap;

use super::config::{Account, Category, Directory, Owner, Role, Scopes, Token, Visibility};

/// The signed-in user; `token` is `None` for a password login (no scopes).
#[derive(Debug, Clone, Copy)]
pub struct Doer<'a> {
    pub account: &'a Account,
    pub token: Option<&'a Token>,
}

/// A credential was presented and is wrong: 401 at once, no anonymous
/// fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadCredential;

/// Access level to an owner's packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    None,
    Read,
    Write,
}

/// Authenticates a request from its `Authorization` header or its
/// `token`/`access_token` query parameter. `Ok(None)` is anonymous.
pub fn authenticate<'a>(
    dir: &'a Directory,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Option<Doer<'a>>, BadCredential> {
    let header = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let fields: Vec<&str> = header.split_ascii_whitespace().collect();
    if let [scheme, value] = fields[..] {
        if scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer") {
            return by_token(dir, value).map(Some);
        }
    }
    if let Some(value) = query_token(query) {
        return by_token(dir, &value).map(Some);
    }
    if let Some((scheme, encoded)) = header.split_once(' ') {
        if scheme.eq_ignore_ascii_case("basic") {
            return basic(dir, encoded.trim());
        }
    }
    Ok(None)
}

fn by_token<'a>(dir: &'a Directory, value: &str) -> Result<Doer<'a>, BadCredential> {
    let (token, account) = dir.token(value).ok_or(BadCredential)?;
    Ok(Doer {
        account,
        token: Some(token),
    })
}

fn query_token(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, v)| (k == "token" || k == "access_token") && !v.is_empty())
        .map(|(_, v)| v.into_owned())
}

/// Basic auth: the password (or the user name when the password is empty or
/// `x-oauth-basic`) is tried as a token first, then as a password. A
/// malformed header is ignored, as Gitea does.
fn basic<'a>(dir: &'a Directory, encoded: &str) -> Result<Option<Doer<'a>>, BadCredential> {
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
        return Ok(None);
    };
    let Ok(text) = String::from_utf8(raw) else {
        return Ok(None);
    };
    let Some((user, password)) = text.split_once(':') else {
        return Ok(None);
    };
    let username_is_token = password.is_empty() || password == "x-oauth-basic";
    let candidate = if username_is_token { user } else { password };
    if let Ok(doer) = by_token(dir, candidate) {
        return Ok(Some(doer));
    }
    match dir.login(user, password) {
        Some(account) => Ok(Some(Doer {
            account,
            token: None,
        })),
        None => Err(BadCredential),
    }
}

impl Doer<'_> {
    /// Whether the doer's token (if any) has the scope for this operation.
    pub fn has_scope(&self, cat: Category, write: bool) -> bool {
        self.token.is_none_or(|t| t.scopes.allows(cat, write))
    }

    /// Gitea's 403 text for a missing scope.
    pub fn scope_error(&self, cats: &[Category], write: bool) -> String {
        let required: Vec<String> = cats
            .iter()
            .map(|&c| Scopes::required_name(c, write))
            .collect();
        let have = self.token.map(|t| t.scopes.text.as_str()).unwrap_or("");
        format!(
            "token does not have at least one of required scope(s), required=[{}], token scope={have}",
            required.join(" ")
        )
    }

    /// A public-only token used on an owner that is not public.
    pub fn public_only_refused(&self, owner: Owner<'_>) -> bool {
        self.token.is_some_and(|t| t.public_only) && owner.visibility() != Visibility::Public
    }
}

/// Whether `doer` may see `owner` at all (`/api/v1/users/{name}`).
pub fn can_see(doer: Option<Doer<'_>>, owner: Owner<'_>) -> bool {
    match owner.visibility() {
        Visibility::Public => true,
        Visibility::Limited => doer.is_some(),
        Visibility::Private => doer.is_some_and(|d| {
            d.account.admin
                || match owner {
                    Owner::User(u) => u.id == d.account.id,
                    Owner::Org(o) => o.members.contains_key(&d.account.lower),
                }
        }),
    }
}

/// Access level of `doer` on `owner`'s packages (PROTOCOL.md §access).
pub fn access(doer: Option<Doer<'_>>, owner: Owner<'_>) -> Access {
    let Some(d) = doer else {
        return if owner.visibility() == Visibility::Public {
            Access::Read
        } else {
            Access::None
        };
    };
    if !d.account.may_sign_in {
        return Access::None;
    }
    if d.account.admin {
        return Access::Write;
    }
    let by_role = match owner {
        Owner::User(u) if u.id == d.account.id => return Access::Write,
        Owner::User(_) => Access::None,
        Owner::Org(o) => match o.members.get(&d.account.lower) {
            Some(Role::Read) => Access::Read,
            Some(Role::Write | Role::Owner) => Access::Write,
            None => Access::None,
        },
    };
    if by_role == Access::None && can_see(doer, owner) {
        Access::Read
    } else {
        by_role
    }
}
