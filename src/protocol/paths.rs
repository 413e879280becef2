//! URL paths of the registry. Every segment is pushed through
//! `url::PathSegmentsMut::push`, which percent-encodes it (space, `#`, `%`,
//! `?`, `/` …): never build these URLs by string concatenation.

use url::Url;

use super::PACKAGE_TYPE;

fn with_segments(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    {
        let mut path = url
            .path_segments_mut()
            .expect("registry base URL is http(s), never cannot-be-a-base");
        path.pop_if_empty();
        for s in segments {
            path.push(s);
        }
    }
    url
}

/// `/api/packages/{owner}/generic/{name}/{version}/{file}`: GET, HEAD, PUT, DELETE.
pub fn file_url(base: &Url, owner: &str, name: &str, version: &str, file: &str) -> Url {
    with_segments(
        base,
        &["api", "packages", owner, PACKAGE_TYPE, name, version, file],
    )
}

/// `/api/packages/{owner}/generic/{name}/{version}`: DELETE of a version.
pub fn version_url(base: &Url, owner: &str, name: &str, version: &str) -> Url {
    with_segments(
        base,
        &["api", "packages", owner, PACKAGE_TYPE, name, version],
    )
}

/// `/api/v1/packages/{owner}`: list packages (one entry per version).
pub fn v1_packages_url(base: &Url, owner: &str) -> Url {
    with_segments(base, &["api", "v1", "packages", owner])
}

/// `/api/v1/packages/{owner}/generic/{name}`: list versions (Gitea ≥ 1.24).
pub fn v1_versions_url(base: &Url, owner: &str, name: &str) -> Url {
    with_segments(base, &["api", "v1", "packages", owner, PACKAGE_TYPE, name])
}

/// `/api/v1/packages/{owner}/generic/{name}/{version}/files`.
pub fn v1_files_url(base: &Url, owner: &str, name: &str, version: &str) -> Url {
    with_segments(
        base,
        &[
            "api",
            "v1",
            "packages",
            owner,
            PACKAGE_TYPE,
            name,
            version,
            "files",
        ],
    )
}

/// `/api/v1/user`.
pub fn v1_user_url(base: &Url) -> Url {
    with_segments(base, &["api", "v1", "user"])
}

/// `/api/v1/user/orgs`.
pub fn v1_user_orgs_url(base: &Url) -> Url {
    with_segments(base, &["api", "v1", "user", "orgs"])
}

/// `/api/v1/users/{name}`: works for organisations too.
pub fn v1_users_url(base: &Url, name: &str) -> Url {
    with_segments(base, &["api", "v1", "users", name])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        let base = Url::parse("http://127.0.0.1:3000/").unwrap();
        let u = file_url(&base, "alice", "tool", "1.0 rc/1", "a#b%c?.bin");
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:3000/api/packages/alice/generic/tool/1.0%20rc%2F1/a%23b%25c%3F.bin"
        );
    }

    #[test]
    fn base_with_sub_path_is_kept() {
        let base = Url::parse("https://example.com/gitea/").unwrap();
        assert_eq!(
            v1_files_url(&base, "o", "n", "v").as_str(),
            "https://example.com/gitea/api/v1/packages/o/generic/n/v/files"
        );
    }
}
