//! Joining the grid as a client, and the identity files that result.
//!
//! The client makes its own key and a CSR, dials the coordinator anonymously (trusting only
//! the CA certificate the operator handed out), presents the one-time join token, and gets a
//! certificate back. Files written to the TLS directory:
//!
//! | file | content |
//! |---|---|
//! | `client.crt` | the issued certificate (PEM) |
//! | `client.key` | the private key (PEM, mode 0600) |
//! | `ca.crt` | the cluster CA certificate (PEM) |
//! | `identity.toml` | `client_id = "<32 hex>"`, `grid_id = "<32 hex>"` |

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gridback_proto::ClientId;
use gridback_proto::coord_api::{Join, Role};
use gridback_proto::tls::{
    COORDINATOR_SERVER_NAME, Identity, TlsError, anonymous_client_config, cert_from_pem,
    der_to_pem, new_key_and_csr,
};
use gridback_proto::transport::{CallError, EndpointError, call, client_endpoint_with, connect};
use serde::{Deserialize, Serialize};

/// Deadline for the join request.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors joining or loading the identity.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Certificates or keys are invalid.
    #[error("TLS identity: {0}")]
    Tls(#[from] TlsError),
    /// The QUIC endpoint could not be created.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The coordinator could not be reached or refused.
    #[error("joining at the coordinator: {0}")]
    Call(#[from] CallError),
    /// The coordinator's answer is not what we asked for.
    #[error("unexpected join answer: {0}")]
    Unexpected(String),
    /// `identity.toml` is malformed.
    #[error("{path} is malformed: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// `identity.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    /// This client's id (hex).
    pub client_id: String,
    /// The grid's id (hex).
    pub grid_id: String,
}

impl IdentityFile {
    /// The client id.
    pub fn client(&self) -> Result<ClientId, String> {
        self.client_id
            .parse()
            .map_err(|e: gridback_proto::ids::ParseIdError| e.to_string())
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JoinError + '_ {
    move |source| JoinError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write a file atomically (temporary file, fsync, rename) with `mode`.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), JoinError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let r = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map_err(io(path))
}

/// Join the grid at `coordinator_addr` with `token`, trusting the CA in `ca_pem_path`, and
/// write the identity into `tls_dir` (created if needed).
pub async fn join_client(
    coordinator_addr: &str,
    ca_pem_path: &Path,
    token: &str,
    tls_dir: &Path,
    label: &str,
) -> Result<ClientId, JoinError> {
    let ca_pem = std::fs::read_to_string(ca_pem_path).map_err(io(ca_pem_path))?;
    let ca_der = cert_from_pem(&ca_pem)?;
    let (key_pem, csr_der) = new_key_and_csr(label)?;
    let ep = client_endpoint_with(anonymous_client_config(&ca_der)?)?;
    let conn = connect(&ep, coordinator_addr, COORDINATOR_SERVER_NAME).await?;
    let req = Join {
        token: token.to_string(),
        role: Role::Client,
        csr_der,
        label: label.to_string(),
    };
    let joined = call(&conn, req, JOIN_TIMEOUT).await;
    conn.close(0u32.into(), b"joined");
    let joined = joined?;
    if joined.role != Role::Client {
        return Err(JoinError::Unexpected(format!(
            "granted role {:?}",
            joined.role
        )));
    }
    if joined.ca_der.as_slice() != ca_der.as_ref() {
        return Err(JoinError::Unexpected(
            "the coordinator returned another CA certificate".into(),
        ));
    }
    let client = ClientId(joined.id);
    let cert_pem = der_to_pem("CERTIFICATE", &joined.cert_der);
    // Check that the files will load before writing them.
    Identity::from_pem(&cert_pem, &key_pem, &ca_pem)?;
    std::fs::create_dir_all(tls_dir).map_err(io(tls_dir))?;
    write_file(&tls_dir.join("client.key"), key_pem.as_bytes(), 0o600)?;
    write_file(&tls_dir.join("client.crt"), cert_pem.as_bytes(), 0o644)?;
    write_file(&tls_dir.join("ca.crt"), ca_pem.as_bytes(), 0o644)?;
    let ident = IdentityFile {
        client_id: client.to_string(),
        grid_id: hex::encode(joined.grid),
    };
    let text = toml::to_string(&ident).map_err(|e| JoinError::Unexpected(e.to_string()))?;
    write_file(&tls_dir.join("identity.toml"), text.as_bytes(), 0o644)?;
    std::fs::File::open(tls_dir)
        .and_then(|d| d.sync_all())
        .map_err(io(tls_dir))?;
    Ok(client)
}

/// Load the TLS identity and `identity.toml` written by [`join_client`].
pub fn load_identity(tls_dir: &Path) -> Result<(Identity, IdentityFile), JoinError> {
    let read = |name: &str| {
        let p = tls_dir.join(name);
        std::fs::read_to_string(&p).map_err(io(&p))
    };
    let key_path = tls_dir.join("client.key");
    let mode = std::fs::metadata(&key_path)
        .map_err(io(&key_path))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(JoinError::Malformed {
            path: key_path,
            reason: format!("mode {mode:o} lets other users read the private key; chmod 600 it"),
        });
    }
    let identity =
        Identity::from_pem(&read("client.crt")?, &read("client.key")?, &read("ca.crt")?)?;
    let ident_path = tls_dir.join("identity.toml");
    let file: IdentityFile =
        toml::from_str(&read("identity.toml")?).map_err(|e| JoinError::Malformed {
            path: ident_path.clone(),
            reason: e.to_string(),
        })?;
    file.client().map_err(|reason| JoinError::Malformed {
        path: ident_path,
        reason,
    })?;
    Ok((identity, file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridback_proto::tls::{ClusterCa, client_server_name};

    #[test]
    fn identity_files_load_and_bad_modes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate("t").unwrap();
        let client = ClientId::random();
        let id = ca.issue_with_key(&client_server_name(client), "c").unwrap();
        write_file(&dir.path().join("client.key"), id.key_pem.as_bytes(), 0o600).unwrap();
        write_file(
            &dir.path().join("client.crt"),
            id.cert_pem().as_bytes(),
            0o644,
        )
        .unwrap();
        write_file(&dir.path().join("ca.crt"), ca.cert_pem().as_bytes(), 0o644).unwrap();
        let ident = IdentityFile {
            client_id: client.to_string(),
            grid_id: "00".repeat(16),
        };
        write_file(
            &dir.path().join("identity.toml"),
            toml::to_string(&ident).unwrap().as_bytes(),
            0o644,
        )
        .unwrap();
        let (loaded, file) = load_identity(dir.path()).unwrap();
        assert_eq!(loaded.fingerprint(), id.fingerprint());
        assert_eq!(file.client().unwrap(), client);
        std::fs::set_permissions(
            dir.path().join("client.key"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        assert!(matches!(
            load_identity(dir.path()),
            Err(JoinError::Malformed { .. })
        ));
    }
}
