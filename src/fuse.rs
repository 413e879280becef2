//! The thin `fuser::Filesystem` adapter: decode a kernel request, hand it
//! to `crate::fs` on the tokio runtime, reply from there. No filesystem
//! logic lives here, and no FUSE worker thread ever waits on the network
//! (only reads of files already on local disk are answered inline).

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use crate::fs::{Attr, ErrorKind, Fs, FsError, FsResult, Invalidate, OpenDir, Opener};

mod passthrough;
use passthrough::Passthrough;

/// Largest read and write the kernel is asked to send in one request.
const MAX_IO: u32 = 1024 * 1024;

/// Kernel dentry invalidation through the session's notifier. Sent
/// synchronously, so that when the syscall being answered returns the name
/// is already gone; `crate::fs` only asks from `flush`/`release`, where the
/// kernel holds no directory lock (a notification about a directory whose
/// lock the kernel holds for the request in flight would deadlock).
pub struct KernelInvalidator {
    notifier: fuser::Notifier,
}

impl KernelInvalidator {
    pub fn new(notifier: fuser::Notifier) -> KernelInvalidator {
        KernelInvalidator { notifier }
    }
}

impl Invalidate for KernelInvalidator {
    fn entry(&self, parent: u64, name: &str) {
        let send = || self.notifier.inval_entry(INodeNo(parent), OsStr::new(name));
        let result = match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(send),
            Err(_) => send(),
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, name, "kernel entry invalidation failed");
        }
    }
}

pub struct FuseFs {
    fs: Arc<Fs>,
    rt: Handle,
    ttl: Duration,
    passthrough: Arc<Passthrough>,
}

impl FuseFs {
    pub fn new(fs: Arc<Fs>, rt: Handle) -> FuseFs {
        let ttl = fs.config().metadata_ttl;
        FuseFs {
            fs,
            rt,
            ttl,
            passthrough: Arc::new(Passthrough::new()),
        }
    }

    /// Runs `f` on the runtime; FUSE threads return at once.
    fn spawn<F>(&self, f: impl FnOnce(Arc<Fs>) -> F + Send + 'static)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let fs = Arc::clone(&self.fs);
        self.rt.spawn(f(fs));
    }
}

fn to_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: if a.is_dir {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        // The preferred I/O size: cp, stdio and python size their buffers
        // by it, so each FUSE request carries up to `MAX_IO` bytes.
        blksize: MAX_IO,
        flags: 0,
    }
}

/// Logs the failure (ENOENT quietly) and converts it for the kernel.
fn errno(op: &str, e: &FsError) -> Errno {
    if e.kind == ErrorKind::NotFound {
        tracing::debug!(op, error = %e.text(), "ENOENT");
    } else {
        tracing::warn!(op, errno = e.kind.errno_name(), error = %e.text(), "operation failed");
    }
    Errno::from_i32(e.errno())
}

/// Replies with an entry, which the kernel holds until it forgets it.
fn reply_entry(fs: &Fs, ttl: &Duration, op: &str, r: FsResult<Attr>, reply: ReplyEntry) {
    match r {
        Ok(a) => {
            fs.remember(a.ino);
            reply.entry(ttl, &to_attr(&a), Generation(0))
        }
        Err(e) => reply.error(errno(op, &e)),
    }
}

/// Replies to an operation that returns nothing.
fn reply_empty(reply: ReplyEmpty, op: &str, r: FsResult<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(op, &e)),
    }
}

