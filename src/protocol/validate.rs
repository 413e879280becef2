//! The validation rules Gitea (≥ 1.22) applies on PUT, PROTOCOL.md §names,
//! plus the client's own limits (same section): no `/`, at most 255 bytes.
//! The server uses the Gitea rules; the filesystem uses them too so that an
//! invalid name fails locally with EINVAL and no request is ever sent.

use std::sync::LazyLock;

use regex::Regex;

/// Why a name was refused. `Display` gives Gitea's exact 400 body text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("invalid package name")]
    PackageName,
    #[error("invalid package version")]
    Version,
    #[error("invalid filename")]
    Filename,
}

static NAME_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\A[-_+.0-9A-Za-z]+\z").expect("static regex"));
static FILENAME_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\A[-_+=:;.()\[\]{}~!@#$%^& 0-9A-Za-z]+\z").expect("static regex")
});

/// Whether `name` can be an owner (a user or organisation login):
/// alphanumerics, `-`, `_` and `.`, not `.` or `..` (PROTOCOL.md §names).
pub fn owner_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Package name: `\A[-_+.\w]+\z` (ASCII `\w`), a one-character name must be
/// a letter or digit, and `..` is refused.
pub fn validate_package_name(name: &str) -> Result<(), Invalid> {
    let ok = NAME_RE.is_match(name)
        && name != ".."
        && (name.len() != 1 || name.chars().all(|c| c.is_ascii_alphanumeric()));
    ok.then_some(()).ok_or(Invalid::PackageName)
}

/// Filename: `\A[-_+=:;.()\[\]{}~!@#$%^& \w]+\z`, no surrounding whitespace,
/// not `.` or `..`.
pub fn validate_filename(name: &str) -> Result<(), Invalid> {
    let ok = FILENAME_RE.is_match(name) && name.trim() == name && name != "." && name != "..";
    ok.then_some(()).ok_or(Invalid::Filename)
}

/// Version: non-empty and no leading or trailing (Unicode) whitespace.
pub fn validate_version(version: &str) -> Result<(), Invalid> {
    let ok = !version.is_empty() && version.trim() == version;
    ok.then_some(()).ok_or(Invalid::Version)
}

/// The client's stricter rule for a version it creates or shows: the Gitea
/// rule plus no `/`, no control character (the URL library would drop tabs
/// and newlines), not `.`/`..`, and at most 255 bytes (PROTOCOL.md
/// §names).
pub fn client_version_ok(version: &str) -> bool {
    validate_version(version).is_ok()
        && !version.contains('/')
        && !version.chars().any(char::is_control)
        && version.len() <= super::MAX_COMPONENT_LEN
        && version != "."
        && version != ".."
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names() {
        for ok in ["tool", "a", "7", "my-pkg_1.0+x", "A.B"] {
            assert_eq!(validate_package_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "_", ".", "..", "a/b", "a b", "ä", "a%b"] {
            assert_eq!(
                validate_package_name(bad),
                Err(Invalid::PackageName),
                "{bad}"
            );
        }
    }

    #[test]
    fn filenames() {
        for ok in [
            "f.bin",
            "a b",
            "x#y%z&w",
            "[1]{2}(3)~!@$^=:;",
            "..a",
            ".hidden",
        ] {
            assert_eq!(validate_filename(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".", "..", " a", "a ", "a/b", "a\nb", "é", "a?b"] {
            assert_eq!(validate_filename(bad), Err(Invalid::Filename), "{bad}");
        }
    }

    #[test]
    fn versions() {
        for ok in ["1.0.0", "1.0.3-te st", "v1/2", "ü"] {
            assert_eq!(validate_version(ok), Ok(()), "{ok}");
        }
        for bad in ["", " 1", "1 ", "\t", "1\u{a0}"] {
            assert_eq!(validate_version(bad), Err(Invalid::Version), "{bad:?}");
        }
        assert!(!client_version_ok("v1/2"));
        assert!(!client_version_ok(&"9".repeat(256)));
        assert!(client_version_ok("1.0"));
        assert!(!client_version_ok("1\t2"));
        assert!(!client_version_ok("1\n2"));
        assert!(!client_version_ok(".."));
    }
}
