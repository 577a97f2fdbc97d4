//! The client's secret keys and the recovery key file that holds them.
//!
//! - The **dedup domain key** is shared by every client of one dedup domain: chunk ids,
//!   convergent chunk keys and the chunker seed are derived from it, so identical chunks
//!   dedup across those clients.
//! - The **master key** is this client's own: it encrypts file names, sizes and trees.
//!
//! Both live in one TOML file (mode 0600) that is also the recovery key: with it (and a new
//! certificate) a new machine reads every snapshot back.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of every key in bytes (256-bit keys for BLAKE3 and XChaCha20-Poly1305).
pub const KEY_LEN: usize = 32;

/// Errors loading or saving keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file is readable by the group or others.
    #[error(
        "key file {path} has mode {mode:o}: it is readable by other users; run `chmod 600 {path}`"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file is not valid.
    #[error("key file {path} is malformed: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the key material).
        reason: String,
    },
}

macro_rules! secret_key {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Zeroize, ZeroizeOnDrop)]
        pub struct $name([u8; KEY_LEN]);

        impl $name {
            /// A fresh random key from the OS random source.
            pub fn generate() -> Self {
                let mut k = [0u8; KEY_LEN];
                getrandom::fill(&mut k).expect("invariant: the OS random source is available");
                Self(k)
            }

            /// Wrap raw key bytes.
            pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
                Self(bytes)
            }

            /// The raw key bytes (for deriving subkeys; never log them).
            pub fn expose(&self) -> &[u8; KEY_LEN] {
                &self.0
            }

            /// Constant-time comparison.
            pub fn ct_eq(&self, other: &Self) -> bool {
                // blake3::Hash equality is constant time.
                blake3::Hash::from_bytes(self.0) == blake3::Hash::from_bytes(other.0)
            }

            fn from_hex(s: &str) -> Result<Self, String> {
                let mut v = hex::decode(s.trim())
                    .map_err(|_| format!("{} is not hex", stringify!($name)))?;
                let r = <[u8; KEY_LEN]>::try_from(v.as_slice())
                    .map(Self)
                    .map_err(|_| format!("{} must be {} hex digits", stringify!($name), KEY_LEN * 2));
                v.zeroize();
                r
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(<redacted>)", stringify!($name))
            }
        }
    };
}

secret_key!(
    /// Key shared by the clients of one dedup domain (chunk ids, convergent encryption).
    DomainKey
);
secret_key!(
    /// This client's own key for trees and metadata.
    MasterKey
);

/// Everything secret a client holds.
#[derive(Clone, Debug)]
pub struct ClientKeys {
    /// Dedup domain key.
    pub domain: DomainKey,
    /// Master key.
    pub master: MasterKey,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    dedup_domain_key: String,
    master_key: String,
}

const HEADER: &str = "\
# gridback client keys: THIS FILE IS YOUR RECOVERY KEY.
# Without it, no one (not even the grid operator) can read your backups.
# Keep a copy somewhere safe and private; anyone holding it can read your data.
# Clients that should deduplicate with each other share dedup_domain_key;
# master_key is this client's own.
";

impl ClientKeys {
    /// Fresh keys for a new dedup domain.
    pub fn generate() -> Self {
        Self {
            domain: DomainKey::generate(),
            master: MasterKey::generate(),
        }
    }

    /// Fresh keys for a new client joining an existing dedup domain.
    pub fn with_domain(domain: DomainKey) -> Self {
        Self {
            domain,
            master: MasterKey::generate(),
        }
    }

    /// Load a key file, refusing one that other users can read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut text = std::fs::read_to_string(path).map_err(io)?;
        let malformed = |reason: String| KeyError::Malformed {
            path: path.to_path_buf(),
            reason,
        };
        let parsed: Result<KeyFile, _> = toml::from_str(&text);
        text.zeroize();
        // The TOML error message may quote the line; keep only its kind of failure.
        let mut file = parsed.map_err(|e| malformed(e.message().to_string()))?;
        let keys = DomainKey::from_hex(&file.dedup_domain_key).and_then(|domain| {
            Ok(Self {
                domain,
                master: MasterKey::from_hex(&file.master_key)?,
            })
        });
        file.dedup_domain_key.zeroize();
        file.master_key.zeroize();
        keys.map_err(malformed)
    }

    /// Load the key file, or create one with fresh keys when there is none (first start of
    /// a new client). Returns whether it was created. An existing file is never replaced.
    pub fn load_or_generate(path: &Path) -> Result<(Self, bool), KeyError> {
        if path.try_exists().map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })? {
            return Ok((Self::load(path)?, false));
        }
        let keys = Self::generate();
        keys.save(path)?;
        Ok((keys, true))
    }

    /// Write the key file atomically with mode 0600 (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut text = format!(
            "{HEADER}dedup_domain_key = \"{}\"\nmaster_key = \"{}\"\n",
            hex::encode(self.domain.expose()),
            hex::encode(self.master.expose())
        );
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            // The mode given at creation is filtered by the umask; make sure.
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(dir)?.sync_all()
        })();
        text.zeroize();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let keys = ClientKeys::generate();
        keys.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# gridback client keys: THIS FILE IS YOUR RECOVERY KEY"));
        let back = ClientKeys::load(&path).unwrap();
        assert!(back.domain.ct_eq(&keys.domain));
        assert!(back.master.ct_eq(&keys.master));
        // Saving again replaces the file atomically.
        ClientKeys::generate().save(&path).unwrap();
        assert!(!ClientKeys::load(&path).unwrap().master.ct_eq(&keys.master));
    }

    #[test]
    fn refuses_world_readable_and_malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        ClientKeys::generate().save(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = ClientKeys::load(&path).unwrap_err();
        assert!(
            matches!(err, KeyError::Permissions { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"));

        std::fs::write(&path, "dedup_domain_key = \"abcd\"\nmaster_key = \"00\"\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = ClientKeys::load(&path).unwrap_err();
        assert!(matches!(err, KeyError::Malformed { .. }), "{err}");
        std::fs::write(&path, "surprise = 1\n").unwrap();
        assert!(matches!(
            ClientKeys::load(&path),
            Err(KeyError::Malformed { .. })
        ));
        assert!(matches!(
            ClientKeys::load(&dir.path().join("missing.toml")),
            Err(KeyError::Io { .. })
        ));
    }

    #[test]
    fn load_or_generate_creates_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let (a, created) = ClientKeys::load_or_generate(&path).unwrap();
        assert!(created);
        let (b, created) = ClientKeys::load_or_generate(&path).unwrap();
        assert!(!created);
        assert!(a.master.ct_eq(&b.master));
    }

    #[test]
    fn debug_is_redacted_and_domain_is_shared() {
        let a = ClientKeys::generate();
        let b = ClientKeys::with_domain(a.domain.clone());
        assert!(a.domain.ct_eq(&b.domain));
        assert!(!a.master.ct_eq(&b.master));
        let d = format!("{a:?}");
        assert!(d.contains("<redacted>"));
        assert!(!d.contains(&hex::encode(a.domain.expose())));
    }
}
