//! End-to-end tests of the read path: a real `pkgfs serve`, a
//! real FUSE mount of the real binary, real syscalls and tools.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::mount::Mount;
use common::server::TestServer;
use common::{data, sha256_hex};

fn mount(server: &TestServer, extra: &[&str]) -> Mount {
    Mount::start(&server.url, Some(&server.token), extra)
}

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn lists_every_level_with_sizes_and_modes() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "tool", "1.0.0", "a.bin", &data(1000, 1));
    server.put_ok("alice", "tool", "1.0.0", "b.txt", b"hello\n");
    server.put_ok("alice", "tool", "1.1.0", "a.bin", &data(10, 2));
    server.put_ok("alice", "other", "0.1", "x", b"x");
    let m = mount(&server, &[]);
    assert_eq!(names(m.dir.path()), vec!["alice"]);
    assert_eq!(names(&m.path("alice")), vec!["other", "tool"]);
    assert_eq!(names(&m.path("alice/tool")), vec!["1.0.0", "1.1.0"]);
    assert_eq!(names(&m.path("alice/tool/1.0.0")), vec!["a.bin", "b.txt"]);
    let meta = std::fs::metadata(m.path("alice/tool/1.0.0/a.bin")).unwrap();
    assert_eq!(meta.len(), 1000);
    assert_eq!(meta.mode() & 0o777, 0o644);
    assert_eq!(meta.uid(), unsafe { libc::getuid() });
    let dmeta = std::fs::metadata(m.path("alice/tool")).unwrap();
    assert!(dmeta.is_dir());
    assert_eq!(dmeta.mode() & 0o777, 0o755);
    // mtime comes from the version's created_at: recent, not 1970.
    let age = std::time::SystemTime::now()
        .duration_since(meta.modified().unwrap())
        .unwrap_or_default();
    assert!(age < Duration::from_secs(600), "mtime {age:?} old");
    // Unknown names are ENOENT at every level.
    for p in [
        "nobody",
        "alice/nope",
        "alice/tool/9.9",
        "alice/tool/1.0.0/nope",
    ] {
        let e = std::fs::metadata(m.path(p)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{p}");
    }
    // df works.
    let df = Command::new("df").arg(m.dir.path()).output().unwrap();
    assert!(
        df.status.success(),
        "{}",
        String::from_utf8_lossy(&df.stderr)
    );
}

