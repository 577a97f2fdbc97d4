//! The coordinator's data directory: created on first start, loaded on every start.
//!
//! ```text
//! DATA_DIR/
//!   ca.crt            0644  cluster CA certificate (PEM)
//!   ca.key            0600  cluster CA key (PEM)
//!   order.key         0600  Ed25519 order-signing key (PKCS#8 DER)
//!   sequence.key      0600  32-byte secret sequence key (never leaves the coordinator)
//!   grid.id           0644  16-byte grid id (hex)
//!   join-token        0600  reusable join secret for nodes and clients (hex)
//!   tls/coordinator.crt 0644, tls/coordinator.key 0600   the coordinator's TLS identity
//!   admin/admin.crt 0644, admin/admin.key 0600, admin/ca.crt 0644
//!                     the operator's identity (Role::Admin), same layout as a client's
//!   meta.redb               metadata records
//! ```
//! The admin certificate is the only `Role::Admin` certificate: it is issued here, never
//! through a join token, and recorded in the metadata database.
//! Every file is created only when missing, so initialisation is idempotent. Secrets are read
//! with a permission check.

mod files;

use std::path::{Path, PathBuf};

use gridback_proto::coord_api::Role;
use gridback_proto::tls::{COORDINATOR_SERVER_NAME, ClusterCa, Identity, TlsError, cert_from_pem};
use gridback_proto::{CertFingerprint, OrderSigner};
use zeroize::Zeroizing;

pub use files::write_atomic;
use files::{PUBLIC_MODE, SECRET_MODE, ensure_dir, read_public, read_secret, to_text};

use crate::sequence::SequenceKey;
use crate::store::{CertRecord, MetaStore, RedbStore, StoreError};

/// TLS name written into the admin certificate.
pub const ADMIN_SERVER_NAME: &str = "admin.gridback";

/// Directory of the admin identity (`admin.crt`, `admin.key`, `ca.crt`) in a data dir.
pub fn admin_tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("admin")
}

/// Errors creating or loading the data directory.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A secret file is readable by other users.
    #[error(
        "refusing to use {path}: it is readable by group or others (mode {mode:04o}); \
         run chmod 600 {path}"
    )]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file holds something unexpected.
    #[error("{path} is malformed: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Part of the CA is missing: regenerating it would orphan every issued certificate.
    #[error("{missing} is missing but {present} exists; restore it from a backup")]
    Incomplete {
        /// The missing file.
        missing: PathBuf,
        /// Its partner that exists.
        present: PathBuf,
    },
    /// Certificate generation or parsing failed.
    #[error("TLS identity: {0}")]
    Tls(#[from] TlsError),
    /// The metadata database could not be created.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What [`init_data_dir`] did.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// The grid id.
    pub grid: [u8; 16],
    /// Files created by this call (empty when the data dir was already complete).
    pub created: Vec<PathBuf>,
}

/// Paths of the data dir files.
#[derive(Debug, Clone)]
pub struct DataDirLayout {
    root: PathBuf,
}

impl DataDirLayout {
    /// Layout under `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }
    /// CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.crt")
    }
    /// CA key.
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }
    /// Order-signing key.
    pub fn order_key(&self) -> PathBuf {
        self.root.join("order.key")
    }
    /// Secret sequence key.
    pub fn sequence_key(&self) -> PathBuf {
        self.root.join("sequence.key")
    }
    /// Grid id.
    pub fn grid_id(&self) -> PathBuf {
        self.root.join("grid.id")
    }
    /// Join token.
    pub fn join_token(&self) -> PathBuf {
        self.root.join("join-token")
    }
    /// Coordinator certificate.
    pub fn tls_cert(&self) -> PathBuf {
        self.root.join("tls").join("coordinator.crt")
    }
    /// Coordinator TLS key.
    pub fn tls_key(&self) -> PathBuf {
        self.root.join("tls").join("coordinator.key")
    }
    /// Metadata database.
    pub fn meta_db(&self) -> PathBuf {
        self.root.join("meta.redb")
    }
    /// Admin certificate.
    pub fn admin_cert(&self) -> PathBuf {
        admin_tls_dir(&self.root).join("admin.crt")
    }
    /// Admin key.
    pub fn admin_key(&self) -> PathBuf {
        admin_tls_dir(&self.root).join("admin.key")
    }
    /// CA certificate next to the admin identity.
    pub fn admin_ca(&self) -> PathBuf {
        admin_tls_dir(&self.root).join("ca.crt")
    }
}

