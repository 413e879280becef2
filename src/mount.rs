//! `pkgfs mount`: parse options, check the registry and the token, open
//! the cache, mount, and run until unmounted or signalled. Without
//! `--foreground` the process forks first; the parent waits until the mount
//! is ready (or has failed) and exits with a one-line reason, so a script
//! can rely on `pkgfs mount ... && ls MOUNT`.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use fuser::{Config, MountOption, SessionACL};
use url::Url;

use crate::cache::Cache;
use crate::fs::{Fs, FsConfig};
use crate::fuse::{FuseFs, KernelInvalidator};
use crate::parse_size;
use crate::registry::{self, Client, ClientConfig};

/// Options of `pkgfs mount`. The token comes from the environment variable
/// `PKGFS_TOKEN` or from `--token-file`, never from the command line.
#[derive(Debug, Args)]
#[command(after_help = "\
Environment:
  PKGFS_TOKEN   access token (scopes read:package, write:package to publish,
                read:user and read:organization to list your owners)
  RUST_LOG      log filter, e.g. pkgfs=debug

Reading: cat/cp/tar files; they are fetched on demand, verified against their
sha256 and cached. Publishing: mkdir -p OWNER/PACKAGE/VERSION, then cp files into
it; close() returns 0 only once the registry has the file. Existing files are
never replaced (EEXIST). Unmount with `fusermount3 -u MOUNTPOINT`.

Exit status: 0 mounted (or unmounted cleanly with --foreground), 1 the mount
failed (reason on stderr), 2 usage error.")]
pub struct MountArgs {
    /// Registry base URL (Gitea/Forgejo APP_URL), e.g. https://gitea.example.com/
    pub url: String,
    /// Existing empty directory to mount on.
    pub mountpoint: PathBuf,
    /// Read the access token from this file (first line). Default: the
    /// PKGFS_TOKEN environment variable; anonymous when neither is set.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Always show this owner (user or organisation) in the root directory;
    /// repeatable. Other owners are reachable by path.
    #[arg(long = "owner", value_name = "NAME")]
    pub owners: Vec<String>,
    /// Directory of the download cache and write spool
    /// [default: $XDG_CACHE_HOME/pkgfs, else ~/.cache/pkgfs]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Upper bound of the disk cache, e.g. 512MiB, 10GiB.
    #[arg(long, value_name = "SIZE", default_value = "10GiB", value_parser = parse_size)]
    pub cache_size: u64,
    /// Seconds a directory listing is trusted before it is fetched again.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub metadata_ttl: u64,
    /// Seconds a syscall waits on the network at most (lookups, listings,
    /// opens, reads: EIO after this plus 0.5 s in all); an upload fails
    /// after this long without progress.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub timeout: u64,
    /// Largest read-ahead window of a sequential read, e.g. 64MiB.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub prefetch: u64,
    /// Mount read-only: every write fails with EROFS.
    #[arg(long)]
    pub read_only: bool,
    /// Upload each file with one PUT with Content-Length when it is closed.
    /// By default a file written sequentially is streamed to the registry
    /// (chunked) while it is written, so close() only waits for the tail;
    /// use this for proxies that refuse chunked request bodies.
    #[arg(long)]
    pub upload_on_close: bool,
    /// Let other users access the mount (needs user_allow_other in
    /// /etc/fuse.conf unless root).
    #[arg(long)]
    pub allow_other: bool,
    /// Owner uid of every file [default: the mounting user].
    #[arg(long)]
    pub uid: Option<u32>,
    /// Owner gid of every file [default: the mounting user's group].
    #[arg(long)]
    pub gid: Option<u32>,
    /// Stay in the foreground (logs on stderr; Ctrl-C unmounts).
    #[arg(short, long)]
    pub foreground: bool,
    /// Log every request (same as RUST_LOG=pkgfs=debug).
    #[arg(long)]
    pub debug: bool,
    /// Write logs to this file [default in the background: CACHE_DIR/pkgfs.log].
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Accept invalid TLS certificates (dangerous; prints a warning).
    #[arg(long)]
    pub insecure: bool,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
}

