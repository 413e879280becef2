//! Hostile input: a real mount behind a proxy that misbehaves
//! (`tests/common/hostile.rs`) in front of `pkgfs serve`. Each test is one
//! way a registry, a proxy or the disk under the cache can lie, and asserts
//! that pkgfs keeps its promises: `close()` returning 0 means the registry
//! has the file (so `mv` keeps its source otherwise), no reader gets wrong
//! bytes, no syscall waits past `--timeout` plus a small margin, memory
//! stays bounded, bad names never reach the kernel and secrets never reach
//! a log or a child.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::hostile::{Action, Canned, Hostile, Rule, Seen};
use common::mount::{write_and_close, Mount};
use common::server::TestServer;
use common::{data, sha256_hex};
use serde_json::{json, Value};

const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn errno<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// Peak resident set of a process, KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("ls {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `mv src dst` with the real tool; whether it succeeded.
fn mv(src: &Path, dst: &Path) -> bool {
    Command::new("mv")
        .arg(src)
        .arg(dst)
        .status()
        .expect("mv")
        .success()
}

fn json_answer(status: u16, body: &Value, headers: Vec<(String, String)>) -> Canned {
    let mut h = vec![("content-type".to_string(), "application/json".to_string())];
    h.extend(headers);
    Canned {
        status,
        headers: h,
        body: serde_json::to_vec(body).unwrap(),
    }
}

/// Rewrites the entry named `name` of a files listing with `f`.
fn rewrite_entry(
    name: &'static str,
    f: impl Fn(&mut serde_json::Map<String, Value>) + Send + Sync + 'static,
) -> impl Fn(&mut Value) + Send + Sync + 'static {
    move |v: &mut Value| {
        for e in v.as_array_mut().into_iter().flatten() {
            if let Some(o) = e.as_object_mut() {
                if o.get("name").and_then(Value::as_str) == Some(name) {
                    f(o);
                }
            }
        }
    }
}

/// One edit of a listing's JSON.
type Edit = Box<dyn Fn(&mut Value) + Send + Sync>;

fn rewrite_all(fs: Vec<Edit>) -> Action {
    Action::RewriteJson(Arc::new(move |mut v| {
        for f in &fs {
            f(&mut v);
        }
        v
    }))
}

/// A 201 answered before the body was read, then a reset: `mv` must fail
/// and keep its source, in both upload modes, and the registry has nothing.
#[test]
fn early_201_before_the_body_fails_close_and_mv_keeps_its_source() {
    let server = TestServer::start(&[]);
    let proxy = Hostile::start(&server.url);
    proxy.add(Rule::new(Some("PUT"), "/early", Action::EarlyAnswer(201)));
    let src_dir = tempfile::tempdir().unwrap();
    for (i, mode) in [&[][..], &["--upload-on-close"][..]].iter().enumerate() {
        let m = Mount::start(&proxy.url, Some(&server.token), mode);
        std::fs::create_dir_all(m.path("alice/pkg/1.0")).unwrap();
        let name = format!("early{i}.bin");
        let bytes = data(2 << 20, 11 + i as u64);
        let src = src_dir.path().join(&name);
        std::fs::write(&src, &bytes).unwrap();
        assert!(
            !mv(&src, &m.path(&format!("alice/pkg/1.0/{name}"))),
            "mv succeeded although the registry never got the body ({mode:?})"
        );
        assert_eq!(std::fs::read(&src).unwrap(), bytes, "mv lost its source");
        assert_eq!(server.get_opt("alice", "pkg", "1.0", &name), None);
        assert!(
            proxy.count(Some("PUT"), &name) >= 1,
            "no PUT reached the proxy"
        );
    }
}

/// A redirect answering a PUT is not success and is not followed.
#[test]
fn redirect_on_put_is_a_failure_and_is_not_followed() {
    let server = TestServer::start(&[]);
    let proxy = Hostile::start(&server.url);
    let target = server
        .file_url("alice", "pkg", "1.0", "moved.bin")
        .to_string();
    proxy.add(Rule::new(
        Some("PUT"),
        "/moved.bin",
        Action::Custom(Arc::new(move |_s: &Seen| Canned {
            status: 307,
            headers: vec![("location".into(), target.clone())],
            body: Vec::new(),
        })),
    ));
    let m = Mount::start(&proxy.url, Some(&server.token), &[]);
    std::fs::create_dir_all(m.path("alice/pkg/1.0")).unwrap();
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("moved.bin");
    let bytes = data(300_000, 5);
    std::fs::write(&src, &bytes).unwrap();
    assert!(!mv(&src, &m.path("alice/pkg/1.0/moved.bin")));
    assert_eq!(std::fs::read(&src).unwrap(), bytes, "mv lost its source");
    assert_eq!(server.get_opt("alice", "pkg", "1.0", "moved.bin"), None);
    let log = m.log_text();
    assert!(log.contains("307"), "the log does not say why:\n{log}");
}

