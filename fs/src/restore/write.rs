//! The local side of a restore: preparing DEST, directories, symlinks, partial files renamed
//! into place, and attributes (xattrs, owner, mode, times with nanoseconds).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;
use tracing::warn;

use super::{MARKER, RestoreError, io_err};
use crate::crypto::ChunkCrypto;
use crate::grid::ChunkRef;
use crate::meta::{Inode, Kind, Time};

/// Suffix of a file being written.
const PARTIAL_SUFFIX: &str = ".gridback-partial";
/// Longest file name most Linux filesystems accept (`NAME_MAX`).
const NAME_MAX: usize = 255;

/// Check and prepare DEST; returns whether this run resumes an interrupted restore of the
/// same `SNAPSHOT[/PATH]` (DEST holds a marker with `marker_text`).
pub(super) fn prepare_dest(
    dest: &Path,
    marker_text: &str,
    overwrite: bool,
) -> Result<bool, RestoreError> {
    match std::fs::metadata(dest) {
        Ok(m) if !m.is_dir() => return Err(RestoreError::DestNotDir(dest.to_path_buf())),
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {
            std::fs::create_dir_all(dest).map_err(io_err(dest))?;
        }
        Err(e) => return Err(io_err(dest)(e)),
    }
    let marker = dest.join(MARKER);
    let resumed = std::fs::read_to_string(&marker).is_ok_and(|t| t == marker_text);
    let empty = std::fs::read_dir(dest)
        .map_err(io_err(dest))?
        .next()
        .is_none();
    if !empty && !resumed && !overwrite {
        return Err(RestoreError::NotEmpty(dest.to_path_buf()));
    }
    let mut f = File::create(&marker).map_err(io_err(&marker))?;
    f.write_all(marker_text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err(&marker))?;
    Ok(resumed)
}

/// The last step of a restore, once every file is in place: set the attributes of `dirs`
/// (deepest first), make everything durable, and only then remove the resume marker, so that
/// a restore interrupted anywhere before leaves the marker and can be resumed. DEST's own
/// attributes (when `top_is_dest`) come after the marker is gone: removing it changes DEST's
/// mtime, and a read-only DEST would refuse the removal to anyone but root. Returns the
/// number of attributes that could not be set.
pub(super) fn finish_dirs(
    dest: &Path,
    dirs: &[(Inode, PathBuf)],
    top_is_dest: bool,
) -> Result<u64, RestoreError> {
    let mut warnings = 0;
    let mut dest_inode = None;
    for (inode, path) in dirs {
        if top_is_dest && path == dest {
            dest_inode = Some(inode);
        } else {
            warnings += set_attrs(path, inode)?;
        }
    }
    // Renames of files into place and the attributes above are not durable yet (each file's
    // content is): one syncfs covers all of them before the marker goes.
    let d = File::open(dest).map_err(io_err(dest))?;
    rustix::fs::syncfs(&d).map_err(|e| io_err(dest)(e.into()))?;
    let marker = dest.join(MARKER);
    match std::fs::remove_file(&marker) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(io_err(&marker)(e)),
        _ => {}
    }
    if let Some(inode) = dest_inode {
        warnings += set_attrs(dest, inode)?;
    }
    d.sync_all().map_err(io_err(dest))?;
    Ok(warnings)
}

/// Make sure `path` is a directory (its attributes are set at the end). When `replace`, a
/// file or symlink in the way is removed.
pub(super) fn make_dir(path: &Path, replace: bool) -> Result<(), RestoreError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) if replace => {
            std::fs::remove_file(path).map_err(io_err(path))?;
            std::fs::create_dir(path).map_err(io_err(path))
        }
        Ok(_) => Err(io_err(path)(std::io::Error::from(ErrorKind::AlreadyExists))),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            std::fs::create_dir(path).map_err(io_err(path))
        }
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Create the symlink at `path` (replacing a file or symlink there) with its attributes;
/// returns the number of attributes that could not be set.
pub(super) fn make_symlink(path: &Path, inode: &Inode) -> Result<u64, RestoreError> {
    let target = OsStr::from_bytes(inode.symlink.as_deref().unwrap_or_default());
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            return Err(io_err(path)(std::io::Error::new(
                ErrorKind::AlreadyExists,
                "a directory is where a symlink goes",
            )));
        }
        Ok(_) => std::fs::remove_file(path).map_err(io_err(path))?,
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    std::os::unix::fs::symlink(target, path).map_err(io_err(path))?;
    set_attrs(path, inode)
}

/// Whether a regular file with the right size and mtime (ns) is already at `path`.
pub(super) fn in_place(path: &Path, inode: &Inode) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| {
        m.is_file()
            && m.len() == inode.size
            && m.mtime() == inode.mtime.secs
            && m.mtime_nsec() == i64::from(inode.mtime.nanos)
    })
}

