//! Security: the token never appears in logs, cache and spool
//! files are private, warnings for a readable token file and `--insecure`,
//! the mount is private unless `--allow-other`, and no `Authorization`
//! crosses hosts on a redirect.

mod common;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use serde_json::json;

use common::mount::{assert_mount_serves, pkgfs_bin, write_and_close, Mount, Unmounter};
use common::server::TestServer;
use common::{data, sha256_hex};

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o777
}

#[test]
fn token_never_appears_in_logs_and_files_are_private() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "sec", "1", "f", &data(2 * 1024 * 1024, 40));
    let m = Mount::start(&server.url, Some(&server.token), &["--debug"]);
    // Reads.
    assert_eq!(
        std::fs::read(m.path("alice/sec/1/f")).unwrap(),
        data(2 * 1024 * 1024, 40)
    );
    for e in std::fs::read_dir(m.cache.join("blobs")).unwrap() {
        assert_eq!(mode(&e.unwrap().path()), 0o600);
    }
    for d in ["", "blobs", "partial", "spool"] {
        assert_eq!(mode(&m.cache.join(d)), 0o700, "{d}");
    }
    // A write: the spool file is 0600 while it is open.
    std::fs::create_dir_all(m.path("alice/sec/2")).unwrap();
    let mut f = std::fs::File::create(m.path("alice/sec/2/w")).unwrap();
    f.write_all(b"spooled").unwrap();
    let spool: Vec<_> = std::fs::read_dir(m.cache.join("spool"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(spool.len(), 1);
    assert_eq!(mode(&spool[0]), 0o600);
    drop(f);
    assert_eq!(
        server.get_opt("alice", "sec", "2", "w").unwrap(),
        b"spooled"
    );
    // A failed upload (two 500s: the check-and-retry gives up).
    server.fault_now(json!({"kind": "status", "status": 500, "count": 2, "method": "PUT"}));
    let err = write_and_close(&m.path("alice/sec/2/fail"), b"nope").expect_err(&m.log_text());
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    // A rejected token.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(pkgfs_bin())
        .args(["mount", &server.url])
        .arg(dir.path())
        .args(["--foreground", "--debug", "--cache-dir"])
        .arg(dir.path().join("c"))
        .env("PKGFS_TOKEN", "wrong-secret-token-value")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let mount_err = String::from_utf8_lossy(&out.stderr).into_owned();
    let log = m.log_text();
    assert!(log.contains("DEBUG"), "--debug logged nothing");
    let server_log = server.stderr_tail();
    for (what, text) in [
        ("mount log", &log),
        ("rejected mount", &mount_err),
        ("server log", &server_log),
    ] {
        assert!(!text.contains(&server.token), "the token is in the {what}");
        assert!(
            !text.contains("wrong-secret-token-value"),
            "the rejected token is in the {what}"
        );
    }
}

#[test]
fn readable_token_file_and_insecure_warn() {
    let server = TestServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{}\n", server.token)).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mp = dir.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let run = |extra: &[&str]| {
        Command::new(pkgfs_bin())
            .args(["mount", &server.url])
            .arg(&mp)
            .arg("--token-file")
            .arg(&token_file)
            .arg("--cache-dir")
            .arg(dir.path().join("c"))
            .args(extra)
            .env_remove("PKGFS_TOKEN")
            .output()
            .unwrap()
    };
    let out = run(&[]);
    let guard = Unmounter(mp.clone());
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("readable by other users"), "{err}");
    drop(guard);
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let log = dir.path().join("pkgfs.log");
    let out = run(&["--insecure", "--log-file", log.to_str().unwrap()]);
    let guard = Unmounter(mp.clone());
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("readable by other"));
    drop(guard);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("--insecure"), "{text}");
    assert!(!text.contains(&server.token));
}

fn stat_as_nobody(p: &std::path::Path) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "stat",
            "-c",
            "%s",
        ])
        .arg(p)
        .output()
        .unwrap()
}

#[test]
fn mount_is_private_unless_allow_other() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "p", "1", "f", b"12345");
    // The mountpoint's parent must be traversable by `nobody`.
    let parent = tempfile::tempdir().unwrap();
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for (extra, allowed) in [(&[][..], false), (&["--allow-other"][..], true)] {
        let mp = parent.path().join(if allowed { "open" } else { "private" });
        std::fs::create_dir(&mp).unwrap();
        let out = Command::new(pkgfs_bin())
            .args(["mount", &server.url])
            .arg(&mp)
            .arg("--cache-dir")
            .arg(parent.path().join(format!("c{allowed}")))
            .args(extra)
            .env("PKGFS_TOKEN", &server.token)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _guard = Unmounter(mp.clone());
        let out = stat_as_nobody(&mp.join("alice/p/1/f"));
        let err = String::from_utf8_lossy(&out.stderr);
        if allowed {
            assert!(out.status.success(), "{err}");
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5");
        } else {
            assert!(!out.status.success());
            assert!(err.contains("Permission denied"), "{err}");
            // The owner still can.
            assert_eq!(std::fs::read(mp.join("alice/p/1/f")).unwrap(), b"12345");
        }
    }
}

