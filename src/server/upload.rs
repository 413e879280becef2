//! Receiving an upload body: streamed to a temp file under `DATA/tmp/`
//! while MD5, SHA-1, SHA-256 and SHA-512 are computed, so memory stays flat
//! whatever the size. The temp file deletes itself unless the store renames
//! it into place. A `multipart/form-data` body is accepted and its first
//! file part used, as Gitea does (PROTOCOL.md §upload); a form-encoded body
//! is refused.

use std::io::Write;
use std::path::Path;

use axum::body::Body;
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use sha2::Digest;
use tempfile::{NamedTempFile, TempPath};

use super::store::Blob;

/// An upload written to disk, not yet stored.
#[derive(Debug)]
pub struct Uploaded {
    pub file: TempPath,
    pub blob: Blob,
}

/// Why an upload could not be received.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The body could not be parsed as a form (Gitea 500, Forgejo 400).
    #[error("{0}")]
    Form(String),
    /// The body ended early or could not be read (the client is gone).
    #[error("reading the request body: {0}")]
    Body(String),
    /// The server could not write the temp file.
    #[error("writing the upload: {0}")]
    Io(String),
}

/// Reads the request body into a temp file in `tmp_dir`.
pub async fn receive(
    body: Body,
    content_type: Option<&str>,
    tmp_dir: &Path,
) -> Result<Uploaded, UploadError> {
    let ct = content_type.unwrap_or("");
    let lower = ct.to_ascii_lowercase();
    if lower.starts_with("application/x-www-form-urlencoded") {
        return Err(UploadError::Form(
            "request Content-Type isn't multipart/form-data".into(),
        ));
    }
    if !lower.starts_with("multipart/form-data") {
        let stream = body.into_data_stream().map_err(|e| e.to_string());
        return write_stream(stream, tmp_dir).await;
    }
    let boundary = multer::parse_boundary(ct).map_err(|e| UploadError::Form(e.to_string()))?;
    let mut form = multer::Multipart::new(body.into_data_stream(), boundary);
    loop {
        let field = form
            .next_field()
            .await
            .map_err(|e| UploadError::Form(e.to_string()))?;
        let Some(field) = field else {
            return Err(UploadError::Form("http: no such file".into()));
        };
        if field.file_name().is_some_and(|n| !n.is_empty()) {
            return write_stream(field.map_err(|e| e.to_string()), tmp_dir).await;
        }
    }
}

/// The four digests, split in two halves of similar cost so that a second
/// thread can compute one half while the writer computes the other. SHA-2
/// comes from `ring` (assembly; about twice the speed of `sha2` on CPUs
/// without SHA extensions).
struct FirstHalf {
    sha256: ring::digest::Context,
    md5: md5::Md5,
    size: u64,
}

impl Default for FirstHalf {
    fn default() -> Self {
        FirstHalf {
            sha256: ring::digest::Context::new(&ring::digest::SHA256),
            md5: md5::Md5::default(),
            size: 0,
        }
    }
}

struct SecondHalf {
    sha1: sha1::Sha1,
    sha512: ring::digest::Context,
}

impl Default for SecondHalf {
    fn default() -> Self {
        SecondHalf {
            sha1: sha1::Sha1::default(),
            sha512: ring::digest::Context::new(&ring::digest::SHA512),
        }
    }
}

fn finish(a: FirstHalf, b: SecondHalf) -> Blob {
    Blob {
        sha256: hex::encode(a.sha256.finish()),
        size: a.size,
        md5: hex::encode(a.md5.finalize()),
        sha1: hex::encode(b.sha1.finalize()),
        sha512: hex::encode(b.sha512.finish()),
    }
}

/// Writes and hashes the chunks from `rx`: SHA-256 and MD5 on this thread,
/// SHA-1 and SHA-512 on a helper thread fed through a small channel.
fn write_and_hash(
    file: NamedTempFile,
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> std::io::Result<(NamedTempFile, Blob)> {
    let (tx2, rx2) = std::sync::mpsc::sync_channel::<Bytes>(8);
    std::thread::scope(|scope| {
        let helper = scope.spawn(move || {
            let mut b = SecondHalf::default();
            for chunk in rx2 {
                b.sha1.update(&chunk);
                b.sha512.update(&chunk);
            }
            b
        });
        let mut a = FirstHalf::default();
        let mut out = std::io::BufWriter::with_capacity(256 * 1024, file);
        let mut result = Ok(());
        while let Some(chunk) = rx.blocking_recv() {
            if tx2.send(chunk.clone()).is_err() {
                break;
            }
            a.sha256.update(&chunk);
            a.md5.update(&chunk);
            a.size += chunk.len() as u64;
            if let Err(e) = out.write_all(&chunk) {
                result = Err(e);
                break;
            }
        }
        drop(tx2);
        let b = helper
            .join()
            .map_err(|_| std::io::Error::other("hashing thread failed"))?;
        result?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.as_file().sync_data()?;
        Ok((file, finish(a, b)))
    })
}

/// Hashing and writing run on blocking threads fed through small
/// bounded channels: the network side never waits on the disk for long and
/// never holds more than a few chunks.
async fn write_stream<S>(mut stream: S, tmp_dir: &Path) -> Result<Uploaded, UploadError>
where
    S: Stream<Item = Result<Bytes, String>> + Unpin,
{
    let file = NamedTempFile::new_in(tmp_dir).map_err(|e| UploadError::Io(e.to_string()))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let writer = tokio::task::spawn_blocking(move || write_and_hash(file, rx));
    let mut failure = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(data) => {
                if tx.send(data).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let written = writer.await.map_err(|e| UploadError::Io(e.to_string()))?;
    if let Some(e) = failure {
        return Err(UploadError::Body(e));
    }
    let (file, blob) = written.map_err(|e| UploadError::Io(e.to_string()))?;
    Ok(Uploaded {
        file: file.into_temp_path(),
        blob,
    })
}
