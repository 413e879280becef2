//! Listings through `/api/v1` (registry-api.md §5, §9 rule 11): owners,
//! packages, versions and files, following every page. Once the first page
//! has told `X-Total-Count`, the remaining pages are fetched concurrently.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use futures_util::{stream, StreamExt, TryStreamExt};
use reqwest::header::HeaderMap;
use serde::de::DeserializeOwned;
use url::Url;

use super::{Client, Error, Result};
use crate::protocol::{paths, Organization, Package, PackageFile, User, MAX_PAGE_LIMIT};

/// How many pages are fetched at once after the first.
const PAGE_CONCURRENCY: usize = 4;

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
    pub async fn list_owner_packages(&self, owner: &str) -> Result<Vec<Package>> {
        let url = paths::v1_packages_url(&self.base, owner);
        let all: Vec<Package> = self.all_pages(url, &[("type", "generic")]).await?;
        Ok(dedup_by_id(all))
    }

    /// Every version of one package: the versions endpoint where the server
    /// has it, else the owner listing filtered with `q=` and an exact
    /// (case-insensitive) name match. `NotFound` when the package has no
    /// version.
    pub async fn list_versions(&self, owner: &str, name: &str) -> Result<Vec<Package>> {
        if self.versions_endpoint.load(Ordering::Relaxed) != ABSENT {
            let url = paths::v1_versions_url(&self.base, owner, name);
            match self.all_pages::<Package>(url, &[]).await {
                Ok(v) => {
                    self.versions_endpoint.store(PRESENT, Ordering::Relaxed);
                    return Ok(dedup_by_id(v));
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
        let all: Vec<Package> = self
            .all_pages(url, &[("type", "generic"), ("q", name)])
            .await?;
        let lower = name.to_lowercase();
        let found: Vec<Package> = dedup_by_id(all)
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
    /// (not paginated).
    pub async fn list_files(
        &self,
        owner: &str,
        name: &str,
        version: &str,
    ) -> Result<Vec<PackageFile>> {
        let url = paths::v1_files_url(&self.base, owner, name, version);
        Ok(self.get_json(&url).await?.0)
    }

    /// Follows every page of a paginated v1 listing.
    async fn all_pages<T: DeserializeOwned>(
        &self,
        url: Url,
        query: &[(&str, &str)],
    ) -> Result<Vec<T>> {
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
        let (mut items, headers): (Vec<T>, HeaderMap) = self.get_json(&page_url(1)).await?;
        let total = headers
            .get("x-total-count")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        match total {
            Some(total) if total > items.len() && !items.is_empty() => {
                let per_page = items.len().max(1);
                let pages = total.div_ceil(per_page) as u32;
                let rest: Vec<Vec<T>> = stream::iter(2..=pages)
                    .map(|p| {
                        let u = page_url(p);
                        async move { self.get_json::<Vec<T>>(&u).await.map(|r| r.0) }
                    })
                    .buffered(PAGE_CONCURRENCY)
                    .try_collect()
                    .await?;
                items.extend(rest.into_iter().flatten());
            }
            Some(_) => {}
            None => {
                // No count: follow rel="next" one page at a time. Only its
                // page number is taken: the link is built from APP_URL,
                // which may name another host than the one mounted, and
                // the token must never go anywhere else.
                let mut next = next_page(&headers);
                let mut last = 1;
                while let Some(p) = next.filter(|&p| p > last && p <= 100_000) {
                    last = p;
                    let (page, h): (Vec<T>, HeaderMap) = self.get_json(&page_url(p)).await?;
                    if page.is_empty() {
                        break;
                    }
                    items.extend(page);
                    next = next_page(&h);
                }
            }
        }
        Ok(items)
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

/// The listing can change between pages: keep the first entry of each id.
fn dedup_by_id(items: Vec<Package>) -> Vec<Package> {
    let mut seen = HashSet::new();
    items.into_iter().filter(|p| seen.insert(p.id)).collect()
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
