//! The filesystem logic (`pkgfs::fs::Fs`) driven directly, without FUSE:
//! every other filesystem test goes through a real mount, which needs
//! /dev/fuse and fusermount3 and tells only what a syscall returned. Here
//! each test calls the operations in the order the kernel adapter
//! (`src/fuse.rs`) does, against a real `pkgfs serve`, and checks the
//! errno of each `FsError` and the registry's request counters, so the
//! caching, negative entries, EEXIST/EINVAL/EROFS/EPERM rules, upload
//! retries and the cache bound are covered on machines without FUSE.

mod common;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pkgfs::cache::Cache;
use pkgfs::fs::{errno_name, Attr, Fs, FsConfig, FsResult, Ino, Opener, ROOT_INO};
use pkgfs::registry::{Client, ClientConfig};
use serde_json::json;
use tempfile::TempDir;

use common::server::TestServer;
use common::{data, sha256_hex};

/// Reads and writes go in pieces of this size, as the kernel sends them.
const IO: usize = 128 * 1024;

/// The calling "thread" of every operation: this process, so that a
/// close counts as one by the opener (as for a single-process writer).
fn pid() -> u32 {
    std::process::id()
}

/// A `Fs` on its own runtime and cache directory, with path-based helpers
/// that make the calls `src/fuse.rs` makes for the matching syscalls.
struct TestFs {
    fs: Arc<Fs>,
    rt: tokio::runtime::Runtime,
    cache: Arc<Cache>,
    cache_dir: TempDir,
}

impl TestFs {
    fn new(server: &TestServer, config: FsConfig) -> TestFs {
        TestFs::with_cache(server, config, 1 << 30)
    }

    /// As `pkgfs mount` builds it: a client with the token, the login
    /// checked, a cache of `capacity` bytes.
    fn with_cache(server: &TestServer, config: FsConfig, capacity: u64) -> TestFs {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let cache_dir = tempfile::tempdir().expect("cache dir");
        let cache = Cache::open(cache_dir.path(), capacity).expect("cache");
        let client = Client::new(ClientConfig {
            base: server.base(),
            token: Some(server.token.clone()),
            timeout: Duration::from_secs(10),
            insecure: false,
        })
        .expect("client");
        let login = rt
            .block_on(client.current_user())
            .expect("current user")
            .login;
        let fs = Arc::new(Fs::new(
            Arc::new(client),
            Arc::clone(&cache),
            config,
            rt.handle().clone(),
        ));
        fs.set_login(Some(login));
        TestFs {
            fs,
            rt,
            cache,
            cache_dir,
        }
    }

    fn run<T>(&self, f: impl Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    /// LOOKUP: answered on the spot from a fresh listing, else on the
    /// runtime within the syscall deadline; the kernel then holds the inode.
    fn lookup(&self, parent: Ino, name: &str) -> FsResult<Attr> {
        let r = match self.fs.lookup_now(parent, name) {
            Some(r) => r,
            None => self.run(self.fs.bounded("lookup", self.fs.lookup(parent, name))),
        };
        if let Ok(a) = &r {
            self.fs.remember(a.ino);
        }
        r
    }

    /// A path (`alice/pkg/1.0/f`, `""` for the root) by successive lookups.
    fn stat(&self, path: &str) -> FsResult<Attr> {
        let mut attr = self.fs.getattr(ROOT_INO)?;
        for name in path.split('/').filter(|c| !c.is_empty()) {
            attr = self.lookup(attr.ino, name)?;
        }
        Ok(attr)
    }

    /// OPENDIR, READDIR from offset 0, RELEASEDIR; without `.` and `..`,
    /// sorted.
    fn ls(&self, path: &str) -> FsResult<Vec<String>> {
        let dir = self.stat(path)?;
        let d = match self.fs.opendir_now(dir.ino) {
            Some(r) => r?,
            None => self.run(self.fs.bounded("opendir", self.fs.opendir(dir.ino)))?,
        };
        let entries = self.fs.readdir(d.fh, dir.ino, 0);
        self.run(self.fs.release(d.fh));
        let mut names: Vec<String> = entries?
            .into_iter()
            .map(|(_, e)| e.name)
            .filter(|n| n != "." && n != "..")
            .collect();
        names.sort();
        Ok(names)
    }

    /// OPEN for reading.
    fn open_read(&self, path: &str) -> FsResult<u64> {
        let a = self.stat(path)?;
        self.run(self.fs.bounded("open", self.fs.open(a.ino, false, pid())))
    }

    /// READs from offset 0 until a short (empty) answer.
    fn read_all(&self, fh: u64) -> FsResult<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let off = out.len() as u64;
            let chunk = match self.fs.read_local(fh, off, IO as u32) {
                Some(r) => r?,
                None => self.run(self.fs.bounded("read", self.fs.read(fh, off, IO as u32)))?,
            };
            if chunk.is_empty() {
                return Ok(out);
            }
            out.extend_from_slice(&chunk);
        }
    }

    /// `close()`: FLUSH (write handles only), then RELEASE.
    fn close(&self, fh: u64) -> FsResult<()> {
        let r = if self.fs.is_write_handle(fh) {
            self.run(self.fs.flush(fh, pid()))
        } else {
            Ok(())
        };
        self.run(self.fs.release(fh));
        r
    }

    /// open, read everything, close.
    fn read_file(&self, path: &str) -> FsResult<Vec<u8>> {
        let fh = self.open_read(path)?;
        let r = self.read_all(fh);
        let closed = self.close(fh);
        let bytes = r?;
        closed?;
        Ok(bytes)
    }

    /// CREATE of `path` (its parent looked up first, as the kernel does).
    fn create(&self, path: &str) -> FsResult<u64> {
        let (parent, name) = split(path);
        let p = self.stat(parent)?;
        let (a, fh) = self.run(
            self.fs
                .bounded("create", self.fs.create(p.ino, name, Opener::of(pid()))),
        )?;
        self.fs.remember(a.ino);
        Ok(fh)
    }

    /// WRITEs of `bytes` from `offset`, in kernel-sized pieces.
    fn write_at(&self, fh: u64, offset: u64, bytes: &[u8]) -> FsResult<()> {
        for (i, piece) in bytes.chunks(IO).enumerate() {
            let n = self.fs.write(fh, offset + (i * IO) as u64, piece)?;
            assert_eq!(n as usize, piece.len(), "short write");
        }
        Ok(())
    }

    /// `cp`: create, write, close; the result of close() is returned.
    fn write_file(&self, path: &str, bytes: &[u8]) -> FsResult<()> {
        let fh = self.create(path)?;
        if let Err(e) = self.write_at(fh, 0, bytes) {
            self.run(self.fs.release(fh));
            return Err(e);
        }
        self.close(fh)
    }

    fn mkdir(&self, path: &str) -> FsResult<Attr> {
        let (parent, name) = split(path);
        let p = self.stat(parent)?;
        let a = self.run(self.fs.bounded("mkdir", self.fs.mkdir(p.ino, name)))?;
        self.fs.remember(a.ino);
        Ok(a)
    }

    /// `mkdir -p`.
    fn mkdir_p(&self, path: &str) -> FsResult<()> {
        let mut at = String::new();
        for name in path.split('/') {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(name);
            match self.stat(&at) {
                Ok(_) => {}
                Err(e) if e.errno() == libc::ENOENT => {
                    self.mkdir(&at)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn unlink(&self, path: &str) -> FsResult<()> {
        let (parent, name) = split(path);
        let p = self.stat(parent)?;
        self.run(self.fs.bounded("unlink", self.fs.unlink(p.ino, name)))
    }

    fn rmdir(&self, path: &str) -> FsResult<()> {
        let (parent, name) = split(path);
        let p = self.stat(parent)?;
        self.run(self.fs.bounded("rmdir", self.fs.rmdir(p.ino, name)))
    }

    /// rename within one directory.
    fn rename(&self, path: &str, newname: &str) -> FsResult<()> {
        let (parent, name) = split(path);
        let p = self.stat(parent)?;
        self.run(self.fs.rename(p.ino, name, p.ino, newname))
    }

    /// Bytes in the cache's `blobs/` directory, as on disk.
    fn blob_bytes(&self) -> u64 {
        dir_bytes(&self.cache_dir.path().join("blobs"))
    }

    /// Files left in the write spool.
    /// Files in `spool/`, once the cache's janitor thread (which deletes
    /// given-up spools) has caught up: up to 2 s for it to reach 0.
    fn spool_files(&self) -> usize {
        let count = || {
            std::fs::read_dir(self.cache_dir.path().join("spool"))
                .expect("spool dir")
                .count()
        };
        let since = std::time::Instant::now();
        while count() > 0 && since.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(10));
        }
        count()
    }
}

fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").metadata().expect("metadata").len())
        .sum()
}

