//! `pkgfs serve` `/api/v1`: listing, pagination, files, deletes and the
//! JSON shapes of PROTOCOL.md §listings, §pagination and §json.

mod common;

use common::server::TestServer;
use reqwest::StatusCode;
use serde_json::Value;

async fn get(s: &TestServer, path: &str) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let r = s
        .http
        .get(s.at(path))
        .header("Authorization", s.auth())
        .send()
        .await
        .unwrap();
    let (st, h) = (r.status(), r.headers().clone());
    (st, h, r.json().await.unwrap_or(Value::Null))
}

fn len(v: &Value) -> usize {
    v.as_array().map_or(usize::MAX, Vec::len)
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, k: &str) -> &'a str {
    h.get(k).map_or("", |v| v.to_str().unwrap())
}

/// One server with packages of 1, 30, 50, 51 and 121 versions, and one
/// whose only version was deleted (0 versions, the row lingers).
#[tokio::test]
async fn pagination_edges() {
    let s = TestServer::start(&[]);
    for n in [1usize, 30, 50, 51, 121] {
        for i in 0..n {
            let st = s
                .put("alice", &format!("p{n}"), &format!("1.{i}"), "f", b"x")
                .await;
            assert_eq!(st, StatusCode::CREATED);
        }
    }
    assert_eq!(
        s.put("alice", "p0", "1", "f", b"x").await,
        StatusCode::CREATED
    );
    let url = pkgfs::protocol::paths::version_url(&s.base(), "alice", "p0", "1");
    let r = s
        .http
        .delete(url)
        .header("Authorization", s.auth())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    for (n, default_len) in [
        (0usize, 0usize),
        (1, 1),
        (30, 30),
        (50, 30),
        (51, 30),
        (121, 30),
    ] {
        let (st, h, v) = get(&s, &format!("api/v1/packages/alice/generic/p{n}")).await;
        assert_eq!(st, StatusCode::OK, "p{n}");
        assert_eq!(len(&v), default_len, "p{n}");
        assert_eq!(header(&h, "x-total-count"), n.to_string(), "p{n}");
        // limit=50 pages through everything exactly once, newest first.
        let mut seen = Vec::new();
        let mut page = 1;
        loop {
            let path = format!("api/v1/packages/alice/generic/p{n}?limit=50&page={page}");
            let (_, h, v) = get(&s, &path).await;
            seen.extend(
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["id"].as_i64().unwrap()),
            );
            if !header(&h, "link").contains("rel=\"next\"") {
                break;
            }
            page += 1;
        }
        assert_eq!(seen.len(), n, "p{n}");
        assert!(seen.windows(2).all(|w| w[0] > w[1]), "p{n}: newest first");
    }

    // Link header details on the 121-version package.
    let base = format!("{}api/v1/packages/alice/generic/p121", s.url);
    let (_, h, v) = get(&s, "api/v1/packages/alice/generic/p121?limit=50&page=2").await;
    assert_eq!(len(&v), 50);
    assert_eq!(
        header(&h, "link"),
        format!(
            "<{base}?limit=50&page=3>; rel=\"next\",<{base}?limit=50&page=3>; rel=\"last\",\
             <{base}?limit=50&page=1>; rel=\"first\",<{base}?limit=50&page=1>; rel=\"prev\""
        )
    );
    assert_eq!(
        header(&h, "access-control-expose-headers"),
        "Link, X-Total-Count"
    );
    let (_, h, v) = get(&s, "api/v1/packages/alice/generic/p121?limit=50&page=3").await;
    assert_eq!(len(&v), 21);
    assert!(!header(&h, "link").contains("next") && !header(&h, "link").contains("last"));
    let (_, h, v) = get(&s, "api/v1/packages/alice/generic/p121?limit=50&page=9").await;
    assert_eq!(len(&v), 0);
    assert!(header(&h, "link").contains("rel=\"prev\""));
    // Clamping: limit > 50 → 50, limit ≤ 0 → 30, page ≤ 0 → 1.
    assert_eq!(
        len(&get(&s, "api/v1/packages/alice/generic/p121?limit=500")
            .await
            .2),
        50
    );
    assert_eq!(
        len(&get(&s, "api/v1/packages/alice/generic/p121?limit=0")
            .await
            .2),
        30
    );
    assert_eq!(
        len(&get(&s, "api/v1/packages/alice/generic/p121?limit=-3")
            .await
            .2),
        30
    );
    let (_, h, _) = get(&s, "api/v1/packages/alice/generic/p121?page=0").await;
    assert!(header(&h, "link").contains("rel=\"next\""));
    assert!(!header(&h, "link").contains("rel=\"prev\""));
    let (_, h, _) = get(&s, "api/v1/packages/alice/generic/p1").await;
    assert!(h.get("link").is_none());
    assert_eq!(header(&h, "access-control-expose-headers"), "X-Total-Count");

    // Owner listing: one entry per version, q substring, type filter.
    let (_, h, v) = get(&s, "api/v1/packages/alice?type=generic&limit=50").await;
    assert_eq!(
        header(&h, "x-total-count"),
        (1 + 30 + 50 + 51 + 121).to_string()
    );
    assert_eq!(len(&v), 50);
    assert!(header(&h, "link").starts_with(&format!(
        "<{}api/v1/packages/alice?limit=50&page=2&type=generic>; rel=\"next\"",
        s.url
    )));
    let (_, h, _) = get(&s, "api/v1/packages/alice?q=P12").await;
    assert_eq!(header(&h, "x-total-count"), "121");
    let (_, h, _) = get(&s, "api/v1/packages/alice?q=p5").await;
    assert_eq!(header(&h, "x-total-count"), "101");
    let (_, h, v) = get(&s, "api/v1/packages/alice?type=npm").await;
    assert_eq!((header(&h, "x-total-count"), len(&v)), ("0", 0));

    // Latest is the most recently created version.
    let (st, _, v) = get(&s, "api/v1/packages/alice/generic/p121/-/latest").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["version"], "1.120");
    assert_eq!(
        get(&s, "api/v1/packages/alice/generic/p0/-/latest").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&s, "api/v1/packages/alice/generic/zz/-/latest").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn json_shapes() {
    let s = TestServer::start(&[]);
    assert_eq!(
        s.put("alice", "Tool", "1.0", "b.bin", b"bb").await,
        StatusCode::CREATED
    );
    assert_eq!(
        s.put("alice", "Tool", "1.0", "A.bin", b"a").await,
        StatusCode::CREATED
    );
    let (st, _, p) = get(&s, "api/v1/packages/alice/generic/tool/1.0").await;
    assert_eq!(st, StatusCode::OK);
    for k in [
        "id",
        "owner",
        "repository",
        "creator",
        "type",
        "name",
        "version",
        "html_url",
        "created_at",
    ] {
        assert!(p.get(k).is_some(), "missing {k} in {p}");
    }
    assert_eq!(p["type"], "generic");
    assert_eq!(p["name"], "Tool");
    assert!(p["repository"].is_null());
    assert_eq!(p["owner"]["login"], "alice");
    assert_eq!(p["creator"]["login"], "alice");
    assert_eq!(
        p["html_url"],
        format!("{}alice/-/packages/generic/tool/1.0", s.url)
    );
    let created = p["created_at"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.len() == 20, "{created}");
    assert!(chrono::DateTime::parse_from_rfc3339(created).is_ok());

    let (st, h, files) = get(&s, "api/v1/packages/alice/generic/tool/1.0/files").await;
    assert_eq!(st, StatusCode::OK);
    assert!(h.get("x-total-count").is_none(), "files are not paginated");
    assert_eq!(files[0]["name"], "A.bin");
    assert_eq!(files[1]["name"], "b.bin");
    assert_eq!(files[1]["size"], 2);
    assert_eq!(files[1]["md5"], "21ad0bd836b90d08f4cf640b4c298e7c");
    assert_eq!(files[1]["sha1"], "9a900f538965a426994e1e90600920aff0b4e8d2");
    assert_eq!(
        files[1]["sha256"],
        "3b64db95cb55c763391c707108489ae18b4112d783300de38e033b4c98c3deaf"
    );
    assert_eq!(files[1]["sha512"], "24b1a812d4e3535c06011c430aaba3f59d32f36263ddcb99541f998266c5e84a52fb33f951cec78656f598a004f83c771388b9a80404f7432b714f4dcae4a00f");

    let (st, _, user) = get(&s, "api/v1/user").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(user["login"], "alice");
    assert_eq!(user["visibility"], "public");
    assert_eq!(get(&s, "api/v1/user/orgs").await.2, serde_json::json!([]));
    assert_eq!(get(&s, "api/v1/users/ALICE").await.2["login"], "alice");
    assert_eq!(
        get(&s, "api/v1/users/nobody").await.0,
        StatusCode::NOT_FOUND
    );
    let (st, _, nf) = get(&s, "api/v1/orgs/alice").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(nf["url"], format!("{}api/swagger", s.url));
    assert!(nf["message"].is_string());
}

