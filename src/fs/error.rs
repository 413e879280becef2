//! The one place where failures become errno values. Every registry error
//! (`registry::Error`) and every local failure maps here, so the table in
//! the README and the code cannot disagree.

use crate::registry;

/// An error returned to an application: an errno plus what the log says.
#[derive(Debug, Clone)]
pub struct FsError {
    pub errno: i32,
    pub message: String,
}

pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    pub fn new(errno: i32, message: impl Into<String>) -> FsError {
        FsError {
            errno,
            message: message.into(),
        }
    }

    pub fn not_found(what: impl Into<String>) -> FsError {
        FsError::new(libc::ENOENT, what)
    }

    pub fn io(e: std::io::Error, context: &str) -> FsError {
        let errno = match e.raw_os_error() {
            Some(libc::ENOSPC) => libc::ENOSPC,
            Some(libc::EDQUOT) => libc::EDQUOT,
            _ => libc::EIO,
        };
        FsError::new(errno, format!("{context}: {e}"))
    }
}

impl std::fmt::Display for FsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, errno_name(self.errno))
    }
}

/// registry-api.md §9 rule 6, and the read-path rules of issue 3.
impl From<registry::Error> for FsError {
    fn from(e: registry::Error) -> FsError {
        use registry::Error as E;
        let errno = match &e {
            E::Invalid(_) | E::BadRequest(_) => libc::EINVAL,
            E::NotFound(_) | E::RangeNotSatisfiable => libc::ENOENT,
            E::Unauthorized(_) | E::Forbidden(_) => libc::EACCES,
            E::Quota(_) => libc::EDQUOT,
            E::Conflict(_) => libc::EEXIST,
            E::TooLarge(_) => libc::EFBIG,
            E::NotSupported(_)
            | E::Server { .. }
            | E::Network(_)
            | E::Timeout(_)
            | E::Tls(_)
            | E::Corrupt(_)
            | E::Protocol(_)
            | E::Io(_) => libc::EIO,
        };
        FsError::new(errno, e.to_string())
    }
}

/// Short symbolic name for logs.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::ENOENT => "ENOENT",
        libc::EACCES => "EACCES",
        libc::EIO => "EIO",
        libc::EINVAL => "EINVAL",
        libc::EEXIST => "EEXIST",
        libc::EDQUOT => "EDQUOT",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EPERM => "EPERM",
        libc::EBADF => "EBADF",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        _ => "errno",
    }
}
