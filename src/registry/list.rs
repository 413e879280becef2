//! Listings through `/api/v1` (PROTOCOL.md §listings, §pagination): owners,
//! packages, versions and files, following every page. Once the first page
//! has told `X-Total-Count`, the remaining pages are fetched concurrently.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use futures_util::{stream, StreamExt, TryStreamExt};
use reqwest::header::HeaderMap;
use serde::de::DeserializeOwned;
use url::Url;

use reqwest::Method;

use super::{describe, Client, Error, Result};
use crate::protocol::{paths, Organization, PackageFile, User, MAX_PAGE_LIMIT};

/// How many pages are fetched at once after the first.
const PAGE_CONCURRENCY: usize = 4;
/// Bounds of one listing: 2,000 pages of 50 is far beyond any real owner,
/// and keeps a registry that never stops paging from holding a syscall
/// (the timeout bounds it too) or the daemon's memory.
const MAX_PAGES: u32 = 2_000;
const MAX_ITEMS: usize = 100_000;

/// States of `Client::versions_endpoint` (Gitea ≥ 1.24 has the endpoint).
const UNKNOWN: u8 = 0;
const PRESENT: u8 = 1;
const ABSENT: u8 = 2;

impl Client {
    /// `GET /api/v1/user`: the authenticated user.
    pub async fn current_user(&self) -> Result<User> {
        Ok(self.get_json(&paths::v1_user_url(&self.base)).await?.0)
    }

    /// `GET /api/v1/user/orgs`, all pages.
    pub async fn user_orgs(&self) -> Result<Vec<Organization>> {
        self.all_pages(paths::v1_user_orgs_url(&self.base), &[])
            .await
    }