/// After an upload the listing gives the new file another file's sha256:
/// close fails, and the other file still reads as its own bytes (nothing
/// entered the cache under a hash it was not verified to have).
#[test]
fn listing_with_another_files_sha_never_poisons_the_cache() {
    let server = TestServer::start(&[]);
    let a = data(100_000, 1);
    let b = data(100_000, 2);
    server.put_ok("alice", "pkg", "1.0", "a.bin", &a);
    let sha_a = sha256_hex(&a);
    let proxy = Hostile::start(&server.url);
    proxy.add(Rule::new(
        Some("GET"),
        "/pkg/1.0/files",
        rewrite_all(vec![Box::new(rewrite_entry("b.bin", move |o| {
            o.insert("sha256".into(), json!(sha_a.clone()));
        }))]),
    ));
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().join("c");
    {
        let m = Mount::start_with_cache(&proxy.url, Some(&server.token), &[], &cache_dir);
        let r = write_and_close(&m.path("alice/pkg/1.0/b.bin"), &b);
        assert_eq!(
            errno(r),
            libc::EIO,
            "close on a wrong listing:\n{}",
            m.log_text()
        );
        assert!(m.log_text().contains("not counted as published"));
        proxy.clear();
        assert_eq!(std::fs::read(m.path("alice/pkg/1.0/a.bin")).unwrap(), a);
    }
    // A fresh mount over the same cache: a's hash still means a's bytes.
    let m = Mount::start_with_cache(&proxy.url, Some(&server.token), &[], &cache_dir);
    assert_eq!(std::fs::read(m.path("alice/pkg/1.0/a.bin")).unwrap(), a);
    assert_eq!(std::fs::read(m.path("alice/pkg/1.0/b.bin")).unwrap(), b);
}

/// Sizes and hashes that cannot describe the bytes: every such file is
/// EIO (never an empty file), the honest one next to them reads.
#[test]
fn implausible_sizes_and_hashes_are_eio_not_empty_files() {
    let server = TestServer::start(&[]);
    let cases = [
        "zero", "negative", "nosize", "badsha", "shorter", "longer", "emptysha", "ok",
    ];
    let mut contents = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let bytes = data(1000, 100 + i as u64);
        server.put_ok("alice", "pkg", "1.0", &format!("{c}.bin"), &bytes);
        contents.push(bytes);
    }
    let proxy = Hostile::start(&server.url);
    proxy.add(Rule::new(
        Some("GET"),
        "/pkg/1.0/files",
        rewrite_all(vec![
            Box::new(rewrite_entry("zero.bin", |o| {
                o.insert("size".into(), json!(0));
            })),
            Box::new(rewrite_entry("negative.bin", |o| {
                o.insert("size".into(), json!(-5));
            })),
            Box::new(rewrite_entry("nosize.bin", |o| {
                o.remove("size");
            })),
            Box::new(rewrite_entry("badsha.bin", |o| {
                o.insert("sha256".into(), json!("zz"));
            })),
            Box::new(rewrite_entry("shorter.bin", |o| {
                o.insert("size".into(), json!(900));
            })),
            Box::new(rewrite_entry("longer.bin", |o| {
                o.insert("size".into(), json!(1100));
            })),
            Box::new(rewrite_entry("emptysha.bin", |o| {
                o.insert("sha256".into(), json!(EMPTY_SHA256));
            })),
        ]),
    ));
    let m = Mount::start(&proxy.url, Some(&server.token), &[]);
    let mut listed = names_in(&m.path("alice/pkg/1.0"));
    listed.sort();
    let mut want: Vec<String> = cases.iter().map(|c| format!("{c}.bin")).collect();
    want.sort();
    assert_eq!(listed, want, "every entry with a sane name is listed");
    for (c, bytes) in cases.iter().zip(&contents) {
        let r = std::fs::read(m.path(&format!("alice/pkg/1.0/{c}.bin")));
        if *c == "ok" {
            assert_eq!(&r.unwrap(), bytes);
        } else {
            assert_eq!(errno(r.map(|v| v.len())), libc::EIO, "{c}.bin must be EIO");
        }
    }
}

