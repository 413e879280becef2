//! `pkgfs serve` at the HTTP level: the registry protocol of
//! PROTOCOL.md §names, §endpoints, §upload, §download and §delete (uploads,
//! downloads, deletes, routing).

mod common;

use common::server::TestServer;
use reqwest::{Method, StatusCode};

async fn send(s: &TestServer, method: Method, url: &str) -> reqwest::Response {
    s.http
        .request(method, url)
        .header("Authorization", s.auth())
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn put_get_head_delete_roundtrip() {
    let s = TestServer::start(&[]);
    let url = s.file_url("alice", "tool", "1.0", "a.bin");
    let put = s
        .http
        .put(url.clone())
        .header("Authorization", s.auth())
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    assert!(
        put.bytes().await.unwrap().is_empty(),
        "201 has an empty body"
    );
    let (st, body) = s.get("alice", "tool", "1.0", "a.bin").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body, b"hello");
    let head = send(&s, Method::HEAD, url.as_str()).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-length"], "5");
    let del = send(&s, Method::DELETE, url.as_str()).await;
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        s.get("alice", "tool", "1.0", "a.bin").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        send(&s, Method::DELETE, url.as_str()).await.status(),
        StatusCode::NOT_FOUND
    );
    let st = s.stats().await;
    assert_eq!(st["file_put"], 1);
    assert_eq!(st["file_get"], 2);
    assert_eq!(st["file_head"], 1);
    assert_eq!(st["file_delete"], 2);
    assert_eq!(st["bytes_sent"], 5);
}

#[tokio::test]
async fn download_headers_are_gitea_s() {
    let s = TestServer::start(&[]);
    assert_eq!(
        s.put("alice", "tool", "1.0", "a b.bin", b"0123456789")
            .await,
        StatusCode::CREATED
    );
    let r = send(
        &s,
        Method::GET,
        s.file_url("alice", "tool", "1.0", "A B.BIN").as_str(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers();
    assert_eq!(h["content-type"], "application/octet-stream");
    assert_eq!(h["content-length"], "10");
    assert_eq!(h["content-disposition"], "attachment; filename=\"a b.bin\"");
    assert_eq!(h["access-control-expose-headers"], "Content-Disposition");
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(
        h["content-security-policy"],
        "default-src 'none'; style-src 'unsafe-inline'; sandbox"
    );
    assert_eq!(h["cache-control"], "max-age=0, private, must-revalidate");
    assert!(h.get("etag").is_none());
    let lm = h["last-modified"].to_str().unwrap();
    let lm = httpdate::parse_http_date(lm).unwrap();
    let age = std::time::SystemTime::now().duration_since(lm).unwrap();
    assert!(age.as_secs() < 60);
}

#[tokio::test]
async fn the_gitea_curl_examples_work_verbatim() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("curl is not installed; skipping");
        return;
    }
    for (legacy, again) in [(false, "409"), (true, "400")] {
        let s = TestServer::start(if legacy {
            &["--legacy-duplicates"]
        } else {
            &[]
        });
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f.bin");
        std::fs::write(&f, b"curl payload\n").unwrap();
        let url = s.at("api/packages/alice/generic/test_package/1.0.0/f.bin");
        let user = format!("alice:{}", s.token);
        let curl = |args: &[&str]| {
            let out = std::process::Command::new("curl")
                .args(["-s", "-o", "/dev/stderr", "-w", "%{http_code}"])
                .args(args)
                .output()
                .unwrap();
            (
                String::from_utf8_lossy(&out.stdout).into_owned(),
                out.stderr,
            )
        };
        let fs = f.to_str().unwrap();
        assert_eq!(curl(&["--user", &user, "--upload-file", fs, &url]).0, "201");
        let (code, body) = curl(&["--user", &user, &url]);
        assert_eq!(code, "200");
        assert_eq!(body, b"curl payload\n");
        assert_eq!(curl(&["--user", &user, "--upload-file", fs, &url]).0, again);
    }
}