#[tokio::test]
async fn old_size_key_and_missing_versions_endpoint() {
    let s = TestServer::start(&["--size-key", "Size", "--no-versions-endpoint"]);
    assert_eq!(
        s.put("alice", "tool", "1", "f", b"abc").await,
        StatusCode::CREATED
    );
    let (_, _, files) = get(&s, "api/v1/packages/alice/generic/tool/1/files").await;
    assert_eq!(files[0]["Size"], 3);
    assert!(files[0].get("size").is_none());
    let parsed: Vec<pkgfs::protocol::PackageFile> = serde_json::from_value(files).unwrap();
    assert_eq!(parsed[0].size, Some(3));
    assert_eq!(
        get(&s, "api/v1/packages/alice/generic/tool").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&s, "api/v1/packages/alice/generic/tool/-/latest")
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    // The fallback of PROTOCOL.md §listings (owner listing with `q=`) still works.
    let (_, _, v) = get(&s, "api/v1/packages/alice?type=generic&q=tool").await;
    assert_eq!(v[0]["version"], "1");
}

#[tokio::test]
async fn v1_deletes() {
    let s = TestServer::start(&[]);
    for v in ["1", "2"] {
        for f in ["a", "b"] {
            assert_eq!(
                s.put("alice", "tool", v, f, b"x").await,
                StatusCode::CREATED
            );
        }
    }
    let del = |path: &'static str| {
        let rb = s.http.delete(s.at(path)).header("Authorization", s.auth());
        async move { rb.send().await.unwrap().status() }
    };
    assert_eq!(
        del("api/v1/packages/alice/generic/tool/1").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        del("api/v1/packages/alice/generic/tool/1").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&s, "api/v1/packages/alice/generic/tool/1/files")
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        len(&get(&s, "api/v1/packages/alice/generic/tool").await.2),
        1
    );
    assert_eq!(
        del("api/v1/packages/alice/generic/tool").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        get(&s, "api/v1/packages/alice/generic/tool").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        del("api/v1/packages/alice/generic/tool").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.get("alice", "tool", "2", "a").await.0,
        StatusCode::NOT_FOUND
    );
    let r = s
        .http
        .post(s.at("api/v1/packages/alice"))
        .header("Authorization", s.auth());
    assert_eq!(
        r.send().await.unwrap().status(),
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(get(&s, "api/v1/nothing").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn public_url_is_used_for_absolute_urls() {
    let s = TestServer::start(&["--public-url", "https://example.test/gitea"]);
    for v in ["1", "2"] {
        assert_eq!(
            s.put("alice", "tool", v, "f", b"x").await,
            StatusCode::CREATED
        );
    }
    let (_, h, v) = get(&s, "api/v1/packages/alice/generic/tool?limit=1").await;
    assert_eq!(
        v[0]["html_url"],
        "https://example.test/gitea/alice/-/packages/generic/tool/2"
    );
    assert!(header(&h, "link").starts_with(
        "<https://example.test/gitea/api/v1/packages/alice/generic/tool?limit=1&page=2>"
    ));
    assert_eq!(
        v[0]["owner"]["html_url"],
        "https://example.test/gitea/alice"
    );
}

/// `latest` is the most recently created version (highest id), not the
/// highest in SemVer order (PROTOCOL.md §listings); listings are newest first.
#[tokio::test]
async fn latest_is_the_newest_upload_not_the_highest_version() {
    let s = TestServer::start(&[]);
    for v in ["2.0.0", "10.0.0", "1.0.0"] {
        assert_eq!(
            s.put("alice", "order", v, "f", b"x").await,
            StatusCode::CREATED
        );
    }
    let (st, _, v) = get(&s, "api/v1/packages/alice/generic/order/-/latest").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["version"], "1.0.0");
    let (_, _, list) = get(&s, "api/v1/packages/alice/generic/order").await;
    let versions: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["1.0.0", "10.0.0", "2.0.0"]);
}