impl MountArgs {
    /// The filesystem settings these options ask for (unset ones as in
    /// [`FsConfig::default`]).
    pub fn fs_config(&self) -> FsConfig {
        let d = FsConfig::default();
        FsConfig {
            uid: self.uid.unwrap_or(d.uid),
            gid: self.gid.unwrap_or(d.gid),
            read_only: self.read_only,
            metadata_ttl: Duration::from_secs(self.metadata_ttl),
            owners: self.owners.clone(),
            prefetch_max: self.prefetch,
            stream_uploads: !self.upload_on_close,
        }
    }
}

fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("pkgfs");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache").join("pkgfs")
}

/// The token from `--token-file` or `PKGFS_TOKEN`.
fn read_token(args: &MountArgs) -> Result<Option<String>> {
    if let Some(path) = &args.token_file {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot read token file {}", path.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "pkgfs: warning: token file {} is readable by other users; chmod 600 it",
                path.display()
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read token file {}", path.display()))?;
        let token = text.lines().next().unwrap_or("").trim().to_string();
        if token.is_empty() {
            bail!("token file {} is empty", path.display());
        }
        return Ok(Some(token));
    }
    Ok(std::env::var("PKGFS_TOKEN")
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}

/// Whether `path` is already a mount point (its device differs from its
/// parent's), so a second mount fails with a clear message.
fn is_mount_point(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let parent = path.join("..");
    std::fs::metadata(parent).is_ok_and(|p| p.dev() != meta.dev() || p.ino() == meta.ino())
}

/// Checks done before forking: cheap, local, and they give the clearest
/// messages.
fn check_args(args: &MountArgs) -> Result<(Url, PathBuf)> {
    let url = Url::parse(&args.url).with_context(|| format!("invalid URL {:?}", args.url))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("URL must be http:// or https://, got {:?}", args.url);
    }
    let mp = &args.mountpoint;
    let meta = std::fs::metadata(mp)
        .map_err(|e| anyhow!("mountpoint {} is not usable: {e}", mp.display()))?;
    if !meta.is_dir() {
        bail!("mountpoint {} is not a directory", mp.display());
    }
    let mp = mp
        .canonicalize()
        .with_context(|| format!("mountpoint {}", mp.display()))?;
    if is_mount_point(&mp) {
        bail!(
            "mountpoint {} is busy: something is already mounted there",
            mp.display()
        );
    }
    Ok((url, mp))
}

/// Removes `name` from the environment after overwriting its value with
/// NULs where it lies: `remove_var` only unlinks it from `environ`, while
/// `/proc/PID/environ` (and `ps e`) keep showing the block the process was
/// started with. Must run before any other thread exists.
fn scrub_env_var(name: &str) {
    extern "C" {
        static mut environ: *mut *mut libc::c_char;
    }
    // SAFETY: single-threaded (see the caller), so nothing reads or changes
    // the environment meanwhile; `environ` is a NULL-terminated array of
    // NUL-terminated strings, and each string's bytes before its NUL are
    // writable (the initial block on the stack, or heap from setenv).
    unsafe {
        let mut p = std::ptr::addr_of!(environ).read();
        while !p.is_null() && !(*p).is_null() {
            let entry = std::ffi::CStr::from_ptr(*p).to_bytes();
            if entry.len() > name.len()
                && entry.starts_with(name.as_bytes())
                && entry[name.len()] == b'='
            {
                let value = (*p).add(name.len() + 1);
                std::ptr::write_bytes(value, 0, entry.len() - name.len() - 1);
            }
            p = p.add(1);
        }
    }
    std::env::remove_var(name);
}

/// Caps glibc's malloc at two arenas. By default it keeps one per thread
/// up to 8 per core, and a daemon whose requests hop between runtime and
/// blocking threads then fragments every arena a little more with each
/// operation: under a steady load RSS crept up by about 10 % a minute
/// (tests/memory.rs), with two arenas it stays flat, at no measurable
/// cost in throughput. `MALLOC_ARENA_MAX` in the environment still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before
        // any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Entry point of `pkgfs mount`.
