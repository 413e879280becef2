//! `pkgfs serve` storage: persistence across restarts, crash and
//! truncated-upload cleanup, concurrent creation, quotas, and flat memory
//! for a 2 GiB upload.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::server::TestServer;
use reqwest::StatusCode;

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// Waits up to 5 s for `dir` to hold no file.
async fn wait_empty(dir: &std::path::Path) {
    for _ in 0..100 {
        if files_under(dir).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} still holds {:?}", dir.display(), files_under(dir));
}

#[tokio::test]
async fn restart_keeps_everything() {
    let mut s = TestServer::start(&[]);
    assert_eq!(
        s.put("alice", "Tool", "1.0", "a.bin", b"one").await,
        StatusCode::CREATED
    );
    assert_eq!(
        s.put("alice", "Tool", "1.0", "b.bin", b"two").await,
        StatusCode::CREATED
    );
    let (_, before) = s.v1("api/v1/packages/alice/generic/tool/1.0/files").await;
    let (_, version_before) = s.v1("api/v1/packages/alice/generic/tool/1.0").await;
    let url_before = s.url.clone();
    s.restart();
    assert_eq!(s.url, url_before, "restart keeps the port");
    assert_eq!(s.get("alice", "tool", "1.0", "A.BIN").await.1, b"one");
    assert_eq!(
        s.v1("api/v1/packages/alice/generic/tool/1.0/files").await.1,
        before
    );
    assert_eq!(
        s.v1("api/v1/packages/alice/generic/tool/1.0").await.1,
        version_before
    );
    assert_eq!(
        s.put("alice", "tool", "1.0", "a.bin", b"x").await,
        StatusCode::CONFLICT
    );
    // Ids keep growing after a delete and a restart (never reused).
    assert_eq!(
        s.put("alice", "tool", "2.0", "c", b"c").await,
        StatusCode::CREATED
    );
    let (_, v2) = s.v1("api/v1/packages/alice/generic/tool/2.0").await;
    assert!(v2["id"].as_i64() > version_before["id"].as_i64());
}

#[tokio::test]
async fn sigterm_stops_cleanly() {
    let mut s = TestServer::start(&[]);
    assert_eq!(
        s.put("alice", "tool", "1", "a", b"x").await,
        StatusCode::CREATED
    );
    let status = s.terminate();
    assert!(status.success(), "{status:?}");
    assert!(s.stderr_tail().contains("shutting down"));
}

