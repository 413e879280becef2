//! A real `pkgfs mount` for end-to-end tests: the binary in the foreground,
//! a fresh mount point and cache directory, unmounted and killed in `Drop`
//! (also when the test panics).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub struct Mount {
    pub dir: TempDir,
    pub cache: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    _cache_holder: Option<TempDir>,
}

/// Whether `path` appears as a mount point in /proc/mounts.
pub fn is_mounted(path: &Path) -> bool {
    let target = path.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(target.as_str()))
}

pub fn pkgfs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_pkgfs")
}

impl Mount {
    /// Mounts `url` with `token` (None: anonymous) and extra options.
    pub fn start(url: &str, token: Option<&str>, extra: &[&str]) -> Mount {
        let cache = TempDir::new().expect("cache tempdir");
        let path = cache.path().join("cache");
        let mut m = Mount::start_with_cache(url, token, extra, &path);
        m._cache_holder = Some(cache);
        m
    }

    /// Mounts with a given cache directory (to test reuse across mounts).
    pub fn start_with_cache(url: &str, token: Option<&str>, extra: &[&str], cache: &Path) -> Mount {
        Mount::start_full(url, token, extra, cache, &[])
    }

    /// Mounts with extra environment variables for the daemon.
    pub fn start_with_env(
        url: &str,
        token: Option<&str>,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> Mount {
        let cache = TempDir::new().expect("cache tempdir");
        let path = cache.path().join("cache");
        let mut m = Mount::start_full(url, token, extra, &path, env);
        m._cache_holder = Some(cache);
        m
    }

    fn start_full(
        url: &str,
        token: Option<&str>,
        extra: &[&str],
        cache: &Path,
        env: &[(&str, String)],
    ) -> Mount {
        let dir = TempDir::new().expect("mount tempdir");
        let log = dir.path().with_extension("log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(pkgfs_bin());
        cmd.arg("mount")
            .arg(url)
            .arg(dir.path())
            .arg("--foreground")
            .arg("--cache-dir")
            .arg(cache)
            .args(extra)
            .env_remove("PKGFS_TOKEN")
            .env(
                "RUST_LOG",
                std::env::var("PKGFS_TEST_LOG").unwrap_or("pkgfs=debug,info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file);
        if let Some(t) = token {
            cmd.env("PKGFS_TOKEN", t);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn pkgfs mount");
        let mut m = Mount {
            dir,
            cache: cache.to_path_buf(),
            log,
            child: Some(child),
            _cache_holder: None,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(m.dir.path()) {
            if let Some(status) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("pkgfs mount exited early ({status}):\n{}", m.log_text());
            }
            if Instant::now() > deadline {
                panic!("pkgfs mount not ready after 20s:\n{}", m.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits up to `secs` for the daemon to exit by itself (after a signal),
    /// without unmounting; its exit status.
    pub fn wait_exit(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let c = self.child.as_mut()?;
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Unmounts and waits for the daemon to exit.
    pub fn unmount(&mut self) {
        if is_mounted(self.dir.path()) {
            let ok = Command::new("fusermount3")
                .arg("-u")
                .arg(self.dir.path())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("fusermount3")
                    .arg("-uz")
                    .arg(self.dir.path())
                    .stderr(Stdio::null())
                    .status();
            }
            detach_if_mounted(self.dir.path());
        }
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// Like `std::fs::write`, but reports the result of close(), where the
/// upload happens (dropping a `File` ignores it).
pub fn write_and_close(p: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(p)?;
    f.write_all(bytes)?;
    let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
    // SAFETY: `fd` was just taken from the File and is closed once.
    if unsafe { libc::close(fd) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Asserts that a `pkgfs mount` (or mount helper) run succeeded and that
/// the mount serves `rel` with the bytes `want`.
pub fn assert_mount_serves(out: &std::process::Output, mp: &Path, rel: &str, want: &[u8]) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(mp), "{} is not mounted", mp.display());
    assert_eq!(std::fs::read(mp.join(rel)).unwrap(), want, "{rel}");
}

/// Unmounts a mount made by a background `pkgfs mount` when dropped.
pub struct Unmounter(pub PathBuf);

impl Drop for Unmounter {
    fn drop(&mut self) {
        for _ in 0..100 {
            if !is_mounted(&self.0) {
                return;
            }
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.0)
                .stderr(Stdio::null())
                .status();
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("fusermount3").arg("-uz").arg(&self.0).status();
        detach_if_mounted(&self.0);
    }
}

/// The last resort when fusermount3 could not unmount (or is missing, when
/// the suite runs without scripts/test.sh): a lazy umount2 as root, so that
/// no test leaves a mount behind.
fn detach_if_mounted(path: &Path) {
    if !is_mounted(path) {
        return;
    }
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return;
    };
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}
