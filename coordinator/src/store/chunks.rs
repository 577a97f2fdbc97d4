//! Chunks: the dedup index (one stored copy per id), the clients referencing each chunk, and
//! the packets each node holds (the target data record).

use std::collections::{BTreeSet, HashSet};

use gridback_proto::subscription::Usage;
use gridback_proto::{ChunkId, ClientId, NodeId, PacketName};
use redb::{ReadTransaction, ReadableTable, Table, WriteTransaction};

use super::records::{decode, encode};
use super::redb_store::{
    CHUNK_REFS, CHUNKS, COUNTER_CHUNKS, COUNTER_STORED_BYTES, COUNTERS, NODE_PACKETS,
    SNAPSHOT_CHUNKS,
};
use super::{
    ChunkRecord, CommitBatch, CommitOutcome, GridStats, NewLogEntry, StoreError, StoredPacket,
    clients, log, snapshots, subscriptions,
};

/// What referencing a chunk charges a client: its data size, `k × packet bytes`.
pub fn charge_of(rec: &ChunkRecord) -> u64 {
    u64::from(rec.k).saturating_mul(rec.shard_bytes)
}

pub(super) fn get(tx: &ReadTransaction, id: &ChunkId) -> Result<Option<ChunkRecord>, StoreError> {
    tx.open_table(CHUNKS)?
        .get(id.as_bytes())?
        .map(|v| decode("chunks", v.value()))
        .transpose()
}

/// Every client referencing a chunk.
pub(super) fn sources(tx: &ReadTransaction, id: &ChunkId) -> Result<Vec<ClientId>, StoreError> {
    let t = tx.open_table(CHUNK_REFS)?;
    let mut out = Vec::new();
    for row in t.range((id.0, [0u8; 16])..=(id.0, [0xffu8; 16]))? {
        out.push(ClientId(row?.0.value().1));
    }
    Ok(out)
}

/// The chunk ids a client references (in one snapshot, or in all its snapshots), in id
/// order, after `after`, at most `limit`.
pub(super) fn of_client_paged(
    tx: &ReadTransaction,
    client: &ClientId,
    snapshot: Option<&str>,
    after: Option<&ChunkId>,
    limit: usize,
) -> Result<Vec<ChunkId>, StoreError> {
    let names: Vec<String> = match snapshot {
        Some(s) => vec![s.to_string()],
        None => snapshots::list(tx, client)?
            .into_iter()
            .map(|i| i.name)
            .collect(),
    };
    let t = tx.open_table(SNAPSHOT_CHUNKS)?;
    let mut ids = BTreeSet::new();
    for name in &names {
        let lo = after.map_or([0u8; 32], |a| a.0);
        let mut taken = 0;
        for row in
            t.range((client.0, name.as_str(), lo)..=(client.0, name.as_str(), [0xffu8; 32]))?
        {
            let id = row?.0.value().2;
            if after.is_some_and(|a| a.0 == id) {
                continue;
            }
            ids.insert(id);
            taken += 1;
            if taken >= limit {
                break;
            }
        }
    }
    Ok(ids.into_iter().take(limit).map(ChunkId).collect())
}

pub(super) fn present(tx: &ReadTransaction, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError> {
    let t = tx.open_table(CHUNKS)?;
    ids.iter()
        .map(|id| Ok(t.get(id.as_bytes())?.is_some()))
        .collect()
}

pub(super) fn refs_of_client(
    tx: &ReadTransaction,
    client: &ClientId,
    ids: &[ChunkId],
) -> Result<Vec<bool>, StoreError> {
    let t = tx.open_table(CHUNK_REFS)?;
    ids.iter()
        .map(|id| Ok(t.get((id.0, client.0))?.is_some()))
        .collect()
}

pub(super) fn of_client(
    tx: &ReadTransaction,
    client: &ClientId,
    ids: &[ChunkId],
) -> Result<Vec<Option<ChunkRecord>>, StoreError> {
    let refs = tx.open_table(CHUNK_REFS)?;
    let chunks = tx.open_table(CHUNKS)?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if refs.get((id.0, client.0))?.is_none() {
            out.push(None);
            continue;
        }
        out.push(
            chunks
                .get(id.as_bytes())?
                .map(|v| decode("chunks", v.value()))
                .transpose()?,
        );
    }
    Ok(out)
}

pub(super) fn stats(tx: &ReadTransaction) -> Result<GridStats, StoreError> {
    let t = tx.open_table(COUNTERS)?;
    let get = |name| -> Result<u64, StoreError> { Ok(t.get(name)?.map_or(0, |v| v.value())) };
    Ok(GridStats {
        chunk_count: get(COUNTER_CHUNKS)?,
        stored_bytes: get(COUNTER_STORED_BYTES)?,
    })
}

pub(super) fn node_packets(
    tx: &ReadTransaction,
    node: &NodeId,
) -> Result<Vec<(PacketName, u64)>, StoreError> {
    let t = tx.open_table(NODE_PACKETS)?;
    let mut out = Vec::new();
    for row in t.range((node.0, [0u8; 32])..=(node.0, [0xffu8; 32]))? {
        let (k, v) = row?;
        out.push((PacketName(k.value().1), v.value()));
    }
    Ok(out)
}