#[tokio::test]
async fn truncated_upload_leaves_nothing() {
    let s = TestServer::start(&[]);
    let mut req = format!(
        "PUT /api/packages/alice/generic/tool/1/f HTTP/1.1\r\nHost: x\r\n\
         Authorization: {}\r\nContent-Length: 100000\r\n\r\n",
        s.auth()
    )
    .into_bytes();
    req.extend(std::iter::repeat_n(b'z', 5000));
    {
        use tokio::io::AsyncWriteExt;
        let addr = s.base().socket_addrs(|| None).unwrap()[0];
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(&req).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    } // connection closed mid-body
    wait_empty(&s.data.join("tmp")).await;
    assert!(files_under(&s.data.join("blobs")).is_empty());
    let (st, _) = s.v1("api/v1/packages/alice/generic/tool/1").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(s.v1("api/v1/packages/alice").await.1, serde_json::json!([]));
    // The server is still fine.
    assert_eq!(
        s.put("alice", "tool", "1", "f", b"ok").await,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn crash_mid_upload_and_stray_files_are_cleaned_at_start() {
    let mut s = TestServer::start(&[]);
    assert_eq!(
        s.put("alice", "keep", "1", "f", b"kept").await,
        StatusCode::CREATED
    );
    // An upload that stalls after 1 MiB, then the server is killed (-9).
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    tx.send(Ok(Bytes::from(vec![7u8; 1 << 20]))).await.unwrap();
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let put = s
        .http
        .put(s.file_url("alice", "tool", "1", "big"))
        .header("Authorization", s.auth())
        .body(body)
        .send();
    let put = tokio::spawn(put);
    let tmp = s.data.join("tmp");
    for _ in 0..100 {
        if !files_under(&tmp).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !files_under(&tmp).is_empty(),
        "the upload reached the temp dir"
    );
    s.stop();
    drop(tx);
    let _ = put.await;
    // Leftovers a crash could leave: a blob file without row, a blob row
    // without file reference.
    let stray = s.data.join("blobs/ab").join("c".repeat(62));
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, b"stray").unwrap();
    {
        let db = rusqlite::Connection::open(s.data.join("pkgfs.db")).unwrap();
        db.execute(
            "INSERT INTO blobs (sha256, size, md5, sha1, sha512, created_unix)
             VALUES (?1, 1, '', '', '', 0)",
            ["d".repeat(64)],
        )
        .unwrap();
    }
    let orphan_row_file = s.data.join("blobs/dd").join("d".repeat(62));
    std::fs::create_dir_all(orphan_row_file.parent().unwrap()).unwrap();
    std::fs::write(&orphan_row_file, b"d").unwrap();
    s.restart();
    assert!(files_under(&tmp).is_empty());
    assert!(!stray.exists() && !orphan_row_file.exists());
    assert_eq!(
        files_under(&s.data.join("blobs")).len(),
        1,
        "only the kept blob"
    );
    assert_eq!(
        s.v1("api/v1/packages/alice/generic/tool/1").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(s.get("alice", "keep", "1", "f").await.1, b"kept");
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn concurrent_uploads_of_the_same_new_file() {
    let s = TestServer::start(&[]);
    let mut tasks = Vec::new();
    for i in 0..16u8 {
        let rb = s
            .http
            .put(s.file_url("alice", "race", "1", "same.bin"))
            .header("Authorization", s.auth())
            .body(vec![i; 4096]);
        tasks.push(tokio::spawn(
            async move { rb.send().await.unwrap().status() },
        ));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(created, 1);
    // Different files into one new version: all succeed.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let rb = s
            .http
            .put(s.file_url("alice", "race2", "1", &format!("f{i}")))
            .header("Authorization", s.auth())
            .body(format!("{i}"));
        tasks.push(tokio::spawn(
            async move { rb.send().await.unwrap().status() },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::CREATED);
    }
    let (_, files) = s.v1("api/v1/packages/alice/generic/race2/1/files").await;
    assert_eq!(files.as_array().unwrap().len(), 16);
    let (_, list) = s.v1("api/v1/packages/alice/generic/race2").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "one version, not 16");
    wait_empty(&s.data.join("tmp")).await;
}

#[tokio::test]
async fn quotas_answer_403_and_spare_admins() {
    let s = TestServer::start(&["--max-file-size", "10", "--max-owner-count", "2"]);
    let r = s
        .http
        .put(s.file_url("alice", "q", "1", "big"))
        .header("Authorization", s.auth())
        .body(vec![0u8; 11])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        r.text().await.unwrap(),
        "maximum allowed package type size exceeded"
    );
    assert_eq!(
        s.v1("api/v1/packages/alice/generic/q/1").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.put("alice", "q", "1", "a", &[b'x'; 10]).await,
        StatusCode::CREATED
    );
    assert_eq!(
        s.put("alice", "q", "2", "a", b"x").await,
        StatusCode::CREATED
    );
    let r = s
        .http
        .put(s.file_url("alice", "q", "3", "a"))
        .header("Authorization", s.auth())
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        r.text().await.unwrap(),
        "maximum allowed package count exceeded"
    );
    assert_eq!(
        s.put("alice", "q", "2", "b", b"x").await,
        StatusCode::CREATED,
        "existing version: no count check"
    );
    wait_empty(&s.data.join("tmp")).await;

    let s = TestServer::start(&["--max-owner-size", "20"]);
    assert_eq!(
        s.put("alice", "q", "1", "a", &[1; 15]).await,
        StatusCode::CREATED
    );
    let r = s
        .http
        .put(s.file_url("alice", "q", "1", "b"))
        .header("Authorization", s.auth())
        .body(vec![2u8; 6])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        r.text().await.unwrap(),
        "maximum allowed package storage quota exceeded"
    );
    assert_eq!(
        s.put("alice", "q", "1", "b", &[2; 5]).await,
        StatusCode::CREATED
    );

    let cfg = r#"
        [[users]]
        name = "root"
        admin = true
        [[users.tokens]]
        value = "root-token"
    "#;
    let s =
        TestServer::start_with_config(cfg, &["--max-file-size", "1KiB", "--max-owner-count", "1"]);
    for v in ["1", "2"] {
        let r = s
            .http
            .put(s.file_url("root", "q", v, "a"))
            .header("Authorization", "token root-token")
            .body(vec![0u8; 4096])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "admins are exempt");
    }
}

#[tokio::test]
async fn bad_sizes_are_refused_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pkgfs"))
        .args(["serve", "--data", "/nonexistent", "--max-file-size", "lots"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max-file-size"));
}