fn find_blob(dir: &Path, want: &[u8]) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_blob(&p, want) {
                return Some(f);
            }
        } else if std::fs::read(&p).is_ok_and(|b| b == want) {
            return Some(p);
        }
    }
    None
}

/// Cache blobs overwritten or truncated between two mounts (what a power
/// loss or a disk error leaves) are never served.
#[test]
fn cache_blobs_damaged_between_mounts_are_never_served() {
    let server = TestServer::start(&[]);
    let flip = data(1 << 20, 21);
    let cut = data(1 << 20, 22);
    server.put_ok("alice", "pkg", "1.0", "flip.bin", &flip);
    server.put_ok("alice", "pkg", "1.0", "cut.bin", &cut);
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().join("c");
    {
        let m = Mount::start_with_cache(&server.url, Some(&server.token), &[], &cache_dir);
        assert_eq!(
            std::fs::read(m.path("alice/pkg/1.0/flip.bin")).unwrap(),
            flip
        );
        assert_eq!(std::fs::read(m.path("alice/pkg/1.0/cut.bin")).unwrap(), cut);
    }
    let flip_blob = find_blob(&cache_dir, &flip).expect("flip.bin is cached");
    let cut_blob = find_blob(&cache_dir, &cut).expect("cut.bin is cached");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&flip_blob)
        .unwrap();
    f.write_all_at(b"XXXXXXXX", 500_000).unwrap();
    drop(f);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&cut_blob)
        .unwrap();
    f.set_len(300_000).unwrap();
    drop(f);
    let m = Mount::start_with_cache(&server.url, Some(&server.token), &[], &cache_dir);
    assert_eq!(
        std::fs::read(m.path("alice/pkg/1.0/flip.bin")).unwrap(),
        flip
    );
    assert_eq!(std::fs::read(m.path("alice/pkg/1.0/cut.bin")).unwrap(), cut);
    assert!(m.log_text().contains("damaged"), "{}", m.log_text());
}

/// A page of 50 packages, ids from `first`.
fn page_of(first: u64, owner: &str) -> Value {
    Value::Array(
        (first..first + 50)
            .map(|id| {
                json!({"id": id, "name": format!("p{id}"), "version": "1.0",
                       "type": "generic", "created_at": "2024-01-01T00:00:00Z",
                       "owner": {"id": 1, "login": owner}})
            })
            .collect(),
    )
}

fn page_number(s: &Seen) -> u64 {
    url::form_urlencoded::parse(s.query.as_bytes())
        .find(|(k, _)| k == "page")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(1)
}

/// Listings that never end: a lying `X-Total-Count`, a `Link` that always
/// has a next page, the same page over and over. `ls` returns within the
/// timeout (EIO, or what the looping pages really held), memory bounded.
#[test]
fn endless_pagination_is_bounded_in_time_and_memory() {
    let server = TestServer::start(&[]);
    let proxy = Hostile::start(&server.url);
    for owner in ["counted", "linked", "looping"] {
        let login = owner.to_string();
        proxy.add(Rule::new(
            Some("GET"),
            &format!("/api/v1/users/{owner}"),
            Action::Custom(Arc::new(move |_s: &Seen| {
                json_answer(200, &json!({"id": 7, "login": login.clone()}), vec![])
            })),
        ));
    }
    proxy.add(Rule::new(
        Some("GET"),
        "/api/v1/packages/counted",
        Action::Custom(Arc::new(|s: &Seen| {
            let p = page_number(s);
            let total = vec![("x-total-count".into(), "1000000000".into())];
            json_answer(200, &page_of(p * 50, "counted"), total)
        })),
    ));
    proxy.add(Rule::new(
        Some("GET"),
        "/api/v1/packages/linked",
        Action::Custom(Arc::new(|s: &Seen| {
            let p = page_number(s);
            let link = format!(
                "<http://elsewhere.invalid/api/v1/packages/linked?page={}&limit=50>; rel=\"next\"",
                p + 1
            );
            json_answer(200, &page_of(p * 50, "linked"), vec![("link".into(), link)])
        })),
    ));
    proxy.add(Rule::new(
        Some("GET"),
        "/api/v1/packages/looping",
        Action::Custom(Arc::new(|_s: &Seen| {
            let total = vec![("x-total-count".into(), "1000000000".into())];
            json_answer(200, &page_of(1, "looping"), total)
        })),
    ));
    let m = Mount::start(
        &proxy.url,
        Some(&server.token),
        &[
            "--timeout",
            "5",
            "--owner",
            "counted",
            "--owner",
            "linked",
            "--owner",
            "looping",
        ],
    );
    for owner in ["counted", "linked"] {
        let t = Instant::now();
        let r = std::fs::read_dir(m.path(owner)).and_then(|d| d.collect::<Result<Vec<_>, _>>());
        let took = t.elapsed();
        assert_eq!(errno(r.map(|v| v.len())), libc::EIO, "ls {owner}");
        assert!(
            took < Duration::from_millis(6500),
            "ls {owner} took {took:?}"
        );
    }
    let t = Instant::now();
    assert_eq!(names_in(&m.path("looping")).len(), 50);
    assert!(t.elapsed() < Duration::from_millis(6500));
    let hwm = vm_hwm_kib(m.pid());
    assert!(hwm < 150 * 1024, "daemon peak RSS {hwm} KiB");
}

