//! The wire format shared by the registry client (`crate::registry`) and the
//! test registry (`crate::server`): JSON types, the validation rules for names,
//! versions and filenames, and the URL paths. One source of truth, so client
//! and server cannot drift apart. The protocol facts and the rules both sides
//! follow are in `src/protocol/PROTOCOL.md`, cited as `PROTOCOL.md §name`.

pub mod paths;
pub mod types;
pub mod validate;

pub use types::{ApiError, Organization, Package, PackageFile, User};
pub use validate::{validate_filename, validate_package_name, validate_version, Invalid};

/// The only package type pkgfs deals with.
pub const PACKAGE_TYPE: &str = "generic";

/// `WWW-Authenticate` value Gitea sends with 401 on `/api/packages`.
pub const WWW_AUTHENTICATE: &str = "Basic realm=\"Gitea Package API\"";

/// Default and maximum page sizes of `/api/v1` (Gitea `DEFAULT_PAGING_NUM`
/// and `MAX_RESPONSE_ITEMS`).
pub const DEFAULT_PAGE_LIMIT: u32 = 30;
pub const MAX_PAGE_LIMIT: u32 = 50;

/// Longest path component pkgfs will send (VARCHAR(255) on MySQL/PostgreSQL).
pub const MAX_COMPONENT_LEN: usize = 255;
