//! Joining the grid, and the node identity that results from it.
//!
//! The identity lives in the data dir, so a data dir always belongs to exactly one grid:
//! ```text
//! DATA/tls/node.crt     certificate issued by the coordinator (PEM)
//! DATA/tls/node.key     the node's private key (PEM, mode 0600; generated here, never sent)
//! DATA/tls/ca.crt       the cluster CA (PEM)
//! DATA/identity.toml    node id, grid id and the coordinator's order key (hex)
//! ```
//! `identity.toml` is written last, so a node interrupted mid-join simply joins again.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gridback_proto::NodeId;
use gridback_proto::coord_api::{Join, Role};
use gridback_proto::tls::{self, Identity};
use gridback_proto::transport::{self, CallError};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::NodeConfig;
use crate::error::{JoinError, is_untrusted_certificate};

/// Directory of the TLS files inside the data dir.
pub const TLS_DIR: &str = "tls";
/// The node's certificate.
pub const CERT_FILE: &str = "node.crt";
/// The node's private key.
pub const KEY_FILE: &str = "node.key";
/// The cluster CA certificate.
pub const CA_FILE: &str = "ca.crt";
/// Node id, grid id and order key.
pub const IDENTITY_FILE: &str = "identity.toml";
/// Version of `identity.toml`'s layout.
const IDENTITY_VERSION: u32 = 1;
/// Deadline for the join call; it only signs a certificate, so this is generous.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to wait for the joining connection to close politely.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Everything a node needs to take part in a grid.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// Certificate, key and CA for mutual TLS.
    pub tls: Identity,
    /// The id the coordinator assigned.
    pub node_id: NodeId,
    /// The grid this node belongs to; `None` when unknown (identities made in-process), in
    /// which case heartbeats do not check it.
    pub grid: Option<[u8; 16]>,
    /// The coordinator's raw Ed25519 public key for orders.
    pub order_public_key: Vec<u8>,
}

/// On-disk form of `identity.toml`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityRecord {
    /// Layout version.
    version: u32,
    /// Node id (hex).
    node_id: String,
    /// Grid id (hex).
    grid: String,
    /// Order public key (hex).
    order_public_key: String,
}

/// Load the identity from `data_dir`, or join the grid to get one.
pub async fn load_or_join(config: &NodeConfig) -> Result<NodeIdentity, JoinError> {
    match load_identity(&config.data_dir)? {
        Some(id) => {
            info!(node = %id.node_id, "identity loaded from the data dir");
            Ok(id)
        }
        None => join(config).await,
    }
}

/// The identity stored in `data_dir`, if the node has joined.
pub fn load_identity(data_dir: &Path) -> Result<Option<NodeIdentity>, JoinError> {
    let record_path = data_dir.join(IDENTITY_FILE);
    if !record_path.exists() {
        return Ok(None);
    }
    let invalid = |reason: String| JoinError::Invalid {
        path: record_path.clone(),
        reason,
    };
    let record: IdentityRecord =
        toml::from_str(&read(&record_path)?).map_err(|e| invalid(e.to_string()))?;
    if record.version != IDENTITY_VERSION {
        return Err(invalid(format!("unknown version {}", record.version)));
    }
    let node_id = record
        .node_id
        .parse::<NodeId>()
        .map_err(|e| invalid(e.to_string()))?;
    let grid = hex::decode(&record.grid)
        .ok()
        .and_then(|g| <[u8; 16]>::try_from(g).ok())
        .ok_or_else(|| invalid(format!("bad grid id {:?}", record.grid)))?;
    let order_public_key =
        hex::decode(&record.order_public_key).map_err(|e| invalid(format!("order key: {e}")))?;
    let tls_dir = data_dir.join(TLS_DIR);
    let tls = Identity::from_pem(
        &read(&tls_dir.join(CERT_FILE))?,
        &read(&tls_dir.join(KEY_FILE))?,
        &read(&tls_dir.join(CA_FILE))?,
    )?;
    Ok(Some(NodeIdentity {
        tls,
        node_id,
        grid: Some(grid),
        order_public_key,
    }))
}

/// Record a new order key in `identity.toml` (after the coordinator rotated it).
pub fn save_order_key(data_dir: &Path, id: &NodeIdentity) -> Result<(), JoinError> {
    write_record(data_dir, id)
}

