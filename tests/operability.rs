//! Operability (issue 5): `mount.pkgfs URL MOUNTPOINT -o opts` through a
//! symlink, as mount(8) and /etc/fstab call it, and the exit codes
//! (0 ok, 1 mount failed, 2 usage).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::mount::{is_mounted, pkgfs_bin, Unmounter};
use common::server::TestServer;

#[test]
fn mount_helper_symlink_with_o_options() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "tool", "1.0", "t.bin", b"helper");
    let dir = tempfile::tempdir().unwrap();
    let helper = dir.path().join("mount.pkgfs");
    std::os::unix::fs::symlink(pkgfs_bin(), &helper).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, &server.token).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mp = dir.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let opts = format!(
        "rw,_netdev,token_file={},owner=alice,ro,cache_dir={},x-systemd.automount",
        token.display(),
        dir.path().join("cache").display()
    );
    // Without -f the helper daemonizes and returns once the mount is ready.
    let out = Command::new(&helper)
        .arg(&server.url)
        .arg(&mp)
        .args(["-o", &opts])
        .env_remove("PKGFS_TOKEN")
        .output()
        .unwrap();
    let _guard = Unmounter(mp.clone());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&mp));
    assert_eq!(
        std::fs::read(mp.join("alice/tool/1.0/t.bin")).unwrap(),
        b"helper"
    );
    let names: Vec<_> = std::fs::read_dir(&mp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["alice"]);
    // `ro` became --read-only.
    let err = std::fs::create_dir(mp.join("alice/tool/2.0")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
}

#[test]
fn exit_codes_are_0_1_2() {
    let server = TestServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let run = |args: &[&str]| {
        Command::new(pkgfs_bin())
            .args(args)
            .env("PKGFS_TOKEN", &server.token)
            .output()
            .unwrap()
    };
    let mps = mp.to_str().unwrap();
    let cache = dir.path().join("c");
    let cache = cache.to_str().unwrap();
    // Usage errors: 2.
    for args in [
        &["mount"][..],
        &["mount", &server.url][..],
        &["mount", &server.url, mps, "--no-such-flag"][..],
        &["mount", &server.url, mps, "--timeout", "soon"][..],
        &["frobnicate"][..],
    ] {
        assert_eq!(run(args).status.code(), Some(2), "{args:?}");
    }
    // Mount failures: 1, with a reason on stderr.
    for args in [
        &[
            "mount",
            "http://127.0.0.1:9/",
            mps,
            "--timeout",
            "2",
            "--cache-dir",
            cache,
        ][..],
        &["mount", "ftp://example/", mps, "--cache-dir", cache][..],
        &[
            "mount",
            &server.url,
            "/nonexistent/mnt",
            "--cache-dir",
            cache,
        ][..],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
    // Success: 0.
    let out = run(&["mount", &server.url, mps, "--cache-dir", cache]);
    let _guard = Unmounter(mp.clone());
    assert_eq!(out.status.code(), Some(0));
    assert!(is_mounted(&mp));
}