fn with_ttl(ttl: Duration) -> FsConfig {
    FsConfig {
        metadata_ttl: ttl,
        ..FsConfig::default()
    }
}

fn upload_on_close() -> FsConfig {
    FsConfig {
        stream_uploads: false,
        ..FsConfig::default()
    }
}

/// A request counter of the test registry (see README "Test hooks").
fn count(server: &TestServer, key: &str) -> u64 {
    server.stats_now()[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {key}"))
}

/// The errno of a result that must be an error.
#[track_caller]
fn errno<T: std::fmt::Debug>(r: FsResult<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e.errno(),
    }
}

#[track_caller]
fn assert_errno<T: std::fmt::Debug>(r: FsResult<T>, want: i32) {
    let got = errno(r);
    assert_eq!(
        errno_name(got),
        errno_name(want),
        "errno {got}, expected {want}"
    );
}

/// Waits (at most `secs`) until `cond` holds.
fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn listed_sha(server: &TestServer, owner: &str, pkg: &str, ver: &str, file: &str) -> String {
    server
        .files(owner, pkg, ver)
        .iter()
        .find(|f| f["name"] == file)
        .and_then(|f| f["sha256"].as_str())
        .unwrap_or_else(|| panic!("{file} not listed"))
        .to_string()
}

// ---------------------------------------------------------------- listing

#[test]
fn root_lists_the_login_and_the_configured_owners() {
    let server = TestServer::start(&[]);
    let t = TestFs::new(
        &server,
        FsConfig {
            owners: vec!["extra".into()],
            ..FsConfig::default()
        },
    );
    assert_eq!(t.ls("").unwrap(), ["alice", "extra"]);
    let root = t.fs.getattr(ROOT_INO).unwrap();
    assert!(root.is_dir);
}

#[test]
fn each_level_lists_its_children_and_the_owner_listing_fills_the_packages() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "a", "1.0", "x", b"x");
    server.put_ok("alice", "b", "2.0", "y", b"y");
    server.put_ok("alice", "b", "3.0", "z", b"z");
    server.put_ok("alice", "b", "3.0", "w", b"w");
    let t = TestFs::new(&server, FsConfig::default());
    assert_eq!(t.ls("alice").unwrap(), ["a", "b"]);
    // The owner listing holds every version: `ls -R` needs no more of it.
    server.reset_now();
    assert_eq!(t.ls("alice/b").unwrap(), ["2.0", "3.0"]);
    assert_eq!(count(&server, "v1"), 0, "package listed again");
    assert_eq!(t.ls("alice/b/3.0").unwrap(), ["w", "z"]);
    assert_eq!(count(&server, "v1"), 1, "one files listing");
    assert_eq!(t.ls("alice/a/1.0").unwrap(), ["x"]);
}

#[test]
fn readdir_starts_with_dot_entries_and_resumes_at_an_offset() {
    let server = TestServer::start(&[]);
    for f in ["f1", "f2", "f3"] {
        server.put_ok("alice", "off", "1.0", f, f.as_bytes());
    }
    let t = TestFs::new(&server, FsConfig::default());
    let dir = t.stat("alice/off/1.0").unwrap();
    let parent = t.stat("alice/off").unwrap();
    let d = t.run(t.fs.opendir(dir.ino)).unwrap();
    let all = t.fs.readdir(d.fh, dir.ino, 0).unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!((all[0].1.name.as_str(), all[0].1.ino), (".", dir.ino));
    assert_eq!((all[1].1.name.as_str(), all[1].1.ino), ("..", parent.ino));
    let offsets: Vec<u64> = all.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, [1, 2, 3, 4, 5]);
    // Resuming at the offset of an entry gives the ones after it.
    let rest = t.fs.readdir(d.fh, dir.ino, 3).unwrap();
    let names: Vec<&str> = rest.iter().map(|(_, e)| e.name.as_str()).collect();
    let want: Vec<&str> = all[3..].iter().map(|(_, e)| e.name.as_str()).collect();
    assert_eq!(names, want);
    assert!(t.fs.readdir(d.fh, dir.ino, 5).unwrap().is_empty());
    // A second open of an unchanged directory says so (the kernel keeps
    // its cached listing).
    let d2 = t.run(t.fs.opendir(dir.ino)).unwrap();
    assert!(d2.unchanged);
    t.run(t.fs.release(d.fh));
    t.run(t.fs.release(d2.fh));
    assert_errno(t.fs.readdir(d.fh, dir.ino, 0), libc::EBADF);
}