fn bump(t: &mut Table<&str, u64>, name: &str, delta: u64) -> Result<(), StoreError> {
    let old = t.get(name)?.map_or(0, |v| v.value());
    t.insert(name, old.saturating_add(delta))?;
    Ok(())
}

/// Record one commit: new stored copies, client and snapshot references, node packets,
/// counters, the client's stored bytes and one log entry. Any error aborts all of it.
pub(super) fn commit(
    tx: &WriteTransaction,
    client: &ClientId,
    batch: &CommitBatch,
) -> Result<CommitOutcome, StoreError> {
    let mut row = snapshots::require_open(tx, client, &batch.snapshot)?;
    let mut out = CommitOutcome::default();
    let mut client_bytes = 0u64;
    let mut usage = Usage::default();
    if let Some(quota) = batch.quota_bytes {
        check_ref_quota(tx, client, batch, quota)?;
    }
    {
        let mut chunks = tx.open_table(CHUNKS)?;
        let mut refs = tx.open_table(CHUNK_REFS)?;
        let mut snap_refs = tx.open_table(SNAPSHOT_CHUNKS)?;
        let mut node_packets = tx.open_table(NODE_PACKETS)?;
        let mut counters = tx.open_table(COUNTERS)?;
        for c in &batch.chunks {
            if chunks.get(c.id.as_bytes())?.is_some() {
                out.already_stored += 1;
                continue;
            }
            let mut packets: Vec<StoredPacket> = c
                .packets
                .iter()
                .map(|p| StoredPacket {
                    index: p.index,
                    node: p.node,
                    packet: p.packet,
                    checksum: p.checksum,
                })
                .collect();
            packets.sort_by_key(|p| p.index);
            let rec = ChunkRecord {
                k: c.k,
                m: c.m,
                shard_bytes: c.shard_bytes,
                packets,
                committed_unix_ms: batch.now_unix_ms,
                committed_by: *client,
            };
            for p in &rec.packets {
                node_packets.insert((p.node.0, p.packet.0), rec.shard_bytes)?;
            }
            chunks.insert(c.id.as_bytes(), encode(&rec).as_slice())?;
            out.stored += 1;
            out.stored_bytes += rec.packet_bytes();
            usage.uploaded_packet_bytes += rec.packet_bytes();
        }
        bump(&mut counters, COUNTER_CHUNKS, u64::from(out.stored))?;
        bump(&mut counters, COUNTER_STORED_BYTES, out.stored_bytes)?;

        let ids = batch
            .chunks
            .iter()
            .map(|c| c.id)
            .chain(batch.refs.iter().copied());
        for id in ids {
            let rec: ChunkRecord = match chunks.get(id.as_bytes())? {
                Some(v) => decode("chunks", v.value())?,
                None => {
                    return Err(StoreError::NotFound(format!(
                        "chunk {id} is not stored; upload it before referencing it"
                    )));
                }
            };
            if refs.insert((id.0, client.0), ())?.is_none() {
                client_bytes += rec.packet_bytes();
                usage.charged_bytes += charge_of(&rec);
                usage.chunk_count += 1;
            }
            if snap_refs
                .insert((client.0, batch.snapshot.as_str(), id.0), ())?
                .is_none()
            {
                out.referenced += 1;
            }
        }
    }
    row.info.chunk_refs += u64::from(out.referenced);
    snapshots::put(tx, client, &row)?;
    clients::add_stored_bytes(tx, client, client_bytes)?;
    subscriptions::add_usage(tx, client, usage)?;
    let entry = NewLogEntry {
        client: Some(*client),
        node: None,
        kind: "chunks.commit",
        detail: format!(
            "snapshot={} stored={} already_stored={} referenced={} stored_bytes={}",
            batch.snapshot, out.stored, out.already_stored, out.referenced, out.stored_bytes
        ),
    };
    log::append(tx, &entry, batch.now_unix_ms)?;
    Ok(out)
}

/// Refuse a commit whose references to already stored chunks, not yet charged to the client,
/// would push its charged bytes past `quota`. Newly uploaded chunks were checked when they
/// were allocated and are not refused here: their packets are already on the nodes.
fn check_ref_quota(
    tx: &WriteTransaction,
    client: &ClientId,
    batch: &CommitBatch,
    quota: u64,
) -> Result<(), StoreError> {
    let uploaded: HashSet<ChunkId> = batch.chunks.iter().map(|c| c.id).collect();
    let chunks = tx.open_table(CHUNKS)?;
    let refs = tx.open_table(CHUNK_REFS)?;
    let mut seen = HashSet::new();
    let mut needed = 0u64;
    for id in &batch.refs {
        if uploaded.contains(id) || !seen.insert(*id) || refs.get((id.0, client.0))?.is_some() {
            continue;
        }
        if let Some(v) = chunks.get(id.as_bytes())? {
            needed = needed.saturating_add(charge_of(&decode("chunks", v.value())?));
        }
    }
    let used =
        subscriptions::usage(&tx.open_table(super::redb_store::USAGE)?, client)?.charged_bytes;
    if needed > 0 && used.saturating_add(needed) > quota {
        return Err(StoreError::QuotaExceeded {
            client: *client,
            used,
            quota,
            needed,
        });
    }
    Ok(())
}