#[test]
fn a_path_resolves_without_listing_a_busy_owner() {
    let server = TestServer::start(&[]);
    // 120 packages: the owner listing alone would take three pages.
    for i in 0..120 {
        server.put_ok("alice", &format!("p{i}"), "1.0", "f", b"x");
    }
    for i in 0..30 {
        server.put_ok("alice", "many", "1", &format!("f{i}"), b"yy");
    }
    let m = mount(&server, &["--metadata-ttl", "600"]);
    server.reset_now();
    // Cold `ls -l` of a version: the versions of its package, then its
    // files. The root and the owner listings are not fetched.
    let out = Command::new("ls")
        .arg("-l")
        .arg(m.path("alice/many/1"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 31);
    assert_eq!(
        server.stats_now()["v1"].as_u64(),
        Some(2),
        "{}",
        m.log_text()
    );
    // Warm: nothing.
    server.reset_now();
    let _ = Command::new("ls")
        .arg("-l")
        .arg(m.path("alice/many/1"))
        .output()
        .unwrap();
    assert_eq!(server.stats_now()["requests"].as_u64(), Some(0));
    // A package that does not exist: ENOENT, and asked once.
    for _ in 0..3 {
        let e = std::fs::metadata(m.path("alice/nosuch")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }
    assert_eq!(server.stats_now()["v1"].as_u64(), Some(1));
    // The owner directory itself still lists every package, once.
    let listed = names(&m.path("alice"));
    assert_eq!(listed.len(), 121, "{listed:?}");
    assert!(listed.contains(&"many".to_string()) && listed.contains(&"p119".to_string()));
    assert_eq!(std::fs::read(m.path("alice/p7/1.0/f")).unwrap(), b"x");
}

#[test]
fn other_owners_are_reachable_by_path_and_owner_option_lists_them() {
    // bob is a second public user; alice's token can read bob's packages.
    let server = TestServer::start_with_config(
        r#"
[[users]]
name = "alice"
  [[users.tokens]]
  value_env = "PKGFS_SERVE_TOKEN"
[[users]]
name = "bob"
  [[users.tokens]]
  value = "bob-token"
[[orgs]]
name = "acme"
members = [{ user = "alice", role = "write" }]
"#,
        &[],
    );
    server.put_with_token("bob-token", "bob", "lib", "2.0", "lib.so", b"ELF");
    server.put_ok("acme", "shared", "1", "s", b"org file");
    let m = mount(&server, &["--uid", "1234", "--gid", "4321"]);
    // The user and the organisations the user belongs to.
    assert_eq!(names(m.dir.path()), vec!["acme", "alice"]);
    assert_eq!(
        std::fs::read(m.path("acme/shared/1/s")).unwrap(),
        b"org file"
    );
    let meta = std::fs::metadata(m.path("acme/shared/1/s")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 4321));
    assert_eq!(std::fs::read(m.path("bob/lib/2.0/lib.so")).unwrap(), b"ELF");
    drop(m);
    let m = mount(&server, &["--owner", "bob"]);
    assert_eq!(names(m.dir.path()), vec!["acme", "alice", "bob"]);
}

#[test]
fn paginates_121_versions_and_matches_names_case_insensitively() {
    let server = TestServer::start(&[]);
    for i in 0..121 {
        server.put_ok("alice", "many", &format!("1.0.{i}"), "f", b"v");
    }
    server.put_ok("alice", "MyPkg", "V1", "File.BIN", b"case");
    // A version with a slash (%2F survives Gitea's routing) is never shown.
    server.put_ok("alice", "many", "bad/version", "f", b"v");
    let m = mount(&server, &[]);
    assert_eq!(names(&m.path("alice/many")).len(), 121);
    assert_eq!(names(&m.path("alice")), vec!["MyPkg", "many"]);
    assert_eq!(
        std::fs::read(m.path("alice/mypkg/v1/file.bin")).unwrap(),
        b"case"
    );
    assert_eq!(
        std::fs::read(m.path("alice/MYPKG/V1/FILE.bin")).unwrap(),
        b"case"
    );
    assert_eq!(names(&m.path("alice/mypkg/v1")), vec!["File.BIN"]);
}

#[test]
fn reads_are_byte_exact_for_all_sizes() {
    let server = TestServer::start(&[]);
    let sizes = [0usize, 1, 1024 * 1024 + 1, 200 * 1024 * 1024];
    for (i, &n) in sizes.iter().enumerate() {
        server.put_ok("alice", "sizes", "1", &format!("f{i}"), &data(n, i as u64));
    }
    let m = mount(&server, &[]);
    for (i, &n) in sizes.iter().enumerate() {
        let path = m.path(&format!("alice/sizes/1/f{i}"));
        let out = Command::new("sha256sum").arg(&path).output().unwrap();
        assert!(out.status.success(), "sha256sum {}", path.display());
        let got = String::from_utf8_lossy(&out.stdout);
        assert_eq!(&got[..64], sha256_hex(&data(n, i as u64)), "size {n}");
    }
}

#[test]
fn random_offset_reads_match_the_source() {
    let server = TestServer::start(&[]);
    let src = data(64 * 1024 * 1024 + 123, 7);
    server.put_ok("alice", "rand", "1", "big", &src);
    let m = mount(&server, &[]);
    let mut f = std::fs::File::open(m.path("alice/rand/1/big")).unwrap();
    let mut rng = 12345u64;
    for _ in 0..200 {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (rng >> 11) % src.len() as u64;
        let len = ((rng >> 3) % 70_000) as usize;
        let mut buf = vec![0u8; len];
        f.seek(SeekFrom::Start(off)).unwrap();
        let mut got = 0;
        while got < len {
            let n = f.read(&mut buf[got..]).unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        let end = (off as usize + len).min(src.len());
        assert_eq!(&buf[..got], &src[off as usize..end], "offset {off}");
    }
    // Random access fetches each byte about once. (It fetches far more
    // than it reads: a stream's read-ahead window doubles with every FUSE
    // read that follows it, so each scattered 70 KB read pulls about 1 MiB
    // and 200 of them bring nearly the whole file; a known cost of the
    // prefetch heuristic, not checked here.)
    let sent = server.stats_now()["bytes_sent"].as_u64().unwrap();
    eprintln!(
        "random reads: the server sent {sent} of {} bytes",
        src.len()
    );
    assert!(
        sent < src.len() as u64 * 11 / 10,
        "server sent {sent} bytes for random reads of a {}-byte file",
        src.len()
    );
}

#[test]
fn tail_of_a_large_file_does_not_wait_for_the_whole_file() {
    let server = TestServer::start(&[]);
    let src = data(100 * 1024 * 1024, 3);
    server.put_ok("alice", "tail", "1", "big", &src);
    let m = mount(&server, &[]);
    let out = Command::new("tail")
        .arg("-c")
        .arg("1000")
        .arg(m.path("alice/tail/1/big"))
        .output()
        .unwrap();
    assert_eq!(out.stdout, &src[src.len() - 1000..]);
    let sent = server.stats_now()["bytes_sent"].as_u64().unwrap();
    assert!(
        sent < 16 * 1024 * 1024,
        "tail made the server send {sent} bytes"
    );
}

#[test]
fn cached_file_is_served_without_requests_also_after_remount() {
    let server = TestServer::start(&[]);
    let src = data(3 * 1024 * 1024, 9);
    server.put_ok("alice", "c", "1", "f", &src);
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().join("c");
    {
        let m = Mount::start_with_cache(&server.url, Some(&server.token), &[], &cache_dir);
        assert_eq!(std::fs::read(m.path("alice/c/1/f")).unwrap(), src);
        server.reset_now();
        assert_eq!(std::fs::read(m.path("alice/c/1/f")).unwrap(), src);
        assert_eq!(
            server.stats_now()["file_get"].as_u64(),
            Some(0),
            "second read made GETs"
        );
    }
    let m = Mount::start_with_cache(&server.url, Some(&server.token), &[], &cache_dir);
    // Listing costs requests; reading the cached file does not.
    let _ = std::fs::metadata(m.path("alice/c/1/f")).unwrap();
    server.reset_now();
    assert_eq!(std::fs::read(m.path("alice/c/1/f")).unwrap(), src);
    assert_eq!(
        server.stats_now()["file_get"].as_u64(),
        Some(0),
        "read after remount made GETs"
    );
    let meta = std::fs::metadata(&cache_dir).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o700);
}

fn dir_size(p: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            dir_size(&e.path())
        } else {
            m.blocks() * 512
        };
    }
    total
}

