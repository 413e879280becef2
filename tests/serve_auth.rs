//! `pkgfs serve` authentication and access rules: every row of the tables
//! of PROTOCOL.md §auth, §access, §status-packages and §status-v1, on a
//! config with users of each visibility, scoped tokens and organisations.

mod common;

use base64::Engine;
use common::server::TestServer;
use reqwest::{Method, StatusCode};

const CONFIG: &str = r#"
[[users]]
name = "alice"
password = "alicepw"
  [[users.tokens]]
  value = "alice-all"
  [[users.tokens]]
  value = "alice-read"
  scopes = ["read:package"]
  [[users.tokens]]
  value = "alice-write"
  scopes = ["write:package"]
  [[users.tokens]]
  value = "alice-user"
  scopes = ["read:user"]
  [[users.tokens]]
  value = "alice-pub"
  scopes = ["all"]
  public_only = true

[[users]]
name = "bob"
  [[users.tokens]]
  value = "bob-all"

[[users]]
name = "carol"
visibility = "private"
  [[users.tokens]]
  value = "carol-all"

[[users]]
name = "lim"
visibility = "limited"
  [[users.tokens]]
  value = "lim-all"

[[users]]
name = "dave"
admin = true
  [[users.tokens]]
  value = "dave-all"

[[users]]
name = "idle"
active = false
  [[users.tokens]]
  value = "idle-all"

[[users]]
name = "banned"
prohibit_login = true
  [[users.tokens]]
  value = "banned-all"

[[orgs]]
name = "pubco"
members = [{ user = "alice", role = "owner" }, { user = "bob", role = "read" }]

[[orgs]]
name = "privco"
visibility = "private"
members = [{ user = "alice", role = "write" }]

[[orgs]]
name = "limco"
visibility = "limited"
"#;