#[test]
fn redirects_never_carry_the_token_to_the_direct_host() {
    // The direct listener answers 400 to any request with Authorization,
    // so a correct read through it proves the header was dropped.
    let server = TestServer::start(&["--serve-direct"]);
    let src = data(3 * 1024 * 1024, 41);
    server.put_ok("alice", "d", "1", "f", &src);
    let m = Mount::start(&server.url, Some(&server.token), &[]);
    let _ = std::fs::metadata(m.path("alice/d/1/f")).unwrap();
    server.reset_now();
    let got = std::fs::read(m.path("alice/d/1/f")).unwrap();
    assert_eq!(sha256_hex(&got), sha256_hex(&src));
    let stats = server.stats_now();
    assert!(stats["direct_get"].as_u64().unwrap() >= 1, "{stats}");
    assert!(!server.stderr_tail().contains(&server.token));
}

/// TLS is verified by default: a registry behind a self-signed certificate
/// (socat terminating TLS in front of `pkgfs serve`) is refused at once with
/// a one-line reason and exit 1; the system's trust store is honoured (here
/// through SSL_CERT_FILE); `--insecure` accepts any certificate. The token is never
/// taken from argv: a `--token` flag is a usage error (exit 2) that does not
/// echo the value.
#[test]
fn tls_is_verified_unless_insecure_and_no_token_in_argv() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "tls", "1", "f", b"over tls");
    let dir = tempfile::tempdir().unwrap();
    // A private CA and a server certificate for 127.0.0.1 signed by it.
    let (ca, cert, key) = (
        dir.path().join("ca.pem"),
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
    );
    let st = Command::new("bash")
        .arg("-c")
        .arg(
            "set -e; cd \"$1\"; ec='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'
             openssl req -x509 $ec -days 1 -subj /CN=pkgfs-test-ca -keyout ca.key -out ca.pem
             openssl req $ec -subj /CN=127.0.0.1 -keyout key.pem -out leaf.csr
             printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext
             openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial \\
               -days 1 -extfile ext -out cert.pem",
        )
        .arg("-")
        .arg(dir.path())
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl req");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let backend = server.base();
    let backend = format!("TCP:127.0.0.1:{}", backend.port_or_known_default().unwrap());
    let mut socat = Command::new("socat")
        .arg(format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
            cert.display(),
            key.display()
        ))
        .arg(&backend)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _socat_guard = {
        let t = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed().as_secs() < 10, "socat did not listen");
            if let Ok(Some(s)) = socat.try_wait() {
                panic!("socat exited: {s}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Kill(socat)
    };
    let url = format!("https://127.0.0.1:{port}/");
    let mp = dir.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let run_with = |extra: &[&str], trusted: Option<&std::path::Path>| {
        let mut cmd = Command::new(pkgfs_bin());
        cmd.args(["mount", &url])
            .arg(&mp)
            .arg("--cache-dir")
            .arg(dir.path().join("c"))
            .args(extra)
            .env("PKGFS_TOKEN", &server.token)
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR");
        if let Some(ca) = trusted {
            cmd.env("SSL_CERT_FILE", ca);
        }
        cmd.output().unwrap()
    };
    let run = |extra: &[&str]| run_with(extra, None);
    let t = std::time::Instant::now();
    let out = run(&[]);
    let _guard = Unmounter(mp.clone());
    // An untrusted certificate is final: no retries until --timeout.
    assert!(t.elapsed().as_secs() < 10, "{:?}", t.elapsed());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // A certificate the system trusts (a private CA) is accepted.
    let out = run_with(&[], Some(&ca));
    assert_mount_serves(&out, &mp, "alice/tls/1/f", b"over tls");
    drop(_guard);
    let out = run(&["--insecure"]);
    let _guard = Unmounter(mp.clone());
    assert_mount_serves(&out, &mp, "alice/tls/1/f", b"over tls");
    drop(_guard);

    let out = Command::new(pkgfs_bin())
        .args(["mount", &server.url])
        .arg(&mp)
        .args(["--token", "sekrit-from-argv"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("sekrit-from-argv"), "{text}");
}