#[tokio::test]
async fn put_validates_after_auth_and_owner() {
    let s = TestServer::start(&[]);
    let put = |owner: &'static str,
               name: &'static str,
               version: &'static str,
               file: &'static str,
               auth: bool| {
        let url = s.file_url(owner, name, version, file);
        let mut rb = s.http.put(url).body("x");
        if auth {
            rb = rb.header("Authorization", s.auth());
        }
        async move {
            let r = rb.send().await.unwrap();
            let status = r.status();
            let www = r
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_string());
            (status, www, r.text().await.unwrap())
        }
    };
    // Anonymous: 401 before anything else, with the Basic challenge.
    let (st, www, _) = put("alice", "bad name", "1", "f", false).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(www.as_deref(), Some("Basic realm=\"Gitea Package API\""));
    // Unknown owner: 404 before validation.
    assert_eq!(
        put("nobody", "bad name", "1", "f", true).await.0,
        StatusCode::NOT_FOUND
    );
    for (name, version, file, msg) in [
        ("bad name", "1", "f", "invalid package name"),
        ("_", "1", "f", "invalid package name"),
        ("ok", "1", " f", "invalid filename"),
        ("ok", "1", "a\u{0}b", "invalid filename"),
        ("ok", "1", "é.bin", "invalid filename"),
        ("ok", " 1", "f", "invalid package version"),
    ] {
        let (st, _, body) = put("alice", name, version, file, true).await;
        assert_eq!(
            (st, body.as_str()),
            (StatusCode::BAD_REQUEST, msg),
            "{name:?} {version:?} {file:?}"
        );
    }
    // `..` and tabs cannot go through `Url` (it resolves the one and drops
    // the other): send them escaped.
    for (path, msg) in [
        (
            "api/packages/alice/generic/%2E%2E/1/f",
            "invalid package name",
        ),
        ("api/packages/alice/generic/ok/1/%2E%2E", "invalid filename"),
        ("api/packages/alice/generic/ok/1/%2E", "invalid filename"),
        (
            "api/packages/alice/generic/ok/1%09/f",
            "invalid package version",
        ),
        (
            "api/packages/alice/generic/ok/%E2%80%831/f",
            "invalid package version",
        ),
    ] {
        // The WHATWG URL parser of reqwest resolves `%2E%2E` as well.
        let req = format!(
            "PUT /{path} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\
             Content-Length: 1\r\nConnection: close\r\n\r\nx",
            s.auth()
        );
        let answer = s.raw(req.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{path}: {answer}");
        assert!(answer.ends_with(msg), "{path}: {answer}");
    }
    // Accepted oddities: inner spaces in versions, many filename symbols.
    assert_eq!(
        put("alice", "ok", "1.0.3-te st", "f", true).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        put("alice", "ok", "1", "[x]{y}(z)~!@#$%^&=:;+ .bin", true)
            .await
            .0,
        StatusCode::CREATED
    );
    let (st, body) = s
        .get("alice", "ok", "1", "[x]{y}(z)~!@#$%^&=:;+ .bin")
        .await;
    assert_eq!((st, body.as_slice()), (StatusCode::OK, &b"x"[..]));
}

#[tokio::test]
async fn duplicates_are_refused_case_insensitively_keeping_the_first_spelling() {
    let s = TestServer::start(&[]);
    assert_eq!(
        s.put("alice", "Tool", "V1", "A.bin", b"1").await,
        StatusCode::CREATED
    );
    let r = s
        .http
        .put(s.file_url("alice", "tool", "v1", "a.BIN"))
        .header("Authorization", s.auth())
        .body("2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(r.text().await.unwrap(), "package file already exists");
    assert_eq!(
        s.put("alice", "TOOL", "v1", "b.bin", b"3").await,
        StatusCode::CREATED
    );
    let (_, files) = s.v1("api/v1/packages/alice/generic/tool/V1/files").await;
    let names: Vec<&str> = files
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["A.bin", "b.bin"]);
    let (_, v) = s.v1("api/v1/packages/alice/generic/TOOL/v1").await;
    assert_eq!(
        (v["name"].as_str(), v["version"].as_str()),
        (Some("Tool"), Some("V1"))
    );
    let r = send(
        &s,
        Method::GET,
        s.file_url("alice", "TOOL", "v1", "a.bin").as_str(),
    )
    .await;
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=A.bin"
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"1");
}

