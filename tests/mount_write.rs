//! End-to-end tests of the write path: publishing with real
//! tools through a real mount, EEXIST/EINVAL/EIO/EROFS, deletes.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::mount::Mount;
use common::server::TestServer;
use common::{data, sha256_hex};

fn mount(server: &TestServer, extra: &[&str]) -> Mount {
    Mount::start(&server.url, Some(&server.token), extra)
}

fn sh(script: &str) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The registry's bytes of a file (through HTTP, not the mount).
fn remote(server: &TestServer, owner: &str, pkg: &str, ver: &str, file: &str) -> Option<Vec<u8>> {
    server.get_opt(owner, pkg, ver, file)
}

fn write_local(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn publishes_with_cp_mv_dd_tee_shell_python_and_touch() {
    let server = TestServer::start(&[]);
    let m = mount(&server, &[]);
    let src = tempfile::tempdir().unwrap();
    let a = write_local(src.path(), "a.bin", &data(3 * 1024 * 1024 + 5, 1));
    let v = m.path("alice/tool/1.0");
    std::fs::create_dir_all(&v).unwrap(); // mkdir -p of package and version
    assert!(std::fs::metadata(&v).unwrap().is_dir());

    ok(&sh(&format!("cp {} {}/", a.display(), v.display())));
    assert_eq!(
        remote(&server, "alice", "tool", "1.0", "a.bin").unwrap(),
        data(3 * 1024 * 1024 + 5, 1)
    );

    let b = write_local(src.path(), "b.bin", b"moved");
    ok(&sh(&format!("mv {} {}/", b.display(), v.display())));
    assert!(!b.exists());
    assert_eq!(
        remote(&server, "alice", "tool", "1.0", "b.bin").unwrap(),
        b"moved"
    );

    ok(&sh(&format!(
        "dd if={} of={}/dd.bin bs=64k status=none",
        a.display(),
        v.display()
    )));
    assert_eq!(
        remote(&server, "alice", "tool", "1.0", "dd.bin").unwrap(),
        data(3 * 1024 * 1024 + 5, 1)
    );

    ok(&sh(&format!(
        "printf 'tee data' | tee {}/tee.txt >/dev/null",
        v.display()
    )));
    assert_eq!(
        remote(&server, "alice", "tool", "1.0", "tee.txt").unwrap(),
        b"tee data"
    );

    ok(&sh(&format!("printf 'data' > {}/redir.txt", v.display())));
    assert_eq!(
        remote(&server, "alice", "tool", "1.0", "redir.txt").unwrap(),
        b"data"
    );

    ok(&sh(&format!(
        "python3 -c \"f=open('{}/py.bin','wb'); f.write(b'py'*1000); f.close()\"",
        v.display()
    )));
    assert_eq!(
        remote(&server, "alice", "tool", "1.0", "py.bin").unwrap(),
        b"py".repeat(1000)
    );

    ok(&sh(&format!("touch {}/empty", v.display())));
    // An empty file is published when its last descriptor is released.
    let mut got = None;
    for _ in 0..500 {
        got = remote(&server, "alice", "tool", "1.0", "empty");
        if got.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(got.unwrap(), b"");

    // cp -r of a directory of files into a new version.
    let tree = tempfile::tempdir().unwrap();
    for i in 0..5 {
        write_local(tree.path(), &format!("f{i}"), &data(1000 + i, i as u64));
    }
    ok(&sh(&format!(
        "cp -r {} {}",
        tree.path().display(),
        m.path("alice/tool/2.0").display()
    )));
    for i in 0..5 {
        assert_eq!(
            remote(&server, "alice", "tool", "2.0", &format!("f{i}")).unwrap(),
            data(1000 + i, i as u64)
        );
    }

    // Listings show what was published, with real sizes, and reads of
    // every published file are byte-exact.
    let meta = std::fs::metadata(v.join("a.bin")).unwrap();
    assert_eq!(meta.len(), 3 * 1024 * 1024 + 5);
    for f in [
        "a.bin",
        "b.bin",
        "dd.bin",
        "tee.txt",
        "redir.txt",
        "py.bin",
        "empty",
    ] {
        let via_mount = std::fs::read(v.join(f)).unwrap();
        assert_eq!(
            Some(via_mount),
            remote(&server, "alice", "tool", "1.0", f),
            "{f}"
        );
    }
}

#[test]
fn rsync_publishes_only_final_names() {
    let server = TestServer::start(&[]);
    let m = mount(&server, &[]);
    let tree = tempfile::tempdir().unwrap();
    for i in 0..4 {
        write_local(
            tree.path(),
            &format!("r{i}.tar.gz"),
            &data(200_000 + i, 50 + i as u64),
        );
    }
    std::fs::create_dir(m.path("alice/tool")).unwrap();
    ok(&sh(&format!(
        "rsync -r {}/ {}/",
        tree.path().display(),
        m.path("alice/tool/1.3.1").display()
    )));
    let files = server.files("alice", "tool", "1.3.1");
    let mut names: Vec<&str> = files.iter().map(|f| f["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(
        names,
        vec!["r0.tar.gz", "r1.tar.gz", "r2.tar.gz", "r3.tar.gz"]
    );
    for i in 0..4 {
        let got = remote(&server, "alice", "tool", "1.3.1", &format!("r{i}.tar.gz")).unwrap();
        assert_eq!(
            sha256_hex(&got),
            sha256_hex(&data(200_000 + i, 50 + i as u64))
        );
    }
}

#[test]
fn existing_files_give_eexist_at_open_and_at_close() {
    for legacy in [false, true] {
        let args: &[&str] = if legacy {
            &["--legacy-duplicates"]
        } else {
            &[]
        };
        let server = TestServer::start(args);
        server.put_ok("alice", "dup", "1.0", "a.bin", b"first");
        let m = mount(&server, &["--metadata-ttl", "600"]);
        let src = tempfile::tempdir().unwrap();
        let f = write_local(src.path(), "a.bin", b"second");
        // Known to exist: refused at open, before any data.
        let out = sh(&format!(
            "cp {} {}/",
            f.display(),
            m.path("alice/dup/1.0").display()
        ));
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("File exists"),
            "{out:?}"
        );
        assert_eq!(
            remote(&server, "alice", "dup", "1.0", "a.bin").unwrap(),
            b"first"
        );

        // Published by someone else after our listing: refused at close.
        let _ = std::fs::read_dir(m.path("alice/dup/1.0")).unwrap().count();
        let other = if legacy { "b.bin" } else { "late.bin" };
        if !legacy {
            server.put_ok("alice", "dup", "1.0", other, b"theirs");
        }
        let g = write_local(src.path(), other, b"ours");
        let out = sh(&format!(
            "cp {} {}/",
            g.display(),
            m.path("alice/dup/1.0").display()
        ));
        assert!(!out.status.success(), "legacy={legacy}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("File exists"),
            "legacy={legacy}: {out:?}"
        );
        if !legacy {
            assert_eq!(
                remote(&server, "alice", "dup", "1.0", other).unwrap(),
                b"theirs"
            );
        } else {
            assert!(remote(&server, "alice", "dup", "1.0", other).is_none());
        }
        assert!(
            std::fs::read_dir(m.cache.join("spool"))
                .unwrap()
                .next()
                .is_none(),
            "spool left behind"
        );
    }
}

#[test]
fn fsync_publishes_at_once_and_reports_the_outcome() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "sync", "1.0", "a.bin", b"first");
    let m = mount(&server, &["--metadata-ttl", "600"]);
    let v = m.path("alice/sync/1.0");
    let _ = std::fs::read_dir(&v).unwrap().count();

    // An empty file: published before fsync returns, not at release.
    let f = std::fs::File::create(v.join("empty")).unwrap();
    f.sync_all().unwrap();
    assert_eq!(
        remote(&server, "alice", "sync", "1.0", "empty").unwrap(),
        b""
    );
    // Published files cannot change: later writes are refused.
    let err = (&f).write_all(b"late").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    drop(f);

    // Data written so far is published by fsync.
    let mut g = std::fs::File::create(v.join("data.bin")).unwrap();
    g.write_all(b"synced").unwrap();
    g.sync_data().unwrap();
    assert_eq!(
        remote(&server, "alice", "sync", "1.0", "data.bin").unwrap(),
        b"synced"
    );
    drop(g);

    // Published by someone else after our listing: fsync says EEXIST, and
    // the registry keeps their bytes.
    server.put_ok("alice", "sync", "1.0", "late.bin", b"theirs");
    let h = std::fs::File::create(v.join("late.bin")).unwrap();
    let err = h.sync_all().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EEXIST), "{err}");
    drop(h);
    assert_eq!(
        remote(&server, "alice", "sync", "1.0", "late.bin").unwrap(),
        b"theirs"
    );

    // Scratch files stay local.
    let s = std::fs::File::create(v.join(".tmp")).unwrap();
    s.sync_all().unwrap();
    drop(s);
    let names: Vec<String> = server
        .files("alice", "sync", "1.0")
        .iter()
        .filter_map(|f| f["name"].as_str().map(str::to_string))
        .collect();
    assert!(!names.iter().any(|n| n.starts_with('.')), "{names:?}");
}