/// A body that trickles in (100 bytes/s) never holds a read() or an ls
/// past `--timeout` plus the margin.
#[test]
fn trickling_bodies_never_hold_a_syscall_past_the_timeout() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "pkg", "1.0", "slow.bin", &data(64 << 10, 3));
    server.put_ok("alice", "pkg", "2.0", "x.bin", b"x");
    let proxy = Hostile::start(&server.url);
    proxy.add(Rule::new(
        Some("GET"),
        "/slow.bin",
        Action::Trickle { bytes_per_sec: 100 },
    ));
    proxy.add(Rule::new(
        Some("GET"),
        "/pkg/2.0/files",
        Action::Trickle { bytes_per_sec: 10 },
    ));
    let m = Mount::start(&proxy.url, Some(&server.token), &["--timeout", "3"]);
    let t = Instant::now();
    let r = std::fs::read(m.path("alice/pkg/1.0/slow.bin"));
    let took = t.elapsed();
    assert_ne!(
        errno(r.map(|v| v.len())),
        0,
        "a trickled read cannot finish"
    );
    assert!(took < Duration::from_millis(4500), "read took {took:?}");
    let t = Instant::now();
    let r = std::fs::read_dir(m.path("alice/pkg/2.0")).map(|d| d.count());
    let took = t.elapsed();
    assert_eq!(errno(r), libc::EIO);
    assert!(took < Duration::from_millis(4500), "ls took {took:?}");
}

/// A 200 with fewer bytes than listed, answering a Range request: EIO, and
/// the GET is not repeated in a loop.
#[test]
fn short_200_to_a_range_request_is_eio_without_a_retry_storm() {
    let server = TestServer::start(&[]);
    let big = data(4 << 20, 4);
    server.put_ok("alice", "pkg", "1.0", "big.bin", &big);
    let proxy = Hostile::start(&server.url);
    proxy.add(Rule::new(
        Some("GET"),
        "/big.bin",
        Action::IgnoreRangeAndTruncate { keep: 1000 },
    ));
    let m = Mount::start(&proxy.url, Some(&server.token), &["--timeout", "5"]);
    let f = std::fs::File::open(m.path("alice/pkg/1.0/big.bin")).unwrap();
    let mut buf = vec![0u8; 4096];
    assert_eq!(errno(f.read_at(&mut buf, 2 << 20)), libc::EIO);
    let gets = proxy.count(Some("GET"), "/big.bin");
    assert!((1..=5).contains(&gets), "{gets} GETs for one read");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        proxy.count(Some("GET"), "/big.bin"),
        gets,
        "GETs went on after the read failed"
    );
}