#[test]
fn cache_stays_within_its_bound() {
    let server = TestServer::start(&[]);
    let each = 4 * 1024 * 1024;
    for i in 0..6 {
        server.put_ok("alice", "b", "1", &format!("f{i}"), &data(each, 100 + i));
    }
    let m = mount(&server, &["--cache-size", "8MiB"]);
    for i in 0..6 {
        let got = std::fs::read(m.path(&format!("alice/b/1/f{i}"))).unwrap();
        assert_eq!(sha256_hex(&got), sha256_hex(&data(each, 100 + i as u64)));
        let used = dir_size(&m.cache.join("blobs"));
        assert!(
            used <= 8 * 1024 * 1024 + each as u64,
            "cache holds {used} bytes"
        );
    }
    let used = dir_size(&m.cache.join("blobs"));
    assert!(
        used <= 8 * 1024 * 1024,
        "cache holds {used} bytes after reads"
    );
}

#[test]
fn corrupted_blob_on_the_server_gives_eio() {
    let server = TestServer::start(&[]);
    let src = data(2 * 1024 * 1024, 5);
    server.put_ok("alice", "bad", "1", "f", &src);
    server.corrupt_blob(&sha256_hex(&src));
    let m = mount(&server, &[]);
    let err = std::fs::read(m.path("alice/bad/1/f")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert!(std::fs::read_dir(m.cache.join("blobs"))
        .unwrap()
        .next()
        .is_none());
    assert!(
        m.log_text().contains("do not match"),
        "log does not say why"
    );
}

#[test]
fn concurrent_readers_share_one_download() {
    let server = TestServer::start(&[]);
    let src = data(32 * 1024 * 1024, 11);
    server.put_ok("alice", "share", "1", "f", &src);
    let m = mount(&server, &[]);
    let _ = std::fs::metadata(m.path("alice/share/1/f")).unwrap();
    server.reset_now();
    let want = sha256_hex(&src);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let p = m.path("alice/share/1/f");
            std::thread::spawn(move || sha256_hex(&std::fs::read(p).unwrap()))
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), want);
    }
    let sent = server.stats_now()["bytes_sent"].as_u64().unwrap();
    assert!(
        sent <= src.len() as u64 * 11 / 10,
        "8 readers made the server send {sent} bytes"
    );
}

