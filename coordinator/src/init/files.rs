//! Small file helpers for the data dir: atomic, durable writes with a chosen mode, and secret
//! reads that refuse files other users can read.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::InitError;

/// Mode of files holding secrets: owner read/write only.
pub(crate) const SECRET_MODE: u32 = 0o600;
/// Mode of public files (certificates, the grid id).
pub(crate) const PUBLIC_MODE: u32 = 0o644;
/// Mode of directories the coordinator creates: they hold secrets.
pub(crate) const DIR_MODE: u32 = 0o700;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |source| InitError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Create a directory (and parents) with [`DIR_MODE`] if it is missing.
pub(crate) fn ensure_dir(path: &Path) -> Result<(), InitError> {
    if path.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(path).map_err(io_err(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE)).map_err(io_err(path))
}

/// Write `bytes` to `path` atomically: a temporary file with `mode` in the same directory,
/// fsync, rename over the target, fsync the directory. Readers see the old file or the new
/// one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InitError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        // The umask may have narrowed the mode; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Read a secret file, refusing it when group or others may read it.
pub(crate) fn read_secret(path: &Path) -> Result<Vec<u8>, InitError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(InitError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    fs::read(path).map_err(io_err(path))
}

/// Read a public file.
pub(crate) fn read_public(path: &Path) -> Result<Vec<u8>, InitError> {
    fs::read(path).map_err(io_err(path))
}

/// Read a UTF-8 file (secret or not) as a trimmed string.
pub(crate) fn to_text(path: &Path, bytes: Vec<u8>) -> Result<String, InitError> {
    String::from_utf8(bytes)
        .map(|s| s.trim().to_string())
        .map_err(|_| InitError::Malformed {
            path: path.to_path_buf(),
            reason: "not UTF-8".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_secret_read_checks_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        write_atomic(&p, b"abc", SECRET_MODE).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read_secret(&p).unwrap(), b"abc");
        write_atomic(&p, b"def", PUBLIC_MODE).unwrap();
        let e = read_secret(&p).unwrap_err();
        assert!(
            matches!(e, InitError::InsecurePermissions { mode: 0o644, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chmod 600"), "{e}");
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
