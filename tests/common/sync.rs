//! Blocking wrappers around `TestServer` for the mount tests, which drive
//! the filesystem with blocking syscalls from plain `#[test]` functions.

use std::future::Future;

use serde_json::Value;

use super::server::TestServer;

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("test runtime");
}

/// Runs a future to completion on this thread's runtime.
pub fn block<F: Future>(f: F) -> F::Output {
    RT.with(|rt| rt.block_on(f))
}

impl TestServer {
    /// Uploads as the default user and asserts 201.
    pub fn put_ok(&self, owner: &str, name: &str, version: &str, file: &str, bytes: &[u8]) {
        let s = block(self.put(owner, name, version, file, bytes));
        assert_eq!(s.as_u16(), 201, "PUT {owner}/{name}/{version}/{file}");
    }

    /// Uploads with another user's token and asserts 201.
    pub fn put_with_token(
        &self,
        token: &str,
        owner: &str,
        name: &str,
        version: &str,
        file: &str,
        bytes: &[u8],
    ) {
        let s = block(
            self.http
                .put(self.file_url(owner, name, version, file))
                .header("Authorization", format!("token {token}"))
                .body(bytes.to_vec())
                .send(),
        )
        .expect("PUT")
        .status();
        assert_eq!(s.as_u16(), 201, "PUT {owner}/{name}/{version}/{file}");
    }

    /// The registry's bytes of a file, `None` on 404.
    pub fn get_opt(&self, owner: &str, name: &str, version: &str, file: &str) -> Option<Vec<u8>> {
        let (status, body) = block(self.get(owner, name, version, file));
        match status.as_u16() {
            200 => Some(body),
            404 => None,
            s => panic!("GET {owner}/{name}/{version}/{file}: {s}"),
        }
    }

    /// The v1 file list of a version (empty when the version is missing).
    pub fn files(&self, owner: &str, name: &str, version: &str) -> Vec<Value> {
        let (status, body) = block(self.v1(&format!(
            "api/v1/packages/{owner}/generic/{name}/{version}/files"
        )));
        if status.as_u16() == 404 {
            return Vec::new();
        }
        body.as_array().cloned().unwrap_or_default()
    }

    pub fn stats_now(&self) -> Value {
        block(self.stats())
    }

    pub fn reset_now(&self) {
        block(self.reset())
    }

    pub fn fault_now(&self, spec: Value) {
        block(self.fault(spec))
    }

    /// Deletes a file as the default user and asserts 204.
    pub fn delete_ok(&self, owner: &str, name: &str, version: &str, file: &str) {
        let s = block(
            self.http
                .delete(self.file_url(owner, name, version, file))
                .header("Authorization", self.auth())
                .send(),
        )
        .expect("DELETE")
        .status();
        assert_eq!(s.as_u16(), 204, "DELETE {owner}/{name}/{version}/{file}");
    }

    /// Inverts a byte of a stored blob.
    pub fn corrupt_blob(&self, sha256: &str) {
        let s = block(
            self.http
                .post(self.at("_pkgfs/test/corrupt-blob"))
                .json(&serde_json::json!({ "sha256": sha256 }))
                .send(),
        )
        .expect("corrupt-blob")
        .status();
        assert!(s.is_success(), "corrupt-blob: {s}");
    }
}