#[test]
fn follows_serve_direct_redirects_without_leaking_the_token() {
    let server = TestServer::start(&["--serve-direct"]);
    let src = data(5 * 1024 * 1024 + 7, 13);
    server.put_ok("alice", "direct", "1", "f", &src);
    let other = data(5 * 1024 * 1024 + 7, 14);
    server.put_ok("alice", "direct", "1", "g", &other);
    let m = mount(&server, &[]);
    assert_eq!(
        sha256_hex(&std::fs::read(m.path("alice/direct/1/f")).unwrap()),
        sha256_hex(&src)
    );
    // Ranged read through the redirect (other bytes, so nothing is cached):
    // the Range survives the redirect, so only a little is sent.
    let _ = std::fs::metadata(m.path("alice/direct/1/g")).unwrap();
    server.reset_now();
    let mut f = std::fs::File::open(m.path("alice/direct/1/g")).unwrap();
    f.seek(SeekFrom::Start(4 * 1024 * 1024)).unwrap();
    let mut buf = vec![0u8; 1000];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(buf, &other[4 * 1024 * 1024..4 * 1024 * 1024 + 1000]);
    let stats = server.stats_now();
    assert!(stats["direct_get"].as_u64().unwrap() >= 1, "{stats}");
    assert!(
        stats["bytes_sent"].as_u64().unwrap() < 2 * 1024 * 1024,
        "the Range was lost on the redirect: {stats}"
    );
}

#[test]
fn rejected_token_and_bad_mountpoints_fail_mount_with_a_clear_message() {
    let server = TestServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let run = |url: &str, mp: &std::path::Path, token: &str| {
        Command::new(common::mount::pkgfs_bin())
            .arg("mount")
            .arg(url)
            .arg(mp)
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .env("PKGFS_TOKEN", token)
            .output()
            .unwrap()
    };
    let out = run(&server.url, dir.path(), "wrong-token");
    assert_eq!(out.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("rejected the token"), "{msg}");
    assert!(!msg.contains("wrong-token"), "the token leaked: {msg}");
    assert!(!common::mount::is_mounted(dir.path()));

    let out = run(&server.url, &dir.path().join("missing"), &server.token);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));

    let out = run("http://127.0.0.1:9/", dir.path(), &server.token);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));

    // Background mode: returns when ready; a second mount on it is busy.
    let out = run(&server.url, dir.path(), &server.token);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let guard = common::mount::Unmounter(dir.path().to_path_buf());
    assert!(common::mount::is_mounted(dir.path()));
    let out = run(&server.url, dir.path(), &server.token);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("busy"));
    drop(guard);
    assert!(!common::mount::is_mounted(dir.path()));
}