/// The admin certificate's fingerprint and the record that makes it the admin's.
pub fn admin_cert_record(data_dir: &Path) -> Result<(CertFingerprint, CertRecord), InitError> {
    let path = DataDirLayout::new(data_dir).admin_cert();
    let pem = to_text(&path, read_public(&path)?)?;
    let der = cert_from_pem(&pem)?;
    let fp = CertFingerprint::of_der(&der);
    let mut id = [0u8; 16];
    id.copy_from_slice(&fp.as_bytes()[..16]);
    Ok((
        fp,
        CertRecord {
            role: Role::Admin,
            id,
        },
    ))
}

fn random_hex<const N: usize>() -> String {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("invariant: the OS random source is available");
    hex::encode(b)
}

fn create_if_missing(
    path: PathBuf,
    mode: u32,
    created: &mut Vec<PathBuf>,
    make: impl FnOnce() -> Result<Vec<u8>, InitError>,
) -> Result<(), InitError> {
    if path.exists() {
        return Ok(());
    }
    write_atomic(&path, &make()?, mode)?;
    created.push(path);
    Ok(())
}

/// Create every missing piece of a coordinator data dir. Running it again changes nothing.
pub fn init_data_dir(data_dir: &Path) -> Result<InitReport, InitError> {
    let l = DataDirLayout::new(data_dir);
    let mut created = Vec::new();
    ensure_dir(data_dir)?;
    ensure_dir(&data_dir.join("tls"))?;

    match (l.ca_cert().exists(), l.ca_key().exists()) {
        (false, false) => {
            let ca = ClusterCa::generate(&random_hex::<4>())?;
            write_atomic(&l.ca_key(), ca.key_pem().as_bytes(), SECRET_MODE)?;
            write_atomic(&l.ca_cert(), ca.cert_pem().as_bytes(), PUBLIC_MODE)?;
            created.extend([l.ca_key(), l.ca_cert()]);
        }
        (true, false) => {
            return Err(InitError::Incomplete {
                missing: l.ca_key(),
                present: l.ca_cert(),
            });
        }
        (false, true) => {
            return Err(InitError::Incomplete {
                missing: l.ca_cert(),
                present: l.ca_key(),
            });
        }
        (true, true) => {}
    }
    create_if_missing(l.order_key(), SECRET_MODE, &mut created, || {
        Ok(OrderSigner::generate().1)
    })?;
    create_if_missing(l.sequence_key(), SECRET_MODE, &mut created, || {
        Ok(SequenceKey::generate().expose_bytes().to_vec())
    })?;
    create_if_missing(l.grid_id(), PUBLIC_MODE, &mut created, || {
        Ok(format!("{}\n", random_hex::<16>()).into_bytes())
    })?;
    create_if_missing(l.join_token(), SECRET_MODE, &mut created, || {
        Ok(format!("{}\n", random_hex::<32>()).into_bytes())
    })?;
    if !l.tls_cert().exists() || !l.tls_key().exists() {
        let ca = load_ca(&l)?;
        let id = ca.issue_with_key(COORDINATOR_SERVER_NAME, "coordinator")?;
        write_atomic(&l.tls_key(), id.key_pem.as_bytes(), SECRET_MODE)?;
        write_atomic(&l.tls_cert(), id.cert_pem().as_bytes(), PUBLIC_MODE)?;
        created.extend([l.tls_key(), l.tls_cert()]);
    }
    if !l.meta_db().exists() {
        drop(RedbStore::open(&l.meta_db())?);
        created.push(l.meta_db());
    }
    ensure_dir(&admin_tls_dir(data_dir))?;
    if !l.admin_cert().exists() || !l.admin_key().exists() {
        let ca = load_ca(&l)?;
        let id = ca.issue_with_key(ADMIN_SERVER_NAME, "admin")?;
        write_atomic(&l.admin_key(), id.key_pem.as_bytes(), SECRET_MODE)?;
        write_atomic(&l.admin_cert(), id.cert_pem().as_bytes(), PUBLIC_MODE)?;
        created.extend([l.admin_key(), l.admin_cert()]);
        let (fp, rec) = admin_cert_record(data_dir)?;
        RedbStore::open(&l.meta_db())?.ensure_cert(&fp, &rec)?;
    }
    if !l.admin_ca().exists() {
        let ca = to_text(&l.ca_cert(), read_public(&l.ca_cert())?)?;
        write_atomic(&l.admin_ca(), format!("{ca}\n").as_bytes(), PUBLIC_MODE)?;
        created.push(l.admin_ca());
    }
    Ok(InitReport {
        grid: load_grid_id(&l)?,
        created,
    })
}

