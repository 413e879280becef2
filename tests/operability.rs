//! Operability: `mount.pkgfs URL MOUNTPOINT -o opts` through a
//! symlink, as mount(8) and /etc/fstab call it, and the exit codes
//! (0 ok, 1 mount failed, 2 usage).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use common::mount::{assert_mount_serves, is_mounted, pkgfs_bin, Unmounter};
use common::server::TestServer;

/// A private token file and an empty mount point in `dir`.
fn token_file_and_mountpoint(dir: &std::path::Path, token: &str) -> (PathBuf, PathBuf) {
    let file = dir.join("token");
    std::fs::write(&file, token).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mp = dir.join("mnt");
    std::fs::create_dir(&mp).unwrap();
    (file, mp)
}

#[test]
fn mount_helper_symlink_with_o_options() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "tool", "1.0", "t.bin", b"helper");
    let dir = tempfile::tempdir().unwrap();
    let helper = dir.path().join("mount.pkgfs");
    std::os::unix::fs::symlink(pkgfs_bin(), &helper).unwrap();
    let (token, mp) = token_file_and_mountpoint(dir.path(), &server.token);
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
    assert_mount_serves(&out, &mp, "alice/tool/1.0/t.bin", b"helper");
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

/// `--version` prints the crate version; every option of both subcommands
/// has a line of help text.
#[test]
fn help_explains_every_option_and_version_prints() {
    let bin = common::mount::pkgfs_bin();
    let out = Command::new(bin).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
    for sub in ["serve", "mount"] {
        let out = Command::new(bin).args([sub, "--help"]).output().unwrap();
        assert!(out.status.success(), "{sub} --help");
        let help = String::from_utf8_lossy(&out.stdout).to_string();
        let lines: Vec<&str> = help.lines().map(str::trim_start).collect();
        let mut options = 0;
        for (i, line) in lines.iter().enumerate() {
            if !(line.starts_with("--") || (line.starts_with('-') && line.contains(", --"))) {
                continue;
            }
            options += 1;
            // `--flag <VALUE>  text`, or the text on the next line.
            let same_line = line.split("  ").filter(|s| !s.trim().is_empty()).count() > 1;
            let next = lines.get(i + 1).copied().unwrap_or("");
            let next_line = !next.is_empty() && !next.starts_with('-');
            assert!(
                same_line || next_line,
                "{sub}: no help text for {line:?}\n{help}"
            );
        }
        assert!(options >= 8, "{sub}: {help}");
    }
}

/// Log levels: `--debug` logs every operation; `RUST_LOG` filters (it wins
/// over `--debug`); by default there is no debug output.
#[test]
fn debug_and_rust_log_control_the_log() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "tool", "1.0", "t.bin", b"logs");
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, args: &[&str], rust_log: Option<&str>| -> String {
        let mp = dir.path().join(name);
        std::fs::create_dir(&mp).unwrap();
        let log = dir.path().join(format!("{name}.log"));
        let mut cmd = Command::new(pkgfs_bin());
        cmd.arg("mount")
            .arg(&server.url)
            .arg(&mp)
            .arg("--cache-dir")
            .arg(dir.path().join(format!("{name}.cache")))
            .arg("--log-file")
            .arg(&log)
            .args(args)
            .env("PKGFS_TOKEN", &server.token)
            .env_remove("RUST_LOG");
        if let Some(f) = rust_log {
            cmd.env("RUST_LOG", f);
        }
        let out = cmd.output().unwrap();
        let guard = Unmounter(mp.clone());
        assert_mount_serves(&out, &mp, "alice/tool/1.0/t.bin", b"logs");
        drop(guard);
        std::fs::read_to_string(&log).unwrap()
    };
    let plain = run("plain", &[], None);
    assert!(plain.contains("mounted"), "{plain}");
    assert!(!plain.contains("DEBUG"), "{plain}");
    let debug = run("debug", &["--debug"], None);
    assert!(debug.contains("DEBUG"), "{debug}");
    let quiet = run("quiet", &["--debug"], Some("warn"));
    assert!(
        !quiet.contains("mounted") && !quiet.contains("DEBUG"),
        "{quiet}"
    );
}

/// `mount -t fuse.pkgfs`, as /etc/fstab mounts it: mount(8) runs
/// /sbin/mount.fuse.pkgfs (the symlink the README installs) with
/// `URL MOUNTPOINT -o OPTIONS` and its own flags (root only: mount(8)
/// refuses other users without an fstab entry).
#[test]
fn mount_t_fuse_pkgfs_through_mount_8() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mount -t needs root");
        return;
    }
    let helper = std::path::Path::new("/sbin/mount.fuse.pkgfs");
    struct RemoveLink(Option<&'static std::path::Path>);
    impl Drop for RemoveLink {
        fn drop(&mut self) {
            if let Some(p) = self.0 {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let _link = if helper.symlink_metadata().is_err() {
        std::os::unix::fs::symlink(pkgfs_bin(), helper).unwrap();
        RemoveLink(Some(std::path::Path::new("/sbin/mount.fuse.pkgfs")))
    } else {
        RemoveLink(None) // installed by the machine's owner: use it
    };
    let server = TestServer::start(&[]);
    server.put_ok("alice", "fstab", "1.0", "f", b"from fstab");
    let dir = tempfile::tempdir().unwrap();
    let (token, mp) = token_file_and_mountpoint(dir.path(), &server.token);
    let opts = format!(
        "token_file={},cache_dir={},_netdev,nofail,noatime",
        token.display(),
        dir.path().join("cache").display()
    );
    let out = Command::new("mount")
        .args(["-t", "fuse.pkgfs", &server.url])
        .arg(&mp)
        .args(["-o", &opts])
        .env_remove("PKGFS_TOKEN")
        .output()
        .unwrap();
    let _guard = Unmounter(mp.clone());
    assert_mount_serves(&out, &mp, "alice/fstab/1.0/f", b"from fstab");
}

/// `fusermount3 -u M` followed at once by a new mount at M: the old daemon,
/// exiting, must not unmount the new mount (fuser unmounts by path when its
/// session handle is dropped).
#[test]
fn an_exiting_daemon_never_unmounts_the_next_mount_at_its_mount_point() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "tool", "1.0", "t.bin", b"again");
    let dir = tempfile::tempdir().unwrap();
    let (token, mp) = token_file_and_mountpoint(dir.path(), &server.token);
    let mount = |i: usize| {
        Command::new(pkgfs_bin())
            .args(["mount", &server.url])
            .arg(&mp)
            .arg("--token-file")
            .arg(&token)
            .arg("--cache-dir")
            .arg(dir.path().join(format!("cache{i}")))
            .output()
            .unwrap()
    };
    let _guard = Unmounter(mp.clone());
    let out = mount(0);
    assert_mount_serves(&out, &mp, "alice/tool/1.0/t.bin", b"again");
    for i in 1..=8 {
        let st = Command::new("fusermount3")
            .arg("-u")
            .arg(&mp)
            .status()
            .unwrap();
        assert!(st.success(), "fusermount3 -u");
        let out = mount(i);
        assert_mount_serves(&out, &mp, "alice/tool/1.0/t.bin", b"again");
        // The previous daemon is gone by now, whatever it did on its way.
        std::thread::sleep(std::time::Duration::from_millis(400));
        assert!(is_mounted(&mp), "round {i}: the new mount was unmounted");
        assert_eq!(
            std::fs::read(mp.join("alice/tool/1.0/t.bin")).unwrap(),
            b"again"
        );
    }
}
