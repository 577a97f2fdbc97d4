//! Persistence of every coordinator record behind one small trait, [`MetaStore`]. Each method
//! is one atomic transaction, so a SQL backend (PostgreSQL, CockroachDB) can implement the
//! same trait with one SQL transaction per method. [`RedbStore`] is the embedded default.
//!
//! Records (F4): certificates, nodes (target client profile), clients (global and source
//! client profile), chunks (dedup index), chunk references per client, snapshots (source data
//! record and data assembly record), snapshot references, packets per node (target data
//! record), the append-only global backup log, locations and operator overrides (F12, F13),
//! subscriptions and usage (F15, F16), the cluster-wide proximity rules and backup
//! schedules (F18).

mod chunks;
mod clients;
mod group;
mod log;
mod nodes;
mod places;
mod records;
mod redb_store;
mod schedules;
mod snapshots;
mod subscriptions;

use std::path::PathBuf;

use gridback_proto::coord_api::{LogEntry, SnapshotInfo, TreeChunk};
use gridback_proto::location::Proximity;
use gridback_proto::schedule_api::{Schedule, ScheduleResult};
use gridback_proto::subscription::Usage;
use gridback_proto::{CertFingerprint, ChunkId, ClientId, NodeId, PacketName};

pub use chunks::charge_of;
pub use records::{
    CertRecord, ChunkRecord, ClientRecord, CommitBatch, CommitOutcome, GridStats, NewLogEntry,
    NewMember, NodeRecord, PlaceRecord, RECORD_VERSION, ScheduleRecord, SnapshotRow, StoredPacket,
    SubscriptionRecord,
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
    /// A commit references stored chunks that do not fit in the client's quota.
    #[error("{}", quota_message(client, *used, *quota, *needed))]
    QuotaExceeded {
        /// The client.
        client: ClientId,
        /// Bytes charged before the request.
        used: u64,
        /// Its source storage allocation.
        quota: u64,
        /// Bytes the request would add.
        needed: u64,
    },
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

/// The one wording of a quota refusal (allocation and commit), sizes for humans.
pub fn quota_message(client: &ClientId, used: u64, quota: u64, needed: u64) -> String {
    use gridback_proto::units::format_size;
    format!(
        "quota exceeded for client {client}: {} used of {}, this write needs {} more",
        format_size(used),
        format_size(quota),
        format_size(needed)
    )
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

    /// Log entries from `since_seq` (and at or after `since_unix_ms`), at most `limit`.
    fn log_since(
        &self,
        since_seq: u64,
        since_unix_ms: Option<u64>,
        limit: u32,
    ) -> Result<Vec<LogEntry>, StoreError>;

    /// Every certificate with its holder.
    fn certs(&self) -> Result<Vec<(CertFingerprint, CertRecord)>, StoreError>;
    /// Record a certificate without a member (the admin's); true when it was new.
    fn ensure_cert(&self, fp: &CertFingerprint, rec: &CertRecord) -> Result<bool, StoreError>;
    /// Every client.
    fn clients(&self) -> Result<Vec<(ClientId, ClientRecord)>, StoreError>;

    /// A node's location and overrides.
    fn node_place(&self, id: &NodeId) -> Result<PlaceRecord, StoreError>;
    /// Every node's place (nodes without one are absent).
    fn node_places(&self) -> Result<Vec<(NodeId, PlaceRecord)>, StoreError>;
    /// Replace a node's place; with a log entry.
    fn set_node_place(
        &self,
        id: &NodeId,
        rec: &PlaceRecord,
        log: Option<&NewLogEntry>,
    ) -> Result<(), StoreError>;
    /// A client's location and overrides.
    fn client_place(&self, id: &ClientId) -> Result<PlaceRecord, StoreError>;
    /// Replace a client's place; with a log entry.
    fn set_client_place(
        &self,
        id: &ClientId,
        rec: &PlaceRecord,
        log: Option<&NewLogEntry>,
    ) -> Result<(), StoreError>;
    /// The cluster-wide proximity rules.
    fn proximity(&self) -> Result<Proximity, StoreError>;
    /// Replace the cluster-wide proximity rules, with a log entry.
    fn set_proximity(&self, p: &Proximity, log: &NewLogEntry) -> Result<(), StoreError>;

    /// A client's stored subscription (`None`: the default applies).
    fn subscription(&self, client: &ClientId) -> Result<Option<SubscriptionRecord>, StoreError>;
    /// Replace a client's subscription, with a log entry.
    fn set_subscription(
        &self,
        client: &ClientId,
        rec: &SubscriptionRecord,
        log: &NewLogEntry,
    ) -> Result<(), StoreError>;
    /// A client's usage against its quota.
    fn usage(&self, client: &ClientId) -> Result<Usage, StoreError>;

    /// One chunk record, whoever references it.
    fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkRecord>, StoreError>;
    /// Every client referencing a chunk.
    fn chunk_sources(&self, id: &ChunkId) -> Result<Vec<ClientId>, StoreError>;
    /// The chunks a client references (in one snapshot or all), in id order, after `after`.
    fn client_chunks(
        &self,
        client: &ClientId,
        snapshot: Option<&str>,
        after: Option<&ChunkId>,
        limit: usize,
    ) -> Result<Vec<ChunkId>, StoreError>;

    /// Add a schedule, with a log entry.
    fn schedule_add(
        &self,
        client: &ClientId,
        path: &str,
        every_ms: u64,
        now_unix_ms: u64,
        log: &NewLogEntry,
    ) -> Result<Schedule, StoreError>;
    /// Every schedule, or one client's.
    fn schedules(&self, client: Option<&ClientId>) -> Result<Vec<ScheduleRecord>, StoreError>;
    /// Remove a schedule, with a log entry.
    fn schedule_remove(&self, id: u64, log: &NewLogEntry) -> Result<Schedule, StoreError>;
    /// Lease the client's due schedules for `lease_ms`.
    fn schedule_lease(
        &self,
        client: &ClientId,
        now_unix_ms: u64,
        lease_ms: u64,
    ) -> Result<Vec<ScheduleRecord>, StoreError>;
    /// Record a finished run, with a log entry.
    fn schedule_report(
        &self,
        client: &ClientId,
        id: u64,
        result: &ScheduleResult,
        log: &NewLogEntry,
    ) -> Result<Schedule, StoreError>;
}

#[cfg(test)]
mod tests;