    /// Whether an owner (user or organisation) exists and is visible:
    /// `GET /api/v1/users/{name}`.
    pub async fn owner_exists(&self, name: &str) -> Result<bool> {
        match self
            .get_json::<User>(&paths::v1_users_url(&self.base, name))
            .await
        {
            Ok(_) => Ok(true),
            Err(Error::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every generic package version of an owner (one entry per version),
    /// de-duplicated by version id.
    pub async fn list_owner_packages(&self, owner: &str) -> Result<Vec<PackageVersion>> {
        let url = paths::v1_packages_url(&self.base, owner);
        self.all_pages(url, &[("type", "generic")]).await
    }

    /// Every version of one package: the versions endpoint where the server
    /// has it, else the owner listing filtered with `q=` and an exact
    /// (case-insensitive) name match. `NotFound` when the package has no
    /// version.
    pub async fn list_versions(&self, owner: &str, name: &str) -> Result<Vec<PackageVersion>> {
        if self.versions_endpoint.load(Ordering::Relaxed) != ABSENT {
            let url = paths::v1_versions_url(&self.base, owner, name);
            match self.all_pages::<PackageVersion>(url, &[]).await {
                Ok(v) => {
                    self.versions_endpoint.store(PRESENT, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(Error::NotFound(_))
                    if self.versions_endpoint.load(Ordering::Relaxed) == PRESENT =>
                {
                    return Err(Error::NotFound(format!("package {owner}/{name}")));
                }
                Err(Error::NotFound(_) | Error::NotSupported(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let url = paths::v1_packages_url(&self.base, owner);
        let all: Vec<PackageVersion> = self
            .all_pages(url, &[("type", "generic"), ("q", name)])
            .await?;
        let lower = name.to_lowercase();
        let found: Vec<PackageVersion> = all
            .into_iter()
            .filter(|p| p.name.to_lowercase() == lower)
            .collect();
        if found.is_empty() {
            return Err(Error::NotFound(format!("package {owner}/{name}")));
        }
        // The package exists but the versions endpoint answered 404: the
        // server does not have that endpoint; stop asking it.
        self.versions_endpoint
            .compare_exchange(UNKNOWN, ABSENT, Ordering::Relaxed, Ordering::Relaxed)
            .ok();
        Ok(found)
    }

    /// `GET /api/v1/packages/{owner}/generic/{name}/{version}/files`
    /// (not paginated). Entries whose name cannot be a file name are
    /// skipped; sizes and hashes are checked (`FileEntry`).
    pub async fn list_files(
        &self,
        owner: &str,
        name: &str,
        version: &str,
    ) -> Result<Vec<FileEntry>> {
        let url = paths::v1_files_url(&self.base, owner, name, version);
        let (raw, _) = self.get_body(&url).await?;
        let files: Vec<PackageFile> = parse_items(&raw, &describe(&Method::GET, &url))?;
        Ok(files.into_iter().filter_map(FileEntry::check).collect())
    }

    /// Follows every page of a paginated v1 listing, within bounds: the
    /// whole listing within the client timeout, at most `MAX_PAGES` pages
    /// and `MAX_ITEMS` entries. `X-Total-Count` and `Link` only say that
    /// more may come; the pages decide: a page shorter than the first, an
    /// empty one, or one that brings no entry not seen before ends it.
    async fn all_pages<T: DeserializeOwned + Keyed>(
        &self,
        url: Url,
        query: &[(&str, &str)],
    ) -> Result<Vec<T>> {
        let what = describe(&Method::GET, &url);
        match tokio::time::timeout(self.timeout, self.all_pages_unbounded(url, query)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(format!(
                "{what}: the listing did not end within {} s",
                self.timeout.as_secs()
            ))),
        }
    }

    async fn all_pages_unbounded<T: DeserializeOwned + Keyed>(
        &self,
        url: Url,
        query: &[(&str, &str)],
    ) -> Result<Vec<T>> {
        let what = describe(&Method::GET, &url);
        let limit = MAX_PAGE_LIMIT;
        let page_url = |page: u32| {
            let mut u = url.clone();
            {
                let mut q = u.query_pairs_mut();
                for (k, v) in query {
                    q.append_pair(k, v);
                }
                q.append_pair("page", &page.to_string());
                q.append_pair("limit", &limit.to_string());
            }
            u
        };
        let fetch = |p: u32| {
            let u = page_url(p);
            let what = what.clone();
            async move {
                let (raw, headers) = self.get_body(&u).await?;
                Ok::<_, Error>((parse_items::<T>(&raw, &what)?, headers))
            }
        };
        let mut seen = HashSet::new();
        let (first, mut headers) = fetch(1).await?;
        // The server's page size: it may cap `limit` lower than asked.
        let per_page = first.len();
        let mut items: Vec<T> = first.into_iter().filter(|i| seen.insert(i.key())).collect();
        let mut next = 2u32;
        loop {
            let total = headers
                .get("x-total-count")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let more = match total {
                Some(total) => total > items.len() as u64,
                // No count: follow rel="next" (its page number only: the
                // link is built from APP_URL, which may name another host,
                // and the token never goes anywhere else).
                None => next_page(&headers).is_some_and(|p| p >= next),
            };
            if per_page == 0 || !more {
                return Ok(items);
            }
            if next > MAX_PAGES {
                return Err(Error::Protocol(format!(
                    "{what}: the registry keeps announcing pages past {MAX_PAGES}; refused"
                )));
            }
            // With a count, pages are fetched a few at a time.
            let batch = if total.is_some() {
                PAGE_CONCURRENCY as u32
            } else {
                1
            };
            let pages: Vec<(Vec<T>, HeaderMap)> = stream::iter(next..next + batch)
                .map(fetch)
                .buffered(PAGE_CONCURRENCY)
                .try_collect()
                .await?;
            next += batch;
            let mut ended = false;
            for (page, h) in pages {
                if ended {
                    break;
                }
                let full = page.len() >= per_page;
                let before = items.len();
                items.extend(page.into_iter().filter(|i| seen.insert(i.key())));
                if items.len() > MAX_ITEMS {
                    return Err(Error::Protocol(format!(
                        "{what}: more than {MAX_ITEMS} entries; refused"
                    )));
                }
                // A short page is the last; a page of nothing new means the
                // server ignores `page` (or the listing is looping).
                ended = !full || items.len() == before;
                headers = h;
            }
            if ended {
                return Ok(items);
            }
        }
    }
}

/// Listing entries that have an id, to drop repeats across pages.
pub(super) trait Keyed {
    fn key(&self) -> i64;
}

/// One version of a package, as the listings give it: only the fields the
/// filesystem uses are kept (a Gitea entry also carries two whole user
/// objects, ten times the size), so that a large listing stays small in
/// memory.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default)]
pub struct PackageVersion {
    pub id: i64,
    pub name: String,
    pub version: String,
    /// RFC 3339.
    pub created_at: String,
}

impl Keyed for PackageVersion {
    fn key(&self) -> i64 {
        self.id
    }
}

impl Keyed for Organization {
    fn key(&self) -> i64 {
        self.id
    }
}

/// One file of a version as the filesystem may use it: a name that can
/// be a file name, and a size and sha256 only where they are plausible.
/// `None` means the listing gave none that can be trusted: such a file is
/// shown, but reading it is an error (never an empty or unchecked file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub name: String,
    pub size: Option<u64>,
    /// Lower-case hex.
    pub sha256: Option<String>,
}

/// sha256 of zero bytes: the only hash an empty file can have.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

impl FileEntry {
    /// Checks one listed file; `None` (skipped, logged once) when its name
    /// cannot be a file name here.
    fn check(f: PackageFile) -> Option<FileEntry> {
        if crate::protocol::validate_filename(&f.name).is_err()
            || f.name.len() > crate::protocol::MAX_COMPONENT_LEN
        {
            log_once("file", &f.name, "not a valid file name");
            return None;
        }
        let size = f.size.and_then(|s| u64::try_from(s).ok());
        let sha256 = Some(f.sha256.to_ascii_lowercase()).filter(|s| crate::cache::is_sha256(s));
        // An empty file has one possible hash, and that hash one size.
        let consistent = match (size, sha256.as_deref()) {
            (Some(n), Some(h)) => (n == 0) == (h == EMPTY_SHA256),
            _ => true,
        };
        if !consistent || size.is_none() || sha256.is_none() {
            log_once(
                "file",
                &f.name,
                &format!(
                    "implausible size {:?} or sha256 {:?}: reads of it fail",
                    f.size, f.sha256
                ),
            );
        }
        Some(FileEntry {
            name: f.name,
            size: size.filter(|_| consistent),
            sha256: sha256.filter(|_| consistent),
        })
    }
}

/// Parses a JSON array entry by entry: an entry of the wrong shape (a
/// field of the wrong type, a number out of range) is skipped and logged;
/// the others are kept. A body that is not an array is an error.
fn parse_items<T: DeserializeOwned>(raw: &[u8], what: &str) -> Result<Vec<T>> {
    let entries: Vec<&serde_json::value::RawValue> = serde_json::from_slice(raw)
        .map_err(|e| Error::Protocol(format!("{what}: not a JSON array: {e}")))?;
    let mut skipped = 0usize;
    let items = entries
        .into_iter()
        .filter_map(|e| match serde_json::from_str::<T>(e.get()) {
            Ok(v) => Some(v),
            Err(err) => {
                skipped += 1;
                if skipped == 1 {
                    tracing::warn!(what, error = %err, "skipping a listing entry of the wrong shape");
                }
                None
            }
        })
        .collect();
    if skipped > 1 {
        tracing::warn!(what, skipped, "skipped listing entries of the wrong shape");
    }
    Ok(items)
}

/// Logs a refused listing entry once per mount (bounded), not at every
/// refresh of its directory.
pub fn log_once(kind: &str, name: &str, why: &str) {
    static LOGGED: std::sync::Mutex<Option<HashSet<String>>> = std::sync::Mutex::new(None);
    let key = format!("{kind}\0{name}");
    let fresh = {
        let mut g = LOGGED.lock().unwrap_or_else(|e| e.into_inner());
        let set = g.get_or_insert_with(HashSet::new);
        set.len() < 10_000 && set.insert(key)
    };
    if fresh {
        tracing::warn!(kind, name = %name.escape_debug(), why, "listing entry refused");
    }
}

/// The page number of the `rel="next"` URL of a `Link` header.
fn next_page(headers: &HeaderMap) -> Option<u32> {
    let link = headers.get("link")?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        if !params.contains("rel=\"next\"") {
            return None;
        }
        let url = url.trim().trim_start_matches('<').trim_end_matches('>');
        let url = Url::parse(url).ok()?;
        let page = url.query_pairs().find(|(k, _)| k == "page")?.1;
        page.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_page_number_of_the_next_link() {
        let mut h = HeaderMap::new();
        h.insert(
            "link",
            "<http://h/api/v1/packages/a?page=2&limit=50>; rel=\"next\",<http://h/api/v1/packages/a?page=3&limit=50>; rel=\"last\""
                .parse()
                .unwrap(),
        );
        assert_eq!(next_page(&h), Some(2));
        h.insert("link", "<http://h/x?page=9>; rel=\"last\"".parse().unwrap());
        assert_eq!(next_page(&h), None);
    }
}