/// A `Retry-After` of a day, or a 206 for bytes other than those asked:
/// the syscall fails at once (EIO) instead of sleeping or looping.
#[test]
fn retry_after_and_wrong_content_range_never_stall_a_syscall() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "pkg", "1.0", "x.bin", b"x");
    let big = data(1 << 20, 9);
    server.put_ok("alice", "pkg", "1.0", "range.bin", &big);
    let proxy = Hostile::start(&server.url);
    proxy.add(Rule::new(
        Some("GET"),
        "/pkg/2.0/files",
        Action::Custom(Arc::new(|_s: &Seen| Canned {
            status: 503,
            headers: vec![("retry-after".into(), "86400".into())],
            body: b"maintenance".to_vec(),
        })),
    ));
    proxy.add(Rule::new(
        Some("GET"),
        "/range.bin",
        Action::SetHeaders(vec![(
            "content-range".into(),
            "bytes 7-1048575/1048576".into(),
        )]),
    ));
    server.put_ok("alice", "pkg", "2.0", "y.bin", b"y");
    let m = Mount::start(&proxy.url, Some(&server.token), &["--timeout", "10"]);
    let t = Instant::now();
    let r = std::fs::read_dir(m.path("alice/pkg/2.0")).map(|d| d.count());
    assert_eq!(errno(r), libc::EIO);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "ls took {:?}",
        t.elapsed()
    );
    assert_eq!(
        proxy.count(Some("GET"), "/pkg/2.0/files"),
        1,
        "no retry after a day"
    );
    let f = std::fs::File::open(m.path("alice/pkg/1.0/range.bin")).unwrap();
    let mut buf = vec![0u8; 4096];
    let t = Instant::now();
    assert_eq!(errno(f.read_at(&mut buf, 512 << 10)), libc::EIO);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "read took {:?}",
        t.elapsed()
    );
    let gets = proxy.count(Some("GET"), "/range.bin");
    assert!((1..=5).contains(&gets), "{gets} GETs for one read");
}

/// A 50 MiB files listing is refused while it arrives (the log says so)
/// and never held in memory whole.
#[test]
fn a_huge_listing_is_refused_and_memory_stays_bounded() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "pkg", "huge", "a.bin", b"a");
    let mut body = Vec::with_capacity(51 << 20);
    body.push(b'[');
    let mut i = 0u64;
    while body.len() < 50 << 20 {
        if i > 0 {
            body.push(b',');
        }
        write!(
            body,
            r#"{{"id":{i},"size":1,"name":"f{i:012}.bin","md5":"","sha1":"","sha256":"{EMPTY_SHA256}","sha512":""}}"#
        )
        .unwrap();
        i += 1;
    }
    body.push(b']');
    let body = Arc::new(body);
    let proxy = Hostile::start(&server.url);
    proxy.add(Rule::new(
        Some("GET"),
        "/pkg/huge/files",
        Action::Custom(Arc::new(move |_s: &Seen| Canned {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.as_ref().clone(),
        })),
    ));
    let m = Mount::start(&proxy.url, Some(&server.token), &[]);
    let r = std::fs::read_dir(m.path("alice/pkg/huge")).map(|d| d.count());
    assert_eq!(errno(r), libc::EIO);
    let hwm = vm_hwm_kib(m.pid());
    assert!(hwm < 100 * 1024, "daemon peak RSS {hwm} KiB");
    let log = m.log_text();
    assert!(log.contains("larger than"), "{log}");
}

/// Entries that cannot be file names, or whose fields have the wrong
/// type, are skipped; the sane ones are listed.
#[test]
fn bad_names_and_fields_are_skipped_and_the_rest_listed() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "names", "1.0", "good1.bin", b"one");
    server.put_ok("alice", "names", "1.0", "good2.bin", b"two");
    let proxy = Hostile::start(&server.url);
    let bad_names = [
        "a/b".to_string(),
        String::new(),
        ".".into(),
        "..".into(),
        "x".repeat(300),
        "x\0y".into(),
        "ctl\u{1}.bin".into(),
        "new\nline".into(),
    ];
    let files_bad = bad_names.clone();
    proxy.add(Rule::new(
        Some("GET"),
        "/files",
        Action::RewriteJson(Arc::new(move |v| {
            let mut out = v.as_array().cloned().unwrap_or_default();
            let good = out[0].clone();
            for n in &files_bad {
                let mut e = good.clone();
                e["name"] = json!(n);
                out.push(e);
            }
            let mut e = good.clone();
            e["name"] = json!("huge.bin");
            e["size"] = json!(9_223_372_036_854_775_808u64);
            out.push(e);
            let mut e = good.clone();
            e["name"] = json!("strsize.bin");
            e["size"] = json!("12");
            out.push(e);
            let mut e = good.clone();
            e["name"] = json!(5);
            out.push(e);
            out.push(json!("junk"));
            out.push(json!(42));
            Value::Array(out)
        })),
    ));
    let pkg_bad = bad_names.clone();
    proxy.add(Rule::new(
        Some("GET"),
        "/api/v1/packages/alice",
        Action::RewriteJson(Arc::new(move |v| {
            let mut out = v.as_array().cloned().unwrap_or_default();
            let good = out[0].clone();
            for (i, n) in pkg_bad.iter().enumerate() {
                let mut e = good.clone();
                e["id"] = json!(9000 + i);
                e["name"] = json!(n);
                out.push(e);
                let mut e = good.clone();
                e["id"] = json!(9500 + i);
                e["version"] = json!(n);
                out.push(e);
            }
            let mut e = good.clone();
            e["id"] = json!(9999);
            e["name"] = json!(["not", "a", "string"]);
            out.push(e);
            Value::Array(out)
        })),
    ));
    let m = Mount::start(&proxy.url, Some(&server.token), &[]);
    assert_eq!(names_in(&m.path("alice")), ["names"]);
    assert_eq!(names_in(&m.path("alice/names")), ["1.0"]);
    assert_eq!(
        names_in(&m.path("alice/names/1.0")),
        ["good1.bin", "good2.bin"]
    );
    assert_eq!(
        std::fs::read(m.path("alice/names/1.0/good2.bin")).unwrap(),
        b"two"
    );
}

