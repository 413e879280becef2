//! The one place where failures become errno values. Every failure is an
//! [`ErrorKind`] (one variant per row of the README's error table, plus the
//! few the kernel protocol needs), and [`ErrorKind::errno`] is the only
//! mapping from kinds to numbers; registry errors (`registry::Error`) and
//! local I/O errors are classified here too, so the table in the README
//! and the code cannot disagree. The error that caused a failure is kept
//! as its `source`, for the log.

use std::sync::Arc;

use crate::registry;

/// What went wrong, as the application sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// ENOENT: the owner, package, version or file does not exist.
    NotFound,
    /// EACCES: the registry refused the credentials or the rights.
    Denied,
    /// EEXIST: the file is already published (nothing is ever replaced).
    Exists,
    /// EINVAL: a name or request the registry does not allow, refused
    /// before anything is sent.
    Invalid,
    /// ENAMETOOLONG: a name over 255 bytes.
    NameTooLong,
    /// EDQUOT: the registry's size or count quota.
    Quota,
    /// EFBIG: the registry or a proxy refused the body as too large.
    TooLarge,
    /// EIO: a network failure, a 5xx, a timeout, a download that failed
    /// its sha256 check, or an answer that cannot be believed.
    Io,
    /// EROFS: mounted with `--read-only`.
    ReadOnly,
    /// EPERM: published files cannot change or be renamed, files live
    /// only in version directories, owners cannot be made.
    NotPermitted,
    /// EXDEV: a scratch file moved to another directory.
    CrossDirectory,
    /// ENOTEMPTY: `rmdir` of a directory that still has files.
    NotEmpty,
    /// ENOSPC: the filesystem of the spool or cache is full.
    NoSpace,
    /// ENOTDIR: a directory operation on a file.
    NotADirectory,
    /// EISDIR: a file operation on a directory.
    IsADirectory,
    /// EBADF: a handle that is not (or no longer) of the right kind.
    BadHandle,
}

impl ErrorKind {
    /// Every kind.
    pub const ALL: [ErrorKind; 16] = [
        ErrorKind::NotFound,
        ErrorKind::Denied,
        ErrorKind::Exists,
        ErrorKind::Invalid,
        ErrorKind::NameTooLong,
        ErrorKind::Quota,
        ErrorKind::TooLarge,
        ErrorKind::Io,
        ErrorKind::ReadOnly,
        ErrorKind::NotPermitted,
        ErrorKind::CrossDirectory,
        ErrorKind::NotEmpty,
        ErrorKind::NoSpace,
        ErrorKind::NotADirectory,
        ErrorKind::IsADirectory,
        ErrorKind::BadHandle,
    ];

    /// The errno the kernel returns to the application.
    pub fn errno(self) -> i32 {
        use ErrorKind as K;
        match self {
            K::NotFound => libc::ENOENT,
            K::Denied => libc::EACCES,
            K::Exists => libc::EEXIST,
            K::Invalid => libc::EINVAL,
            K::NameTooLong => libc::ENAMETOOLONG,
            K::Quota => libc::EDQUOT,
            K::TooLarge => libc::EFBIG,
            K::Io => libc::EIO,
            K::ReadOnly => libc::EROFS,
            K::NotPermitted => libc::EPERM,
            K::CrossDirectory => libc::EXDEV,
            K::NotEmpty => libc::ENOTEMPTY,
            K::NoSpace => libc::ENOSPC,
            K::NotADirectory => libc::ENOTDIR,
            K::IsADirectory => libc::EISDIR,
            K::BadHandle => libc::EBADF,
        }
    }

    /// The errno's symbolic name, for logs.
    pub fn errno_name(self) -> &'static str {
        use ErrorKind as K;
        match self {
            K::NotFound => "ENOENT",
            K::Denied => "EACCES",
            K::Exists => "EEXIST",
            K::Invalid => "EINVAL",
            K::NameTooLong => "ENAMETOOLONG",
            K::Quota => "EDQUOT",
            K::TooLarge => "EFBIG",
            K::Io => "EIO",
            K::ReadOnly => "EROFS",
            K::NotPermitted => "EPERM",
            K::CrossDirectory => "EXDEV",
            K::NotEmpty => "ENOTEMPTY",
            K::NoSpace => "ENOSPC",
            K::NotADirectory => "ENOTDIR",
            K::IsADirectory => "EISDIR",
            K::BadHandle => "EBADF",
        }
    }
}