#[test]
fn anonymous_mount_of_a_public_owner() {
    let server = TestServer::start(&["--v1-anonymous-read"]);
    server.put_ok("alice", "pub", "1", "f", b"public bytes");
    let m = Mount::start(&server.url, None, &["--owner", "alice"]);
    assert_eq!(names(m.dir.path()), vec!["alice"]);
    assert_eq!(
        std::fs::read(m.path("alice/pub/1/f")).unwrap(),
        b"public bytes"
    );
}

/// The kernel keeps listings it read (FOPEN_CACHE_DIR) only while pkgfs's
/// entries are unchanged: changes behind the mount show after the TTL,
/// changes through the mount at once.
#[test]
fn cached_listings_follow_changes_behind_and_through_the_mount() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "ch", "1", "a", b"a");
    let m = mount(&server, &["--metadata-ttl", "2"]);
    let v = m.path("alice/ch/1");
    assert_eq!(names(&v), vec!["a"]);
    assert_eq!(names(&v), vec!["a"]);
    server.put_ok("alice", "ch", "1", "b", b"b");
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(names(&v), vec!["a", "b"]);
    assert_eq!(names(&v), vec!["a", "b"]);
    server.delete_ok("alice", "ch", "1", "a");
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(names(&v), vec!["b"]);
    // Through the mount: visible at once, within the TTL.
    std::fs::write(v.join("c"), b"c").unwrap();
    assert_eq!(names(&v), vec!["b", "c"]);
    std::fs::remove_file(v.join("b")).unwrap();
    assert_eq!(names(&v), vec!["c"]);
    std::fs::create_dir(m.path("alice/ch/2")).unwrap();
    assert_eq!(names(&m.path("alice/ch")), vec!["1", "2"]);
}

#[test]
fn dead_registry_gives_eio_within_the_timeout_and_recovers() {
    let mut server = TestServer::start(&[]);
    server.put_ok("alice", "dead", "1", "f", &data(1000, 1));
    let m = mount(&server, &["--timeout", "3", "--metadata-ttl", "1"]);
    assert_eq!(names(&m.path("alice/dead")), vec!["1"]);
    server.stop();
    std::thread::sleep(Duration::from_millis(1100));
    let t = Instant::now();
    let err = std::fs::read_dir(m.path("alice/dead"))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let err = std::fs::read(m.path("alice/dead/1/f")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "cat took {:?}",
        t.elapsed()
    );
    // `ls` of a directory never listed, with the real tool.
    let t = Instant::now();
    let out = Command::new("ls").arg(m.path("alice")).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Input/output error"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "ls took {:?}",
        t.elapsed()
    );
    server.restart();
    // The same mount works again, without a remount.
    assert_eq!(
        std::fs::read(m.path("alice/dead/1/f")).unwrap(),
        data(1000, 1)
    );
    let out = Command::new("ls").arg(m.path("alice")).output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "dead");
}

#[test]
fn sigterm_unmounts_cleanly() {
    let server = TestServer::start(&[]);
    let mut m = mount(&server, &[]);
    let pid = m.pid() as i32;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let t = Instant::now();
    while common::mount::is_mounted(m.dir.path()) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!common::mount::is_mounted(m.dir.path()), "{}", m.log_text());
    m.unmount();
}

/// SIGINT (Ctrl-C in --foreground) unmounts too, and the daemon exits 0.
#[test]
fn sigint_unmounts_cleanly_and_exits_0() {
    let server = TestServer::start(&[]);
    let mut m = mount(&server, &[]);
    unsafe { libc::kill(m.pid() as i32, libc::SIGINT) };
    let status = m.wait_exit(10);
    assert!(!common::mount::is_mounted(m.dir.path()), "{}", m.log_text());
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", m.log_text());
}