#[test]
fn attributes_follow_the_listing_and_the_config() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "attr", "1.0", "f.bin", &data(1234, 1));
    let t = TestFs::new(&server, FsConfig::default());
    let uid = unsafe { libc::getuid() };
    let f = t.stat("alice/attr/1.0/f.bin").unwrap();
    assert!(!f.is_dir);
    assert_eq!((f.size, f.perm, f.nlink, f.uid), (1234, 0o644, 1, uid));
    for d in ["alice", "alice/attr", "alice/attr/1.0"] {
        let a = t.stat(d).unwrap();
        assert!(a.is_dir, "{d}");
        assert_eq!((a.size, a.perm, a.nlink), (0, 0o755, 2), "{d}");
    }
    assert_eq!(
        t.fs.content_id(f.ino).as_deref(),
        Some(sha256_hex(&data(1234, 1)).as_str())
    );
}

#[test]
fn listing_is_trusted_for_the_ttl() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "ttl", "1.0", "a", b"a");
    let t = TestFs::new(&server, with_ttl(Duration::from_secs(600)));
    assert_eq!(t.ls("alice/ttl/1.0").unwrap(), ["a"]);
    server.put_ok("alice", "ttl", "1.0", "b", b"b");
    server.reset_now();
    assert_eq!(t.ls("alice/ttl/1.0").unwrap(), ["a"]);
    assert_errno(t.stat("alice/ttl/1.0/b"), libc::ENOENT);
    assert_eq!(
        count(&server, "requests"),
        0,
        "a cached listing was fetched"
    );
}

#[test]
fn listing_is_fetched_again_after_a_short_ttl() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "ttl", "1.0", "a", b"a");
    let t = TestFs::new(&server, with_ttl(Duration::from_secs(1)));
    assert_eq!(t.ls("alice/ttl/1.0").unwrap(), ["a"]);
    server.put_ok("alice", "ttl", "1.0", "b", b"b");
    assert_eq!(t.ls("alice/ttl/1.0").unwrap(), ["a"], "within the TTL");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(t.ls("alice/ttl/1.0").unwrap(), ["a", "b"]);
    assert_eq!(t.read_file("alice/ttl/1.0/b").unwrap(), b"b");
}

#[test]
fn ttl_zero_lists_on_every_access() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "ttl", "1.0", "a", b"a");
    let t = TestFs::new(&server, with_ttl(Duration::ZERO));
    assert_eq!(t.ls("alice/ttl/1.0").unwrap(), ["a"]);
    server.put_ok("alice", "ttl", "1.0", "b", b"b");
    assert_eq!(t.ls("alice/ttl/1.0").unwrap(), ["a", "b"]);
    server.put_ok("alice", "ttl", "2.0", "c", b"c");
    assert_eq!(t.ls("alice/ttl").unwrap(), ["1.0", "2.0"]);
}

#[test]
fn a_missing_package_is_remembered_for_five_seconds() {
    let server = TestServer::start(&[]);
    let t = TestFs::new(&server, FsConfig::default());
    t.stat("alice").unwrap();
    server.reset_now();
    assert_errno(t.stat("alice/nope"), libc::ENOENT);
    let first = count(&server, "v1");
    assert!(first >= 1, "the first lookup asked nothing");
    // Published behind our back: still absent while the negative entry
    // holds, and the second lookup sends nothing.
    server.put_ok("alice", "nope", "1.0", "f", b"f");
    assert_errno(t.stat("alice/nope"), libc::ENOENT);
    assert_eq!(count(&server, "v1"), first, "second lookup asked again");
    std::thread::sleep(Duration::from_millis(5200));
    assert!(t.stat("alice/nope").unwrap().is_dir);
    assert!(count(&server, "v1") > first, "asked again after 5 s");
    assert_eq!(t.ls("alice/nope").unwrap(), ["1.0"]);
}

#[test]
fn a_missing_owner_is_probed_once() {
    let server = TestServer::start(&[]);
    let t = TestFs::new(&server, FsConfig::default());
    server.reset_now();
    // The root listing (the login's organisations), then one user probe.
    assert_errno(t.stat("bob"), libc::ENOENT);
    assert_eq!(count(&server, "v1"), 2);
    assert_errno(t.stat("bob"), libc::ENOENT);
    assert_errno(t.stat("BOB"), libc::ENOENT);
    assert_eq!(count(&server, "v1"), 2, "the absent owner was probed again");
    // The login is known without any request.
    server.reset_now();
    assert!(t.stat("alice").unwrap().is_dir);
    assert_eq!(count(&server, "requests"), 0);
}

#[test]
fn names_are_case_insensitive_and_keep_the_stored_spelling() {
    let server = TestServer::start(&[]);
    let bytes = data(5000, 2);
    server.put_ok("alice", "pkg", "1.0", "Readme.txt", &bytes);
    server.put_ok("alice", "MixedCase", "2.0", "x", b"x");
    let t = TestFs::new(&server, FsConfig::default());
    let upper = t.stat("ALICE/Pkg").unwrap();
    assert_eq!(t.stat("alice/pkg").unwrap().ino, upper.ino);
    assert_eq!(t.read_file("ALICE/PKG/1.0/README.TXT").unwrap(), bytes);
    assert_eq!(t.ls("ALICE/pkg/1.0").unwrap(), ["Readme.txt"]);
    assert_eq!(t.ls("").unwrap(), ["alice"]);
    assert!(t.stat("alice/mixedcase/2.0/X").is_ok());
    assert_eq!(t.ls("ALICE").unwrap(), ["MixedCase", "pkg"]);
}

// ---------------------------------------------------------------- reading

#[test]
fn a_read_returns_the_registry_bytes_checked_against_sha256() {
    let server = TestServer::start(&[]);
    let bytes = data(300_000, 3);
    server.put_ok("alice", "rd", "1.0", "f.bin", &bytes);
    let t = TestFs::new(&server, FsConfig::default());
    server.reset_now();
    let got = t.read_file("alice/rd/1.0/f.bin").unwrap();
    assert_eq!(got.len(), bytes.len());
    assert!(got == bytes, "bytes differ");
    let sha = listed_sha(&server, "alice", "rd", "1.0", "f.bin");
    assert_eq!(sha256_hex(&got), sha);
    assert_eq!(count(&server, "file_get"), 1);
    // Verified and kept under its sha256.
    assert!(t.cache_dir.path().join("blobs").join(&sha).is_file());
    assert_eq!(t.cache.used(), bytes.len() as u64);
    // A read in the middle and past the end.
    let fh = t.open_read("alice/rd/1.0/f.bin").unwrap();
    assert_eq!(
        t.run(t.fs.read(fh, 1000, 10)).unwrap(),
        bytes[1000..1010].to_vec()
    );
    assert!(t.run(t.fs.read(fh, 400_000, 10)).unwrap().is_empty());
    t.close(fh).unwrap();
}