/// Whether the regular file at `path` holds exactly `chunks`: each piece, cut at the chunk
/// lengths, hashes to its chunk id, and nothing follows. Files are renamed into place without
/// an fsync each, so after a crash of the machine a file may have its name, size and times
/// but not its data; a resumed restore keeps a file only when this holds.
pub(super) fn content_matches(path: &Path, chunks: &[ChunkRef], crypto: &ChunkCrypto) -> bool {
    let Ok(mut f) = File::open(path) else {
        return false;
    };
    let mut buf = Vec::new();
    for c in chunks {
        buf.resize(c.len as usize, 0);
        if f.read_exact(&mut buf).is_err() || crypto.chunk_id(&buf) != c.id {
            return false;
        }
    }
    f.read(&mut [0u8; 1]).is_ok_and(|n| n == 0)
}

/// Where the content of `path` is written before it is renamed into place.
pub(super) fn partial_path(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().as_bytes();
    let partial = if name.len() + PARTIAL_SUFFIX.len() <= NAME_MAX {
        let mut n = name.to_vec();
        n.extend_from_slice(PARTIAL_SUFFIX.as_bytes());
        n
    } else {
        let h = blake3::hash(name).to_hex();
        format!("{PARTIAL_SUFFIX}-{}", &h[..32]).into_bytes()
    };
    path.with_file_name(OsString::from_vec(partial))
}

/// A file being written under its partial name.
pub(super) struct Partial {
    file: File,
    path: PathBuf,
}

impl Partial {
    /// Create (or truncate) the partial file.
    pub fn create(path: &Path) -> Result<Self, RestoreError> {
        // A partial left by an interrupted run may already carry a read-only mode.
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(io_err(path)(e)),
            _ => {}
        }
        let file = File::create(path).map_err(io_err(path))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Append chunks (on a blocking thread).
    pub async fn write_all(mut self, data: Vec<Arc<Vec<u8>>>) -> Result<Self, RestoreError> {
        tokio::task::spawn_blocking(move || {
            for d in &data {
                self.file.write_all(d).map_err(io_err(&self.path))?;
            }
            Ok(self)
        })
        .await
        .map_err(|e| RestoreError::Internal(format!("write task: {e}")))?
    }

    /// Set the attributes and rename into `dest`; returns the number of attributes that
    /// could not be set. The content is not synced here: one `syncfs` before the resume
    /// marker goes covers every file (see `finish_dirs`), and a file kept by a resumed run is
    /// verified against its chunk ids first (`content_matches`).
    pub async fn finish(self, inode: Inode, dest: PathBuf) -> Result<u64, RestoreError> {
        tokio::task::spawn_blocking(move || {
            drop(self.file);
            let warnings = set_attrs(&self.path, &inode)?;
            std::fs::rename(&self.path, &dest).map_err(io_err(&dest))?;
            Ok(warnings)
        })
        .await
        .map_err(|e| RestoreError::Internal(format!("finish task: {e}")))?
    }
}

fn spec(t: Time) -> TimeSpec {
    TimeSpec::new(t.secs, i64::from(t.nanos))
}

/// Set xattrs, owner (only as root), mode (not on symlinks) and times of `path`, without
/// following a symlink; returns the number of xattrs that could not be set (a filesystem
/// without `user.*` xattrs is not an error).
pub(super) fn set_attrs(path: &Path, inode: &Inode) -> Result<u64, RestoreError> {
    let mut warnings = 0;
    if inode.kind != Kind::Symlink {
        for (k, v) in &inode.xattrs {
            let key = OsStr::from_bytes(k);
            if let Err(e) = rustix::fs::lsetxattr(path, key, v, rustix::fs::XattrFlags::empty()) {
                warn!(path = %path.display(), xattr = %key.to_string_lossy(), error = %e, "cannot set xattr");
                warnings += 1;
            }
        }
    }
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::lchown(path, Some(inode.uid), Some(inode.gid)).map_err(io_err(path))?;
    }
    if inode.kind != Kind::Symlink {
        let mode = std::fs::Permissions::from_mode(u32::from(inode.perm));
        std::fs::set_permissions(path, mode).map_err(io_err(path))?;
    }
    set_times(path, inode)?;
    Ok(warnings)
}

/// Set the atime and mtime of `path` (nanoseconds kept), without following a symlink.
fn set_times(path: &Path, inode: &Inode) -> Result<(), RestoreError> {
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &spec(inode.atime),
        &spec(inode.mtime),
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| io_err(path)(std::io::Error::from(e)))
}
