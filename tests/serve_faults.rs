//! `pkgfs serve`: the test hooks (faults, stats, blob corruption), the
//! `--serve-direct` redirect mode, and bad input that must never crash it.

mod common;

use std::time::{Duration, Instant};

use common::server::TestServer;
use reqwest::StatusCode;
use serde_json::json;
use sha2::Digest;

fn kib(n: usize) -> Vec<u8> {
    (0..n * 1024).map(|i| (i % 253) as u8).collect()
}

#[tokio::test]
async fn status_delay_and_reset() {
    let s = TestServer::start(&[]);
    assert_eq!(
        s.put("alice", "t", "1", "f", b"abc").await,
        StatusCode::CREATED
    );
    s.fault(json!({"kind": "status", "status": 503, "count": 1, "method": "get"}))
        .await;
    let r = s
        .http
        .get(s.file_url("alice", "t", "1", "f"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.text().await.unwrap(), "injected fault");
    assert_eq!(
        s.get("alice", "t", "1", "f").await.0,
        StatusCode::OK,
        "count 1 is used up"
    );

    // count 0: every matching request until reset; filters apply.
    s.fault(json!({"kind": "status", "status": 500, "path_contains": "/t/1/"}))
        .await;
    for _ in 0..3 {
        assert_eq!(
            s.get("alice", "t", "1", "f").await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    assert_eq!(
        s.put("alice", "u", "1", "f", b"x").await,
        StatusCode::CREATED
    );
    assert_eq!(s.stats().await["file_get"], 5, "hooks are not faulted");
    s.reset().await;
    assert_eq!(s.get("alice", "t", "1", "f").await.0, StatusCode::OK);
    let st = s.stats().await;
    assert_eq!(
        (st["requests"].as_u64(), st["file_get"].as_u64()),
        (Some(1), Some(1))
    );

    s.fault(json!({"kind": "delay", "delay_ms": 300, "count": 1}))
        .await;
    let t = Instant::now();
    assert_eq!(s.get("alice", "t", "1", "f").await.0, StatusCode::OK);
    assert!(t.elapsed() >= Duration::from_millis(300));
    // v1 requests are matched too.
    s.fault(json!({"kind": "status", "status": 502, "count": 1, "path_contains": "api/v1"}))
        .await;
    assert_eq!(s.v1("api/v1/user").await.0, StatusCode::BAD_GATEWAY);
    assert_eq!(s.v1("api/v1/user").await.0, StatusCode::OK);
}

#[tokio::test]
async fn drop_and_corrupt_bodies() {
    let s = TestServer::start(&[]);
    let data = kib(64);
    assert_eq!(
        s.put("alice", "t", "1", "f", &data).await,
        StatusCode::CREATED
    );

    s.fault(json!({"kind": "drop", "after_bytes": 1000, "count": 1}))
        .await;
    let answer = s
        .raw_bytes(b"GET /api/packages/alice/generic/t/1/f HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = String::from_utf8_lossy(&answer[..split]);
    let body = &answer[split + 4..];
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("content-length: 65536"), "{head}");
    assert_eq!(
        body.len(),
        1000,
        "headers, then 1000 bytes, then the connection is cut"
    );
    let r = s
        .http
        .get(s.file_url("alice", "t", "1", "f"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        data.as_slice(),
        "count 1 is used up"
    );

    s.fault(json!({"kind": "corrupt", "after_bytes": 5, "count": 1}))
        .await;
    let (_, got) = s.get("alice", "t", "1", "f").await;
    assert_eq!(got.len(), data.len());
    let diff: Vec<usize> = (0..got.len()).filter(|&i| got[i] != data[i]).collect();
    assert_eq!(diff, [5]);

    // A PUT dropped after 10 KiB of its body: no answer, nothing stored.
    s.fault(json!({"kind": "drop", "after_bytes": 10240, "method": "PUT", "count": 1}))
        .await;
    let r = s
        .http
        .put(s.file_url("alice", "t", "2", "f"))
        .header("Authorization", s.auth())
        .body(kib(256))
        .send()
        .await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(
        s.v1("api/v1/packages/alice/generic/t/2").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.put("alice", "t", "2", "f", b"ok").await,
        StatusCode::CREATED
    );
    let st = s.stats().await;
    assert_eq!(st["file_put"], 3);
}

#[tokio::test]
async fn corrupt_blob_changes_what_is_served() {
    let s = TestServer::start(&[]);
    let data = b"integrity matters".to_vec();
    assert_eq!(
        s.put("alice", "t", "1", "f", &data).await,
        StatusCode::CREATED
    );
    let sha = hex::encode(sha2::Sha256::digest(&data));
    let r = s
        .http
        .post(s.at("_pkgfs/test/corrupt-blob"))
        .json(&json!({ "sha256": sha }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (_, got) = s.get("alice", "t", "1", "f").await;
    assert_eq!(got.len(), data.len());
    assert_ne!(hex::encode(sha2::Sha256::digest(&got)), sha);
    let r = s
        .http
        .post(s.at("_pkgfs/test/corrupt-blob"))
        .json(&json!({ "sha256": "0".repeat(64) }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = s
        .http
        .post(s.at("_pkgfs/test/fault"))
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn hooks_are_off_by_default() {
    let s = TestServer::start_raw(&[], None);
    for path in [
        "_pkgfs/test/stats",
        "_pkgfs/test/reset",
        "_pkgfs/test/fault",
    ] {
        let r = s.http.get(s.at(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        let r = s.http.post(s.at(path)).body("{}").send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn serve_direct_redirects_to_a_signed_url() {
    let s = TestServer::start(&["--serve-direct"]);
    let direct = s.direct_url.clone().expect("direct on … line");
    assert_ne!(direct, s.url);
    let data = kib(10);
    assert_eq!(
        s.put("alice", "t", "1", "F.bin", &data).await,
        StatusCode::CREATED
    );
    let url = s.file_url("alice", "t", "1", "f.bin");
    let r = s
        .http
        .get(url.clone())
        .header("Authorization", s.auth())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with(&format!("{direct}blob/")),
        "{location}"
    );
    assert!(location.contains("response-content-disposition="));

    let plain = reqwest::Client::new();
    let r = plain.get(&location).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=F.bin"
    );
    assert!(r.headers().contains_key("last-modified"));
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    let r = plain
        .get(&location)
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[10..20]);
    let r = plain
        .get(&location)
        .header("Authorization", s.auth())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::BAD_REQUEST,
        "S3 refuses two auth mechanisms"
    );
    let r = plain.head(&location).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "signed for GET only");
    let tampered = location.replace("X-Pkgfs-Expires=", "X-Pkgfs-Expires=9");
    assert_eq!(
        plain.get(&tampered).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let cut = location.split("&X-Pkgfs-Signature").next().unwrap();
    assert_eq!(
        plain.get(cut).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );

    // HEAD is redirected to a URL signed for HEAD.
    let r = s
        .http
        .head(url.clone())
        .header("Authorization", s.auth())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let head_location = r.headers()["location"].to_str().unwrap().to_string();
    let r = plain.head(&head_location).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], "10240");

    // reqwest's default policy follows and drops Authorization across ports.
    let follow = reqwest::Client::new();
    let r = follow
        .get(url)
        .header("Authorization", s.auth())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().len(), data.len());
    let st = s.stats().await;
    assert_eq!(st["direct_get"], 6);
    assert_eq!(st["bytes_sent"], 10240 * 2 + 10);

    // Missing files are 404 on the registry, not redirected.
    let r = s
        .http
        .get(s.file_url("alice", "t", "1", "nope"))
        .header("Authorization", s.auth())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn forgejo_head_is_never_redirected() {
    let s = TestServer::start(&["--serve-direct", "--forgejo"]);
    assert_eq!(
        s.put("alice", "t", "1", "f", b"abc").await,
        StatusCode::CREATED
    );
    let r = s
        .http
        .head(s.file_url("alice", "t", "1", "f"))
        .header("Authorization", s.auth())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn bad_input_never_crashes_the_server() {
    let s = TestServer::start(&[]);
    assert_eq!(
        s.put("alice", "t", "1", "f", b"abc").await,
        StatusCode::CREATED
    );
    let huge = format!(
        "GET /api/packages/alice/generic/t/1/f HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let garbage_cl = format!(
        "PUT /api/packages/alice/generic/t/1/g HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\
         Content-Length: abc\r\nConnection: close\r\n\r\nabc",
        s.auth()
    );
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"GET /api/packages/alice/generic/t%zz/1/f HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), " 400 "),
        (b"GET /api/packages/alice/generic/t/1/%ff%fe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), " 404 "),
        (b"GET /api/packages/alice/generic/t/1/f% HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), " 400 "),
        (b"GET /api/packages/%00/generic/t/1/f HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), " 404 "),
        (b"GET /api/v1/packages/%ZZ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), " 400 "),
        (b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), " 404 "),
        (b"BLAH\r\n\r\n".to_vec(), " 400 "),
        (b"GET / HTTP/9.9\r\n\r\n".to_vec(), "HTTP/1.1 "),
        (huge.into_bytes(), " 431 "),
        (garbage_cl.into_bytes(), " 400 "),
    ];
    for (req, want) in cases {
        let answer = s.raw(&req).await;
        let first = answer.lines().next().unwrap_or("");
        assert!(
            first.contains(want),
            "{}: {first:?}",
            String::from_utf8_lossy(&req[..req.len().min(80)])
        );
    }
    // Connections that open and close, or send half a request line.
    let addr = s.base().socket_addrs(|| None).unwrap()[0];
    for bytes in [
        &b""[..],
        b"GET /api/pack",
        b"PUT /api/packages/alice/generic/t/1/h HTTP/1.1\r\n",
    ] {
        use tokio::io::AsyncWriteExt;
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(bytes).await.unwrap();
    }
    assert_eq!(s.get("alice", "t", "1", "f").await.1, b"abc");
    assert!(s.stderr_tail().lines().all(|l| !l.contains("panicked")));
}