#[test]
fn a_second_read_is_served_from_the_cache() {
    let server = TestServer::start(&[]);
    let bytes = data(200_000, 4);
    server.put_ok("alice", "rd", "1.0", "f.bin", &bytes);
    let t = TestFs::new(&server, FsConfig::default());
    assert_eq!(t.read_file("alice/rd/1.0/f.bin").unwrap(), bytes);
    server.reset_now();
    let fh = t.open_read("alice/rd/1.0/f.bin").unwrap();
    assert!(t.fs.keep_page_cache(fh), "a cached file is a local handle");
    assert_eq!(t.read_all(fh).unwrap(), bytes);
    t.close(fh).unwrap();
    assert_eq!(count(&server, "file_get"), 0);
}

#[test]
fn a_corrupted_blob_fails_the_read_with_eio_and_is_not_cached() {
    let server = TestServer::start(&[]);
    let bytes = data(100_000, 5);
    server.put_ok("alice", "bad", "1.0", "f.bin", &bytes);
    server.corrupt_blob(&sha256_hex(&bytes));
    let t = TestFs::new(&server, FsConfig::default());
    assert_errno(t.read_file("alice/bad/1.0/f.bin"), libc::EIO);
    assert_eq!(t.cache.used(), 0);
    assert_eq!(t.blob_bytes(), 0, "a corrupt download was kept");
    // Asked again, never served from a bad download.
    assert_errno(t.read_file("alice/bad/1.0/f.bin"), libc::EIO);
}

#[test]
fn concurrent_reads_of_one_file_share_one_download() {
    let server = TestServer::start(&[]);
    let bytes = data(512 * 1024, 6);
    server.put_ok("alice", "share", "1.0", "f.bin", &bytes);
    let t = TestFs::new(&server, FsConfig::default());
    t.stat("alice/share/1.0/f.bin").unwrap();
    server.reset_now();
    // The GET is slow: both readers are waiting on it.
    server.fault_now(json!({"kind": "delay", "delay_ms": 500, "count": 1,
        "method": "GET", "path_contains": "/share/1.0/f.bin"}));
    let a = t.open_read("alice/share/1.0/f.bin").unwrap();
    let b = t.open_read("alice/share/1.0/f.bin").unwrap();
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| t.read_all(a));
        let tb = s.spawn(|| t.read_all(b));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    assert!(ra.unwrap() == bytes);
    assert!(rb.unwrap() == bytes);
    t.close(a).unwrap();
    t.close(b).unwrap();
    assert_eq!(
        count(&server, "file_get"),
        1,
        "readers did not share the GET"
    );
    assert_eq!(count(&server, "bytes_sent"), bytes.len() as u64);
}

#[test]
fn the_cache_stays_within_its_bound_and_evicted_files_are_fetched_again() {
    const SIZE: usize = 100_000;
    const CAP: u64 = 300_000;
    let server = TestServer::start(&[]);
    for i in 0..5 {
        server.put_ok("alice", "ev", "1.0", &format!("f{i}"), &data(SIZE, 10 + i));
    }
    server.put_ok("alice", "ev", "1.0", "big", &data(400_000, 20));
    let t = TestFs::with_cache(&server, FsConfig::default(), CAP);
    for i in 0..5 {
        let got = t.read_file(&format!("alice/ev/1.0/f{i}")).unwrap();
        assert!(got == data(SIZE, 10 + i), "f{i}");
        assert!(t.cache.used() <= CAP, "used {} > {CAP}", t.cache.used());
        assert!(t.blob_bytes() <= CAP, "on disk {} > {CAP}", t.blob_bytes());
    }
    assert_eq!(t.blob_bytes(), 3 * SIZE as u64);
    // Larger than the whole cache: streamed through, not kept.
    assert!(t.read_file("alice/ev/1.0/big").unwrap() == data(400_000, 20));
    assert!(t.blob_bytes() <= CAP);
    // The download file is deleted by the cache's janitor thread, soon.
    let partial = t.cache_dir.path().join("partial");
    let since = std::time::Instant::now();
    while dir_bytes(&partial) > 0 && since.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(dir_bytes(&partial), 0, "partial download left behind");
    // The most recent file is still cached; the oldest was evicted.
    server.reset_now();
    assert!(t.read_file("alice/ev/1.0/f4").unwrap() == data(SIZE, 14));
    assert_eq!(count(&server, "file_get"), 0, "f4 was not cached");
    assert!(t.read_file("alice/ev/1.0/f0").unwrap() == data(SIZE, 10));
    assert_eq!(count(&server, "file_get"), 1, "f0 was not fetched again");
    assert!(t.blob_bytes() <= CAP);
    let s = t.fs.statfs();
    assert_eq!(s.blocks, CAP / 4096);
}

// ---------------------------------------------------------------- refusals

#[test]
fn create_of_a_listed_file_is_eexist_and_sends_nothing() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "dup", "1.0", "a.bin", b"first");
    let t = TestFs::new(&server, FsConfig::default());
    t.ls("alice/dup/1.0").unwrap();
    server.reset_now();
    assert_errno(t.create("alice/dup/1.0/a.bin"), libc::EEXIST);
    assert_errno(t.create("alice/dup/1.0/A.BIN"), libc::EEXIST);
    // Opening a published file for writing is EEXIST too.
    let f = t.stat("alice/dup/1.0/a.bin").unwrap();
    assert_errno(t.run(t.fs.open(f.ino, true, pid())), libc::EEXIST);
    assert_eq!(count(&server, "requests"), 0);
    assert_eq!(t.spool_files(), 0, "spool left behind");
    assert_eq!(
        server.get_opt("alice", "dup", "1.0", "a.bin").unwrap(),
        b"first"
    );
}