fn name_str(name: &OsStr) -> Option<String> {
    name.to_str().map(str::to_string)
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_IO);
        if let Err(max) = config.set_max_readahead(MAX_IO) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        // Write handles are opened with FOPEN_DIRECT_IO (see `create`);
        // this keeps shared writable mmap working on them (Linux >= 6.6).
        let _ = config.add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        // Cached files are read by the kernel from the cache file itself
        // where it can (see `passthrough`); a backing file on ext4, xfs,
        // btrfs or tmpfs has stack depth 0, below this limit of 1.
        if config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough.enable();
        } else {
            tracing::info!("FUSE passthrough unavailable: the kernel does not offer it (Linux >= 6.9 does); cached files are served through the page cache");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name_str(name) else {
            return reply.error(Errno::ENOENT);
        };
        let ttl = self.ttl;
        match self.fs.lookup_now(parent.0, &name) {
            Some(r) => reply_entry(&self.fs, &ttl, "lookup", r, reply),
            None => self.spawn(move |fs| async move {
                let r = fs.bounded("lookup", fs.lookup(parent.0, &name)).await;
                reply_entry(&fs, &ttl, "lookup", r, reply)
            }),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&self.ttl, &to_attr(&a)),
            Err(e) => reply.error(errno("getattr", &e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // The kernel caches listings (FOPEN_CACHE_DIR) and keeps its cache
        // while the entries are unchanged; a fresh listing is answered
        // here, one to fetch on the runtime.
        fn answer(r: FsResult<OpenDir>, reply: ReplyOpen) {
            match r {
                Ok(d) => {
                    let mut flags = FopenFlags::FOPEN_CACHE_DIR;
                    if d.unchanged {
                        flags |= FopenFlags::FOPEN_KEEP_CACHE;
                    }
                    reply.opened(FileHandle(d.fh), flags)
                }
                Err(e) => reply.error(errno("opendir", &e)),
            }
        }
        match self.fs.opendir_now(ino.0) {
            Some(r) => answer(r, reply),
            None => self.spawn(move |fs| async move {
                answer(fs.bounded("opendir", fs.opendir(ino.0)).await, reply)
            }),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.fs.readdir(fh.0, ino.0, offset) {
            Ok(entries) => {
                for (next, e) in entries {
                    let kind = if e.is_dir {
                        FileType::Directory
                    } else {
                        FileType::RegularFile
                    };
                    if reply.add(INodeNo(e.ino), next, kind, &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno("readdir", &e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.spawn(move |fs| async move {
            fs.release(fh.0).await;
            reply.ok();
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = (flags.0 & libc::O_ACCMODE) != libc::O_RDONLY;
        let pid = req.pid();
        let pt = Arc::clone(&self.passthrough);
        self.spawn(move |fs| async move {
            match fs.bounded("open", fs.open(ino.0, write, pid)).await {
                Ok(fh) => {
                    // Published files never change: keep the page cache
                    // once the bytes are verified (served from the disk
                    // cache), or let the kernel read the cache file.
                    let flags = if fs.keep_page_cache(fh) {
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        FopenFlags::empty()
                    };
                    pt.reply_open(&fs, ino.0, fh, flags, reply);
                }
                Err(e) => reply.error(errno("open", &e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if let Some(r) = self.fs.read_local(fh.0, offset, size) {
            return match r {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno("read", &e)),
            };
        }
        self.spawn(move |fs| async move {
            match fs.bounded("read", fs.read(fh.0, offset, size)).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno("read", &e)),
            }
        });
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        if !self.fs.is_write_handle(fh.0) {
            return reply.ok();
        }
        let pid = req.pid();
        self.spawn(move |fs| async move {
            reply_empty(reply, "close", fs.flush(fh.0, pid).await);
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if !self.fs.is_write_handle(fh.0) {
            return reply.ok();
        }
        self.spawn(move |fs| async move {
            reply_empty(reply, "fsync", fs.fsync(fh.0).await);
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let Some(name) = name_str(name) else {
            return reply.error(Errno::EINVAL);
        };
        let ttl = self.ttl;
        let pid = req.pid();
        let pt = Arc::clone(&self.passthrough);
        self.spawn(move |fs| async move {
            match fs
                .bounded("create", fs.create(parent.0, &name, Opener::of(pid)))
                .await
            {
                Ok((a, fh)) => {
                    fs.remember(a.ino);
                    pt.note_cached_open(a.ino, fh);
                    // Direct I/O: the data goes from the writer's pages to
                    // the spool without filling the page cache of the
                    // mount as well (a third copy of every byte published;
                    // `cp` spends half the system time on it).
                    reply.created(
                        &ttl,
                        &to_attr(&a),
                        Generation(0),
                        FileHandle(fh),
                        FopenFlags::FOPEN_DIRECT_IO,
                    )
                }
                Err(e) => reply.error(errno("create", &e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // A write goes to the local spool: no network, answered inline.
        match self.fs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno("write", &e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // Only the size of a file being written can change; times and
        // modes are not stored by the registry and are ignored.
        let r = match size {
            Some(size) => self.fs.set_size(ino.0, size),
            None => self.fs.getattr(ino.0),
        };
        match r {
            Ok(a) => reply.attr(&self.ttl, &to_attr(&a)),
            Err(e) => reply.error(errno("setattr", &e)),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let Some(name) = name_str(name) else {
            return reply.error(Errno::EINVAL);
        };
        let ttl = self.ttl;
        self.spawn(move |fs| async move {
            let r = fs.bounded("mkdir", fs.mkdir(parent.0, &name)).await;
            reply_entry(&fs, &ttl, "mkdir", r, reply)
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some(name) = name_str(name) else {
            return reply.error(Errno::ENOENT);
        };
        self.spawn(move |fs| async move {
            reply_empty(
                reply,
                "rmdir",
                fs.bounded("rmdir", fs.rmdir(parent.0, &name)).await,
            );
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some(name) = name_str(name) else {
            return reply.error(Errno::ENOENT);
        };
        self.spawn(move |fs| async move {
            reply_empty(
                reply,
                "unlink",
                fs.bounded("unlink", fs.unlink(parent.0, &name)).await,
            );
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (Some(name), Some(newname)) = (name_str(name), name_str(newname)) else {
            return reply.error(Errno::EINVAL);
        };
        self.spawn(move |fs| async move {
            reply_empty(
                reply,
                "rename",
                fs.rename(parent.0, &name, newparent.0, &newname).await,
            );
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.passthrough.release(fh.0);
        self.spawn(move |fs| async move {
            fs.release(fh.0).await;
            reply.ok();
        });
    }

    // The registry stores no extended attributes. ENOSYS (not ENODATA)
    // makes the kernel stop asking, which saves `ls -l` two round trips
    // per file (security.selinux, system.posix_acl_access).
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks,
            s.blocks_free,
            s.blocks_free,
            s.files,
            u64::MAX / 2,
            s.block_size,
            255,
            s.block_size,
        );
    }
}