/// Times come from the registry (`created_at` of the version), and statfs
/// reports the cache: its size and what is free in it.
#[test]
fn mtime_is_created_at_and_statfs_reports_the_cache() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "when", "1", "f", &data(100_000, 3));
    std::thread::sleep(Duration::from_millis(1100));
    let m = mount(&server, &["--cache-size", "8MiB"]);
    let (_, v) = common::sync::block(server.v1("api/v1/packages/alice/generic/when/1"));
    let created = v["created_at"].as_str().unwrap().to_string();
    let created = chrono::DateTime::parse_from_rfc3339(&created)
        .unwrap()
        .timestamp();
    for p in ["alice/when/1", "alice/when/1/f"] {
        let meta = std::fs::metadata(m.path(p)).unwrap();
        assert_eq!(meta.mtime(), created, "{p}");
        assert_eq!(meta.ctime(), created, "{p}");
    }
    let statfs = |m: &Mount| -> libc::statvfs {
        let c = std::ffi::CString::new(m.dir.path().as_os_str().as_encoded_bytes()).unwrap();
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st
    };
    let before = statfs(&m);
    assert_eq!(before.f_blocks * before.f_frsize, 8 * 1024 * 1024);
    assert_eq!(before.f_bfree, before.f_blocks);
    assert_eq!(
        std::fs::read(m.path("alice/when/1/f")).unwrap(),
        data(100_000, 3)
    );
    let after = statfs(&m);
    let used = (after.f_blocks - after.f_bfree) * after.f_frsize;
    assert!((100_000..=110_000).contains(&used), "used {used}");
}

/// A registry that stops answering (not refusing: a delay) fails `ls`
/// and `cat` with EIO after about `--timeout`, never a hang.
#[test]
fn a_silent_registry_gives_eio_after_the_timeout() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "slow", "1", "f", &data(1 << 20, 4));
    let m = mount(&server, &["--timeout", "2", "--metadata-ttl", "0"]);
    let _ = std::fs::metadata(m.path("alice/slow/1/f")).unwrap();
    server.fault_now(serde_json::json!({"kind": "delay", "delay_ms": 30000}));
    for what in ["ls", "cat"] {
        let t = Instant::now();
        let err = if what == "ls" {
            std::fs::read_dir(m.path("alice/slow/1"))
                .map(|_| ())
                .unwrap_err()
        } else {
            std::fs::read(m.path("alice/slow/1/f"))
                .map(|_| ())
                .unwrap_err()
        };
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{what}: {err}");
        assert!(
            t.elapsed() < Duration::from_secs(8),
            "{what}: {:?}",
            t.elapsed()
        );
    }
}

/// A small read at the start of a large file fetches about that much: the
/// stream starts small and prefetches ahead only as the reader goes on.
#[test]
fn a_small_read_of_a_large_file_fetches_little() {
    let server = TestServer::start(&[]);
    let src = data(64 << 20, 6);
    server.put_ok("alice", "big", "1", "f", &src);
    let m = mount(&server, &["--prefetch", "4MiB"]);
    let _ = std::fs::metadata(m.path("alice/big/1/f")).unwrap();
    server.reset_now();
    let mut f = std::fs::File::open(m.path("alice/big/1/f")).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(buf, &src[..64 * 1024]);
    std::thread::sleep(Duration::from_millis(300));
    let sent = server.stats_now()["bytes_sent"].as_u64().unwrap();
    assert!(sent < 16 << 20, "a 64 KiB read fetched {sent} bytes");
}

