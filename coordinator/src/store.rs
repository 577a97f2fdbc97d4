//! Persistence of every coordinator record behind one small trait, [`MetaStore`]. Each method
//! is one atomic transaction, so a SQL backend (PostgreSQL, CockroachDB) can implement the
//! same trait with one SQL transaction per method. [`RedbStore`] is the embedded default.
//!
//! Records (F4): certificates, nodes (target client profile), clients (global and source
//! client profile), chunks (dedup index), chunk references per client, snapshots (source data
//! record and data assembly record), snapshot references, packets per node (target data
//! record) and the append-only global backup log.

mod chunks;
mod clients;
mod log;
mod nodes;
mod records;
mod redb_store;
mod snapshots;

use std::path::PathBuf;

use gridback_proto::coord_api::{LogEntry, SnapshotInfo, TreeChunk};
use gridback_proto::{CertFingerprint, ChunkId, ClientId, NodeId, PacketName};

pub use records::{
    CertRecord, ChunkRecord, ClientRecord, CommitBatch, CommitOutcome, GridStats, NewLogEntry,
    NewMember, NodeRecord, RECORD_VERSION, SnapshotRow, StoredPacket,
};
pub use redb_store::RedbStore;

/// Errors of the metadata store. The first three are answers to the request; the others are
/// failures of the store itself.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Something the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with existing state (name taken, snapshot sealed).
    #[error("{0}")]
    Conflict(String),
    /// The request is not valid against the records.
    #[error("{0}")]
    Invalid(String),
    /// Another process (or server in this process) has the database open.
    #[error(
        "metadata database {path} is already open by another coordinator; \
         stop it or use another data_dir"
    )]
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// A stored value does not decode.
    #[error("corrupt record in table {table}: {reason}")]
    Corrupt {
        /// Table name.
        table: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The database failed.
    #[error("metadata database: {0}")]
    Redb(#[source] redb::Error),
}

macro_rules! from_redb {
    ($($t:ty),*) => {
        $(impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Redb(e.into())
            }
        })*
    };
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// The coordinator's records. Every method is one transaction; writes are durable when they
/// return, except heartbeats that change no state worth an fsync.
pub trait MetaStore: Send + Sync + 'static {
    /// Who holds a certificate.
    fn cert(&self, fp: &CertFingerprint) -> Result<Option<CertRecord>, StoreError>;
    /// Record a new member with its certificate and a log entry.
    fn register(
        &self,
        fp: &CertFingerprint,
        member: &NewMember,
        log: &NewLogEntry,
    ) -> Result<(), StoreError>;

    /// One node.
    fn node(&self, id: &NodeId) -> Result<Option<NodeRecord>, StoreError>;
    /// Every node.
    fn nodes(&self) -> Result<Vec<(NodeId, NodeRecord)>, StoreError>;
    /// Replace a node's record; with a log entry the write is durable, otherwise it may be
    /// lost in a crash (heartbeat data is refreshed within seconds anyway).
    fn update_node(
        &self,
        id: &NodeId,
        rec: &NodeRecord,
        log: Option<&NewLogEntry>,
    ) -> Result<(), StoreError>;
    /// Append one log entry on its own (a node seen down).
    fn append_log(&self, log: &NewLogEntry, now_unix_ms: u64) -> Result<u64, StoreError>;

    /// One client.
    fn client(&self, id: &ClientId) -> Result<Option<ClientRecord>, StoreError>;
    /// Replace a client's record.
    fn update_client(&self, id: &ClientId, rec: &ClientRecord) -> Result<(), StoreError>;

    /// Dedup query: whether each id has a stored copy.
    fn chunks_present(&self, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError>;
    /// Chunk records, `None` for ids unknown or not referenced by `client`.
    fn chunks_of_client(
        &self,
        client: &ClientId,
        ids: &[ChunkId],
    ) -> Result<Vec<Option<ChunkRecord>>, StoreError>;
    /// Record new chunks and references for one open snapshot, with one log entry.
    fn commit_chunks(
        &self,
        client: &ClientId,
        batch: &CommitBatch,
    ) -> Result<CommitOutcome, StoreError>;
    /// Grid-wide totals.
    fn stats(&self) -> Result<GridStats, StoreError>;
    /// The packets a node holds (the target data record), with their sizes.
    fn node_packets(&self, node: &NodeId) -> Result<Vec<(PacketName, u64)>, StoreError>;

    /// Open a snapshot, optionally cloning the references of `from`.
    fn snapshot_create(
        &self,
        client: &ClientId,
        name: &str,
        from: Option<&str>,
        now_unix_ms: u64,
    ) -> Result<SnapshotInfo, StoreError>;
    /// A client's snapshots by name.
    fn snapshot_list(&self, client: &ClientId) -> Result<Vec<SnapshotInfo>, StoreError>;
    /// One snapshot with its tree.
    fn snapshot_get(
        &self,
        client: &ClientId,
        name: &str,
    ) -> Result<Option<SnapshotRow>, StoreError>;
    /// Seal an open snapshot with its tree chunks (committed chunks the client references).
    fn snapshot_seal(
        &self,
        client: &ClientId,
        name: &str,
        tree: &[TreeChunk],
        tree_bytes: u64,
        now_unix_ms: u64,
    ) -> Result<SnapshotInfo, StoreError>;
    /// Whether `client` references each chunk.
    fn chunk_refs_of_client(
        &self,
        client: &ClientId,
        ids: &[ChunkId],
    ) -> Result<Vec<bool>, StoreError>;

    /// Log entries from `since_seq`, at most `limit`.
    fn log_since(&self, since_seq: u64, limit: u32) -> Result<Vec<LogEntry>, StoreError>;
}

#[cfg(test)]
mod tests;