/// The join token of an initialised data dir (for `gridback local up` and admin tools).
pub fn read_join_token(data_dir: &Path) -> Result<Zeroizing<String>, InitError> {
    let path = DataDirLayout::new(data_dir).join_token();
    let text = Zeroizing::new(to_text(&path, read_secret(&path)?)?);
    if text.is_empty() {
        return Err(InitError::Malformed {
            path,
            reason: "empty join token".into(),
        });
    }
    Ok(text)
}

fn load_ca(l: &DataDirLayout) -> Result<ClusterCa, InitError> {
    let cert = to_text(&l.ca_cert(), read_public(&l.ca_cert())?)?;
    let key = Zeroizing::new(to_text(&l.ca_key(), read_secret(&l.ca_key())?)?);
    Ok(ClusterCa::from_pem(&cert, &key)?)
}

fn load_grid_id(l: &DataDirLayout) -> Result<[u8; 16], InitError> {
    let path = l.grid_id();
    let text = to_text(&path, read_public(&path)?)?;
    hex::decode(&text)
        .ok()
        .and_then(|v| <[u8; 16]>::try_from(v).ok())
        .ok_or_else(|| InitError::Malformed {
            path,
            reason: "expected 32 hex digits".into(),
        })
}

/// Everything secret and identifying the coordinator loads from its data dir.
pub struct GridSecrets {
    /// The grid id.
    pub grid: [u8; 16],
    /// The cluster CA.
    pub ca: ClusterCa,
    /// Order signer.
    pub signer: OrderSigner,
    /// Secret sequence key.
    pub sequence_key: SequenceKey,
    /// The coordinator's own TLS identity.
    pub identity: Identity,
    /// Join token.
    pub join_token: Zeroizing<String>,
}

impl std::fmt::Debug for GridSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GridSecrets(grid {}, <redacted>)",
            hex::encode(self.grid)
        )
    }
}

impl GridSecrets {
    /// Fresh secrets held only in memory, written nowhere (benches of the service path).
    pub fn ephemeral() -> Result<Self, InitError> {
        let ca = ClusterCa::generate(&random_hex::<4>())?;
        let identity = ca.issue_with_key(COORDINATOR_SERVER_NAME, "coordinator")?;
        let mut grid = [0u8; 16];
        getrandom::fill(&mut grid).expect("invariant: the OS random source is available");
        Ok(Self {
            grid,
            ca,
            signer: OrderSigner::generate().0,
            sequence_key: SequenceKey::generate(),
            identity,
            join_token: Zeroizing::new(random_hex::<32>()),
        })
    }

