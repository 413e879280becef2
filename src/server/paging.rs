//! `/api/v1` pagination exactly as Gitea does it (PROTOCOL.md §pagination):
//! `page`/`limit` clamping, `X-Total-Count`, and the `Link` header built by
//! Gitea's paginator (`next`, `last`, `first`, `prev`, each only when
//! meaningful, absolute URLs from APP_URL, query re-encoded sorted).

use std::collections::BTreeMap;

use http::header::{HeaderMap, HeaderValue};

use crate::protocol::{DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT};

/// A parsed query string, keys in Go's sorted order.
#[derive(Debug, Clone, Default)]
pub struct Query(BTreeMap<String, Vec<String>>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            map.entry(k.into_owned()).or_default().push(v.into_owned());
        }
        Query(map)
    }

    /// The first value of `key`, or "".
    pub fn get(&self, key: &str) -> &str {
        self.0
            .get(key)
            .and_then(|v| v.first())
            .map(String::as_str)
            .unwrap_or("")
    }

    /// Go's `ctx.FormInt`: 0 when absent or not a number.
    pub fn int(&self, key: &str) -> i64 {
        self.get(key).parse().unwrap_or(0)
    }

    fn with(&self, key: &str, value: u64) -> String {
        let mut q = self.0.clone();
        q.insert(key.to_string(), vec![value.to_string()]);
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, vs) in &q {
            for v in vs {
                s.append_pair(k, v);
            }
        }
        s.finish()
    }
}

/// The page asked for.
#[derive(Debug, Clone, Copy)]
pub struct PageReq {
    pub page: u64,
    pub limit: u64,
}

impl PageReq {
    pub fn from_query(q: &Query) -> PageReq {
        let page = q.int("page").max(1) as u64;
        let limit = match q.int("limit") {
            n if n <= 0 => DEFAULT_PAGE_LIMIT as u64,
            n => (n as u64).min(MAX_PAGE_LIMIT as u64),
        };
        PageReq { page, limit }
    }

    pub fn offset(&self) -> u64 {
        // SQLite takes an i64; a negative offset would mean "from the start".
        (self.page - 1)
            .saturating_mul(self.limit)
            .min(i64::MAX as u64)
    }
}

/// `X-Total-Count`, `Link` and `Access-Control-Expose-Headers` for a page.
/// `base` is APP_URL with a trailing slash, `path` the request path.
pub fn headers(base: &str, path: &str, q: &Query, req: PageReq, total: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut exposed = Vec::new();
    let links = links(base, path, q, req, total);
    if !links.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&links.join(",")) {
            h.insert("link", v);
            exposed.push("Link");
        }
    }
    h.insert("x-total-count", HeaderValue::from(total));
    exposed.push("X-Total-Count");
    if let Ok(v) = HeaderValue::from_str(&exposed.join(", ")) {
        h.insert("access-control-expose-headers", v);
    }
    h
}

fn links(base: &str, path: &str, q: &Query, req: PageReq, total: u64) -> Vec<String> {
    let size = req.limit.max(1);
    let total_pages = if total == 0 { 1 } else { total.div_ceil(size) };
    let current = req.page.min(total_pages);
    let has_next = total > current * size;
    let is_last = total == 0 || (total > (current - 1) * size && !has_next);
    let path = path.trim_start_matches('/');
    let link =
        |page: u64, rel: &str| format!("<{base}{path}?{}>; rel=\"{rel}\"", q.with("page", page));
    let mut out = Vec::new();
    if has_next {
        out.push(link(current + 1, "next"));
    }
    if !is_last {
        out.push(link(total_pages, "last"));
    }
    if current != 1 {
        out.push(link(1, "first"));
    }
    if current > 1 {
        out.push(link(current - 1, "prev"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rels(page: i64, limit: i64, total: u64) -> Vec<String> {
        let q = Query::parse(Some(&format!("page={page}&limit={limit}")));
        links("http://h/", "/x", &q, PageReq::from_query(&q), total)
            .into_iter()
            .map(|l| l.split("rel=").nth(1).unwrap_or("").to_string())
            .collect()
    }

    #[test]
    fn link_relations() {
        assert!(rels(1, 50, 0).is_empty());
        assert!(rels(1, 50, 50).is_empty());
        assert_eq!(rels(1, 50, 51), ["\"next\"", "\"last\""]);
        assert_eq!(
            rels(2, 50, 121),
            ["\"next\"", "\"last\"", "\"first\"", "\"prev\""]
        );
        assert_eq!(rels(3, 50, 121), ["\"first\"", "\"prev\""]);
        assert_eq!(rels(9, 50, 121), ["\"first\"", "\"prev\""]);
    }

    #[test]
    fn link_url_is_absolute_and_sorted() {
        let q = Query::parse(Some("type=generic&limit=1&q=a+b"));
        let l = links(
            "http://h:1/",
            "/api/v1/packages/o",
            &q,
            PageReq::from_query(&q),
            3,
        );
        assert_eq!(
            l[0],
            "<http://h:1/api/v1/packages/o?limit=1&page=2&q=a+b&type=generic>; rel=\"next\""
        );
    }
}