#[test]
fn close_is_eexist_when_the_registry_answers_409() {
    for config in [FsConfig::default(), upload_on_close()] {
        let server = TestServer::start(&[]);
        server.put_ok("alice", "dup", "1.0", "a.bin", b"first");
        let t = TestFs::new(
            &server,
            FsConfig {
                metadata_ttl: Duration::from_secs(600),
                ..config.clone()
            },
        );
        t.ls("alice/dup/1.0").unwrap();
        // Published by someone else after our listing.
        server.put_ok("alice", "dup", "1.0", "late.bin", b"theirs");
        server.reset_now();
        let fh = t.create("alice/dup/1.0/late.bin").unwrap();
        t.write_at(fh, 0, b"ours").unwrap();
        assert_errno(t.close(fh), libc::EEXIST);
        assert_eq!(count(&server, "file_put"), 1, "{config:?}");
        assert_eq!(
            server.get_opt("alice", "dup", "1.0", "late.bin").unwrap(),
            b"theirs"
        );
        assert_eq!(t.spool_files(), 0, "spool left behind");
    }
}

#[test]
fn close_is_eexist_when_a_legacy_registry_answers_400() {
    // Gitea 1.17: a version holds one file; a second upload is 400.
    let server = TestServer::start(&["--legacy-duplicates"]);
    server.put_ok("alice", "old", "1.0", "a.bin", b"first");
    let t = TestFs::new(&server, upload_on_close());
    t.ls("alice/old/1.0").unwrap();
    server.reset_now();
    assert_errno(t.write_file("alice/old/1.0/b.bin", b"ours"), libc::EEXIST);
    assert_eq!(count(&server, "file_put"), 1);
    assert!(server.get_opt("alice", "old", "1.0", "b.bin").is_none());
    assert_errno(t.stat("alice/old/1.0/b.bin"), libc::ENOENT);
    assert_eq!(t.spool_files(), 0);
    // The first file of a new version is fine.
    t.mkdir("alice/old/2.0").unwrap();
    t.write_file("alice/old/2.0/c.bin", b"c").unwrap();
    assert_eq!(
        server.get_opt("alice", "old", "2.0", "c.bin").unwrap(),
        b"c"
    );
}

#[test]
fn invalid_names_are_einval_and_send_no_request() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "pub", "1.0", "ok.bin", b"ok");
    let t = TestFs::new(&server, FsConfig::default());
    t.mkdir_p("alice/bad/1.0").unwrap();
    t.ls("alice/pub/1.0").unwrap();
    server.reset_now();
    for dir in ["alice/bad/1.0", "alice/pub/1.0"] {
        for name in [
            "star*.bin",
            " lead.bin",
            "trail.bin ",
            "tab\tname",
            "caf\u{e9}.bin",
        ] {
            assert_errno(t.create(&format!("{dir}/{name}")), libc::EINVAL);
        }
    }
    assert_errno(t.mkdir("alice/bad name"), libc::EINVAL);
    assert_errno(t.mkdir("alice/bad/ 2.0"), libc::EINVAL);
    // A scratch file may have any name; renamed to a bad one: EINVAL.
    let fh = t.create("alice/bad/1.0/.scratch").unwrap();
    t.write_at(fh, 0, b"x").unwrap();
    t.close(fh).unwrap();
    assert_errno(
        t.rename("alice/bad/1.0/.scratch", "star*.bin"),
        libc::EINVAL,
    );
    // Impossible names are not looked up on the registry either.
    assert_errno(t.stat("no such owner"), libc::ENOENT);
    assert_errno(t.stat("alice/no such package"), libc::ENOENT);
    assert_eq!(count(&server, "requests"), 0, "a request was sent");
}

#[test]
fn read_only_refuses_every_change_with_erofs() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "ro", "1.0", "f", b"x");
    let t = TestFs::new(
        &server,
        FsConfig {
            read_only: true,
            ..FsConfig::default()
        },
    );
    let f = t.stat("alice/ro/1.0/f").unwrap();
    assert_eq!(f.perm, 0o444);
    assert_eq!(t.stat("alice/ro/1.0").unwrap().perm, 0o555);
    t.ls("alice/ro/1.0").unwrap();
    server.reset_now();
    assert_errno(t.create("alice/ro/1.0/g"), libc::EROFS);
    assert_errno(t.mkdir("alice/ro/2.0"), libc::EROFS);
    assert_errno(t.unlink("alice/ro/1.0/f"), libc::EROFS);
    assert_errno(t.rmdir("alice/ro/1.0"), libc::EROFS);
    assert_errno(t.rename("alice/ro/1.0/f", "g"), libc::EROFS);
    assert_errno(t.run(t.fs.open(f.ino, true, pid())), libc::EROFS);
    assert_errno(t.fs.set_size(f.ino, 0), libc::EROFS);
    assert_eq!(count(&server, "requests"), 0);
    assert_eq!(t.read_file("alice/ro/1.0/f").unwrap(), b"x");
}

#[test]
fn published_files_cannot_change() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "pub", "1.0", "f", b"xyz");
    let t = TestFs::new(&server, FsConfig::default());
    let f = t.stat("alice/pub/1.0/f").unwrap();
    assert_errno(t.fs.set_size(f.ino, 0), libc::EPERM);
    assert_eq!(
        t.fs.set_size(f.ino, 3).unwrap().size,
        3,
        "same size is a no-op"
    );
    assert_errno(t.rename("alice/pub/1.0/f", "g"), libc::EPERM);
    // A handle kept open after close() published the file.
    let fh = t.create("alice/pub/1.0/g").unwrap();
    t.write_at(fh, 0, b"first").unwrap();
    t.run(t.fs.flush(fh, pid())).unwrap();
    assert_errno(t.write_at(fh, 5, b"more"), libc::EPERM);
    let g = t.stat("alice/pub/1.0/g").unwrap();
    assert_errno(t.fs.set_size(g.ino, 1), libc::EPERM);
    t.run(t.fs.release(fh));
    assert_eq!(
        server.get_opt("alice", "pub", "1.0", "g").unwrap(),
        b"first"
    );
    assert_eq!(server.get_opt("alice", "pub", "1.0", "f").unwrap(), b"xyz");
}

#[test]
fn files_are_created_only_in_version_directories() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "pk", "1.0", "f", b"f");
    let t = TestFs::new(&server, FsConfig::default());
    t.ls("alice").unwrap();
    t.ls("alice/pk/1.0").unwrap();
    server.reset_now();
    assert_errno(t.create("file"), libc::EPERM);
    assert_errno(t.create("alice/file"), libc::EPERM);
    assert_errno(t.create("alice/pk/file"), libc::EPERM);
    assert_errno(t.mkdir("newowner"), libc::EPERM);
    assert_errno(t.mkdir("alice/pk/1.0/sub"), libc::EPERM);
    assert_errno(t.mkdir("alice/pk/1.0"), libc::EEXIST);
    assert_eq!(count(&server, "requests"), 0);
}

