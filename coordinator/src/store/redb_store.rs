//! The embedded [`MetaStore`]: one redb file, one write transaction per method.

use std::path::{Path, PathBuf};

use gridback_proto::coord_api::{LogEntry, SnapshotInfo, TreeChunk};
use gridback_proto::location::Proximity;
use gridback_proto::schedule_api::{Schedule, ScheduleResult};
use gridback_proto::subscription::Usage;
use gridback_proto::{CertFingerprint, ChunkId, ClientId, NodeId, PacketName};
use redb::{Database, ReadTransaction, TableDefinition, WriteTransaction};

use super::group::GroupCommit;
use super::{
    CertRecord, ChunkRecord, ClientRecord, CommitBatch, CommitOutcome, GridStats, MetaStore,
    NewLogEntry, NewMember, NodeRecord, PlaceRecord, ScheduleRecord, SnapshotRow, StoreError,
    SubscriptionRecord, chunks, clients, log, nodes, places, schedules, snapshots, subscriptions,
};

/// Certificate fingerprint → [`CertRecord`].
pub(super) const CERTS: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("certs");
/// NodeId → [`NodeRecord`].
pub(super) const NODES: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("nodes");
/// ClientId → [`ClientRecord`].
pub(super) const CLIENTS: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("clients");
/// ChunkId → [`ChunkRecord`]: the dedup index.
pub(super) const CHUNKS: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("chunks");
/// (ChunkId, ClientId): every client referencing a chunk.
pub(super) const CHUNK_REFS: TableDefinition<([u8; 32], [u8; 16]), ()> =
    TableDefinition::new("chunk_refs");
/// (ClientId, name) → [`SnapshotRow`].
pub(super) const SNAPSHOTS: TableDefinition<([u8; 16], &str), &[u8]> =
    TableDefinition::new("snapshots");
/// (ClientId, snapshot name, ChunkId): the chunks a snapshot references.
pub(super) const SNAPSHOT_CHUNKS: TableDefinition<([u8; 16], &str, [u8; 32]), ()> =
    TableDefinition::new("snapshot_chunks");
/// (NodeId, PacketName) → packet bytes: the target data record.
pub(super) const NODE_PACKETS: TableDefinition<([u8; 16], [u8; 32]), u64> =
    TableDefinition::new("node_packets");
/// Sequence number → [`LogEntry`]: the global backup log.
pub(super) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Named counters kept in step with the tables (totals that would otherwise need a scan).
pub(super) const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// NodeId → [`PlaceRecord`]: reported location and operator overrides.
pub(super) const NODE_PLACES: TableDefinition<[u8; 16], &[u8]> =
    TableDefinition::new("node_places");
/// ClientId → [`PlaceRecord`].
pub(super) const CLIENT_PLACES: TableDefinition<[u8; 16], &[u8]> =
    TableDefinition::new("client_places");
/// ClientId → [`SubscriptionRecord`] (absent: the default subscription).
pub(super) const SUBSCRIPTIONS: TableDefinition<[u8; 16], &[u8]> =
    TableDefinition::new("subscriptions");
/// ClientId → [`gridback_proto::subscription::Usage`].
pub(super) const USAGE: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("usage");
/// Schedule id → [`ScheduleRecord`].
pub(super) const SCHEDULES: TableDefinition<u64, &[u8]> = TableDefinition::new("schedules");
/// Named cluster-wide settings (the proximity rules).
pub(super) const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("settings");

/// Counter: the last schedule id handed out.
pub(super) const COUNTER_SCHEDULE_ID: &str = "schedule_id";
/// Counter: distinct stored chunks.
pub(super) const COUNTER_CHUNKS: &str = "chunk_count";
/// Counter: packet bytes over all stored chunks.
pub(super) const COUNTER_STORED_BYTES: &str = "stored_bytes";

/// The redb-backed store.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
    group: GroupCommit,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedbStore({})", self.path.display())
    }
}