/// The kernel flushes every descriptor that is closed, also the copies a
/// child process inherits and closes at exec or at exit. A program that
/// starts subprocesses while it writes a file (build tools, test runners)
/// must still publish the whole file, once, at its own `close()`; a file
/// that a child wrote after its opener closed it is published at the last
/// release.
#[test]
fn closes_by_child_processes_do_not_publish_a_file_being_written() {
    let server = TestServer::start(&[]);
    let m = mount(&server, &[]);
    let v = m.path("alice/fork/1.0");
    std::fs::create_dir_all(&v).unwrap();
    server.reset_now();
    let mut f = std::fs::File::create(v.join("a.bin")).unwrap();
    f.write_all(&data(1 << 20, 1)).unwrap();
    // Each child inherits the descriptor (close-on-exec) and closes its
    // copy at exec: a FLUSH from another process, with data written.
    for _ in 0..3 {
        assert!(Command::new("true").status().unwrap().success());
    }
    f.write_all(&data(1 << 20, 2))
        .unwrap_or_else(|e| panic!("write after a child's exec: {e}\n{}", m.log_text()));
    assert_eq!(
        server.files("alice", "fork", "1.0").len(),
        0,
        "published early"
    );
    drop(f);
    let mut want = data(1 << 20, 1);
    want.extend(data(1 << 20, 2));
    assert_eq!(
        remote(&server, "alice", "fork", "1.0", "a.bin").map(|b| sha256_hex(&b)),
        Some(sha256_hex(&want))
    );

    // The opener closes first, before the child writes (`cmd > f &`,
    // `Popen(stdout=f)`): the child's bytes are published when the last
    // descriptor goes away.
    let g = std::fs::File::create(v.join("child.out")).unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("sleep 0.3; printf from-the-child")
        .stdout(g)
        .spawn()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let t = std::time::Instant::now();
    while remote(&server, "alice", "fork", "1.0", "child.out").is_none()
        && t.elapsed() < std::time::Duration::from_secs(10)
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        remote(&server, "alice", "fork", "1.0", "child.out").as_deref(),
        Some(&b"from-the-child"[..]),
        "{}",
        m.log_text()
    );
    assert_eq!(server.stats_now()["file_put"].as_u64(), Some(2));
}