pub fn run(args: MountArgs) -> Result<()> {
    let (url, mountpoint) = check_args(&args)?;
    let token = read_token(&args)?;
    // Once read, the token leaves the environment, so that no child
    // (fusermount3 at mount and unmount, anything a library spawns) ever
    // inherits it and /proc/PID/environ no longer shows it.
    // Single-threaded here: no runtime or logger thread yet.
    scrub_env_var("PKGFS_TOKEN");
    limit_malloc_arenas();
    if args.foreground {
        init_logging(&args, None)?;
        return serve_mount(args, url, mountpoint, token, &mut None);
    }
    // Fork before any thread exists; the parent only waits for the verdict.
    let mut fds = [0; 2];
    // SAFETY: pipe() fills two valid descriptors on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the descriptors were just created and are owned here only.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: single-threaded at this point (no runtime, no logger threads).
    match unsafe { libc::fork() } {
        -1 => bail!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            drop(rd);
            // SAFETY: setsid in the child detaches from the terminal.
            unsafe { libc::setsid() };
            let cache_dir = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
            let log = args
                .log_file
                .clone()
                .unwrap_or_else(|| cache_dir.join("pkgfs.log"));
            let mut wr = Some(std::fs::File::from(wr));
            if let Err(e) = init_logging(&args, Some(&log)) {
                if let Some(w) = wr.as_mut() {
                    let _ = writeln!(w, "cannot open log file {}: {e:#}", log.display());
                }
                std::process::exit(1);
            }
            let result = serve_mount(args, url, mountpoint, token, &mut wr);
            if let Err(e) = &result {
                tracing::error!("{e:#}");
                if let Some(w) = wr.as_mut() {
                    let _ = writeln!(w, "{e:#}");
                }
                std::process::exit(1);
            }
            std::process::exit(0);
        }
        _child => {
            drop(wr);
            let mut msg = String::new();
            let _ = std::fs::File::from(rd).read_to_string(&mut msg);
            let msg = msg.trim();
            if msg == "ready" {
                return Ok(());
            }
            if msg.is_empty() {
                bail!("the mount process exited without mounting");
            }
            bail!("{msg}");
        }
    }
}

