//! `pkgfs serve` with a 2 GiB upload: the body is streamed from a
//! generator (never a 2 GiB buffer) and the server's peak RSS, read from
//! /proc, stays under 64 MiB. Its own test binary, so that it runs alone.

mod common;

use bytes::Bytes;
use common::server::TestServer;
use futures_util::StreamExt;
use reqwest::StatusCode;

#[tokio::test]
async fn two_gib_upload_keeps_memory_flat() {
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 2048; // 2 GiB
    let s = TestServer::start(&[]);
    let base = Bytes::from((0..CHUNK).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let stream = futures_util::stream::iter(0..CHUNKS).map(move |i| {
        let mut chunk = base.to_vec();
        chunk[..8].copy_from_slice(&(i as u64).to_le_bytes());
        Ok::<_, std::io::Error>(Bytes::from(chunk))
    });
    let r = s
        .http
        .put(s.file_url("alice", "huge", "1", "2g.bin"))
        .header("Authorization", s.auth())
        .header("Content-Length", (CHUNK * CHUNKS).to_string())
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let rss = s.peak_rss_kib();
    assert!(rss < 64 * 1024, "peak RSS {rss} KiB");
    let (_, files) = s.v1("api/v1/packages/alice/generic/huge/1/files").await;
    assert_eq!(files[0]["size"], (CHUNK * CHUNKS) as u64);
    // Precomputed (the content is deterministic): saves the client from
    // hashing 2 GiB on the core the server needs.
    assert_eq!(
        files[0]["sha256"],
        "4cb595fcce145cb70a845f9e02b22a8e36d09f5cbe83f42a046a5744b7d84ab3"
    );
    // A ranged read at the far end.
    let r = s
        .http
        .get(s.file_url("alice", "huge", "1", "2g.bin"))
        .header("Range", format!("bytes={}-", CHUNK * CHUNKS - 3))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    let tail = r.bytes().await.unwrap();
    let want: Vec<u8> = (CHUNK - 3..CHUNK).map(|i| (i % 251) as u8).collect();
    assert_eq!(tail.as_ref(), want.as_slice());
    eprintln!("2 GiB upload: server peak RSS {rss} KiB");
}