/// The symbolic name of an errno pkgfs returns ("errno" for others).
pub fn errno_name(errno: i32) -> &'static str {
    ErrorKind::ALL
        .iter()
        .find(|k| k.errno() == errno)
        .map_or("errno", |k| k.errno_name())
}

/// An error returned to an application: its kind, what the log says, and
/// the error that caused it, if any.
#[derive(Debug, Clone)]
pub struct FsError {
    pub kind: ErrorKind,
    /// What failed (a path, an operation); empty when `source` says it all.
    pub message: String,
    pub source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

pub type FsResult<T> = Result<T, FsError>;

/// `err!(Kind, "format", args…)`: an `FsError` of that kind.
macro_rules! err {
    ($kind:ident, $($arg:tt)+) => {
        $crate::fs::error::FsError::new($crate::fs::error::ErrorKind::$kind, format!($($arg)+))
    };
}
pub(crate) use err;

impl FsError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> FsError {
        FsError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub fn not_found(what: impl Into<String>) -> FsError {
        FsError::new(ErrorKind::NotFound, what)
    }

    /// A local I/O failure: ENOSPC and EDQUOT pass through, the rest is EIO.
    pub fn io(e: std::io::Error, context: &str) -> FsError {
        let kind = match e.raw_os_error() {
            Some(libc::ENOSPC) => ErrorKind::NoSpace,
            Some(libc::EDQUOT) => ErrorKind::Quota,
            _ => ErrorKind::Io,
        };
        FsError {
            kind,
            message: context.to_string(),
            source: Some(Arc::new(e)),
        }
    }

    /// The errno for the kernel.
    pub fn errno(&self) -> i32 {
        self.kind.errno()
    }

    /// The message with its cause, without the errno: for logs that name
    /// the errno themselves.
    pub fn text(&self) -> String {
        match (&self.source, self.message.is_empty()) {
            (Some(s), true) => s.to_string(),
            (Some(s), false) => format!("{}: {s}", self.message),
            (None, _) => self.message.clone(),
        }
    }
}

impl std::fmt::Display for FsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.text(), self.kind.errno_name())
    }
}

impl std::error::Error for FsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// PROTOCOL.md §errno, for the write path and the read path alike.
impl From<registry::Error> for FsError {
    fn from(e: registry::Error) -> FsError {
        use registry::Error as E;
        use ErrorKind as K;
        let kind = match &e {
            E::Invalid(_) | E::BadRequest(_) => K::Invalid,
            E::NotFound(_) | E::RangeNotSatisfiable => K::NotFound,
            E::Unauthorized(_) | E::Forbidden(_) => K::Denied,
            E::Quota(_) => K::Quota,
            E::Conflict(_) => K::Exists,
            E::TooLarge(_) => K::TooLarge,
            E::NotSupported(_)
            | E::Server { .. }
            | E::Network(_)
            | E::Timeout(_)
            | E::Tls(_)
            | E::Corrupt(_)
            | E::Protocol(_)
            | E::Io(_) => K::Io,
        };
        FsError {
            kind,
            message: String::new(),
            source: Some(Arc::new(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_errno_and_name() {
        let all = ErrorKind::ALL;
        let errnos: std::collections::HashSet<i32> = all.iter().map(|k| k.errno()).collect();
        let names: std::collections::HashSet<&str> = all.iter().map(|k| k.errno_name()).collect();
        assert_eq!(errnos.len(), all.len());
        assert_eq!(names.len(), all.len());
    }

    #[test]
    fn the_cause_is_kept_and_shown_once() {
        let e = FsError::from(registry::Error::Conflict("PUT /x -> 409".into()));
        assert_eq!(e.errno(), libc::EEXIST);
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(e.to_string().matches("409").count(), 1, "{e}");
        let e = FsError::io(std::io::Error::from_raw_os_error(libc::ENOSPC), "spool");
        assert_eq!(e.kind, ErrorKind::NoSpace);
        assert!(e.to_string().starts_with("spool: "), "{e}");
    }
}