/// Waits until the registry has seen `n` file PUTs (requests started, not
/// necessarily finished); false after 10 s.
fn wait_for_puts(server: &TestServer, n: u64) -> bool {
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_secs(10) {
        if server.stats_now()["file_put"].as_u64().unwrap_or(0) >= n {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

#[test]
fn sequential_writes_stream_the_upload_and_others_upload_at_close() {
    use std::os::unix::fs::FileExt;
    let server = TestServer::start(&[]);
    let m = mount(&server, &[]);
    let v = m.path("alice/stream/1.0");
    std::fs::create_dir_all(&v).unwrap();
    server.reset_now();
    let a = data(8 << 20, 1);

    // Written sequentially: the PUT is under way before close().
    let mut f = std::fs::File::create(v.join("seq.bin")).unwrap();
    f.write_all(&a[..4 << 20]).unwrap();
    assert!(
        wait_for_puts(&server, 1),
        "no PUT while the file was written"
    );
    assert!(
        server.files("alice", "stream", "1.0").is_empty(),
        "published before close"
    );
    f.write_all(&a[4 << 20..]).unwrap();
    let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
    assert_eq!(unsafe { libc::close(fd) }, 0, "{}", m.log_text());
    assert_eq!(
        remote(&server, "alice", "stream", "1.0", "seq.bin").unwrap(),
        a
    );
    assert_eq!(server.stats_now()["file_put"].as_u64(), Some(1));

    // A write behind the end abandons the stream; close() uploads the final
    // bytes, and the abandoned PUT left nothing (the registry refuses
    // duplicates, so a stored partial file would have failed close()).
    server.reset_now();
    let mut g = std::fs::File::create(v.join("rewrite.bin")).unwrap();
    g.write_all(&a[..2 << 20]).unwrap();
    assert!(wait_for_puts(&server, 1));
    g.write_all_at(b"XYZ", 100).unwrap();
    g.write_all(&a[2 << 20..3 << 20]).unwrap();
    let mut want = a[..3 << 20].to_vec();
    want[100..103].copy_from_slice(b"XYZ");
    let fd = std::os::fd::IntoRawFd::into_raw_fd(g);
    assert_eq!(unsafe { libc::close(fd) }, 0, "{}", m.log_text());
    assert_eq!(
        remote(&server, "alice", "stream", "1.0", "rewrite.bin").unwrap(),
        want
    );
    assert_eq!(server.stats_now()["file_put"].as_u64(), Some(2));

    // A truncate abandons it too.
    let h = std::fs::File::create(v.join("cut.bin")).unwrap();
    (&h).write_all(&a[..1 << 20]).unwrap();
    h.set_len(1000).unwrap();
    drop(h);
    assert_eq!(
        remote(&server, "alice", "stream", "1.0", "cut.bin").unwrap(),
        &a[..1000]
    );
    // Every file is listed once, with the bytes written.
    let listed = server.files("alice", "stream", "1.0");
    assert_eq!(listed.len(), 3, "{listed:?}");
    let spool = std::fs::read_dir(m.cache.join("spool")).unwrap().count();
    assert_eq!(spool, 0, "spool files left behind");
    drop(m);

    // --upload-on-close: nothing is sent before close().
    let m = mount(&server, &["--upload-on-close"]);
    server.reset_now();
    let mut f = std::fs::File::create(m.path("alice/stream/1.0/late.bin")).unwrap();
    f.write_all(&a[..4 << 20]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(server.stats_now()["file_put"].as_u64(), Some(0));
    drop(f);
    assert_eq!(
        remote(&server, "alice", "stream", "1.0", "late.bin").unwrap(),
        &a[..4 << 20]
    );
    assert_eq!(server.stats_now()["file_put"].as_u64(), Some(1));
}

#[test]
fn invalid_names_are_einval_and_send_nothing() {
    let server = TestServer::start(&[]);
    let m = mount(&server, &[]);
    std::fs::create_dir_all(m.path("alice/ok/1.0")).unwrap();
    server.reset_now();
    let err = std::fs::write(m.path("alice/ok/1.0/bad?name"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    let err = std::fs::write(m.path("alice/ok/1.0/ trailing"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    let err = std::fs::create_dir(m.path("alice/bad name")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    let err = std::fs::create_dir(m.path("alice/ok/ 1.0")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    assert_eq!(server.stats_now()["file_put"].as_u64(), Some(0));
}

#[test]
fn failed_upload_fails_close_and_mv_keeps_the_source() {
    let server = TestServer::start(&[]);
    let m = mount(&server, &[]);
    std::fs::create_dir_all(m.path("alice/fail/1.0")).unwrap();
    let src = tempfile::tempdir().unwrap();
    let f = write_local(src.path(), "x.bin", &data(100_000, 4));
    // Two 500s: one is survived (listing check, then one more PUT).
    server.fault_now(
        serde_json::json!({"kind": "status", "status": 500, "count": 2, "method": "PUT"}),
    );
    let out = sh(&format!(
        "mv {} {}/",
        f.display(),
        m.path("alice/fail/1.0").display()
    ));
    assert!(
        !out.status.success(),
        "mv succeeded although the PUT failed"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Input/output error"), "{stderr}");
    assert!(m.log_text().contains("injected fault"), "{}", m.log_text());
    assert!(f.exists(), "mv lost its source");
    assert!(remote(&server, "alice", "fail", "1.0", "x.bin").is_none());
    assert!(std::fs::metadata(m.path("alice/fail/1.0/x.bin")).is_err());
    assert!(std::fs::read_dir(m.cache.join("spool"))
        .unwrap()
        .next()
        .is_none());
    // The next attempt works.
    ok(&sh(&format!(
        "mv {} {}/",
        f.display(),
        m.path("alice/fail/1.0").display()
    )));
    assert_eq!(
        remote(&server, "alice", "fail", "1.0", "x.bin").unwrap(),
        data(100_000, 4)
    );
}

/// The PUT that follows a failed one finds the name taken (409): when the
/// registry holds exactly these bytes (the first attempt landed late, or an
/// identical upload won), `close()` succeeds; other bytes are EEXIST.
#[test]
fn a_retry_that_meets_the_same_bytes_succeeds_and_other_bytes_are_eexist() {
    let server = TestServer::start(&[]);
    let m = mount(&server, &[]);
    let v = m.path("alice/late/1.0");
    std::fs::create_dir_all(&v).unwrap();
    for (name, theirs, want_ok) in [
        ("same.bin", b"ours".as_slice(), true),
        ("other.bin", b"theirs".as_slice(), false),
    ] {
        server.reset_now();
        // The first PUT fails; the second waits, and meanwhile the name
        // is published directly.
        server.fault_now(
            serde_json::json!({"kind": "status", "status": 500, "count": 1, "method": "PUT"}),
        );
        server.fault_now(
            serde_json::json!({"kind": "delay", "delay_ms": 3000, "count": 1, "method": "PUT"}),
        );
        let path = v.join(name);
        // (std::fs::write ignores the result of close(): close by hand.)
        let writer = std::thread::spawn(move || -> std::io::Result<()> {
            let mut f = std::fs::File::create(path)?;
            f.write_all(b"ours")?;
            let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
            match unsafe { libc::close(fd) } {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
        assert!(
            wait_for_puts(&server, 2),
            "no second PUT:\n{}",
            m.log_text()
        );
        server.put_ok("alice", "late", "1.0", name, theirs);
        let r = writer.join().unwrap();
        if want_ok {
            r.unwrap_or_else(|e| panic!("{name}: {e}\n{}", m.log_text()));
        } else {
            assert_eq!(
                r.err().and_then(|e| e.raw_os_error()),
                Some(libc::EEXIST),
                "{}",
                m.log_text()
            );
        }
        assert_eq!(
            remote(&server, "alice", "late", "1.0", name).unwrap(),
            theirs
        );
    }
}

#[test]
fn read_only_mount_refuses_every_write_with_erofs() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "ro", "1.0", "f", b"x");
    let m = mount(&server, &["--read-only"]);
    let meta = std::fs::metadata(m.path("alice/ro/1.0/f")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::mode(&meta) & 0o777, 0o444);
    let e = std::fs::write(m.path("alice/ro/1.0/g"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    let e = std::fs::create_dir(m.path("alice/ro/2.0")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    let e = std::fs::remove_file(m.path("alice/ro/1.0/f")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
}

#[test]
fn rm_rmdir_and_rm_r() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "del", "1.0", "a", b"a");
    server.put_ok("alice", "del", "1.0", "b", b"b");
    server.put_ok("alice", "del", "2.0", "c", b"c");
    server.put_ok("alice", "del", "3.0", "d", b"d");
    server.put_ok("alice", "keep", "1.0", "k", b"k");
    let m = mount(&server, &["--metadata-ttl", "1"]);
    // rmdir of a version with files
    let e = std::fs::remove_dir(m.path("alice/del/1.0")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY));
    // rm of one file, then of the last one: the version disappears.
    std::fs::remove_file(m.path("alice/del/1.0/a")).unwrap();
    assert!(remote(&server, "alice", "del", "1.0", "a").is_none());
    assert_eq!(remote(&server, "alice", "del", "1.0", "b").unwrap(), b"b");
    std::fs::remove_file(m.path("alice/del/1.0/b")).unwrap();
    assert!(server.files("alice", "del", "1.0").is_empty());
    let listed: Vec<String> = std::fs::read_dir(m.path("alice/del"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!listed.contains(&"1.0".to_string()), "{listed:?}");
    std::fs::remove_dir(m.path("alice/del/1.0")).unwrap(); // what rm -r does next
                                                           // rm -r of a version, then of the whole package.
    ok(&sh(&format!("rm -r {}", m.path("alice/del/2.0").display())));
    assert!(remote(&server, "alice", "del", "2.0", "c").is_none());
    ok(&sh(&format!("rm -r {}", m.path("alice/del").display())));
    assert!(remote(&server, "alice", "del", "3.0", "d").is_none());
    // Deleting a package's last file removes the package too (as on the
    // registry): no longer listed, and rm -r's rmdirs still succeed.
    server.put_ok("alice", "solo", "1.0", "s", b"s");
    std::thread::sleep(std::time::Duration::from_millis(1100)); // listings expire
    std::fs::remove_file(m.path("alice/solo/1.0/s")).unwrap();
    let owner: Vec<String> = std::fs::read_dir(m.path("alice"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!owner.contains(&"solo".to_string()), "{owner:?}");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::remove_dir(m.path("alice/solo/1.0")).unwrap();
    std::fs::remove_dir(m.path("alice/solo")).unwrap();
    assert!(std::fs::metadata(m.path("alice/solo")).is_err());
    // Placeholders: mkdir, rmdir.
    std::fs::create_dir_all(m.path("alice/new/0.1")).unwrap();
    std::fs::remove_dir(m.path("alice/new/0.1")).unwrap();
    std::fs::remove_dir(m.path("alice/new")).unwrap();
    assert!(std::fs::metadata(m.path("alice/new")).is_err());
    // Renaming a published file is refused.
    let e = std::fs::rename(m.path("alice/keep/1.0/k"), m.path("alice/keep/1.0/k2")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
}

#[test]
fn spooled_writes_support_offsets_truncate_and_reread_before_close() {
    let server = TestServer::start(&[]);
    let m = mount(&server, &[]);
    std::fs::create_dir_all(m.path("alice/sp/1.0")).unwrap();
    let p = m.path("alice/sp/1.0/f.bin");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap();
    use std::io::{Read, Seek, SeekFrom};
    f.write_all(b"hello world").unwrap();
    f.seek(SeekFrom::Start(6)).unwrap();
    f.write_all(b"WORLD!!").unwrap();
    f.set_len(12).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello WORLD!");
    drop(f);
    assert_eq!(
        remote(&server, "alice", "sp", "1.0", "f.bin").unwrap(),
        b"hello WORLD!"
    );
    // A descriptor that stays open after the upload cannot write more.
    let p2 = m.path("alice/sp/1.0/g.bin");
    let mut a = std::fs::File::create_new(&p2).unwrap();
    a.write_all(b"one").unwrap();
    let b = a.try_clone().unwrap(); // dup
    drop(a); // close() publishes
    let mut b = b;
    assert!(b.write_all(b"two").is_err());
    drop(b);
    assert_eq!(
        remote(&server, "alice", "sp", "1.0", "g.bin").unwrap(),
        b"one"
    );
}

/// Linkers (lld, gold) and other tools write their output through a
/// shared writable mmap: the pages must reach the spool and be published.
#[test]
fn a_file_written_through_a_shared_mmap_is_published() {
    use std::os::fd::AsRawFd;
    let server = TestServer::start(&[]);
    let m = mount(&server, &[]);
    std::fs::create_dir_all(m.path("alice/mm/1.0")).unwrap();
    let want = data(3 * 1024 * 1024 + 123, 41);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(m.path("alice/mm/1.0/a.out"))
        .unwrap();
    f.set_len(want.len() as u64).unwrap();
    let fd = f.as_raw_fd();
    // SAFETY: a fresh mapping of `want.len()` bytes of our own file.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            want.len(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        std::ptr::copy_nonoverlapping(want.as_ptr(), p.cast::<u8>(), want.len());
        // No msync: unmapping and closing must be enough, as for a linker.
        assert_eq!(libc::munmap(p, want.len()), 0);
    }
    let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
    // SAFETY: we own fd; close() reports the upload's outcome.
    assert_eq!(
        unsafe { libc::close(fd) },
        0,
        "{}",
        std::io::Error::last_os_error()
    );
    let got = remote(&server, "alice", "mm", "1.0", "a.out").expect("published");
    assert_eq!(sha256_hex(&got), sha256_hex(&want));
}

#[test]
fn large_upload_keeps_daemon_memory_flat() {
    let server = TestServer::start(&[]);
    let m = mount(&server, &[]);
    std::fs::create_dir_all(m.path("alice/big/1.0")).unwrap();
    let size: u64 = 1024 * 1024 * 1024;
    let out = sh(&format!(
        "head -c {size} /dev/zero | dd of={}/zero.bin bs=1M iflag=fullblock status=none",
        m.path("alice/big/1.0").display()
    ));
    ok(&out);
    let files = server.files("alice", "big", "1.0");
    assert_eq!(files[0]["size"].as_u64(), Some(size));
    let status = std::fs::read_to_string(format!("/proc/{}/status", m.pid())).unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(hwm_kib < 64 * 1024, "daemon peak RSS {hwm_kib} KiB");
}

#[test]
fn quota_and_missing_rights_map_to_edquot_and_eacces() {
    let server = TestServer::start_with_config(
        r#"
[[users]]
name = "alice"
  [[users.tokens]]
  value_env = "PKGFS_SERVE_TOKEN"
  [[users.tokens]]
  value = "read-only-token"
  scopes = ["read:package", "read:user", "read:organization"]
  [[users.tokens]]
  value = "public-only-token"
  public_only = true

[[orgs]]
name = "secret"
visibility = "private"
members = [{ user = "alice", role = "owner" }]
"#,
        &["--max-file-size", "1KiB"],
    );
    let m = mount(&server, &[]);
    std::fs::create_dir_all(m.path("alice/q/1.0")).unwrap();
    let out = sh(&format!(
        "head -c 2048 /dev/zero > {}/big.bin",
        m.path("alice/q/1.0").display()
    ));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("quota"),
        "{out:?}"
    );
    assert!(remote(&server, "alice", "q", "1.0", "big.bin").is_none());
    assert!(m
        .log_text()
        .contains("maximum allowed package type size exceeded"));

    let ro = Mount::start(&server.url, Some("read-only-token"), &[]);
    std::fs::create_dir_all(ro.path("alice/q/2.0")).unwrap();
    let src = tempfile::tempdir().unwrap();
    let f = write_local(src.path(), "f", b"x");
    let out = sh(&format!(
        "cp {} {}/",
        f.display(),
        ro.path("alice/q/2.0").display()
    ));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    assert!(remote(&server, "alice", "q", "2.0", "f").is_none());

    // 403 that is not a quota (a public-only token on a private owner):
    // EACCES, and the server's message in the log.
    let po = Mount::start(
        &server.url,
        Some("public-only-token"),
        &["--owner", "secret"],
    );
    let _ = std::fs::create_dir_all(po.path("secret/p/1.0"));
    let out = sh(&format!(
        "cp {} {}/",
        f.display(),
        po.path("secret/p/1.0").display()
    ));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}\n{}",
        po.log_text()
    );
    assert!(po.log_text().contains("403"), "{}", po.log_text());
}

#[test]
fn published_file_is_read_back_from_the_cache_without_a_download() {
    let server = TestServer::start(&[]);
    let m = mount(&server, &[]);
    std::fs::create_dir_all(m.path("alice/rb/1.0")).unwrap();
    let src = tempfile::tempdir().unwrap();
    let bytes = data(2 * 1024 * 1024 + 3, 77);
    let f = write_local(src.path(), "f.bin", &bytes);
    ok(&sh(&format!(
        "cp {} {}/",
        f.display(),
        m.path("alice/rb/1.0").display()
    )));
    server.reset_now();
    assert_eq!(std::fs::read(m.path("alice/rb/1.0/f.bin")).unwrap(), bytes);
    assert_eq!(server.stats_now()["file_get"].as_u64(), Some(0));
    assert_eq!(std::fs::read_dir(m.cache.join("blobs")).unwrap().count(), 1);

    // The same bytes under another name: one blob, both read locally, and
    // the redundant spool is removed.
    ok(&sh(&format!(
        "cp {} {}/g.bin",
        f.display(),
        m.path("alice/rb/1.0").display()
    )));
    assert_eq!(std::fs::read(m.path("alice/rb/1.0/g.bin")).unwrap(), bytes);
    assert_eq!(std::fs::read(m.path("alice/rb/1.0/f.bin")).unwrap(), bytes);
    assert_eq!(server.stats_now()["file_get"].as_u64(), Some(0));
    assert_eq!(std::fs::read_dir(m.cache.join("blobs")).unwrap().count(), 1);
    let t = std::time::Instant::now();
    while std::fs::read_dir(m.cache.join("spool")).unwrap().count() > 0 {
        assert!(t.elapsed().as_secs() < 10, "the redundant spool stayed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn proxy_body_limit_is_efbig_and_concurrent_first_uploads_all_land() {
    let server = TestServer::start(&[]);
    let m = mount(&server, &[]);
    std::fs::create_dir_all(m.path("alice/lim/1.0")).unwrap();
    let src = tempfile::tempdir().unwrap();
    let f = write_local(src.path(), "f.bin", b"too big for the proxy");
    server.fault_now(
        serde_json::json!({"kind": "status", "status": 413, "count": 1, "method": "PUT"}),
    );
    let out = sh(&format!(
        "cp {} {}/",
        f.display(),
        m.path("alice/lim/1.0").display()
    ));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("File too large"),
        "{out:?}"
    );

    // Eight files copied at once into one new version (serialised first
    // upload, PROTOCOL.md §concurrency): all of them are published.
    std::fs::create_dir_all(m.path("alice/lim/2.0")).unwrap();
    server.reset_now();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let dest = m.path(&format!("alice/lim/2.0/c{i}"));
            std::thread::spawn(move || std::fs::write(dest, data(10_000 + i, i as u64)))
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    for i in 0..8 {
        assert_eq!(
            remote(&server, "alice", "lim", "2.0", &format!("c{i}")).unwrap(),
            data(10_000 + i, i as u64)
        );
    }
    // The registry never saw two PUTs into the new version at once before
    // its first file was stored.
    let stats = server.stats_now();
    assert_eq!(stats["first_put_overlaps"].as_u64(), Some(0), "{stats}");
}

/// The edges of names and descriptors: placeholders are listed by their
/// parents; a descriptor duplicated (dup, as a shell does) and closed later
/// does not upload again and cannot write after the publication; a file
/// deleted behind the mount is simply gone for `rm`; a scratch file renamed
/// onto a published name is EEXIST (the registry keeps its bytes), and
/// moved to another directory EXDEV.
#[test]
fn placeholders_dups_stale_deletes_and_renames() {
    use std::os::fd::{AsRawFd, FromRawFd};
    let server = TestServer::start(&[]);
    server.put_ok("alice", "edge", "1.0", "taken.bin", b"registry");
    server.put_ok("alice", "edge", "1.0", "gone.bin", b"x");
    let m = mount(&server, &["--metadata-ttl", "600"]);
    // Placeholders appear in their parents' listings.
    std::fs::create_dir_all(m.path("alice/newpkg/0.1")).unwrap();
    let names = |p: &str| -> Vec<String> {
        std::fs::read_dir(m.path(p))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert!(names("alice").contains(&"newpkg".to_string()));
    assert_eq!(names("alice/newpkg"), ["0.1"]);

    // dup: the first close publishes, the copy can no longer write, and
    // its close sends nothing.
    server.reset_now();
    let mut f = std::fs::File::create(m.path("alice/newpkg/0.1/d.bin")).unwrap();
    f.write_all(b"dup").unwrap();
    let copy = unsafe { libc::dup(f.as_raw_fd()) };
    assert!(copy >= 0);
    drop(f);
    assert_eq!(
        remote(&server, "alice", "newpkg", "0.1", "d.bin").unwrap(),
        b"dup"
    );
    let mut g = unsafe { std::fs::File::from_raw_fd(copy) };
    let e = g.write_all(b"more").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    assert_eq!(
        unsafe { libc::close(std::os::fd::IntoRawFd::into_raw_fd(g)) },
        0
    );
    assert_eq!(server.stats_now()["file_put"].as_u64(), Some(1));

    // Deleted on the registry behind the listing: rm still succeeds.
    let v = m.path("alice/edge/1.0");
    assert!(names("alice/edge/1.0").contains(&"gone.bin".to_string()));
    server.delete_ok("alice", "edge", "1.0", "gone.bin");
    std::fs::remove_file(v.join("gone.bin")).unwrap();
    assert!(!v.join("gone.bin").exists());

    // A scratch file renamed onto a published name, or out of its version.
    std::fs::write(v.join(".tmp"), b"mine").unwrap();
    let e = std::fs::rename(v.join(".tmp"), v.join("taken.bin")).unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EEXIST),
        "{e}\n{}",
        m.log_text()
    );
    assert_eq!(
        remote(&server, "alice", "edge", "1.0", "taken.bin").unwrap(),
        b"registry"
    );
    let e = std::fs::rename(v.join(".tmp"), m.path("alice/newpkg/0.1/moved.bin")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EXDEV), "{e}");
}

/// The PUT's body headers: always `Content-Type: application/octet-stream`;
/// a file written sequentially is streamed (chunked, no length known yet),
/// and with `--upload-on-close` it goes with its `Content-Length`.
#[test]
fn puts_carry_octet_stream_and_a_length_or_chunks() {
    let server = TestServer::start(&[]);
    let src = tempfile::tempdir().unwrap();
    let f = write_local(src.path(), "h.bin", &data(300_000, 8));
    for (dir, args, chunked) in [
        ("s", &[][..], true),
        ("c", &["--upload-on-close"][..], false),
    ] {
        let m = mount(&server, args);
        let v = m.path(&format!("alice/hdr/{dir}"));
        std::fs::create_dir_all(&v).unwrap();
        server.reset_now();
        ok(&sh(&format!("cp {} {}/", f.display(), v.display())));
        let put = server.stats_now()["last_put"].clone();
        assert_eq!(put["content_type"], "application/octet-stream", "{put}");
        if chunked {
            assert_eq!(put["transfer_encoding"], "chunked", "{put}");
            assert!(put["content_length"].is_null(), "{put}");
        } else {
            assert_eq!(put["content_length"], "300000", "{put}");
            assert!(put["transfer_encoding"].is_null(), "{put}");
        }
        assert_eq!(
            remote(&server, "alice", "hdr", dir, "h.bin").unwrap(),
            data(300_000, 8)
        );
    }
}

/// Resident bytes of `path` in the page cache (mincore over a mapping).
fn resident_bytes(path: &Path) -> u64 {
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    if len == 0 {
        return 0;
    }
    use std::os::fd::AsRawFd;
    let page = 4096usize;
    let pages = len.div_ceil(page);
    let mut vec = vec![0u8; pages];
    // SAFETY: a read-only private mapping of an open file, unmapped below;
    // mincore writes one byte per page into `vec`, which has that many.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(addr, libc::MAP_FAILED);
        assert_eq!(libc::mincore(addr, len, vec.as_mut_ptr()), 0);
        libc::munmap(addr, len);
    }
    vec.iter().filter(|b| **b & 1 == 1).count() as u64 * page as u64
}

/// Whether files in `dir` can be opened with O_DIRECT (ext4, xfs, btrfs,
/// tmpfs since 6.6; not every file system).
fn direct_io_works(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join(".direct-probe");
    let ok = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// The bulk of a big file is spooled and uploaded around the page cache
/// (O_DIRECT), the head and unaligned writes through it: any mix of the
/// two reads back exactly, before and after publication.
#[test]
fn big_files_spool_around_the_page_cache_and_mixed_writes_stay_exact() {
    let server = TestServer::start(&[]);
    let cache_holder = tempfile::TempDir::new().unwrap();
    let cache = cache_holder.path().join("cache");
    let m = Mount::start_with_cache(&server.url, Some(&server.token), &[], &cache);
    std::fs::create_dir_all(m.path("alice/dio/1.0")).unwrap();

    // 1. A mixed write pattern, re-read through the mount before close.
    let mib = 1 << 20;
    let src = data(40 * mib + 1, 11);
    let mut model = vec![0u8; 0];
    let p = m.path("alice/dio/1.0/mixed.bin");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap();
    use std::os::unix::fs::FileExt;
    let mut put = |f: &std::fs::File, off: usize, bytes: &[u8]| {
        f.write_all_at(bytes, off as u64).unwrap();
        if model.len() < off + bytes.len() {
            model.resize(off + bytes.len(), 0);
        }
        model[off..off + bytes.len()].copy_from_slice(bytes);
    };
    for i in 0..40 {
        // From an odd address: the daemon stages it for direct I/O.
        put(&f, i * mib, &src[1 + i * mib..1 + (i + 1) * mib]);
    }
    put(&f, 8 * mib - 100, &src[..5000]); // straddles the direct boundary
    put(&f, 20 * mib + 3 * 4096, &src[7..7 + 8192]); // aligned, inside
    put(&f, 30 * mib + 17, &src[..4000]); // unaligned, inside
    put(&f, 40 * mib, &src[..777]); // unaligned tail
    let mut back = vec![0u8; model.len()];
    f.read_exact_at(&mut back, 0).unwrap();
    assert!(back == model, "spooled bytes differ before close");
    f.set_len(40 * mib as u64 - 1000).unwrap();
    model.truncate(40 * mib - 1000);
    let fd = {
        use std::os::fd::IntoRawFd;
        f.into_raw_fd()
    };
    // SAFETY: closing a descriptor this test owns; its result is the upload's.
    assert_eq!(
        unsafe { libc::close(fd) },
        0,
        "close: {}",
        std::io::Error::last_os_error()
    );
    let got = remote(&server, "alice", "dio", "1.0", "mixed.bin").unwrap();
    assert_eq!(got.len(), model.len());
    assert!(got == model, "published bytes differ");
    assert!(
        std::fs::read(&p).unwrap() == model,
        "read back through the mount differs"
    );

    // 2. A plain cp of 64 MiB leaves little of it in the page cache.
    let local = tempfile::TempDir::new().unwrap();
    let big = data(64 * mib, 12);
    let lp = write_local(local.path(), "big.bin", &big);
    let out = sh(&format!(
        "cp {} {}/",
        lp.display(),
        m.path("alice/dio/1.0").display()
    ));
    ok(&out);
    let sha = sha256_hex(&big);
    let entry = cache.join("blobs").join(&sha);
    assert!(entry.exists(), "the published file is in the cache");
    if direct_io_works(&cache) {
        let resident = resident_bytes(&entry);
        assert!(
            resident <= 16 * mib as u64,
            "{resident} bytes of the 64 MiB upload stayed in the page cache"
        );
    } else {
        eprintln!("the cache's file system refuses O_DIRECT: page-cache check skipped");
    }
    assert!(std::fs::read(m.path("alice/dio/1.0/big.bin")).unwrap() == big);
}