    /// Load an initialised data dir.
    pub fn load(data_dir: &Path) -> Result<Self, InitError> {
        let l = DataDirLayout::new(data_dir);
        let ca = load_ca(&l)?;
        let order_path = l.order_key();
        let signer =
            OrderSigner::from_pkcs8(&Zeroizing::new(read_secret(&order_path)?)).map_err(|_| {
                InitError::Malformed {
                    path: order_path,
                    reason: "not an Ed25519 PKCS#8 key".into(),
                }
            })?;
        let seq_path = l.sequence_key();
        let raw = Zeroizing::new(read_secret(&seq_path)?);
        let bytes = <[u8; 32]>::try_from(raw.as_slice()).map_err(|_| InitError::Malformed {
            path: seq_path,
            reason: format!("expected {} bytes, found {}", SequenceKey::LEN, raw.len()),
        })?;
        let sequence_key = SequenceKey::from_bytes(bytes);
        let cert = to_text(&l.tls_cert(), read_public(&l.tls_cert())?)?;
        let key = Zeroizing::new(to_text(&l.tls_key(), read_secret(&l.tls_key())?)?);
        let identity = Identity::from_pem(&cert, &key, &ca.cert_pem())?;
        Ok(Self {
            grid: load_grid_id(&l)?,
            ca,
            signer,
            sequence_key,
            identity,
            join_token: read_join_token(data_dir)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn init_creates_everything_once_with_modes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("coord");
        let r = init_data_dir(&d).unwrap();
        let l = DataDirLayout::new(&d);
        assert_eq!(r.created.len(), 12, "{:?}", r.created);
        for p in [
            l.admin_key(),
            l.ca_key(),
            l.order_key(),
            l.sequence_key(),
            l.join_token(),
            l.tls_key(),
        ] {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        for p in [
            l.ca_cert(),
            l.grid_id(),
            l.tls_cert(),
            l.admin_cert(),
            l.admin_ca(),
        ] {
            assert_eq!(mode(&p), 0o644, "{}", p.display());
        }
        let before: Vec<_> = [l.ca_key(), l.order_key(), l.join_token()]
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect();
        let again = init_data_dir(&d).unwrap();
        assert!(again.created.is_empty(), "{:?}", again.created);
        assert_eq!(again.grid, r.grid);
        let after: Vec<_> = [l.ca_key(), l.order_key(), l.join_token()]
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect();
        assert_eq!(before, after);
        let s = GridSecrets::load(&d).unwrap();
        assert_eq!(s.grid, r.grid);
        assert_eq!(read_join_token(&d).unwrap().len(), 64);
        assert_eq!(
            format!("{s:?}"),
            format!("GridSecrets(grid {}, <redacted>)", hex::encode(r.grid))
        );
    }

    #[test]
    fn admin_identity_is_issued_recorded_and_reissued_when_lost() {
        let dir = tempfile::tempdir().unwrap();
        init_data_dir(dir.path()).unwrap();
        let l = DataDirLayout::new(dir.path());
        let admin = admin_tls_dir(dir.path());
        let read = |n: &str| std::fs::read_to_string(admin.join(n)).unwrap();
        let id =
            Identity::from_pem(&read("admin.crt"), &read("admin.key"), &read("ca.crt")).unwrap();
        let (fp, rec) = admin_cert_record(dir.path()).unwrap();
        assert_eq!(id.fingerprint(), fp);
        assert_eq!(rec.role, Role::Admin);
        let stored = RedbStore::open(&l.meta_db()).unwrap().cert(&fp).unwrap();
        assert_eq!(stored, Some(rec));
        // A data dir from before admin identities: the files are created on the next start.
        std::fs::remove_dir_all(&admin).unwrap();
        let r = init_data_dir(dir.path()).unwrap();
        assert_eq!(r.created.len(), 3, "{:?}", r.created);
        let (fp2, _) = admin_cert_record(dir.path()).unwrap();
        assert_ne!(fp2, fp);
        let store = RedbStore::open(&l.meta_db()).unwrap();
        assert!(store.cert(&fp2).unwrap().is_some());
    }

    #[test]
    fn world_readable_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        init_data_dir(dir.path()).unwrap();
        let l = DataDirLayout::new(dir.path());
        std::fs::set_permissions(l.sequence_key(), std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = GridSecrets::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("sequence.key") && e.contains("readable by group or others"),
            "{e}"
        );
    }

    #[test]
    fn missing_ca_key_is_not_silently_regenerated() {
        let dir = tempfile::tempdir().unwrap();
        init_data_dir(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join("ca.key")).unwrap();
        assert!(matches!(
            init_data_dir(dir.path()),
            Err(InitError::Incomplete { .. })
        ));
    }

    #[test]
    fn lost_tls_identity_is_reissued_from_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        init_data_dir(dir.path()).unwrap();
        let l = DataDirLayout::new(dir.path());
        std::fs::remove_file(l.tls_cert()).unwrap();
        let r = init_data_dir(dir.path()).unwrap();
        assert_eq!(r.created.len(), 2);
        GridSecrets::load(dir.path()).unwrap();
    }
}