#[test]
fn lists_on_servers_without_the_versions_endpoint_and_with_size_spelled_size() {
    let server = TestServer::start(&["--no-versions-endpoint", "--size-key", "Size", "--no-head"]);
    server.put_ok("alice", "tool", "1.0", "a.bin", &data(5000, 1));
    server.put_ok("alice", "tool", "2.0", "a.bin", &data(6000, 2));
    server.put_ok("alice", "toolbox", "9.9", "x", b"x");
    let m = mount(&server, &["--metadata-ttl", "0"]);
    // `q=tool` also matches toolbox: the exact-name filter keeps tool's.
    assert_eq!(names(&m.path("alice/tool")), vec!["1.0", "2.0"]);
    assert_eq!(
        std::fs::metadata(m.path("alice/tool/2.0/a.bin"))
            .unwrap()
            .len(),
        6000
    );
    assert_eq!(
        std::fs::read(m.path("alice/tool/1.0/a.bin")).unwrap(),
        data(5000, 1)
    );
}

#[test]
fn private_owner_is_eacces_or_enoent_never_readable() {
    let server = TestServer::start_with_config(
        r#"
[[users]]
name = "alice"
  [[users.tokens]]
  value_env = "PKGFS_SERVE_TOKEN"
[[users]]
name = "carol"
visibility = "private"
  [[users.tokens]]
  value = "carol-token"
"#,
        &[],
    );
    server.put_with_token("carol-token", "carol", "secret", "1", "s", b"secret");
    let m = mount(&server, &[]);
    // Not visible to alice: the registry says it does not exist.
    let e = std::fs::metadata(m.path("carol")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
    let c = Mount::start(&server.url, Some("carol-token"), &[]);
    assert_eq!(
        std::fs::read(c.path("carol/secret/1/s")).unwrap(),
        b"secret"
    );
}

#[test]
fn server_that_ignores_range_still_gives_the_right_bytes() {
    let server = TestServer::start(&["--no-range"]);
    let src = data(3 * 1024 * 1024 + 17, 21);
    server.put_ok("alice", "nr", "1", "f", &src);
    let m = mount(&server, &[]);
    let mut f = std::fs::File::open(m.path("alice/nr/1/f")).unwrap();
    for off in [2 * 1024 * 1024u64, 5, 3 * 1024 * 1024] {
        f.seek(SeekFrom::Start(off)).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = f.read(&mut buf).unwrap();
        assert_eq!(
            &buf[..n],
            &src[off as usize..(off as usize + n)],
            "offset {off}"
        );
        assert!(n > 0);
    }
    drop(f);
    assert_eq!(
        sha256_hex(&std::fs::read(m.path("alice/nr/1/f")).unwrap()),
        sha256_hex(&src)
    );
}

#[test]
fn anonymous_read_of_a_private_owner_is_eacces() {
    let server = TestServer::start_with_config(
        r#"
[[users]]
name = "alice"
visibility = "private"
  [[users.tokens]]
  value_env = "PKGFS_SERVE_TOKEN"
"#,
        &["--v1-anonymous-read"],
    );
    server.put_ok("alice", "p", "1", "f", b"private");
    let m = Mount::start(&server.url, None, &["--owner", "alice"]);
    let e = std::fs::read_dir(m.path("alice")).map(|_| ()).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
}

/// Cached files are read by the kernel from the cache file itself (FUSE
/// passthrough, as root). The kernel refuses to mix the two open modes on
/// one inode (the open fails with EIO): a cold open still in use keeps
/// later opens ordinary, passthrough opens share one backing file (also
/// after the cache file was evicted), and mmap works through both.
#[test]
fn cached_files_are_passed_through_and_mixed_opens_never_fail() {
    use std::os::fd::AsRawFd;
    let server = TestServer::start(&[]);
    let src = data(3 * 1024 * 1024 + 7, 5);
    server.put_ok("alice", "pt", "1", "f.bin", &src);
    let m = mount(&server, &[]);
    let p = m.path("alice/pt/1/f.bin");
    let passthrough_opens = || {
        m.log_text()
            .matches("reads the cache file directly")
            .count()
    };
    let mapped = |f: &std::fs::File| -> Vec<u8> {
        let len = src.len();
        unsafe {
            let a = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(a, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
            let v = std::slice::from_raw_parts(a as *const u8, len).to_vec();
            libc::munmap(a, len);
            v
        }
    };

    // A cold open stays open while the file becomes cached: the opens
    // made meanwhile are cache hits, in ordinary mode.
    let mut cold = std::fs::File::open(&p).unwrap();
    let mut buf = Vec::new();
    cold.read_to_end(&mut buf).unwrap();
    assert_eq!(sha256_hex(&buf), sha256_hex(&src));
    for _ in 0..3 {
        assert_eq!(std::fs::read(&p).unwrap(), src, "{}", m.log_text());
    }
    assert_eq!(mapped(&cold), src);
    assert_eq!(
        passthrough_opens(),
        0,
        "passthrough beside an ordinary open"
    );
    drop(cold);

    // Once no ordinary open is left, cache hits are passed through (when
    // the daemon may: root); RELEASE reaches the daemon a little later.
    // Root may use it unless the kernel does not offer it (the log says).
    let can =
        unsafe { libc::geteuid() } == 0 && !m.log_text().contains("FUSE passthrough unavailable");
    let t = Instant::now();
    while can && passthrough_opens() == 0 && t.elapsed() < Duration::from_secs(5) {
        assert_eq!(std::fs::read(&p).unwrap(), src);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!can || passthrough_opens() > 0, "{}", m.log_text());
    let a = std::fs::File::open(&p).unwrap();
    let mut b = std::fs::File::open(&p).unwrap();
    assert_eq!(mapped(&a), src);
    b.seek(SeekFrom::Start(1024 * 1024)).unwrap();
    let mut tail = Vec::new();
    b.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, &src[1024 * 1024..]);

    // The cache file is evicted while passthrough handles are open: a new
    // open shares their backing file (an ordinary one would fail).
    for e in std::fs::read_dir(m.cache.join("blobs")).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            std::fs::remove_dir_all(e.path()).unwrap();
        } else {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    assert_eq!(std::fs::read(&p).unwrap(), src, "{}", m.log_text());
    drop(a);
    drop(b);
    assert!(!m.log_text().contains("EIO"), "{}", m.log_text());
}

/// Without `X-Total-Count` (a proxy dropped it) the owner listing follows
/// `rel="next"`; only its page number is taken, since the link is built
/// from APP_URL, which may name another host: the token never goes there.
#[test]
fn listings_follow_next_links_without_leaving_the_mounted_host() {
    // APP_URL on a port where nothing listens.
    let server = TestServer::start(&["--no-total-count", "--public-url", "http://127.0.0.1:9/"]);
    for i in 0..121 {
        server.put_ok("alice", &format!("p{i:03}"), "1", "f", b"x");
    }
    let probe = common::sync::block(
        reqwest::Client::new()
            .get(server.at("api/v1/packages/alice?limit=50"))
            .header("Authorization", server.auth())
            .send(),
    )
    .unwrap();
    assert!(probe.headers().get("x-total-count").is_none());
    let link = probe.headers()["link"].to_str().unwrap().to_string();
    assert!(link.contains("http://127.0.0.1:9/"), "{link}");
    let m = mount(&server, &["--timeout", "5"]);
    let got = names(&m.path("alice"));
    assert_eq!(got.len(), 121, "{}", m.log_text());
    assert_eq!(got[120], "p120");
}

/// Gitea ≥ 1.19 answers v1 listings without a token with 401: an anonymous
/// mount then shows EACCES (not an empty or missing directory).
#[test]
fn anonymous_listing_refused_with_401_is_eacces() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "tool", "1", "f", b"x");
    let m = Mount::start(&server.url, None, &["--owner", "alice"]);
    let err = std::fs::read_dir(m.path("alice")).map(|_| ()).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EACCES),
        "{err}\n{}",
        m.log_text()
    );
    assert!(m.log_text().contains("401"), "{}", m.log_text());
}