/// A proxy that echoes the request headers (and a forged log line) in an
/// error body: EACCES, the token never in the log, no forged line.
#[test]
fn echoed_error_bodies_never_put_the_token_or_forged_lines_in_the_log() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "pkg", "1.0", "echo.bin", b"secret bytes");
    let proxy = Hostile::start(&server.url);
    proxy.add(Rule::new(
        Some("GET"),
        "/echo.bin",
        Action::Custom(Arc::new(|s: &Seen| {
            let mut body = String::from("forbidden; you sent:\n");
            for (k, v) in &s.headers {
                body.push_str(&format!("{k}: {v}\n"));
            }
            body.push_str("ERROR forged line\r\nERROR forged again\n");
            Canned {
                status: 403,
                headers: vec![("content-type".into(), "text/plain".into())],
                body: body.into_bytes(),
            }
        })),
    ));
    let m = Mount::start(&proxy.url, Some(&server.token), &[]);
    let r = std::fs::read(m.path("alice/pkg/1.0/echo.bin"));
    assert_eq!(errno(r.map(|v| v.len())), libc::EACCES);
    let log = m.log_text();
    assert!(proxy.count(Some("GET"), "/echo.bin") >= 1);
    assert!(
        !log.contains(&server.token),
        "the token is in the log:\n{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.trim_start().starts_with("ERROR forged")),
        "a forged line made it into the log:\n{log}"
    );
    assert!(log.contains("403"), "{log}");
}

/// The token leaves the daemon's environment once read: neither the
/// daemon's environ nor a `fusermount3 -u -z` run at a busy unmount
/// (SIGTERM while a file is open) carries it.
#[test]
fn the_token_never_reaches_a_childs_environment() {
    let real = Command::new("sh")
        .args(["-c", "command -v fusermount3"])
        .output()
        .expect("sh");
    let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
    assert!(!real.is_empty(), "fusermount3 not found");
    let server = TestServer::start(&[]);
    server.put_ok("alice", "pkg", "1.0", "f.bin", b"hello");
    let bin = tempfile::tempdir().unwrap();
    let record = bin.path().join("env.txt");
    let wrapper = bin.path().join("fusermount3");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n{{ echo \"ARGS $*\"; env; }} >> '{}'\nexec '{real}' \"$@\"\n",
            record.display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&wrapper)
        .status()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut m = Mount::start_with_env(&server.url, Some(&server.token), &[], &[("PATH", path)]);
    let environ = std::fs::read(format!("/proc/{}/environ", m.pid())).unwrap();
    assert!(
        !String::from_utf8_lossy(&environ).contains(&server.token),
        "the token is still in the daemon's environment"
    );
    // Keep the mount busy, then ask the daemon to go.
    let mut busy = std::fs::File::open(m.path("alice/pkg/1.0/f.bin")).unwrap();
    let mut s = String::new();
    busy.read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello");
    unsafe { libc::kill(m.pid() as i32, libc::SIGTERM) };
    let status = m.wait_exit(20);
    drop(busy);
    let rec = std::fs::read_to_string(&record).unwrap_or_default();
    assert!(
        rec.contains("ARGS -u -z"),
        "no lazy unmount ran (status {status:?}):\n{rec}\n{}",
        m.log_text()
    );
    assert!(
        !rec.contains(&server.token),
        "a child got the token:\n{rec}"
    );
}
