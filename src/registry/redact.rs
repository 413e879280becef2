//! Redaction of what the network sends back before it reaches a log line.
//! An error body is the registry's (or a proxy's) text: a proxy that
//! echoes the request puts our `Authorization` header into it, and a body
//! may carry newlines or terminal escapes that forge log lines. Everything
//! logged from a response goes through [`for_log`]: the token itself,
//! credential headers and parameters are replaced by `***`, control
//! characters are escaped, and the text is capped.

use std::sync::{LazyLock, OnceLock};

use regex::Regex;

/// The token in use, once known: redacted wherever it appears.
static SECRET: OnceLock<String> = OnceLock::new();

/// Credential headers and `key=value` parameters, whatever follows them
/// on the line.
static HEADERS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?i)\b(authorization|proxy-authorization|private-token|job-token|deploy-token|x-gitea-otp|x-forgejo-otp|cookie|set-cookie|access_token|token|password|passwd|secret)(["']?\s*[:=]\s*["']?)[^\s"'&,;]+(?:\s+[^\s"'&,;]+)?"#,
    )
    .expect("static regex")
});

/// Schemes followed by a credential (`token abc…`, `Bearer abc…`).
static SCHEMES: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(token|bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}").expect("static regex")
});

/// Registers the token so that it is redacted even where no pattern
/// recognises it. Called once, when the client is built.
pub fn register_secret(token: &str) {
    if token.len() >= 4 {
        let _ = SECRET.set(token.to_string());
    }
}

/// `text` fit for a log line: secrets replaced by `***`, control
/// characters escaped, at most `max` characters (then `…`).
pub fn for_log(text: &str, max: usize) -> String {
    let mut s = text.to_string();
    if let Some(secret) = SECRET.get() {
        s = s.replace(secret.as_str(), "***");
    }
    let s = HEADERS.replace_all(&s, "$1$2***");
    let s = SCHEMES.replace_all(&s, "$1 ***");
    let mut out = String::with_capacity(s.len().min(max + 8));
    for (i, c) in s.trim().chars().enumerate() {
        if i >= max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted() {
        let echoed = "GET /x HTTP/1.1\r\nHost: h\r\nAuthorization: token 0123456789abcdef\r\nCookie: i_like_gitea=abc; x=y\r\nPRIVATE-TOKEN: glpat-xyz12345\r\n";
        let out = for_log(echoed, 1000);
        assert!(!out.contains("0123456789abcdef"), "{out}");
        assert!(!out.contains("abc;"), "{out}");
        assert!(!out.contains("glpat-xyz12345"), "{out}");
        assert!(!out.contains('\r') && !out.contains('\n'), "{out}");
        assert!(out.contains("Authorization: ***"), "{out}");
        let json =
            r#"{"headers":{"Authorization":"Bearer abcdefghijkl"},"url":"/x?access_token=sekrit"}"#;
        let out = for_log(json, 1000);
        assert!(
            !out.contains("abcdefghijkl") && !out.contains("sekrit"),
            "{out}"
        );
    }

    #[test]
    fn the_registered_token_is_redacted_anywhere() {
        register_secret("s3cr3t-t0ken-value");
        let out = for_log("you sent s3cr3t-t0ken-value in the path", 1000);
        assert_eq!(out, "you sent *** in the path");
    }

    #[test]
    fn capped_and_plain_text_kept() {
        assert_eq!(
            for_log("package file already exists", 100),
            "package file already exists"
        );
        assert_eq!(
            for_log(&"a".repeat(300), 10),
            format!("{}…", "a".repeat(10))
        );
        assert_eq!(for_log("a\u{1b}[31mb", 100), "a\\u{1b}[31mb");
    }
}