fn init_logging(args: &MountArgs, daemon_log: Option<&Path>) -> Result<()> {
    use tracing_subscriber::EnvFilter;
    // fuser warns when it cannot unmount at the end of a session that
    // `fusermount3 -u` already unmounted (EINVAL): not an error here.
    let default = if args.debug {
        "pkgfs=debug,info,fuser::mnt=error"
    } else {
        "info,fuser::mnt=error"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let path = args.log_file.as_deref().or(daemon_log);
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match path {
        Some(p) => {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("{}", p.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

/// Checks the registry and the token, mounts, reports readiness on
/// `ready` (then closes it, so the waiting parent sees EOF), and serves
/// until unmounted or signalled.
fn serve_mount(
    args: MountArgs,
    url: Url,
    mountpoint: PathBuf,
    token: Option<String>,
    ready: &mut Option<std::fs::File>,
) -> Result<()> {
    if args.insecure {
        tracing::warn!("--insecure: TLS certificates are NOT verified");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .thread_name("pkgfs-rt")
        .build()?;
    let fs = build_fs(&args, &url, token, &rt)?;
    let session = fuser::Session::new(
        FuseFs::new(Arc::clone(&fs), rt.handle().clone()),
        &mountpoint,
        &fuse_config(&args, &url),
    )
    .map_err(|e| anyhow!("cannot mount on {}: {e}", mountpoint.display()))?;
    fs.set_invalidator(Box::new(KernelInvalidator::new(session.notifier())));
    let bg = session.spawn()?;
    tracing::info!(url = %url, mountpoint = %mountpoint.display(), "mounted");
    if let Some(mut w) = ready.take() {
        let _ = writeln!(w, "ready");
        drop(w);
        redirect_stdio();
    }
    let signalled = rt.block_on(wait_for_end(&bg))?;
    end_session(bg, signalled, &mountpoint);
    tracing::info!(mountpoint = %mountpoint.display(), "unmounted");
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// The registry client (checked against the registry), the cache and the
/// filesystem logic on top of them.
fn build_fs(
    args: &MountArgs,
    url: &Url,
    token: Option<String>,
    rt: &tokio::runtime::Runtime,
) -> Result<Arc<Fs>> {
    let client = Client::new(ClientConfig {
        base: url.clone(),
        token,
        timeout: Duration::from_secs(args.timeout.max(1)),
        insecure: args.insecure,
    })?;
    let login = rt.block_on(check_registry(&client, url))?;
    let cache_dir = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let cache = Cache::open(&cache_dir, args.cache_size)
        .with_context(|| format!("cannot open cache directory {}", cache_dir.display()))?;
    let fs = Arc::new(Fs::new(
        Arc::new(client),
        cache,
        args.fs_config(),
        rt.handle().clone(),
    ));
    fs.set_login(login);
    Ok(fs)
}

/// The FUSE session's options: name, flags, threads, who may access it.
fn fuse_config(args: &MountArgs, url: &Url) -> Config {
    let mut options = vec![
        MountOption::FSName(format!("pkgfs:{}", url.host_str().unwrap_or("registry"))),
        MountOption::Subtype("pkgfs".into()),
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::DefaultPermissions,
    ];
    if args.read_only {
        options.push(MountOption::RO);
    }
    let mut config = Config::default();
    config.mount_options = options;
    config.n_threads = Some(args.threads.max(1));
    if args.allow_other {
        config.acl = SessionACL::All;
    }
    config
}

/// Waits until a signal arrives (its name) or the session ends by itself
/// (`fusermount3 -u`: `None`).
async fn wait_for_end(bg: &fuser::BackgroundSession) -> Result<Option<&'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(Some("SIGTERM")),
            _ = int.recv() => return Ok(Some("SIGINT")),
            _ = hup.recv() => return Ok(Some("SIGHUP")),
            _ = tick.tick() => if bg.guard.is_finished() { return Ok(None) },
        }
    }
}

/// Ends the session: unmounts after a signal (lazily if the mount is busy),
/// or joins a session that someone else unmounted.
fn end_session(bg: fuser::BackgroundSession, signalled: Option<&str>, mountpoint: &Path) {
    let Some(sig) = signalled else {
        // Someone else unmounted (`fusermount3 -u`): the mount is gone,
        // and fuser's unmount-on-drop would unmount *by path*, which can
        // hit a new mount at the same mount point made meanwhile
        // (`fusermount3 -u M; pkgfs mount URL M`). Join the session thread
        // without ever dropping the mount handle; the process exits right
        // after, closing the device.
        let bg = std::mem::ManuallyDrop::new(bg);
        // SAFETY: `guard` is moved out exactly once, and `bg` is never
        // dropped or used again, so it is not dropped twice.
        let guard = unsafe { std::ptr::read(&bg.guard) };
        match guard.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "FUSE session ended with an error"),
            Err(_) => tracing::warn!("the FUSE session thread panicked"),
        }
        return;
    };
    tracing::info!("{sig}: unmounting");
    if let Err(e) = bg.umount_and_join() {
        tracing::warn!(error = %e, "unmount failed; trying a lazy unmount");
        let _ = std::process::Command::new("fusermount3")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .args(["-u", "-z"])
            .arg(mountpoint)
            .status();
    }
}

/// Makes sure the registry answers and the token is accepted; returns the
/// token's login.
async fn check_registry(client: &Client, url: &Url) -> Result<Option<String>> {
    match client.current_user().await {
        Ok(user) => Ok(Some(user.login)),
        Err(registry::Error::Unauthorized(_)) if client.is_anonymous() => Ok(None),
        Err(registry::Error::Unauthorized(_)) => {
            bail!(
                "the registry at {url} rejected the token (401): check PKGFS_TOKEN or --token-file"
            )
        }
        Err(registry::Error::Forbidden(_)) => {
            tracing::warn!("the token may not read the user (scope read:user missing); the root lists --owner names only");
            Ok(None)
        }
        Err(e @ (registry::Error::Network(_) | registry::Error::Timeout(_))) => {
            bail!("cannot reach the registry at {url}: {e}")
        }
        Err(e @ registry::Error::Tls(_)) => {
            bail!("{e} (a private CA: add it to the system's trust store or name it in SSL_CERT_FILE; a test server: --insecure)")
        }
        Err(registry::Error::NotFound(_)) => {
            bail!("{url} does not look like a Gitea/Forgejo registry (/api/v1/user answered 404)")
        }
        Err(e) => bail!("the registry at {url} failed: {e}"),
    }
}

/// A daemon keeps no terminal: stdin/stdout/stderr go to /dev/null.
fn redirect_stdio() {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    use std::os::fd::AsRawFd;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors with a valid source.
        unsafe { libc::dup2(null.as_raw_fd(), fd) };
    }
}

/// `mount -t fuse.pkgfs` / `/etc/fstab` support: when called as
/// `mount.pkgfs` (or `mount.fuse.pkgfs`, or by mount.fuse3 as
/// `pkgfs URL MOUNTPOINT -o opts`), rewrite `URL MOUNTPOINT -o a,b=c` into
/// `pkgfs mount URL MOUNTPOINT --a --b c`. Generic mount options (`rw`,
/// `noauto`, `_netdev`, `x-systemd.*`, …) are dropped; `ro` is
/// `--read-only`. Returns `None` for an ordinary command line.
pub fn helper_args(argv: &[String]) -> Option<Vec<String>> {
    let prog = Path::new(argv.first()?)
        .file_name()?
        .to_string_lossy()
        .into_owned();
    let first = argv.get(1)?;
    let as_helper =
        prog.starts_with("mount.") || first.starts_with("http://") || first.starts_with("https://");
    if !as_helper {
        return None;
    }
    const IGNORED: [&str; 16] = [
        "rw", "defaults", "auto", "noauto", "user", "nouser", "users", "_netdev", "nofail", "exec",
        "noexec", "suid", "nosuid", "dev", "nodev", "atime",
    ];
    let mut out = vec![argv[0].clone(), "mount".to_string()];
    let mut rest = argv[1..].iter();
    let mut positional = Vec::new();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "-o" => {
                for opt in rest.next().map(String::as_str).unwrap_or("").split(',') {
                    let (k, v) = opt.split_once('=').unwrap_or((opt, ""));
                    if k.is_empty() || IGNORED.contains(&k) || k.starts_with("x-") || k == "noatime"
                    {
                        continue;
                    }
                    if k == "ro" {
                        out.push("--read-only".into());
                        continue;
                    }
                    out.push(format!("--{}", k.replace('_', "-")));
                    if !v.is_empty() {
                        out.push(v.to_string());
                    }
                }
            }
            // mount(8) flags: fake, no mtab, sloppy, verbose
            "-f" | "-n" | "-s" | "-v" => {}
            // the type (`-t fuse.pkgfs`) and the namespace, with a value
            "-t" | "-N" => {
                rest.next();
            }
            _ => positional.push(a.clone()),
        }
    }
    out.splice(2..2, positional);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn mount_helper_options_become_flags() {
        let got = helper_args(&v(&[
            "/sbin/mount.pkgfs",
            "https://g.example/",
            "/mnt/p",
            "-o",
            "rw,noauto,_netdev,token_file=/etc/pkgfs/token,owner=alice,ro,x-systemd.automount,cache_size=1GiB",
        ]))
        .unwrap();
        assert_eq!(
            got,
            v(&[
                "/sbin/mount.pkgfs",
                "mount",
                "https://g.example/",
                "/mnt/p",
                "--token-file",
                "/etc/pkgfs/token",
                "--owner",
                "alice",
                "--read-only",
                "--cache-size",
                "1GiB",
            ])
        );
        assert!(helper_args(&v(&["pkgfs", "serve"])).is_none());
    }

    #[test]
    fn default_options_give_the_default_fs_config() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: MountArgs,
        }
        let got = Cli::parse_from(["pkgfs", "https://g.example/", "/mnt"])
            .args
            .fs_config();
        assert_eq!(format!("{got:?}"), format!("{:?}", FsConfig::default()));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Ok(512 * 1024 * 1024));
        assert_eq!(parse_size("10GiB"), Ok(10 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
    }
}