#[test]
fn errors_carry_their_errno() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "e", "1.0", "f", b"f");
    let t = TestFs::new(&server, FsConfig::default());
    let dir = t.stat("alice/e/1.0").unwrap();
    let f = t.stat("alice/e/1.0/f").unwrap();
    assert_errno(t.fs.getattr(987_654), libc::ENOENT);
    assert_errno(t.stat("alice/e/1.0/nope"), libc::ENOENT);
    assert_errno(t.lookup(f.ino, "x"), libc::ENOTDIR);
    assert_errno(t.lookup(dir.ino, &"n".repeat(256)), libc::ENAMETOOLONG);
    assert_errno(t.run(t.fs.open(dir.ino, false, pid())), libc::EISDIR);
    assert_errno(t.run(t.fs.opendir(f.ino)), libc::ENOTDIR);
    assert_errno(t.unlink("alice/e/1.0"), libc::EISDIR);
    assert_errno(t.rmdir("alice/e/1.0/f"), libc::ENOTDIR);
    assert_errno(t.run(t.fs.read(424_242, 0, 10)), libc::EBADF);
    let d = t.run(t.fs.opendir(dir.ino)).unwrap();
    assert_errno(t.run(t.fs.read(d.fh, 0, 10)), libc::EBADF);
    assert_errno(t.fs.write(d.fh, 0, b"x"), libc::EBADF);
    t.run(t.fs.release(d.fh));
    let e = t.stat("alice/e/1.0/nope").unwrap_err();
    assert!(e.to_string().contains("ENOENT"), "{e}");
    assert!(e.message.contains("nope"), "{}", e.message);
}

// ---------------------------------------------------------------- deleting

#[test]
fn unlink_deletes_the_file_on_the_registry() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "del", "1.0", "a", b"a");
    server.put_ok("alice", "del", "1.0", "b", b"b");
    let t = TestFs::new(&server, FsConfig::default());
    assert_eq!(t.ls("alice/del/1.0").unwrap(), ["a", "b"]);
    server.reset_now();
    t.unlink("alice/del/1.0/a").unwrap();
    assert_eq!(count(&server, "file_delete"), 1);
    assert!(server.get_opt("alice", "del", "1.0", "a").is_none());
    assert_eq!(t.ls("alice/del/1.0").unwrap(), ["b"]);
    assert_errno(t.stat("alice/del/1.0/a"), libc::ENOENT);
    assert_errno(t.unlink("alice/del/1.0/a"), libc::ENOENT);
    assert_eq!(count(&server, "file_delete"), 1, "a second DELETE");
    assert_eq!(server.get_opt("alice", "del", "1.0", "b").unwrap(), b"b");
}

#[test]
fn unlinking_the_last_file_leaves_an_empty_directory_until_rmdir() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "last", "1.0", "a", b"a");
    server.put_ok("alice", "last", "2.0", "b", b"b");
    let t = TestFs::new(&server, FsConfig::default());
    t.unlink("alice/last/1.0/a").unwrap();
    assert!(server.files("alice", "last", "1.0").is_empty());
    // Gone from the registry and from the listing, but `rm -r` may still
    // remove the directory it is in.
    assert_eq!(t.ls("alice/last").unwrap(), ["2.0"]);
    server.reset_now();
    t.rmdir("alice/last/1.0").unwrap();
    assert_eq!(count(&server, "requests"), 0, "rmdir of a local directory");
    assert_errno(t.stat("alice/last/1.0"), libc::ENOENT);
}

#[test]
fn rmdir_of_a_non_empty_version_is_enotempty() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "full", "1.0", "a", b"a");
    let t = TestFs::new(&server, FsConfig::default());
    server.reset_now();
    assert_errno(t.rmdir("alice/full/1.0"), libc::ENOTEMPTY);
    assert_errno(t.rmdir("alice/full"), libc::ENOTEMPTY);
    let s = server.stats_now();
    assert_eq!(s["file_delete"].as_u64(), Some(0));
    assert_eq!(server.get_opt("alice", "full", "1.0", "a").unwrap(), b"a");
    assert_eq!(t.ls("alice/full/1.0").unwrap(), ["a"]);
}

#[test]
fn rmdir_lists_the_version_again_and_deletes_it_once_empty() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "gone", "1.0", "a", b"a");
    server.put_ok("alice", "gone", "2.0", "b", b"b");
    let t = TestFs::new(&server, with_ttl(Duration::from_secs(600)));
    assert_eq!(t.ls("alice/gone/1.0").unwrap(), ["a"]);
    // Its last file deleted by someone else after our listing.
    server.delete_ok("alice", "gone", "1.0", "a");
    t.rmdir("alice/gone/1.0").unwrap();
    assert_errno(t.stat("alice/gone/1.0"), libc::ENOENT);
    assert_eq!(t.ls("alice/gone").unwrap(), ["2.0"]);
}

// ---------------------------------------------------------------- writing

#[test]
fn mkdir_placeholders_are_local_until_the_first_upload_publishes_them() {
    let server = TestServer::start(&[]);
    let t = TestFs::new(&server, FsConfig::default());
    t.ls("alice").unwrap();
    server.reset_now();
    t.mkdir("alice/newp").unwrap();
    t.mkdir("alice/newp/1.0").unwrap();
    assert_eq!(t.ls("alice").unwrap(), ["newp"]);
    assert_eq!(t.ls("alice/newp").unwrap(), ["1.0"]);
    assert!(t.ls("alice/newp/1.0").unwrap().is_empty());
    assert_eq!(count(&server, "requests"), 0, "placeholders sent requests");
    assert!(server.files("alice", "newp", "1.0").is_empty());
    // A fresh view of the registry does not see them.
    let other = TestFs::new(&server, FsConfig::default());
    assert!(other.ls("alice").unwrap().is_empty());

    t.write_file("alice/newp/1.0/a.txt", b"hello").unwrap();
    assert_eq!(count(&server, "file_put"), 1);
    assert_eq!(
        server.get_opt("alice", "newp", "1.0", "a.txt").unwrap(),
        b"hello"
    );
    let other = TestFs::new(&server, FsConfig::default());
    assert_eq!(other.ls("alice/newp/1.0").unwrap(), ["a.txt"]);
    // Read back from the cache: the published bytes were kept.
    server.reset_now();
    assert_eq!(t.read_file("alice/newp/1.0/a.txt").unwrap(), b"hello");
    assert_eq!(count(&server, "file_get"), 0);
    assert_eq!(t.spool_files(), 0);
}