/// How a request authenticates.
#[derive(Clone, Copy, Debug)]
enum Cred {
    Anon,
    Token(&'static str),
    Bearer(&'static str),
    Basic(&'static str, &'static str),
    Header(&'static str),
    Query(&'static str),
}

async fn req(s: &TestServer, m: Method, path: &str, cred: Cred) -> reqwest::Response {
    let mut url = s.at(path);
    if let Cred::Query(t) = cred {
        url = format!("{url}?token={t}");
    }
    let mut rb = s.http.request(m.clone(), url);
    if m == Method::PUT {
        rb = rb.body("data");
    }
    rb = match cred {
        Cred::Anon | Cred::Query(_) => rb,
        Cred::Token(t) => rb.header("Authorization", format!("token {t}")),
        Cred::Bearer(t) => rb.header("Authorization", format!("Bearer {t}")),
        Cred::Header(h) => rb.header("Authorization", h),
        Cred::Basic(u, p) => {
            let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            rb.header("Authorization", format!("Basic {b}"))
        }
    };
    rb.send().await.unwrap()
}

fn file(owner: &str, n: usize) -> String {
    format!("api/packages/{owner}/generic/tool/1/f{n}")
}

#[tokio::test]
async fn credentials_on_the_packages_tree() {
    let s = TestServer::start_with_config(CONFIG, &[]);
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    for cred in [
        Cred::Token("alice-all"),
        Cred::Header("TOKEN alice-all"),
        Cred::Bearer("alice-all"),
        Cred::Basic("alice", "alicepw"),
        Cred::Basic("ALICE", "alicepw"),
        Cred::Basic("whoever", "alice-all"),
        Cred::Basic("alice-all", ""),
        Cred::Basic("alice-all", "x-oauth-basic"),
        Cred::Query("alice-all"),
    ] {
        let r = req(&s, Method::PUT, &file("alice", next()), cred).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{cred:?}");
    }
    for cred in [
        Cred::Token("nope"),
        Cred::Bearer("nope"),
        Cred::Basic("alice", "wrong"),
        Cred::Basic("nobody", "x"),
        Cred::Query("nope"),
    ] {
        for m in [Method::GET, Method::PUT] {
            let r = req(&s, m.clone(), &file("alice", 1), cred).await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{m} {cred:?}");
            assert_eq!(r.text().await.unwrap(), "Failed to authenticate user");
        }
        // Even before routing.
        let r = req(&s, Method::GET, "api/packages/x", cred).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{cred:?}");
    }
    // The access log line is written when a response has been sent, which
    // may be just after the client read it.
    let mut log = s.stderr_tail();
    let since = std::time::Instant::now();
    while !log.contains("token=***") && since.elapsed() < std::time::Duration::from_secs(5) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        log = s.stderr_tail();
    }
    assert!(log.contains("token=***"), "{log}");
    for secret in ["alice-all", "alicepw"] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
    // A malformed Basic header or an unknown scheme is ignored: anonymous.
    for h in ["Basic !!!", "Basic", "Digest abc", "token"] {
        let r = req(&s, Method::GET, &file("alice", 1), Cred::Header(h)).await;
        assert_eq!(r.status(), StatusCode::OK, "{h}");
        let r = req(&s, Method::PUT, &file("alice", 99), Cred::Header(h)).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{h}");
    }
}

#[tokio::test]
async fn access_rules_on_the_packages_tree() {
    let s = TestServer::start_with_config(CONFIG, &[]);
    // Seed one file per owner (admin can write anywhere).
    for owner in ["alice", "bob", "carol", "lim", "pubco", "privco", "limco"] {
        let r = req(&s, Method::PUT, &file(owner, 0), Cred::Token("dave-all")).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{owner}");
    }
    use Cred::*;
    const OK: u16 = 200;
    const CREATED: u16 = 201;
    const UNAUTH: u16 = 401;
    const FORBIDDEN: u16 = 403;
    const MISSING: u16 = 404;
    let rows: &[(Cred, Method, &str, u16)] = &[
        // Unknown owner: 404 for everyone, before rights.
        (Anon, Method::GET, "nobody", MISSING),
        (Token("bob-all"), Method::PUT, "nobody", MISSING),
        // Anonymous: read public only.
        (Anon, Method::GET, "alice", OK),
        (Anon, Method::GET, "pubco", OK),
        (Anon, Method::GET, "carol", UNAUTH),
        (Anon, Method::GET, "lim", UNAUTH),
        (Anon, Method::GET, "privco", UNAUTH),
        (Anon, Method::GET, "limco", UNAUTH),
        (Anon, Method::PUT, "alice", UNAUTH),
        (Anon, Method::DELETE, "alice", UNAUTH),
        // Signed in, user owners.
        (Token("bob-all"), Method::GET, "alice", OK),
        (Token("bob-all"), Method::GET, "lim", OK),
        (Token("bob-all"), Method::GET, "carol", UNAUTH),
        (Token("bob-all"), Method::PUT, "alice", UNAUTH),
        (Token("bob-all"), Method::DELETE, "alice", UNAUTH),
        (Token("bob-all"), Method::PUT, "bob", CREATED),
        (Token("carol-all"), Method::GET, "carol", OK),
        // Organisations: member roles, visibility.
        (Token("bob-all"), Method::GET, "pubco", OK),
        (Token("bob-all"), Method::PUT, "pubco", UNAUTH),
        (Token("alice-all"), Method::PUT, "pubco", CREATED),
        (Token("alice-all"), Method::PUT, "privco", CREATED),
        (Token("bob-all"), Method::GET, "privco", UNAUTH),
        (Token("bob-all"), Method::GET, "limco", OK),
        (Token("bob-all"), Method::PUT, "limco", UNAUTH),
        // Scopes: missing → 401; write implies read.
        (Token("alice-read"), Method::GET, "alice", OK),
        (Token("alice-read"), Method::PUT, "alice", UNAUTH),
        (Token("alice-read"), Method::DELETE, "alice", UNAUTH),
        (Token("alice-write"), Method::GET, "alice", OK),
        (Token("alice-write"), Method::PUT, "alice", CREATED),
        (Token("alice-user"), Method::GET, "alice", UNAUTH),
        // Public-only tokens: 403 on owners that are not public.
        (Token("alice-pub"), Method::GET, "alice", OK),
        (Token("alice-pub"), Method::GET, "privco", FORBIDDEN),
        (Token("alice-pub"), Method::GET, "limco", FORBIDDEN),
        (Token("alice-pub"), Method::PUT, "privco", FORBIDDEN),
        // An inactive or login-prohibited doer gets none (PROTOCOL.md §access), even on
        // its own namespace and on public owners.
        (Token("idle-all"), Method::GET, "alice", UNAUTH),
        (Token("idle-all"), Method::PUT, "idle", UNAUTH),
        (Token("banned-all"), Method::GET, "pubco", UNAUTH),
        (Token("banned-all"), Method::PUT, "banned", UNAUTH),
        // Site admin: everything.
        (Token("dave-all"), Method::GET, "carol", OK),
        (Token("dave-all"), Method::DELETE, "carol", 204),
    ];
    for (i, (cred, m, owner, want)) in rows.iter().enumerate() {
        let path = if *m == Method::PUT {
            file(owner, 100 + i)
        } else {
            file(owner, 0)
        };
        let r = req(&s, m.clone(), &path, *cred).await;
        let www = r.headers().get("www-authenticate").cloned();
        assert_eq!(r.status().as_u16(), *want, "{cred:?} {m} {owner}");
        if *want == UNAUTH {
            assert_eq!(
                www.as_ref().map(|v| v.to_str().unwrap()),
                Some("Basic realm=\"Gitea Package API\""),
                "{cred:?} {m} {owner}"
            );
        }
    }
}

/// DELETE of a whole version (PROTOCOL.md §delete) under the rules of
/// §status-packages: Write access, 401 with `WWW-Authenticate` for missing
/// rights or scope, 403 for a
/// public-only token on an owner that is not public, 404 for an unknown
/// owner or version.
#[tokio::test]
async fn version_delete_follows_the_access_rules() {
    let s = TestServer::start_with_config(CONFIG, &[]);
    let version = |owner: &str, v: usize| format!("api/packages/{owner}/generic/tool/{v}");
    for (owner, v) in [("alice", 1), ("alice", 2), ("privco", 1)] {
        let path = format!("{}/f", version(owner, v));
        let r = req(&s, Method::PUT, &path, Cred::Token("dave-all")).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{path}");
    }
    use Cred::*;
    let rows: &[(Cred, &str, usize, u16)] = &[
        (Anon, "nobody", 1, 404),
        (Anon, "alice", 1, 401),
        (Token("bob-all"), "alice", 1, 401),
        (Token("alice-read"), "alice", 1, 401),
        (Token("alice-user"), "alice", 1, 401),
        (Token("alice-pub"), "privco", 1, 403),
        (Token("alice-all"), "alice", 9, 404),
        (Token("alice-write"), "alice", 1, 204),
        (Token("alice-all"), "alice", 1, 404),
        (Token("alice-all"), "privco", 1, 204),
    ];
    for (cred, owner, v, want) in rows {
        let r = req(&s, Method::DELETE, &version(owner, *v), *cred).await;
        let www = r.headers().get("www-authenticate").cloned();
        assert_eq!(r.status().as_u16(), *want, "{cred:?} {owner}/{v}");
        if *want == 401 {
            assert_eq!(
                www.as_ref().map(|v| v.to_str().unwrap()),
                Some("Basic realm=\"Gitea Package API\""),
                "{cred:?} {owner}/{v}"
            );
        }
    }
    // The other version is untouched.
    let r = req(&s, Method::GET, &format!("{}/f", version("alice", 2)), Anon).await;
    assert_eq!(r.status(), StatusCode::OK);
}

async fn v1(s: &TestServer, m: Method, path: &str, cred: Cred) -> (StatusCode, serde_json::Value) {
    let r = req(s, m, path, cred).await;
    let st = r.status();
    (st, r.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn v1_statuses() {
    let s = TestServer::start_with_config(CONFIG, &[]);
    for owner in ["alice", "carol", "privco"] {
        let r = req(&s, Method::PUT, &file(owner, 0), Cred::Token("dave-all")).await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    use Cred::*;
    let (st, body) = v1(&s, Method::GET, "api/v1/packages/alice", Anon).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(body["message"], "token is required");
    assert_eq!(body["url"], format!("{}api/swagger", s.url));
    let (st, body) = v1(&s, Method::GET, "api/v1/packages/alice", Token("nope")).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(body["message"].is_string());
    let rows: &[(Cred, Method, &str, u16)] = &[
        (
            Token("alice-all"),
            Method::GET,
            "api/v1/packages/alice",
            200,
        ),
        (
            Token("alice-read"),
            Method::GET,
            "api/v1/packages/alice",
            200,
        ),
        (
            Token("alice-user"),
            Method::GET,
            "api/v1/packages/alice",
            403,
        ),
        (
            Token("alice-all"),
            Method::GET,
            "api/v1/packages/nobody",
            404,
        ),
        (Token("bob-all"), Method::GET, "api/v1/packages/carol", 403),
        (Token("bob-all"), Method::GET, "api/v1/packages/privco", 403),
        (
            Token("alice-all"),
            Method::GET,
            "api/v1/packages/privco",
            200,
        ),
        (
            Token("alice-pub"),
            Method::GET,
            "api/v1/packages/privco",
            403,
        ),
        (
            Token("bob-all"),
            Method::DELETE,
            "api/v1/packages/alice/generic/tool/1",
            403,
        ),
        (
            Token("alice-read"),
            Method::DELETE,
            "api/v1/packages/alice/generic/tool/1",
            403,
        ),
        (
            Anon,
            Method::DELETE,
            "api/v1/packages/alice/generic/tool/1",
            401,
        ),
        (
            Token("alice-write"),
            Method::DELETE,
            "api/v1/packages/alice/generic/tool/1",
            204,
        ),
        (Anon, Method::GET, "api/v1/user", 401),
        (Token("alice-read"), Method::GET, "api/v1/user", 403),
        (Token("alice-user"), Method::GET, "api/v1/user", 200),
        (Basic("alice", "alicepw"), Method::GET, "api/v1/user", 200),
        (Token("alice-user"), Method::GET, "api/v1/user/orgs", 403),
        (Anon, Method::GET, "api/v1/user/orgs", 401),
        (Anon, Method::GET, "api/v1/users/alice", 200),
        (Anon, Method::GET, "api/v1/users/lim", 404),
        (Token("bob-all"), Method::GET, "api/v1/users/lim", 200),
        (Token("bob-all"), Method::GET, "api/v1/users/carol", 404),
        (Token("carol-all"), Method::GET, "api/v1/users/carol", 200),
        (Token("dave-all"), Method::GET, "api/v1/users/carol", 200),
        (Token("bob-all"), Method::GET, "api/v1/users/pubco", 200),
        (Token("bob-all"), Method::GET, "api/v1/orgs/privco", 404),
        (Token("alice-all"), Method::GET, "api/v1/orgs/privco", 200),
        (Anon, Method::GET, "api/v1/orgs/limco", 404),
        (Token("bob-all"), Method::GET, "api/v1/orgs/limco", 200),
        (Token("alice-read"), Method::GET, "api/v1/orgs/pubco", 403),
    ];
    for (cred, m, path, want) in rows {
        let (st, body) = v1(&s, m.clone(), path, *cred).await;
        assert_eq!(st.as_u16(), *want, "{cred:?} {m} {path}: {body}");
        if st.is_client_error() {
            assert!(
                body["message"].is_string() && body["url"].is_string(),
                "{path}: {body}"
            );
        }
    }
    let (_, body) = v1(
        &s,
        Method::GET,
        "api/v1/packages/alice",
        Token("alice-user"),
    )
    .await;
    assert!(body["message"]
        .as_str()
        .unwrap()
        .starts_with("token does not have at least one of required scope(s)"));

    let (_, orgs) = v1(&s, Method::GET, "api/v1/user/orgs", Token("alice-all")).await;
    let names: Vec<&str> = orgs
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pubco", "privco"]);
    let (_, orgs) = v1(&s, Method::GET, "api/v1/user/orgs", Token("alice-pub")).await;
    assert_eq!(orgs.as_array().unwrap().len(), 1);
    let (_, orgs) = v1(&s, Method::GET, "api/v1/users/alice/orgs", Token("bob-all")).await;
    assert_eq!(
        orgs.as_array().unwrap().len(),
        1,
        "privco is hidden from bob"
    );
    let (_, me) = v1(&s, Method::GET, "api/v1/user", Token("dave-all")).await;
    assert_eq!(
        (me["login"].as_str(), me["is_admin"].as_bool()),
        (Some("dave"), Some(true))
    );
}

#[tokio::test]
async fn v1_anonymous_read_profile() {
    let s = TestServer::start_with_config(CONFIG, &["--v1-anonymous-read"]);
    let r = req(&s, Method::PUT, &file("alice", 0), Cred::Token("alice-all")).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let (st, list) = v1(&s, Method::GET, "api/v1/packages/alice", Cred::Anon).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (st, _) = v1(
        &s,
        Method::GET,
        "api/v1/packages/alice/generic/tool/1/files",
        Cred::Anon,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = v1(&s, Method::GET, "api/v1/packages/carol", Cred::Anon).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = v1(
        &s,
        Method::DELETE,
        "api/v1/packages/alice/generic/tool/1",
        Cred::Anon,
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn default_user_and_missing_token() {
    let s = TestServer::start_raw(&["--default-user", "zed"], None);
    // The helper always sets PKGFS_SERVE_TOKEN; the default user is `zed`.
    let r = s
        .http
        .get(s.at("api/v1/user"))
        .header("Authorization", s.auth())
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["login"], "zed");
    assert!(s.stderr_tail().contains("pkgfs serve ready"));
    assert!(
        !s.stderr_tail().contains(&s.token),
        "the token is never logged"
    );

    // Without PKGFS_SERVE_TOKEN: a warning, and no token works.
    use std::io::BufRead;
    let data = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pkgfs"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .env_remove("PKGFS_SERVE_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    let anon = reqwest::get(format!("{url}/api/v1/users/alice"))
        .await
        .unwrap();
    let with_token = reqwest::Client::new()
        .get(format!("{url}/api/v1/user"))
        .header("Authorization", "token anything")
        .send()
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(anon.status(), StatusCode::OK);
    assert_eq!(with_token.status(), StatusCode::UNAUTHORIZED);
    assert!(stderr.contains("PKGFS_SERVE_TOKEN is not set"), "{stderr}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pkgfs"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .arg("--config")
        .arg(data.path().join("missing.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "a missing config file is an error");
}
