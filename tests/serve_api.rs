//! `pkgfs serve` at the HTTP level: the registry protocol of
//! registry-api.md §4 and the v1 API of §5.

mod common;

use common::server::TestServer;
use reqwest::StatusCode;

#[tokio::test]
async fn put_get_head_delete_roundtrip() {
    let s = TestServer::start(&[]);
    assert_eq!(
        s.put("alice", "tool", "1.0", "a.bin", b"hello").await,
        StatusCode::CREATED
    );
    let (st, body) = s.get("alice", "tool", "1.0", "a.bin").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body, b"hello");
    let head = s
        .http
        .head(s.file_url("alice", "tool", "1.0", "a.bin"))
        .header("Authorization", s.auth())
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-length"], "5");
    let del = s
        .http
        .delete(s.file_url("alice", "tool", "1.0", "a.bin"))
        .header("Authorization", s.auth())
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        s.get("alice", "tool", "1.0", "a.bin").await.0,
        StatusCode::NOT_FOUND
    );
    let st = s.stats().await;
    assert_eq!(st["file_put"], 1);
    assert_eq!(st["file_get"], 2);
    assert_eq!(st["file_head"], 1);
    assert_eq!(st["file_delete"], 1);
    assert_eq!(st["bytes_sent"], 5);
}