#[test]
fn rmdir_of_a_placeholder_is_local() {
    let server = TestServer::start(&[]);
    let t = TestFs::new(&server, FsConfig::default());
    t.mkdir_p("alice/tmp/1.0").unwrap();
    server.reset_now();
    assert_errno(t.rmdir("alice/tmp"), libc::ENOTEMPTY);
    t.rmdir("alice/tmp/1.0").unwrap();
    t.rmdir("alice/tmp").unwrap();
    assert_eq!(count(&server, "requests"), 0);
    assert!(t.ls("alice").unwrap().is_empty());
}

#[test]
fn sequential_writes_stream_the_upload_and_others_upload_at_close() {
    let server = TestServer::start(&[]);
    let t = TestFs::new(&server, FsConfig::default());
    t.mkdir_p("alice/st/1.0").unwrap();
    let bytes = data(300_000, 7);
    t.write_file("alice/st/1.0/seq.bin", &bytes).unwrap();
    let last = server.stats_now()["last_put"].clone();
    assert_eq!(last["transfer_encoding"], "chunked", "{last}");
    assert!(last["content_length"].is_null(), "{last}");
    // Written out of order: one PUT with a length at close.
    let fh = t.create("alice/st/1.0/rand.bin").unwrap();
    t.write_at(fh, 150_000, &bytes[150_000..]).unwrap();
    t.write_at(fh, 0, &bytes[..150_000]).unwrap();
    assert_eq!(count(&server, "file_put"), 1, "uploaded before close");
    t.close(fh).unwrap();
    let last = server.stats_now()["last_put"].clone();
    assert_eq!(last["content_length"], "300000", "{last}");
    assert_eq!(count(&server, "file_put"), 2);
    for f in ["seq.bin", "rand.bin"] {
        assert!(
            server.get_opt("alice", "st", "1.0", f).unwrap() == bytes,
            "{f}"
        );
    }
    // With streaming off, even sequential writes go at close.
    let t = TestFs::new(&server, upload_on_close());
    t.write_file("alice/st/1.0/close.bin", &bytes).unwrap();
    let last = server.stats_now()["last_put"].clone();
    assert_eq!(last["content_length"], "300000", "{last}");
}

#[test]
fn an_empty_file_is_published_at_release_and_a_flush_alone_does_not() {
    let server = TestServer::start(&[]);
    let t = TestFs::new(&server, FsConfig::default());
    t.mkdir_p("alice/touch/1.0").unwrap();
    server.reset_now();
    let fh = t.create("alice/touch/1.0/empty").unwrap();
    t.run(t.fs.flush(fh, pid())).unwrap();
    assert_eq!(
        count(&server, "file_put"),
        0,
        "a flush without data published"
    );
    t.run(t.fs.release(fh));
    assert_eq!(count(&server, "file_put"), 1);
    assert_eq!(
        server.get_opt("alice", "touch", "1.0", "empty").unwrap(),
        b""
    );
    assert_eq!(t.stat("alice/touch/1.0/empty").unwrap().size, 0);
    assert_eq!(t.read_file("alice/touch/1.0/empty").unwrap(), b"");
}

#[test]
fn fsync_publishes_at_once() {
    let server = TestServer::start(&[]);
    let t = TestFs::new(&server, upload_on_close());
    t.mkdir_p("alice/sync/1.0").unwrap();
    server.reset_now();
    let fh = t.create("alice/sync/1.0/f").unwrap();
    t.write_at(fh, 0, b"abc").unwrap();
    t.run(t.fs.fsync(fh)).unwrap();
    assert_eq!(count(&server, "file_put"), 1);
    assert_eq!(server.get_opt("alice", "sync", "1.0", "f").unwrap(), b"abc");
    assert_errno(t.write_at(fh, 3, b"d"), libc::EPERM);
    t.close(fh).unwrap();
    assert_eq!(count(&server, "file_put"), 1, "published twice");
}

#[test]
fn a_close_by_another_process_does_not_publish() {
    let server = TestServer::start(&[]);
    let t = TestFs::new(&server, upload_on_close());
    t.mkdir_p("alice/child/1.0").unwrap();
    server.reset_now();
    let fh = t.create("alice/child/1.0/f").unwrap();
    t.write_at(fh, 0, b"half").unwrap();
    // A child that inherited the descriptor closes it (at exec or exit).
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let r = t.run(t.fs.flush(fh, child.id()));
    child.kill().unwrap();
    child.wait().unwrap();
    r.unwrap();
    assert_eq!(
        count(&server, "file_put"),
        0,
        "published at the child's close"
    );
    t.write_at(fh, 4, b"-whole").unwrap();
    t.close(fh).unwrap();
    assert_eq!(count(&server, "file_put"), 1);
    assert_eq!(
        server.get_opt("alice", "child", "1.0", "f").unwrap(),
        b"half-whole"
    );
}

#[test]
fn scratch_files_stay_local_until_renamed_to_a_publishable_name() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "scr", "1.0", "kept", b"k");
    let t = TestFs::new(&server, FsConfig::default());
    t.ls("alice/scr/1.0").unwrap();
    server.reset_now();
    let bytes = data(50_000, 8);
    t.write_file("alice/scr/1.0/.x.tmp", &bytes).unwrap();
    assert_eq!(count(&server, "file_put"), 0, "a scratch file was uploaded");
    assert_eq!(t.ls("alice/scr/1.0").unwrap(), [".x.tmp", "kept"]);
    assert_eq!(t.read_file("alice/scr/1.0/.x.tmp").unwrap(), bytes);
    // Renamed onto a published name: EEXIST, still local.
    assert_errno(t.rename("alice/scr/1.0/.x.tmp", "kept"), libc::EEXIST);
    t.rename("alice/scr/1.0/.x.tmp", ".y.tmp").unwrap();
    assert_eq!(count(&server, "file_put"), 0);
    t.rename("alice/scr/1.0/.y.tmp", "x.bin").unwrap();
    assert_eq!(count(&server, "file_put"), 1);
    assert!(server.get_opt("alice", "scr", "1.0", "x.bin").unwrap() == bytes);
    assert_eq!(t.ls("alice/scr/1.0").unwrap(), ["kept", "x.bin"]);
    assert_errno(t.stat("alice/scr/1.0/.x.tmp"), libc::ENOENT);
    assert_eq!(t.spool_files(), 0);
    // Unlinked before it was ever renamed: nothing is sent.
    t.write_file("alice/scr/1.0/.z", b"z").unwrap();
    t.unlink("alice/scr/1.0/.z").unwrap();
    assert_eq!(count(&server, "file_put"), 1);
    assert_eq!(count(&server, "file_delete"), 0);
    assert_eq!(t.spool_files(), 0);
}

