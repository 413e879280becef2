//! pkgfs: mount a Gitea or Forgejo generic package registry as a directory
//! tree (`MOUNT/<owner>/<package>/<version>/<file>`), and `pkgfs serve`, a
//! Gitea-compatible generic registry for tests, demos and offline use.
//!
//! Layers, from the wire up:
//! - [`protocol`]: JSON types, name rules and URL paths shared by client and
//!   server, and `PROTOCOL.md`, the facts both follow;
//! - [`registry`]: the client side of the protocol behind one trait
//!   (`Registry`): typed requests, pagination, auth, retries, errors;
//! - [`cache`]: the content-addressed, bounded, LRU cache on disk;
//! - [`fs`]: the filesystem logic, plain async Rust without FUSE types;
//! - [`fuse`]: the thin kernel adapter; [`mount`]: `pkgfs mount`;
//! - [`server`]: `pkgfs serve`, which shares only `protocol` with the rest.

pub mod cache;
pub mod fs;
pub mod fuse;
pub mod mount;
pub mod protocol;
pub mod registry;
pub mod server;

/// Parses a size option: `512MiB`, `10GiB`, `1G`, `4096`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("invalid size {s:?}: {e}"))
}
