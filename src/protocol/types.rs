//! JSON bodies of `/api/v1` (PROTOCOL.md §json). Field names are exact.
//! Deserialisation is lenient (unknown fields ignored, most fields
//! defaulted) so that the client reads Gitea and Forgejo of any version;
//! serialisation is what `pkgfs serve` sends.

use serde::{Deserialize, Serialize};

/// A user or organisation as `/api/v1/user` and `/api/v1/users/{name}` return it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct User {
    pub id: i64,
    pub login: String,
    pub login_name: String,
    pub source_id: i64,
    pub full_name: String,
    pub email: String,
    pub avatar_url: String,
    pub html_url: String,
    pub language: String,
    pub is_admin: bool,
    pub last_login: String,
    pub created: String,
    pub restricted: bool,
    pub active: bool,
    pub prohibit_login: bool,
    pub location: String,
    pub website: String,
    pub description: String,
    /// `public`, `limited` or `private`.
    pub visibility: String,
    pub followers_count: i64,
    pub following_count: i64,
    pub starred_repos_count: i64,
}

/// An organisation as `/api/v1/orgs/{name}` and `/api/v1/user/orgs` return it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Organization {
    pub id: i64,
    pub name: String,
    /// Same value as `name`.
    pub username: String,
    pub full_name: String,
    pub email: String,
    pub avatar_url: String,
    pub description: String,
    pub website: String,
    pub location: String,
    pub visibility: String,
    pub repo_admin_change_team_access: bool,
}

/// One package *version* (`id` is the version id), PROTOCOL.md §json.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Package {
    pub id: i64,
    pub owner: User,
    pub repository: Option<serde_json::Value>,
    pub creator: User,
    #[serde(rename = "type")]
    pub package_type: String,
    pub name: String,
    pub version: String,
    pub html_url: String,
    /// RFC 3339 with whole seconds.
    pub created_at: String,
}

/// One file of a version (PROTOCOL.md §json). Reads `size` (Gitea ≥ 1.24) and `Size`
/// (older Gitea, Forgejo); serialises as `size` (the server rewrites the key
/// in its `--size-key Size` mode). `size` is `None` when the listing has
/// none: the client must not take that for an empty file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PackageFile {
    pub id: i64,
    #[serde(alias = "Size")]
    pub size: Option<i64>,
    pub name: String,
    pub md5: String,
    pub sha1: String,
    pub sha256: String,
    pub sha512: String,
}

/// Error body of `/api/v1`: `{"message": ..., "url": ...}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiError {
    pub message: String,
    pub url: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_file_accepts_both_size_spellings() {
        let new: PackageFile = serde_json::from_str(r#"{"id":1,"size":5,"name":"a"}"#).unwrap();
        let old: PackageFile = serde_json::from_str(r#"{"id":1,"Size":5,"name":"a"}"#).unwrap();
        assert_eq!(new.size, Some(5));
        assert_eq!(old.size, Some(5));
        let none: PackageFile = serde_json::from_str(r#"{"id":1,"name":"a"}"#).unwrap();
        assert_eq!(none.size, None);
    }

    #[test]
    fn package_type_field_is_named_type() {
        let p = Package {
            package_type: "generic".into(),
            ..Default::default()
        };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["type"], "generic");
        assert!(v["repository"].is_null());
    }
}