/// rename(2) changes nothing when it fails: a scratch file whose rename
/// to a publishable name fails to publish must keep its old name and
/// bytes, so the application (rsync, an editor) still has its data.
#[test]
fn a_rename_that_fails_to_publish_keeps_the_scratch_file() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "rn", "1.0", "a", b"a");
    let t = TestFs::new(&server, with_ttl(Duration::from_secs(600)));
    t.ls("alice/rn/1.0").unwrap();
    // Published behind our back after the listing: 409 at the rename.
    server.put_ok("alice", "rn", "1.0", "taken.bin", b"theirs");
    t.write_file("alice/rn/1.0/.one", b"mine").unwrap();
    assert_errno(t.rename("alice/rn/1.0/.one", "taken.bin"), libc::EEXIST);
    assert_eq!(t.read_file("alice/rn/1.0/.one").unwrap(), b"mine");
    // The registry fails the PUT and its retry: EIO.
    t.write_file("alice/rn/1.0/.two", b"mine too").unwrap();
    server.fault_now(json!({"kind": "status", "status": 500, "count": 2, "method": "PUT"}));
    assert_errno(t.rename("alice/rn/1.0/.two", "x.bin"), libc::EIO);
    assert_eq!(t.read_file("alice/rn/1.0/.two").unwrap(), b"mine too");
}

// ---------------------------------------------------------------- upload faults

#[test]
fn a_500_on_the_first_put_is_retried_once_after_a_listing_check() {
    for (version, config) in [("1.0", upload_on_close()), ("2.0", FsConfig::default())] {
        let server = TestServer::start(&[]);
        let t = TestFs::new(&server, config.clone());
        t.mkdir_p(&format!("alice/retry/{version}")).unwrap();
        server.reset_now();
        server.fault_now(json!({"kind": "status", "status": 500, "count": 1, "method": "PUT"}));
        let bytes = data(100_000, 9);
        t.write_file(&format!("alice/retry/{version}/x.bin"), &bytes)
            .unwrap_or_else(|e| panic!("{config:?}: {e}"));
        let s = server.stats_now();
        assert_eq!(s["file_put"].as_u64(), Some(2), "{config:?}: {s}");
        // The check before the retry and the confirmation after it.
        assert_eq!(s["v1"].as_u64(), Some(2), "{config:?}: {s}");
        assert!(server.get_opt("alice", "retry", version, "x.bin").unwrap() == bytes);
    }
}

#[test]
fn a_failed_put_whose_file_arrived_meanwhile_is_not_sent_again() {
    for (name, theirs, want_ok) in [
        ("same.bin", b"ours".as_slice(), true),
        ("other.bin", b"theirs".as_slice(), false),
    ] {
        let server = TestServer::start(&[]);
        let t = TestFs::new(&server, upload_on_close());
        t.mkdir_p("alice/landed/1.0").unwrap();
        server.reset_now();
        // The PUT fails; the listing that checks it is slow, and meanwhile
        // the file is published directly.
        server.fault_now(json!({"kind": "status", "status": 500, "count": 1, "method": "PUT"}));
        server.fault_now(json!({"kind": "delay", "delay_ms": 1500, "count": 1,
            "method": "GET", "path_contains": "/landed/1.0/files"}));
        let r = std::thread::scope(|s| {
            let w = s.spawn(|| t.write_file(&format!("alice/landed/1.0/{name}"), b"ours"));
            // Both faults taken: the PUT failed and its check is waiting.
            wait_for(10, "the listing check after the failed PUT", || {
                server.stats_now()["faults_armed"].as_u64() == Some(0)
            });
            server.put_ok("alice", "landed", "1.0", name, theirs);
            w.join().unwrap()
        });
        let s = server.stats_now();
        assert_eq!(s["file_put"].as_u64(), Some(2), "{name}: a second PUT: {s}");
        if want_ok {
            r.unwrap_or_else(|e| panic!("{name}: {e}"));
        } else {
            assert_errno(r, libc::EEXIST);
        }
        assert_eq!(
            server.get_opt("alice", "landed", "1.0", name).unwrap(),
            theirs
        );
        assert_eq!(t.spool_files(), 0);
    }
}

#[test]
fn a_failed_upload_fails_close_and_leaves_nothing_behind() {
    let server = TestServer::start(&[]);
    let t = TestFs::new(&server, upload_on_close());
    t.mkdir_p("alice/fail/1.0").unwrap();
    server.reset_now();
    // Two 500s: the retry fails too.
    server.fault_now(json!({"kind": "status", "status": 500, "count": 2, "method": "PUT"}));
    let bytes = data(100_000, 11);
    assert_errno(t.write_file("alice/fail/1.0/x.bin", &bytes), libc::EIO);
    assert_eq!(count(&server, "file_put"), 2, "more than one retry");
    assert!(server.get_opt("alice", "fail", "1.0", "x.bin").is_none());
    assert!(server.files("alice", "fail", "1.0").is_empty());
    assert_errno(t.stat("alice/fail/1.0/x.bin"), libc::ENOENT);
    assert_eq!(t.spool_files(), 0, "spool left behind");
    // The next attempt works.
    t.write_file("alice/fail/1.0/x.bin", &bytes).unwrap();
    assert!(server.get_opt("alice", "fail", "1.0", "x.bin").unwrap() == bytes);
}

#[test]
fn concurrent_first_uploads_into_a_new_version_do_not_overlap() {
    let server = TestServer::start(&[]);
    let t = TestFs::new(&server, FsConfig::default());
    t.mkdir_p("alice/race/1.0").unwrap();
    server.reset_now();
    // Slow PUTs, so that unserialised ones would overlap.
    server.fault_now(json!({"kind": "delay", "delay_ms": 300, "count": 4, "method": "PUT"}));
    let results: Vec<FsResult<()>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|i| {
                let t = &t;
                s.spawn(move || t.write_file(&format!("alice/race/1.0/f{i}"), &data(20_000, i)))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in results {
        r.unwrap();
    }
    let s = server.stats_now();
    assert_eq!(s["first_put_overlaps"].as_u64(), Some(0), "{s}");
    assert_eq!(s["file_put"].as_u64(), Some(3), "{s}");
    assert_eq!(server.files("alice", "race", "1.0").len(), 3);
}