impl RedbStore {
    /// Open (or create) the database and its tables. A database held by another coordinator
    /// gives [`StoreError::Locked`].
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
                path: path.to_path_buf(),
            },
            other => other.into(),
        })?;
        Self::with_tables(db, path.to_path_buf())
    }

    /// A store held in memory only (redb's in-memory backend; gone when dropped): for
    /// benches that need many records without waiting for disks.
    pub fn in_memory() -> Result<Self, StoreError> {
        let db = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?;
        Self::with_tables(db, PathBuf::from(":memory:"))
    }

    fn with_tables(db: Database, path: PathBuf) -> Result<Self, StoreError> {
        let tx = db.begin_write()?;
        {
            tx.open_table(CERTS)?;
            tx.open_table(NODES)?;
            tx.open_table(CLIENTS)?;
            tx.open_table(CHUNKS)?;
            tx.open_table(CHUNK_REFS)?;
            tx.open_table(SNAPSHOTS)?;
            tx.open_table(SNAPSHOT_CHUNKS)?;
            tx.open_table(NODE_PACKETS)?;
            tx.open_table(LOG)?;
            tx.open_table(COUNTERS)?;
            tx.open_table(NODE_PLACES)?;
            tx.open_table(CLIENT_PLACES)?;
            tx.open_table(SUBSCRIPTIONS)?;
            tx.open_table(USAGE)?;
            tx.open_table(SCHEDULES)?;
            tx.open_table(SETTINGS)?;
        }
        tx.commit()?;
        Ok(Self {
            db,
            path,
            group: GroupCommit::default(),
        })
    }

    /// (transactions committed, methods applied in them) since open.
    #[cfg(test)]
    pub(super) fn group_stats(&self) -> (u64, u64) {
        self.group.stats()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Result<ReadTransaction, StoreError> {
        use redb::ReadableDatabase;
        Ok(self.db.begin_read()?)
    }

    /// Run `f` in a write transaction (durable when `durable`), shared with concurrent
    /// writers ([`GroupCommit`]); an error of `f` aborts everything it did, and only that.
    fn write<T>(
        &self,
        durable: bool,
        f: impl Fn(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.group.write(&self.db, durable, f)
    }
}

impl MetaStore for RedbStore {
    fn cert(&self, fp: &CertFingerprint) -> Result<Option<CertRecord>, StoreError> {
        nodes::cert(&self.read()?, fp)
    }

    fn register(
        &self,
        fp: &CertFingerprint,
        member: &NewMember,
        entry: &NewLogEntry,
    ) -> Result<(), StoreError> {
        self.write(true, |tx| {
            nodes::register(tx, fp, member)?;
            log::append(tx, entry, gridback_proto::now_unix_ms()).map(drop)
        })
    }

    fn node(&self, id: &NodeId) -> Result<Option<NodeRecord>, StoreError> {
        nodes::node(&self.read()?, id)
    }

    fn nodes(&self) -> Result<Vec<(NodeId, NodeRecord)>, StoreError> {
        nodes::all(&self.read()?)
    }

    fn update_node(
        &self,
        id: &NodeId,
        rec: &NodeRecord,
        entry: Option<&NewLogEntry>,
    ) -> Result<(), StoreError> {
        self.write(entry.is_some(), |tx| {
            nodes::put(tx, id, rec)?;
            if let Some(e) = entry {
                log::append(tx, e, gridback_proto::now_unix_ms())?;
            }
            Ok(())
        })
    }

    fn append_log(&self, entry: &NewLogEntry, now_unix_ms: u64) -> Result<u64, StoreError> {
        self.write(true, |tx| log::append(tx, entry, now_unix_ms))
    }

    fn client(&self, id: &ClientId) -> Result<Option<ClientRecord>, StoreError> {
        clients::get(&self.read()?, id)
    }

    fn update_client(&self, id: &ClientId, rec: &ClientRecord) -> Result<(), StoreError> {
        self.write(true, |tx| clients::put(tx, id, rec))
    }

    fn chunks_present(&self, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError> {
        chunks::present(&self.read()?, ids)
    }

    fn chunks_of_client(
        &self,
        client: &ClientId,
        ids: &[ChunkId],
    ) -> Result<Vec<Option<ChunkRecord>>, StoreError> {
        chunks::of_client(&self.read()?, client, ids)
    }

    fn commit_chunks(
        &self,
        client: &ClientId,
        batch: &CommitBatch,
    ) -> Result<CommitOutcome, StoreError> {
        self.write(true, |tx| chunks::commit(tx, client, batch))
    }

    fn stats(&self) -> Result<GridStats, StoreError> {
        chunks::stats(&self.read()?)
    }

    fn node_packets(&self, node: &NodeId) -> Result<Vec<(PacketName, u64)>, StoreError> {
        chunks::node_packets(&self.read()?, node)
    }

    fn snapshot_create(
        &self,
        client: &ClientId,
        name: &str,
        from: Option<&str>,
        now_unix_ms: u64,
    ) -> Result<SnapshotInfo, StoreError> {
        self.write(true, |tx| {
            snapshots::create(tx, client, name, from, now_unix_ms)
        })
    }

    fn snapshot_list(&self, client: &ClientId) -> Result<Vec<SnapshotInfo>, StoreError> {
        snapshots::list(&self.read()?, client)
    }

    fn snapshot_get(
        &self,
        client: &ClientId,
        name: &str,
    ) -> Result<Option<SnapshotRow>, StoreError> {
        snapshots::get(&self.read()?, client, name)
    }

    fn snapshot_seal(
        &self,
        client: &ClientId,
        name: &str,
        tree: &[TreeChunk],
        tree_bytes: u64,
        now_unix_ms: u64,
    ) -> Result<SnapshotInfo, StoreError> {
        self.write(true, |tx| {
            snapshots::seal(tx, client, name, tree, tree_bytes, now_unix_ms)
        })
    }

    fn chunk_refs_of_client(
        &self,
        client: &ClientId,
        ids: &[ChunkId],
    ) -> Result<Vec<bool>, StoreError> {
        chunks::refs_of_client(&self.read()?, client, ids)
    }

    fn log_since(
        &self,
        since_seq: u64,
        since_unix_ms: Option<u64>,
        limit: u32,
    ) -> Result<Vec<LogEntry>, StoreError> {
        log::since(&self.read()?, since_seq, since_unix_ms, limit)
    }

    fn certs(&self) -> Result<Vec<(CertFingerprint, CertRecord)>, StoreError> {
        nodes::certs(&self.read()?)
    }

    fn ensure_cert(&self, fp: &CertFingerprint, rec: &CertRecord) -> Result<bool, StoreError> {
        self.write(true, |tx| nodes::ensure_cert(tx, fp, rec))
    }

    fn clients(&self) -> Result<Vec<(ClientId, ClientRecord)>, StoreError> {
        clients::all(&self.read()?)
    }

    fn node_place(&self, id: &NodeId) -> Result<PlaceRecord, StoreError> {
        places::get(&self.read()?, NODE_PLACES, id.0)
    }

    fn node_places(&self) -> Result<Vec<(NodeId, PlaceRecord)>, StoreError> {
        Ok(places::all(&self.read()?, NODE_PLACES)?
            .into_iter()
            .map(|(k, v)| (NodeId(k), v))
            .collect())
    }

    fn set_node_place(
        &self,
        id: &NodeId,
        rec: &PlaceRecord,
        entry: Option<&NewLogEntry>,
    ) -> Result<(), StoreError> {
        self.write(true, |tx| {
            places::put(tx, NODE_PLACES, id.0, rec)?;
            if let Some(e) = entry {
                log::append(tx, e, gridback_proto::now_unix_ms())?;
            }
            Ok(())
        })
    }

    fn client_place(&self, id: &ClientId) -> Result<PlaceRecord, StoreError> {
        places::get(&self.read()?, CLIENT_PLACES, id.0)
    }

    fn set_client_place(
        &self,
        id: &ClientId,
        rec: &PlaceRecord,
        entry: Option<&NewLogEntry>,
    ) -> Result<(), StoreError> {
        self.write(true, |tx| {
            places::put(tx, CLIENT_PLACES, id.0, rec)?;
            if let Some(e) = entry {
                log::append(tx, e, gridback_proto::now_unix_ms())?;
            }
            Ok(())
        })
    }

    fn proximity(&self) -> Result<Proximity, StoreError> {
        places::proximity(&self.read()?)
    }

    fn set_proximity(&self, p: &Proximity, entry: &NewLogEntry) -> Result<(), StoreError> {
        self.write(true, |tx| {
            places::set_proximity(tx, p)?;
            log::append(tx, entry, gridback_proto::now_unix_ms()).map(drop)
        })
    }

    fn subscription(&self, client: &ClientId) -> Result<Option<SubscriptionRecord>, StoreError> {
        subscriptions::get(&self.read()?, client)
    }

    fn set_subscription(
        &self,
        client: &ClientId,
        rec: &SubscriptionRecord,
        entry: &NewLogEntry,
    ) -> Result<(), StoreError> {
        self.write(true, |tx| {
            subscriptions::put(tx, client, rec)?;
            log::append(tx, entry, gridback_proto::now_unix_ms()).map(drop)
        })
    }

    fn usage(&self, client: &ClientId) -> Result<Usage, StoreError> {
        subscriptions::read_usage(&self.read()?, client)
    }

    fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkRecord>, StoreError> {
        chunks::get(&self.read()?, id)
    }

    fn chunk_sources(&self, id: &ChunkId) -> Result<Vec<ClientId>, StoreError> {
        chunks::sources(&self.read()?, id)
    }

    fn client_chunks(
        &self,
        client: &ClientId,
        snapshot: Option<&str>,
        after: Option<&ChunkId>,
        limit: usize,
    ) -> Result<Vec<ChunkId>, StoreError> {
        chunks::of_client_paged(&self.read()?, client, snapshot, after, limit)
    }

    fn schedule_add(
        &self,
        client: &ClientId,
        path: &str,
        every_ms: u64,
        now_unix_ms: u64,
        entry: &NewLogEntry,
    ) -> Result<Schedule, StoreError> {
        self.write(true, |tx| {
            let s = schedules::add(tx, client, path, every_ms, now_unix_ms)?;
            let mut e = entry.clone();
            e.detail = format!("id={} {}", s.id, e.detail);
            log::append(tx, &e, now_unix_ms)?;
            Ok(s)
        })
    }

    fn schedules(&self, client: Option<&ClientId>) -> Result<Vec<ScheduleRecord>, StoreError> {
        schedules::list(&self.read()?, client)
    }

    fn schedule_remove(&self, id: u64, entry: &NewLogEntry) -> Result<Schedule, StoreError> {
        self.write(true, |tx| {
            let s = schedules::remove(tx, id)?;
            log::append(tx, entry, gridback_proto::now_unix_ms())?;
            Ok(s)
        })
    }

    fn schedule_lease(
        &self,
        client: &ClientId,
        now_unix_ms: u64,
        lease_ms: u64,
    ) -> Result<Vec<ScheduleRecord>, StoreError> {
        self.write(true, |tx| {
            schedules::lease(tx, client, now_unix_ms, lease_ms)
        })
    }

    fn schedule_report(
        &self,
        client: &ClientId,
        id: u64,
        result: &ScheduleResult,
        entry: &NewLogEntry,
    ) -> Result<Schedule, StoreError> {
        self.write(true, |tx| {
            let s = schedules::report(tx, client, id, result)?;
            log::append(tx, entry, gridback_proto::now_unix_ms())?;
            Ok(s)
        })
    }
}
