//! pkgfs: mount a Gitea or Forgejo generic package registry as a directory
//! tree (`MOUNT/<owner>/<package>/<version>/<file>`), and `pkgfs serve`, a
//! Gitea-compatible generic registry for tests, demos and offline use.
//!
//! Layers, from the wire up:
//! - [`protocol`]: JSON types, validation rules and URL paths shared by
//!   client and server;
//! - [`server`]: `pkgfs serve`.

pub mod cache;
pub mod fs;
pub mod fuse;
pub mod mount;
pub mod protocol;
pub mod registry;
pub mod server;