#[tokio::test]
async fn legacy_mode_allows_one_file_per_version() {
    let s = TestServer::start(&["--legacy-duplicates"]);
    assert_eq!(
        s.put("alice", "tool", "1", "a.bin", b"1").await,
        StatusCode::CREATED
    );
    let r = s
        .http
        .put(s.file_url("alice", "tool", "1", "other.bin"))
        .header("Authorization", s.auth())
        .body("2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.text().await.unwrap(), "package version already exists");
    assert_eq!(
        s.put("alice", "tool", "1", "a.bin", b"1").await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        s.put("alice", "tool", "2", "a.bin", b"1").await,
        StatusCode::CREATED
    );
    let url = pkgfs::protocol::paths::version_url(&s.base(), "alice", "tool", "1");
    assert_eq!(
        send(&s, Method::DELETE, url.as_str()).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&s, Method::DELETE, url.as_str()).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn empty_bodies_and_last_file_deletion() {
    let s = TestServer::start(&[]);
    assert_eq!(
        s.put("alice", "tool", "1", "empty", b"").await,
        StatusCode::CREATED
    );
    assert_eq!(
        s.put("alice", "tool", "1", "two", b"22").await,
        StatusCode::CREATED
    );
    let r = s
        .http
        .get(s.file_url("alice", "tool", "1", "empty"))
        .header("Range", "bytes=0-10")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "a Range on an empty file is ignored"
    );
    assert_eq!(r.headers()["content-length"], "0");
    let (_, files) = s.v1("api/v1/packages/alice/generic/tool/1/files").await;
    assert_eq!(files[0]["size"], 0);
    assert_eq!(
        files[0]["sha256"],
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    for f in ["empty", "two"] {
        let r = send(
            &s,
            Method::DELETE,
            s.file_url("alice", "tool", "1", f).as_str(),
        )
        .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
    // The version went with its last file; the package row lingers.
    assert_eq!(
        s.v1("api/v1/packages/alice/generic/tool/1").await.0,
        StatusCode::NOT_FOUND
    );
    let (st, list) = s.v1("api/v1/packages/alice/generic/tool").await;
    assert_eq!((st, list), (StatusCode::OK, serde_json::json!([])));
    let r = s
        .http
        .post(s.at("_pkgfs/test/cleanup"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        s.v1("api/v1/packages/alice/generic/tool").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn delete_version_removes_all_files() {
    let s = TestServer::start(&[]);
    for f in ["a", "b", "c"] {
        assert_eq!(
            s.put("alice", "tool", "1", f, f.as_bytes()).await,
            StatusCode::CREATED
        );
    }
    let url = pkgfs::protocol::paths::version_url(&s.base(), "alice", "TOOL", "1");
    assert_eq!(
        send(&s, Method::DELETE, url.as_str()).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.get("alice", "tool", "1", "a").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        send(&s, Method::DELETE, url.as_str()).await.status(),
        StatusCode::NOT_FOUND
    );
    // Unreferenced blobs are gone from disk.
    let blobs = walk(&s.data.join("blobs"));
    assert!(blobs.is_empty(), "{blobs:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[tokio::test]
async fn routing_methods_and_normalisation() {
    let s = TestServer::start(&[]);
    assert_eq!(
        s.put("alice", "tool", "1", "a", b"abc").await,
        StatusCode::CREATED
    );
    let file = s.at("api/packages/alice/generic/tool/1/a");
    let cases: &[(Method, String, StatusCode)] = &[
        (
            Method::GET,
            s.at("api/packages/alice/generic/tool/1"),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::PUT,
            s.at("api/packages/alice/generic/tool/1"),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::GET,
            s.at("api/packages/alice/generic/tool"),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            s.at("api/packages/alice/generic/tool/1/a/b"),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            s.at("api/packages/alice/npm/tool/1/a"),
            StatusCode::NOT_FOUND,
        ),
        (Method::POST, file.clone(), StatusCode::METHOD_NOT_ALLOWED),
        (Method::PATCH, file.clone(), StatusCode::METHOD_NOT_ALLOWED),
        (
            Method::GET,
            s.at("api/packages/nobody/generic/tool/1/a"),
            StatusCode::NOT_FOUND,
        ),
        (Method::GET, s.at("nothing/here"), StatusCode::NOT_FOUND),
        (
            Method::GET,
            s.at("api//packages///alice/generic/tool/1/a/"),
            StatusCode::OK,
        ),
        (
            Method::GET,
            s.at("api/packages/alice/generic/tool/1/A"),
            StatusCode::OK,
        ),
        (
            Method::GET,
            s.at("api/packages/alice/generic/tool/2/a"),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            s.at("api/packages/alice/generic/tool/1/zz"),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            s.at("_pkgfs/test/nothing"),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (m, url, want) in cases {
        let r = send(&s, m.clone(), url).await;
        assert_eq!(r.status(), *want, "{m} {url}");
    }
    let r = send(
        &s,
        Method::GET,
        &s.at("api/packages/alice/generic/tool/2/a"),
    )
    .await;
    assert_eq!(r.text().await.unwrap(), "package does not exist");
    let r = send(
        &s,
        Method::GET,
        &s.at("api/packages/alice/generic/tool/1/zz"),
    )
    .await;
    assert_eq!(r.text().await.unwrap(), "package file does not exist");
}

#[tokio::test]
async fn escaped_slash_survives_into_the_version() {
    let s = TestServer::start(&[]);
    assert_eq!(
        s.put("alice", "tool", "1.0/rc", "a", b"x").await,
        StatusCode::CREATED
    );
    let (st, v) = s.v1("api/v1/packages/alice/generic/tool").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v[0]["version"], "1.0/rc");
    assert_eq!(
        v[0]["html_url"],
        format!("{}alice/-/packages/generic/tool/1.0%2Frc", s.url)
    );
    assert_eq!(s.get("alice", "tool", "1.0/RC", "a").await.1, b"x");
}

#[tokio::test]
async fn head_variants_by_profile() {
    let s = TestServer::start(&["--no-head"]);
    assert_eq!(
        s.put("alice", "tool", "1", "a", b"abc").await,
        StatusCode::CREATED
    );
    let url = s.file_url("alice", "tool", "1", "a");
    assert_eq!(
        send(&s, Method::HEAD, url.as_str()).await.status(),
        StatusCode::METHOD_NOT_ALLOWED
    );

    let s = TestServer::start(&["--forgejo"]);
    assert_eq!(
        s.put("alice", "tool", "1", "a", b"abc").await,
        StatusCode::CREATED
    );
    let url = s.file_url("alice", "tool", "1", "a");
    let r = send(&s, Method::HEAD, url.as_str()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers();
    assert!(h.get("content-length").is_none(), "{h:?}");
    assert_eq!(h["content-type"], "application/octet-stream");
    assert_eq!(h["content-disposition"], "attachment; filename=a");
    assert!(h.contains_key("last-modified") && h.contains_key("cache-control"));
    let missing = s.file_url("alice", "tool", "1", "b");
    assert_eq!(
        send(&s, Method::HEAD, missing.as_str()).await.status(),
        StatusCode::NOT_FOUND
    );
}

async fn ranged(s: &TestServer, range: &str) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
    let r = s
        .http
        .get(s.file_url("alice", "tool", "1", "ten"))
        .header("Range", range)
        .send()
        .await
        .unwrap();
    let (st, h) = (r.status(), r.headers().clone());
    (st, h, r.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn range_requests_follow_go_serve_content() {
    let s = TestServer::start(&[]);
    assert_eq!(
        s.put("alice", "tool", "1", "ten", b"0123456789").await,
        StatusCode::CREATED
    );
    for (range, body, content_range) in [
        ("bytes=0-0", &b"0"[..], "bytes 0-0/10"),
        ("bytes=0-3", b"0123", "bytes 0-3/10"),
        ("bytes=9-9", b"9", "bytes 9-9/10"),
        ("bytes=5-", b"56789", "bytes 5-9/10"),
        ("bytes=-3", b"789", "bytes 7-9/10"),
        ("bytes=8-100", b"89", "bytes 8-9/10"),
        ("bytes=-100", b"0123456789", "bytes 0-9/10"),
    ] {
        let (st, h, got) = ranged(&s, range).await;
        assert_eq!(st, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(got, body, "{range}");
        assert_eq!(h["content-range"], content_range, "{range}");
        assert_eq!(h["content-length"], body.len().to_string().as_str());
    }
    for range in ["bytes=10-", "bytes=10-20", "bytes=100-"] {
        let (st, h, _) = ranged(&s, range).await;
        assert_eq!(st, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(h["content-range"], "bytes */10");
    }
    let (st, h, _) = ranged(&s, "bytes=5-2").await;
    assert_eq!(st, StatusCode::RANGE_NOT_SATISFIABLE);
    assert!(h.get("content-range").is_none());
    // A range that does not start with bytes= is invalid too.
    assert_eq!(
        ranged(&s, "lines=1-2").await.0,
        StatusCode::RANGE_NOT_SATISFIABLE
    );
    // Ranges adding up to more than the file: served whole.
    let (st, _, got) = ranged(&s, "bytes=0-8,1-9").await;
    assert_eq!((st, got.as_slice()), (StatusCode::OK, &b"0123456789"[..]));

    let (st, h, body) = ranged(&s, "bytes=0-1,4-5").await;
    assert_eq!(st, StatusCode::PARTIAL_CONTENT);
    let ct = h["content-type"].to_str().unwrap();
    let boundary = ct
        .strip_prefix("multipart/byteranges; boundary=")
        .expect(ct);
    assert_eq!(h["content-length"], body.len().to_string().as_str());
    let text = String::from_utf8(body).unwrap();
    let want = format!(
        "--{boundary}\r\nContent-Range: bytes 0-1/10\r\nContent-Type: application/octet-stream\r\n\r\n01\
         \r\n--{boundary}\r\nContent-Range: bytes 4-5/10\r\nContent-Type: application/octet-stream\r\n\r\n45\
         \r\n--{boundary}--\r\n"
    );
    assert_eq!(text, want);
    assert!(s.stats().await["file_get"].as_u64().unwrap() >= 10);
}

#[tokio::test]
async fn conditional_requests_use_the_upload_time() {
    let s = TestServer::start(&[]);
    assert_eq!(
        s.put("alice", "tool", "1", "ten", b"0123456789").await,
        StatusCode::CREATED
    );
    let url = s.file_url("alice", "tool", "1", "ten");
    let first = s.http.get(url.clone()).send().await.unwrap();
    let lm = first.headers()["last-modified"]
        .to_str()
        .unwrap()
        .to_string();
    let old = "Mon, 01 Jan 2001 00:00:00 GMT";
    let get = |h: &[(&str, &str)]| {
        let mut rb = s.http.get(url.clone());
        for (k, v) in h {
            rb = rb.header(*k, *v);
        }
        async move {
            let r = rb.send().await.unwrap();
            (
                r.status(),
                r.headers().clone(),
                r.bytes().await.unwrap().to_vec(),
            )
        }
    };
    let (st, h, body) = get(&[("If-Modified-Since", &lm)]).await;
    assert_eq!(st, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    assert_eq!(h["last-modified"], lm.as_str());
    assert_eq!(get(&[("If-Modified-Since", old)]).await.0, StatusCode::OK);
    assert_eq!(
        get(&[("If-Unmodified-Since", old)]).await.0,
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(get(&[("If-Unmodified-Since", &lm)]).await.0, StatusCode::OK);
    assert_eq!(
        get(&[("If-Match", "\"x\"")]).await.0,
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(
        get(&[("If-None-Match", "*")]).await.0,
        StatusCode::NOT_MODIFIED
    );
    // If-None-Match with a tag matches nothing (no ETag) and wins over IMS.
    assert_eq!(
        get(&[("If-None-Match", "\"x\""), ("If-Modified-Since", &lm)])
            .await
            .0,
        StatusCode::OK
    );
    let (st, _, body) = get(&[("Range", "bytes=0-1"), ("If-Range", &lm)]).await;
    assert_eq!(
        (st, body.as_slice()),
        (StatusCode::PARTIAL_CONTENT, &b"01"[..])
    );
    let (st, _, body) = get(&[("Range", "bytes=0-1"), ("If-Range", old)]).await;
    assert_eq!((st, body.len()), (StatusCode::OK, 10));
    let (st, _, body) = get(&[("Range", "bytes=0-1"), ("If-Range", "\"etag\"")]).await;
    assert_eq!((st, body.len()), (StatusCode::OK, 10));
}

#[tokio::test]
async fn form_bodies_like_gitea_and_forgejo() {
    for (forgejo, want) in [
        (false, StatusCode::INTERNAL_SERVER_ERROR),
        (true, StatusCode::BAD_REQUEST),
    ] {
        let s = TestServer::start(if forgejo { &["--forgejo"] } else { &[] });
        let r = s
            .http
            .put(s.file_url("alice", "tool", "1", "a"))
            .header("Authorization", s.auth())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("a=b")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want);
        assert_eq!(
            s.v1("api/v1/packages/alice/generic/tool/1").await.0,
            StatusCode::NOT_FOUND
        );
    }
    let s = TestServer::start(&[]);
    let body = "--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nnot me\r\n\
                --XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.bin\"\r\n\
                Content-Type: application/octet-stream\r\n\r\nfile part\r\n--XyZ--\r\n";
    let r = s
        .http
        .put(s.file_url("alice", "tool", "1", "a"))
        .header("Authorization", s.auth())
        .header("Content-Type", "multipart/form-data; boundary=XyZ")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(s.get("alice", "tool", "1", "a").await.1, b"file part");
}