/// Join the grid with the configured token, writing the identity into the data dir.
pub async fn join(config: &NodeConfig) -> Result<NodeIdentity, JoinError> {
    let data_dir = &config.data_dir;
    let token_file = config
        .join_token_file
        .as_ref()
        .ok_or_else(|| JoinError::NoToken {
            data_dir: data_dir.clone(),
        })?;
    let token = read_token(token_file)?;
    let ca_pem = read(config.ca_file.as_ref().ok_or(JoinError::NoCa)?)?;
    let ca_der = tls::cert_from_pem(&ca_pem)?;
    let (key_pem, csr_der) = tls::new_key_and_csr(&config.label)?;

    let addr = config.coordinator_addr.as_str();
    info!(coordinator = addr, label = %config.label, "joining the grid");
    let endpoint = transport::client_endpoint_with(tls::anonymous_client_config(&ca_der)?)?;
    let conn = transport::connect(&endpoint, addr, tls::COORDINATOR_SERVER_NAME)
        .await
        .map_err(|e| match e {
            CallError::Connect { addr, reason } if is_untrusted_certificate(&reason) => {
                JoinError::UntrustedCoordinator { addr, reason }
            }
            other => JoinError::Call(other),
        })?;
    let request = Join {
        token,
        role: Role::Node,
        csr_der,
        label: config.label.clone(),
    };
    let answer = transport::call(&conn, request, JOIN_TIMEOUT).await;
    conn.close(0u32.into(), b"joined");
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, endpoint.wait_idle()).await;
    let joined = answer.map_err(JoinError::Call)?;

    if joined.role != Role::Node {
        return Err(JoinError::BadAnswer(format!(
            "granted role {:?}",
            joined.role
        )));
    }
    if joined.ca_der != ca_der.as_ref() {
        return Err(JoinError::BadAnswer(
            "the coordinator sent another CA than ca_file".into(),
        ));
    }
    let cert_pem = tls::der_to_pem("CERTIFICATE", &joined.cert_der);
    let tls = Identity::from_pem(&cert_pem, &key_pem, &ca_pem)?;
    let id = NodeIdentity {
        tls,
        node_id: NodeId(joined.id),
        grid: Some(joined.grid),
        order_public_key: joined.order_public_key,
    };
    let tls_dir = data_dir.join(TLS_DIR);
    std::fs::create_dir_all(&tls_dir).map_err(|e| io_err("create", &tls_dir, e))?;
    write_atomic(&tls_dir.join(KEY_FILE), key_pem.as_bytes(), 0o600)?;
    write_atomic(&tls_dir.join(CERT_FILE), cert_pem.as_bytes(), 0o644)?;
    write_atomic(&tls_dir.join(CA_FILE), ca_pem.as_bytes(), 0o644)?;
    write_record(data_dir, &id)?;
    info!(node = %id.node_id, grid = %hex::encode(joined.grid), "joined the grid");
    Ok(id)
}

fn write_record(data_dir: &Path, id: &NodeIdentity) -> Result<(), JoinError> {
    let record = IdentityRecord {
        version: IDENTITY_VERSION,
        node_id: id.node_id.to_string(),
        grid: hex::encode(id.grid.unwrap_or_default()),
        order_public_key: hex::encode(&id.order_public_key),
    };
    let text = toml::to_string(&record).map_err(|e| JoinError::Invalid {
        path: data_dir.join(IDENTITY_FILE),
        reason: e.to_string(),
    })?;
    write_atomic(&data_dir.join(IDENTITY_FILE), text.as_bytes(), 0o644)
}

fn read_token(path: &Path) -> Result<String, JoinError> {
    let token = read(path)?.trim().to_string();
    if token.is_empty() {
        return Err(JoinError::EmptyToken(path.to_path_buf()));
    }
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o004 != 0
    {
        warn!(path = %path.display(), "join token file is world-readable; chmod 600 it");
    }
    Ok(token)
}

fn io_err(op: &'static str, path: &Path, source: std::io::Error) -> JoinError {
    JoinError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn read(path: &Path) -> Result<String, JoinError> {
    std::fs::read_to_string(path).map_err(|e| io_err("read", path, e))
}

/// Write a file durably: temp file with `mode`, fsync, rename, fsync the directory.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), JoinError> {
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let temp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let _ = std::fs::remove_file(&temp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&temp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        io_err("write", path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridback_proto::tls::{ClusterCa, node_server_name};

    #[test]
    fn identity_round_trips_through_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_identity(dir.path()).unwrap().is_none());
        let ca = ClusterCa::generate("t").unwrap();
        let node_id = NodeId::random();
        let tls = ca.issue_with_key(&node_server_name(node_id), "n").unwrap();
        let id = NodeIdentity {
            tls,
            node_id,
            grid: Some([7; 16]),
            order_public_key: vec![1, 2, 3],
        };
        let tls_dir = dir.path().join(TLS_DIR);
        std::fs::create_dir_all(&tls_dir).unwrap();
        write_atomic(&tls_dir.join(KEY_FILE), id.tls.key_pem.as_bytes(), 0o600).unwrap();
        write_atomic(
            &tls_dir.join(CERT_FILE),
            id.tls.cert_pem().as_bytes(),
            0o644,
        )
        .unwrap();
        write_atomic(&tls_dir.join(CA_FILE), id.tls.ca_pem().as_bytes(), 0o644).unwrap();
        save_order_key(dir.path(), &id).unwrap();
        let mode = std::fs::metadata(tls_dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = load_identity(dir.path()).unwrap().unwrap();
        assert_eq!(back.node_id, node_id);
        assert_eq!(back.grid, Some([7; 16]));
        assert_eq!(back.order_public_key, vec![1, 2, 3]);
        assert_eq!(back.tls.fingerprint(), id.tls.fingerprint());

        std::fs::write(
            dir.path().join(IDENTITY_FILE),
            "version = 1\nnode_id = \"zz\"\n",
        )
        .unwrap();
        let e = load_identity(dir.path()).unwrap_err();
        assert!(e.to_string().contains(IDENTITY_FILE), "{e}");
    }

    #[tokio::test]
    async fn join_without_token_or_ca_says_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = NodeConfig::new(dir.path(), "127.0.0.1:9");
        let e = load_or_join(&cfg).await.unwrap_err();
        assert!(e.to_string().contains("join_token_file"), "{e}");
        let token = dir.path().join("token");
        std::fs::write(&token, "  \n").unwrap();
        cfg.join_token_file = Some(token.clone());
        let e = load_or_join(&cfg).await.unwrap_err();
        assert!(matches!(e, JoinError::EmptyToken(_)), "{e}");
        std::fs::write(&token, "secret").unwrap();
        let e = load_or_join(&cfg).await.unwrap_err();
        assert!(e.to_string().contains("ca_file"), "{e}");
    }
}
