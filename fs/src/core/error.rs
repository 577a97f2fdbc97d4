//! Errors of filesystem operations and their errno.

use gridback_proto::subscription::SubscriptionState;

use crate::grid::GridError;
use crate::meta::MetaError;
use crate::tree::TreeError;

/// A failed filesystem operation.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// No such file or directory.
    #[error("not found")]
    NotFound,
    /// The name exists.
    #[error("already exists")]
    Exists,
    /// Not a directory.
    #[error("not a directory")]
    NotDir,
    /// Is a directory.
    #[error("is a directory")]
    IsDir,
    /// Directory not empty.
    #[error("directory not empty")]
    NotEmpty,
    /// The snapshot is sealed (or the place is read-only, like the mount root).
    #[error("read-only: {0}")]
    ReadOnly(&'static str),
    /// Operation not permitted here.
    #[error("not permitted: {0}")]
    NotPermitted(&'static str),
    /// Invalid argument.
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// A name component longer than 255 bytes.
    #[error("name too long")]
    NameTooLong,
    /// No such extended attribute.
    #[error("no such attribute")]
    NoAttr,
    /// Unsupported (xattr namespace, flag).
    #[error("not supported: {0}")]
    NotSupported(&'static str),
    /// Across snapshots.
    #[error("cross-snapshot rename")]
    CrossDevice,
    /// Unknown file handle.
    #[error("bad file handle")]
    BadHandle,
    /// The subscription is suspended or expired: no changes until it is active again.
    #[error("subscription is {}: browse and restore only", .0.as_str())]
    Subscription(SubscriptionState),
    /// Busy (files still open for writing).
    #[error("busy: {0}")]
    Busy(String),
    /// The grid failed.
    #[error(transparent)]
    Grid(#[from] GridError),
    /// Local metadata failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// A sealed tree could not be read.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// Local I/O (spool) failed.
    #[error("local I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl FsError {
    /// The errno for the kernel. Integrity and grid failures are EIO (never ENOENT).
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::ReadOnly(_) => libc::EROFS,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::NoAttr => libc::ENODATA,
            FsError::NotSupported(_) => libc::EOPNOTSUPP,
            FsError::CrossDevice => libc::EXDEV,
            FsError::BadHandle => libc::EBADF,
            FsError::Subscription(_) => libc::EACCES,
            FsError::Busy(_) => libc::EBUSY,
            FsError::Grid(g) => g.errno(),
            FsError::Meta(_) => libc::EIO,
            FsError::Tree(_) => libc::EIO,
            FsError::Io(e) => match e.raw_os_error() {
                Some(libc::ENOSPC) => libc::ENOSPC,
                _ => libc::EIO,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrity_failures_are_eio_and_quota_is_edquot() {
        let e = FsError::Grid(GridError::ChunkUnavailable {
            chunk: gridback_proto::ChunkId([0; 32]),
            reason: "x".into(),
        });
        assert_eq!(e.errno(), libc::EIO);
        assert_eq!(
            FsError::Grid(GridError::QuotaExceeded("q".into())).errno(),
            libc::EDQUOT
        );
        assert_eq!(
            FsError::Grid(GridError::NoPlacement {
                chunk: "-".into(),
                reason: "r".into()
            })
            .errno(),
            libc::ENOSPC
        );
        assert_eq!(FsError::ReadOnly("sealed").errno(), libc::EROFS);
        assert_eq!(
            FsError::Subscription(SubscriptionState::Expired).errno(),
            libc::EACCES
        );
        assert_eq!(
            FsError::Tree(TreeError::Invalid("x".into())).errno(),
            libc::EIO
        );
    }
}
