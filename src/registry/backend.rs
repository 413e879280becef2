//! The seam between the filesystem and a forge: [`Registry`] is everything
//! `crate::fs` asks of a package registry, in the filesystem's terms
//! (owners, packages, versions, files, byte ranges), with the errors of
//! `registry::Error`. `Client` (Gitea and Forgejo) is one implementation; another
//! forge (GitLab's generic packages) is another, and `crate::fs` does not
//! change. The methods return boxed futures so the filesystem can hold the
//! registry as a trait object (`Arc<dyn Registry>`).

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::Stream;

use super::{Client, Download, FileEntry, FileRef, PackageVersion, Result, Sent};

/// A request body: the bytes of an upload as they become available.
pub type Body = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send + 'static>>;

/// What the filesystem needs from a package registry.
pub trait Registry: Send + Sync {
    /// The bound on one operation, retries included; also the longest a
    /// download may stall.
    fn timeout(&self) -> Duration;

    /// Organisations the token's user belongs to (their login names).
    fn user_orgs(&self) -> BoxFuture<'_, Result<Vec<String>>>;

    /// Whether an owner (user or organisation) exists and is visible.
    fn owner_exists<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<bool>>;

    /// Every package version of an owner, one entry per version.
    fn list_owner_packages<'a>(
        &'a self,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PackageVersion>>>;

    /// Every version of one package; `NotFound` when it has none.
    fn list_versions<'a>(
        &'a self,
        owner: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PackageVersion>>>;

    /// The files of a version, with sizes and hashes checked.
    fn list_files<'a>(
        &'a self,
        owner: &'a str,
        name: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<Vec<FileEntry>>>;

    /// Bytes `start..end` (and on) of a file whose listed size is `size`.
    fn download<'a>(
        &'a self,
        f: &'a FileRef,
        start: u64,
        end: u64,
        size: u64,
    ) -> BoxFuture<'a, Result<Download>>;

    /// Publishes a file of `len` bytes; success only when the registry
    /// confirmed it after the whole body.
    fn upload<'a>(&'a self, f: &'a FileRef, len: u64, body: Body) -> BoxFuture<'a, Result<Sent>>;

    /// Publishes a file whose length is known only when `body` ends.
    fn upload_stream<'a>(&'a self, f: &'a FileRef, body: Body) -> BoxFuture<'a, Result<Sent>>;

    /// Deletes one file (`NotFound` if absent).
    fn delete_file<'a>(&'a self, f: &'a FileRef) -> BoxFuture<'a, Result<()>>;

    /// Deletes a whole version.
    fn delete_version<'a>(
        &'a self,
        owner: &'a str,
        name: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<()>>;
}

impl Registry for Client {
    fn timeout(&self) -> Duration {
        Client::timeout(self)
    }

    fn user_orgs(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            let orgs = Client::user_orgs(self).await?;
            Ok(orgs.into_iter().map(|o| o.username).collect())
        })
    }

    fn owner_exists<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(Client::owner_exists(self, owner))
    }

    fn list_owner_packages<'a>(
        &'a self,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PackageVersion>>> {
        Box::pin(Client::list_owner_packages(self, owner))
    }

    fn list_versions<'a>(
        &'a self,
        owner: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PackageVersion>>> {
        Box::pin(Client::list_versions(self, owner, name))
    }

    fn list_files<'a>(
        &'a self,
        owner: &'a str,
        name: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<Vec<FileEntry>>> {
        Box::pin(Client::list_files(self, owner, name, version))
    }

    fn download<'a>(
        &'a self,
        f: &'a FileRef,
        start: u64,
        end: u64,
        size: u64,
    ) -> BoxFuture<'a, Result<Download>> {
        Box::pin(Client::download(self, f, start, end, size))
    }

    fn upload<'a>(&'a self, f: &'a FileRef, len: u64, body: Body) -> BoxFuture<'a, Result<Sent>> {
        Box::pin(Client::upload(self, f, len, body))
    }

    fn upload_stream<'a>(&'a self, f: &'a FileRef, body: Body) -> BoxFuture<'a, Result<Sent>> {
        Box::pin(Client::upload_stream(self, f, body))
    }

    fn delete_file<'a>(&'a self, f: &'a FileRef) -> BoxFuture<'a, Result<()>> {
        Box::pin(Client::delete_file(self, f))
    }

    fn delete_version<'a>(
        &'a self,
        owner: &'a str,
        name: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(Client::delete_version(self, owner, name, version))
    }
}
